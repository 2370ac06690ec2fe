//! OTP limits between tenants, against the real `onetrip` binary: one tenant's sends
//! cannot lock another key out of its step-up, one backend address can carry a whole
//! tenant while an address sending bad tokens is refused before token work, and each
//! key has its own OTP API rate. The algorithms behind them are unit-tested in
//! `server/src/limits.rs` and `server/src/shared.rs`.

mod common;

use common::*;
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
        match server.handshake(&key, &ClientRequest::default()) {
            Outcome::Granted(g) => Caller { grant: *g },
            other => panic!("expected a token, got {other:?}"),
        }
    }

    fn call(&self, server: &Server, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let proof = PopProof::sign(
            &self.grant.session_key,
            self.grant.token.binding(),
            method,
            path,
            &body,
            now(),
            &mut rand_core::OsRng,
        )
        .unwrap();
        let auth = format!("Onetrip {}", &*self.grant.token.to_base64());
        let pop = proof.to_header();
        let headers =
            [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
        http(server.port, method, path, &headers, &body)
    }

    fn create(&self, server: &Server, to: &str) -> HttpResponse {
        self.call(server, "POST", "/v1/otp/verifications", &serde_json::json!({ "to": to, "channel": "console" }))
    }

    /// Creates a verification and returns its resource path.
    fn verification(&self, server: &Server, to: &str) -> String {
        let r = self.create(server, to);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        format!("/v1/otp/verifications/{}", r.json()["id"].as_str().unwrap())
    }
}

fn assert_problem(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], code, "{}", r.json());
}

/// A request with a well-formed but forged token, as an attacker sends it.
fn bad_token(server: &Server) -> HttpResponse {
    let headers = [("authorization", "Onetrip AAAA"), (POP_HEADER, "x"), ("content-type", "application/json")];
    http(server.port, "POST", "/v1/otp/verifications", &headers, b"{}")
}

#[test]
fn a_tenants_sends_to_a_step_up_address_never_block_that_keys_step_up() {
    // Default limits: 5 codes per destination per 10 minutes. They used to be the
    // destination's, whichever key asked: 5 sends by a tenant locked the admin out.
    let server = Server::start(&[]);
    let (admin, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "console:alice"]);
    let tenant = Caller::new(&server, "tenant");
    for _ in 0..5 {
        tenant.verification(&server, "console:alice");
    }
    assert_problem(&tenant.create(&server, "console:alice"), 429, "send_limit_reached");
    assert_problem(&tenant.create(&server, " CONSOLE:Alice "), 429, "send_limit_reached");
    for _ in 0..3 {
        let outcome = server.handshake(&admin, &ClientRequest::default());
        assert!(
            matches!(outcome, Outcome::SecondFactorRequired { .. }),
            "the admin's step-up must not pay for another tenant's sends: {outcome:?}"
        );
    }
}

#[test]
fn the_global_destination_cap_stops_many_tenants_but_not_step_up() {
    let server = Server::start(&["--otp-sends-per-destination", "2", "--otp-sends-per-destination-global", "3"]);
    let (admin, _) = server.create_key(&["--name", "admin", "--require-otp", "--otp-to", "console:alice"]);
    let (one, two) = (Caller::new(&server, "one"), Caller::new(&server, "two"));
    one.verification(&server, "console:alice");
    one.verification(&server, "console:alice");
    let r = one.create(&server, "console:alice");
    assert_problem(&r, 429, "send_limit_reached");
    assert!(r.json()["detail"].as_str().unwrap().contains("by this API key"), "{}", r.json());
    two.verification(&server, "console:alice");
    let r = two.create(&server, "console:alice");
    assert_problem(&r, 429, "send_limit_reached");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    // The recipient is protected from the tenants; the admin still gets its codes.
    for _ in 0..2 {
        let outcome = server.handshake(&admin, &ClientRequest::default());
        assert!(matches!(outcome, Outcome::SecondFactorRequired { .. }), "{outcome:?}");
    }
}

#[test]
fn one_address_with_valid_tokens_is_not_limited_per_ip_but_bad_tokens_are() {
    // Default settings: 50 failed authentications per second per address. Valid
    // calls used to count too, capping a tenant's backend at 50 calls/s.
    let server = Server::start(&[]);
    let caller = Caller::new(&server, "backend");
    let path = caller.verification(&server, "signup");
    let started = std::time::Instant::now();
    for i in 0..150 {
        let r = caller.call(&server, "GET", &path, &serde_json::Value::Null);
        assert_eq!(r.status, 200, "authenticated call {i}: {}", String::from_utf8_lossy(&r.body));
    }
    eprintln!("150 authenticated calls in {:?}", started.elapsed());
    // Forged tokens from the same address: refused, then refused before token work.
    // The limiter works in whole seconds: a round that straddles one is repeated.
    for round in 0..5 {
        let mut limited_at = None;
        for i in 0..200 {
            let second = now();
            let r = bad_token(&server);
            if r.status == 429 {
                assert_problem(&r, 429, "rate_limited");
                assert!(r.header("retry-after").is_some());
                limited_at = Some((i, second));
                break;
            }
            assert_problem(&r, 401, "token_invalid");
        }
        let (failures, second) = limited_at.expect("bad tokens from one address must be limited");
        if round == 0 {
            assert!(failures >= 50, "the budget is 50 failures; valid calls used none of it: {failures}");
        }
        // Within that second the address is refused before its token is looked at,
        // valid or not.
        let r = caller.call(&server, "GET", &path, &serde_json::Value::Null);
        if now() == second {
            assert_problem(&r, 429, "rate_limited");
            return;
        }
    }
    panic!("every round straddled a second");
}

#[test]
fn each_key_has_its_own_otp_api_rate_with_retry_after() {
    let server = Server::start(&["--otp-api-rate-per-key", "5"]);
    let (busy, quiet) = (Caller::new(&server, "busy"), Caller::new(&server, "quiet"));
    let mut limited = None;
    for _ in 0..40 {
        let r = busy.call(
            &server,
            "GET",
            "/v1/otp/verifications/00000000000000000000000000000000",
            &serde_json::Value::Null,
        );
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_problem(&r, 404, "verification_not_found");
    }
    let r = limited.expect("the per-key limit never applied");
    assert_problem(&r, 429, "key_rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another key, from the same address, is not affected.
    let r =
        quiet.call(&server, "GET", "/v1/otp/verifications/00000000000000000000000000000000", &serde_json::Value::Null);
    assert_problem(&r, 404, "verification_not_found");
}
