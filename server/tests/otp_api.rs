//! The standalone OTP API against the real `onetrip` binary: lifecycle, owner
//! isolation, authorization, bad input, limits (per destination, per key, per IP),
//! brute force under concurrency, restarts, MFA scopes, and the OpenAPI document.
//! Codes come from the console channel (`--otp-console-codes`, stderr).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{Outcome, PopProof, TokenGrant};

/// A key with the `otp` scope and a token for it.
struct Caller {
    grant: TokenGrant,
}

impl Caller {
    fn new(server: &Server, name: &str) -> Caller {
        let (key, _) = server.create_key(&["--name", name, "--scope", "otp"]);
        Caller::with_key(server, &key)
    }

    fn with_key(server: &Server, key: &ApiKey) -> Caller {
        match server.handshake(key, &ClientRequest::default()) {
            Outcome::Granted(g) => Caller { grant: *g },
            other => panic!("expected a token, got {other:?}"),
        }
    }

    fn headers(&self, method: &str, path: &str, body: &[u8]) -> (String, String) {
        pop_headers(&self.grant, method, path, body)
    }

    fn call(&self, server: &Server, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.raw(server, method, path, &body)
    }

    fn raw(&self, server: &Server, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let (auth, pop) = self.headers(method, path, body);
        http(
            server.port,
            method,
            path,
            &[("authorization", &auth), (POP_HEADER, &pop), ("content-type", "application/json")],
            body,
        )
    }

    fn create(&self, server: &Server, to: &str) -> HttpResponse {
        self.call(server, "POST", "/v1/otp/verifications", &serde_json::json!({ "to": to, "channel": "console" }))
    }

    fn check(&self, server: &Server, id: &str, code: &str) -> HttpResponse {
        self.call(server, "POST", &format!("/v1/otp/verifications/{id}/check"), &serde_json::json!({ "code": code }))
    }
}

