//! The client against an in-test server on 127.0.0.1 that runs the protocol's
//! `Responder`: round trip, cache, 80% refresh, single flight, one-time refetch and
//! clock correction, second factor, refusals, and the blocking wrapper.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fake::{AUDIENCE, DESTINATION, OPERATION};
use common::{new_key, now, TestServer};
use onetrip_client::{BlockingClient, Channel, Error, PopProof};

/// A clock shared by the client and the server, `shift` seconds ahead of the system's.
fn shared_clock(server: &TestServer) -> (Arc<AtomicI64>, onetrip_client::Clock) {
    let shift = Arc::new(AtomicI64::new(0));
    let s = shift.clone();
    let state = server.state.clone();
    let clock = Arc::new(move || {
        let shift = s.load(Ordering::SeqCst);
        state.skew.store(shift, Ordering::SeqCst);
        now().saturating_add_signed(shift)
    });
    (shift, clock)
}

#[tokio::test]
async fn a_token_round_trip_signs_requests_the_resource_server_accepts() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).scopes(["db:read"]).build().unwrap();
    let signed = client.sign_request("CONNECT", "orders", b"startup packet").await.unwrap();
    assert!(signed.authorization().starts_with("Onetrip "));
    let proof = PopProof::from_header(signed.pop()).unwrap();
    let verifier = server.state.fake.lock().unwrap().verifier();
    let claims = verifier
        .verify_request(signed.token().as_bytes(), &proof, "CONNECT", "orders", b"startup packet", now(), 60)
        .unwrap();
    assert_eq!((claims.audience(), claims.scopes()), (AUDIENCE, "db:read"));
    assert_eq!(claims.api_key_id, key.id());
    assert_eq!((server.documents(), server.auths()), (1, 1));
}

#[tokio::test]
async fn a_cache_hit_returns_the_same_token_without_a_handshake() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).build().unwrap();
    let first = client.token().await.unwrap();
    let second = client.clone().token().await.unwrap();
    assert_eq!(first.token(), second.token());
    client.sign_request("GET", "/", b"").await.unwrap();
    assert_eq!((server.documents(), server.auths(), client.handshakes()), (1, 1, 1));
    client.invalidate();
    assert_ne!(client.token().await.unwrap().token(), first.token(), "invalidate forces a handshake");
    assert_eq!((server.documents(), server.auths()), (1, 2), "the document stays cached");
}

#[tokio::test]
async fn the_token_is_refreshed_after_eighty_percent_of_its_lifetime() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().ttl = 100;
    let (shift, clock) = shared_clock(&server);
    let client = server.client(&key_str).clock(clock).build().unwrap();
    let first = client.token().await.unwrap();
    assert_eq!(first.expires_at() - first.issued_at(), 100);
    shift.store(79, Ordering::SeqCst);
    assert_eq!(client.token().await.unwrap().token(), first.token(), "still fresh at 79%");
    assert_eq!(server.auths(), 1);
    shift.store(81, Ordering::SeqCst);
    let second = client.token().await.unwrap();
    assert_ne!(second.token(), first.token(), "refreshed past 80%");
    assert_eq!((server.documents(), server.auths()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_calls_on_a_cold_client_make_one_handshake() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    *server.state.auth_delay.lock().unwrap() = Duration::from_millis(100);
    let client = server.client(&key_str).build().unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap());
    }
    assert!(tokens.windows(2).all(|w| w[0].token() == w[1].token()), "all callers share one token");
    assert_eq!((server.documents(), server.auths(), client.handshakes()), (1, 1, 1));
}

#[tokio::test]
async fn server_key_changed_costs_exactly_one_refetch() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).build().unwrap();
    client.token().await.unwrap();
    server.state.fake.lock().unwrap().rotate(now());
    client.invalidate();
    client.token().await.unwrap();
    assert_eq!(server.documents(), 2, "one refetch");
    assert_eq!(server.auths(), 3, "first token, one stale attempt, one success");
}

#[tokio::test]
async fn an_expired_document_is_fetched_again_and_a_replayed_stale_copy_is_refused() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().document_lifetime = 600;
    let (shift, clock) = shared_clock(&server);
    let client = server.client(&key_str).clock(clock).build().unwrap();
    client.token().await.unwrap();
    let captured = server.state.fake.lock().unwrap().document(now());
    // Past both the token's lifetime (900 s) and the document's (600 s).
    shift.store(1_000, Ordering::SeqCst);
    client.token().await.unwrap();
    assert_eq!((server.documents(), server.auths()), (2, 2), "the expired document was fetched again");
    // Someone answers the next fetch with the copy captured earlier: refused, typed.
    server.state.fake.lock().unwrap().replayed_document = Some(captured);
    shift.store(2_000, Ordering::SeqCst);
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::Document(onetrip_client::DocumentError::Expired { .. })), "{err}");
    assert_eq!((server.documents(), server.auths()), (3, 2), "refetched once, and no handshake on the stale copy");
}

