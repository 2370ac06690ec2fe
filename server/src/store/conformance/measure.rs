//! Side-by-side numbers of the two backends through the ports (ignored by default;
//! needs `ONETRIP_TEST_POSTGRES_URL`):
//!
//! `cargo test -p onetrip-server --lib store::conformance::measure -- --ignored --nocapture`
//!
//! OTP creates (a verification stored with its audit event, as `otp_service` does)
//! and checks (a wrong code against the key's guard, with its event), 2,000 of each,
//! from one task and from 8; then the time to read 100,000 keys with
//! `for_each_api_key`, and how long a revoke takes to reach another backend's change
//! feed. Bounded loops; nothing here asserts a time.

use std::time::{Duration, Instant};

use onetrip_protocol::api_key::KeyId;

use super::cases::entry;
use super::{Harness, PgHarness, RedbHarness, T0};
use crate::otp::lockout::{step_up_subject, LockoutPolicy};
use crate::otp::{CheckOutcome, Policy, Verification};
use crate::store::ports::{check_verification, for_each_api_key};
use crate::store::{ApiKeyRecord, Backend};

const OPS: usize = 2_000;
const KEYS: usize = 100_000;

fn owner(i: usize) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&(i as u64).to_be_bytes());
    o
}

fn verification(key: &[u8; 32], i: usize) -> Verification {
    Verification::create(&mut rand_core::OsRng, key, owner(i), "console", "dev", Policy::default(), T0)
        .expect("verification")
        .0
}

/// Runs `op(i)` for `0..OPS` over `tasks` tasks; returns operations per second.
async fn rate<F, Fut>(tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let op = op.clone();
        set.spawn(async move {
            for i in (t..OPS).step_by(tasks) {
                op(i).await;
            }
        });
    }
    set.join_all().await;
    OPS as f64 / start.elapsed().as_secs_f64()
}

async fn creates(b: &Backend, tasks: usize) -> f64 {
    let key = *b.otp_key().await.expect("otp key").expose();
    let b = b.clone();
    rate(tasks, move |i| {
        let b = b.clone();
        async move {
            let v = verification(&key, i);
            b.put_verification(v, Some(entry(T0, "otp.generate"))).await.expect("create");
        }
    })
    .await
}

async fn checks(b: &Backend, tasks: usize) -> f64 {
    let key = *b.otp_key().await.expect("otp key").expose();
    let ids: Vec<[u8; 16]> = {
        let mut ids = Vec::with_capacity(OPS);
        for i in 0..OPS {
            let v = verification(&key, i);
            ids.push(v.id);
            b.put_verification(v, None).await.expect("create");
        }
        ids
    };
    let (b, ids) = (b.clone(), std::sync::Arc::new(ids));
    rate(tasks, move |i| {
        let (b, ids) = (b.clone(), ids.clone());
        async move {
            let policy = LockoutPolicy::default();
            let outcome = check_verification(
                &*b,
                ids[i],
                |v| Some(step_up_subject(&v.owner)),
                move |view| {
                    let outcome = view.verification.check(&key, "not-a-code", T0 + 1);
                    if let (Some(g), CheckOutcome::Wrong { .. }) = (view.guard, outcome) {
                        g.record_failure(T0 + 1, &policy);
                    }
                    outcome
                },
                |_, _| Some(entry(T0 + 1, "otp.check")),
            )
            .await
            .expect("check");
            assert!(matches!(outcome, Some(CheckOutcome::Wrong { .. })));
        }
    })
    .await
}

/// Writes `KEYS` keys (batches of 1,000), then times one full read.
async fn read_all_keys(b: &Backend) -> (Duration, Duration) {
    let start = Instant::now();
    for batch in 0..KEYS / 1_000 {
        let records: Vec<(KeyId, ApiKeyRecord)> = (0..1_000)
            .map(|i| {
                let n = (batch * 1_000 + i) as u64;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                (KeyId::from_bytes(id), ApiKeyRecord::for_tests(Some(n)))
            })
            .collect();
        b.put_api_keys(records, None).await.expect("put");
    }
    let written = start.elapsed();
    let start = Instant::now();
    let n = for_each_api_key(&**b, 1_000, |_, _| {}).await.expect("read");
    assert_eq!(n, KEYS);
    (written, start.elapsed())
}

async fn row(name: &str, h: &dyn Harness) -> Vec<String> {
    let b = h.open().await;
    let pooled = &b;
    let cells = vec![
        name.to_owned(),
        format!("{:.0}", creates(pooled, 1).await),
        format!("{:.0}", creates(pooled, 8).await),
        format!("{:.0}", checks(pooled, 1).await),
        format!("{:.0}", checks(pooled, 8).await),
    ];
    let (written, read) = read_all_keys(&b).await;
    let mut cells = cells;
    cells.push(format!("{:.2}", written.as_secs_f64()));
    cells.push(format!("{:.2}", read.as_secs_f64()));
    cells
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn measure_backends_side_by_side() {
    let redb = row("redb", &RedbHarness::new()).await;
    let Some(pg) = PgHarness::new().await else { return };
    let postgres = row("postgres", &pg).await;
    let head = [
        "backend",
        "creates/s 1 task",
        "creates/s 8 tasks",
        "checks/s 1 task",
        "checks/s 8 tasks",
        "100k keys written (s)",
        "100k keys read (s)",
    ];
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for r in [redb, postgres] {
        println!("| {} |", r.join(" | "));
    }
    let (p50, max) = feed_latency(&pg).await;
    println!("change feed, 100 revokes from one PgBackend to another's receiver: p50 {p50:?}, max {max:?}");
}

/// From the start of a revoke on one backend to its arrival on another's feed.
async fn feed_latency(h: &PgHarness) -> (Duration, Duration) {
    use crate::store::postgres::{Change, PgBackend};
    let (writer, _) = PgBackend::connect(h.url(), None, T0).await.expect("writer");
    let (reader, _) = PgBackend::connect(h.url(), None, T0).await.expect("reader");
    let ids: Vec<KeyId> = (0..100u8).map(|i| KeyId::from_bytes([i; 16])).collect();
    let records = ids.iter().map(|id| (*id, ApiKeyRecord::for_tests(None))).collect();
    crate::store::ports::KeyRepo::put_api_keys(&writer, records, None).await.expect("put");
    let mut feed = reader.listen_changes();
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, feed.recv()).await.expect("listening");
    assert_eq!(first, Some(Change::Resync));
    let mut latencies = Vec::new();
    for id in ids {
        let start = Instant::now();
        let revoke = Box::new(|_: &KeyId, r: &mut ApiKeyRecord| {
            r.revoked_at = Some(T0);
            true
        });
        crate::store::ports::KeyRepo::update_api_keys(&writer, vec![id], revoke, None).await.expect("revoke");
        let got = tokio::time::timeout(wait, feed.recv()).await.expect("the change arrives");
        assert_eq!(got, Some(Change::Key(id)));
        latencies.push(start.elapsed());
    }
    latencies.sort();
    (latencies[latencies.len() / 2], latencies[latencies.len() - 1])
}
