//! The resource-server side: `TokenVerifier` checks tokens, signed requests (and,
//! with the login credential, database logins) in-process with only the audience
//! key, no call to the onetrip server. Verification is one AEAD open plus a MAC:
//! microseconds, so it runs with the GIL held.

use onetrip_client::{DefaultBackend, PopProof, Token, AUTHORIZATION_SCHEME};
use pyo3::prelude::*;

use crate::convert::{self, hex};
use crate::errors::{login_error, pop_error, token_error, InvalidInput, InvalidToken};

/// A token as given: the `Authorization` value (`Onetrip <token>`), the bare
/// base64url token, or its raw bytes.
#[derive(FromPyObject)]
pub enum TokenInput {
    /// Header value or base64url.
    Text(String),
    /// Raw token bytes.
    Bytes(Vec<u8>),
}

impl TokenInput {
    fn parse(&self) -> PyResult<Token> {
        match self {
            TokenInput::Text(t) => {
                let t = t.trim();
                let b64 = match t.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case(AUTHORIZATION_SCHEME) => rest.trim(),
                    Some(_) => {
                        return Err(InvalidToken::new_err((
                            "expected `Onetrip <token>` (the scheme is not Onetrip)",
                            "scheme",
                        )))
                    }
                    None => t,
                };
                Token::from_base64(b64).map_err(token_error)
            }
            TokenInput::Bytes(b) => Token::from_slice(b).map_err(token_error),
        }
    }
}

/// What a verified token says. The session key stays in Rust.
#[pyclass(module = "onetrip", frozen)]
pub struct Claims {
    claims: onetrip_client::Claims,
    replay_id: Option<[u8; 16]>,
}

#[pymethods]
impl Claims {
    /// Unique token id, hex.
    #[getter]
    fn token_id(&self) -> String {
        hex(&self.claims.token_id)
    }
    /// Id of the API key the token was issued to, hex (as `onetrip keys list` shows).
    #[getter]
    fn api_key_id(&self) -> String {
        self.claims.api_key_id.to_string()
    }
    /// Issue time, unix seconds.
    #[getter]
    fn issued_at(&self) -> u64 {
        self.claims.issued_at
    }
    /// Expiry, unix seconds.
    #[getter]
    fn expires_at(&self) -> u64 {
        self.claims.expires_at
    }
    /// True when a second factor was verified for the token.
    #[getter]
    fn second_factor(&self) -> bool {
        self.claims.second_factor
    }
    /// The audience.
    #[getter]
    fn audience(&self) -> &str {
        self.claims.audience()
    }
    /// The granted scopes.
    #[getter]
    fn scopes(&self) -> Vec<String> {
        self.claims.scopes().split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
    /// From `verify_request`: the proof's 16-byte replay id as hex, for the caller's
    /// replay cache (a proof is otherwise reusable within the window). `None` from `verify`.
    #[getter]
    fn replay_id(&self) -> Option<String> {
        self.replay_id.map(|r| hex(&r))
    }
    /// True when `scope` is one of the granted scopes.
    fn has_scope(&self, scope: &str) -> bool {
        self.claims.has_scope(scope)
    }
    fn __repr__(&self) -> String {
        format!(
            "Claims(api_key_id={:?}, audience={:?}, scopes={:?}, expires_at={}, second_factor={})",
            self.claims.api_key_id.to_string(),
            self.claims.audience(),
            self.claims.scopes(),
            self.claims.expires_at,
            if self.claims.second_factor { "True" } else { "False" }
        )
    }
}

/// Checks onetrip tokens for one audience with only that audience's key.
///
/// `audience_key` is what `onetrip audience-key <audience>` prints: one
/// `<key id hex>:<key hex>` line per key, current first (keep old lines during a
/// rotation overlap). Thread-safe; the key never leaves Rust and is not in repr.
#[pyclass(module = "onetrip", frozen)]
pub struct TokenVerifier(onetrip_client::TokenVerifier);

#[pymethods]
impl TokenVerifier {
    #[new]
    fn new(audience: &str, audience_key: &str) -> PyResult<Self> {
        let keys = convert::audience_keys(audience_key)?;
        onetrip_client::TokenVerifier::new(DefaultBackend::default(), audience, &keys)
            .map(Self)
            .map_err(|e| InvalidInput::new_err((format!("TokenVerifier: {e}"),)))
    }

