//! Database login credentials (PROTOCOL.md §14): a token plus a proof of possession
//! bound to a role name, an optional database name and a timestamp, as one text
//! string that fits a password field. A database verifies it in-process with only
//! its audience key ([`TokenVerifier::verify_login`]) and remembers its
//! [`VerifiedLogin::replay_id`] until [`VerifiedLogin::not_after`] to refuse reuse.
//!
//! credential = `otl1.` ‖ base64url(token(320) ‖ timestamp(8) ‖ nonce(16) ‖ MAC(32)),
//! MAC = keyed BLAKE3 under `KDF("onetrip v1 login key", session key)` over the
//! prefix, the first 344 raw bytes, and the length-prefixed user and database names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::backend::CryptoBackend;
use crate::codec::{field, field_mut, read_u64, write_u64};
use crate::kdf;
use crate::secret::Secret;
use crate::token::{Claims, Token, TokenError, TokenVerifier, TOKEN_LEN};

/// Text prefix of every credential; its `1` is the credential format version.
pub const LOGIN_PREFIX: &str = "otl1.";
/// Raw (decoded) credential length: token, timestamp, nonce, MAC.
pub const LOGIN_RAW_LEN: usize = 376;
/// Length of the random nonce.
pub const LOGIN_NONCE_LEN: usize = 16;
/// Length of a replay id.
pub const LOGIN_REPLAY_ID_LEN: usize = 16;
/// Credential length in characters. Every credential has exactly this length, so it
/// is also the maximum (well under PostgreSQL's 1000-byte password packet limit).
pub const LOGIN_CREDENTIAL_MAX_LEN: usize = LOGIN_PREFIX.len() + (LOGIN_RAW_LEN * 4).div_ceil(3);
/// Longest user or database name the MAC can bind (one length byte).
pub const LOGIN_NAME_MAX_LEN: usize = 255;
/// Accepted difference between the credential's timestamp and the verifier's clock.
pub const LOGIN_WINDOW_SECS: u64 = 60;

const OFF_TOKEN: usize = 0;
const OFF_TIMESTAMP: usize = OFF_TOKEN + TOKEN_LEN;
const OFF_NONCE: usize = OFF_TIMESTAMP + 8;
const OFF_MAC: usize = OFF_NONCE + LOGIN_NONCE_LEN;
const _: () = assert!(OFF_MAC == 344 && OFF_MAC + 32 == LOGIN_RAW_LEN && LOGIN_CREDENTIAL_MAX_LEN == 507);

/// Why a credential was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Longer than [`LOGIN_CREDENTIAL_MAX_LEN`]: checked before anything else.
    #[error("login credential is longer than {LOGIN_CREDENTIAL_MAX_LEN} characters")]
    TooLong,
    /// Does not start with [`LOGIN_PREFIX`]: not an onetrip login credential (or
    /// another version).
    #[error("not an onetrip login credential (expected the prefix `otl1.`)")]
    Prefix,
    /// Shorter than [`LOGIN_CREDENTIAL_MAX_LEN`]: truncated.
    #[error("login credential has the wrong length (truncated?)")]
    Length,
    /// Not canonical base64url without padding after the prefix.
    #[error("login credential is not base64url")]
    Encoding,
    /// The user or database name is longer than [`LOGIN_NAME_MAX_LEN`] bytes.
    #[error("user or database name longer than {LOGIN_NAME_MAX_LEN} bytes")]
    NameTooLong,
    /// The token is for another audience (another database's key).
    #[error("login credential is for a different audience")]
    WrongAudience,
    /// The token inside has expired: get a fresh credential.
    #[error("login credential's token expired at {expires_at}: get a fresh credential")]
    Expired {
        /// Token expiry, unix seconds.
        expires_at: u64,
    },
    /// The credential's timestamp is more than [`LOGIN_WINDOW_SECS`] from the
    /// verifier's clock: stale, from the future, or clocks disagree.
    #[error("login credential timestamp {timestamp} is outside the accepted window around {now}")]
    ClockWindow {
        /// Timestamp in the credential.
        timestamp: u64,
        /// Verifier's clock.
        now: u64,
    },
    /// The proof does not match: made for another user or database, or altered. (The
    /// verifier cannot tell these apart: the names are bound, not carried.)
    #[error("login credential proof does not match this user and database (or was altered)")]
    BadProof,
    /// The token was refused for another reason (unknown key, forged, malformed).
    #[error("login credential's token: {0}")]
    Token(TokenError),
}

/// An accepted login.
#[derive(Debug, Clone)]
pub struct VerifiedLogin {
    /// The token's claims (API key id, scopes, expiry, …).
    pub claims: Claims,
    /// What to remember to refuse reuse of this exact credential.
    pub replay_id: [u8; LOGIN_REPLAY_ID_LEN],
    /// Unix seconds after which the credential is refused anyway (window end or token
    /// expiry, whichever is first): the replay id can be forgotten then.
    pub not_after: u64,
}