#[tokio::test]
async fn a_server_that_keeps_changing_keys_is_reported_after_one_refetch() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().always_key_changed = true;
    let client = server.client(&key_str).build().unwrap();
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::ServerKeyChanged), "{err}");
    assert_eq!((server.documents(), server.auths()), (2, 2));
}

#[tokio::test]
async fn clock_skew_is_corrected_with_one_retry() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    let client = server.client(&key_str).clock(Arc::new(|| now() + 300)).build().unwrap();
    let token = client.token().await.unwrap();
    assert_eq!(server.auths(), 2, "one clock_skew answer, one grant");
    assert!((-302..=-298).contains(&client.clock_offset()), "offset {}", client.clock_offset());
    // Proofs carry server time, so the resource server accepts them despite the skew.
    let signed = token.sign("GET", "/rows", b"", now() + 300).unwrap();
    let verifier = server.state.fake.lock().unwrap().verifier();
    verifier.verify_request(signed.token().as_bytes(), signed.proof(), "GET", "/rows", b"", now(), 5).unwrap();
    // The learnt offset stays: the next refresh needs no correction.
    client.invalidate();
    client.token().await.unwrap();
    assert_eq!(server.auths(), 3);
}

#[tokio::test]
async fn the_second_factor_flow() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().otp_code = Some("424242".into());
    let client = server.client(&key_str).build().unwrap();
    let err = client.token().await.unwrap_err();
    let Error::SecondFactorRequired { operation, channel, ref destination } = err else { panic!("{err}") };
    assert_eq!((operation, channel, destination.as_str()), (OPERATION, Channel::Console, DESTINATION));

    let err = client.token_with_code(operation, "000000").await.unwrap_err();
    assert!(matches!(err, Error::SecondFactorFailed { attempts_left: 2 }), "{err}");
    assert!(!format!("{err} {err:?}").contains("000000"));
    let token = client.token_with_code(operation, "424242").await.unwrap();
    assert!(token.second_factor());
    assert_eq!(client.token().await.unwrap().token(), token.token(), "the step-up token is cached");
    assert_eq!(server.auths(), 3);
    let err = client.token_with_code(operation, "1").await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
}

#[tokio::test]
async fn auth_failed_is_not_retried_and_errors_hold_no_secret() {
    let (key, _) = new_key();
    let server = TestServer::start(&key).await;
    let (_, stranger) = new_key();
    let client = server.client(&stranger).build().unwrap();
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::AuthFailed), "{err}");
    assert_eq!(server.auths(), 1, "never retried");
    let shown = format!("{err} {err:?} {client:?}");
    assert!(!shown.contains(&stranger[4..]), "{shown}");
    assert!(err.to_string().contains("onetrip keys create"), "actionable: {err}");

    // A mistyped key is refused locally, without echoing it.
    let mut typo = stranger.clone();
    let c = if &stranger[20..21] == "A" { "B" } else { "A" };
    typo.replace_range(20..21, c);
    let err = server.client(&typo).build().unwrap_err();
    assert!(matches!(err, Error::InvalidApiKey(_)), "{err}");
    assert!(!format!("{err} {err:?}").contains(&typo[4..]));
}

#[tokio::test]
async fn scope_denied_is_a_typed_error() {
    let (key, key_str) = new_key();
    let server = TestServer::start(&key).await;
    server.state.fake.lock().unwrap().force = Some(onetrip_protocol::handshake::server::Reply::ScopeDenied);
    let err = server.client(&key_str).scopes(["admin"]).build().unwrap().token().await.unwrap_err();
    assert!(matches!(err, Error::ScopeDenied), "{err}");
    assert_eq!(server.auths(), 1);
}

#[test]
fn the_blocking_client_works_without_a_runtime_and_refuses_inside_one() {
    let (key, key_str) = new_key();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start(&key));
    let client = BlockingClient::build(server.client(&key_str)).unwrap();
    let signed = client.sign_request("CONNECT", "orders", b"startup").unwrap();
    assert_eq!(client.token().unwrap().token(), signed.token());
    assert_eq!((server.auths(), client.handshakes()), (1, 1));
    let err = rt.block_on(async { client.token() }).unwrap_err();
    assert!(matches!(err, Error::Config(ref m) if m.contains("onetrip_client::Client")), "{err}");
    drop(client);
    drop(server);
}