fn created_id(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

fn wrong_code(code: &str) -> String {
    if code == "000000" {
        "111111".into()
    } else {
        "000000".into()
    }
}

fn assert_problem(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["code"], code, "{p}");
    assert_eq!(p["type"], format!("https://onetrip.dev/problems/{code}"));
    assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

fn audit(server: &Server) -> Vec<serde_json::Value> {
    let out = server.cli(&["audit", "--since", "1h", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_verification_is_created_checked_and_approved_once() {
    let server = Server::start(&["--otp-console-codes"]);
    let caller = Caller::new(&server, "svc");
    let r = caller.create(&server, "alice-laptop");
    let id = created_id(&r);
    let v = r.json();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["channel"], "console");
    assert_eq!(v["to"], "a***p", "destinations are masked");
    assert_eq!(v["attempts_left"], 5);
    assert_eq!(v["sends_left"], 3);
    assert_eq!(v["expires_at"].as_u64().unwrap() - v["created_at"].as_u64().unwrap(), 600);
    assert_eq!(v["resend_available_at"].as_u64().unwrap(), v["created_at"].as_u64().unwrap() + 30);
    let code = server.console_code(&id);
    assert_eq!(code.len(), 6);
    assert!(!String::from_utf8_lossy(&r.body).contains(&code));

    let got = caller.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());

    let wrong = caller.check(&server, &id, &wrong_code(&code));
    assert_eq!(wrong.status, 200);
    assert_eq!((wrong.json()["status"].as_str(), wrong.json()["valid"].as_bool()), (Some("pending"), Some(false)));
    assert_eq!(wrong.json()["attempts_left"], 4);

    let right = caller.check(&server, &id, &code);
    assert_eq!(right.status, 200, "{}", String::from_utf8_lossy(&right.body));
    assert_eq!((right.json()["status"].as_str(), right.json()["valid"].as_bool()), (Some("approved"), Some(true)));
    // Single use: the same code again is not another success.
    assert_problem(&caller.check(&server, &id, &code), 409, "verification_not_pending");
    // Canceling an approved verification is refused too.
    let cancel = caller.call(&server, "POST", &format!("/v1/otp/verifications/{id}/cancel"), &serde_json::Value::Null);
    assert_problem(&cancel, 409, "verification_not_pending");

    let events = audit(&server);
    let of = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(of("otp.generate"), 1);
    assert_eq!(of("otp.check"), 3);
    assert_eq!(of("otp.cancel"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while of_event(&server, "otp.deliver") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(of_event(&server, "otp.deliver"), 1, "delivery is audited");
    let all = serde_json::to_string(&audit(&server)).unwrap();
    assert!(!all.contains(&code), "the audit log holds the code");
    assert!(
        !server.stderr().lines().any(|l| l.contains(&code) && !l.contains("[onetrip console")),
        "the code leaked into a log line"
    );

    // The same story in /metrics; series of other channels are there at 0.
    assert_eq!(server.metric("onetrip_otp_created_total{channel=\"console\"}"), 1);
    assert_eq!(server.metric("onetrip_otp_created_total{channel=\"email\"}"), 0);
    assert_eq!(server.metric("onetrip_otp_deliveries_total{channel=\"console\",outcome=\"delivered\"}"), 1);
    assert_eq!(server.metric("onetrip_otp_deliveries_total{channel=\"console\",outcome=\"failed\"}"), 0);
    assert_eq!(server.metric("onetrip_otp_checks_total{outcome=\"wrong_code\"}"), 1);
    assert_eq!(server.metric("onetrip_otp_checks_total{outcome=\"approved\"}"), 1);
    assert_eq!(server.metric("onetrip_otp_checks_total{outcome=\"not_pending\"}"), 1);
}

fn of_event(server: &Server, name: &str) -> usize {
    audit(server).iter().filter(|e| e["event"] == name).count()
}

#[test]
fn a_key_cannot_see_or_touch_another_keys_verifications() {
    let server = Server::start(&["--otp-console-codes"]);
    let alice = Caller::new(&server, "alice-svc");
    let mallory = Caller::new(&server, "mallory-svc");
    let id = created_id(&alice.create(&server, "victim@example.com"));
    let code = server.console_code(&id);
    let unknown = "0123456789abcdef0123456789abcdef";
    for target in [id.as_str(), unknown] {
        let get = mallory.call(&server, "GET", &format!("/v1/otp/verifications/{target}"), &serde_json::Value::Null);
        assert_problem(&get, 404, "verification_not_found");
        assert_problem(&mallory.check(&server, target, &code), 404, "verification_not_found");
        for action in ["resend", "cancel"] {
            let r = mallory.call(
                &server,
                "POST",
                &format!("/v1/otp/verifications/{target}/{action}"),
                &serde_json::Value::Null,
            );
            assert_problem(&r, 404, "verification_not_found");
        }
    }
    // Another key's id and an unknown id are answered alike (only the detail text is
    // shared by design: same code, same status, same body).
    let a = mallory.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    let b = mallory.call(&server, "GET", &format!("/v1/otp/verifications/{unknown}"), &serde_json::Value::Null);
    assert_eq!(a.body, b.body);
    // Mallory's attempts used none of Alice's.
    let v = alice.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    assert_eq!(v.json()["attempts_left"], 5);
    assert_eq!(v.json()["status"], "pending");
    let r = alice.check(&server, &id, &code);
    assert_eq!(r.json()["status"], "approved");
}

#[test]
fn step_up_operations_are_not_reachable_through_the_api() {
    let server = Server::start(&["--otp-console-codes"]);
    let (key, _) = server.create_key(&["--name", "both", "--scope", "otp", "--require-otp", "--otp-to", "console:ops"]);
    let Outcome::SecondFactorRequired { operation, .. } = server.handshake(&key, &ClientRequest::default()) else {
        panic!("expected second_factor_required")
    };
    let id = hex::encode(operation);
    let code = server.console_code(&id);
    let grant = match server.handshake(
        &key,
        &ClientRequest {
            second_factor: Some(onetrip_protocol::SecondFactor { operation, code: &code }),
            ..Default::default()
        },
    ) {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    };
    let caller = Caller { grant };
    // Same key, but the step-up verification is not an API verification.
    assert_problem(&caller.check(&server, &id, &code), 404, "verification_not_found");
    let get = caller.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    assert_problem(&get, 404, "verification_not_found");
}

#[test]
fn the_api_needs_a_valid_token_with_the_otp_scope() {
    let server = Server::start(&["--otp-console-codes"]);
    let body = br#"{"to":"x","channel":"console"}"#;
    let path = "/v1/otp/verifications";
    // No token.
    let r = http(server.port, "POST", path, &[], body);
    assert_problem(&r, 401, "token_missing");
    assert_eq!(r.header("www-authenticate"), Some("Onetrip"));
    // A token without the scope.
    let (plain, _) = server.create_key(&["--name", "no-otp", "--scope", "read"]);
    let reader = Caller::with_key(&server, &plain);
    assert_problem(&reader.raw(&server, "POST", path, body), 403, "scope_required");
    // A proof over another body, another path, or missing.
    let caller = Caller::new(&server, "svc");
    let (auth, pop) = caller.headers("POST", path, br#"{"to":"y","channel":"console"}"#);
    let r = http(server.port, "POST", path, &[("authorization", &auth), (POP_HEADER, &pop)], body);
    assert_problem(&r, 401, "token_invalid");
    let (auth, pop) = caller.headers("POST", "/v1/otp/totp", body);
    let r = http(server.port, "POST", path, &[("authorization", &auth), (POP_HEADER, &pop)], body);
    assert_problem(&r, 401, "token_invalid");
    let r = http(server.port, "POST", path, &[("authorization", &auth)], body);
    assert_problem(&r, 401, "pop_required");
    let r = http(server.port, "POST", path, &[("authorization", &auth), (POP_HEADER, "garbage")], body);
    assert_problem(&r, 401, "pop_invalid");
    // Bearer needs TLS.
    let bearer = format!("Bearer {}", &*caller.grant.token.to_base64());
    let r = http(server.port, "POST", path, &[("authorization", &bearer)], body);
    assert_problem(&r, 401, "bearer_requires_tls");
    // A revoked key's token stops working at once.
    let (key, id) = server.create_key(&["--name", "soon-revoked", "--scope", "otp"]);
    let doomed = Caller::with_key(&server, &key);
    assert_eq!(doomed.raw(&server, "POST", path, body).status, 201);
    assert!(server.cli(&["keys", "revoke", &id]).status.success());
    assert_problem(&doomed.raw(&server, "POST", path, body), 401, "token_invalid");
    // TOTP secrets only over TLS.
    let r = caller.call(&server, "POST", "/v1/otp/totp", &serde_json::json!({ "account": "alice" }));
    assert_problem(&r, 403, "tls_required");
}

#[test]
fn bad_input_gets_typed_problems_and_nothing_is_created() {
    let server = Server::start(&["--otp-console-codes", "--otp-api-rate-per-ip", "1000"]);
    let caller = Caller::new(&server, "svc");
    let path = "/v1/otp/verifications";
    let cases: &[(&[u8], u16, &str)] = &[
        (b"", 400, "bad_json"),
        (b"{", 400, "bad_json"),
        (b"[]", 400, "bad_json"),
        (br#"{"to":"x"}"#, 400, "bad_json"),
        (br#"{"to":"x","channel":"console","extra":1}"#, 400, "bad_json"),
        (br#"{"to":5,"channel":"console"}"#, 400, "bad_json"),
        (br#"{"to":"x","channel":"pigeon"}"#, 400, "invalid_parameter"),
        (br#"{"to":"","channel":"console"}"#, 400, "invalid_parameter"),
        (br#"{"to":"a\u0000b","channel":"console"}"#, 400, "invalid_parameter"),
        (br#"{"to":"x","channel":"console","code_length":3}"#, 400, "invalid_parameter"),
        (br#"{"to":"x","channel":"console","code_length":11}"#, 400, "invalid_parameter"),
        (br#"{"to":"x","channel":"console","code_length":-1}"#, 400, "bad_json"),
        (br#"{"to":"x","channel":"console","ttl":5}"#, 400, "invalid_parameter"),
        (br#"{"to":"x","channel":"console","ttl":99999999999999999999}"#, 400, "bad_json"),
        (br#"{"to":"x","channel":"console","locale":"en_US; rm -rf"}"#, 400, "invalid_parameter"),
        (br#"{"to":"x","channel":"email"}"#, 400, "channel_unavailable"),
        (br#"{"to":"x","channel":"webhook"}"#, 400, "channel_unavailable"),
        (br#"{"to":"nobody","channel":"totp"}"#, 400, "totp_not_enrolled"),
    ];
    for (body, status, code) in cases {
        let r = caller.raw(&server, "POST", path, body);
        assert_problem(&r, *status, code);
    }
    let long = serde_json::json!({ "to": "x".repeat(257), "channel": "console" });
    assert_problem(&caller.call(&server, "POST", path, &long), 400, "invalid_parameter");
    let huge = vec![b' '; 17 * 1024];
    assert_problem(&caller.raw(&server, "POST", path, &huge), 413, "body_too_large");
    // Paths and methods.
    let none = serde_json::Value::Null;
    assert_problem(&caller.call(&server, "GET", "/v1/otp/verifications/xyz", &none), 404, "verification_not_found");
    assert_problem(
        &caller.call(&server, "POST", "/v1/otp/verifications/0123456789abcdef0123456789abcdef/explode", &none),
        404,
        "verification_not_found",
    );
    assert_problem(&caller.call(&server, "DELETE", path, &none), 405, "method_not_allowed");
    assert_problem(&caller.call(&server, "GET", path, &none), 405, "method_not_allowed");
    assert_problem(&caller.call(&server, "GET", "/v1/otp/nothing-here", &none), 404, "not_found");
    // Bad check bodies.
    let id = created_id(&caller.create(&server, "x"));
    for (body, code) in [
        (&br#"{}"#[..], "bad_json"),
        (br#"{"code":123456}"#, "bad_json"),
        (br#"{"code":""}"#, "invalid_parameter"),
        (br#"{"code":"12345678901234567"}"#, "invalid_parameter"),
    ] {
        assert_problem(&caller.raw(&server, "POST", &format!("{path}/{id}/check"), body), 400, code);
    }
    let v = caller.call(&server, "GET", &format!("{path}/{id}"), &none);
    assert_eq!(v.json()["attempts_left"], 5, "malformed checks use no attempt");
    assert_eq!(of_event(&server, "otp.generate"), 1, "only the valid request created a verification");
}

#[test]
fn fifty_parallel_wrong_checks_over_http_evaluate_exactly_five() {
    let server = Server::start(&["--otp-console-codes", "--otp-api-rate-per-ip", "10000"]);
    let caller = Caller::new(&server, "svc");
    let id = created_id(&caller.create(&server, "target"));
    let code = server.console_code(&id);
    let wrong = wrong_code(&code);
    let statuses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    let r = caller.check(&server, &id, &wrong);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    format!("{}/{}", r.json()["status"].as_str().unwrap(), r.json()["attempts_left"])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let evaluated: BTreeSet<&str> = statuses
        .iter()
        .map(String::as_str)
        .filter(|s| s.starts_with("pending") || *s == "max_attempts_reached/0")
        .collect();
    let pending = statuses.iter().filter(|s| s.starts_with("pending/")).count();
    assert_eq!(pending, 4, "attempts 1-4 answer pending: {statuses:?}");
    assert!(evaluated.contains("max_attempts_reached/0"));
    assert!(statuses.iter().all(|s| s.starts_with("pending/") || s == "max_attempts_reached/0"), "{statuses:?}");
    // Exactly five comparisons: the audit has five wrong codes and 45 refusals.
    let events = audit(&server);
    let outcomes: Vec<&str> =
        events.iter().filter(|e| e["event"] == "otp.check").filter_map(|e| e["detail"]["outcome"].as_str()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "wrong_code").count(), 5, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == "refused_max_attempts_reached").count(), 45);
    // The right code is refused now: guessing is bounded by the counter, not by luck.
    let r = caller.check(&server, &id, &code);
    assert_eq!((r.json()["status"].as_str(), r.json()["valid"].as_bool()), (Some("max_attempts_reached"), Some(false)));
}

#[test]
fn sends_are_limited_per_destination_and_per_key_with_retry_after() {
    let server = Server::start(&["--otp-console-codes", "--otp-sends-per-key", "8", "--otp-api-rate-per-ip", "1000"]);
    let caller = Caller::new(&server, "svc");
    for _ in 0..5 {
        created_id(&caller.create(&server, "same-phone"));
    }
    let r = caller.create(&server, "same-phone");
    assert_problem(&r, 429, "send_limit_reached");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry));
    // Normalised: case and surrounding spaces do not make a new destination.
    assert_problem(&caller.create(&server, " SAME-PHONE "), 429, "send_limit_reached");
    // Another key has its own budget for the destination (under a higher global cap).
    let other = Caller::new(&server, "svc2");
    created_id(&other.create(&server, "same-phone"));
    // Other destinations until the key's own budget (8 per 10 minutes) is used: it
    // is charged first, so the two refused sends above count against it too.
    created_id(&caller.create(&server, "phone-0"));
    let r = caller.create(&server, "phone-new");
    assert_problem(&r, 429, "send_limit_reached");
    assert!(r.json()["detail"].as_str().unwrap().contains("API key"));
    assert_eq!(created_id(&other.create(&server, "phone-other")).len(), 32, "other keys keep their budget");
}

#[test]
fn failed_authentications_per_ip_are_limited_before_the_token_is_looked_at() {
    let server = Server::start(&["--otp-api-rate-per-ip", "5"]);
    let mut limited = None;
    for _ in 0..40 {
        let r = http(server.port, "POST", "/v1/otp/verifications", &[], b"{}");
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = limited.expect("the per-IP limit never applied");
    assert_problem(&r, 429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// What a verification is made of survives a kill -9: the code, the attempts left,
/// the fixed expiry and the resend cooldown. What happens once the cooldown or the
/// expiry has passed is tested on a moved clock (`tests/clock.rs`), not slept through.
#[test]
fn a_verification_survives_a_kill_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &["--otp-console-codes"]).unwrap();
    let caller = Caller::new(&server, "svc");
    let id = created_id(&caller.create(&server, "bob"));
    let status = |server: &Server, caller: &Caller, id: &str| {
        caller.call(server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null).json()
    };
    let first = status(&server, &caller, &id);
    let short = created_id(&caller.call(
        &server,
        "POST",
        "/v1/otp/verifications",
        &serde_json::json!({ "to": "carol", "channel": "console", "ttl": 30, "code_length": 8 }),
    ));
    let short_first = status(&server, &caller, &short);
    assert_eq!(server.console_code(&short).len(), 8);
    let code = server.console_code(&id);
    let resend = |server: &Server, caller: &Caller| {
        caller.call(server, "POST", &format!("/v1/otp/verifications/{id}/resend"), &serde_json::Value::Null)
    };
    let r = resend(&server, &caller);
    let refused_at = std::time::Instant::now();
    assert_problem(&r, 429, "resend_too_soon");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry));
    // Two wrong checks, then a restart: the counter must not reset.
    for _ in 0..2 {
        caller.check(&server, &id, &wrong_code(&code));
    }
    server.kill9();
    let server = Server::start_in(&dir, &["--otp-console-codes"]).unwrap();
    let caller = Caller { grant: caller.grant };
    let v = caller.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    assert_eq!(v.json()["attempts_left"], 3, "a restart does not reset attempts");
    assert_eq!(v.json()["expires_at"], first["expires_at"], "nor moves the expiry");
    assert_eq!(status(&server, &caller, &short)["expires_at"], short_first["expires_at"]);
    // The cooldown is stored too (unless the restart alone outlasted it).
    let r = resend(&server, &caller);
    if refused_at.elapsed() < Duration::from_secs(retry.saturating_sub(1)) {
        assert_problem(&r, 429, "resend_too_soon");
        let left: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(left <= retry, "the cooldown restarted: {left} s > {retry} s");
    }
    // The code the first run sent still opens the verification.
    let ok = caller.check(&server, &id, &code);
    assert_eq!((ok.json()["status"].as_str(), ok.json()["valid"].as_bool()), (Some("approved"), Some(true)));
}

#[test]
fn mfa_scopes_need_a_second_factor_and_a_key_that_can_give_one() {
    let server = Server::start(&["--otp-console-codes", "--mfa-scope", "admin"]);
    let (key, _) = server.create_key(&[
        "--name",
        "ops",
        "--audience",
        "app",
        "--scope",
        "read",
        "--scope",
        "admin",
        "--otp-to",
        "console:ops",
    ]);
    // The `app` resource server reads the second-factor flag through introspection.
    let (app, _) = server.create_key(&["--name", "app-server", "--audience", "app", "--scope", "introspect"]);
    let app = own_grant(&server, &app, "introspect");
    let read = ClientRequest { scopes: "read", ..Default::default() };
    let second_factor = |g: Box<TokenGrant>| {
        let body = serde_json::json!({ "token": &*g.token.to_base64() });
        let r = introspect_as(&server, &app, &g, body);
        assert_eq!(r["active"], true, "{r}");
        r["second_factor"].as_bool().unwrap()
    };
    let Outcome::Granted(g) = server.handshake(&key, &read) else { panic!("read needs no second factor") };
    assert!(!second_factor(g));
    let admin = ClientRequest { scopes: "admin", ..Default::default() };
    let Outcome::SecondFactorRequired { operation, .. } = server.handshake(&key, &admin) else {
        panic!("admin needs a second factor")
    };
    let code = server.console_code(&hex::encode(operation));
    let with_code = ClientRequest {
        scopes: "admin",
        second_factor: Some(onetrip_protocol::SecondFactor { operation, code: &code }),
        ..Default::default()
    };
    let Outcome::Granted(g) = server.handshake(&key, &with_code) else { panic!("the code grants admin") };
    assert!(second_factor(g));
    // A key with an MFA scope but nowhere to send a code cannot get that scope.
    let (nowhere, _) = server.create_key(&["--name", "nowhere", "--audience", "app", "--scope", "admin"]);
    assert!(matches!(server.handshake(&nowhere, &admin), Outcome::ScopeDenied));
}

/// Introspects `token` (signed by its holder over a made-up resource request) as the
/// resource server `caller`.
fn introspect_as(
    server: &Server,
    caller: &TokenGrant,
    token: &TokenGrant,
    mut body: serde_json::Value,
) -> serde_json::Value {
    let proof =
        PopProof::sign(&token.session_key, token.token.binding(), "GET", "/rows", b"", now(), &mut rand_core::OsRng)
            .unwrap();
    body["pop"] = proof.to_header().into();
    body["method"] = "GET".into();
    body["path"] = "/rows".into();
    signed(server.port, caller, "POST", "/v1/introspect", body.to_string().as_bytes()).json()
}

#[test]
fn the_openapi_document_matches_the_routes_the_server_serves() {
    let server = Server::start(&[]);
    let r = server.get("/v1/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().unwrap().keys().map(move |m| (m.to_lowercase(), path.clone())).collect::<Vec<_>>()
        })
        .collect();
    let served: BTreeSet<(String, String)> = onetrip_server::http::ROUTES
        .iter()
        .chain(onetrip_server::otp::api::ROUTES)
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, served, "openapi.yaml and the server's route tables differ");
    // The route tables are the router's truth: each route is answered by a handler
    // (not 404 not_found / 405), and other methods on the same path are 405.
    let id = "0123456789abcdef0123456789abcdef";
    for (method, path) in &served {
        let concrete = path.replace("{id}", id);
        let r = http(server.port, &method.to_uppercase(), &concrete, &[], b"");
        assert_ne!(r.status, 405, "{method} {path} not served");
        if r.status == 404 {
            assert_ne!(r.json()["code"], "not_found", "{method} {path} not served");
        }
        let other = if method == "get" { "PUT" } else { "GET" };
        if !served.contains(&(other.to_lowercase(), path.clone())) {
            let r = http(server.port, other, &concrete, &[], b"");
            assert!(
                r.status == 405 || r.status == 404 && r.json()["code"] != "not_found",
                "{other} {path}: {}",
                r.status
            );
        }
    }
    // Every problem code the server can emit is listed in the document.
    let listed: BTreeSet<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let service = include_str!("../src/otp/service.rs");
    let code_fn = service.split("pub fn code(&self)").nth(1).unwrap().split("\n    }\n").next().unwrap();
    let mut emitted = emitted_codes(code_fn, &["=> \""]);
    for src in [
        include_str!("../src/http/mod.rs"),
        include_str!("../src/http/request.rs"),
        include_str!("../src/http/token_auth.rs"),
        include_str!("../src/http/tokens.rs"),
        include_str!("../src/otp/api.rs"),
        include_str!("../src/problem.rs"),
    ] {
        emitted.extend(emitted_codes(src, &["unauthorized(\"", "Err((\""]));
    }
    assert!(emitted.len() > 25, "the scan found too few codes: {emitted:?}");
    for code in emitted {
        assert!(listed.contains(code.as_str()), "problem code {code} is missing from openapi.yaml");
    }
}

/// Problem codes in a source file: the string literals passed as `code` to
/// `problem(...)`, `unauthorized(...)` and `OtpError::code`.
fn emitted_codes(src: &str, markers: &[&str]) -> Vec<String> {
    let mut codes = Vec::new();
    for (i, _) in src.match_indices("StatusCode::") {
        let after = &src[i..];
        let Some(comma) = after.find(',') else { continue };
        let rest = after[comma + 1..].trim_start();
        if let Some(lit) = rest.strip_prefix('"') {
            if let Some(end) = lit.find('"') {
                let code = &lit[..end];
                if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !code.is_empty() {
                    codes.push(code.to_owned());
                }
            }
        }
    }
    for marker in markers {
        for (i, _) in src.match_indices(marker) {
            let lit = &src[i + marker.len()..];
            if let Some(end) = lit.find('"') {
                let code = &lit[..end];
                if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') && code.contains('_') {
                    codes.push(code.to_owned());
                }
            }
        }
    }
    codes
}

#[test]
fn send_and_resend_limits_hold_under_concurrency() {
    let server = Server::start(&["--otp-console-codes", "--otp-api-rate-per-ip", "10000"]);
    let caller = Caller::new(&server, "svc");
    // 30 parallel creates to one destination: exactly 5 get through.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..30).map(|_| s.spawn(|| caller.create(&server, "victim-phone").status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 25, "{statuses:?}");
    // 20 parallel resends of one verification inside its cooldown: none is sent.
    let id = created_id(&caller.create(&server, "other-phone"));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    caller
                        .call(&server, "POST", &format!("/v1/otp/verifications/{id}/resend"), &serde_json::Value::Null)
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
    let v = caller.call(&server, "GET", &format!("/v1/otp/verifications/{id}"), &serde_json::Value::Null);
    assert_eq!(v.json()["sends_left"], 3, "no resend went out");
    assert_eq!(of_event(&server, "otp.generate"), 6);
}
