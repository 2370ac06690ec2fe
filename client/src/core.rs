//! The sans-IO client: trust decisions, the cached server key document and
//! handshake keys, the clock offset, and turning responses into tokens or retry
//! steps. The async and blocking clients only move its bytes.

use std::sync::Arc;

use onetrip_protocol::handshake::{ClientRequest, SecondFactor, REQUEST_LEN};
use onetrip_protocol::pop::PopProof;
use onetrip_protocol::{
    ApiKey, AwaitingResponse, ClientHandshake, CryptoBackend, DefaultBackend, Outcome, Secret, ServerKeyDocument, Token,
};
use rand_core::CryptoRngCore;

use crate::error::Error;
use crate::trust::Trust;

/// Authorization scheme for tokens with proof of possession.
pub const AUTHORIZATION_SCHEME: &str = "Onetrip";
/// Header carrying the proof of possession.
pub const POP_HEADER: &str = onetrip_protocol::pop::POP_HEADER;

/// A token with its session key. Cheap to clone; `Debug` shows only times.
#[derive(Clone)]
pub struct AccessToken(Arc<TokenInner>);

struct TokenInner {
    token: Token,
    session_key: Secret<32>,
    expires_at: u64,
    clock_offset: i64,
    refresh_at_local: u64,
    expires_at_local: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.0.expires_at)
            .field("refresh_at_local", &self.0.refresh_at_local)
            .finish_non_exhaustive()
    }
}

/// Headers for one request to a resource server.
#[derive(Clone)]
pub struct SignedRequest {
    authorization: String,
    pop: String,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedRequest([redacted])")
    }
}

impl SignedRequest {
    /// Value of the `Authorization` header: `Onetrip <token>`.
    pub fn authorization(&self) -> &str {
        &self.authorization
    }
    /// Value of the `Onetrip-PoP` header.
    pub fn pop(&self) -> &str {
        &self.pop
    }
}

impl AccessToken {
    /// The sealed token.
    pub fn token(&self) -> &Token {
        &self.0.token
    }
    /// The session key (for custom proof formats; never log it).
    pub fn session_key(&self) -> &Secret<32> {
        &self.0.session_key
    }
    /// Expiry in server time, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }
    /// True while the token is younger than 80% of its lifetime (local clock).
    pub fn is_fresh(&self, local_now: u64) -> bool {
        local_now < self.0.refresh_at_local
    }
    /// True while the token has not expired (local clock).
    pub fn is_valid(&self, local_now: u64) -> bool {
        local_now < self.0.expires_at_local
    }

    /// Signs a request for a resource server: method, path (with query) and body.
    /// The proof's timestamp is in server time (local time plus the learnt offset).
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        local_now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<SignedRequest, Error> {
        let now = apply_offset(local_now, self.0.clock_offset);
        let proof = PopProof::sign(&self.0.session_key, self.0.token.binding(), method, path, body, now, rng)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(SignedRequest {
            authorization: format!("{AUTHORIZATION_SCHEME} {}", &*self.0.token.to_base64()),
            pop: proof.to_header(),
        })
    }
}

fn apply_offset(local: u64, offset: i64) -> u64 {
    local.saturating_add_signed(offset)
}

/// What to do after a response.
#[derive(Debug)]
pub enum Step {
    /// Done.
    Granted(AccessToken),
    /// The server key changed: fetch the document again, then start again.
    RefetchDocument,
    /// The clock offset was corrected: start again.
    RetryWithClock,
}

/// The sans-IO client state.
pub struct ClientCore<B: CryptoBackend = DefaultBackend> {
    backend: B,
    api_key: ApiKey,
    trust: Trust,
    audience: String,
    scopes: String,
    handshake: Option<ClientHandshake<B>>,
    clock_offset: i64,
}

