//! A real HAProxy in front of test servers, configured from the shipped
//! `deploy/haproxy.cfg` (so the tests exercise that file): its `bind` line gets a free
//! loopback port, its `server` lines become the given backends, and a stats socket is
//! added so tests can see what HAProxy thinks of each backend. The process runs in the
//! foreground in a temporary directory and is killed by PID when dropped.
//!
//! ```ignore
//! let Some(lb) = support::haproxy::Haproxy::start(&[replica1, replica2], "") else { return };
//! lb.wait_all_up(Duration::from_secs(10));
//! let url = format!("http://{}", lb.addr());
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running HAProxy; dropping it kills the process.
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped configuration the harness starts from.
pub fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg")
}

/// True when `haproxy` runs; otherwise [`super::missing_tool`] decides (skip or fail).
pub fn available() -> bool {
    let ok = Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success());
    if !ok {
        super::missing_tool("haproxy", "apt-get install -y haproxy");
    }
    ok
}

/// `deploy/haproxy.cfg` with `bind` on `listen`, one `server onetripN` line per backend
/// (N from 1, in order), `extra` appended to the backend section (e.g. `retries 0`),
/// and an admin stats socket at `stats`.
pub fn config_for(backends: &[SocketAddr], listen: SocketAddr, extra: &str, stats: &Path) -> String {
    let shipped = std::fs::read_to_string(deploy_config()).expect("read deploy/haproxy.cfg");
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") {
            continue;
        }
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind {listen}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t == "global" {
            out.push_str(&format!("    stats socket {} mode 600 level admin\n", stats.display()));
        }
    }
    for (i, b) in backends.iter().enumerate() {
        out.push_str(&format!("    server onetrip{} {b}\n", i + 1));
    }
    for line in extra.lines() {
        out.push_str(&format!("    {}\n", line.trim()));
    }
    out
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port")
}

impl Haproxy {
    /// Starts HAProxy in front of `backends` (see [`config_for`] for `extra`); waits
    /// until it accepts connections. `None` (after the skip note) when haproxy is not
    /// installed; panics when it is but does not start.
    pub fn start(backends: &[SocketAddr], extra: &str) -> Option<Self> {
        if !available() {
            return None;
        }
        let mut last_error = String::new();
        // The port is free when chosen; another process could take it before HAProxy
        // binds, so try a few.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let addr = free_port();
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, config_for(backends, addr, extra, &dir.path().join("stats.sock"))).unwrap();
            let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
            let child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn haproxy");
            let mut lb = Haproxy { child, addr, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = lb.child.try_wait() {
                    last_error = format!("haproxy exited with {status}: {}", lb.log());
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && lb.stats_ready() {
                    return Some(lb);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last_error.is_empty() {
                last_error = format!("haproxy did not listen on {addr} within 10 s: {}", lb.log());
            }
        }
        panic!("cannot start haproxy: {last_error}");
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HAProxy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    /// What HAProxy wrote on stdout and stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    fn stats_ready(&self) -> bool {
        self.command("show info").is_some_and(|s| s.contains("Pid:"))
    }

    /// Sends one command to the admin socket (e.g. `show stat`, `disable server
    /// replicas/onetrip1`) and returns the answer.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("stats.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Each backend server's name (`onetrip1`, …) and status as HAProxy sees it now
    /// (`UP`, `DOWN`, `UP 1/2`, `DOWN 1/2`, `MAINT`, …).
    pub fn server_states(&self) -> Vec<(String, String)> {
        let csv = self.command("show stat").unwrap_or_default();
        let mut header: Vec<&str> = Vec::new();
        let mut states = Vec::new();
        for line in csv.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                header = h.split(',').collect();
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            let col = |name: &str| header.iter().position(|h| *h == name).and_then(|i| cols.get(i)).copied();
            if col("pxname") == Some("replicas") {
                if let (Some(sv), Some(status)) = (col("svname"), col("status")) {
                    if sv != "BACKEND" {
                        states.push((sv.to_owned(), status.to_owned()));
                    }
                }
            }
        }
        states
    }

    /// Waits until server `name`'s status is exactly `status`; false on timeout.
    pub fn wait_server(&self, name: &str, status: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.server_states().iter().any(|(n, s)| n == name && s == status) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every backend is `UP` (health checks passed); false on timeout.
    pub fn wait_all_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.server_states();
            if !states.is_empty() && states.iter().all(|(_, s)| s == "UP") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
