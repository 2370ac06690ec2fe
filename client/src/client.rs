//! The async client: `Client::builder()…build()?` then `client.token().await?`.
//! Tokens are cached until 80% of their lifetime; concurrent callers share one
//! in-flight handshake; `server_key_changed` and `clock_skew` are each retried once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use onetrip_protocol::handshake::SecondFactor;
use onetrip_protocol::{ApiKey, DefaultBackend, Fingerprint};

use crate::core::{AccessToken, ClientCore, SignedRequest, Step};
use crate::error::Error;
use crate::transport::Transport;
use crate::trust::Trust;

/// A clock in unix seconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Configures a [`Client`].
pub struct ClientBuilder {
    server: Option<String>,
    api_key: Option<Result<ApiKey, Error>>,
    trust: Option<Trust>,
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
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Base URL of the onetrip server, e.g. `http://127.0.0.1:7420`.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.server = Some(url.into());
        self
    }
    /// The API key, as the `otk_…` string.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(ApiKey::parse(key).map_err(Error::from));
        self
    }
    /// The API key, already parsed.
    pub fn api_key_parsed(mut self, key: ApiKey) -> Self {
        self.api_key = Some(Ok(key));
        self
    }
    /// Trust only this server identity (recommended).
    pub fn pin(mut self, fingerprint: Fingerprint) -> Self {
        self.trust = Some(Trust::Pin(fingerprint));
        self
    }
    /// Trust the first identity seen, remembered in `path`; a later change is an error.
    pub fn trust_on_first_use(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Some(Trust::FirstUse { path: path.into() });
        self
    }
    /// Audience to request tokens for (default: the key's first, or the server's).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }
    /// Scopes to request (default: all of the key's).
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
    /// Per-request timeout (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Attempts for transport errors and 503 (default 3), and the first backoff (100 ms).
    pub fn retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts;
        self.backoff = backoff;
        self
    }
    /// Also trust this CA (PEM) for `https://` servers.
    pub fn ca_certificates_pem(mut self, pem: &[u8]) -> Self {
        self.ca_pem.push(pem.to_vec());
        self
    }
    /// A clock returning unix seconds (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is missing; [`Error::InvalidApiKey`].
    pub fn build(self) -> Result<Client, Error> {
        let server = self.server.ok_or_else(|| Error::Config("set the server URL with .server(..)".into()))?;
        let api_key = self.api_key.ok_or_else(|| Error::Config("set the API key with .api_key(..)".into()))??;
        let trust = self.trust.ok_or_else(|| {
            Error::Config(
                "choose how to trust the server: .pin(fingerprint) (see `onetrip server-key show`) or .trust_on_first_use(path)"
                    .into(),
            )
        })?;
        let scopes = self.scopes.join(" ");
        let transport = Transport::new(&server, &self.ca_pem, self.timeout, self.attempts, self.backoff)?;
        let core = ClientCore::new(DefaultBackend::default(), api_key, trust, self.audience, scopes);
        Ok(Client(Arc::new(Inner {
            core: Mutex::new(core),
            refresh: tokio::sync::Mutex::new(()),
            cached: Mutex::new(None),
            transport,
            clock: self.clock,
            handshakes: AtomicU64::new(0),
        })))
    }
}

struct Inner {
    /// Sans-IO state; a std mutex, never held across an await.
    core: Mutex<ClientCore>,
    /// Held while a handshake is in flight: the single-flight gate.
    refresh: tokio::sync::Mutex<()>,
    cached: Mutex<Option<AccessToken>>,
    transport: Transport,
    clock: Clock,
    handshakes: AtomicU64,
}

/// The onetrip client. Cheap to clone; share one per API key.
#[derive(Clone)]
pub struct Client(Arc<Inner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("handshakes", &self.handshakes()).finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            server: None,
            api_key: None,
            trust: None,
            audience: String::new(),
            scopes: Vec::new(),
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(100),
            ca_pem: Vec::new(),
            clock: Arc::new(system_clock),
        }
    }

    /// Handshakes this client has sent (for tests and metrics).
    pub fn handshakes(&self) -> u64 {
        self.0.handshakes.load(Ordering::Relaxed)
    }

    fn fresh_cached(&self) -> Option<AccessToken> {
        let now = (self.0.clock)();
        let cached = self.0.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached.as_ref().filter(|t| t.is_fresh(now)).cloned()
    }

    /// A valid token: the cached one until 80% of its lifetime, else a new one.
    /// Concurrent callers share a single handshake.
    ///
    /// # Errors
    /// See [`Error`]; only transport errors and 503 are retried.
    pub async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(t) = self.fresh_cached() {
            return Ok(t);
        }
        let _gate = self.0.refresh.lock().await;
        if let Some(t) = self.fresh_cached() {
            return Ok(t);
        }
        self.handshake(None).await
    }

    /// Answers `Error::SecondFactorRequired` with the code the user received.
    ///
    /// # Errors
    /// [`Error::SecondFactorFailed`] for a wrong code, or any [`Error`].
    pub async fn token_with_code(&self, operation: [u8; 16], code: &str) -> Result<AccessToken, Error> {
        let _gate = self.0.refresh.lock().await;
        self.handshake(Some(SecondFactor { operation, code })).await
    }

    /// Forgets the cached token (e.g. after the resource server refused it).
    pub fn invalidate(&self) {
        *self.0.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Signs a request to a resource server with the current token.
    ///
    /// # Errors
    /// As [`Self::token`].
    pub async fn sign_request(&self, method: &str, path: &str, body: &[u8]) -> Result<SignedRequest, Error> {
        let token = self.token().await?;
        token.sign(method, path, body, (self.0.clock)(), &mut rand_core::OsRng)
    }

    async fn fetch_document(&self) -> Result<(), Error> {
        let bytes = self.0.transport.call(Method::GET, "/v1/server-key", b"").await?;
        let now = (self.0.clock)();
        self.0.core.lock().unwrap_or_else(|p| p.into_inner()).accept_document(&bytes, now)
    }

    async fn handshake(&self, second_factor: Option<SecondFactor<'_>>) -> Result<AccessToken, Error> {
        let (mut refetched, mut clock_fixed) = (false, false);
        loop {
            if self.0.core.lock().unwrap_or_else(|p| p.into_inner()).needs_document() {
                self.fetch_document().await?;
            }
            let (request, pending) = {
                let core = self.0.core.lock().unwrap_or_else(|p| p.into_inner());
                core.begin(second_factor, (self.0.clock)(), &mut rand_core::OsRng)?
            };
            self.0.handshakes.fetch_add(1, Ordering::Relaxed);
            let response = self.0.transport.call(Method::POST, "/v1/auth", &request).await?;
            let step = {
                let mut core = self.0.core.lock().unwrap_or_else(|p| p.into_inner());
                core.complete(pending, &response, (self.0.clock)())?
            };
            match step {
                Step::Granted(token) => {
                    *self.0.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                    return Ok(token);
                }
                Step::RefetchDocument if !refetched => refetched = true,
                Step::RefetchDocument => return Err(Error::ServerKeyChanged),
                Step::RetryWithClock if !clock_fixed => clock_fixed = true,
                Step::RetryWithClock => return Err(Error::ClockSkew),
            }
        }
    }
}
