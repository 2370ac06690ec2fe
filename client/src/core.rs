//! The sans-IO client: trust decisions, the cached server key document and prepared
//! handshake, the clock offset, the current token, and turning responses into tokens
//! or retry steps. No sockets, files, clock or OS randomness: the shells pass them in.
//!
//! One `token()` call drives it like this (the async and blocking clients do exactly
//! this, plus HTTP):
//!
//! ```text
//! let mut flight = Flight::default();
//! loop {
//!     if core.needs_document(now) { let d = core.check_document(GET /v1/server-key)?;
//!                                /* persist d.first_use() */ core.accept_document(d, now)?; }
//!     let (request, pending) = core.begin(now, rng, second_factor)?;
//!     match core.complete(&mut flight, pending, POST /v1/auth (request), now)? {
//!         Step::Granted(token) => return token,
//!         Step::RefetchDocument | Step::RetryWithClock => continue,
//!     }
//! }
//! ```

use onetrip_protocol::handshake::{ClientRequest, SecondFactor, REQUEST_LEN};
#[cfg(doc)]
use onetrip_protocol::DocumentError;
use onetrip_protocol::{
    ApiKey, AwaitingResponse, ClientHandshake, CryptoBackend, DefaultBackend, Fingerprint, Outcome, ServerKeyDocument,
};
use rand_core::CryptoRngCore;

use crate::error::Error;
use crate::token::AccessToken;
use crate::trust::TrustAnchor;

/// What to do after a response.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// Done: the token is also cached in the core.
    Granted(AccessToken),
    /// The server key changed (signed answer): fetch the document again, then begin
    /// again. Happens at most once per [`Flight`].
    RefetchDocument,
    /// The clock offset was corrected from the server's authenticated time: begin
    /// again. Happens at most once per [`Flight`].
    RetryWithClock,
}

/// The one-time allowances of one `token()` call: one document refetch on
/// `server_key_changed`, one clock correction on `clock_skew`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flight {
    refetched: bool,
    clock_corrected: bool,
}

/// A request on its way: the protocol state that can read its answer, and when it
/// left. Consumed by [`ClientCore::complete`]; dropped if the request never arrived.
#[derive(Debug)]
pub struct Pending<B: CryptoBackend = DefaultBackend> {
    awaiting: AwaitingResponse<B>,
    sent_at_local: u64,
    second_factor: bool,
}

/// A document whose signature verified and whose identity the trust anchor accepts.
/// Hand it to [`ClientCore::accept_document`].
#[derive(Debug, Clone)]
pub struct CheckedDocument {
    document: ServerKeyDocument,
    first_use: bool,
}

impl CheckedDocument {
    /// The identity, when it is trusted on first use and not remembered yet: persist
    /// it before accepting the document, so a failed write never leaves a trust
    /// decision that lives only in memory.
    pub fn first_use(&self) -> Option<Fingerprint> {
        self.first_use.then(|| self.document.fingerprint())
    }
    /// The verified document.
    pub fn document(&self) -> &ServerKeyDocument {
        &self.document
    }
}

/// The sans-IO client state for one API key and one server.
pub struct ClientCore<B: CryptoBackend = DefaultBackend> {
    backend: B,
    api_key: ApiKey,
    trust: TrustAnchor,
    audience: String,
    scopes: String,
    document: Option<ServerKeyDocument>,
    /// Holds the static-static DH for (API key, server key): prepared once per
    /// document, so each handshake costs one ephemeral key and one DH.
    handshake: Option<ClientHandshake<B>>,
    /// Server time minus local time, seconds.
    clock_offset: i64,
    token: Option<AccessToken>,
}

