//! Three replicas on one real PostgreSQL store, called directly (no balancer): what
//! the store and its change feed must make true across replicas. A key or token
//! revoked through the CLI is refused everywhere within a second; an OTP verification
//! lives in the store, so it can be created, resent and checked on three different
//! replicas, and its attempt counter holds under parallel guesses spread over them;
//! a PostgreSQL restart under load loses no committed write.

mod cluster;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::load::Load;
use cluster::{until, Fleet};
use common::{http, pop_headers, signed, HttpResponse, Server};
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{Outcome, TokenGrant};

/// Serve flags of every replica here: OTP codes on stderr, and per-IP limits out of
/// the way (every test client is 127.0.0.1).
const SERVE: &[&str] = &["--otp-console-codes", "--otp-api-rate-per-ip", "10000"];

fn grant(server: &Server, key: &onetrip_protocol::api_key::ApiKey, scopes: &str) -> TokenGrant {
    match server.handshake(key, &ClientRequest { audience: "onetrip", scopes, second_factor: None }) {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    }
}

fn otp(server: &Server, grant: &TokenGrant, path: &str, body: &serde_json::Value) -> HttpResponse {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (auth, pop) = pop_headers(grant, "POST", path, &body);
    let headers = [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
    http(server.port, "POST", path, &headers, &body)
}

fn wrong(code: &str) -> &'static str {
    if code == "000000" {
        "111111"
    } else {
        "000000"
    }
}

#[test]
fn a_key_revoked_through_the_cli_is_refused_by_all_three_replicas_within_a_second() {
    let Some(fleet) = Fleet::start(3, SERVE) else { return };
    let (key, id) = fleet.create_key(&["--name", "doomed"]);
    let out = fleet.cli(&["keys", "revoke", &id]);
    assert!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    let revoked = Instant::now();
    for (i, server) in fleet.running().enumerate() {
        // Measured from the CLI's return; each probe is one full handshake.
        until(
            &format!("replica {i} refuses the revoked key"),
            Duration::from_secs(1).saturating_sub(revoked.elapsed()),
            || matches!(server.handshake(&key, &ClientRequest::default()), Outcome::AuthFailed),
        );
    }
    eprintln!("revoked on all 3 replicas {:?} after the CLI returned", revoked.elapsed());
}

#[test]
fn a_revoked_token_id_is_refused_on_every_replica() {
    let Some(fleet) = Fleet::start(3, SERVE) else { return };
    let (key, _) = fleet.create_key(&["--name", "svc", "--scope", "otp"]);
    let doomed = grant(fleet.replica(0), &key, "otp");
    let kept = grant(fleet.replica(1), &key, "otp");
    // A token from one replica is good on every replica: one identity, one token key.
    for server in fleet.running() {
        assert_eq!(signed(server.port, &doomed, "GET", "/v1/whoami", b"").status, 200);
    }
    let me = signed(fleet.replica(2).port, &doomed, "GET", "/v1/whoami", b"").json();
    let token_id = me["token_id"].as_str().unwrap().to_owned();
    let out = fleet.cli(&["tokens", "revoke", &token_id]);
    assert!(out.status.success(), "tokens revoke: {}", String::from_utf8_lossy(&out.stderr));
    for (i, server) in fleet.running().enumerate() {
        until(&format!("replica {i} refuses the revoked token"), Duration::from_secs(2), || {
            signed(server.port, &doomed, "GET", "/v1/whoami", b"").status == 401
        });
        assert_eq!(signed(server.port, &kept, "GET", "/v1/whoami", b"").status, 200, "only that token");
    }
}

#[test]
fn an_otp_verification_is_created_on_one_replica_resent_on_another_and_checked_on_a_third() {
    let Some(fleet) = Fleet::start(3, SERVE) else { return };
    let (key, _) = fleet.create_key(&["--name", "svc", "--scope", "otp"]);
    let g = grant(fleet.replica(0), &key, "otp");
    let (one, two, three) = (fleet.replica(0), fleet.replica(1), fleet.replica(2));
    let created = otp(one, &g, "/v1/otp/verifications", &serde_json::json!({ "to": "alice", "channel": "console" }));
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let first_code = one.console_code(&id);
    let resend = format!("/v1/otp/verifications/{id}/resend");
    // The cooldown is the verification's, not the replica's: replica 2 refuses too.
    let early = otp(two, &g, &resend, &serde_json::Value::Null);
    assert_eq!((early.status, early.json()["code"].as_str()), (429, Some("resend_too_soon")));
    let wait: u64 = early.header("retry-after").unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_secs(wait));
    let resent = until("replica 2 resends after the cooldown", Duration::from_secs(5), || {
        otp(two, &g, &resend, &serde_json::Value::Null).status == 200
    });
    eprintln!("resent {resent:?} after the announced Retry-After of {wait} s");
    let code = two.console_code(&id);
    let check = format!("/v1/otp/verifications/{id}/check");
    if code != first_code {
        let old = otp(three, &g, &check, &serde_json::json!({ "code": first_code })).json();
        assert_eq!(old["valid"], false, "the resend replaced the code everywhere: {old}");
    }
    let ok = otp(three, &g, &check, &serde_json::json!({ "code": code }));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!((ok.json()["status"].as_str(), ok.json()["valid"].as_bool()), (Some("approved"), Some(true)));
    // Single use, on any replica.
    let again = otp(one, &g, &check, &serde_json::json!({ "code": code }));
    assert_eq!((again.status, again.json()["code"].as_str()), (409, Some("verification_not_pending")));
}

