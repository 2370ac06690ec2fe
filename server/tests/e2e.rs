//! The product as a user meets it: the real `onetrip` binary on 127.0.0.1, the CLI,
//! and handshakes over HTTP.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use onetrip_protocol::api_key::{ApiKey, KeyId};
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{Outcome, PopProof, Secret, TokenGrant};

fn granted(o: Outcome) -> TokenGrant {
    match o {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    }
}

fn whoami(server: &Server, grant: &TokenGrant, path_signed: &str) -> HttpResponse {
    let proof = PopProof::sign(
        &grant.session_key,
        grant.token.binding(),
        "GET",
        path_signed,
        b"",
        now(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    let auth = format!("Onetrip {}", &*grant.token.to_base64());
    http(server.port, "GET", "/v1/whoami", &[("authorization", &auth), (POP_HEADER, &proof.to_header())], b"")
}

#[test]
fn quick_start_end_to_end() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz").json()["status"], "ok");
    let (key, id) =
        server.create_key(&["--name", "billing-db", "--scope", "db:read", "--scope", "db:write", "--audience", "db"]);
    assert_eq!(key.id().to_string(), id);
    let grant =
        granted(server.handshake(&key, &ClientRequest { audience: "db", scopes: "db:read", second_factor: None }));
    assert!(grant.expires_at > now() + 800);

    // Introspection with the proof of possession, by the `db` resource server's own key.
    let (db_server, _) = server.create_key(&["--name", "db-server", "--scope", "introspect", "--audience", "db"]);
    let caller = own_grant(&server, &db_server, "introspect");
    let introspect =
        |req: &serde_json::Value| signed(server.port, &caller, "POST", "/v1/introspect", req.to_string().as_bytes());
    let body = b"select 1";
    let proof =
        PopProof::sign(&grant.session_key, grant.token.binding(), "POST", "/query", body, now(), &mut rand_core::OsRng)
            .unwrap();
    let req = serde_json::json!({
        "token": &*grant.token.to_base64(),
        "pop": proof.to_header(),
        "method": "POST",
        "path": "/query",
        "body": STANDARD.encode(body),
    });
    let r = introspect(&req).json();
    assert_eq!(r["active"], true, "{r}");
    assert_eq!(r["audience"], "db");
    assert_eq!(r["scope"], "db:read");
    assert_eq!(r["key_id"], id);
    assert_eq!(r["pop_verified"], true);
    // PROTOCOL.md says base64 without padding; the padded form is accepted too.
    let mut unpadded = req.clone();
    unpadded["body"] = STANDARD.encode(body).trim_end_matches('=').into();
    assert_eq!(introspect(&unpadded).json()["active"], true);

    // A tampered proof (another path) is inactive; a token alone over plain HTTP is refused.
    let mut bad = req.clone();
    bad["path"] = "/admin".into();
    assert_eq!(introspect(&bad).json()["active"], false);
    let bare = serde_json::json!({ "token": &*grant.token.to_base64() });
    let r = introspect(&bare);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "pop_required");
    // Unauthenticated introspection answers nothing about the token.
    let r = server.post("/v1/introspect", &[], req.to_string().as_bytes());
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("token_missing")));

    // whoami: PoP over the exact method and path, with a token for the server's own
    // audience; the db token is not one.
    let refused = whoami(&server, &grant, "/v1/whoami");
    assert_eq!(refused.status, 401, "a resource-audience token on the server's API");
    let own = own_grant(&server, &key, "");
    let ok = whoami(&server, &own, "/v1/whoami");
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!((ok.json()["audience"].as_str(), ok.json()["scope"].as_str()), (Some("onetrip"), Some("")));
    let tampered = whoami(&server, &own, "/v1/other");
    assert_eq!(tampered.status, 401);
    let bearer = format!("Bearer {}", &*own.token.to_base64());
    let r = http(server.port, "GET", "/v1/whoami", &[("authorization", &bearer)], b"");
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("bearer_requires_tls")));
    // The metrics saw the three granted handshakes.
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 3);
    assert_eq!(server.metric("onetrip_api_keys"), 2);
}

