//! Helpers shared by the integration tests that need outside tools (`oathtool`, Python
//! `aiosmtpd`): a missing tool skips the test with a note, unless CI demands it.

// Each test crate that includes this module uses only some of it.
#![allow(dead_code)]

pub mod haproxy;

/// Whether a missing tool fails the test (CI sets `ONETRIP_REQUIRE_TOOLS=1` and
/// installs the tools) instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("ONETRIP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Reports a missing tool: a skip note, or a panic naming the install step when
/// `ONETRIP_REQUIRE_TOOLS=1`. Returns normally only when the test should be skipped.
pub fn missing_tool(tool: &str, install: &str) {
    if tools_required() {
        panic!("{tool} not found but ONETRIP_REQUIRE_TOOLS=1: install it ({install})");
    }
    eprintln!("{tool} not found, skipped (install: {install})");
}

/// A real SMTP server: `support/smtp_sink.py` (aiosmtpd) on 127.0.0.1, killed by pid
/// when dropped. Messages land as `<n>.eml` files in a temporary directory.
pub struct SmtpSink {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    /// Starts the sink; `None` (after the skip note) when aiosmtpd is not installed.
    pub fn start() -> Option<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let has_aiosmtpd = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_aiosmtpd {
            missing_tool("python3 with aiosmtpd", "pip install aiosmtpd");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .arg("120")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut sink = SmtpSink { child, port: 0, dir };
        let line =
            rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the SMTP sink printed no port within 20 s");
        sink.port = line.trim().parse().unwrap_or_else(|_| panic!("the SMTP sink printed {line:?}, not a port"));
        Some(sink)
    }

    /// The `n`th stored message (1-based), waiting up to 15 s for it.
    pub fn message(&self, n: usize) -> String {
        let path = self.dir.path().join(format!("{n}.eml"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "message {n} never arrived at the SMTP sink");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Messages stored so far.
    pub fn stored(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
            .count()
    }
}

/// The code as a reader would find it: the line after "Your verification code is:".
pub fn code_in(mail: &str) -> &str {
    let mut lines = mail.lines().skip_while(|l| !l.starts_with("Your verification code is:")).skip(1);
    lines.find(|l| !l.trim().is_empty()).expect("no code line in the message").trim()
}

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback webhook receiver: answers the scripted statuses in order (then 200),
/// verifies every signature, and keeps the JSON bodies it accepted.
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Accepted JSON bodies.
    pub received: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Requests seen.
    pub requests: Arc<AtomicUsize>,
    /// Requests whose signature did not verify.
    pub bad_signatures: Arc<AtomicUsize>,
}

/// The HMAC key the tests give the server (`ONETRIP_WEBHOOK_SECRET`).
pub const WEBHOOK_SECRET: &str = "whsec-0123456789abcdef0123";

impl Receiver {
    /// Starts the receiver; `script` lists the statuses of the first answers.
    pub fn start(script: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let bad_signatures = Arc::new(AtomicUsize::new(0));
        let (r, n, bad) = (received.clone(), requests.clone(), bad_signatures.clone());
        let script = Arc::new(Mutex::new(script.into_iter()));
        std::thread::spawn(move || {
            for conn in listener.incoming().take(50) {
                let Ok(conn) = conn else { continue };
                let (r, n, bad, script) = (r.clone(), n.clone(), bad.clone(), script.clone());
                std::thread::spawn(move || serve_webhook(conn, &r, &n, &bad, &script));
            }
        });
        Receiver { port, received, requests, bad_signatures }
    }
}

fn serve_webhook(
    conn: std::net::TcpStream,
    received: &Mutex<Vec<serde_json::Value>>,
    requests: &AtomicUsize,
    bad: &AtomicUsize,
    script: &Mutex<std::vec::IntoIter<u16>>,
) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut len, mut ts, mut sig) = (0usize, String::new(), String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "onetrip-timestamp" => ts = v.trim().to_owned(),
                "onetrip-signature" => sig = v.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        requests.fetch_add(1, Ordering::SeqCst);
        let ok = onetrip_server::otp::delivery::verify_webhook_signature(
            WEBHOOK_SECRET.as_bytes(),
            &ts,
            &body,
            &sig,
            unix_now(),
            300,
        );
        let status = if !ok {
            bad.fetch_add(1, Ordering::SeqCst);
            401
        } else {
            script.lock().unwrap().next().unwrap_or(200)
        };
        if status == 200 {
            received.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
        }
        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
