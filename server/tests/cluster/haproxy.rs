//! HAProxy in front of given replica ports, for the cluster tests: round robin,
//! health checks on `/healthz` every 200 ms (down after 2 failures, up after 2
//! successes), optionally PROXY protocol v2 to the backends. Killed by PID on drop.
//! Interim: the proxy-drain branch brings the shared harness and deploy/haproxy.cfg;
//! once merged, this file gives way to it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tools_required};

/// The address HAProxy speaks PROXY v2 from, for `--proxy-protocol-from`.
pub const TRUSTED: &str = "127.0.0.2/32";

/// A running `haproxy -db`.
pub struct Haproxy {
    child: Child,
    /// The front port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl Haproxy {
    /// In front of `backends`; `proxy_v2` sends the PROXY v2 header (checks too).
    /// `None` after the skip note when HAProxy is missing and not required.
    pub fn start(backends: &[u16], proxy_v2: bool) -> Option<Haproxy> {
        let Some(bin) = binary() else {
            if tools_required() {
                panic!("haproxy not found but ONETRIP_REQUIRE_TOOLS=1: apt-get install -y haproxy");
            }
            eprintln!("haproxy not found, skipped (install: apt-get install -y haproxy)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // With PROXY v2 HAProxy connects from 127.0.0.2 ([`TRUSTED`]): the replicas
        // trust headers from there only, so the tests' own direct calls from
        // 127.0.0.1 (metrics, keys, handshakes) need none.
        let proxy = if proxy_v2 { " send-proxy-v2 check-send-proxy source 127.0.0.2" } else { "" };
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server r{i} 127.0.0.1:{p} check inter 200ms fall 2 rise 2{proxy}\n"))
            .collect();
        let cfg = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n    \
             retries 2\n    option redispatch\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend onetrip\n\
             backend onetrip\n    balance roundrobin\n    option httpchk GET /healthz\n    \
             http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let h = Haproxy { child, port, _dir: dir };
        // Ready once a request through it reaches a healthy replica.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && super::call(port, "GET", "/healthz", b"", Duration::from_secs(1)).is_ok_and(|r| r.status == 200);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "haproxy on {port} serves nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
