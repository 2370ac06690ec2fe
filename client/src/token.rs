//! A granted token as the client holds it ([`AccessToken`]: token, session key, expiry
//! and local refresh deadline) and the headers it produces for one request to a
//! resource server ([`SignedRequest`]: `Authorization: Onetrip …` and `Onetrip-PoP`),
//! or the password-field string for a database login ([`LoginCredential`]).

use std::sync::Arc;

use onetrip_protocol::{PopProof, Secret, Token, TokenGrant};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::Error;

/// Authorization scheme for tokens with proof of possession:
/// `Authorization: Onetrip <base64url token>`.
pub const AUTHORIZATION_SCHEME: &str = "Onetrip";
/// Header carrying the proof of possession.
pub const POP_HEADER: &str = onetrip_protocol::pop::POP_HEADER;

/// Refresh once this fraction of the lifetime (numerator / denominator) has passed.
const REFRESH_AT: (u64, u64) = (4, 5);
/// A token in its last twentieth of life is no longer handed out as a fallback when a
/// refresh fails: it would likely expire before the resource server sees it.
const FALLBACK_MARGIN_DIVISOR: u64 = 20;

/// A token with its session key. Cheap to clone (one `Arc`); `Debug` shows only times.
#[derive(Clone)]
pub struct AccessToken(Arc<TokenInner>);

struct TokenInner {
    token: Token,
    /// Zeroized on drop (`Secret`), never printed.
    session_key: Secret<32>,
    /// Server clock.
    issued_at: u64,
    /// Server clock.
    expires_at: u64,
    /// Server time minus local time when the token was granted: PoP timestamps are
    /// written in server time, so a client with a wrong clock still signs acceptably.
    clock_offset: i64,
    /// Local clock.
    refresh_at_local: u64,
    /// Local clock.
    expires_at_local: u64,
    second_factor: bool,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("issued_at", &self.0.issued_at)
            .field("expires_at", &self.0.expires_at)
            .field("refresh_at_local", &self.0.refresh_at_local)
            .field("second_factor", &self.0.second_factor)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// Wraps a grant. `sent_at_local` is the local time the request left: the token
    /// was issued no earlier, so deadlines computed from it err on the early side.
    pub(crate) fn from_grant(grant: TokenGrant, sent_at_local: u64, clock_offset: i64, second_factor: bool) -> Self {
        let lifetime = grant.expires_at.saturating_sub(grant.server_time);
        Self(Arc::new(TokenInner {
            refresh_at_local: sent_at_local.saturating_add(lifetime * REFRESH_AT.0 / REFRESH_AT.1),
            expires_at_local: sent_at_local.saturating_add(lifetime),
            issued_at: grant.server_time,
            expires_at: grant.expires_at,
            clock_offset,
            token: grant.token,
            session_key: grant.session_key,
            second_factor,
        }))
    }

    /// The sealed token (opaque to the client).
    pub fn token(&self) -> &Token {
        &self.0.token
    }
    /// The session key, for custom proof formats. Never log it.
    pub fn session_key(&self) -> &Secret<32> {
        &self.0.session_key
    }
    /// Issue time, server clock, unix seconds.
    pub fn issued_at(&self) -> u64 {
        self.0.issued_at
    }
    /// Expiry, server clock, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }
    /// Local time (unix seconds) from which the client refreshes this token: 80% of
    /// its lifetime.
    pub fn refresh_at(&self) -> u64 {
        self.0.refresh_at_local
    }
    /// True when the token was obtained with a second factor (`token_with_code`).
    pub fn second_factor(&self) -> bool {
        self.0.second_factor
    }
    /// True while the token is younger than 80% of its lifetime (local clock).
    pub fn is_fresh(&self, local_now: u64) -> bool {
        local_now < self.0.refresh_at_local
    }
    /// True while the token has not expired (local clock).
    pub fn is_valid(&self, local_now: u64) -> bool {
        local_now < self.0.expires_at_local
    }
    /// True while the token is good enough to hand out when a refresh failed.
    pub(crate) fn usable_as_fallback(&self, local_now: u64) -> bool {
        let lifetime = self.0.expires_at.saturating_sub(self.0.issued_at);
        local_now.saturating_add(lifetime / FALLBACK_MARGIN_DIVISOR) < self.0.expires_at_local
    }

