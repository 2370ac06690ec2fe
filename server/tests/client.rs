//! The client library against the real server: caching, single flight, one-time
//! retries, trust decisions and errors.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use onetrip_client::{BlockingClient, Client, Error};

fn client_for(server: &Server, key: &str) -> onetrip_client::ClientBuilder {
    Client::builder().server(format!("http://127.0.0.1:{}", server.port)).api_key(key).pin(server.fingerprint)
}

fn key_string(server: &Server, args: &[&str]) -> String {
    let mut full = vec!["keys", "create", "--json"];
    full.extend_from_slice(args);
    let out = server.cli(&full);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["api_key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_then_signed_request_and_cache_hit() {
    let server = Server::start(&[]);
    let key = key_string(&server, &["--name", "app", "--scope", "db:read", "--audience", "db"]);
    let client = client_for(&server, &key).audience("db").scopes(["db:read"]).build().unwrap();
    let t1 = client.token().await.unwrap();
    let t2 = client.token().await.unwrap();
    assert_eq!(t1.token(), t2.token(), "cached until 80% of its lifetime");
    assert_eq!(client.handshakes(), 1);
    let whoami = |signed: onetrip_client::SignedRequest| {
        http(
            server.port,
            "GET",
            "/v1/whoami",
            &[("authorization", signed.authorization()), ("onetrip-pop", signed.pop())],
            b"",
        )
    };
    // A `db` token is for the database, not for the server's own API.
    let r = whoami(client.sign_request("GET", "/v1/whoami", b"").await.unwrap());
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("token_invalid")));
    let own = client_for(&server, &key).audience("onetrip").build().unwrap();
    let r = whoami(own.sign_request("GET", "/v1/whoami", b"").await.unwrap());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!((r.json()["audience"].as_str(), r.json()["scope"].as_str()), (Some("onetrip"), Some("")));
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_token_calls_make_one_handshake() {
    let server = Server::start(&[]);
    let key = key_string(&server, &["--name", "app"]);
    let client = client_for(&server, &key).build().unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.token().await.map(|t| t.token().clone()) })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap());
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "all callers share one token");
    assert_eq!(client.handshakes(), 1);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 1, "exactly one handshake on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_happens_at_eighty_percent_of_the_lifetime() {
    let server = Server::start(&["--token-ttl-secs", "100"]);
    let key = key_string(&server, &["--name", "app"]);
    let offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let o = offset.clone();
    let clock = Arc::new(move || now() + o.load(std::sync::atomic::Ordering::Relaxed));
    let client = client_for(&server, &key).clock(clock).build().unwrap();
    let first = client.token().await.unwrap();
    offset.store(79, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(client.token().await.unwrap().token(), first.token(), "still fresh at 79%");
    offset.store(81, std::sync::atomic::Ordering::Relaxed);
    // The client's clock now runs 81 s ahead of the server's: the server answers
    // clock_skew, the client corrects its offset once and gets a new token.
    let second = client.token().await.unwrap();
    assert_ne!(second.token(), first.token(), "refreshed after 80%");
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"clock_skew\"}"), 1);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_is_corrected_once() {
    let server = Server::start(&[]);
    let key = key_string(&server, &["--name", "app"]);
    // Two minutes ahead: a key is valid at that time, the server answers clock_skew
    // (authenticated), the client adopts the server time and retries once.
    let ahead = client_for(&server, &key).clock(Arc::new(|| now() + 120)).build().unwrap();
    ahead.token().await.unwrap();
    assert_eq!(ahead.handshakes(), 2);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"clock_skew\"}"), 1);
    // An hour behind: no server key is valid at that time yet; the document's signed
    // issue time gives the first estimate and one handshake suffices.
    let behind = client_for(&server, &key).clock(Arc::new(|| now() - 3600)).build().unwrap();
    let token = behind.token().await.unwrap();
    assert!(token.expires_at() > now());
    assert!(behind.handshakes() <= 2);
    // Signed requests use server time, so the proof is accepted despite the skew.
    for client in [&ahead, &behind] {
        let signed = client.sign_request("GET", "/v1/whoami", b"").await.unwrap();
        let r = http(
            server.port,
            "GET",
            "/v1/whoami",
            &[("authorization", signed.authorization()), ("onetrip-pop", signed.pop())],
            b"",
        );
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_changes_are_hard_errors() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    let key = key_string(&a, &["--name", "app"]);
    // Pin mismatch.
    let wrong_pin = Client::builder()
        .server(format!("http://127.0.0.1:{}", a.port))
        .api_key(&key)
        .pin(b.fingerprint)
        .build()
        .unwrap();
    let err = wrong_pin.token().await.unwrap_err();
    assert!(matches!(err, Error::ServerIdentityChanged { .. }), "{err}");
    // Trust on first use: remembered, then another identity at the same name is refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("onetrip.trust");
    let tofu = Client::builder()
        .server(format!("http://127.0.0.1:{}", a.port))
        .api_key(&key)
        .trust_on_first_use(&file)
        .build()
        .unwrap();
    tofu.token().await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), a.fingerprint.to_string());
    let other = Client::builder()
        .server(format!("http://127.0.0.1:{}", b.port))
        .api_key(&key)
        .trust_on_first_use(&file)
        .build()
        .unwrap();
    let err = other.token().await.unwrap_err();
    assert!(
        matches!(err, Error::ServerIdentityChanged { expected, found } if expected == a.fingerprint && found == b.fingerprint)
    );
    // No trust configured: a clear builder error.
    let err = Client::builder().server("http://127.0.0.1:1").api_key(&key).build().unwrap_err();
    assert!(err.to_string().contains("pin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_not_retried_and_errors_hold_no_secret() {
    let server = Server::start(&[]);
    let key = key_string(&server, &["--name", "app"]);
    let id = onetrip_client::ApiKey::parse(&key).unwrap().id().to_string();
    assert!(server.cli(&["keys", "revoke", &id]).status.success());
    let client = client_for(&server, &key).build().unwrap();
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::AuthFailed), "{err}");
    assert_eq!(client.handshakes(), 1);
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&key[4..]), "error shows the key");
    // A bad key string is refused locally, without echoing it.
    let mut typo = key.clone();
    typo.replace_range(20..21, if &key[20..21] == "A" { "B" } else { "A" });
    let err = client_for(&server, &typo).build().unwrap_err();
    assert!(matches!(err, Error::InvalidApiKey(_)));
    assert!(!err.to_string().contains(&typo[4..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_bounded_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::builder()
        .server(format!("http://127.0.0.1:{port}"))
        .api_key("otk_28hFN8fOrAwSJr_qm1YhqstTr-aN2AWbsYCqU4RnL8rGcm6T1mhXDWp9n9w")
        .pin("SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY".parse().unwrap())
        .retries(3, Duration::from_millis(50))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.token().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(err.is_retryable());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "3 attempts with backoff: {took:?}");
}

#[test]
fn blocking_client_works_without_a_runtime() {
    let server = Server::start(&[]);
    let key = key_string(&server, &["--name", "app", "--audience", "db"]);
    let client = BlockingClient::build(client_for(&server, &key)).unwrap();
    let signed = client.sign_request("CONNECT", "orders", b"startup").unwrap();
    assert!(signed.authorization().starts_with("Onetrip "));
    assert_eq!(client.handshakes(), 1);
    // The resource server verifies in-process with its audience key only.
    let out = server.cli(&["audience-key", "db", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let k = &v["keys"][0];
    let key_id: [u8; 4] = hex_bytes(k["key_id"].as_str().unwrap()).try_into().unwrap();
    let secret: [u8; 32] = hex_bytes(k["key"].as_str().unwrap()).try_into().unwrap();
    let verifier = onetrip_client::TokenVerifier::new(
        onetrip_client::DefaultBackend::default(),
        "db",
        &[(key_id, onetrip_client::Secret::new(secret))],
    )
    .unwrap();
    let token = onetrip_client::Token::from_base64(signed.authorization().strip_prefix("Onetrip ").unwrap()).unwrap();
    let proof = onetrip_client::PopProof::from_header(signed.pop()).unwrap();
    let claims = verifier.verify_request(token.as_bytes(), &proof, "CONNECT", "orders", b"startup", now(), 60).unwrap();
    assert_eq!(claims.audience(), "db");
    assert!(verifier.verify_request(token.as_bytes(), &proof, "CONNECT", "billing", b"startup", now(), 60).is_err());
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_step_up_flow() {
    let server = Server::start(&["--otp-console-codes"]);
    let key = key_string(&server, &["--name", "admin", "--require-otp", "--otp-to", "console:ops"]);
    let client = client_for(&server, &key).build().unwrap();
    let Err(Error::SecondFactorRequired { operation, channel, .. }) = client.token().await else {
        panic!("expected SecondFactorRequired")
    };
    assert_eq!(channel, onetrip_client::Channel::Console);
    let marker = format!("(operation {}): ", hex_string(&operation));
    let mut code = None;
    for _ in 0..100 {
        if let Some(l) = server.stderr().lines().find(|l| l.contains(&marker)) {
            code = Some(l.rsplit(": ").next().unwrap().trim().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = code.expect("console code");
    let err = client.token_with_code(operation, "0000000").await.unwrap_err();
    assert!(matches!(err, Error::SecondFactorFailed { attempts_left: 4 }), "{err}");
    client.token_with_code(operation, &code).await.unwrap();
    // Cached: no new second factor needed until refresh.
    client.token().await.unwrap();
    assert_eq!(client.handshakes(), 3);
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otp_api_calls_are_typed_and_signed() {
    use onetrip_client::{NewVerification, OtpChannel, VerificationStatus};
    let server = Server::start(&["--otp-console-codes"]);
    let key = key_string(&server, &["--name", "svc", "--scope", "otp"]);
    let client = client_for(&server, &key).build().unwrap();
    let mut new = NewVerification::new(OtpChannel::Console, "user-42");
    new.code_length = Some(8);
    let v = client.otp_create(&new).await.unwrap();
    assert_eq!((v.status, v.attempts_left, v.sends_left), (VerificationStatus::Pending, 5, 3));
    assert_eq!(v.to, "u***2");
    let code = server.console_code(&v.id);
    assert_eq!(code.len(), 8);
    let wrong = client.otp_check(&v.id, "00000000x").await.unwrap();
    assert!(!wrong.valid);
    assert_eq!(wrong.verification.attempts_left, 4);
    match client.otp_resend(&v.id).await {
        Err(Error::RateLimited { retry_after }) => assert!(retry_after <= Duration::from_secs(30)),
        other => panic!("a resend within the cooldown must be rate limited, got {other:?}"),
    }
    let ok = client.otp_check(&v.id, &code).await.unwrap();
    assert!(ok.valid);
    assert_eq!(ok.verification.status, VerificationStatus::Approved);
    assert_eq!(client.otp_get(&v.id).await.unwrap().status, VerificationStatus::Approved);
    match client.otp_check(&v.id, &code).await {
        Err(Error::Http { status: 409, code, .. }) => assert_eq!(code, "verification_not_pending"),
        other => panic!("codes are single use, got {other:?}"),
    }
    let second = client.otp_create(&NewVerification::new(OtpChannel::Console, "user-43")).await.unwrap();
    assert_eq!(client.otp_cancel(&second.id).await.unwrap().status, VerificationStatus::Canceled);
    match client.otp_get("0123456789abcdef0123456789abcdef").await {
        Err(Error::Http { status: 404, code, .. }) => assert_eq!(code, "verification_not_found"),
        other => panic!("unknown ids are 404, got {other:?}"),
    }
    assert!(matches!(client.otp_get("../v1/auth").await, Err(Error::InvalidRequest(_))));
    match client.otp_create(&NewVerification::new(OtpChannel::Email, "a@example.com")).await {
        Err(Error::Http { status: 400, code, .. }) => assert_eq!(code, "channel_unavailable"),
        other => panic!("email is not configured on this server, got {other:?}"),
    }
    // A key without the otp scope is told so.
    let plain = key_string(&server, &["--name", "plain"]);
    let plain = client_for(&server, &plain).build().unwrap();
    match plain.otp_create(&NewVerification::new(OtpChannel::Console, "x")).await {
        Err(Error::Http { status: 403, code, .. }) => assert_eq!(code, "scope_required"),
        other => panic!("expected scope_required, got {other:?}"),
    }
    assert_eq!(client.handshakes(), 1, "every call reused the cached token");
}

#[test]
fn blocking_client_otp_calls() {
    let server = Server::start(&["--otp-console-codes"]);
    let key = key_string(&server, &["--name", "svc", "--scope", "otp"]);
    let client = client_for(&server, &key).build_blocking().unwrap();
    let v =
        client.otp_create(&onetrip_client::NewVerification::new(onetrip_client::OtpChannel::Console, "bob")).unwrap();
    let code = server.console_code(&v.id);
    assert!(client.otp_check(&v.id, &code).unwrap().valid);
}
