//! Authenticator-app codes (RFC 6238 TOTP over RFC 4226 HOTP): secrets, code
//! computation, verification with ±1 step of clock tolerance and the replay rule, and
//! the `otpauth://` enrolment URI and its terminal QR code. Pure functions: the caller
//! passes the clock in and persists the last accepted step.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// Length of a generated secret: 160 bits, the HMAC-SHA1 output size that RFC 4226
/// §4 (R6) recommends.
pub const SECRET_LEN: usize = 20;
/// Shortest secret accepted from outside: RFC 4226 §4 (R6) requires 128 bits.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted from outside (the SHA-512 block size; longer keys are hashed
/// by HMAC anyway, so they add nothing).
pub const MAX_SECRET_LEN: usize = 128;
/// Fewest code digits allowed.
pub const MIN_DIGITS: u32 = 6;
/// Most code digits allowed (a 31-bit truncated value has at most 10, and RFC 6238's
/// vectors stop at 8).
pub const MAX_DIGITS: u32 = 8;
/// Longest input `verify` looks at: a code with grouping spaces fits easily; anything
/// longer is refused before any work.
const MAX_INPUT_LEN: usize = 32;

/// Unreserved characters of RFC 3986 stay as they are; everything else in a label or
/// query value is percent-encoded (a space becomes `%20`, as the Key URI format asks).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The HMAC hash function (RFC 6238 §1.2: SHA-1 by default; SHA-256 and SHA-512 allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    /// HMAC-SHA1: what every authenticator app supports.
    #[default]
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl Algorithm {
    /// The name used in `otpauth://` URIs: `SHA1`, `SHA256`, `SHA512`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

/// Code parameters; the defaults (SHA-1, 6 digits, 30 s) are the only ones many
/// authenticator apps honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpParams {
    /// HMAC hash function.
    pub algorithm: Algorithm,
    /// Code length, 6 to 8.
    pub digits: u32,
    /// Time step X in seconds (RFC 6238 §4.1; 30 recommended).
    pub step_secs: u64,
}

impl Default for TotpParams {
    fn default() -> Self {
        Self { algorithm: Algorithm::Sha1, digits: 6, step_secs: 30 }
    }
}

impl TotpParams {
    /// Checks the bounds: 6 to 8 digits, a step of 1 s to 1 h.
    pub fn validate(&self) -> Result<(), TotpError> {
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&self.digits) || !(1..=3600).contains(&self.step_secs) {
            return Err(TotpError::InvalidParams { digits: self.digits, step_secs: self.step_secs });
        }
        Ok(())
    }
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// Not a code at all: wrong length, a non-digit, empty, or too long to look at.
    #[error("malformed code: enter the {digits}-digit code shown by the authenticator app")]
    Malformed {
        /// Digits expected.
        digits: u32,
    },
    /// Well formed but matches none of the previous, current and next time steps.
    #[error("wrong code: check that the authenticator app and the server clock are in sync")]
    Wrong,
    /// Right code, but its time step was already used (RFC 6238 §5.2: one code, one use).
    #[error("code already used: wait for the authenticator app to show the next code")]
    Replayed,
    /// The parameters are out of bounds (a configuration bug, not a user mistake).
    #[error("invalid TOTP parameters: digits {digits} (allowed 6 to 8), step {step_secs} s (allowed 1 to 3600)")]
    InvalidParams {
        /// Digits asked for.
        digits: u32,
        /// Step asked for.
        step_secs: u64,
    },
}

/// Why a base32 secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// A character outside the RFC 4648 base32 alphabet (`A`–`Z`, `2`–`7`).
    #[error("invalid base32 secret: character {position} is not A-Z or 2-7")]
    Character {
        /// Zero-based position in the input (spaces and dashes included).
        position: usize,
    },
    /// A length no base32 encoding can have (1, 3 or 6 symbols past a multiple of 8).
    #[error("invalid base32 secret: truncated (its length is impossible for base32); copy the whole secret")]
    Truncated,
    /// Decoded length outside 16..=128 bytes.
    #[error("secret of {0} bytes: a TOTP secret must be 16 to 128 bytes (26 to 205 base32 characters)")]
    Length(usize),
}

