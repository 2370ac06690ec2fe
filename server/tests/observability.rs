//! What an operator sees: every refusal is counted with its route and reason in
//! `/metrics`, including the ones decided before any cryptography; log lines can be
//! JSON and carry the request id that the answer's `X-Request-Id` header names; the
//! effective settings are logged at start without their secrets.

mod common;

use common::Server;
use onetrip_protocol::handshake::REQUEST_LEN;

const OCTETS: (&str, &str) = ("content-type", "application/octet-stream");

#[test]
fn per_address_refusals_and_oversized_bodies_are_counted_with_their_reason() {
    let server = Server::start(&["--auth-rate-per-ip", "2"]);
    let statuses: Vec<u16> = (0..6).map(|_| server.post("/v1/auth", &[OCTETS], &[0u8; REQUEST_LEN]).status).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert!(limited >= 3, "the per-address limit of 2/s refuses most of 6 at once: {statuses:?}");
    assert_eq!(server.metric("onetrip_refusals_total{route=\"auth\",code=\"rate_limited\"}"), limited);
    // The ones let through were undecodable (400): refused before cryptography too.
    let undecodable = statuses.iter().filter(|s| **s == 400).count() as u64;
    assert_eq!(undecodable + limited, 6, "{statuses:?}");
    assert_eq!(server.metric("onetrip_handshakes_rejected_total"), 6, "429s and 400s alike");

    let big = server.post("/v1/introspect", &[("content-type", "application/json")], &vec![b' '; 1 << 20]);
    assert_eq!(big.status, 413);
    assert_eq!(server.metric("onetrip_refusals_total{route=\"introspect\",code=\"body_too_large\"}"), 1);

    // Made-up paths share one label: a client cannot grow the metrics.
    for i in 0..5 {
        assert_eq!(server.get(&format!("/nope/{i}")).status, 404);
    }
    assert_eq!(server.metric("onetrip_refusals_total{route=\"other\",code=\"not_found\"}"), 5);
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(!text.contains("/nope"), "no raw path in a label");
}

/// Waits (up to 5 s) for the server's stderr to hold a line that `found` accepts.
fn log_line(server: &Server, found: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = server
            .stderr()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect();
        if let Some(line) = lines.into_iter().find(|l| found(l)) {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no such log line in:\n{}", server.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn json_logs_carry_request_ids_admin_outcomes_and_the_settings_without_secrets() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let secret = "metrics-token-that-must-not-be-logged";
    let server = Server::start_with_env(
        &tmp.path().join("data"),
        &["--log-format", "json", "--log", "info,onetrip_server=debug"],
        &[("ONETRIP_METRICS_TOKEN", secret)],
    )
    .expect("server starts");

    // A made id comes back as a header and is the span id of the request's lines.
    let refused = server.get("/no/such/path");
    assert_eq!(refused.status, 404);
    let id = refused.header("x-request-id").expect("a request id").to_owned();
    let line = log_line(&server, |l| l["span"]["id"] == id.as_str());
    assert_eq!(line["fields"]["message"], "request refused");
    assert_eq!(line["fields"]["code"], "not_found");
    assert_eq!(line["span"]["name"], "request");
    assert!(line["timestamp"].is_string() && line["level"] == "DEBUG", "{line}");

    // A proxy's id is kept; a malformed one is replaced.
    let kept = common::http(server.port, "GET", "/nope", &[("x-request-id", "edge-7f3a:1")], b"");
    assert_eq!(kept.header("x-request-id"), Some("edge-7f3a:1"));
    log_line(&server, |l| l["span"]["id"] == "edge-7f3a:1");
    let replaced = common::http(server.port, "GET", "/nope", &[("x-request-id", "bad id\\\"}")], b"");
    let made = replaced.header("x-request-id").expect("an id");
    assert!(made.len() == 20 && made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    assert_ne!(made, id, "ids differ per request");

    // Start-up logged the settings in effect, secrets redacted.
    let settings = log_line(&server, |l| l["fields"]["message"] == "effective settings");
    let shown = settings["fields"]["settings"].as_str().expect("settings as text");
    assert!(shown.contains("log_format: Json") && shown.contains("listen:"), "{shown}");
    assert!(!server.stderr().contains(secret), "the metrics token is never logged");

    // Admin requests: op, key id, name, caller's uid and outcome; never the secret.
    let (key, key_id) = server.create_key(&["--name", "billing"]);
    let created = log_line(&server, |l| l["fields"]["op"] == "keys_create");
    assert_eq!(created["fields"]["key"], key_id.as_str());
    assert_eq!(created["fields"]["name"], "billing");
    assert_eq!(created["fields"]["outcome"], "ok");
    assert!(created["fields"]["uid"].as_str().is_some_and(|u| u.parse::<u32>().is_ok()), "{created}");
    assert!(!server.stderr().contains(key.encode().as_str()), "a new key's secret is never logged");
    assert!(server.cli(&["keys", "revoke", &key_id]).status.success());
    let revoked = log_line(&server, |l| l["fields"]["op"] == "keys_revoke" && l["fields"]["outcome"] == "ok");
    assert_eq!(revoked["fields"]["key"], key_id.as_str());
    let missing = "00112233445566778899aabbccddeeff";
    assert!(!server.cli(&["keys", "revoke", missing]).status.success());
    let failed = log_line(&server, |l| l["fields"]["key"] == missing);
    assert_eq!(failed["fields"]["outcome"], "not_found");
    assert_eq!(failed["level"], "WARN");
}
