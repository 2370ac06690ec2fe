//! Time-driven behaviour on a server whose clock the test moves: OTP resend cooldowns,
//! the resend cap and fixed expiry (across a restart too), an API key's rotation grace
//! and a server key's overlap. The in-process server runs on a [`ManualClock`], so
//! these tests never sleep through protocol time. What needs a real process (kill -9,
//! the CLI) stays in `otp_api`, `e2e` and `client`.

mod common;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, pop_headers_at, HttpResponse};
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, ServerKeyDocument, TokenGrant};
use onetrip_server::admin::{execute, Actor, AdminRequest};
use onetrip_server::config::{SecretSetting, Settings, WebhookConfig};
use onetrip_server::shared::MemoryShared;
use onetrip_server::state::{AppState, Clock, ManualClock};
use onetrip_server::store::Store;
use serde_json::{json, Value};
use support::{Receiver, WEBHOOK_SECRET};

/// An in-process server on 127.0.0.1 whose clock only the test moves.
struct Harness {
    port: u16,
    clock: Arc<ManualClock>,
    state: AppState,
    settings: Settings,
    /// Runs the listener. Declared after `state`: fields drop in order, and the store
    /// closes when the last copy of the state (held by the listener's tasks) is gone.
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    /// A server on a fresh store, its settings adjusted by `configure`.
    fn start_with(configure: impl FnOnce(&mut Settings)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(common::now()));
        let mut settings = Settings::defaults(dir.path().into());
        settings.otp_console_codes = true;
        configure(&mut settings);
        let (runtime, state, port) = serve(dir.path(), &settings, &clock);
        Harness { port, clock, state, settings, runtime, dir }
    }

    /// Stops the server at once (nothing flushed, as a kill -9) and starts another on
    /// the same store, settings and clock.
    fn restart(self) -> Harness {
        let Harness { clock, state, settings, runtime, dir, .. } = self;
        drop(state);
        drop(runtime);
        let (runtime, state, port) = serve(dir.path(), &settings, &clock);
        Harness { port, clock, state, settings, runtime, dir }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Moves the clock forward to `at`.
    fn set_clock(&self, at: u64) {
        self.clock.advance(at.checked_sub(self.now()).expect("the clock only moves forward"));
    }

    /// An admin operation, as the CLI sends it to a running server.
    fn admin(&self, req: AdminRequest) -> Value {
        self.runtime.block_on(execute(&*self.state.store, Some(&self.state), req, &Actor::this_process())).unwrap()
    }

    fn create_key(&self, scopes: &[&str]) -> ApiKey {
        let created = self.admin(AdminRequest::KeysCreate {
            name: "clock".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audiences: vec![],
            require_otp: false,
            otp_to: None,
        });
        ApiKey::parse(created["api_key"].as_str().unwrap()).unwrap()
    }

    fn document(&self) -> ServerKeyDocument {
        ServerKeyDocument::parse(&http(self.port, "GET", "/v1/server-key", &[], b"").body).unwrap()
    }

    /// A client for `key` that knows the server key document `doc`, on this clock.
    fn client(&self, key: &ApiKey, doc: &ServerKeyDocument) -> ClientHandshake {
        ClientHandshake::new(DefaultBackend::default(), key, doc, self.now()).unwrap()
    }

    /// One handshake for the server's own audience, stamped by this clock.
    fn handshake(&self, client: &ClientHandshake, scopes: &str) -> Outcome {
        let mut request = [0u8; REQUEST_LEN];
        let req = ClientRequest { audience: "onetrip", scopes, second_factor: None };
        let pending = client.start(&req, self.now(), &mut rand_core::OsRng, &mut request).unwrap();
        let resp = http(self.port, "POST", "/v1/auth", &[("content-type", "application/octet-stream")], &request);
        pending.finish(&resp.body).unwrap()
    }

    fn grant(&self, key: &ApiKey, scopes: &str) -> TokenGrant {
        match self.handshake(&self.client(key, &self.document()), scopes) {
            Outcome::Granted(g) => *g,
            other => panic!("expected a token, got {other:?}"),
        }
    }

    /// A call signed (proof of possession) at this clock's time.
    fn call(&self, grant: &TokenGrant, method: &str, path: &str, body: &Value) -> HttpResponse {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let (auth, pop) = pop_headers_at(grant, method, path, &body, self.now());
        let headers =
            [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
        http(self.port, method, path, &headers, &body)
    }

    fn metric(&self, name: &str) -> u64 {
        common::metric_in(&String::from_utf8(http(self.port, "GET", "/metrics", &[], b"").body).unwrap(), name)
    }
}

/// Opens the store in `dir` and serves it on an ephemeral port, as `onetrip serve`
/// does (replay ids stamped ahead by an earlier run are restored first).
fn serve(dir: &Path, settings: &Settings, clock: &Arc<ManualClock>) -> (tokio::runtime::Runtime, AppState, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (store, _) = Store::open_or_init(dir, None, clock.now()).unwrap();
    let state = runtime
        .block_on(AppState::with_clock(
            settings.clone(),
            store.into_backend(),
            MemoryShared::new(10_000),
            clock.clone(),
        ))
        .unwrap();
    runtime.block_on(onetrip_server::replay_guard::restore(&state)).unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(onetrip_server::listener::run(listener, None, state.clone(), std::future::pending()));
    // The handshake key lifecycle on this clock, as `serve` runs it (every second
    // there; more often here, so a test waits little for its tick).
    let now = Arc::clone(clock);
    runtime.spawn(onetrip_server::key_lifecycle::run(
        state.clone(),
        Arc::new(move || now.now()),
        Duration::from_millis(20),
    ));
    // Stamps in the start second are refused (replay_guard): `serve` waits for the
    // clock to leave it; this clock is moved instead.
    clock.advance(1);
    (runtime, state, port)
}

fn created_id(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The codes the webhook delivered for verification `id`, once there are `n`.
fn webhook_codes(receiver: &Receiver, id: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let codes: Vec<String> = receiver
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["verification_id"] == id)
            .map(|b| b["code"].as_str().unwrap().to_owned())
            .collect();
        if codes.len() >= n {
            return codes;
        }
        assert!(Instant::now() < deadline, "{} of {n} codes for {id} arrived", codes.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn on_webhook(receiver: &Receiver) -> impl FnOnce(&mut Settings) {
    let url = format!("http://127.0.0.1:{}/otp", receiver.port);
    move |s| {
        s.otp.webhook = Some(WebhookConfig {
            url,
            secret: SecretSetting(WEBHOOK_SECRET.to_owned().into()),
            retry_window_secs: onetrip_server::config::DEFAULT_WEBHOOK_RETRY_WINDOW_SECS,
        })
    }
}

/// Ten resends of `path` at once; asserts that exactly one sent a code and the others
/// were told to wait, and returns the one.
fn ten_resends_send_one(h: &Harness, grant: &TokenGrant, path: &str) -> HttpResponse {
    let mut answers: Vec<HttpResponse> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..10).map(|_| s.spawn(|| h.call(grant, "POST", path, &Value::Null))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(answers
        .iter()
        .filter(|r| r.status != 200)
        .all(|r| r.status == 429 && r.json()["code"] == "resend_too_soon"));
    answers.swap_remove(statuses.iter().position(|s| *s == 200).unwrap())
}

#[test]
fn the_cooldown_attempts_and_expiry_survive_a_restart_then_one_of_ten_resends_goes_out() {
    let receiver = Receiver::start(vec![]);
    let h = Harness::start_with(on_webhook(&receiver));
    let grant = h.grant(&h.create_key(&["otp"]), "otp");
    let create = |h: &Harness, body: Value| h.call(&grant, "POST", "/v1/otp/verifications", &body);
    let created = create(&h, json!({ "to": "+15550000001", "channel": "sms" }));
    let id = created_id(&created);
    let expires_at = created.json()["expires_at"].as_u64().unwrap();
    let short = create(&h, json!({ "to": "+15550000002", "channel": "sms", "ttl": 30, "code_length": 8 }));
    let (short_id, short_expires_at) = (created_id(&short), short.json()["expires_at"].as_u64().unwrap());
    let code = webhook_codes(&receiver, &id, 1).remove(0);
    let short_code = webhook_codes(&receiver, &short_id, 1).remove(0);
    assert_eq!(short_code.len(), 8);
    let path = format!("/v1/otp/verifications/{id}/resend");
    let early = h.call(&grant, "POST", &path, &Value::Null);
    assert_eq!((early.status, early.json()["code"].as_str()), (429, Some("resend_too_soon")));
    assert_eq!(early.header("retry-after"), Some("30"));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        let r = h.call(&grant, "POST", &format!("/v1/otp/verifications/{id}/check"), &json!({ "code": wrong }));
        assert_eq!(r.json()["valid"], false);
    }

    // A restart resets neither the attempts nor the expiry nor the cooldown (the
    // restart itself takes one second of it).
    let h = h.restart();
    let v = h.call(&grant, "GET", &format!("/v1/otp/verifications/{id}"), &Value::Null);
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    assert_eq!((v.json()["attempts_left"].as_u64(), v.json()["expires_at"].as_u64()), (Some(3), Some(expires_at)));
    let still = h.call(&grant, "POST", &path, &Value::Null);
    assert_eq!((still.status, still.header("retry-after")), (429, Some("29")));
    h.clock.advance(28);
    let last = h.call(&grant, "POST", &path, &Value::Null);
    assert_eq!((last.status, last.header("retry-after")), (429, Some("1")), "one second before the cooldown ends");

    h.clock.advance(1);
    // Ten resends at once when the cooldown is over: exactly one code goes out.
    let sent = ten_resends_send_one(&h, &grant, &path);
    assert_eq!(sent.json()["expires_at"], expires_at, "a resend never extends the expiry");
    assert_eq!(sent.json()["sends_left"], 2);
    // The new code replaces the old one.
    let new_code = webhook_codes(&receiver, &id, 2).remove(1);
    let check = |h: &Harness, id: &str, code: &str| {
        h.call(&grant, "POST", &format!("/v1/otp/verifications/{id}/check"), &json!({ "code": code })).json()
    };
    if new_code != code {
        let old = check(&h, &id, &code);
        assert_eq!((old["status"].as_str(), old["valid"].as_bool()), (Some("pending"), Some(false)));
    }
    assert_eq!(check(&h, &id, &new_code)["status"], "approved");

    // The 30-second verification expired at the time fixed at its creation: a check
    // compares nothing, and it cannot be resent.
    h.set_clock(short_expires_at + 1);
    let r = check(&h, &short_id, &short_code);
    assert_eq!(
        (r["status"].as_str(), r["valid"].as_bool(), r["attempts_left"].as_u64()),
        (Some("expired"), Some(false), Some(5))
    );
    let r = h.call(&grant, "POST", &format!("/v1/otp/verifications/{short_id}/resend"), &Value::Null);
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("verification_not_pending")));
}

