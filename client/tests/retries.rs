//! Transport behaviour on 127.0.0.1: transport errors, timeouts and 503 are retried
//! with backoff and then surfaced; 429 and other HTTP errors are not retried;
//! concurrent callers share one failure; a still-valid token outlives a failed
//! refresh; https with a custom CA; builder errors.

mod common;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake::FakeServer;
use common::{new_key, now, tls_pair, TestServer};
use onetrip_client::{Client, Error, Fingerprint};

const PIN: &str = "SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY";

#[tokio::test]
async fn service_unavailable_is_retried_with_backoff_then_succeeds() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fail_documents(1, 503);
    server.state.fail_auth(2, 503, None);
    let client = server.client(&key_str).build().unwrap();
    let started = Instant::now();
    client.token().await.unwrap();
    assert_eq!((server.documents(), server.auths()), (1, 3));
    // Document: one wait of 20 ms; auth: 20 ms then 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(80), "backoff: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_sends_a_fresh_request() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    // The server grants, then the answer is lost (a 503 from a proxy, say). Resending
    // the same bytes would hit the replay cache and fail; a fresh request succeeds.
    server.state.lose_auth_answers(1, 503);
    server.client(&key_str).build().unwrap().token().await.unwrap();
    assert_eq!(server.auths(), 2);
    assert_eq!(server.state.fake.lock().unwrap().grants, 2, "the first grant was lost");
}

#[tokio::test]
async fn service_unavailable_is_reported_after_the_last_attempt() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fail_auth(3, 503, None);
    let err = server.client(&key_str).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, ref code, .. } if code == "unavailable"), "{err}");
    assert!(err.is_retryable());
    assert_eq!(server.auths(), 3);
}

#[tokio::test]
async fn rate_limiting_is_reported_with_its_delay_and_not_retried() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fail_auth(1, 429, Some(7));
    let err = server.client(&key_str).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { retry_after } if retry_after == Duration::from_secs(7)), "{err}");
    assert_eq!(server.auths(), 1);
    // A server asking for years is capped at an hour.
    server.state.fail_auth(1, 429, Some(u64::MAX));
    let err = server.client(&key_str).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { retry_after } if retry_after == Duration::from_secs(3600)), "{err}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fail_auth(1, 400, None);
    let err = server.client(&key_str).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 400, ref code, .. } if code == "bad_request"), "{err}");
    assert_eq!(server.auths(), 1);
}

#[tokio::test]
async fn a_closed_port_is_a_bounded_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_, key_str) = new_key();
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key(&key_str)
        .pin(PIN.parse().unwrap())
        .retries(3, Duration::from_millis(50))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.token().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "3 attempts with backoff: {took:?}");
    assert!(!format!("{err} {err:?}").contains(&key_str[4..]));
}

/// A server that accepts connections and never answers; counts connections.
async fn silent_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_and_waiting_callers_share_the_failure() {
    let (port, accepted) = silent_server().await;
    let (_, key_str) = new_key();
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key(&key_str)
        .pin(PIN.parse().unwrap())
        .retries(1, Duration::from_millis(10))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Timeout(d) if d == Duration::from_millis(300)), "{err}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "20 callers waited for one flight, not 20: {took:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // A later call is a new flight.
    assert!(matches!(client.token().await, Err(Error::Timeout(_))));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_refresh_falls_back_to_the_still_valid_token() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().ttl = 100;
    let shift = Arc::new(AtomicI64::new(0));
    let s = shift.clone();
    let state = server.state.clone();
    let clock = Arc::new(move || {
        state.skew.store(s.load(Ordering::SeqCst), Ordering::SeqCst);
        now().saturating_add_signed(s.load(Ordering::SeqCst))
    });
    let client = server.client(&key_str).clock(clock).build().unwrap();
    let first = client.token().await.unwrap();
    shift.store(85, Ordering::SeqCst);
    server.state.fail_auth(3, 503, None);
    assert_eq!(client.token().await.unwrap().token(), first.token(), "still valid: handed out");
    assert_eq!(server.auths(), 4);
    shift.store(97, Ordering::SeqCst);
    server.state.fail_auth(3, 503, None);
    assert!(matches!(client.token().await, Err(Error::Http { status: 503, .. })), "too close to expiry");
    assert_ne!(client.token().await.unwrap().token(), first.token(), "recovered");
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    let (key, key_str) = new_key();
    let (ca_pem, acceptor) = tls_pair();
    let server = TestServer::serve(FakeServer::new(&key, now()), Some(acceptor)).await;
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let client = server.client(&key_str).ca_certificates_pem(ca_pem.as_bytes()).build().unwrap();
    client.token().await.unwrap();
    assert_eq!(server.auths(), 1);
    // Without the CA the certificate is not trusted: a transport error, never retried
    // into success.
    let err = server.client(&key_str).retries(1, Duration::ZERO).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::Transport(ref m) if m.to_lowercase().contains("certificate")), "{err}");
    let err = server.client(&key_str).ca_certificates_pem(b"no pem here").build().unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn the_builder_reports_missing_conflicting_and_invalid_settings() {
    let (_, key) = new_key();
    let pin: Fingerprint = PIN.parse().unwrap();
    let base = || Client::builder().server("http://127.0.0.1:1").api_key(&key);
    let message = |b: onetrip_client::ClientBuilder| b.build().unwrap_err().to_string();
    assert!(message(Client::builder().api_key(&key).pin(pin)).contains("server URL"));
    assert!(message(Client::builder().server("http://x").pin(pin)).contains("API key"));
    let m = message(base());
    assert!(m.contains(".pin(") && m.contains("trust_on_first_use"), "{m}");
    assert!(message(base().pin(pin).trust_on_first_use("/tmp/x")).contains("either"));
    assert!(message(base().pin(pin).api_key(&key)).contains("twice"));
    assert!(message(Client::builder().server("ftp://x").api_key(&key).pin(pin)).contains("http://"));
    assert!(message(base().pin(pin).scopes(["a b"])).contains("no spaces"));
    assert!(message(base().pin(pin).audience("x".repeat(65))).contains("at most 64"));
    assert!(message(base().pin(pin).timeout(Duration::ZERO)).contains("timeout"));
    assert!(base().pin(pin).build().is_ok());
}
