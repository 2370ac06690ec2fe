//! Replica-shared state on a real Redis (one plain node and a 6-node cluster):
//! the same behaviour as the in-memory backend, shared by several instances
//! ("replicas"), on Redis's clock, with prefixed keys that expire; and failing closed,
//! within the command timeout, when Redis is down or hung.
//!
//! Needs `redis-server` and `redis-cli` (skipped with a note otherwise, failed under
//! `ONETRIP_REQUIRE_TOOLS=1`).

mod redis_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onetrip_server::shared::{MemoryShared, RateDecision, SharedState};
use onetrip_server::shared_redis::{RedisSetting, RedisShared, SharedSetting};
use redis_support::{RedisCluster, RedisNode};

/// The clock window the instances are told of: a replay id lives until stamp + this.
const WINDOW: u64 = 60;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A name no other test (or earlier run against the same server) uses.
fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{what}-{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), now())
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    id[8..].copy_from_slice(&SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos().to_le_bytes()[..8]);
    id
}

fn setting(value: &str, prefix: &str, command_ms: u64) -> RedisSetting {
    match SharedSetting::parse(Some(value), Some(prefix), Some(500), Some(command_ms)).unwrap() {
        SharedSetting::Redis(r) => r,
        SharedSetting::Memory => unreachable!(),
    }
}

async fn redis(value: &str) -> RedisShared {
    RedisShared::connect(setting(value, "onetrip-test:", 1000), WINDOW).await.unwrap()
}

