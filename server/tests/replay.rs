//! Requests are accepted once, across restarts too: handshakes and proofs of
//! possession stamped ahead of the server's clock survive a kill -9 in the store,
//! everything else is refused by the start-time rule; and the OTP API's writes refuse
//! a replayed proof (PROTOCOL.md §6.2 steps 7–8, §8). Also: old audit events go.

mod common;

use std::path::Path;

use common::*;
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, PopProof, TokenGrant};

fn status_count(server: &Server, status: &str) -> u64 {
    server.metric(&format!("onetrip_handshakes_total{{status=\"{status}\"}}"))
}

/// A handshake request stamped `at` (the client's idea of server time).
fn request_at(server: &Server, key: &ApiKey, at: u64) -> ([u8; REQUEST_LEN], onetrip_protocol::AwaitingResponse) {
    let client = ClientHandshake::new(DefaultBackend::default(), key, &server.document(), at).unwrap();
    let mut out = [0u8; REQUEST_LEN];
    let pending = client.start(&ClientRequest::default(), at, &mut rand_core::OsRng, &mut out).unwrap();
    (out, pending)
}

fn post_auth(server: &Server, request: &[u8]) -> HttpResponse {
    let resp = server.post("/v1/auth", &[("content-type", "application/octet-stream")], request);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp
}

#[test]
fn a_request_stamped_ahead_is_accepted_once_even_across_a_kill_9_restart() {
    let mut server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "ahead"]);
    let dir = server.data_dir.clone();
    let (request, pending) = request_at(&server, &key, now() + 40);
    let first = post_auth(&server, &request);
    assert!(matches!(pending.finish(&first.body).unwrap(), Outcome::Granted(_)));
    post_auth(&server, &request);
    assert_eq!(status_count(&server, "auth_failed"), 1, "replay refused in the same run");
    assert_eq!(server.metric("onetrip_replay_ids_persisted_total"), 1, "the id stamped ahead is on disk");

    server.kill9();
    let restarted = Server::start_in(&dir, &[]).expect("restart after kill -9");
    post_auth(&restarted, &request);
    assert_eq!(status_count(&restarted, "ok"), 0, "the restarted server issued a second token");
    assert_eq!(status_count(&restarted, "auth_failed"), 1);
    // A client in sync is served at once, without a clock_skew round.
    assert!(matches!(restarted.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    assert_eq!(status_count(&restarted, "clock_skew"), 0);
}

#[test]
fn clients_in_sync_cause_no_store_writes_and_a_burst_ahead_shares_transactions() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "synced"]);
    for _ in 0..200 {
        assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    }
    assert_eq!(server.metric("onetrip_replay_ids_persisted_total"), 0, "a synced client stamps at or behind");
    assert_eq!(server.metric("onetrip_replay_id_writes_total"), 0);

    let requests: Vec<_> = (0..64).map(|_| request_at(&server, &key, now() + 30).0).collect();
    std::thread::scope(|s| {
        for chunk in requests.chunks(8) {
            let server = &server;
            s.spawn(move || chunk.iter().for_each(|r| drop(post_auth(server, r))));
        }
    });
    assert_eq!(status_count(&server, "ok"), 264);
    let (ids, writes) =
        (server.metric("onetrip_replay_ids_persisted_total"), server.metric("onetrip_replay_id_writes_total"));
    assert_eq!(ids, 64);
    assert!((1..=64).contains(&writes), "{writes} transactions for {ids} ids");
    println!("64 requests stamped +30 s from 8 threads: {ids} ids persisted in {writes} store transactions");
}

/// The headers of a request signed with `grant` at `at`.
fn signed_at(grant: &TokenGrant, method: &str, path: &str, body: &[u8], at: u64) -> [(String, String); 3] {
    let proof =
        PopProof::sign(&grant.session_key, grant.token.binding(), method, path, body, at, &mut rand_core::OsRng)
            .unwrap();
    [
        ("authorization".into(), format!("Onetrip {}", &*grant.token.to_base64())),
        (POP_HEADER.into(), proof.to_header()),
        ("content-type".into(), "application/json".into()),
    ]
}

