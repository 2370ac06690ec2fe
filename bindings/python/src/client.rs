//! The clients. `Client` wraps `onetrip_client::BlockingClient` and releases the
//! GIL (`Python::detach`) for every call that may touch the network, so other
//! Python threads run during a handshake. `_AsyncClient` wraps the async
//! `onetrip_client::Client` on one shared tokio runtime (pyo3-async-runtimes) and
//! returns asyncio awaitables: the event loop never waits on the network, and
//! cancelling the awaitable drops the Rust future. `onetrip.AsyncClient` (Python)
//! turns those awaitables into real coroutines.

use std::collections::HashMap;

use onetrip_client::{BlockingClient, ClientBuilder};
use pyo3::prelude::*;

use crate::convert;
use crate::errors::client_error;

/// `ca_pem` accepts the PEM text as `str` or `bytes`.
#[derive(FromPyObject)]
pub enum Pem {
    /// PEM as text.
    Text(String),
    /// PEM as bytes.
    Bytes(Vec<u8>),
}

/// The constructor arguments both clients share.
pub struct Settings {
    server: String,
    api_key: String,
    pin: Option<String>,
    trust_on_first_use: Option<std::path::PathBuf>,
    audience: Option<String>,
    scopes: Option<Vec<String>>,
    timeout: f64,
    retries: u32,
    ca_pem: Option<Pem>,
}

impl Settings {
    /// The builder these settings describe (no network).
    fn builder(self) -> PyResult<ClientBuilder> {
        // `String` api keys are wiped after parsing (IntoApiKey for String).
        let mut b = onetrip_client::Client::builder().server(self.server).api_key(self.api_key);
        if let Some(pin) = &self.pin {
            b = b.pin(convert::fingerprint(pin)?);
        }
        if let Some(path) = self.trust_on_first_use {
            b = b.trust_on_first_use(path);
        }
        if let Some(audience) = self.audience {
            b = b.audience(audience);
        }
        if let Some(scopes) = self.scopes {
            b = b.scopes(scopes);
        }
        let timeout = convert::duration("timeout", self.timeout)?;
        b = b.timeout(timeout).retries(self.retries.max(1), std::time::Duration::from_millis(100));
        match self.ca_pem {
            Some(Pem::Text(t)) => b = b.ca_certificates_pem(t.as_bytes()),
            Some(Pem::Bytes(v)) => b = b.ca_certificates_pem(&v),
            None => {}
        }
        Ok(b)
    }

    fn describe(&self) -> (String, String) {
        (self.server.clone(), self.audience.clone().unwrap_or_default())
    }
}

/// Headers for one signed request: `Authorization` and `Onetrip-PoP`.
fn headers(signed: &onetrip_client::SignedRequest) -> HashMap<&'static str, String> {
    HashMap::from([
        ("Authorization", signed.authorization().to_owned()),
        (onetrip_client::POP_HEADER, signed.pop().to_owned()),
    ])
}

/// A short-lived onetrip access token with its session key (kept in Rust).
///
/// `authorization` is the `Authorization` header value (`Onetrip <token>`). The
/// repr shows only times; the session key is never reachable from Python.
#[pyclass(module = "onetrip", frozen)]
pub struct AccessToken(onetrip_client::AccessToken);

#[pymethods]
impl AccessToken {
    /// The `Authorization` header value: `Onetrip <base64url token>`. A secret: do not log it.
    #[getter]
    fn authorization(&self) -> String {
        self.0.authorization().to_string()
    }
    /// Issue time, server clock, unix seconds.
    #[getter]
    fn issued_at(&self) -> u64 {
        self.0.issued_at()
    }
    /// Expiry, server clock, unix seconds.
    #[getter]
    fn expires_at(&self) -> u64 {
        self.0.expires_at()
    }
    /// Local time (unix seconds) from which the client fetches a new token.
    #[getter]
    fn refresh_at(&self) -> u64 {
        self.0.refresh_at()
    }
    /// True when a second factor was verified for this token.
    #[getter]
    fn second_factor(&self) -> bool {
        self.0.second_factor()
    }
    fn __repr__(&self) -> String {
        format!(
            "AccessToken(issued_at={}, expires_at={}, second_factor={})",
            self.0.issued_at(),
            self.0.expires_at(),
            if self.0.second_factor() { "True" } else { "False" }
        )
    }
}

/// A blocking onetrip client: fetches, caches and refreshes tokens, and signs requests.
///
/// Thread-safe: share one per process. Every call releases the GIL while it
/// waits on the network. Errors are `onetrip.Error` subclasses.
#[pyclass(module = "onetrip", frozen)]
pub struct Client {
    inner: BlockingClient,
    server: String,
    audience: String,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (server, api_key, *, pin=None, trust_on_first_use=None, audience=None, scopes=None, timeout=10.0, retries=3, ca_pem=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        server: String,
        api_key: String,
        pin: Option<String>,
        trust_on_first_use: Option<std::path::PathBuf>,
        audience: Option<String>,
        scopes: Option<Vec<String>>,
        timeout: f64,
        retries: u32,
        ca_pem: Option<Pem>,
    ) -> PyResult<Self> {
        let s = Settings { server, api_key, pin, trust_on_first_use, audience, scopes, timeout, retries, ca_pem };
        let (server, audience) = s.describe();
        let inner = BlockingClient::build(s.builder()?).map_err(client_error)?;
        Ok(Self { inner, server, audience })
    }