/// A shared TOTP secret. Zeroized on drop; `Debug` prints no bytes; no `PartialEq`.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// Wraps raw key bytes as stored. No length check, so RFC test seeds of any size
    /// work; secrets typed or pasted by people go through [`TotpSecret::from_base32`].
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The raw key bytes, for storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding, as authenticator apps expect it.
    pub fn to_base32(&self) -> Zeroizing<String> {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = Zeroizing::new(String::with_capacity(self.0.len().div_ceil(5) * 8));
        let (mut acc, mut bits) = (0u16, 0u32);
        for &b in self.0.iter() {
            acc = (acc << 8) | u16::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(char::from(ALPHABET[usize::from((acc >> bits) & 31)]));
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(char::from(ALPHABET[usize::from((acc << (5 - bits)) & 31)]));
        }
        out
    }

    /// Parses base32 as people copy it: case-insensitive, spaces and dashes ignored,
    /// `=` padding optional. Non-zero bits after the last byte are ignored, as
    /// authenticator apps do.
    pub fn from_base32(text: &str) -> Result<Self, SecretError> {
        let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8));
        let (mut acc, mut bits, mut symbols) = (0u16, 0u32, 0usize);
        let body = text.trim().trim_end_matches('=');
        for (position, c) in body.bytes().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a',
                b'2'..=b'7' => c - b'2' + 26,
                b' ' | b'-' => continue,
                _ => return Err(SecretError::Character { position }),
            };
            symbols += 1;
            acc = (acc << 5) | u16::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                // Truncation keeps the low 8 bits: the byte just completed.
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        if matches!(symbols % 8, 1 | 3 | 6) {
            return Err(SecretError::Truncated);
        }
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&out.len()) {
            return Err(SecretError::Length(out.len()));
        }
        Ok(Self(out))
    }
}

/// A fresh 160-bit secret from a CSPRNG.
pub fn generate_secret(rng: &mut (impl RngCore + CryptoRng)) -> TotpSecret {
    let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
    rng.fill_bytes(&mut bytes);
    TotpSecret(bytes)
}

/// HOTP(K, C) of RFC 4226 §5.3: HMAC, dynamic truncation to 31 bits.
fn hotp(secret: &TotpSecret, algorithm: Algorithm, counter: u64) -> u32 {
    fn mac<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Zeroizing<Vec<u8>> {
        // Never fails: HMAC takes keys of any length.
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
        m.update(msg);
        Zeroizing::new(m.finalize().into_bytes().to_vec())
    }
    let msg = counter.to_be_bytes();
    let hs = match algorithm {
        Algorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(secret.as_bytes(), &msg),
        Algorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(secret.as_bytes(), &msg),
        Algorithm::Sha512 => mac::<Hmac<sha2::Sha512>>(secret.as_bytes(), &msg),
    };
    // "Let OffsetBits be the low-order 4 bits of String[19]" (of the last byte, for
    // longer hashes, as RFC 6238's reference code does).
    let offset = usize::from(hs[hs.len() - 1] & 0x0f);
    let word = [hs[offset], hs[offset + 1], hs[offset + 2], hs[offset + 3]];
    u32::from_be_bytes(word) & 0x7fff_ffff
}