#[test]
fn a_resend_stops_the_retries_of_the_code_it_replaces() {
    // Three 503s: the first code's delivery is still retrying when the resend comes.
    let receiver = Receiver::start(vec![503, 503, 503]);
    let h = Harness::start_with(on_webhook(&receiver));
    let grant = h.grant(&h.create_key(&["otp"]), "otp");
    let body = json!({ "to": "+15550000003", "channel": "sms" });
    let id = created_id(&h.call(&grant, "POST", "/v1/otp/verifications", &body));
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first attempt never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.clock.advance(30);
    let resent = h.call(&grant, "POST", &format!("/v1/otp/verifications/{id}/resend"), &Value::Null);
    assert_eq!(resent.status, 200, "{}", String::from_utf8_lossy(&resent.body));
    let code = webhook_codes(&receiver, &id, 1).remove(0);
    // The old delivery's backoff is real time (0.5 s doubling): without the stop it
    // would get through within ~3.5 s of its first attempt and hand over a dead code.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(webhook_codes(&receiver, &id, 1).len(), 1, "the replaced code was delivered too");
    let audit = h.runtime.block_on(h.state.store.audit_since(0, 1_000)).unwrap();
    let outcomes: Vec<&str> =
        audit.iter().filter(|e| e["event"] == "otp.deliver").filter_map(|e| e["detail"]["outcome"].as_str()).collect();
    assert!(outcomes.contains(&"stopped: superseded"), "{outcomes:?}");
    assert!(!outcomes.iter().any(|o| o.starts_with("failed")), "{outcomes:?}");
    // The code that arrived is the current one, and the verification never failed.
    let r = h.call(&grant, "POST", &format!("/v1/otp/verifications/{id}/check"), &json!({ "code": code }));
    assert_eq!(r.json()["status"], "approved", "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn resends_stop_at_the_cap_and_never_move_the_expiry() {
    let h = Harness::start();
    let grant = h.grant(&h.create_key(&["otp"]), "otp");
    let created = h.call(&grant, "POST", "/v1/otp/verifications", &json!({ "to": "dave", "channel": "console" }));
    let id = created_id(&created);
    let expires_at = created.json()["expires_at"].as_u64().unwrap();
    let path = format!("/v1/otp/verifications/{id}/resend");
    for sends_left in [2, 1, 0] {
        h.clock.advance(30);
        let r = h.call(&grant, "POST", &path, &Value::Null);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            (r.json()["sends_left"].as_u64(), r.json()["expires_at"].as_u64()),
            (Some(sends_left), Some(expires_at))
        );
    }
    h.clock.advance(30);
    let capped = h.call(&grant, "POST", &path, &Value::Null);
    assert_eq!((capped.status, capped.json()["code"].as_str()), (429, Some("max_sends_reached")));
    assert_eq!(capped.header("retry-after"), None, "waiting does not help");

    let status = |h: &Harness| h.call(&grant, "GET", &format!("/v1/otp/verifications/{id}"), &Value::Null).json();
    assert_eq!(status(&h)["resend_available_at"], Value::Null);
    h.set_clock(expires_at);
    assert_eq!(status(&h)["status"], "pending", "valid through its last second");
    h.clock.advance(1);
    assert_eq!(status(&h)["status"], "expired");
}

