//! The closed-loop driver: `connections` tasks, each with one keep-alive connection,
//! send a request, wait for the answer, verify it, and go again until the deadline.
//! Latency is recorded per request (µs, HdrHistogram); every response is checked by
//! the workload, and anything unexpected is an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http1::{Conn, Template};

/// What is sent and how answers are checked.
pub trait Workload: Send + Sync + 'static {
    /// Per-request state the check needs (e.g. the client handshake awaiting its answer).
    type Pending: Send;
    /// The next request body; `None` when a pre-generated pool is used up.
    fn next(&self, rng: &mut crate::rng::FastRng) -> Option<(Vec<u8>, Self::Pending)>;
    /// Checks one answer.
    fn check(&self, pending: Self::Pending, status: u16, body: &[u8]) -> Result<(), String>;
}

/// Load shape.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Target.
    pub addr: SocketAddr,
    /// Request template.
    pub template: Template,
    /// Simultaneous keep-alive connections.
    pub connections: usize,
    /// Timed duration.
    pub duration: Duration,
    /// Runtime worker threads.
    pub threads: usize,
    /// Stop after this many requests (0: only the deadline).
    pub max_requests: u64,
    /// Server process whose CPU time is read around the timed loop.
    pub server_pid: Option<u32>,
}

/// On-CPU nanoseconds of every thread of `pid` (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total)
}

/// Measured result.
#[derive(Debug)]
pub struct Report {
    /// Verified answers.
    pub ok: u64,
    /// Failed checks and transport errors.
    pub errors: u64,
    /// Wall time of the timed loop.
    pub secs: f64,
    /// Latency histogram (µs).
    pub hist: Histogram<u64>,
    /// First error seen.
    pub first_error: Option<String>,
    /// Server CPU seconds during the loop (with `server_pid`).
    pub server_cpu: Option<f64>,
    /// Load-generator CPU seconds during the loop.
    pub load_cpu: Option<f64>,
}

impl Report {
    /// Prints a human line and a `RESULT` line of `key=value` pairs for scripts.
    pub fn print(&self, mode: &str, connections: usize) {
        let rate = self.ok as f64 / self.secs.max(1e-9);
        let q = |p: f64| self.hist.value_at_quantile(p);
        println!(
            "{mode}: {} ok in {:.2} s over {connections} connections: {rate:.0}/s, p50 {} µs, p99 {} µs, p99.9 {} µs, errors {}",
            self.ok,
            self.secs,
            q(0.5),
            q(0.99),
            q(0.999),
            self.errors
        );
        if let Some(e) = &self.first_error {
            println!("first error: {e}");
        }
        let per_req = |cpu: f64| cpu * 1e6 / (self.ok.max(1) as f64);
        let mut cpu = String::new();
        if let Some(c) = self.server_cpu {
            println!(
                "server CPU: {:.1} µs per answer, {:.0}% of one core",
                per_req(c),
                100.0 * c / self.secs.max(1e-9)
            );
            cpu.push_str(&format!(" server_cpu_us={:.2} server_util={:.3}", per_req(c), c / self.secs.max(1e-9)));
        }
        if let Some(c) = self.load_cpu {
            println!(
                "load-generator CPU: {:.1} µs per request, {:.0}% of one core",
                per_req(c),
                100.0 * c / self.secs.max(1e-9)
            );
            cpu.push_str(&format!(" load_cpu_us={:.2} load_util={:.3}", per_req(c), c / self.secs.max(1e-9)));
        }
        println!(
            "RESULT mode={mode} rps={rate:.1} p50_us={} p99_us={} p999_us={} ok={} errors={} secs={:.3} connections={connections}{cpu}",
            q(0.5),
            q(0.99),
            q(0.999),
            self.ok,
            self.errors,
            self.secs
        );
    }
}

/// Runs the closed loop.
pub fn run<W: Workload>(shape: &Shape, workload: Arc<W>) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(shape.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(run_async(shape, workload))
}

async fn run_async<W: Workload>(shape: &Shape, workload: Arc<W>) -> Result<Report, String> {
    // Connect everything before the clock starts.
    let mut conns = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        conns.push(Conn::connect(shape.addr).await.map_err(|e| format!("connect {}: {e}", shape.addr))?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let server_cpu0 = shape.server_pid.and_then(cpu_ns);
    let load_cpu0 = cpu_ns(std::process::id());
    let started = Instant::now();
    let deadline = started + shape.duration;
    let ended_at_ns = Arc::new(AtomicU64::new(u64::MAX));
    let issued = Arc::new(AtomicU64::new(0));
    let max_requests = shape.max_requests;
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let (workload, stop, errors, template, ended_at_ns, issued) = (
            workload.clone(),
            stop.clone(),
            errors.clone(),
            shape.template.clone(),
            ended_at_ns.clone(),
            issued.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = crate::rng::FastRng::from_os();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut ok = 0u64;
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if max_requests > 0 && issued.fetch_add(1, Ordering::Relaxed) >= max_requests {
                    if !stop.swap(true, Ordering::Relaxed) {
                        ended_at_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    break;
                }
                let t = Instant::now();
                let Some((body, pending)) = workload.next(&mut rng) else {
                    // Pool used up: the run ends here for everyone.
                    if !stop.swap(true, Ordering::Relaxed) {
                        ended_at_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    break;
                };
                let result = match conn.roundtrip(&template, &body).await {
                    Ok(resp) => workload.check(pending, resp.status, &resp.body),
                    Err(e) => {
                        // A broken connection ends this task: count it and stop.
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                        break;
                    }
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        hist.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                }
            }
            (ok, hist, first_error)
        }));
    }
    let mut report = Report {
        ok: 0,
        errors: 0,
        secs: 0.0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        first_error: None,
        server_cpu: None,
        load_cpu: None,
    };
    for t in tasks {
        let (ok, hist, first_error) = t.await.map_err(|e| format!("task: {e}"))?;
        report.ok += ok;
        report.hist.add(&hist).map_err(|e| e.to_string())?;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / 1e9);
    report.server_cpu = diff(server_cpu0, shape.server_pid.and_then(cpu_ns));
    report.load_cpu = diff(load_cpu0, cpu_ns(std::process::id()));
    let ended = ended_at_ns.load(Ordering::Relaxed);
    report.secs = if ended == u64::MAX { started.elapsed().as_secs_f64() } else { ended as f64 / 1e9 };
    report.errors = errors.load(Ordering::Relaxed);
    Ok(report)
}
