//! Three replicas on one PostgreSQL store behind a real HAProxy (round robin, health
//! checks on /healthz every 200 ms): a client's handshakes land on every replica; a
//! replica killed with SIGKILL under load is routed around, and once the checks have
//! noticed no request fails; a rolling restart with drain (SIGTERM, exit, start,
//! healthy, next) fails no request at all.

mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::haproxy::Haproxy;
use cluster::load::{Kind, Load};
use cluster::{exchange, replayable, Fleet};
use onetrip_protocol::handshake::ClientRequest;

/// Serve flags: per-IP and per-key limits out of the way (all traffic is one key
/// from 127.0.0.1), PROXY v2 from the balancer when this build speaks it.
fn serve_flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut flags = vec!["--auth-rate-per-ip", "100000", "--auth-rate-per-key", "100000"];
    if cluster::serve_has("--proxy-protocol-from") {
        flags.extend(["--proxy-protocol-from", cluster::haproxy::TRUSTED]);
    }
    flags.extend_from_slice(extra);
    flags
}

fn proxied() -> bool {
    cluster::serve_has("--proxy-protocol-from")
}

#[test]
fn a_clients_handshakes_through_haproxy_land_on_all_three_replicas() {
    let Some(fleet) = Fleet::start(3, &serve_flags(&[])) else { return };
    let Some(lb) = Haproxy::start(&fleet.ports, proxied()) else { return };
    let (key, _) = fleet.create_key(&["--name", "balanced"]);
    let ok = "onetrip_handshakes_total{status=\"ok\"}";
    let before: Vec<u64> = fleet.running().map(|s| s.metric(ok)).collect();
    let doc = cluster::document(lb.port);
    assert!(doc.check_pin(&fleet.replica(0).fingerprint).is_ok(), "the balancer serves the pinned identity");
    for _ in 0..30 {
        let r = replayable(&doc, &key, &ClientRequest::default(), 1);
        let pending = r.pending.into_iter().next().unwrap();
        let answer = exchange(lb.port, &r.bytes, pending, Duration::from_secs(5));
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
    let Some(lb) = Haproxy::start(&fleet.ports, proxied()) else { return };
    let (key, _) = fleet.create_key(&["--name", "steady"]);
    let doc = cluster::document(lb.port);
    let load = Load::start(lb.port, &doc, &key, 4, Duration::from_secs(5), Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = load.started.elapsed();
    fleet.kill9(1);
    // Two failed checks 200 ms apart take it out; allow a full second.
    let noticed = killed_at + Duration::from_secs(1);
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
    if !cluster::needs("--drain-secs") {
        return;
    }
    let Some(mut fleet) = Fleet::start(3, &serve_flags(&["--drain-secs", "1"])) else { return };
    let Some(lb) = Haproxy::start(&fleet.ports, proxied()) else { return };
    let (key, _) = fleet.create_key(&["--name", "steady"]);
    let doc = cluster::document(lb.port);
    let load = Load::start(lb.port, &doc, &key, 4, Duration::from_secs(5), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for i in 0..3 {
        let exited = fleet.terminate(i, Duration::from_secs(15));
        fleet.launch(i);
        // Healthy again in HAProxy's eyes: two passed checks 200 ms apart.
        std::thread::sleep(Duration::from_millis(800));
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
