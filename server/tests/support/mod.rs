//! Helpers shared by the integration tests that need outside tools (`oathtool`, Python
//! `aiosmtpd`): a missing tool skips the test with a note, unless CI demands it.

// Each test crate that includes this module uses only some of it.
#![allow(dead_code)]

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
