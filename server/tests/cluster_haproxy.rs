//! Three replicas on one PostgreSQL store behind a real HAProxy configured from the
//! shipped deploy/haproxy.cfg (round robin, PROXY v2, health checks on /healthz): a client's handshakes land on every replica; a
//! replica killed with SIGKILL under load is routed around, and once the checks have
//! noticed no request fails; a rolling restart with drain (SIGTERM, exit, start,
//! healthy, next) fails no request at all.

mod cluster;
mod common;
mod support;

use std::time::{Duration, Instant};

use cluster::load::{Kind, Load};
use cluster::{exchange, replayable, Fleet};
use onetrip_protocol::handshake::ClientRequest;
use support::haproxy::Haproxy;

/// Serve flags: per-IP and per-key limits out of the way (all traffic is one key
/// from 127.0.0.1), PROXY v2 from the balancer.
fn serve_flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut flags = vec!["--auth-rate-per-ip", "100000", "--auth-rate-per-key", "100000"];
    flags.extend(["--proxy-protocol-from", cluster::LB_SOURCE]);
    flags.extend_from_slice(extra);
    flags
}

/// HAProxy from the shipped deploy/haproxy.cfg in front of `fleet`, every replica up.
fn balancer(fleet: &Fleet) -> Option<Haproxy> {
    let backends: Vec<std::net::SocketAddr> =
        fleet.ports.iter().map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let lb = Haproxy::start(&backends, cluster::LB_EXTRA)?;
    assert!(lb.wait_all_up(Duration::from_secs(10)), "replicas not up in HAProxy: {}", lb.log());
    Some(lb)
}

#[test]
fn a_clients_handshakes_through_haproxy_land_on_all_three_replicas() {
    let Some(fleet) = Fleet::start(3, &serve_flags(&[])) else { return };
    let Some(lb) = balancer(&fleet) else { return };
    let (key, _) = fleet.create_key(&["--name", "balanced"]);
    let ok = "onetrip_handshakes_total{status=\"ok\"}";
    let before: Vec<u64> = fleet.running().map(|s| s.metric(ok)).collect();
    let doc = cluster::document(lb.addr().port());
    assert!(doc.check_pin(&fleet.replica(0).fingerprint).is_ok(), "the balancer serves the pinned identity");
    for _ in 0..30 {
        let r = replayable(&doc, &key, &ClientRequest::default(), 1);
        let pending = r.pending.into_iter().next().unwrap();
        let answer = exchange(lb.addr().port(), &r.bytes, pending, Duration::from_secs(5));
        assert!(answer.granted(), "{answer:?}");
    }
    let after: Vec<u64> = fleet.running().map(|s| s.metric(ok)).collect();
    let landed: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("30 handshakes through HAProxy landed {landed:?}");
    assert_eq!(landed.iter().sum::<u64>(), 30);
    assert!(landed.iter().all(|n| *n >= 5), "round robin reaches every replica: {landed:?}");
}

#[test]
fn a_replica_killed_under_load_is_routed_around_and_then_nothing_fails() {
    let Some(mut fleet) = Fleet::start(3, &serve_flags(&[])) else { return };
    let Some(lb) = balancer(&fleet) else { return };
    let (key, _) = fleet.create_key(&["--name", "steady"]);
    let doc = cluster::document(lb.addr().port());
    let load = Load::start(lb.addr().port(), &doc, &key, 4, Duration::from_secs(5), Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = load.started.elapsed();
    fleet.kill9(1);
    // Two failed checks 500 ms apart (deploy/haproxy.cfg) take it out; allow 2 s.
    let noticed = killed_at + Duration::from_secs(2);
    std::thread::sleep(Duration::from_secs(3));
    let (report, _) = load.stop();
    let hung = report.count(|k| matches!(k, Kind::Bad(s) if s.contains("Timeout")));
    assert_eq!(hung, 0, "no request hangs past its deadline");
    let late = report.failed_after(noticed);
    assert!(late.is_empty(), "requests failed after the health checks noticed: {late:?}");
    assert!(report.granted_after(noticed) > 20, "the two replicas left carry the load");
    eprintln!("RESULT replica_kill failed_before_checks_noticed={} tokens={}", report.failed().len(), report.granted());
}

#[test]
fn a_rolling_restart_with_drain_under_load_fails_no_request() {
    // Drain longer than HAProxy needs to notice (fall 2 x inter 500 ms + 1 s check timeout).
    let Some(mut fleet) = Fleet::start(3, &serve_flags(&["--drain-secs", "3"])) else { return };
    let Some(lb) = balancer(&fleet) else { return };
    let (key, _) = fleet.create_key(&["--name", "steady"]);
    let doc = cluster::document(lb.addr().port());
    let load = Load::start(lb.addr().port(), &doc, &key, 4, Duration::from_secs(5), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for i in 0..3 {
        let exited = fleet.terminate(i, Duration::from_secs(15));
        fleet.launch(i);
        // Up again in HAProxy's eyes before the next one goes.
        assert!(lb.wait_all_up(Duration::from_secs(10)), "replica {i} not back up: {}", lb.log());
        eprintln!("replica {i} drained and exited in {exited:?}, back on port {}", fleet.ports[i]);
    }
    let (report, _) = load.stop();
    let failed = report.failed();
    eprintln!(
        "RESULT rolling_restart took_s={:.1} tokens={} failed={}",
        start.elapsed().as_secs_f64(),
        report.granted(),
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed during the rolling restart: {failed:?}");
    assert!(report.granted() > 50);
}