#[test]
fn revoke_and_rotate_take_effect_without_restart() {
    let server = Server::start(&[]);
    let (key, id) = server.create_key(&["--name", "svc"]);
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    // Rotate: old and new both work during the grace (its end is tested on a moved
    // clock, tests/clock.rs).
    let out = server.cli(&["keys", "rotate", &id, "--grace-secs", "3600", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_key = ApiKey::parse(v["api_key"].as_str().unwrap()).unwrap();
    assert_ne!(new_key.id(), key.id());
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    assert!(matches!(server.handshake(&new_key, &ClientRequest::default()), Outcome::Granted(_)));
    // Revoke the new key: the next handshake fails at once.
    let out = server.cli(&["keys", "revoke", &new_key.id().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(matches!(server.handshake(&new_key, &ClientRequest::default()), Outcome::AuthFailed));
    let shown = server.cli(&["keys", "show", &new_key.id().to_string(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["active"], false);
}

/// Through the CLI and the admin socket: the overlap's end and the refetch are tested
/// on a moved clock (`tests/clock.rs`).
#[test]
fn server_key_rotation_keeps_old_clients_during_the_overlap() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "svc"]);
    let old_doc = server.document();
    let old_client =
        onetrip_protocol::ClientHandshake::new(onetrip_protocol::DefaultBackend::default(), &key, &old_doc, now())
            .unwrap();
    // Static-static values are precomputed, so no key's first handshake costs an
    // extra DH that a prober could time.
    assert_eq!(server.metric("onetrip_static_static_cached"), 1);
    let out = server.cli(&["server-key", "rotate", "--overlap-secs", "3600", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.metric("onetrip_static_static_cached"), 2, "warmed for the new server key too");
    let new_doc = server.document();
    assert_eq!(new_doc.entries().len(), 2);
    assert_ne!(new_doc.current(now()).unwrap().key_id, old_client.server_key().key_id, "new clients use the new key");
    let attempt = |client: &onetrip_protocol::ClientHandshake| {
        let mut req = [0u8; REQUEST_LEN];
        let pending = client.start(&ClientRequest::default(), now(), &mut rand_core::OsRng, &mut req).unwrap();
        let resp = server.post("/v1/auth", &[], &req);
        pending.finish(&resp.body).unwrap()
    };
    assert!(matches!(attempt(&old_client), Outcome::Granted(_)), "old key works during the overlap");
    let fresh =
        onetrip_protocol::ClientHandshake::new(onetrip_protocol::DefaultBackend::default(), &key, &new_doc, now())
            .unwrap();
    assert!(matches!(attempt(&fresh), Outcome::Granted(_)));
    assert_eq!(new_doc.fingerprint(), server.fingerprint, "rotation keeps the identity");
}

#[test]
fn unknown_key_and_wrong_secret_are_indistinguishable_on_the_wire() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "svc"]);
    let wrong = ApiKey::from_parts(key.id(), Secret::random(&mut rand_core::OsRng));
    let unknown = ApiKey::from_parts(KeyId::random(&mut rand_core::OsRng), Secret::random(&mut rand_core::OsRng));
    let mut seen = Vec::new();
    for k in [&wrong, &unknown] {
        let (req, pending) = server.request(k, &ClientRequest::default());
        let resp = server.post("/v1/auth", &[], &req);
        assert!(matches!(pending.finish(&resp.body).unwrap(), Outcome::AuthFailed));
        seen.push((resp.status, resp.body.len(), resp.header("content-type").map(str::to_owned)));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].1, RESPONSE_LEN);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"auth_failed\"}"), 2);
}

#[test]
fn a_replayed_request_is_refused_and_issues_no_second_token() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "svc"]);
    let (req, pending) = server.request(&key, &ClientRequest::default());
    let first = server.post("/v1/auth", &[], &req);
    assert!(matches!(pending.finish(&first.body).unwrap(), Outcome::Granted(_)));
    for _ in 0..20 {
        let again = server.post("/v1/auth", &[], &req);
        assert_eq!((again.status, again.body.len()), (200, RESPONSE_LEN));
    }
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 1);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"auth_failed\"}"), 20);
    assert_eq!(server.metric("onetrip_replay_cache_entries"), 1);
}