fn send(server: &Server, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> HttpResponse {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http(server.port, method, path, &headers, body)
}

fn generated(server: &Server) -> usize {
    let out = server.cli(&["audit", "--json", "--since", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    events.iter().filter(|e| e["event"] == "otp.generate").count()
}

#[test]
fn a_replayed_signed_otp_create_creates_one_verification_even_after_a_restart() {
    let mut server = Server::start(&["--otp-console-codes"]);
    let (key, _) = server.create_key(&["--name", "otp-app", "--scope", "otp"]);
    let grant = own_grant(&server, &key, "otp");
    let dir = server.data_dir.clone();
    let path = "/v1/otp/verifications";
    let body = serde_json::json!({ "to": "replay@example.com", "channel": "console" }).to_string().into_bytes();
    // Stamped ahead, the hardest case: still valid after a restart.
    let headers = signed_at(&grant, "POST", path, &body, now() + 40);
    assert_eq!(send(&server, "POST", path, &headers, &body).status, 201);
    for _ in 0..2 {
        let replay = send(&server, "POST", path, &headers, &body);
        assert_eq!(replay.status, 401, "{}", String::from_utf8_lossy(&replay.body));
        assert_eq!(replay.json()["code"], "pop_replayed");
    }
    assert_eq!(generated(&server), 1);

    server.kill9();
    let restarted = Server::start_in(&dir, &["--otp-console-codes"]).expect("restart after kill -9");
    let replay = send(&restarted, "POST", path, &headers, &body);
    assert_eq!(replay.status, 401, "{}", String::from_utf8_lossy(&replay.body));
    assert_eq!(replay.json()["code"], "pop_replayed");
    assert_eq!(generated(&restarted), 1, "one verification in all");
    // The same token with a fresh proof still works.
    let fresh = signed_at(&grant, "POST", path, &body, now());
    assert_eq!(send(&restarted, "POST", path, &fresh, &body).status, 201);
}

#[test]
fn a_replayed_check_is_refused_and_costs_no_attempt() {
    let server = Server::start(&["--otp-console-codes"]);
    let (key, _) = server.create_key(&["--name", "otp-check", "--scope", "otp"]);
    let grant = own_grant(&server, &key, "otp");
    let create = serde_json::json!({ "to": "check@example.com", "channel": "console" }).to_string().into_bytes();
    let created = send(
        &server,
        "POST",
        "/v1/otp/verifications",
        &signed_at(&grant, "POST", "/v1/otp/verifications", &create, now()),
        &create,
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let code = server.console_code(&id);
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let path = format!("/v1/otp/verifications/{id}/check");
    let body = serde_json::json!({ "code": wrong }).to_string().into_bytes();
    let headers = signed_at(&grant, "POST", &path, &body, now());
    let first = send(&server, "POST", &path, &headers, &body);
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["attempts_left"], 4);
    for _ in 0..3 {
        let replay = send(&server, "POST", &path, &headers, &body);
        assert_eq!(replay.status, 401);
        assert_eq!(replay.json()["code"], "pop_replayed");
    }
    let item = format!("/v1/otp/verifications/{id}");
    let view = send(&server, "GET", &item, &signed_at(&grant, "GET", &item, b"", now()), b"");
    assert_eq!(view.json()["attempts_left"], 4, "replays used no attempt");
    // Reads are not writes: the same signed GET may be sent again.
    assert_eq!(send(&server, "GET", &item, &signed_at(&grant, "GET", &item, b"", now()), b"").status, 200);
}

fn write_old_audit(dir: &Path, day: u64) {
    use onetrip_server::store::Store;
    let now = now();
    let (store, _) = Store::open_or_init(dir, None, now - 200 * day).unwrap();
    for age in [120, 100, 31] {
        store.audit(now - age * day, "test.old", serde_json::json!({ "age": age })).unwrap();
    }
    for age in [29, 1] {
        store.audit(now - age * day, "test.recent", serde_json::json!({ "age": age })).unwrap();
    }
}

#[test]
fn audit_events_older_than_the_retention_go_and_recent_ones_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let day = 86_400;
    write_old_audit(tmp.path(), day);
    let server = Server::start_in(tmp.path(), &["--audit-retention-days", "30"]).expect("server starts");
    let events = || -> Vec<serde_json::Value> {
        let out = server.cli(&["audit", "--json", "--since", "36500d"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The first pass runs at start; bounded wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = events();
    while left.iter().any(|e| e["event"] == "test.old") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = events();
    }
    assert!(!left.iter().any(|e| e["event"] == "test.old"), "old events still there: {left:?}");
    assert_eq!(left.iter().filter(|e| e["event"] == "test.recent").count(), 2, "{left:?}");
    assert!(left.iter().all(|e| e["at"].as_u64().unwrap() >= now() - 30 * day - 60));
}