#[test]
fn a_verification_expires_at_its_ttl_by_the_servers_clock() {
    let h = Harness::start();
    let grant = h.grant(&h.create_key(&["otp"]), "otp");
    let body = json!({ "to": "bob", "channel": "console", "ttl": 60 });
    let created = h.call(&grant, "POST", "/v1/otp/verifications", &body);
    let id = created_id(&created);
    let status = |h: &Harness| h.call(&grant, "GET", &format!("/v1/otp/verifications/{id}"), &Value::Null);

    h.clock.advance(60);
    assert_eq!(status(&h).json()["status"], "pending", "valid through its last second");
    h.clock.advance(1);
    assert_eq!(status(&h).json()["status"], "expired");
    let check = h.call(&grant, "POST", &format!("/v1/otp/verifications/{id}/check"), &json!({ "code": "000000" }));
    // A check after the expiry compares nothing.
    assert_eq!(check.status, 200, "{}", String::from_utf8_lossy(&check.body));
    assert_eq!(check.json()["valid"], false);
    assert_eq!(check.json()["status"], "expired");
}

#[test]
fn a_rotated_api_key_works_through_its_grace_and_not_a_second_longer() {
    let h = Harness::start();
    let key = h.create_key(&[]);
    let doc = h.document();
    let works = |key: &ApiKey| match h.handshake(&h.client(key, &doc), "") {
        Outcome::Granted(_) => true,
        Outcome::AuthFailed => false,
        other => panic!("expected a token or auth_failed, got {other:?}"),
    };
    assert!(works(&key));
    let rotated = h.admin(AdminRequest::KeysRotate { id: key.id().to_string(), grace_secs: 2 });
    let new_key = ApiKey::parse(rotated["api_key"].as_str().unwrap()).unwrap();
    assert_ne!(new_key.id(), key.id());
    let grace_ends = rotated["old_key_expires_at"].as_u64().unwrap();
    h.set_clock(grace_ends);
    assert!(works(&key), "the old key works through the last second of its grace");
    assert!(works(&new_key));
    h.clock.advance(1);
    assert!(!works(&key), "the old key is refused once its grace is over");
    assert!(works(&new_key));
}