    /// The `Authorization` header value: `Onetrip <base64url token>`.
    pub fn authorization(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{AUTHORIZATION_SCHEME} {}", self.0.token.to_base64().as_str()))
    }

    /// Signs a request for a resource server (method, path with query, body) with the
    /// session key, using the OS CSPRNG. `local_now` is the local clock in unix
    /// seconds; the proof carries server time (local time plus the learnt offset).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a method or path too long to sign.
    pub fn sign(&self, method: &str, path: &str, body: &[u8], local_now: u64) -> Result<SignedRequest, Error> {
        self.sign_with_rng(method, path, body, local_now, &mut rand_core::OsRng)
    }

    /// A database login credential (PROTOCOL.md §14) for `user` and, when given,
    /// `database`, stamped with server time (local time plus the learnt offset), with
    /// a nonce from the OS CSPRNG. Send it as the password; it is single-use and valid
    /// for [`onetrip_protocol::LOGIN_WINDOW_SECS`] around its timestamp.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a user or database name over 255 bytes.
    pub fn login_credential(
        &self,
        user: &str,
        database: Option<&str>,
        local_now: u64,
    ) -> Result<LoginCredential, Error> {
        let mut nonce = [0u8; onetrip_protocol::LOGIN_NONCE_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let now = local_now.saturating_add_signed(self.0.clock_offset);
        let s = onetrip_protocol::login_credential(&self.0.token, &self.0.session_key, user, database, now, &nonce)?;
        Ok(LoginCredential(s))
    }

    /// [`Self::sign`] with a caller-supplied CSPRNG.
    ///
    /// # Errors
    /// As [`Self::sign`].
    pub fn sign_with_rng(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        local_now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<SignedRequest, Error> {
        let now = local_now.saturating_add_signed(self.0.clock_offset);
        let proof = PopProof::sign(&self.0.session_key, self.0.token.binding(), method, path, body, now, rng)?;
        Ok(SignedRequest { authorization: self.authorization(), pop: proof.to_header(), proof, token: self.clone() })
    }
}

/// Headers for one request to a resource server. `Debug` redacts everything.
#[derive(Clone)]
pub struct SignedRequest {
    authorization: Zeroizing<String>,
    pop: String,
    proof: PopProof,
    token: AccessToken,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRequest").field("timestamp", &self.proof.timestamp()).finish_non_exhaustive()
    }
}

impl SignedRequest {
    /// Value of the `Authorization` header: `Onetrip <base64url token>`.
    pub fn authorization(&self) -> &str {
        &self.authorization
    }
    /// Value of the `Onetrip-PoP` header ([`POP_HEADER`]).
    pub fn pop(&self) -> &str {
        &self.pop
    }
    /// The raw proof, for binary protocols that carry bytes rather than headers.
    pub fn proof(&self) -> &PopProof {
        &self.proof
    }
    /// The token the request was signed for (raw bytes via `token().as_bytes()`).
    pub fn token(&self) -> &Token {
        self.token.token()
    }
    /// The access token (expiry, refresh deadline).
    pub fn access_token(&self) -> &AccessToken {
        &self.token
    }
}

/// A database login credential: send [`Self::as_str`] as the password. Zeroized on
/// drop; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct LoginCredential(Zeroizing<String>);

impl std::fmt::Debug for LoginCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginCredential([redacted])")
    }
}

impl LoginCredential {
    /// The credential text (`otl1.…`, [`onetrip_protocol::LOGIN_CREDENTIAL_MAX_LEN`]
    /// characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
