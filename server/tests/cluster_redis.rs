//! Three replicas on one PostgreSQL store sharing a real 6-node Redis Cluster
//! (`--shared`): a request is accepted once however its copies are spread over the
//! replicas, per-destination OTP send limits are one budget, and a Redis primary
//! killed under load is replaced without a replayed request ever being accepted,
//! every failure in the gap being a clean `server_error`/503 within the deadline.

mod cluster;
mod common;
mod redis_support;

use std::time::Duration;

use cluster::load::Load;
use cluster::{exchange, replayable, until, Fleet};
use common::{http, pop_headers};
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::Outcome;
use redis_support::RedisCluster;

/// Three replicas on PostgreSQL and `redis`; per-key and per-IP limits out of the
/// way (every test client is 127.0.0.1, and one key sends every request).
fn fleet(redis: &RedisCluster) -> Option<Fleet> {
    if !cluster::needs("--shared") {
        return None;
    }
    let shared = redis.shared_arg();
    Fleet::start(
        3,
        &[
            "--shared",
            &shared,
            "--otp-console-codes",
            "--otp-api-rate-per-ip",
            "10000",
            "--auth-rate-per-key",
            "100000",
            "--auth-rate-per-ip",
            "100000",
        ],
    )
}

/// Sends every copy of one request (`copies` of them, from `threads` threads, copy `i`
/// to replica `i % 3`) and returns how many got a token and how many were refused
/// as replays.
fn spread(fleet: &Fleet, copies: usize, threads: usize) -> (usize, usize) {
    let (key, _) = fleet.create_key(&["--name", &format!("replayed{copies}")]);
    let doc = cluster::document(fleet.ports[0]);
    let r = replayable(&doc, &key, &ClientRequest::default(), copies);
    let bytes = r.bytes;
    let mut jobs: Vec<Vec<(u16, _)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, pending) in r.pending.into_iter().enumerate() {
        jobs[i % threads].push((fleet.ports[i % 3], pending));
    }
    let answers: Vec<cluster::Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                s.spawn(move || {
                    job.into_iter()
                        .map(|(port, p)| exchange(port, &bytes, p, Duration::from_secs(10)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let granted = answers.iter().filter(|a| a.granted()).count();
    let refused = answers.iter().filter(|a| matches!(a, cluster::Answer::Opened(Outcome::AuthFailed))).count();
    let other: Vec<_> =
        answers.iter().filter(|a| !a.granted() && !matches!(a, cluster::Answer::Opened(Outcome::AuthFailed))).collect();
    assert!(other.is_empty(), "copies answered neither token nor refusal: {other:?}");
    (granted, refused)
}

#[test]
fn the_same_request_sent_at_once_to_three_replicas_gets_exactly_one_token() {
    let Some(redis) = RedisCluster::start() else { return };
    let Some(fleet) = fleet(&redis) else { return };
    // Several rounds: each round the three copies race.
    for _ in 0..5 {
        assert_eq!(spread(&fleet, 3, 3), (1, 2), "one token for three simultaneous copies");
    }
}

#[test]
fn a_thousand_copies_spread_over_three_replicas_get_one_token() {
    let Some(redis) = RedisCluster::start() else { return };
    let Some(fleet) = fleet(&redis) else { return };
    assert_eq!(spread(&fleet, 1000, 24), (1, 999));
    let refused = fleet.metric_sum("onetrip_handshakes_total{status=\"auth_failed\"}");
    assert!(refused >= 999, "the replicas counted {refused} refusals");
}

#[test]
fn per_destination_send_limits_hold_across_replicas() {
    let Some(redis) = RedisCluster::start() else { return };
    let Some(fleet) = fleet(&redis) else { return };
    let (key, _) = fleet.create_key(&["--name", "sender", "--scope", "otp"]);
    let grant = match fleet
        .replica(0)
        .handshake(&key, &ClientRequest { audience: "onetrip", scopes: "otp", second_factor: None })
    {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    };
    let path = "/v1/otp/verifications";
    let body = serde_json::json!({ "to": "same-phone", "channel": "console" }).to_string();
    // 12 sends to one destination, round robin: one budget of 5 (the default), not 5 each.
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            let (auth, pop) = pop_headers(&grant, "POST", path, body.as_bytes());
            let headers =
                [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
            http(fleet.ports[i % 3], "POST", path, &headers, body.as_bytes()).status
        })
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == 201), "{statuses:?}");
}

