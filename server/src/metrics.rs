//! Prometheus metrics: handshake outcomes, handshake latency, keys, replay cache,
//! connections. A fixed set of atomics, so recording costs a few relaxed adds and
//! no lookup or allocation on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::store::ports::OpStats;
use onetrip_protocol::Status;

/// Upper bounds (seconds) of the handshake latency histogram buckets: 1-2.5-5 steps
/// from 50 µs (a handshake's own CPU time) to 2.5 s (a saturated server), with no gap
/// that would hide where a slow tail sits.
const LATENCY_BUCKETS: [f64; 15] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// OTP verifications, deliveries and checks.
    pub otp: crate::otp::metrics::OtpCounters,
    handshakes: [AtomicU64; Status::ALL.len()],
    /// `POST /v1/auth` answered with HTTP 400 (wire errors).
    pub handshakes_rejected: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    /// Requests by outcome class.
    pub http_requests: AtomicU64,
    /// Open connections.
    pub connections_open: AtomicI64,
    /// Most connections open at once since start.
    pub connections_peak: AtomicI64,
    /// Tokens checked by introspection/whoami.
    pub token_checks: AtomicU64,
    /// Connections closed on accept because their client had `max_connections_per_ip` open.
    pub connections_refused_per_ip: AtomicU64,
    /// Connections closed by the write or idle timeout.
    pub connections_timed_out: AtomicU64,
    /// Connections closed because a peer outside `proxy_protocol_from` sent a PROXY header.
    pub proxy_headers_refused: AtomicU64,
    /// Connections from a trusted proxy closed for a missing, bad or slow PROXY header.
    pub proxy_headers_invalid: AtomicU64,
    /// Replay ids stamped ahead of the clock, written to the store ([`crate::replay_guard`]).
    pub replay_ids_persisted: AtomicU64,
    /// Store transactions (fsyncs) that wrote them.
    pub replay_id_writes: AtomicU64,
    /// Store probes that found the store unreachable.
    pub store_probe_failures: AtomicU64,
    /// 1 while the store answers its probes, 0 while it does not.
    pub store_up: AtomicI64,
    /// 1 from SIGTERM until the listener closes (`/healthz` answers `draining`).
    pub draining: AtomicI64,
    /// Problem answers by (route, code): every refusal, counted with its reason.
    refusals: DashMap<(&'static str, &'static str), AtomicU64>,
}

