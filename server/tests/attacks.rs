//! Hostile-input checks against the real server: replay floods and secrets in logs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use onetrip_protocol::handshake::{ClientRequest, RESPONSE_LEN};
use onetrip_protocol::{Outcome, PopProof, SecondFactor};

/// Sends `body` `n` times on one keep-alive connection; returns the status codes.
fn flood(port: u16, body: &[u8], n: usize) -> Vec<u16> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    s.set_nodelay(true).unwrap();
    let mut writer = s;
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        // One write per request: a separate small body write would wait for a delayed ACK.
        let mut msg =
            format!("POST /v1/auth HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        msg.extend_from_slice(body);
        writer.write_all(&msg).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        statuses.push(line.split(' ').nth(1).unwrap().parse().unwrap());
        let mut len = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut b = vec![0; len];
        reader.read_exact(&mut b).unwrap();
        assert_eq!(b.len(), RESPONSE_LEN);
    }
    statuses
}

#[test]
fn a_replay_flood_issues_exactly_one_token() {
    let server = Server::start(&["--auth-rate-per-ip", "1000000"]);
    let (key, _) = server.create_key(&["--name", "victim"]);
    let (request, pending) = server.request(&key, &ClientRequest::default());
    let statuses = flood(server.port, &request, 10_000);
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"ok\"}"), 1, "exactly one token for 10,000 copies");
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"auth_failed\"}"), 9_999);
    assert_eq!(server.metric("onetrip_replay_cache_entries"), 1, "a replay burns no extra state");
    drop(pending);
}

#[test]
fn secrets_never_reach_logs_or_error_bodies() {
    let server = Server::start(&["--log", "trace"]);
    let (key, id) = server.create_key(&["--name", "logged", "--audience", "db"]);
    let key_string = key.encode().to_string();
    let mut bodies = Vec::new();
    // A full scenario: handshake, PoP request, introspection, bad inputs, a wrong secret,
    // a second-factor code in a request, revoke.
    let Outcome::Granted(grant) = server.handshake(&key, &ClientRequest::default()) else { panic!("no token") };
    let proof = PopProof::sign(
        &grant.session_key,
        grant.token.binding(),
        "GET",
        "/v1/whoami",
        b"",
        now(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    let auth = format!("Onetrip {}", &*grant.token.to_base64());
    bodies.push(
        http(server.port, "GET", "/v1/whoami", &[("authorization", &auth), ("onetrip-pop", &proof.to_header())], b"")
            .body,
    );
    bodies.push(
        http(server.port, "GET", "/v1/whoami", &[("authorization", &auth), ("onetrip-pop", "garbage")], b"").body,
    );
    let intro = serde_json::json!({ "token": &*grant.token.to_base64(), "pop": proof.to_header(), "method": "GET", "path": "/x" });
    bodies.push(server.post("/v1/introspect", &[], intro.to_string().as_bytes()).body);
    bodies.push(server.post("/v1/introspect", &[], b"{not json").body);
    let code_req = ClientRequest {
        second_factor: Some(SecondFactor { operation: [3; 16], code: "918273" }),
        ..Default::default()
    };
    let (req, _) = server.request(&key, &code_req);
    bodies.push(server.post("/v1/auth", &[], &req).body);
    let wrong = onetrip_protocol::ApiKey::from_parts(key.id(), onetrip_protocol::Secret::new([9; 24]));
    let _ = server.handshake(&wrong, &ClientRequest::default());
    bodies.push(server.post("/v1/auth", &[], b"short").body);
    assert!(server.cli(&["keys", "revoke", &id]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(200));

    let logs = server.stderr();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "trace logging was not on");
    let secret = key.secret().expose();
    let forbidden = [
        ("API key string", key_string[4..].to_string()),
        ("API secret (hex)", hex::encode(secret)),
        ("API secret (base64url)", URL_SAFE_NO_PAD.encode(secret)),
        ("token (base64url)", grant.token.to_base64()[..64].to_string()),
        ("token (hex)", hex::encode(&grant.token.as_bytes()[25..80])),
        ("session key (hex)", hex::encode(grant.session_key.expose())),
        ("session key (base64)", STANDARD.encode(grant.session_key.expose())),
        ("PoP proof", proof.to_header()),
        ("second-factor code", "918273".to_string()),
        ("client static private key", hex::encode(key.client_static_private().expose())),
    ];
    for (what, needle) in &forbidden {
        assert!(!logs.contains(needle.as_str()), "{what} found in the server log");
        for body in &bodies {
            assert!(!String::from_utf8_lossy(body).contains(needle.as_str()), "{what} found in an error body");
        }
    }
}