#[test]
fn malformed_bodies_get_typed_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&["--body-timeout-ms", "1000", "--header-timeout-ms", "1000"]);
    let (key, _) = server.create_key(&["--name", "svc"]);
    let (good, _) = server.request(&key, &ClientRequest::default());
    let mut wrong_version = good;
    wrong_version[0] = 9;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", vec![], 400, "bad_request"),
        ("short", good[..100].to_vec(), 400, "bad_request"),
        ("garbage", vec![0xAA; REQUEST_LEN], 400, "bad_request"),
        ("wrong version", wrong_version.to_vec(), 400, "bad_request"),
        ("long", vec![1; REQUEST_LEN + 1], 413, "body_too_large"),
        ("1 MB", vec![7; 1 << 20], 413, "body_too_large"),
    ];
    for (name, body, status, code) in cases {
        let r = server.post("/v1/auth", &[], &body);
        assert_eq!(r.status, status, "{name}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"), "{name}");
        assert_eq!(r.json()["code"], code, "{name}");
    }
    // Unknown route and method.
    assert_eq!(server.get("/nope").status, 404);
    assert_eq!(server.get("/v1/auth").status, 405);
    // A slow client that sends part of a body then stalls gets 408 and is cut off.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(format!("POST /v1/auth HTTP/1.1\r\nhost: x\r\ncontent-length: {REQUEST_LEN}\r\n\r\n").as_bytes())
        .unwrap();
    slow.write_all(&good[..10]).unwrap();
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).status, 408);
    // A client that never finishes its headers is disconnected.
    let mut stall = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stall.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stall.write_all(b"POST /v1/auth HTTP/1.1\r\nhost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = stall.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(5), "header timeout not enforced");
    // Still serving.
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
}

