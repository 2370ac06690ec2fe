//! The async client: `Client::builder()…build()?` then `client.token().await?`.
//! Tokens are cached until 80% of their lifetime; concurrent callers share one
//! in-flight handshake and its result; `server_key_changed` and `clock_skew` are each
//! handled once per call; transport errors and 503 are retried with backoff.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use onetrip_protocol::handshake::SecondFactor;
use onetrip_protocol::{ApiKey, ApiKeyError, DefaultBackend, Fingerprint};
use zeroize::Zeroizing;

use crate::core::{ClientCore, Flight, Pending, Step};
use crate::error::Error;
use crate::token::{AccessToken, LoginCredential, SignedRequest};
use crate::transport::{Backoff, Transport};
use crate::trust::{self, Trust};

/// A clock in unix seconds. Injectable for tests ([`ClientBuilder::clock`]).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub(crate) fn system_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What [`ClientBuilder::api_key`] accepts: the `otk_…` string or a parsed [`ApiKey`].
pub trait IntoApiKey {
    /// Parses (or passes through) the key.
    ///
    /// # Errors
    /// [`ApiKeyError`] for a malformed string (the error never repeats it).
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError>;
}

impl IntoApiKey for &str {
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError> {
        ApiKey::parse(self)
    }
}
impl IntoApiKey for &String {
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError> {
        ApiKey::parse(self)
    }
}
impl IntoApiKey for String {
    /// Takes ownership so the copy can be wiped after parsing.
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError> {
        ApiKey::parse(&Zeroizing::new(self))
    }
}
impl IntoApiKey for ApiKey {
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError> {
        Ok(self)
    }
}
impl IntoApiKey for &ApiKey {
    fn into_api_key(self) -> Result<ApiKey, ApiKeyError> {
        Ok(self.clone())
    }
}

/// Configures a [`Client`]. Required: [`Self::server`], [`Self::api_key`], and one of
/// [`Self::pin`] or [`Self::trust_on_first_use`].
pub struct ClientBuilder {
    server: Option<String>,
    api_key: Option<Result<ApiKey, Error>>,
    trust: Option<Trust>,
    conflicts: Vec<&'static str>,
    audience: String,
    scopes: Vec<String>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
    ca_pem: Vec<Vec<u8>>,
    clock: Clock,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server", &self.server)
            .field("trust", &self.trust)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Base URL of the onetrip server, e.g. `http://127.0.0.1:7420` or
    /// `https://auth.example.com/onetrip`.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.server = Some(url.into());
        self
    }
    /// The API key: the `otk_…` string (`&str`, `&String`, `String`) or an [`ApiKey`].
    pub fn api_key(mut self, key: impl IntoApiKey) -> Self {
        if self.api_key.is_some() {
            self.conflicts.push("the API key is set twice: call .api_key(..) once");
        }
        self.api_key = Some(key.into_api_key().map_err(Error::from));
        self
    }
    /// Trusts only this server identity (recommended; `onetrip server-key show`).
    pub fn pin(self, fingerprint: Fingerprint) -> Self {
        self.set_trust(Trust::Pin(fingerprint))
    }
    /// Trusts the first identity seen and remembers it in `path` (created mode 0600);
    /// a later change is [`Error::ServerIdentityChanged`].
    pub fn trust_on_first_use(self, path: impl Into<PathBuf>) -> Self {
        self.set_trust(Trust::FirstUse { path: path.into() })
    }
    fn set_trust(mut self, trust: Trust) -> Self {
        if self.trust.is_some() {
            self.conflicts.push("trust is configured twice: use either .pin(..) or .trust_on_first_use(..), once");
        }
        self.trust = Some(trust);
        self
    }
    /// Audience (resource server) to request tokens for; default: the server's.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }
    /// Scopes to request; default: all of the key's.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
    /// Per-request timeout, connecting included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Attempts for transport errors, timeouts and 503 (default 3, at least 1) and
    /// the first backoff (default 100 ms, doubling).
    pub fn retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts;
        self.backoff = backoff;
        self
    }
    /// Trusts this CA (PEM, one or more certificates) for `https://` servers
    /// instead of the webpki roots. May be called more than once.
    pub fn ca_certificates_pem(mut self, pem: &[u8]) -> Self {
        self.ca_pem.push(pem.to_vec());
        self
    }
    /// A clock returning unix seconds (default: the system clock). For tests.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the client. Reads the trust-on-first-use file, if configured; makes no
    /// network request.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is missing or wrong; [`Error::InvalidApiKey`];
    /// [`Error::TrustFile`].
    pub fn build(self) -> Result<Client, Error> {
        if let Some(conflict) = self.conflicts.first() {
            return Err(Error::Config((*conflict).into()));
        }
        let server = self
            .server
            .ok_or_else(|| Error::Config("set the server URL with .server(\"http://127.0.0.1:7420\")".into()))?;
        let api_key = self.api_key.ok_or_else(|| {
            Error::Config("set the API key with .api_key(..) (the otk_… string `onetrip keys create` printed)".into())
        })??;
        let trust = self.trust.ok_or_else(|| {
            Error::Config(
                "choose how to trust the server: .pin(fingerprint) with the SHA256:… fingerprint `onetrip server-key show` prints (recommended), or .trust_on_first_use(path)"
                    .into(),
            )
        })?;
        check_text("audience", &self.audience, 64)?;
        if self.audience.contains(' ') {
            return Err(Error::Config(format!("audience `{}` must not contain spaces", self.audience)));
        }
        for scope in &self.scopes {
            if scope.is_empty() || scope.contains(' ') {
                return Err(Error::Config(format!("scope `{scope}` must be non-empty and contain no spaces")));
            }
        }
        let scopes = self.scopes.join(" ");
        check_text("scopes", &scopes, 128)?;
        if self.timeout.is_zero() {
            return Err(Error::Config("the timeout must be longer than zero".into()));
        }
        let transport = Transport::new(&server, &self.ca_pem, self.timeout)?;
        let core = ClientCore::new(DefaultBackend::default(), api_key, trust.anchor()?, self.audience, scopes);
        let trust_file = match trust {
            Trust::FirstUse { path } => Some(path),
            _ => None,
        };
        Ok(Client(Arc::new(Inner {
            core: Mutex::new(core),
            gate: tokio::sync::Mutex::new(None),
            flights: AtomicU64::new(0),
            transport,
            trust_file,
            clock: self.clock,
            attempts: self.attempts,
            backoff: self.backoff,
            handshakes: AtomicU64::new(0),
        })))
    }

    /// Builds a [`crate::BlockingClient`] with its own runtime.
    ///
    /// # Errors
    /// As [`Self::build`].
    pub fn build_blocking(self) -> Result<crate::BlockingClient, Error> {
        crate::BlockingClient::build(self)
    }
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), Error> {
    if text.len() > max || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::Config(format!("{what} must be at most {max} printable ASCII characters")));
    }
    Ok(())
}