/// Makes a login credential for `user` (and `database` when given) at server time
/// `now` with a fresh random `nonce` (the caller's CSPRNG: this crate is sans-IO).
///
/// # Errors
/// [`LoginError::NameTooLong`].
pub fn login_credential(
    token: &Token,
    session_key: &Secret<32>,
    user: &str,
    database: Option<&str>,
    now: u64,
    nonce: &[u8; LOGIN_NONCE_LEN],
) -> Result<Zeroizing<String>, LoginError> {
    let mut raw = Zeroizing::new([0u8; LOGIN_RAW_LEN]);
    *field_mut::<OFF_TOKEN, TOKEN_LEN, LOGIN_RAW_LEN>(&mut raw) = *token.as_bytes();
    write_u64::<OFF_TIMESTAMP, LOGIN_RAW_LEN>(&mut raw, now);
    *field_mut::<OFF_NONCE, LOGIN_NONCE_LEN, LOGIN_RAW_LEN>(&mut raw) = *nonce;
    let mac = mac(session_key, &raw, user, database)?;
    *field_mut::<OFF_MAC, 32, LOGIN_RAW_LEN>(&mut raw) = mac;
    let mut out = Zeroizing::new(String::with_capacity(LOGIN_CREDENTIAL_MAX_LEN));
    out.push_str(LOGIN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(&raw[..], &mut out);
    Ok(out)
}

/// The replay id of a raw credential: `KDF_16("onetrip v1 login replay id", raw)`.
fn replay_id(raw: &[u8; LOGIN_RAW_LEN]) -> [u8; LOGIN_REPLAY_ID_LEN] {
    kdf::derive_public(kdf::LABEL_LOGIN_REPLAY_ID, &[raw])
}

fn name_len(name: &str) -> Result<[u8; 1], LoginError> {
    u8::try_from(name.len()).map(|n| [n]).map_err(|_| LoginError::NameTooLong)
}

fn mac(
    session_key: &Secret<32>,
    raw: &[u8; LOGIN_RAW_LEN],
    user: &str,
    database: Option<&str>,
) -> Result<[u8; 32], LoginError> {
    let user_len = name_len(user)?;
    let key = kdf::derive(kdf::LABEL_LOGIN_KEY, &[session_key.expose()]);
    let mut h = blake3::Hasher::new_keyed(key.expose());
    h.update(LOGIN_PREFIX.as_bytes());
    h.update(&raw[..OFF_MAC]);
    h.update(&user_len);
    h.update(user.as_bytes());
    match database {
        None => {
            h.update(&[0]);
        }
        Some(db) => {
            h.update(&[1]);
            h.update(&name_len(db)?);
            h.update(db.as_bytes());
        }
    }
    Ok(*h.finalize().as_bytes())
}

fn decode(credential: &str) -> Result<Zeroizing<[u8; LOGIN_RAW_LEN]>, LoginError> {
    if credential.len() > LOGIN_CREDENTIAL_MAX_LEN {
        return Err(LoginError::TooLong);
    }
    let body = credential.strip_prefix(LOGIN_PREFIX).ok_or(LoginError::Prefix)?;
    if credential.len() != LOGIN_CREDENTIAL_MAX_LEN {
        return Err(LoginError::Length);
    }
    // Two spare bytes: decode_slice wants room for a whole last quantum.
    let mut buf = Zeroizing::new([0u8; LOGIN_RAW_LEN + 2]);
    let n = URL_SAFE_NO_PAD.decode_slice(body, &mut buf[..]).map_err(|_| LoginError::Encoding)?;
    let raw: &[u8; LOGIN_RAW_LEN] = buf[..n].try_into().map_err(|_| LoginError::Length)?;
    Ok(Zeroizing::new(*raw))
}

impl<B: CryptoBackend> TokenVerifier<B> {
    /// Verifies a login credential for `user` (and `database`, exactly as the client
    /// bound it) at `now`: format, token (this verifier's audience, not expired),
    /// proof, then the [`LOGIN_WINDOW_SECS`] clock window. The caller must then refuse
    /// a [`VerifiedLogin::replay_id`] it has seen before `not_after`, and record it.
    ///
    /// # Errors
    /// A [`LoginError`] naming the first check that failed (PROTOCOL.md §14).
    pub fn verify_login(
        &self,
        credential: &str,
        user: &str,
        database: Option<&str>,
        now: u64,
    ) -> Result<VerifiedLogin, LoginError> {
        let raw = decode(credential)?;
        let claims = self.verify(field::<OFF_TOKEN, TOKEN_LEN, LOGIN_RAW_LEN>(&raw), now).map_err(|e| match e {
            TokenError::WrongAudience => LoginError::WrongAudience,
            TokenError::Expired { expires_at } => LoginError::Expired { expires_at },
            other => LoginError::Token(other),
        })?;
        let expected = mac(claims.session_key(), &raw, user, database)?;
        if !bool::from(expected.ct_eq(field::<OFF_MAC, 32, LOGIN_RAW_LEN>(&raw))) {
            return Err(LoginError::BadProof);
        }
        let timestamp = read_u64::<OFF_TIMESTAMP, LOGIN_RAW_LEN>(&raw);
        if timestamp.abs_diff(now) > LOGIN_WINDOW_SECS {
            return Err(LoginError::ClockWindow { timestamp, now });
        }
        let not_after = timestamp.saturating_add(LOGIN_WINDOW_SECS).min(claims.expires_at);
        Ok(VerifiedLogin { replay_id: replay_id(&raw), not_after, claims })
    }
}
