//! What operators read off `/metrics` beyond the handshakes: keys usable now (not
//! revoked or expired ones), the running version, latency buckets with no gap, and
//! the standard `process_*` metrics.

mod common;

use std::time::Duration;

use common::{now, Server};

/// The value of the sample line `name` (with its labels) as a float.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn scrape(server: &Server) -> String {
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
fn api_keys_counts_only_keys_usable_now() {
    let server = Server::start(&[]);
    server.create_key(&["--name", "kept"]);
    let (_, revoked) = server.create_key(&["--name", "revoked"]);
    let (_, rotated) = server.create_key(&["--name", "rotated"]);
    assert_eq!(sample(&scrape(&server), "onetrip_api_keys"), 3.0);
    assert!(server.cli(&["keys", "revoke", &revoked]).status.success());
    // The old secret of a key rotated without grace expires within the second.
    assert!(server.cli(&["keys", "rotate", &rotated, "--grace-secs", "0"]).status.success());
    std::thread::sleep(Duration::from_millis(1_100));
    // kept and the rotated key's successor; the revoked and the expired one are not usable.
    assert_eq!(sample(&scrape(&server), "onetrip_api_keys"), 2.0);
}

#[test]
fn metrics_carry_the_version_gapless_latency_buckets_and_process_metrics() {
    let server = Server::start(&[]);
    let text = scrape(&server);
    let version = format!("onetrip_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, &version), 1.0);

    let bounds: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("onetrip_handshake_seconds_bucket{le=\""))
        .filter_map(|l| l.split('"').next()?.parse().ok())
        .filter(|b: &f64| b.is_finite())
        .collect();
    assert!(text.contains("onetrip_handshake_seconds_bucket{le=\"+Inf\"}"));
    assert_eq!(bounds.first(), Some(&0.00005), "{bounds:?}");
    assert_eq!(bounds.last(), Some(&2.5), "{bounds:?}");
    // Each bucket at most 2.5 times the one before (1-2.5-5 steps): no 0.1 s -> 1 s jump.
    assert!(bounds.windows(2).all(|w| w[1] > w[0] && w[1] <= w[0] * 2.5 + 1e-12), "{bounds:?}");

    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind} missing");
    }
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
    let rss = sample(&text, "process_resident_memory_bytes");
    assert!((1024.0 * 1024.0..64.0 * 1024.0 * 1024.0 * 1024.0).contains(&rss), "resident {rss}");
    assert!(sample(&text, "process_virtual_memory_bytes") >= rss);
    // stdin/out/err, the listener, the admin socket and the store at least.
    let fds = sample(&text, "process_open_fds");
    assert!(fds >= 5.0 && fds <= sample(&text, "process_max_fds"), "open fds {fds}");
    let started = sample(&text, "process_start_time_seconds");
    let now = now() as f64;
    assert!((now - 120.0..=now + 1.0).contains(&started), "started {started}, now {now}");
}