#[test]
fn fifty_parallel_wrong_checks_spread_over_three_replicas_evaluate_exactly_five() {
    let Some(fleet) = Fleet::start(3, SERVE) else { return };
    let (key, _) = fleet.create_key(&["--name", "svc", "--scope", "otp"]);
    let g = grant(fleet.replica(0), &key, "otp");
    let created =
        otp(fleet.replica(0), &g, "/v1/otp/verifications", &serde_json::json!({ "to": "bob", "channel": "console" }));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let code = fleet.replica(0).console_code(&id);
    let check = format!("/v1/otp/verifications/{id}/check");
    let body = serde_json::json!({ "code": wrong(&code) });
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (server, g, check, body) = (fleet.replica(i % 3), &g, &check, &body);
                s.spawn(move || {
                    let r = otp(server, g, check, body);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    format!("{}/{}", r.json()["status"].as_str().unwrap(), r.json()["attempts_left"])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut tally = BTreeMap::new();
    for a in &answers {
        *tally.entry(a.as_str()).or_insert(0) += 1;
    }
    // Attempts 1-4 answer pending with 3..0 left... each exactly once; the rest are refused.
    let pending = answers.iter().filter(|a| a.starts_with("pending/")).count();
    assert_eq!(pending, 4, "four wrong codes leave it pending: {tally:?}");
    assert!(answers.iter().all(|a| a.starts_with("pending/") || a == "max_attempts_reached/0"), "{tally:?}");
    let evaluated = fleet.metric_sum("onetrip_otp_checks_total{outcome=\"wrong_code\"}");
    assert_eq!(evaluated, 5, "exactly five codes compared over the three replicas: {tally:?}");
    let right = otp(fleet.replica(1), &g, &check, &serde_json::json!({ "code": code })).json();
    assert_eq!(right["valid"], false, "the right code is refused once the attempts are spent: {right}");
}

#[test]
fn postgres_restarted_under_load_keeps_handshakes_going_and_loses_nothing_committed() {
    let Some(fleet) = Fleet::start(3, SERVE) else { return };
    let cli_dir_keys: Vec<String> = (0..20)
        .map(|i| {
            let out = fleet.cli(&["keys", "create", "--json", "--name", &format!("before{i}")]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let (key, _) = fleet.create_key(&["--name", "load"]);
    let doc = cluster::document(fleet.ports[0]);
    // One load per replica: known keys are served from memory while the store is away.
    let loads: Vec<Load> = fleet
        .ports
        .iter()
        .map(|&port| Load::start(port, &doc, &key, 1, Duration::from_secs(5), Duration::from_millis(20)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    fleet.pg.control("halt");
    let halted = loads[0].started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    fleet.pg.control("resume");
    for server in fleet.running() {
        until("the replica's store is healthy again", Duration::from_secs(30), || {
            server.get("/healthz").json()["status"] == "ok"
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, load) in loads.into_iter().enumerate() {
        let (report, _) = load.stop();
        let failed = report.failed();
        assert!(failed.is_empty(), "replica {i}: handshakes failed while PostgreSQL restarted: {failed:?}");
        let during = report.events.iter().filter(|e| e.at >= halted && e.at < halted + Duration::from_secs(2)).count();
        assert!(during > 0, "replica {i} served nothing while PostgreSQL was down");
        eprintln!("replica {i}: {} tokens, {during} while PostgreSQL was down, 0 failed", report.granted());
    }
    // Everything committed before the restart is there, on the database and on
    // every replica; a write after it lands too.
    let out = fleet.cli(&["keys", "list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for id in &cli_dir_keys {
        assert!(listed.iter().any(|k| k["id"] == id.as_str()), "key {id} lost in the restart");
    }
    let (after, _) = fleet.create_key(&["--name", "after"]);
    for server in fleet.running() {
        assert!(matches!(server.handshake(&after, &ClientRequest::default()), Outcome::Granted(_)));
        assert!(server.metric("onetrip_api_keys") >= 22, "a replica lost keys it had loaded");
    }
}
