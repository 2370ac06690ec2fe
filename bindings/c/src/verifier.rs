//! `onetrip_verifier_*`: the database (resource-server) side. Verifies tokens,
//! signed requests and login credentials in-process with only the audience key
//! `onetrip audience-key <audience>` prints; no call to the onetrip server. Stateless and thread-safe:
//! replay refusal is the caller's, keyed by the replay id each check returns.

use std::ffi::c_char;
use std::time::{SystemTime, UNIX_EPOCH};

use onetrip_client::{Claims, DefaultBackend, PopProof, Secret, Token, TokenVerifier, AUTHORIZATION_SCHEME};
use onetrip_protocol::token::TOKEN_KEY_ID_LEN;
use onetrip_protocol::DEFAULT_CLOCK_WINDOW_SECS;
use zeroize::Zeroizing;

use crate::boundary::{self, fill_field, guard, FfiError};
use crate::status::onetrip_status;

/// Size of `onetrip_claims.api_key_id`: 32 hex characters and a NUL.
pub const ONETRIP_KEY_ID_SIZE: usize = 33;
/// Size of `onetrip_claims.audience`: up to 64 characters and a NUL.
pub const ONETRIP_AUDIENCE_SIZE: usize = 65;
/// Size of `onetrip_claims.scopes`: up to 128 characters and a NUL.
pub const ONETRIP_SCOPES_SIZE: usize = 129;
/// Bytes of a replay id (also of a token id).
pub const ONETRIP_REPLAY_ID_LEN: usize = 16;

const _: () = assert!(ONETRIP_KEY_ID_SIZE == onetrip_protocol::api_key::KEY_ID_LEN * 2 + 1);
const _: () = assert!(ONETRIP_REPLAY_ID_LEN == onetrip_protocol::token::TOKEN_ID_LEN);
const _: () = assert!(ONETRIP_REPLAY_ID_LEN == onetrip_protocol::login::LOGIN_REPLAY_ID_LEN);

/// What a verified token says (the session key stays inside the library). Filled by
/// the library into caller-owned storage; nothing in it needs freeing.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct onetrip_claims {
    /// The API key the token was issued to, lowercase hex, NUL-terminated.
    pub api_key_id: [c_char; ONETRIP_KEY_ID_SIZE],
    /// The token's unique id (for revocation lists and logs).
    pub token_id: [u8; ONETRIP_REPLAY_ID_LEN],
    /// Issue time, unix seconds (server clock).
    pub issued_at: u64,
    /// Expiry, unix seconds (server clock).
    pub expires_at: u64,
    /// True when a second factor was verified for this token.
    pub second_factor: bool,
    /// The audience, NUL-terminated.
    pub audience: [c_char; ONETRIP_AUDIENCE_SIZE],
    /// The granted scopes, space separated, NUL-terminated.
    pub scopes: [c_char; ONETRIP_SCOPES_SIZE],
}

impl From<&Claims> for onetrip_claims {
    fn from(c: &Claims) -> Self {
        let mut out = onetrip_claims {
            api_key_id: [0; ONETRIP_KEY_ID_SIZE],
            token_id: c.token_id,
            issued_at: c.issued_at,
            expires_at: c.expires_at,
            second_factor: c.second_factor,
            audience: [0; ONETRIP_AUDIENCE_SIZE],
            scopes: [0; ONETRIP_SCOPES_SIZE],
        };
        fill_field(&mut out.api_key_id, &c.api_key_id.to_string());
        fill_field(&mut out.audience, c.audience());
        fill_field(&mut out.scopes, c.scopes());
        out
    }
}

/// A verified login credential: its token's claims, the replay id to refuse a second
/// use with, and until when remembering that id matters. Caller-owned; nothing in it
/// needs freeing.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct onetrip_login {
    /// The token's claims.
    pub claims: onetrip_claims,
    /// Unique per credential: a database that refuses replays keeps the ids it has
    /// accepted until `not_after` and refuses one it has seen.
    pub replay_id: [u8; ONETRIP_REPLAY_ID_LEN],
    /// Unix seconds after which this credential no longer verifies (so its replay id
    /// may be forgotten).
    pub not_after: u64,
}

