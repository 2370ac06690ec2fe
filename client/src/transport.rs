//! HTTP/1.1 keep-alive transport to one onetrip server (hyper-util's pooled client,
//! http or https via rustls) with a per-request timeout, and the backoff policy for
//! the errors worth retrying (transport failures, timeouts, 503). Callers decide what
//! to resend: a handshake is retried with a fresh request, never the same bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rand_core::RngCore;

use crate::error::Error;

/// Largest response body read: documents are ≤ 352 bytes, answers 400, problems small.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest `Retry-After` passed on to callers: a broken or hostile server must not
/// make a caller that honours it sleep for years.
const MAX_RETRY_AFTER_SECS: u64 = 3600;
/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Connection pool and timeout for one server.
#[derive(Clone)]
pub(crate) struct Transport {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

impl Transport {
    /// A transport for `base` (`http://host:port` or `https://host[/prefix]`).
    /// `custom_roots_pem`, when not empty, replaces the webpki roots for https.
    pub(crate) fn new(base: &str, custom_roots_pem: &[Vec<u8>], timeout: Duration) -> Result<Self, Error> {
        let base = check_base(base)?;
        let mut roots = rustls::RootCertStore::empty();
        if custom_roots_pem.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for pem in custom_roots_pem {
            use rustls_pki_types::pem::PemObject;
            let before = roots.len();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("invalid CA certificate PEM: {e}")))?;
                roots.add(cert).map_err(|e| Error::Config(format!("unusable CA certificate: {e}")))?;
            }
            if roots.len() == before {
                return Err(Error::Config("ca_certificates_pem: no CERTIFICATE block found in the PEM".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Ok(Self { http, base, timeout })
    }

    /// `GET path`: the 200 body or a typed error. One attempt.
    pub(crate) async fn get(&self, path: &str) -> Result<Bytes, Error> {
        self.once(Method::GET, path, None).await
    }

    /// `POST path` with an `application/octet-stream` body. One attempt.
    pub(crate) async fn post(&self, path: &str, body: &[u8]) -> Result<Bytes, Error> {
        self.once(Method::POST, path, Some(body)).await
    }

    /// A JSON call with extra headers (the signed OTP API): any 2xx body, or a typed
    /// error. One attempt: these calls are not idempotent (a check uses an attempt).
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&'static str, &str)],
    ) -> Result<Bytes, Error> {
        self.exchange(method, path, body, "application/json", headers).await
    }

    async fn once(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Bytes, Error> {
        self.exchange(method, path, body, "application/octet-stream", &[]).await
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        content_type: &'static str,
        headers: &[(&'static str, &str)],
    ) -> Result<Bytes, Error> {
        let uri = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&uri);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|e| Error::Config(format!("invalid server URL `{uri}`: {e}")))?;
        let exchange = async {
            let resp = self.http.request(request).await.map_err(|e| Error::Transport(describe(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| secs.min(MAX_RETRY_AFTER_SECS));
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| Error::Transport(format!("reading the response failed: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, retry_after, body))
        };
        let (status, retry_after, body) =
            tokio::time::timeout(self.timeout, exchange).await.map_err(|_| Error::Timeout(self.timeout))??;
        match status {
            s if s.is_success() => Ok(body),
            StatusCode::TOO_MANY_REQUESTS => {
                Err(Error::RateLimited { retry_after: Duration::from_secs(retry_after.unwrap_or(1)) })
            }
            _ => Err(problem(status, &body)),
        }
    }
}

/// Checks the base URL: http or https, a host, no query; a path prefix is allowed
/// (a server behind a reverse proxy). Returns it without a trailing slash.
fn check_base(base: &str) -> Result<String, Error> {
    let base = base.trim().trim_end_matches('/');
    let uri: Uri = base.parse().map_err(|e| Error::Config(format!("server URL `{base}` is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(Error::Config(format!("server URL `{base}` must start with http:// or https://")));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::Config(format!("server URL `{base}` has no host")));
    }
    if uri.query().is_some() {
        return Err(Error::Config(format!("server URL `{base}` must not have a query")));
    }
    Ok(base.to_owned())
}

/// An `application/problem+json` body (or anything else) as [`Error::Http`].
fn problem(status: StatusCode, body: &[u8]) -> Error {
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| problem.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Error::Http {
        status: status.as_u16(),
        code: text("code").unwrap_or_else(|| "unknown".into()),
        detail: text("detail")
            .or_else(|| text("title"))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no details").to_owned()),
    }
}

/// The error and its causes on one line (hyper's top-level message is terse).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Bounded exponential backoff for transient errors: `attempts` tries in all, waits
/// of `base`, `2·base`, `4·base`, … each stretched by up to a quarter at random so
/// that many clients do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    attempts_left: u32,
    delay: Duration,
}

impl Backoff {
    pub(crate) fn new(attempts: u32, base: Duration) -> Self {
        Self { attempts_left: attempts.max(1) - 1, delay: base }
    }

    /// After a failure: waits and returns true if `error` is transient and attempts
    /// remain; otherwise returns false at once.
    pub(crate) async fn retry(&mut self, error: &Error) -> bool {
        if !error.is_transient() || self.attempts_left == 0 {
            return false;
        }
        self.attempts_left -= 1;
        let jitter = self.delay.mul_f64(f64::from(rand_core::OsRng.next_u32() % 1000) / 4000.0);
        tracing::debug!(error = %error, delay = ?self.delay, "onetrip request failed; retrying");
        tokio::time::sleep(self.delay + jitter).await;
        self.delay = self.delay.saturating_mul(2);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(check_base("http://127.0.0.1:7420/").unwrap(), "http://127.0.0.1:7420");
        assert_eq!(check_base("https://auth.example/onetrip").unwrap(), "https://auth.example/onetrip");
        for bad in ["ftp://x", "127.0.0.1:7420", "http://x/?a=b", "not a url"] {
            assert!(matches!(check_base(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn problems_are_read_and_non_json_bodies_tolerated() {
        let body = br#"{"type":"https://onetrip.dev/problems/bad-request","title":"Bad request","status":400,"code":"bad_request","detail":"wrong length"}"#;
        let e = problem(StatusCode::BAD_REQUEST, body);
        assert!(
            matches!(e, Error::Http { status: 400, ref code, ref detail } if code == "bad_request" && detail == "wrong length")
        );
        let e = problem(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(matches!(e, Error::Http { status: 502, ref code, .. } if code == "unknown"), "{e}");
    }

    #[tokio::test]
    async fn backoff_doubles_and_stops() {
        let mut backoff = Backoff::new(3, Duration::from_millis(20));
        let transient = Error::Transport("reset".into());
        let start = std::time::Instant::now();
        assert!(backoff.retry(&transient).await);
        assert!(backoff.retry(&transient).await);
        assert!(!backoff.retry(&transient).await, "three attempts in all");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_secs(2), "{waited:?}");
        assert!(!Backoff::new(3, Duration::from_millis(1)).retry(&Error::AuthFailed).await);
    }
}
