//! Test harness: the sans-IO fake server (`fake.rs`) behind a real hyper HTTP/1.1
//! server on 127.0.0.1:0 (optionally TLS), speaking the binding the real server
//! implements, with counters and scripted failures.
#![allow(dead_code)]

pub mod fake;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use onetrip_client::{ApiKey, Client, ClientBuilder, Fingerprint};
use onetrip_protocol::REQUEST_LEN;

pub use fake::FakeServer;

/// Unix seconds, system clock.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A fresh random API key and its string.
pub fn new_key() -> (ApiKey, String) {
    let key = ApiKey::generate(&mut rand_core::OsRng);
    let s = key.encode().to_string();
    (key, s)
}

/// A scripted HTTP failure for the next request to a path.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// The fake answers the request first (its replay cache remembers it), then the
    /// answer is lost and this failure sent instead.
    pub after_processing: bool,
}

/// Shared state of one test server.
pub struct State {
    /// The protocol side.
    pub fake: Mutex<FakeServer>,
    /// Server clock = system clock + this many seconds.
    pub skew: AtomicI64,
    /// `GET /v1/server-key` requests served.
    pub documents: AtomicUsize,
    /// `POST /v1/auth` requests received.
    pub auths: AtomicUsize,
    /// Failures to answer the next `POST /v1/auth` requests with, in order.
    pub auth_failures: Mutex<VecDeque<Failure>>,
    /// Failures to answer the next `GET /v1/server-key` requests with, in order.
    pub document_failures: Mutex<VecDeque<Failure>>,
    /// Delay before answering `POST /v1/auth` (lets concurrent callers pile up).
    pub auth_delay: Mutex<Duration>,
}

impl State {
    /// The server's clock.
    pub fn now(&self) -> u64 {
        now().saturating_add_signed(self.skew.load(Ordering::SeqCst))
    }
    /// Queues `n` failures for `POST /v1/auth`.
    pub fn fail_auth(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.auth_failures.lock().unwrap().extend((0..n).map(|_| Failure {
            status,
            retry_after,
            after_processing: false,
        }));
    }
    /// Queues `n` failures for `POST /v1/auth` sent after the fake processed the request.
    pub fn lose_auth_answers(&self, n: usize, status: u16) {
        let failure = Failure { status, retry_after: None, after_processing: true };
        self.auth_failures.lock().unwrap().extend((0..n).map(|_| failure));
    }
    /// Queues `n` failures for `GET /v1/server-key`.
    pub fn fail_documents(&self, n: usize, status: u16) {
        let failure = Failure { status, retry_after: None, after_processing: false };
        self.document_failures.lock().unwrap().extend((0..n).map(|_| failure));
    }
}

/// A running test server; stops accepting when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its identity.
    pub fingerprint: Fingerprint,
    /// Counters and knobs.
    pub state: Arc<State>,
    /// The base URL (`http://…` or `https://…`).
    pub url: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TestServer {
    /// Serves a fake server with `key` registered over plain HTTP.
    pub async fn start(key: &ApiKey) -> Self {
        Self::serve(FakeServer::new(key, now()), None).await
    }

    /// Serves `fake` over HTTP, or over TLS with `tls`.
    pub async fn serve(fake: FakeServer, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fingerprint = fake.fingerprint();
        let state = Arc::new(State {
            fake: Mutex::new(fake),
            skew: AtomicI64::new(0),
            documents: AtomicUsize::new(0),
            auths: AtomicUsize::new(0),
            auth_failures: Mutex::new(VecDeque::new()),
            document_failures: Mutex::new(VecDeque::new()),
            auth_delay: Mutex::new(Duration::ZERO),
        });
        let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        Self { addr, fingerprint, state, url, accept }
    }

    /// A builder for this server, pinned, with small retry delays.
    pub fn client(&self, key: &str) -> ClientBuilder {
        Client::builder()
            .server(&self.url)
            .api_key(key)
            .pin(self.fingerprint)
            .audience(fake::AUDIENCE)
            .retries(3, Duration::from_millis(20))
            .timeout(Duration::from_secs(5))
    }

    /// `POST /v1/auth` requests received.
    pub fn auths(&self) -> usize {
        self.state.auths.load(Ordering::SeqCst)
    }

    /// `GET /v1/server-key` requests served.
    pub fn documents(&self) -> usize {
        self.state.documents.load(Ordering::SeqCst)
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(Bytes::from(body))).unwrap()
}

fn problem(failure: Failure) -> Response<Full<Bytes>> {
    let code = match failure.status {
        429 => "rate_limited",
        503 => "unavailable",
        413 => "too_large",
        400 => "bad_request",
        _ => "error",
    };
    let body = format!(
        r#"{{"type":"https://onetrip.dev/problems/{code}","title":"scripted","status":{},"code":"{code}","detail":"scripted {code}"}}"#,
        failure.status
    );
    let mut r = respond(failure.status, "application/problem+json", body.into_bytes());
    if let Some(secs) = failure.retry_after {
        r.headers_mut().insert("retry-after", secs.into());
    }
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/server-key") => {
            if let Some(f) = state.document_failures.lock().unwrap().pop_front() {
                return Ok(problem(f));
            }
            state.documents.fetch_add(1, Ordering::SeqCst);
            let doc = state.fake.lock().unwrap().document(state.now());
            respond(200, "application/octet-stream", doc)
        }
        ("POST", "/v1/auth") => {
            state.auths.fetch_add(1, Ordering::SeqCst);
            let delay = *state.auth_delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let failure = state.auth_failures.lock().unwrap().pop_front();
            if let Some(f) = failure {
                if f.after_processing {
                    state.fake.lock().unwrap().answer(&body, state.now());
                }
                return Ok(problem(f));
            }
            if parts.headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/octet-stream") {
                return Ok(problem(Failure { status: 415, retry_after: None, after_processing: false }));
            }
            if body.len() != REQUEST_LEN {
                return Ok(problem(Failure { status: 400, retry_after: None, after_processing: false }));
            }
            let answer = state.fake.lock().unwrap().answer(&body, state.now());
            respond(200, "application/octet-stream", answer.to_vec())
        }
        _ => problem(Failure { status: 404, retry_after: None, after_processing: false }),
    })
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, acceptor).
pub fn tls_pair() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