/// A verifier for one audience. Thread-safe and immutable: share one handle. Create
/// with `onetrip_verifier_new`, free with `onetrip_verifier_free`.
pub struct onetrip_verifier {
    pub(crate) inner: TokenVerifier,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Parses `<key id hex>:<key hex>` lines (current key first), as `onetrip
/// audience-key` prints them. Blank lines are skipped. Messages never echo a key.
fn parse_keys(text: &str) -> Result<Vec<([u8; TOKEN_KEY_ID_LEN], Secret<32>)>, FfiError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || {
            FfiError::invalid(format!(
                "audience key line {}: expected <{} hex key id>:<64 hex key>, as `onetrip audience-key` prints",
                n + 1,
                TOKEN_KEY_ID_LEN * 2
            ))
        };
        let (id, key) = line.split_once(':').ok_or_else(bad)?;
        let id: [u8; TOKEN_KEY_ID_LEN] = decode_hex(id).ok_or_else(bad)?;
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(decode_hex(key).ok_or_else(bad)?);
        keys.push((id, Secret::new(*key)));
    }
    Ok(keys)
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim().as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Creates a verifier for `audience` from `audience_keys`: one or more
/// `<key id hex>:<key hex>` lines (newline separated, current key first), exactly
/// what `onetrip audience-key <audience>` prints. The library keeps its own copy of
/// the keys, wiped on free; the caller wipes its string.
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_verifier_new(
    audience_keys: *const c_char,
    audience: *const c_char,
    out: *mut *mut onetrip_verifier,
) -> onetrip_status {
    guard(|| {
        boundary::require_out(out, "out")?;
        // SAFETY: the caller's contract covers both strings.
        let (keys, audience) =
            unsafe { (boundary::text(audience_keys, "audience_keys")?, boundary::text(audience, "audience")?) };
        let keys = parse_keys(keys)?;
        let inner = TokenVerifier::new(DefaultBackend::default(), audience, &keys)?;
        // SAFETY: `out` checked non-NULL above; writable per the caller's contract.
        unsafe { boundary::give(out, onetrip_verifier { inner }) }
    })
}

/// Frees a verifier (NULL is a no-op); its keys are wiped.
///
/// # Safety
/// `verifier` is NULL or a handle from `onetrip_verifier_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn onetrip_verifier_free(verifier: *mut onetrip_verifier) {
    // SAFETY: the caller hands back ownership of a handle from onetrip_verifier_new.
    boundary::guard_void(|| unsafe { boundary::take(verifier) });
}

/// The token in an `Authorization` value `Onetrip <token>` or a bare token.
fn token_from(authorization: &str) -> Result<Token, FfiError> {
    let b64 = authorization.trim();
    let b64 = b64.strip_prefix(AUTHORIZATION_SCHEME).map_or(b64, |rest| rest.trim_start());
    Ok(Token::from_base64(b64)?)
}

/// # Safety
/// `out` is NULL or writable storage for one `onetrip_claims`.
unsafe fn write_claims(claims: &Claims, out: *mut onetrip_claims) {
    // SAFETY: `as_mut` handles NULL; otherwise writable per the caller's contract.
    if let Some(out) = unsafe { out.as_mut() } {
        *out = onetrip_claims::from(claims);
    }
}

/// Verifies a token (an `Authorization` value `Onetrip <token>`, or the bare
/// base64url token) at the current time: sealed under this verifier's key, for its
/// audience, not expired. A bearer check: over plain connections use
/// `onetrip_verifier_verify_request`, which also checks the proof of possession.
///
/// Fills `*claims` when `claims` is not NULL. `ONETRIP_STATUS_TOKEN_INVALID`,
/// `ONETRIP_STATUS_TOKEN_EXPIRED` or `ONETRIP_STATUS_CLOCK_SKEW` on refusal.
///
/// # Safety
/// `verifier` is a live handle; `token` is NUL-terminated; `claims` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_verifier_verify_token(
    verifier: *const onetrip_verifier,
    token: *const c_char,
    claims: *mut onetrip_claims,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers both pointers.
        let (verifier, token) = unsafe { (boundary::handle(verifier, "verifier")?, boundary::text(token, "token")?) };
        let verified = verifier.inner.verify(token_from(token)?.as_bytes(), now())?;
        // SAFETY: `claims` contract forwarded from the caller.
        unsafe { write_claims(&verified, claims) };
        Ok(())
    })
}