impl<B: CryptoBackend> std::fmt::Debug for ClientCore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCore")
            .field("key_id", &self.api_key.id())
            .field("trust", &self.trust)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("has_document", &self.document.is_some())
            .field("clock_offset", &self.clock_offset)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<B: CryptoBackend> ClientCore<B> {
    /// A client for `api_key` that trusts per `trust` and asks for `audience` and
    /// `scopes` (space separated; empty = the server's default audience and all of
    /// the key's scopes).
    pub fn new(backend: B, api_key: ApiKey, trust: TrustAnchor, audience: String, scopes: String) -> Self {
        Self {
            backend,
            api_key,
            trust,
            audience,
            scopes,
            document: None,
            handshake: None,
            clock_offset: 0,
            token: None,
        }
    }

    /// True until a document has been accepted, again after `server_key_changed`,
    /// and once the document is past its signed `expires_at` (PROTOCOL.md §3): a
    /// stale document is never used, it is fetched again.
    pub fn needs_document(&self, local_now: u64) -> bool {
        self.handshake.is_none() || self.document_is_stale(local_now)
    }

    fn document_is_stale(&self, local_now: u64) -> bool {
        self.document.as_ref().is_none_or(|d| d.check_fresh(self.server_now(local_now)).is_err())
    }

    /// Seconds to add to the local clock to get server time.
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset
    }

    /// The trust anchor (after a first use, the remembered identity).
    pub fn trust(&self) -> TrustAnchor {
        self.trust
    }

    /// The current token if younger than 80% of its lifetime.
    pub fn fresh_token(&self, local_now: u64) -> Option<AccessToken> {
        self.token.as_ref().filter(|t| t.is_fresh(local_now)).cloned()
    }

    /// The current token if a failed refresh may still hand it out (not expired, and
    /// not in the last twentieth of its lifetime).
    pub fn fallback_token(&self, local_now: u64) -> Option<AccessToken> {
        self.token.as_ref().filter(|t| t.usable_as_fallback(local_now)).cloned()
    }

    /// Forgets the current token (e.g. after a resource server refused it).
    pub fn invalidate_token(&mut self) {
        self.token = None;
    }

    fn server_now(&self, local_now: u64) -> u64 {
        local_now.saturating_add_signed(self.clock_offset)
    }

    /// Parses a server key document, verifies its signature, and checks its identity
    /// against the pin or the remembered first-use identity.
    ///
    /// # Errors
    /// [`Error::Document`] for a malformed or forged document;
    /// [`Error::ServerIdentityChanged`] naming both fingerprints when the identity is
    /// not the trusted one.
    pub fn check_document(&self, bytes: &[u8]) -> Result<CheckedDocument, Error> {
        let document = ServerKeyDocument::parse(bytes)?;
        let first_use = match self.trust.expected() {
            Some(expected) => {
                document.check_pin(&expected)?;
                false
            }
            None => true,
        };
        Ok(CheckedDocument { document, first_use })
    }

    /// Adopts a checked document: remembers a first-use identity and prepares the
    /// handshake for the key current at server time.
    ///
    /// # Errors
    /// [`Error::Document`] with [`DocumentError::Expired`] when the document is past
    /// its `expires_at` at the estimated server time (the cached document and
    /// handshake are dropped, so the next call fetches again), or when no handshake
    /// key is valid then; [`Error::Protocol`] for an unusable server key.
    pub fn accept_document(&mut self, checked: CheckedDocument, local_now: u64) -> Result<(), Error> {
        let CheckedDocument { document, first_use } = checked;
        if first_use {
            self.trust = TrustAnchor::FirstUse(Some(document.fingerprint()));
        }
        // Expiry is checked against the time learnt from authenticated answers only,
        // before the guess below: a replayed old document must not be able to wind
        // our clock back to its own issue time and so look fresh.
        if let Err(e) = document.check_fresh(self.server_now(local_now)) {
            self.document = None;
            self.handshake = None;
            return Err(e.into());
        }
        let server_now = self.server_now(local_now);
        if document.issued_at() > server_now
            && document.current(server_now).is_err()
            && document.current(document.issued_at()).is_ok()
        {
            // Our clock is far behind (no key is valid yet at our idea of now). The
            // signed document's issue time is a good first estimate of server time;
            // an authenticated clock_skew answer then corrects it exactly. The guess
            // only ever moves our clock forward, towards expiry, never back.
            self.clock_offset = offset(document.issued_at(), local_now);
        }
        let handshake =
            ClientHandshake::new(self.backend.clone(), &self.api_key, &document, self.server_now(local_now))?;
        self.document = Some(document);
        self.handshake = Some(handshake);
        Ok(())
    }

    /// Writes a handshake request with a fresh ephemeral key and nonce.
    /// `second_factor` answers a previous [`Error::SecondFactorRequired`].
    ///
    /// # Errors
    /// [`Error::Config`] before a document was accepted; [`Error::InvalidRequest`]
    /// when audience, scopes or code do not fit the protocol.
    pub fn begin(
        &self,
        local_now: u64,
        rng: &mut impl CryptoRngCore,
        second_factor: Option<SecondFactor<'_>>,
    ) -> Result<([u8; REQUEST_LEN], Pending<B>), Error> {
        let handshake = self
            .handshake
            .as_ref()
            .ok_or_else(|| Error::Config("no server key document accepted yet (call accept_document first)".into()))?;
        if let Some(document) = &self.document {
            // The shells refetch when needs_document says so; this keeps a stale
            // document from being used by a caller that skipped that check.
            document.check_fresh(self.server_now(local_now))?;
        }
        let request = ClientRequest { audience: &self.audience, scopes: &self.scopes, second_factor };
        let mut out = [0u8; REQUEST_LEN];
        let awaiting = handshake.start(&request, self.server_now(local_now), rng, &mut out)?;
        Ok((out, Pending { awaiting, sent_at_local: local_now, second_factor: second_factor.is_some() }))
    }

    /// Reads the response to `pending` (any 200 body of `POST /v1/auth`).
    ///
    /// # Errors
    /// The typed refusal ([`Error::AuthFailed`], [`Error::SecondFactorRequired`], …);
    /// [`Error::ServerKeyChanged`] / [`Error::ClockSkew`] when `flight` already used
    /// its one refetch / correction; [`Error::Protocol`] for bytes that are not a
    /// genuine answer to this request.
    pub fn complete(
        &mut self,
        flight: &mut Flight,
        pending: Pending<B>,
        response: &[u8],
        local_now: u64,
    ) -> Result<Step, Error> {
        let Pending { awaiting, sent_at_local, second_factor } = pending;
        match awaiting.finish(response)? {
            Outcome::Granted(grant) => {
                // The server time is authenticated: learn the offset from every grant,
                // so proofs of possession carry server time.
                self.clock_offset = offset(grant.server_time, local_now);
                let token = AccessToken::from_grant(*grant, sent_at_local, self.clock_offset, second_factor);
                self.token = Some(token.clone());
                Ok(Step::Granted(token))
            }
            Outcome::ClockSkew { server_time } => {
                if std::mem::replace(&mut flight.clock_corrected, true) {
                    return Err(Error::ClockSkew);
                }
                self.clock_offset = offset(server_time, local_now);
                self.reprepare(local_now)?;
                Ok(Step::RetryWithClock)
            }
            Outcome::ServerKeyChanged { server_time, .. } => {
                if std::mem::replace(&mut flight.refetched, true) {
                    return Err(Error::ServerKeyChanged);
                }
                // Signed by the pinned identity over our own request: fresh and genuine.
                self.clock_offset = offset(server_time, local_now);
                self.document = None;
                self.handshake = None;
                Ok(Step::RefetchDocument)
            }
            Outcome::AuthFailed => Err(Error::AuthFailed),
            Outcome::SecondFactorRequired { operation, channel, destination } => {
                Err(Error::SecondFactorRequired { operation, channel, destination })
            }
            Outcome::SecondFactorFailed { attempts_left } => Err(Error::SecondFactorFailed { attempts_left }),
            Outcome::RateLimited { retry_after_secs } => {
                Err(Error::RateLimited { retry_after: std::time::Duration::from_secs(retry_after_secs.into()) })
            }
            Outcome::ScopeDenied => Err(Error::ScopeDenied),
            Outcome::ServerError => Err(Error::ServerError),
            Outcome::Malformed => Err(Error::Malformed),
            // A status added to the protocol after this client was written.
            _ => Err(Error::Malformed),
        }
    }

    /// After a clock correction, the key current at the new server time may differ.
    fn reprepare(&mut self, local_now: u64) -> Result<(), Error> {
        let (Some(document), Some(handshake)) = (&self.document, &self.handshake) else { return Ok(()) };
        let Ok(current) = document.current(self.server_now(local_now)) else { return Ok(()) };
        if current.key_id != handshake.server_key().key_id {
            self.handshake = Some(ClientHandshake::with_server_key(
                self.backend.clone(),
                &self.api_key,
                *current,
                *document.identity(),
            )?);
        }
        Ok(())
    }
}

fn offset(server_time: u64, local_now: u64) -> i64 {
    (i128::from(server_time) - i128::from(local_now)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
#[path = "core_test.rs"]
mod tests;