#[test]
fn a_redis_primary_killed_under_load_is_replaced_and_no_replay_is_ever_accepted() {
    let Some(mut redis) = RedisCluster::start() else { return };
    let Some(fleet) = fleet(&redis) else { return };
    let (key, _) = fleet.create_key(&["--name", "steady"]);
    let doc = cluster::document(fleet.ports[0]);
    // Four clients (two on replica 0), a 5 s deadline each request, and a replayer
    // sending 10 copies of each request 100 ms apart over the three replicas.
    let deadline = Duration::from_secs(5);
    let pause = Duration::from_millis(10);
    let mut loads: Vec<Load> =
        [0, 0, 1, 2].iter().map(|&i| Load::start(fleet.ports[i], &doc, &key, 1, deadline, pause)).collect();
    let replays = Load::start(fleet.ports[1], &doc, &key, 0, deadline, pause).with_replays(
        fleet.ports.clone(),
        &doc,
        &key,
        10,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = loads[0].started.elapsed();
    let port = redis.kill_primary_for_key("onetrip");
    eprintln!("killed the Redis primary on port {port} at {killed_at:?}");
    assert!(redis.wait_ok(Duration::from_secs(15)), "the replica was not promoted");
    let healed = until("handshakes resume by themselves", Duration::from_secs(15), || {
        fleet.running().all(|s| matches!(s.handshake_checked(&key), Some(true)))
    });
    eprintln!("all replicas granted again {healed:?} after the cluster was ok");
    std::thread::sleep(Duration::from_secs(2));
    let reports: Vec<_> = loads.drain(..).map(|l| l.stop().0).collect();
    let (_, replayed) = replays.stop();

    let mut failed = Vec::new();
    let mut bad = Vec::new();
    for r in &reports {
        bad.extend(r.bad().into_iter().cloned());
        failed.extend(r.failed().into_iter().map(|e| e.at));
        assert!(r.granted_after(killed_at + Duration::from_secs(1)) > 0, "a client never got a token again");
    }
    failed.sort();
    let gap = match (failed.first(), failed.last()) {
        (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
        _ => 0.0,
    };
    let longest = reports.iter().map(|r| r.longest_gap_after(killed_at).0).max().unwrap_or_default();
    let tokens: usize = reports.iter().map(|r| r.granted()).sum();
    eprintln!(
        "RESULT redis_failover gap_s={gap:.2} longest_client_gap_s={:.2} errors={} tokens={tokens} replayed_requests={} copies_each=10",
        longest.as_secs_f64(),
        failed.len(),
        replayed.len()
    );
    let bad_first = bad.first().map(|e| format!("{:?} at {:?}", e.kind, e.at));
    eprintln!("answers that were not a clean server_error/503: {} (first: {bad_first:?})", bad.len());
    assert!(!replayed.is_empty(), "the replayer sent nothing");
    assert!(replayed.iter().all(|&t| t <= 1), "a replayed request got a second token: {replayed:?}");
    let errors = fleet.metric_sum("onetrip_handshakes_total{status=\"server_error\"}");
    eprintln!("server_error answers counted by the replicas: {errors}");
    assert!(bad.is_empty(), "failures that were not a clean server_error/503: {} (first: {bad_first:?})", bad.len());
}

trait Checked {
    /// One handshake that tolerates a failure: `Some(true)` for a token.
    fn handshake_checked(&self, key: &onetrip_protocol::api_key::ApiKey) -> Option<bool>;
}

impl Checked for common::Server {
    fn handshake_checked(&self, key: &onetrip_protocol::api_key::ApiKey) -> Option<bool> {
        let r = replayable(&self.document(), key, &ClientRequest::default(), 1);
        let pending = r.pending.into_iter().next()?;
        Some(exchange(self.port, &r.bytes, pending, Duration::from_secs(5)).granted())
    }
}
