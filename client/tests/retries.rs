//! Transport behaviour against a scripted HTTP server on 127.0.0.1: 503 is retried
//! with backoff and then surfaced; protocol answers are never retried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onetrip_client::{Client, Error};
use onetrip_protocol::server_key::IdentityKey;
use onetrip_protocol::{DefaultBackend, Responder, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "otk_28hFN8fOrAwSJr_qm1YhqstTr-aN2AWbsYCqU4RnL8rGcm6T1mhXDWp9n9w";

/// Answers each connection's first request from `script(n)` and closes.
async fn scripted(script: impl Fn(usize, &str) -> (u16, Vec<u8>) + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let line = String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned();
                let (status, body) = script(n, &line);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\ncontent-type: application/problem+json\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn service_unavailable_is_retried_with_backoff_then_reported() {
    let identity = IdentityKey::generate(&mut rand_core::OsRng);
    let fingerprint = identity.fingerprint();
    let mut responder = Responder::new(DefaultBackend::default(), identity, Secret::new([1; 32]));
    responder.add_key(*b"k0000001", &Secret::new([2; 32]), 0, u64::MAX).unwrap();
    let document = responder.signed_document(1).unwrap();
    let unavailable = br#"{"code":"unavailable","detail":"overloaded"}"#.to_vec();
    let (port, count) = scripted(move |n, line| {
        if line.starts_with("GET /v1/server-key") && n >= 2 {
            (200, document.clone())
        } else {
            (503, unavailable.clone())
        }
    })
    .await;
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key(KEY)
        .pin(fingerprint)
        .retries(3, Duration::from_millis(40))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.token().await.unwrap_err();
    // Document: 503, 503, 200 (two retries); auth: 503 three times, then the error.
    assert!(matches!(err, Error::Http { status: 503, ref code, .. } if code == "unavailable"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 6);
    assert!(started.elapsed() >= Duration::from_millis(40 + 80 + 40 + 80), "backoff doubles");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (port, count) = scripted(|_, _| (400, br#"{"code":"bad_request","detail":"nope"}"#.to_vec())).await;
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key(KEY)
        .pin("SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY".parse().unwrap())
        .retries(3, Duration::from_millis(10))
        .build()
        .unwrap();
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 400, .. }), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_garbage_document_is_a_typed_error() {
    let (port, _) = scripted(|_, _| (200, b"not a document".to_vec())).await;
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key(KEY)
        .pin("SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY".parse().unwrap())
        .build()
        .unwrap();
    assert!(matches!(client.token().await.unwrap_err(), Error::Document(_)));
}

#[test]
fn builder_reports_missing_and_invalid_settings() {
    let err = Client::builder().api_key(KEY).build().unwrap_err();
    assert!(err.to_string().contains("server URL"));
    let err = Client::builder()
        .server("ftp://x")
        .api_key(KEY)
        .pin("SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY".parse().unwrap())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("http://"));
    let err = Client::builder().server("http://x").build().unwrap_err();
    assert!(err.to_string().contains("API key"));
}
