//! HTTP/1.1 keep-alive transport (hyper-util's pooled client, http or https via
//! rustls), with a per-request timeout and bounded, backed-off retries for
//! transport errors and 503 only: a protocol answer is never retried here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::error::Error;

/// Largest response body the client reads.
const MAX_RESPONSE: usize = 64 * 1024;

/// Connection pool and retry policy for one server.
#[derive(Clone)]
pub(crate) struct Transport {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl Transport {
    pub(crate) fn new(
        base: &str,
        extra_roots_pem: &[Vec<u8>],
        timeout: Duration,
        attempts: u32,
        backoff: Duration,
    ) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!("server URL `{base}` must start with http:// or https://")));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for pem in extra_roots_pem {
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("invalid CA certificate PEM: {e}")))?;
                roots.add(cert).map_err(|e| Error::Config(format!("unusable CA certificate: {e}")))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
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
        let http =
            HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Self { http, base, timeout, attempts: attempts.max(1), backoff })
    }

    /// `GET` or `POST` with retries; returns the 200 body or a typed error.
    pub(crate) async fn call(&self, method: Method, path: &str, body: &[u8]) -> Result<Bytes, Error> {
        let mut delay = self.backoff;
        let mut last = Error::Transport("no attempt made".into());
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            match self.once(method.clone(), path, body).await {
                Ok(bytes) => return Ok(bytes),
                Err(e @ (Error::Transport(_) | Error::Timeout(_))) => last = e,
                Err(e @ Error::Http { status: 503, .. }) => last = e,
                Err(e) => return Err(e),
            }
            tracing::debug!(attempt, error = %last, "onetrip request failed; retrying");
        }
        Err(last)
    }

    async fn once(&self, method: Method, path: &str, body: &[u8]) -> Result<Bytes, Error> {
        let uri = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| Error::Config(format!("invalid server URL `{uri}`: {e}")))?;
        let exchange = async {
            let resp = self.http.request(request).await.map_err(|e| Error::Transport(describe(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
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
            StatusCode::OK => Ok(body),
            StatusCode::TOO_MANY_REQUESTS => {
                Err(Error::RateLimited { retry_after: Duration::from_secs(retry_after.unwrap_or(1)) })
            }
            _ => {
                let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                Err(Error::Http {
                    status: status.as_u16(),
                    code: problem["code"].as_str().unwrap_or("unknown").to_owned(),
                    detail: problem["detail"].as_str().unwrap_or("no details").to_owned(),
                })
            }
        }
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
