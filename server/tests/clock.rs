//! Time-driven OTP behaviour (resend cooldown, expiry) on a server whose clock the
//! test moves: the in-process server runs on a [`ManualClock`], so these tests never
//! sleep through a cooldown or an expiry.

mod common;

use std::sync::Arc;

use common::{http, pop_headers, HttpResponse};
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, ServerKeyDocument, TokenGrant};
use onetrip_server::admin::{execute, AdminRequest};
use onetrip_server::config::Settings;
use onetrip_server::shared::MemoryShared;
use onetrip_server::state::{AppState, ManualClock};
use onetrip_server::store::Store;

/// An in-process server on 127.0.0.1 whose clock only the test moves.
struct Harness {
    port: u16,
    clock: Arc<ManualClock>,
    grant: TokenGrant,
    /// Runs the listener; the server stops when it is dropped with the harness.
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let clock = Arc::new(ManualClock::at(common::now()));
        let (store, _) = Store::open_or_init(dir.path(), None, clock_now(&clock)).unwrap();
        let mut settings = Settings::defaults(dir.path().into());
        settings.otp_console_codes = true;
        let state = runtime
            .block_on(AppState::with_clock(settings, store.into_backend(), MemoryShared::new(10_000), clock.clone()))
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(onetrip_server::listener::run(listener, None, state.clone(), std::future::pending()));
        runtime.block_on(onetrip_server::replay_guard::wait_past_start(&state));
        let created = runtime
            .block_on(execute(
                &*state.store,
                Some(&state),
                AdminRequest::KeysCreate {
                    name: "clock".into(),
                    scopes: vec!["otp".into()],
                    audiences: vec![],
                    require_otp: false,
                    otp_to: None,
                },
            ))
            .unwrap();
        let key = ApiKey::parse(created["api_key"].as_str().unwrap()).unwrap();
        let grant = grant(port, &key);
        Harness { port, clock, grant, _runtime: runtime, _dir: dir }
    }

    fn call(&self, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let (auth, pop) = pop_headers(&self.grant, method, path, &body);
        let headers =
            [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
        http(self.port, method, path, &headers, &body)
    }
}

fn clock_now(clock: &ManualClock) -> u64 {
    use onetrip_server::state::Clock;
    clock.now()
}

fn grant(port: u16, key: &ApiKey) -> TokenGrant {
    let doc = ServerKeyDocument::parse(&http(port, "GET", "/v1/server-key", &[], b"").body).unwrap();
    let client = ClientHandshake::new(DefaultBackend::default(), key, &doc, common::now()).unwrap();
    let mut request = [0u8; REQUEST_LEN];
    let req = ClientRequest { audience: "onetrip", scopes: "otp", second_factor: None };
    let pending = client.start(&req, common::now(), &mut rand_core::OsRng, &mut request).unwrap();
    let resp = http(port, "POST", "/v1/auth", &[("content-type", "application/octet-stream")], &request);
    match pending.finish(&resp.body).unwrap() {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[test]
fn the_resend_cooldown_ends_when_the_clock_says_so_and_one_of_ten_resends_goes_out() {
    let h = Harness::start();
    let created = h.call("POST", "/v1/otp/verifications", &serde_json::json!({ "to": "alice", "channel": "console" }));
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/otp/verifications/{id}/resend");

    let early = h.call("POST", &path, &serde_json::Value::Null);
    assert_eq!(early.status, 429);
    assert_eq!(early.json()["code"], "resend_too_soon");
    assert_eq!(early.header("retry-after"), Some("30"));

    h.clock.advance(29);
    let still = h.call("POST", &path, &serde_json::Value::Null);
    assert_eq!(still.status, 429, "one second before the cooldown ends");
    assert_eq!(still.header("retry-after"), Some("1"));

    h.clock.advance(1);
    // Ten resends at once when the cooldown is over: exactly one code goes out.
    let answers: Vec<HttpResponse> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..10).map(|_| s.spawn(|| h.call("POST", &path, &serde_json::Value::Null))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let sent: Vec<&HttpResponse> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(sent.len(), 1, "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(answers.iter().filter(|r| r.status != 200).all(|r| r.json()["code"] == "resend_too_soon"));
    assert_eq!(sent[0].json()["expires_at"], created.json()["expires_at"], "a resend never extends the expiry");
    assert_eq!(sent[0].json()["sends_left"], 2);
}

#[test]
fn a_verification_expires_at_its_ttl_by_the_servers_clock() {
    let h = Harness::start();
    let body = serde_json::json!({ "to": "bob", "channel": "console", "ttl": 60 });
    let created = h.call("POST", "/v1/otp/verifications", &body);
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let status = |h: &Harness| h.call("GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);

    h.clock.advance(60);
    assert_eq!(status(&h).json()["status"], "pending", "valid through its last second");
    h.clock.advance(1);
    assert_eq!(status(&h).json()["status"], "expired");
    let check = h.call("POST", &format!("/v1/otp/verifications/{id}/check"), &serde_json::json!({ "code": "000000" }));
    // A check after the expiry compares nothing.
    assert_eq!(check.status, 200, "{}", String::from_utf8_lossy(&check.body));
    assert_eq!(check.json()["valid"], false);
    assert_eq!(check.json()["status"], "expired");
}