struct Inner {
    /// Sans-IO state. A std mutex: never held across an await.
    core: Mutex<ClientCore>,
    /// The single-flight gate, held while a handshake is in flight. It keeps the
    /// result of the last `token()` flight so callers that queued behind it share it
    /// (an error too: 100 callers behind a dead server wait once, not 100 times).
    gate: tokio::sync::Mutex<Option<Result<AccessToken, Error>>>,
    /// `token()` flights completed; a caller that saw an older count shares the result.
    flights: AtomicU64,
    transport: Transport,
    /// Where a first-use identity is persisted.
    trust_file: Option<PathBuf>,
    clock: Clock,
    attempts: u32,
    backoff: Duration,
    handshakes: AtomicU64,
}

/// The onetrip client. Cheap to clone (one `Arc`); share one per API key and server.
#[derive(Clone)]
pub struct Client(Arc<Inner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("core", &*self.core()).finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            server: None,
            api_key: None,
            trust: None,
            conflicts: Vec::new(),
            audience: String::new(),
            scopes: Vec::new(),
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(100),
            ca_pem: Vec::new(),
            clock: Arc::new(system_clock),
        }
    }

    /// Handshake requests this client has sent, retries included (tests, metrics).
    pub fn handshakes(&self) -> u64 {
        self.0.handshakes.load(Ordering::Relaxed)
    }

    /// Seconds the client adds to its clock to get server time (learnt from the
    /// server's authenticated answers).
    pub fn clock_offset(&self) -> i64 {
        self.core().clock_offset()
    }

    fn core(&self) -> MutexGuard<'_, ClientCore> {
        // A panic while holding this lock cannot leave the core half-updated in a
        // way that matters (each method assigns whole fields), so keep going.
        self.0.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.0.transport
    }

    fn now(&self) -> u64 {
        (self.0.clock)()
    }

    /// A valid token: the cached one until 80% of its lifetime, else a new one from
    /// one handshake. Concurrent callers share a single handshake and its result.
    ///
    /// When a refresh fails with a retryable error (server unreachable, overloaded,
    /// rate limited) and the cached token is still comfortably valid, that token is
    /// returned instead of the error.
    ///
    /// # Errors
    /// See [`Error`]. Only transport errors, timeouts and 503 are retried (with
    /// backoff); `server_key_changed` and `clock_skew` are each handled once.
    pub async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(t) = self.core().fresh_token(self.now()) {
            return Ok(t);
        }
        let seen = self.0.flights.load(Ordering::Acquire);
        let mut last = self.0.gate.lock().await;
        if let Some(t) = self.core().fresh_token(self.now()) {
            return Ok(t);
        }
        if self.0.flights.load(Ordering::Acquire) != seen {
            // A flight completed while we queued: its answer is ours too.
            if let Some(result) = last.as_ref() {
                return result.clone();
            }
        }
        let result = match self.handshake(None).await {
            Err(e) if e.is_retryable() => match self.core().fallback_token(self.now()) {
                Some(t) => {
                    tracing::warn!(error = %e, "onetrip token refresh failed; using the still-valid token");
                    Ok(t)
                }
                None => Err(e),
            },
            other => other,
        };
        *last = Some(result.clone());
        self.0.flights.fetch_add(1, Ordering::Release);
        result
    }

    /// Answers [`Error::SecondFactorRequired`] with the code the user received; the
    /// resulting token (flagged second-factor) is cached like any other.
    ///
    /// # Errors
    /// [`Error::SecondFactorFailed`] for a wrong, expired or used code;
    /// [`Error::InvalidRequest`] for a code that is not 4 to 10 characters; any
    /// [`Error`] of [`Self::token`].
    pub async fn token_with_code(&self, operation: [u8; 16], code: &str) -> Result<AccessToken, Error> {
        let _gate = self.0.gate.lock().await;
        self.handshake(Some(SecondFactor { operation, code })).await
    }

    /// Forgets the cached token (e.g. after a resource server refused it), so the
    /// next [`Self::token`] makes a handshake.
    pub fn invalidate(&self) {
        self.core().invalidate_token();
    }

    /// Signs a request to a resource server (method, path with query, body) with the
    /// current token, refreshed if needed, and the OS CSPRNG.
    ///
    /// # Errors
    /// As [`Self::token`]; [`Error::InvalidRequest`] for an absurdly long method or path.
    pub async fn sign_request(&self, method: &str, path: &str, body: &[u8]) -> Result<SignedRequest, Error> {
        self.token().await?.sign(method, path, body, self.now())
    }

    /// A database login credential (PROTOCOL.md §14) for `user` and, when given,
    /// `database`, from the current token, refreshed if needed (as [`Self::token`]).
    /// Send it as the password of one connection: the database refuses it a second
    /// time, and after [`onetrip_protocol::LOGIN_WINDOW_SECS`].
    ///
    /// # Errors
    /// As [`Self::token`]; [`Error::InvalidRequest`] for a name over 255 bytes.
    pub async fn login_credential(&self, user: &str, database: Option<&str>) -> Result<LoginCredential, Error> {
        self.token().await?.login_credential(user, database, self.now())
    }

    /// One handshake with its one-time allowances. Call with the gate held.
    async fn handshake(&self, second_factor: Option<SecondFactor<'_>>) -> Result<AccessToken, Error> {
        let mut flight = Flight::default();
        loop {
            if self.core().needs_document(self.now()) {
                self.fetch_document().await?;
            }
            let (pending, response) = self.post_auth(second_factor).await?;
            let step = self.core().complete(&mut flight, pending, &response, self.now())?;
            match step {
                Step::Granted(token) => return Ok(token),
                Step::RefetchDocument => tracing::debug!("onetrip server key changed; refetching its document"),
                Step::RetryWithClock => tracing::debug!("onetrip server reported clock skew; retrying once"),
            }
        }
    }

    async fn fetch_document(&self) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.0.attempts, self.0.backoff);
        let bytes = loop {
            match self.0.transport.get("/v1/server-key").await {
                Err(e) if backoff.retry(&e).await => {}
                other => break other?,
            }
        };
        let checked = self.core().check_document(&bytes)?;
        if let (Some(fp), Some(path)) = (checked.first_use(), &self.0.trust_file) {
            tracing::info!(fingerprint = %fp, path = %path.display(), "trusting onetrip server on first use");
            trust::remember(path, &fp)?;
        }
        let now = self.now();
        self.core().accept_document(checked, now)
    }

    /// `POST /v1/auth`, retried on transient errors with a fresh request each time: a
    /// resent copy would be refused by the server's replay cache.
    async fn post_auth(&self, second_factor: Option<SecondFactor<'_>>) -> Result<(Pending, Bytes), Error> {
        let mut backoff = Backoff::new(self.0.attempts, self.0.backoff);
        loop {
            let now = self.now();
            let (request, pending) = self.core().begin(now, &mut rand_core::OsRng, second_factor)?;
            self.0.handshakes.fetch_add(1, Ordering::Relaxed);
            match self.0.transport.post("/v1/auth", &request).await {
                Ok(response) => return Ok((pending, response)),
                Err(e) if backoff.retry(&e).await => {}
                Err(e) => return Err(e),
            }
        }
    }
}