    /// A valid access token: cached, or fetched in one roundtrip (GIL released).
    fn token(&self, py: Python<'_>) -> PyResult<AccessToken> {
        py.detach(|| self.inner.token()).map(AccessToken).map_err(client_error)
    }

    /// Completes a step-up: `operation` from `SecondFactorRequired.operation`, `code`
    /// as the user received it.
    fn token_with_code(&self, py: Python<'_>, operation: &str, code: &str) -> PyResult<AccessToken> {
        let op = convert::operation(operation)?;
        py.detach(|| self.inner.token_with_code(op, code)).map(AccessToken).map_err(client_error)
    }

    /// Headers for one request to a resource server: `{"Authorization": ..., "Onetrip-PoP": ...}`.
    #[pyo3(signature = (method, path, body=b"".as_slice()))]
    fn sign_request(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> PyResult<HashMap<&'static str, String>> {
        let signed = py.detach(|| self.inner.sign_request(method, path, body)).map_err(client_error)?;
        Ok(headers(&signed))
    }

    /// A database login credential for `user` (and `database`, when the database
    /// can see it): a password string of at most 507 characters, valid for about a
    /// minute and bound to user, database, audience and time. A secret: never log it.
    #[pyo3(signature = (user, database=None))]
    fn login_credential(&self, py: Python<'_>, user: &str, database: Option<&str>) -> PyResult<String> {
        let credential = py.detach(|| self.inner.login_credential(user, database)).map_err(client_error)?;
        Ok(credential.as_str().to_owned())
    }

    /// Drops the cached token: the next call fetches a new one.
    fn invalidate(&self) {
        self.inner.invalidate();
    }

    /// Handshake requests sent so far, retries included.
    #[getter]
    fn handshakes(&self) -> u64 {
        self.inner.handshakes()
    }

    fn __repr__(&self) -> String {
        format!("Client(server={:?}, audience={:?})", self.server, self.audience)
    }
}

/// The native half of `onetrip.AsyncClient`: methods return asyncio awaitables
/// driven by a shared tokio runtime.
#[pyclass(module = "onetrip._onetrip", name = "_AsyncClient", frozen)]
pub struct AsyncClientCore {
    inner: onetrip_client::Client,
    server: String,
    audience: String,
}

#[pymethods]
impl AsyncClientCore {
    #[new]
    #[pyo3(signature = (server, api_key, *, pin=None, trust_on_first_use=None, audience=None, scopes=None, timeout=10.0, retries=3, ca_pem=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        server: String,
        api_key: String,
        pin: Option<String>,
        trust_on_first_use: Option<std::path::PathBuf>,
        audience: Option<String>,
        scopes: Option<Vec<String>>,
        timeout: f64,
        retries: u32,
        ca_pem: Option<Pem>,
    ) -> PyResult<Self> {
        let s = Settings { server, api_key, pin, trust_on_first_use, audience, scopes, timeout, retries, ca_pem };
        let (server, audience) = s.describe();
        let builder = s.builder()?;
        // The connection pool spawns onto the runtime it is built in.
        let _guard = pyo3_async_runtimes::tokio::get_runtime().enter();
        let inner = builder.build().map_err(client_error)?;
        Ok(Self { inner, server, audience })
    }

    fn token<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(
            py,
            async move { c.token().await.map(AccessToken).map_err(client_error) },
        )
    }

    fn token_with_code<'py>(&self, py: Python<'py>, operation: &str, code: String) -> PyResult<Bound<'py, PyAny>> {
        let op = convert::operation(operation)?;
        let c = self.inner.clone();
        let code = zeroize::Zeroizing::new(code);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            c.token_with_code(op, &code).await.map(AccessToken).map_err(client_error)
        })
    }

    #[pyo3(signature = (method, path, body=Vec::new()))]
    fn sign_request<'py>(
        &self,
        py: Python<'py>,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let signed = c.sign_request(&method, &path, &body).await.map_err(client_error)?;
            Ok(headers(&signed))
        })
    }

    #[pyo3(signature = (user, database=None))]
    fn login_credential<'py>(
        &self,
        py: Python<'py>,
        user: String,
        database: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let credential = c.login_credential(&user, database.as_deref()).await.map_err(client_error)?;
            Ok(credential.as_str().to_owned())
        })
    }

    fn invalidate(&self) {
        self.inner.invalidate();
    }

    #[getter]
    fn handshakes(&self) -> u64 {
        self.inner.handshakes()
    }

    fn __repr__(&self) -> String {
        format!("AsyncClient(server={:?}, audience={:?})", self.server, self.audience)
    }
}