/// Verifies a signed request: the token in `authorization`, and the proof in `pop`
/// over `method`, `path` and `body`, within `window_secs` of the current time (0:
/// the default 60 s).
///
/// Fills `*claims` when not NULL, and the proof's replay id
/// (`ONETRIP_REPLAY_ID_LEN` bytes) into `replay_id` when not NULL: a proof verifies
/// again within its window, so refuse an id already seen in the last `window_secs`
/// if replays matter. `ONETRIP_STATUS_POP_INVALID` when the proof does not match.
///
/// # Safety
/// `verifier` is a live handle; strings are NUL-terminated; `body` has `body_len`
/// readable bytes (or is NULL with 0); `claims` is NULL or writable; `replay_id` is
/// NULL or has `ONETRIP_REPLAY_ID_LEN` writable bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn onetrip_verifier_verify_request(
    verifier: *const onetrip_verifier,
    authorization: *const c_char,
    pop: *const c_char,
    method: *const c_char,
    path: *const c_char,
    body: *const u8,
    body_len: usize,
    window_secs: u64,
    claims: *mut onetrip_claims,
    replay_id: *mut u8,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (verifier, authorization, pop, method, path, body) = unsafe {
            (
                boundary::handle(verifier, "verifier")?,
                boundary::text(authorization, "authorization")?,
                boundary::text(pop, "pop")?,
                boundary::text(method, "method")?,
                boundary::text(path, "path")?,
                boundary::bytes(body, body_len, "body")?,
            )
        };
        let token = token_from(authorization)?;
        let proof = PopProof::from_header(pop)?;
        let window = if window_secs == 0 { DEFAULT_CLOCK_WINDOW_SECS } else { window_secs };
        let verified = verifier.inner.verify_request(token.as_bytes(), &proof, method, path, body, now(), window)?;
        // SAFETY: `claims` contract forwarded from the caller.
        unsafe { write_claims(&verified, claims) };
        if !replay_id.is_null() {
            let id = proof.replay_id();
            // SAFETY: non-NULL with ONETRIP_REPLAY_ID_LEN writable bytes (caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(id.as_ptr(), replay_id, ONETRIP_REPLAY_ID_LEN) };
        }
        Ok(())
    })
}

/// Verifies a database login credential (the password a driver sent) for `user` and
/// `database` (NULL when the database side cannot see the database name; it must
/// then have been made with NULL too) at the current time, within the credential's
/// clock window. Fills `*login` when not NULL. Refusing a credential already used is
/// the caller's: keep `login->replay_id` until `login->not_after`.
///
/// `ONETRIP_STATUS_LOGIN_INVALID` for a malformed or altered credential, or one for
/// another user, database or audience; `ONETRIP_STATUS_TOKEN_EXPIRED`,
/// `ONETRIP_STATUS_CLOCK_SKEW` (outside the window), `ONETRIP_STATUS_TOKEN_INVALID`
/// (a token this verifier cannot open).
///
/// # Safety
/// `verifier` is a live handle; `credential` and `user` are NUL-terminated;
/// `database` is NULL or NUL-terminated; `login` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_verifier_verify_login(
    verifier: *const onetrip_verifier,
    credential: *const c_char,
    user: *const c_char,
    database: *const c_char,
    login: *mut onetrip_login,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (verifier, credential, user, database) = unsafe {
            (
                boundary::handle(verifier, "verifier")?,
                boundary::text(credential, "credential")?,
                boundary::text(user, "user")?,
                boundary::optional_text(database, "database")?,
            )
        };
        let verified = verifier.inner.verify_login(credential, user, database, now())?;
        // SAFETY: `as_mut` handles NULL; otherwise writable per the caller's contract.
        if let Some(out) = unsafe { login.as_mut() } {
            *out = onetrip_login {
                claims: onetrip_claims::from(&verified.claims),
                replay_id: verified.replay_id,
                not_after: verified.not_after,
            };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_key_lines_parse_and_bad_ones_are_refused_without_echo() {
        let key = "ab".repeat(32);
        let keys = parse_keys(&format!("\n01020304:{key}\n  0a0b0c0d:{key}  \n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].0, [10, 11, 12, 13]);
        for bad in [format!("0102030:{key}"), format!("01020304{key}"), format!("01020304:{}", &key[1..])] {
            let e = parse_keys(&bad).unwrap_err();
            assert_eq!(e.status, onetrip_status::InvalidArgument);
            assert!(!e.message.contains(&key[..16]), "{}", e.message);
        }
        assert!(decode_hex::<1>("zz").is_none());
    }

    #[test]
    fn authorization_values_and_bare_tokens_both_parse() {
        assert_eq!(token_from("Onetrip !!").unwrap_err().status, onetrip_status::TokenInvalid);
        assert_eq!(token_from("").unwrap_err().status, onetrip_status::TokenInvalid);
    }
}