impl Metrics {
    /// Counts a handshake answer and its server-side latency.
    pub fn record_handshake(&self, status: Status, nanos: u64) {
        self.handshakes[usize::from(status.code())].fetch_add(1, Ordering::Relaxed);
        let secs = nanos as f64 / 1e9;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_ns.fetch_add(nanos, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a problem answer of `route` (a fixed label, never the raw path) with its
    /// stable `code`. Both are `'static`, so the label set is bounded by the code.
    pub fn record_refusal(&self, route: &'static str, code: &'static str) {
        if let Some(n) = self.refusals.get(&(route, code)) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.refusals.entry((route, code)).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Problem answers of `route` with `code` so far.
    pub fn refusals(&self, route: &'static str, code: &'static str) -> u64 {
        self.refusals.get(&(route, code)).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Every problem answer so far, whatever its route and code.
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Handshakes answered with `status` so far.
    pub fn handshakes(&self, status: Status) -> u64 {
        self.handshakes[usize::from(status.code())].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, api_keys: usize, replay_entries: Option<usize>, cached_static_statics: usize) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP onetrip_handshakes_total Handshake answers by status.");
        let _ = writeln!(out, "# TYPE onetrip_handshakes_total counter");
        for s in Status::ALL {
            let _ = writeln!(out, "onetrip_handshakes_total{{status=\"{}\"}} {}", s.as_str(), self.handshakes(s));
        }
        let _ = writeln!(
            out,
            "# HELP onetrip_handshakes_rejected_total Handshake bodies refused before cryptography (HTTP 4xx)."
        );
        let _ = writeln!(out, "# TYPE onetrip_handshakes_rejected_total counter");
        let _ = writeln!(out, "# HELP onetrip_store_up 1 while the store answers its probes (1 s apart), else 0.");
        let _ = writeln!(out, "# TYPE onetrip_store_up gauge");
        let _ = writeln!(out, "onetrip_store_up {}", self.store_up.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP onetrip_store_probe_failures_total Store probes that found it unreachable.");
        let _ = writeln!(out, "# TYPE onetrip_store_probe_failures_total counter");
        let _ =
            writeln!(out, "onetrip_store_probe_failures_total {}", self.store_probe_failures.load(Ordering::Relaxed));
        let _ = writeln!(out, "onetrip_handshakes_rejected_total {}", self.handshakes_rejected.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP onetrip_handshake_seconds Server-side handshake processing time.");
        let _ = writeln!(out, "# TYPE onetrip_handshake_seconds histogram");
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "onetrip_handshake_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "onetrip_handshake_seconds_bucket{{le=\"+Inf\"}} {total}");
        let _ =
            writeln!(out, "onetrip_handshake_seconds_sum {}", self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "onetrip_handshake_seconds_count {total}");
        let gauges = [
            ("onetrip_api_keys", "API keys usable now (neither revoked nor expired).", api_keys as i64),
            (
                "onetrip_static_static_cached",
                "Precomputed static-static DH values (API keys x handshake keys).",
                cached_static_statics as i64,
            ),
            ("onetrip_connections_open", "Open client connections.", self.connections_open.load(Ordering::Relaxed)),
            (
                "onetrip_connections_peak",
                "Most connections open at once.",
                self.connections_peak.load(Ordering::Relaxed),
            ),
            (
                "onetrip_draining",
                "1 while shutting down: /healthz answers 503 draining, requests are still served.",
                self.draining.load(Ordering::Relaxed),
            ),
        ];
        let replay = replay_entries
            .map(|n| ("onetrip_replay_cache_entries", "Request ids held by this process's replay cache.", n as i64));
        for (name, help, value) in gauges.into_iter().chain(replay) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let _ = writeln!(out, "# HELP onetrip_build_info The running onetrip version (always 1).");
        let _ = writeln!(out, "# TYPE onetrip_build_info gauge");
        let _ = writeln!(out, "onetrip_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        crate::process_metrics::render(&mut out);
        let counters = [
            ("onetrip_http_requests_total", "HTTP requests served.", self.http_requests.load(Ordering::Relaxed)),
            (
                "onetrip_token_checks_total",
                "Tokens checked by introspect/whoami.",
                self.token_checks.load(Ordering::Relaxed),
            ),
            (
                "onetrip_connections_refused_per_ip_total",
                "Connections closed on accept: their client had max_connections_per_ip open.",
                self.connections_refused_per_ip.load(Ordering::Relaxed),
            ),
            (
                "onetrip_proxy_headers_refused_total",
                "Connections closed: a PROXY header from an address not in proxy_protocol_from.",
                self.proxy_headers_refused.load(Ordering::Relaxed),
            ),
            (
                "onetrip_proxy_headers_invalid_total",
                "Connections from a trusted proxy closed: no valid PROXY v2 header in time.",
                self.proxy_headers_invalid.load(Ordering::Relaxed),
            ),
            (
                "onetrip_connections_timed_out_total",
                "Connections closed because an answer went unread (write timeout) or nothing moved (idle timeout).",
                self.connections_timed_out.load(Ordering::Relaxed),
            ),
            (
                "onetrip_replay_ids_persisted_total",
                "Replay ids of requests stamped ahead of the server clock, written to the store.",
                self.replay_ids_persisted.load(Ordering::Relaxed),
            ),
            (
                "onetrip_replay_id_writes_total",
                "Store transactions that persisted replay ids (one per batch).",
                self.replay_id_writes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP onetrip_refusals_total HTTP answers refused with a problem, by route and stable problem code."
        );
        let _ = writeln!(out, "# TYPE onetrip_refusals_total counter");
        let mut refusals: Vec<_> =
            self.refusals.iter().map(|e| (*e.key(), e.value().load(Ordering::Relaxed))).collect();
        refusals.sort_unstable();
        for ((route, code), n) in refusals {
            let _ = writeln!(out, "onetrip_refusals_total{{route=\"{route}\",code=\"{code}\"}} {n}");
        }
        out
    }
}

/// Appends the store's per-operation counts: `onetrip_store_operations_total{op}`,
/// `onetrip_store_errors_total{op}` and `onetrip_store_operation_seconds_total{op}`
/// (operations are port methods, a fixed set, so the label set stays bounded).
pub fn render_store_stats(out: &mut String, stats: &[OpStats]) {
    let family = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&OpStats) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in stats {
            let _ = writeln!(out, "{name}{{op=\"{}\"}} {}", s.op, value(s));
        }
    };
    family(out, "onetrip_store_operations_total", "Store operations, by operation.", &|s| s.calls.to_string());
    family(out, "onetrip_store_errors_total", "Failed store operations, by operation.", &|s| s.errors.to_string());
    family(out, "onetrip_store_operation_seconds_total", "Time spent in store operations, by operation.", &|s| {
        format!("{:.6}", s.seconds)
    });
}

/// Appends the gauges read from the running state rather than counted: the replay
/// cache's capacity and when the newest handshake key expires.
pub fn render_state_gauges(out: &mut String, replay_capacity: usize, handshake_key_expiry: Option<u64>) {
    let _ = writeln!(
        out,
        "# HELP onetrip_replay_cache_capacity Replay ids the cache holds at most (replay_cache_capacity)."
    );
    let _ = writeln!(out, "# TYPE onetrip_replay_cache_capacity gauge");
    let _ = writeln!(out, "onetrip_replay_cache_capacity {replay_capacity}");
    let _ = writeln!(
        out,
        "# HELP onetrip_handshake_key_expiry_timestamp_seconds When the newest handshake key stops working (unix time)."
    );
    let _ = writeln!(out, "# TYPE onetrip_handshake_key_expiry_timestamp_seconds gauge");
    if let Some(at) = handshake_key_expiry {
        let _ = writeln!(out, "onetrip_handshake_key_expiry_timestamp_seconds {at}");
    }
}
