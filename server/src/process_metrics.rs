//! The standard Prometheus `process_*` metrics (CPU time, resident and virtual
//! memory, open and allowed file descriptors, start time), read from `/proc` at each
//! scrape: what dashboards and alerts built for any Prometheus client expect.
//!
//! Read by hand rather than through a metrics crate: the server renders its own
//! exposition text, and these are a few lines of three files. Where `/proc` is
//! missing (not Linux) or unreadable, the metrics are left out, never made up.

use std::fmt::Write;

/// Clock ticks per second of the times in `/proc/PID/stat`. The kernel reports them
/// in USER_HZ, which is 100 on every architecture Rust targets for Linux (Prometheus'
/// own procfs library assumes the same), so no `sysconf` call is needed.
const USER_HZ: f64 = 100.0;

/// Why `/proc` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file did not have the expected shape.
    #[error("unexpected contents in {path}: {what}")]
    Format {
        /// The file.
        path: &'static str,
        /// What was missing or malformed.
        what: &'static str,
    },
}

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on open file descriptors (`None`: unlimited).
    pub max_fds: Option<u64>,
    /// Start time, Unix seconds.
    pub start_time_seconds: f64,
}

fn read(path: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { path, source })
}

impl ProcessStats {
    /// Reads this process's numbers.
    pub fn read() -> Result<Self, ProcError> {
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map_err(|source| ProcError::Read { path: "/proc/self/fd", source })?
            .count() as u64;
        Self::parse(
            &read("/proc/self/stat")?,
            &read("/proc/self/status")?,
            &read("/proc/self/limits")?,
            &read("/proc/stat")?,
            open_fds,
        )
    }

    /// The numbers from the texts of `/proc/self/stat`, `/proc/self/status`,
    /// `/proc/self/limits` and `/proc/stat`. `open_fds` counts `/proc/self/fd`, which
    /// itself holds one descriptor while it is read.
    pub fn parse(stat: &str, status: &str, limits: &str, system: &str, open_fds: u64) -> Result<Self, ProcError> {
        const STAT: &str = "/proc/self/stat";
        // The command name (field 2) is in parentheses and may hold spaces and
        // parentheses itself: the fields that follow start after the last `)`.
        let after_name = stat.rsplit_once(')').ok_or(ProcError::Format { path: STAT, what: "no `)`" })?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // `fields[0]` is field 3 (state); proc(5) numbers them from 1.
        let field = |n: usize, what: &'static str| -> Result<u64, ProcError> {
            fields.get(n - 3).and_then(|v| v.parse().ok()).ok_or(ProcError::Format { path: STAT, what })
        };
        let (utime, stime) = (field(14, "utime")?, field(15, "stime")?);
        let (starttime, vsize) = (field(22, "starttime")?, field(23, "vsize")?);
        let resident_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(ProcError::Format { path: "/proc/self/status", what: "VmRSS" })?;
        let boot_time = system
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(ProcError::Format { path: "/proc/stat", what: "btime" })?;
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or(ProcError::Format { path: "/proc/self/limits", what: "Max open files" })?;
        Ok(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            resident_bytes: resident_kb * 1024,
            virtual_bytes: vsize,
            open_fds,
            max_fds: max_fds.parse().ok(),
            start_time_seconds: boot_time as f64 + starttime as f64 / USER_HZ,
        })
    }
}

/// Appends the `process_*` metrics to `out`; nothing when `/proc` cannot be read.
pub fn render(out: &mut String) {
    let stats = match ProcessStats::read() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "process metrics left out");
            return;
        }
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", stats.cpu_seconds);
    metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", stats.resident_bytes as f64);
    metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stats.virtual_bytes as f64);
    metric("process_open_fds", "gauge", "Number of open file descriptors.", stats.open_fds as f64);
    if let Some(max) = stats.max_fds {
        metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", max as f64);
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tonetrip\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\n\
                          Max open files            1024                 524288               files\n";
    const SYSTEM: &str = "cpu  1 2 3\nbtime 1795600000\nprocesses 42\n";

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis_of_the_name() {
        // A name with a space and a `)` in it, as a process may call itself.
        let stat = "4242 (on trip) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 12345 987654321 3014 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = ProcessStats::parse(stat, STATUS, LIMITS, SYSTEM, 9).unwrap();
        assert_eq!(s.cpu_seconds, 3.25);
        assert_eq!(s.resident_bytes, 12_345 * 1024);
        assert_eq!(s.virtual_bytes, 987_654_321);
        assert_eq!((s.open_fds, s.max_fds), (9, Some(1024)));
        assert_eq!(s.start_time_seconds, 1_795_600_000.0 + 123.45);
    }

    #[test]
    fn malformed_files_are_named_and_an_unlimited_fd_limit_is_none() {
        let e = ProcessStats::parse("4242 (onetrip S 1", STATUS, LIMITS, SYSTEM, 1).unwrap_err();
        assert!(e.to_string().contains("/proc/self/stat"), "{e}");
        let e = ProcessStats::parse("4242 (x) S 1 2", STATUS, LIMITS, SYSTEM, 1).unwrap_err();
        assert!(matches!(e, ProcError::Format { what: "utime", .. }), "{e}");
        let unlimited = LIMITS.replace("1024                 524288", "unlimited            unlimited");
        let live = ProcessStats::read().unwrap();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let s = ProcessStats::parse(&stat, &status, &unlimited, SYSTEM, 3).unwrap();
        assert_eq!(s.max_fds, None);
        assert!(live.resident_bytes > 1024 * 1024 && live.open_fds >= 3, "{live:?}");
    }
}