/// When the overlap of `old` (a key id in `doc`) ends, by the rotation's answer.
fn overlap_end(rotated: &Value, old: [u8; 8]) -> u64 {
    let keys = rotated["keys"].as_array().unwrap();
    let entry = keys.iter().find(|k| k["key_id"] == hex::encode(old)).expect("the old key is still listed");
    entry["not_after"].as_u64().unwrap()
}

#[test]
fn an_old_server_key_works_through_its_overlap_then_one_refetch_recovers() {
    let h = Harness::start();
    let key = h.create_key(&[]);
    let old_doc = h.document();
    let old_client = h.client(&key, &old_doc);
    let rotated = h.admin(AdminRequest::ServerKeyRotate { overlap_secs: 2 });
    let overlap_ends = overlap_end(&rotated, old_client.server_key().key_id);
    h.set_clock(overlap_ends);
    assert!(matches!(h.handshake(&old_client, ""), Outcome::Granted(_)), "the old key works through the overlap");
    h.clock.advance(1);
    let Outcome::ServerKeyChanged { current_key_id, .. } = h.handshake(&old_client, "") else {
        panic!("expected server_key_changed after the overlap");
    };
    assert_eq!(rotated["new_key_id"], hex::encode(current_key_id));
    // The key lifecycle task drops the expired key at its next tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let doc = h.document();
        if doc.entries().len() == 1 || Instant::now() > deadline {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(doc.entries().len(), 1, "the expired key left the document");
    assert_eq!(doc.current(h.now()).unwrap().key_id, current_key_id);
    assert!(matches!(h.handshake(&h.client(&key, &doc), ""), Outcome::Granted(_)), "one refetch recovers");
    assert_eq!(doc.fingerprint(), old_doc.fingerprint(), "rotation keeps the identity");
}

#[test]
fn a_server_key_rotation_costs_the_client_one_refetch_once_the_overlap_is_over() {
    let h = Harness::start();
    let key = h.create_key(&[]);
    let clock = Arc::clone(&h.clock);
    let client = onetrip_client::Client::builder()
        .server(format!("http://127.0.0.1:{}", h.port))
        .api_key(&key)
        .pin(h.state.fingerprint())
        .clock(Arc::new(move || clock.now()))
        .build()
        .unwrap();
    let fresh_token = || {
        client.invalidate();
        h.runtime.block_on(client.token()).unwrap();
    };
    fresh_token();
    let old = h.document().current(h.now()).unwrap().key_id;
    let rotated = h.admin(AdminRequest::ServerKeyRotate { overlap_secs: 1 });
    h.set_clock(overlap_end(&rotated, old));
    fresh_token();
    assert_eq!(client.handshakes(), 2, "during the overlap the cached document still serves");
    h.clock.advance(1);
    fresh_token();
    assert_eq!(client.handshakes(), 4, "one stale attempt, one refetch, one success");
    assert_eq!(h.metric("onetrip_handshakes_total{status=\"server_key_changed\"}"), 1);
}

/// Admin changes on a running server are stamped with the server's clock, so that a
/// rotation's times agree with the clock that later judges them.
#[test]
fn admin_changes_take_the_servers_clock_not_the_systems() {
    let h = Harness::start();
    let later = h.now() + 400 * 86_400;
    h.set_clock(later);
    let created = h.admin(AdminRequest::KeysCreate {
        name: "stamped".into(),
        scopes: vec![],
        audiences: vec![],
        require_otp: false,
        otp_to: None,
    });
    assert_eq!(created["created_at"], later, "{created}");
    let rotated = h.admin(AdminRequest::ServerKeyRotate { overlap_secs: 60 });
    let new_id = rotated["new_key_id"].as_str().expect("new key id").to_owned();
    let new_key = rotated["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["key_id"] == new_id.as_str()).cloned())
        .unwrap_or_else(|| panic!("the new key is listed: {rotated}"));
    assert_eq!(new_key["not_before"], later, "{new_key}");
}