#[test]
fn keys_survive_kill_9_and_a_damaged_or_missing_store_is_refused() {
    let mut server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "durable"]);
    let dir = server.data_dir.clone();
    let fingerprint = server.fingerprint;
    server.kill9();
    let restarted = Server::start_in(&dir, &[]).expect("restart after kill -9");
    assert_eq!(restarted.fingerprint, fingerprint, "same identity after restart");
    assert!(matches!(restarted.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    drop(restarted);

    // Damaged: overwrite the file's header region.
    let store = dir.join("onetrip.redb");
    let original = std::fs::read(&store).unwrap();
    let mut damaged = original.clone();
    for b in damaged.iter_mut().take(4096) {
        *b ^= 0x5A;
    }
    std::fs::write(&store, &damaged).unwrap();
    let err = Server::start_in(&dir, &[]).err().expect("a damaged store must not start");
    assert!(err.contains("store") && err.contains("restore"), "unclear error: {err}");
    assert_eq!(std::fs::read(&store).unwrap(), damaged, "the damaged file was not rewritten");

    // Missing: the identity marker says a store existed.
    std::fs::remove_file(&store).unwrap();
    let err = Server::start_in(&dir, &[]).err().expect("a missing store must not be recreated");
    assert!(err.contains("missing"), "unclear error: {err}");
    assert!(!store.exists());

    // Restored from backup: works again with the same key.
    std::fs::write(&store, &original).unwrap();
    let back = Server::start_in(&dir, &[]).expect("restored store starts");
    assert!(matches!(back.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
}

#[test]
fn passphrase_seals_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealed");
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let pass_arg = pass.to_str().unwrap();
    let server = Server::start_in(&dir, &["--passphrase-file", pass_arg]).unwrap();
    let (key, _) = create_key_with(&dir, pass_arg);
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    drop(server);
    // Without the passphrase the server refuses to start, and says how to fix it.
    let err = Server::start_in(&dir, &[]).err().unwrap();
    assert!(err.contains("ONETRIP_PASSPHRASE"), "{err}");
    std::fs::write(&pass, "wrong").unwrap();
    let err = Server::start_in(&dir, &["--passphrase-file", pass_arg]).err().unwrap();
    assert!(err.contains("wrong passphrase"), "{err}");
    // The identity seed is not in the file in the clear: the file never contains the
    // unsealed fingerprint input (spot check: no plain-mode blob marker for identity).
    let shown = cli(&dir, &["server-key", "show", "--json", "--passphrase-file", pass_arg]);
    assert!(!shown.status.success(), "wrong passphrase must fail for the CLI too");
}

#[test]
fn a_passphrase_for_an_unsealed_store_is_refused_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    drop(Server::start_in(&dir, &[]).unwrap());
    let err = Server::start_in(&dir, &["--passphrase-file", pass.to_str().unwrap()]).err().unwrap();
    assert!(err.contains("created without a passphrase"), "{err}");
    let out = cli(&dir, &["keys", "list", "--passphrase-file", pass.to_str().unwrap()]);
    assert!(!out.status.success(), "the CLI must not pretend the keys are sealed either");
    assert!(Server::start_in(&dir, &[]).is_ok(), "without it the store still starts");
}

fn create_key_with(dir: &std::path::Path, pass: &str) -> (ApiKey, String) {
    let out = cli(dir, &["keys", "create", "--name", "k", "--json", "--passphrase-file", pass]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (ApiKey::parse(v["api_key"].as_str().unwrap()).unwrap(), v["id"].as_str().unwrap().to_owned())
}

#[test]
fn cli_reports_bad_input_clearly() {
    let server = Server::start(&[]);
    let out = server.cli(&["keys", "revoke", "nothex"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a key id"));
    let out = server.cli(&["keys", "create", "--name", "x", "--scope", "has space"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope"));
    let tmp = tempfile::tempdir().unwrap();
    let out = cli(tmp.path(), &["keys", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("onetrip serve"));
}

#[test]
fn a_mistyped_log_filter_stops_the_server_with_an_explanation() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr = tmp.path().join("stderr");
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "infoo", "--data-dir"])
        .arg(tmp.path())
        .env_remove("ONETRIP_PASSPHRASE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // Bounded: a server that wrongly starts is killed, and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "serve started with --log infoo: {err}");
    assert!(err.contains("`infoo` is not a level"), "{err}");
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut server = Server::start(&[]);
    let socket = server.data_dir.join("admin.sock");
    assert!(socket.exists());
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(!socket.exists(), "admin socket removed on shutdown");
    assert!(server.stderr().contains("shutting down"));
}

#[test]
fn step_up_with_the_console_channel() {
    let server = Server::start(&["--otp-console-codes"]);
    let (key, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "console:alice"]);
    let Outcome::SecondFactorRequired { operation, channel, destination } =
        server.handshake(&key, &ClientRequest::default())
    else {
        panic!("expected second_factor_required")
    };
    assert_eq!((channel, destination.as_str()), (onetrip_protocol::Channel::Console, "c***e"));
    let code = server.console_code(&hex::encode(operation));
    assert_eq!(code.len(), 6);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let with = |code: &str| {
        server.handshake(
            &key,
            &ClientRequest {
                second_factor: Some(onetrip_protocol::SecondFactor { operation, code }),
                ..Default::default()
            },
        )
    };
    assert!(matches!(with(wrong), Outcome::SecondFactorFailed { attempts_left: 4 }));
    let Outcome::Granted(grant) = with(&code) else { panic!("the right code must grant a token") };
    assert!(matches!(with(&code), Outcome::SecondFactorFailed { attempts_left: 0 }), "codes are single use");
    // The token carries the second-factor flag.
    let r = whoami(&server, &grant, "/v1/whoami");
    assert_eq!(r.json()["second_factor"], true);
    // Another key cannot use this operation id.
    let (other, _) = server.create_key(&["--name", "other", "--require-otp", "--otp-to", "console:bob"]);
    let stolen = server.handshake(
        &other,
        &ClientRequest {
            second_factor: Some(onetrip_protocol::SecondFactor { operation, code: &code }),
            ..Default::default()
        },
    );
    assert!(matches!(stolen, Outcome::SecondFactorFailed { attempts_left: 0 }));
    assert!(
        !server.stderr().lines().any(|l| l.contains(&code) && !l.contains("[onetrip console channel]")),
        "the code leaked into a log line"
    );
    // Every generate and check is audited, without the code.
    let out = server.cli(&["audit", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<&str> =
        events.iter().filter(|e| e["event"] == "otp.check").filter_map(|e| e["detail"]["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["wrong_code", "approved", "refused_approved", "refused_other_key"]);
    assert_eq!(events.iter().filter(|e| e["event"] == "otp.generate").count(), 1);
    assert!(events.iter().any(|e| e["event"] == "key.created"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&code), "audit shows the code");
}

#[test]
fn repeated_step_up_handshakes_reuse_one_operation_and_send_one_code() {
    let server = Server::start(&[]);
    let (key, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "console:alice"]);
    let operation = |o: Outcome| match o {
        Outcome::SecondFactorRequired { operation, .. } => operation,
        other => panic!("expected second_factor_required, got {other:?}"),
    };
    let first = operation(server.handshake(&key, &ClientRequest::default()));
    for _ in 0..20 {
        assert_eq!(
            operation(server.handshake(&key, &ClientRequest::default())),
            first,
            "a pending step-up is resumed, never doubled (no fresh attempts)"
        );
    }
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"second_factor_required\"}"), 21);
    let out = server.cli(&["audit", "--json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(events.iter().filter(|e| e["event"] == "otp.generate").count(), 1, "one code sent");
}