/// The behaviour every backend must have, on the real clock.
async fn conformance(s: &dyn SharedState) {
    let t = now();
    // Replay: once.
    let id = random_id();
    assert!(s.remember_once(id, t, t + 60).await.unwrap(), "a new id is accepted");
    assert!(!s.remember_once(id, t, t + 60).await.unwrap(), "the same id is a replay");
    let mut other = id;
    other[0] ^= 1;
    assert!(s.remember_once(other, t, t + 60).await.unwrap(), "another id is new");

    // Rate limit: a burst of `limit`, then the sustained rate (one per 200 s).
    let bucket = unique("bucket");
    for i in 0..3 {
        assert_eq!(s.rate_limit(&bucket, 3, 600, t).await.unwrap(), RateDecision::Allowed, "burst event {i}");
    }
    match s.rate_limit(&bucket, 3, 600, t).await.unwrap() {
        RateDecision::Limited { retry_after } => assert!((195..=200).contains(&retry_after), "{retry_after}"),
        RateDecision::Allowed => panic!("the 4th event of a burst of 3 must be refused"),
    }
    // Refused events are not counted: still one interval to wait, not two.
    let RateDecision::Limited { retry_after } = s.rate_limit(&bucket, 3, 600, t).await.unwrap() else {
        panic!("still limited")
    };
    assert!(retry_after <= 200, "{retry_after}");
    assert_eq!(s.rate_limit(&unique("bucket"), 3, 600, t).await.unwrap(), RateDecision::Allowed, "buckets are apart");
    assert!(matches!(s.rate_limit(&unique("zero"), 0, 600, t).await.unwrap(), RateDecision::Limited { .. }));

    // Revocation.
    let token = random_id();
    assert!(!s.is_token_revoked(token, t).await.unwrap());
    s.revoke_token(token, t + 60).await.unwrap();
    assert!(s.is_token_revoked(token, t).await.unwrap());

    // Lease: one holder; the holder may renew; only the holder releases.
    let lease = unique("otp.resend");
    assert!(s.try_lease(&lease, 1, t, t + 60).await.unwrap());
    assert!(!s.try_lease(&lease, 2, t, t + 60).await.unwrap(), "held by 1");
    assert!(s.try_lease(&lease, 1, t, t + 60).await.unwrap(), "the holder renews");
    s.release_lease(&lease, 2).await.unwrap();
    assert!(!s.try_lease(&lease, 3, t, t + 60).await.unwrap(), "2 cannot release 1's lease");
    s.release_lease(&lease, 1).await.unwrap();
    assert!(s.try_lease(&lease, 3, t, t + 60).await.unwrap(), "free once released");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_backend_passes_the_conformance_suite() {
    conformance(&MemoryShared::new(1000)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_single_node_passes_the_conformance_suite() {
    let Some(node) = RedisNode::start() else { return };
    let s = redis(&node.url()).await;
    assert!(s.healthy());
    conformance(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cluster_passes_the_conformance_suite_and_two_replicas_share_it() {
    let Some(cluster) = RedisCluster::start() else { return };
    let a = redis(&cluster.shared_arg()).await;
    let b = redis(&format!("redis+cluster://{}", cluster.urls()[3].trim_start_matches("redis://"))).await;
    assert!(a.healthy() && b.healthy());
    conformance(&a).await;
    conformance(&b).await;
    two_replicas_share_one_state(&a, &b).await;
}

/// Two instances ("replicas") on one Redis see one replay cache, one bucket, one lease.
async fn two_replicas_share_one_state(a: &dyn SharedState, b: &dyn SharedState) {
    let t = now();
    let id = random_id();
    assert!(a.remember_once(id, t, t + 60).await.unwrap());
    assert!(!b.remember_once(id, t, t + 60).await.unwrap(), "replayed on the other replica");
    let bucket = unique("shared-bucket");
    assert_eq!(a.rate_limit(&bucket, 3, 600, t).await.unwrap(), RateDecision::Allowed);
    assert_eq!(b.rate_limit(&bucket, 3, 600, t).await.unwrap(), RateDecision::Allowed);
    assert_eq!(a.rate_limit(&bucket, 3, 600, t).await.unwrap(), RateDecision::Allowed);
    assert!(matches!(b.rate_limit(&bucket, 3, 600, t).await.unwrap(), RateDecision::Limited { .. }));
    let token = random_id();
    a.revoke_token(token, t + 60).await.unwrap();
    assert!(b.is_token_revoked(token, t).await.unwrap(), "revoked on every replica");
    let lease = unique("otp.resend");
    assert!(a.try_lease(&lease, 1, t, t + 60).await.unwrap());
    assert!(!b.try_lease(&lease, 2, t, t + 60).await.unwrap(), "the other replica waits");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_plain_redis_share_replay_limits_revocations_and_leases() {
    let Some(node) = RedisNode::start() else { return };
    let (a, b) = (redis(&node.url()).await, redis(&node.url()).await);
    two_replicas_share_one_state(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_replay_attempts_on_many_instances_are_accepted_exactly_once() {
    let Some(node) = RedisNode::start() else { return };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(std::sync::Arc::new(redis(&node.url()).await));
    }
    let (id, t) = (random_id(), now());
    let mut tasks = Vec::new();
    for i in 0..300 {
        let r = replicas[i % 3].clone();
        tasks.push(tokio::spawn(async move { r.remember_once(id, t, t + 60).await.unwrap() }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += usize::from(task.await.unwrap());
    }
    assert_eq!(accepted, 1, "one id, 300 attempts over 3 instances: exactly one accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_with_skewed_clocks_share_one_rate_schedule() {
    // The in-memory backend runs on the caller's clock: a replica an hour ahead sees
    // a full bucket. On Redis the script uses Redis's TIME, so both agree.
    let Some(node) = RedisNode::start() else { return };
    let (a, b) = (redis(&node.url()).await, redis(&node.url()).await);
    let bucket = unique("skew");
    let t = now();
    assert_eq!(a.rate_limit(&bucket, 2, 600, t).await.unwrap(), RateDecision::Allowed);
    assert_eq!(b.rate_limit(&bucket, 2, 600, t + 3600).await.unwrap(), RateDecision::Allowed);
    assert!(
        matches!(b.rate_limit(&bucket, 2, 600, t + 7200).await.unwrap(), RateDecision::Limited { .. }),
        "a replica whose clock runs ahead must not get a fresh budget"
    );
    assert!(matches!(a.rate_limit(&bucket, 2, 600, t - 3600).await.unwrap(), RateDecision::Limited { .. }));
    // The same sequence on the in-memory backend (the per-process clock) differs.
    let m = MemoryShared::new(10);
    m.rate_limit("b", 2, 600, t).await.unwrap();
    m.rate_limit("b", 2, 600, t + 3600).await.unwrap();
    assert_eq!(m.rate_limit("b", 2, 600, t + 7200).await.unwrap(), RateDecision::Allowed, "sanity: caller's clock");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_carries_the_prefix_and_an_expiry() {
    let Some(node) = RedisNode::start() else { return };
    let prefix = format!("p{}:", std::process::id());
    let s = RedisShared::connect(setting(&node.url(), &prefix, 1000), WINDOW).await.unwrap();
    let t = now();
    s.remember_once(random_id(), t, t + 60).await.unwrap();
    s.rate_limit("otp-key:abc", 5, 600, t).await.unwrap();
    s.revoke_token(random_id(), t + 900).await.unwrap();
    s.try_lease("otp.resend:aa", 7, t, t + 30).await.unwrap();
    let keys = node.cli(&["--scan"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in keys {
        assert!(key.starts_with(&prefix), "{key} lacks the prefix {prefix}");
        let ttl: i64 = node.cli(&["ttl", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no expiry (TTL {ttl})");
        assert!(ttl <= 960, "{key} lives too long (TTL {ttl})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_fails_closed_and_recovers_without_a_restart() {
    let Some(mut node) = RedisNode::start() else { return };
    let s = RedisShared::connect(setting(&node.url(), "onetrip-test:", 100), WINDOW).await.unwrap();
    let t = now();
    let id = random_id();
    assert!(s.remember_once(id, t, t + 60).await.unwrap());
    node.kill();
    let started = Instant::now();
    assert!(s.remember_once(random_id(), t, t + 60).await.is_err(), "no replay check, no acceptance");
    assert!(s.remember_once(id, t, t + 60).await.is_err(), "a replay is never let through either");
    assert!(s.rate_limit("b", 10, 600, t).await.is_err());
    assert!(s.is_token_revoked(random_id(), t).await.is_err(), "unknown is not 'not revoked'");
    assert!(s.try_lease("l", 1, t, t + 10).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3), "each failure is quick: {:?}", started.elapsed());
    assert!(!s.healthy());
    s.probe().await;
    assert!(!s.healthy());
    let errors: u64 = s.error_counts().iter().map(|(_, n)| n).sum();
    assert!(errors >= 6, "{:?}", s.error_counts());
    node.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s.probe().await;
        if s.healthy() {
            break;
        }
        assert!(Instant::now() < deadline, "the backend did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis lost everything (no persistence): an id accepted before the outage is
    // gone, so requests stamped up to the recovery are refused as replays...
    assert_eq!(node.cli(&["dbsize"]), "0", "the restarted Redis is empty");
    // (refused as a server error: the backend cannot tell a lost replay id from a
    // fresh request stamped before the recovery, and an honest client retries)
    assert!(
        s.remember_once(id, t, t + WINDOW).await.is_err(),
        "the id accepted before the outage is not accepted again"
    );
    assert!(s.take_recovery(), "the serve loop is told to reload from the store");
    assert!(!s.take_recovery(), "once");
    // ...and requests stamped after it are served.
    let later = now() + 1;
    assert!(s.remember_once(random_id(), later, later + WINDOW).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_failover_fails_closed_within_the_timeout_then_heals() {
    let Some(mut cluster) = RedisCluster::start() else { return };
    let s = RedisShared::connect(setting(&cluster.shared_arg(), "fo:", 100), WINDOW).await.unwrap();
    let (id, t) = (random_id(), now());
    assert!(s.remember_once(id, t, t + WINDOW).await.unwrap());
    let killed = cluster.kill_primary_for_key(&format!("fo:replay:{}", hex::encode(id)));
    let (deadline, mut errors) = (Instant::now() + Duration::from_secs(30), 0);
    loop {
        s.probe().await;
        let started = Instant::now();
        let r = s.remember_once(random_id(), now() + 1, now() + 1 + WINDOW).await;
        assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
        match r {
            Ok(accepted) if errors > 0 => {
                assert!(accepted);
                break;
            }
            Ok(_) => {}
            Err(_) => errors += 1,
        }
        assert!(Instant::now() < deadline, "no recovery 30 s after killing the primary on port {killed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.take_recovery(), "the failover is a recovery: reload from the store");
    assert!(
        s.remember_once(id, t, t + WINDOW).await.is_err(),
        "the id from before the failover is still refused (as a server error: it is stamped before the recovery)"
    );
}

/// Accepts TCP connections (the kernel's backlog) and never answers.
fn black_hole() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_never_answers_costs_at_most_the_command_timeout() {
    if !redis_support::redis_available() {
        return;
    }
    let hole = black_hole();
    let url = format!("redis://127.0.0.1:{}", hole.local_addr().unwrap().port());
    let s = RedisShared::connect(setting(&url, "onetrip-test:", 100), WINDOW).await.unwrap();
    assert!(!s.healthy());
    let t = now();
    for _ in 0..3 {
        let started = Instant::now();
        assert!(s.remember_once(random_id(), t, t + 60).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
    }

    // A real Redis that stops answering mid-way (SIGSTOP) too.
    let Some(node) = RedisNode::start() else { return };
    let s = RedisShared::connect(setting(&node.url(), "onetrip-test:", 100), WINDOW).await.unwrap();
    assert!(s.remember_once(random_id(), t, t + 60).await.unwrap());
    node.pause();
    let started = Instant::now();
    let r = s.remember_once(random_id(), t, t + 60).await;
    let took = started.elapsed();
    node.resume();
    assert!(r.is_err(), "a hung Redis is an error, not an acceptance");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}

mod common;

#[test]
fn a_server_on_a_stopped_redis_answers_server_error_and_503_then_heals() {
    use onetrip_protocol::handshake::ClientRequest;
    use onetrip_protocol::pop::POP_HEADER;
    use onetrip_protocol::Outcome;

    let Some(mut node) = RedisNode::start() else { return };
    let url = node.url();
    let server = common::Server::start(&[
        "--otp-console-codes",
        "--shared",
        &url,
        "--shared-prefix",
        "e2e:",
        "--shared-command-timeout-ms",
        "100",
    ]);
    let (key, _) = server.create_key(&["--name", "svc", "--scope", "otp"]);
    let Outcome::Granted(grant) = server.handshake(&key, &ClientRequest::default()) else { panic!("no token") };
    assert_eq!(server.get("/healthz").status, 200);
    let otp = |grant: &onetrip_protocol::TokenGrant| {
        let body = serde_json::json!({ "to": "a@example.com", "channel": "console" }).to_string();
        let (auth, pop) = common::pop_headers(grant, "POST", "/v1/otp/verifications", body.as_bytes());
        common::http(
            server.port,
            "POST",
            "/v1/otp/verifications",
            &[("authorization", &auth), (POP_HEADER, &pop), ("content-type", "application/json")],
            body.as_bytes(),
        )
    };
    assert_eq!(otp(&grant).status, 201, "OTP works while Redis does");
    assert!(node.cli(&["--scan"]).lines().all(|k| k.starts_with("e2e:")));

    node.kill();
    let started = Instant::now();
    let outcome = server.handshake(&key, &ClientRequest::default());
    assert!(matches!(outcome, Outcome::ServerError), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let sent = otp(&grant);
    assert_eq!(sent.status, 503, "{}", String::from_utf8_lossy(&sent.body));
    assert!(sent.header("retry-after").is_some());
    assert_eq!(sent.header("content-type"), Some("application/problem+json"));
    let health = server.get("/healthz");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["code"], "shared_state_unavailable");
    // The handshake's replay check, and the OTP call's first shared-state step.
    let failed = |op: &str| server.metric(&format!("onetrip_shared_state_errors_total{{op=\"{op}\"}}"));
    assert!(failed("replay") >= 1);
    assert!(failed("replay") + failed("revoked_check") >= 2);
    assert_eq!(server.metric("onetrip_shared_state_up"), 0);
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"server_error\"}"), 1);

    node.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get("/healthz").status != 200 {
        assert!(Instant::now() < deadline, "healthz did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Requests stamped in the recovery second are refused (Redis may have lost the
    // ids of the requests before); a client in sync waits for the next second.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_)));
    assert_eq!(otp(&grant).status, 201, "OTP works again, no restart");
    assert_eq!(server.metric("onetrip_shared_state_up"), 1);
}