    /// The audience this verifier is for.
    #[getter]
    fn audience(&self) -> &str {
        self.0.audience()
    }

    /// Verifies a token (`Onetrip <token>`, bare base64url, or raw bytes) at `now`
    /// (unix seconds, default: the system clock). Raises `InvalidToken`.
    ///
    /// Without a proof of possession a token is a bearer token: accept that only
    /// over TLS; prefer `verify_request`.
    #[pyo3(signature = (token, now=None))]
    fn verify(&self, token: TokenInput, now: Option<u64>) -> PyResult<Claims> {
        let token = token.parse()?;
        let claims = self.0.verify(token.as_bytes(), convert::now_or_system(now)).map_err(token_error)?;
        Ok(Claims { claims, replay_id: None })
    }

    /// Verifies a token and its proof of possession for this request (method, path
    /// with query, body), within `window` seconds of `now`. Raises `InvalidToken`.
    /// Keep `Claims.replay_id` in a cache for `window` seconds to refuse replays.
    #[pyo3(signature = (authorization, pop, method, path, body=b"".as_slice(), now=None, window=60))]
    #[allow(clippy::too_many_arguments)]
    fn verify_request(
        &self,
        authorization: TokenInput,
        pop: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now: Option<u64>,
        window: u64,
    ) -> PyResult<Claims> {
        let token = authorization.parse()?;
        let proof = PopProof::from_header(pop).map_err(pop_error)?;
        let now = convert::now_or_system(now);
        let claims =
            self.0.verify_request(token.as_bytes(), &proof, method, path, body, now, window).map_err(token_error)?;
        Ok(Claims { claims, replay_id: Some(proof.replay_id()) })
    }

    /// Verifies a database login credential for `user` (and `database`, when it
    /// was bound) at `now`. Raises `InvalidToken`. To refuse replays, remember
    /// `VerifiedLogin.replay_id` until `VerifiedLogin.not_after`.
    #[pyo3(signature = (credential, user, database=None, now=None))]
    fn verify_login(
        &self,
        credential: &str,
        user: &str,
        database: Option<&str>,
        now: Option<u64>,
    ) -> PyResult<VerifiedLogin> {
        let v = self.0.verify_login(credential, user, database, convert::now_or_system(now)).map_err(login_error)?;
        Ok(VerifiedLogin { claims: v.claims, replay_id: v.replay_id, not_after: v.not_after })
    }

    fn __repr__(&self) -> String {
        format!("TokenVerifier(audience={:?})", self.0.audience())
    }
}

/// An accepted login credential: the token's claims, and what a replay cache needs.
#[pyclass(module = "onetrip", frozen)]
pub struct VerifiedLogin {
    claims: onetrip_client::Claims,
    replay_id: [u8; 16],
    not_after: u64,
}

#[pymethods]
impl VerifiedLogin {
    /// The token's claims (API key id, scopes, expiry, second factor).
    #[getter]
    fn claims(&self) -> Claims {
        Claims { claims: self.claims.clone(), replay_id: Some(self.replay_id) }
    }
    /// Replay id of this exact credential (32 hex): refuse a second login with it.
    #[getter]
    fn replay_id(&self) -> String {
        hex(&self.replay_id)
    }
    /// Unix seconds after which the credential is refused anyway: forget the replay id then.
    #[getter]
    fn not_after(&self) -> u64 {
        self.not_after
    }
    fn __repr__(&self) -> String {
        format!(
            "VerifiedLogin(api_key_id={:?}, audience={:?}, not_after={})",
            self.claims.api_key_id.to_string(),
            self.claims.audience(),
            self.not_after
        )
    }
}
