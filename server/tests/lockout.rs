//! Brute force of second factors with the API key alone: wrong codes are counted per
//! key (step-up, any channel) and per TOTP account across verifications, the lock
//! survives a restart, and only a right code or an administrator clears it.

mod common;

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::{Outcome, SecondFactor};

fn with_code<'a>(operation: [u8; 16], code: &'a str) -> ClientRequest<'a> {
    ClientRequest { second_factor: Some(SecondFactor { operation, code }), ..Default::default() }
}

fn totp_code(secret_b32: &str, at: u64) -> String {
    let secret = onetrip_server::otp::totp::TotpSecret::from_base32(secret_b32).unwrap();
    onetrip_server::otp::totp::code_at(&secret, &onetrip_server::otp::totp::TotpParams::default(), at).to_string()
}

/// Guesses wrong codes the way an attacker with the API key would: a handshake for an
/// operation, then wrong codes on it, a new handshake when it is used up. Returns how
/// many wrong codes were compared before the key was locked (the answer then is
/// `rate_limited`), or panics when `budget` guesses do not lock it.
fn guess_until_locked(server: &Server, key: &onetrip_protocol::ApiKey, right: &str, budget: usize) -> usize {
    let wrong = if right == "000000" { "111111" } else { "000000" };
    let mut compared = 0;
    for _ in 0..budget {
        let operation = match server.handshake(key, &ClientRequest::default()) {
            Outcome::SecondFactorRequired { operation, .. } => operation,
            Outcome::RateLimited { .. } => return compared,
            other => panic!("unexpected {other:?}"),
        };
        match server.handshake(key, &with_code(operation, wrong)) {
            Outcome::SecondFactorFailed { .. } => compared += 1,
            Outcome::RateLimited { .. } => return compared,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("{budget} guesses did not lock the key");
}

#[test]
fn totp_step_up_brute_force_is_locked_out_and_the_lock_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]).unwrap();
    let (key, id) = server.create_key(&["--name", "laptop", "--require-otp", "--otp-to", "totp"]);
    let out = server.cli(&["keys", "totp-enroll", &id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["secret"].as_str().unwrap().to_owned();

    // Each handshake used to open a new operation with 5 fresh attempts; now the
    // 10 wrong codes (the default) across operations lock the key.
    let compared = guess_until_locked(&server, &key, &totp_code(&secret, now()), 100);
    assert_eq!(compared, 10, "wrong codes compared before the lock");
    // Locked: even the right code is not compared, on a new or an old operation.
    let Outcome::RateLimited { retry_after_secs } = server.handshake(&key, &ClientRequest::default()) else {
        panic!("a locked key must not start a step-up")
    };
    assert!((3000..=3600).contains(&retry_after_secs), "{retry_after_secs}");
    let shown: serde_json::Value =
        serde_json::from_slice(&server.cli(&["keys", "show", &id, "--json"]).stdout).unwrap();
    assert_eq!(shown["second_factor_lock"]["locked"], true, "{shown}");

    // A restart keeps the lock (it is in the store).
    server.kill9();
    let server = Server::start_in(&dir, &[]).unwrap();
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::RateLimited { .. }));
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert!(
        audit.iter().any(|e| e["event"] == "otp.check" && e["detail"]["locked_until"].is_u64()),
        "the lock is audited"
    );

    // An administrator unlocks it (audited), and the right code works again.
    let out = server.cli(&["keys", "unlock", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not locked"));
    let Outcome::SecondFactorRequired { operation, .. } = server.handshake(&key, &ClientRequest::default()) else {
        panic!("unlocked")
    };
    // A code not used before: the next step's (±1 step is accepted).
    let code = totp_code(&secret, now() + 30);
    assert!(matches!(server.handshake(&key, &with_code(operation, &code)), Outcome::Granted(_)));
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert!(audit.iter().any(|e| e["event"] == "otp.unlocked"));
}

#[test]
fn code_sending_step_up_channels_have_the_same_bound() {
    // Console goes through the same step-up path as email and webhook.
    let server = Server::start(&["--otp-console-codes", "--otp-max-code-failures", "4"]);
    let (key, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "console:ops"]);
    assert_eq!(guess_until_locked(&server, &key, "", 50), 4);
    // A second key is not affected by the first one's lock.
    let (other, _) = server.create_key(&["--name", "other", "--require-otp", "--otp-to", "console:ops2"]);
    assert!(matches!(server.handshake(&other, &ClientRequest::default()), Outcome::SecondFactorRequired { .. }));
}

#[test]
fn api_totp_accounts_are_locked_across_verifications_and_at_key_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dir, ca) = start_tls(tmp.path());
    let (key, _) = create_key(&dir, &["--name", "svc", "--scope", "otp"]);
    let (step_up, _) = create_key(&dir, &["--name", "svc-admin", "--require-otp", "--otp-to", "totp"]);
    drop(step_up);
    let grant = grant_over_tls(&server, &ca, &key, &ClientRequest::default());
    let bearer = format!("Bearer {}", &*grant.token.to_base64());
    let post = |path: &str, body: serde_json::Value| {
        https(server.port, &ca, "POST", path, &[("authorization", &bearer)], body.to_string().as_bytes())
    };
    // The key's own step-up account is not reachable through the API.
    let r = post("/v1/otp/verifications", serde_json::json!({ "to": "@key", "channel": "totp" }));
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("invalid_parameter")));
    // An enrolled account: an existing enrolment is not replaced silently.
    let r = post("/v1/otp/totp", serde_json::json!({ "account": "alice" }));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = post("/v1/otp/totp", serde_json::json!({ "account": "alice" }));
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("totp_already_enrolled")));
    let wrong = if totp_code(&secret, now()) == "000000" { "111111" } else { "000000" };
    let mut compared = 0;
    'guessing: for _ in 0..10 {
        let r = post("/v1/otp/verifications", serde_json::json!({ "to": "alice", "channel": "totp" }));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let id = r.json()["id"].as_str().unwrap().to_owned();
        for _ in 0..5 {
            let r = post(&format!("/v1/otp/verifications/{id}/check"), serde_json::json!({ "code": wrong }));
            match r.status {
                200 => compared += 1,
                429 => {
                    assert_eq!(r.json()["code"], "second_factor_locked");
                    assert!(r.header("retry-after").is_some());
                    break 'guessing;
                }
                other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
    }
    assert_eq!(compared, 10, "10 wrong codes across verifications, then locked");
    // The lock holds for the right code too, and on a fresh verification.
    let r = post("/v1/otp/verifications", serde_json::json!({ "to": "alice", "channel": "totp" }));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r =
        post(&format!("/v1/otp/verifications/{id}/check"), serde_json::json!({ "code": totp_code(&secret, now()) }));
    assert_eq!(r.status, 429);
    // Replacing the enrolment is possible (and audited) but does not lift the lock.
    let r = post("/v1/otp/totp", serde_json::json!({ "account": "alice", "replace": true }));
    assert_eq!(r.status, 201);
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&server.cli(&["audit", "--json"]).stdout).unwrap();
    assert!(audit.iter().any(|e| e["event"] == "otp.totp_replace"));
}