/// The `digits`-digit code for `counter`, as ASCII digits in a fixed buffer (no
/// allocation, so nothing to zeroize beyond the buffer).
fn code_digits(secret: &TotpSecret, algorithm: Algorithm, digits: u32, counter: u64) -> Zeroizing<[u8; 8]> {
    let mut value = hotp(secret, algorithm, counter) % 10u32.pow(digits);
    let mut out = Zeroizing::new([b'0'; 8]);
    for slot in out[..digits as usize].iter_mut().rev() {
        // value % 10 < 10: the cast cannot truncate.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out
}

/// The code at `unix_time` (RFC 6238 §4.2: T = floor(unix_time / X), T0 = 0). Digits
/// outside 6..=8 are clamped and a zero step is taken as 1 s, so this never panics;
/// [`verify`] refuses such parameters outright.
pub fn code_at(secret: &TotpSecret, params: &TotpParams, unix_time: u64) -> Zeroizing<String> {
    let digits = params.digits.clamp(MIN_DIGITS, MAX_DIGITS);
    let code = code_digits(secret, params.algorithm, digits, unix_time / params.step_secs.max(1));
    let mut out = Zeroizing::new(String::with_capacity(8));
    out.extend(code[..digits as usize].iter().map(|&b| char::from(b)));
    out
}

/// Checks `code` against the steps before, at and after `now` (RFC 6238 §5.2: one
/// step of tolerance for clock drift and typing time) and returns the matched step,
/// which the caller stores as the next `last_used_step`. A match at or before
/// `last_used_step` is [`TotpError::Replayed`]. Spaces inside the code are ignored
/// (apps display `123 456`). All three candidates are computed and compared in
/// constant time, whatever matches.
pub fn verify(
    secret: &TotpSecret,
    params: &TotpParams,
    code: &str,
    now: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    params.validate()?;
    let malformed = TotpError::Malformed { digits: params.digits };
    if code.len() > MAX_INPUT_LEN {
        return Err(malformed);
    }
    let mut given = Zeroizing::new([b'0'; 8]);
    let mut n = 0usize;
    for b in code.trim().bytes() {
        match b {
            b' ' => continue,
            b'0'..=b'9' if n < params.digits as usize => {
                given[n] = b;
                n += 1;
            }
            _ => return Err(malformed),
        }
    }
    if n != params.digits as usize {
        return Err(malformed);
    }

    let current = now / params.step_secs;
    let candidates = [current.checked_sub(1), Some(current), current.checked_add(1)];
    let mut fresh_match = subtle::Choice::from(0);
    let mut matched_step = 0u64;
    let mut replay_match = subtle::Choice::from(0);
    for step in candidates.into_iter().flatten() {
        let expected = code_digits(secret, params.algorithm, params.digits, step);
        let eq = expected[..n].ct_eq(&given[..n]);
        let fresh = subtle::Choice::from(u8::from(last_used_step.is_none_or(|last| step > last)));
        // Later candidates overwrite earlier ones, so a (one-in-a-million) collision
        // between steps records the latest step and blocks the most.
        matched_step.conditional_assign(&step, eq & fresh);
        fresh_match |= eq & fresh;
        replay_match |= eq & !fresh;
    }
    if bool::from(fresh_match) {
        Ok(matched_step)
    } else if bool::from(replay_match) {
        Err(TotpError::Replayed)
    } else {
        Err(TotpError::Wrong)
    }
}

/// The enrolment URI of the Key URI format (`otpauth://totp/Issuer:account?secret=…&
/// issuer=…&algorithm=SHA1&digits=6&period=30`), label and values percent-encoded.
/// It contains the secret: hand it only to the enrolling user, over TLS.
pub fn otpauth_uri(secret: &TotpSecret, params: &TotpParams, issuer: &str, account: &str) -> String {
    let account = utf8_percent_encode(account, URI_COMPONENT);
    let (label, issuer_param) = if issuer.is_empty() {
        (account.to_string(), String::new())
    } else {
        let issuer = utf8_percent_encode(issuer, URI_COMPONENT);
        (format!("{issuer}:{account}"), format!("&issuer={issuer}"))
    };
    format!(
        "otpauth://totp/{label}?secret={}{issuer_param}&algorithm={}&digits={}&period={}",
        secret.to_base32().as_str(),
        params.algorithm.as_str(),
        params.digits,
        params.step_secs
    )
}

/// What a new enrolment hands the enrolling user, the same on the OTP API and in
/// `onetrip keys totp-enroll`: the secret (base32, for entering by hand), its
/// `otpauth://` URI and the code parameters. Shown once; fields in alphabetical order,
/// the order of the JSON the server has always sent.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrolmentAnswer {
    /// HMAC hash function, as in the URI (`SHA1`).
    pub algorithm: String,
    /// Code length.
    pub digits: u32,
    /// The enrolment URI ([`otpauth_uri`]); it contains the secret.
    pub otpauth_uri: String,
    /// Time step in seconds.
    pub period: u64,
    /// The secret, base32 without padding.
    pub secret: String,
}

impl TotpEnrolmentAnswer {
    /// The answer for `secret` under `params`, labelled `issuer:account` in the app.
    pub fn new(secret: &TotpSecret, params: &TotpParams, issuer: &str, account: &str) -> Self {
        Self {
            algorithm: params.algorithm.as_str().to_owned(),
            digits: params.digits,
            otpauth_uri: otpauth_uri(secret, params, issuer, account),
            period: params.step_secs,
            secret: secret.to_base32().to_string(),
        }
    }
}

impl fmt::Debug for TotpEnrolmentAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpEnrolmentAnswer")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// `uri` as a QR code drawn with Unicode half blocks, light modules on a dark
/// terminal background, quiet zone included. Input too long for any QR version
/// yields a one-line note instead (an `otpauth://` URI is far below the limit).
pub fn qr_terminal(uri: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(uri.as_bytes()) {
        // Swapped colours: terminals draw the block glyph in the (light) foreground.
        Ok(code) => code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build(),
        Err(e) => format!("(no QR code: {e}; enter the secret by hand)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_base32_vectors() {
        for (raw, b32) in
            [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foob", "MZXW6YQ"), ("fooba", "MZXW6YTB")]
        {
            assert_eq!(TotpSecret::from_bytes(raw.as_bytes()).to_base32().as_str(), b32);
        }
        assert_eq!(TotpSecret::from_bytes(b"foobar").to_base32().as_str(), "MZXW6YTBOI");
    }

    #[test]
    fn hotp_matches_rfc4226_appendix_d() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        let expected = [755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489];
        for (counter, want) in expected.into_iter().enumerate() {
            assert_eq!(hotp(&secret, Algorithm::Sha1, counter as u64) % 1_000_000, want);
        }
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", TotpSecret::from_bytes(b"12345678901234567890")), "TotpSecret(<redacted>)");
    }
}