impl<B: CryptoBackend> std::fmt::Debug for ClientCore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCore")
            .field("key_id", &self.api_key.id())
            .field("trust", &self.trust)
            .field("clock_offset", &self.clock_offset)
            .finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> ClientCore<B> {
    /// A client for `api_key` that trusts per `trust` and asks for `audience` and
    /// `scopes` (space separated; empty = the key's defaults).
    pub fn new(backend: B, api_key: ApiKey, trust: Trust, audience: String, scopes: String) -> Self {
        Self { backend, api_key, trust, audience, scopes, handshake: None, clock_offset: 0 }
    }

    /// True until a document has been accepted (or after a key change).
    pub fn needs_document(&self) -> bool {
        self.handshake.is_none()
    }

    /// Seconds to add to the local clock to get server time.
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset
    }

    /// Verifies and adopts a server key document: signature, then pin (or TOFU:
    /// remember the first identity, refuse any other).
    pub fn accept_document(&mut self, bytes: &[u8], local_now: u64) -> Result<(), Error> {
        let doc = ServerKeyDocument::parse(bytes)?;
        match self.trust.expected()? {
            Some(expected) => doc.check_pin(&expected)?,
            None => self.trust.remember(&doc.fingerprint())?,
        }
        let now = apply_offset(local_now, self.clock_offset);
        if doc.current(now).is_err() && doc.current(doc.issued_at()).is_ok() {
            // Our clock is far off (no key is valid at our idea of now). The signed
            // document's issue time is a good first guess of server time; the
            // handshake's authenticated clock_skew answer then corrects it exactly.
            self.clock_offset = doc.issued_at() as i64 - local_now as i64;
        }
        let now = apply_offset(local_now, self.clock_offset);
        self.handshake = Some(ClientHandshake::new(self.backend.clone(), &self.api_key, &doc, now)?);
        Ok(())
    }

    /// Writes a request. `second_factor` answers a previous `SecondFactorRequired`.
    pub fn begin(
        &self,
        second_factor: Option<SecondFactor<'_>>,
        local_now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<([u8; REQUEST_LEN], AwaitingResponse<B>), Error> {
        let handshake = self.handshake.as_ref().ok_or_else(|| Error::Config("no server key document yet".into()))?;
        let req = ClientRequest { audience: &self.audience, scopes: &self.scopes, second_factor };
        let mut out = [0u8; REQUEST_LEN];
        let pending = handshake.start(&req, apply_offset(local_now, self.clock_offset), rng, &mut out)?;
        Ok((out, pending))
    }

    /// Reads the response to `pending`.
    pub fn complete(&mut self, pending: AwaitingResponse<B>, response: &[u8], local_now: u64) -> Result<Step, Error> {
        match pending.finish(response)? {
            Outcome::Granted(grant) => {
                let lifetime = grant.expires_at.saturating_sub(grant.server_time);
                // Learn the offset from every grant: keeps PoP timestamps in server time.
                self.clock_offset = grant.server_time as i64 - local_now as i64;
                let token = AccessToken(Arc::new(TokenInner {
                    refresh_at_local: local_now + lifetime * 4 / 5,
                    expires_at_local: local_now + lifetime,
                    token: grant.token,
                    session_key: grant.session_key,
                    expires_at: grant.expires_at,
                    clock_offset: self.clock_offset,
                }));
                Ok(Step::Granted(token))
            }
            Outcome::ClockSkew { server_time } => {
                self.clock_offset = server_time as i64 - local_now as i64;
                Ok(Step::RetryWithClock)
            }
            Outcome::ServerKeyChanged { .. } => {
                self.handshake = None;
                Ok(Step::RefetchDocument)
            }
            Outcome::AuthFailed => Err(Error::AuthFailed),
            Outcome::SecondFactorRequired { operation, channel, destination } => {
                Err(Error::SecondFactorRequired { operation, channel: channel.as_str(), destination })
            }
            Outcome::SecondFactorFailed { attempts_left } => Err(Error::SecondFactorFailed { attempts_left }),
            Outcome::RateLimited { retry_after_secs } => {
                Err(Error::RateLimited { retry_after: std::time::Duration::from_secs(retry_after_secs.into()) })
            }
            Outcome::ScopeDenied => Err(Error::ScopeDenied),
            Outcome::ServerError => Err(Error::ServerError),
            Outcome::Malformed => Err(Error::Malformed),
            _ => Err(Error::Malformed),
        }
    }
}
