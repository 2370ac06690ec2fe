//! OTP delivery through the real `onetrip` binary: email to a real SMTP server
//! (aiosmtpd), the signed webhook to a loopback receiver, and TOTP with enrolment
//! over HTTPS and `onetrip keys totp-enroll`. Step-up and the JSON API both.

mod common;
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{Channel, Outcome, PopProof, SecondFactor, TokenGrant};
use support::{Receiver, SmtpSink, WEBHOOK_SECRET};

fn granted(o: Outcome) -> TokenGrant {
    match o {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    }
}

/// A signed OTP API call over plain HTTP.
fn call(server: &Server, grant: &TokenGrant, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let proof =
        PopProof::sign(&grant.session_key, grant.token.binding(), method, path, &body, now(), &mut rand_core::OsRng)
            .unwrap();
    let auth = format!("Onetrip {}", &*grant.token.to_base64());
    http(server.port, method, path, &[("authorization", &auth), (POP_HEADER, &proof.to_header())], &body)
}

fn status_of(server: &Server, grant: &TokenGrant, id: &str) -> String {
    let r = call(server, grant, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    r.json()["status"].as_str().unwrap().to_owned()
}

/// Polls until the verification leaves `pending` or 10 s pass.
fn wait_for_status(server: &Server, grant: &TokenGrant, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(server, grant, id) != want {
        assert!(Instant::now() < deadline, "verification {id} never became {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn with_code(operation: [u8; 16], code: &str) -> ClientRequest<'_> {
    ClientRequest { second_factor: Some(SecondFactor { operation, code }), ..Default::default() }
}

fn audit_outcomes(server: &Server, event: &str) -> Vec<String> {
    let out = server.cli(&["audit", "--json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    events
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| e["detail"]["outcome"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn email_codes_reach_a_real_smtp_server_for_step_up_and_the_api() {
    let Some(sink) = SmtpSink::start() else { return };
    let port = sink.port.to_string();
    let server = Server::start(&[
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--smtp-from",
        "onetrip <no-reply@onetrip.test>",
    ]);
    // Step-up.
    let (key, _) = server.create_key(&["--name", "deploy", "--require-otp", "--otp-to", "ops@example.com"]);
    let Outcome::SecondFactorRequired { operation, channel, destination } =
        server.handshake(&key, &ClientRequest::default())
    else {
        panic!("expected second_factor_required")
    };
    assert_eq!((channel, destination.as_str()), (Channel::Email, "o***@example.com"));
    let mail = sink.message(1);
    assert!(mail.contains("X-Sink-Rcpt-To: ops@example.com\r\n"), "{mail}");
    assert!(mail.contains("\"deploy\""), "the step-up mail names the key: {mail}");
    let code = support::code_in(&mail).to_owned();
    assert_eq!(code.len(), 6);
    let grant = granted(server.handshake(&key, &with_code(operation, &code)));
    assert!(grant.token.as_bytes().len() > 100);

    // The JSON API.
    let (svc, _) = server.create_key(&["--name", "signup", "--scope", "otp"]);
    let svc = granted(server.handshake(&svc, &ClientRequest::default()));
    let body = serde_json::json!({ "to": "new-user@example.com", "channel": "email", "ttl": 300 });
    let r = call(&server, &svc, "POST", "/v1/otp/verifications", &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["to"], "n***@example.com");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let mail = sink.message(2);
    assert!(mail.contains("X-Sink-Rcpt-To: new-user@example.com\r\n"));
    assert!(mail.contains("expires in 5 minutes"), "{mail}");
    assert!(!mail.contains("API key"), "an API verification does not talk about keys");
    let code = support::code_in(&mail).to_owned();
    let r =
        call(&server, &svc, "POST", &format!("/v1/otp/verifications/{id}/check"), &serde_json::json!({ "code": code }));
    assert_eq!(r.json()["status"], "approved", "{}", r.json());

    // A relay that refuses the address: the verification becomes `failed`, audited.
    let body = serde_json::json!({ "to": "reject-me@example.com", "channel": "email" });
    let r = call(&server, &svc, "POST", "/v1/otp/verifications", &body);
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &svc, &id, "failed");
    assert!(audit_outcomes(&server, "otp.deliver").iter().any(|o| o.starts_with("failed")));
    assert!(audit_outcomes(&server, "otp.deliver").iter().filter(|o| o.starts_with("delivered")).count() >= 2);
    // Malformed addresses are refused before anything is stored.
    let r = call(
        &server,
        &svc,
        "POST",
        "/v1/otp/verifications",
        &serde_json::json!({ "to": "not an address", "channel": "email" }),
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("invalid_parameter")));
    assert!(!server.stderr().contains(&code), "a code reached the server log");
}

#[test]
fn webhook_codes_are_signed_retried_and_failures_become_failed() {
    // Three 503s first (more than the three attempts delivery used to give up after):
    // the server retries with backoff and the fourth attempt lands.
    let receiver = Receiver::start(vec![503, 503, 503]);
    let url = format!("http://127.0.0.1:{}/otp", receiver.port);
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &tmp.path().join("data"),
        &["--webhook-url", &url],
        &[("ONETRIP_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    )
    .unwrap();
    let (key, _) = server.create_key(&["--name", "sms", "--scope", "otp"]);
    let svc = granted(server.handshake(&key, &ClientRequest::default()));
    let r = call(
        &server,
        &svc,
        "POST",
        "/v1/otp/verifications",
        &serde_json::json!({ "to": "+15551234567", "channel": "sms" }),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["to"], "+*******4567");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while receiver.received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the webhook never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 4, "three 503s, then success");
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    let payload = receiver.received.lock().unwrap()[0].clone();
    assert_eq!(payload["verification_id"], id.as_str());
    assert_eq!(payload["to"], "+15551234567");
    let code = payload["code"].as_str().unwrap().to_owned();
    let r =
        call(&server, &svc, "POST", &format!("/v1/otp/verifications/{id}/check"), &serde_json::json!({ "code": code }));
    assert_eq!(r.json()["status"], "approved");

    // Step-up through the webhook.
    let (admin, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "webhook:+15557654321"]);
    let Outcome::SecondFactorRequired { operation, channel, .. } = server.handshake(&admin, &ClientRequest::default())
    else {
        panic!("expected second_factor_required")
    };
    assert_eq!(channel, Channel::Webhook);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        let got = receiver.received.lock().unwrap().iter().find(|p| p["to"] == "+15557654321").cloned();
        if let Some(p) = got {
            assert_eq!(p["purpose"], "step_up");
            break p["code"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the step-up webhook never arrived");
        std::thread::sleep(Duration::from_millis(20));
    };
    granted(server.handshake(&admin, &with_code(operation, &code)));
    assert!(!server.stderr().contains(&code), "a code reached the server log");
}

#[test]
fn a_webhook_that_keeps_failing_marks_the_verification_failed() {
    let receiver = Receiver::start(vec![500; 6]);
    let url = format!("http://127.0.0.1:{}/otp", receiver.port);
    let tmp = tempfile::tempdir().unwrap();
    // The window comes from the file and the URL from the flag: both must count.
    let config = tmp.path().join("onetrip.toml");
    std::fs::write(&config, "[otp.webhook]\nretry_window_secs = 4\n").unwrap();
    let server = Server::start_with_env(
        &tmp.path().join("data"),
        &["--webhook-url", &url, "--config", config.to_str().unwrap()],
        &[("ONETRIP_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    )
    .unwrap();
    let (key, _) = server.create_key(&["--name", "sms", "--scope", "otp"]);
    let svc = granted(server.handshake(&key, &ClientRequest::default()));
    let r = call(
        &server,
        &svc,
        "POST",
        "/v1/otp/verifications",
        &serde_json::json!({ "to": "+15550000000", "channel": "webhook" }),
    );
    let created = Instant::now();
    assert_eq!(r.status, 201, "the create call does not wait for the retries");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &svc, &id, "failed");
    let elapsed = created.elapsed();
    // 0.5 s doubling with jitter from the upper half: the 4th attempt starts by 3.5 s,
    // a 6th could not start before 7.75 s, past the 4 s window.
    let attempts = receiver.requests.load(Ordering::SeqCst);
    assert!((4..=5).contains(&attempts), "{attempts} attempts in a 4 s window");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests.load(Ordering::SeqCst), attempts, "attempts after the window");
    assert_eq!(audit_outcomes(&server, "otp.deliver"), ["failed: delivery_failed"]);
    // A failed verification compares nothing.
    let r = call(
        &server,
        &svc,
        "POST",
        &format!("/v1/otp/verifications/{id}/check"),
        &serde_json::json!({ "code": "123456" }),
    );
    assert_eq!((r.json()["status"].as_str(), r.json()["attempts_left"].as_u64()), (Some("failed"), Some(5)));
}

#[test]
fn the_webhook_channel_needs_its_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let err = match Server::start_in(&tmp.path().join("data"), &["--webhook-url", "http://127.0.0.1:9/otp"]) {
        Err(e) => e,
        Ok(_) => panic!("a webhook without ONETRIP_WEBHOOK_SECRET must not start"),
    };
    assert!(err.contains("ONETRIP_WEBHOOK_SECRET"), "{err}");
}

fn totp_code(secret_b32: &str, at: u64) -> String {
    let secret = onetrip_server::otp::totp::TotpSecret::from_base32(secret_b32).unwrap();
    onetrip_server::otp::totp::code_at(&secret, &onetrip_server::otp::totp::TotpParams::default(), at).to_string()
}

#[test]
fn totp_step_up_accepts_each_code_once() {
    let server = Server::start(&[]);
    let (key, id) = server.create_key(&["--name", "laptop", "--require-otp", "--otp-to", "totp"]);
    // Before enrolment there is nothing to check against.
    let Outcome::ServerError = server.handshake(&key, &ClientRequest::default()) else {
        panic!("a TOTP key without enrolment cannot finish a step-up")
    };
    let out = server.cli(&["keys", "totp-enroll", &id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enrolment: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    assert!(enrolment["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/onetrip:laptop?secret="));
    // Enrolling again is refused unless asked to replace (then audited as such).
    let again = server.cli(&["keys", "totp-enroll", &id]);
    assert!(!again.status.success(), "an existing enrolment must not be replaced silently");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"), "{}", String::from_utf8_lossy(&again.stderr));
    // The human form prints a QR code.
    let human = server.cli(&["keys", "totp-enroll", &id, "--replace"]);
    assert!(human.status.success(), "{}", String::from_utf8_lossy(&human.stderr));
    assert!(String::from_utf8_lossy(&human.stdout).contains('█'));
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    let enrol_events: Vec<&str> = audit
        .iter()
        .filter(|e| e["event"].as_str().is_some_and(|ev| ev.starts_with("otp.totp_")))
        .map(|e| e["detail"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(enrol_events, ["enrolled", "refused_already_enrolled", "replaced"]);
    let secret = {
        // The second enrolment replaced the secret: read it back from the human output.
        let text = String::from_utf8_lossy(&human.stdout).to_string();
        let line = text.lines().find(|l| l.trim_start().starts_with("secret:")).unwrap();
        assert_ne!(line.split(':').nth(1).unwrap().trim(), secret, "enrolling again replaces the secret");
        line.split(':').nth(1).unwrap().trim().to_owned()
    };

    let Outcome::SecondFactorRequired { operation, channel, destination } =
        server.handshake(&key, &ClientRequest::default())
    else {
        panic!("expected second_factor_required")
    };
    assert_eq!((channel, destination.as_str()), (Channel::Totp, "authenticator app"));
    let code = totp_code(&secret, now());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert!(matches!(
        server.handshake(&key, &with_code(operation, wrong)),
        Outcome::SecondFactorFailed { attempts_left: 4 }
    ));
    granted(server.handshake(&key, &with_code(operation, &code)));
    // The same code on a new operation is a replay: refused, although still in its window.
    let Outcome::SecondFactorRequired { operation, .. } = server.handshake(&key, &ClientRequest::default()) else {
        panic!("expected second_factor_required")
    };
    assert!(matches!(
        server.handshake(&key, &with_code(operation, &code)),
        Outcome::SecondFactorFailed { attempts_left: 4 }
    ));
    // The next step's code is accepted (±1 step tolerance), once.
    let next = totp_code(&secret, now() + 30);
    if next != code {
        granted(server.handshake(&key, &with_code(operation, &next)));
    }
    // Enrolment is only for TOTP keys.
    let (other, other_id) = server.create_key(&["--name", "mail", "--require-otp", "--otp-to", "x@example.com"]);
    drop(other);
    let out = server.cli(&["keys", "totp-enroll", &other_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not use TOTP"));
}

#[test]
fn totp_through_the_api_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, ca) = start_tls(tmp.path());
    let (key, _) = create_key(&dir, &["--name", "app", "--scope", "otp"]);
    let grant = grant_over_tls(&server, &ca, &key, &ClientRequest::default());
    let bearer = format!("Bearer {}", &*grant.token.to_base64());
    let post = |path: &str, body: serde_json::Value| {
        https(server.port, &ca, "POST", path, &[("authorization", &bearer)], body.to_string().as_bytes())
    };
    let r = post("/v1/otp/totp", serde_json::json!({ "account": "alice@example.com" }));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(r.json()["otpauth_uri"].as_str().unwrap().contains("alice%40example.com"));
    for bad in ["@key", "", &"x".repeat(129)] {
        let r = post("/v1/otp/totp", serde_json::json!({ "account": bad }));
        assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("invalid_parameter")), "{bad}");
    }
    let start = |code_length: Option<u64>| {
        let mut body = serde_json::json!({ "to": "alice@example.com", "channel": "totp" });
        if let Some(n) = code_length {
            body["code_length"] = n.into();
        }
        post("/v1/otp/verifications", body)
    };
    assert_eq!(start(Some(8)).json()["code"], "invalid_parameter");
    let r = start(None);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["resend_available_at"], serde_json::Value::Null);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = post(&format!("/v1/otp/verifications/{id}/resend"), serde_json::json!({}));
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("nothing_to_send")));
    let code = totp_code(&secret, now());
    let r = post(&format!("/v1/otp/verifications/{id}/check"), serde_json::json!({ "code": code }));
    assert_eq!(r.json()["status"], "approved", "{}", r.json());
    // Replay on a fresh verification: refused (the attempt counts).
    let id2 = start(None).json()["id"].as_str().unwrap().to_owned();
    let r = post(&format!("/v1/otp/verifications/{id2}/check"), serde_json::json!({ "code": code }));
    assert_eq!((r.json()["status"].as_str(), r.json()["valid"].as_bool()), (Some("pending"), Some(false)));
    assert_eq!(r.json()["attempts_left"], 4);
    // Not enrolled: typed error. Another key cannot use Alice's enrolment.
    let r = post("/v1/otp/verifications", serde_json::json!({ "to": "bob", "channel": "totp" }));
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("totp_not_enrolled")));
}
