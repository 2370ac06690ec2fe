//! Harness for several `onetrip serve` replicas on one real PostgreSQL store: a
//! throw-away PostgreSQL cluster of the test's own (`scripts/pg-throwaway.sh`), N
//! replicas sharing its identity, each on a port it keeps across restarts (so a load
//! balancer in front finds it again), a handshake load generator with a per-request
//! timeout that sorts every answer, and replayable requests whose answers can all be
//! opened (to count the tokens a replay got). Everything is stopped by PID on drop.
// Each test crate that includes this module uses only some of it.
#![allow(dead_code)]

pub mod load;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, HttpResponse, Server};
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, REQUEST_NONCE_LEN};
use onetrip_protocol::{AwaitingResponse, ClientHandshake, DefaultBackend, Outcome, ServerKeyDocument};

const PG_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-throwaway.sh");

/// The address HAProxy speaks PROXY v2 from in the cluster tests (its backend gets
/// `source 127.0.0.2`), for the replicas' `--proxy-protocol-from`: the tests' own
/// direct calls from 127.0.0.1 (metrics, keys, handshakes) then need no header.
pub const LB_SOURCE: &str = "127.0.0.2/32";

/// The `extra` for `support::haproxy::Haproxy::start` that goes with [`LB_SOURCE`].
pub const LB_EXTRA: &str = "source 127.0.0.2";

/// Whether a missing outside tool fails the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("ONETRIP_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// A PostgreSQL cluster of this test's own, stopped and removed on drop.
pub struct Pg {
    dir: PathBuf,
    pub url: String,
    _tmp: tempfile::TempDir,
}

impl Pg {
    /// `None` (after saying why) when PostgreSQL is not installed and the tools are
    /// not required; with `ONETRIP_REQUIRE_TOOLS=1` a missing PostgreSQL fails.
    pub fn start() -> Option<Pg> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        let out = Command::new("bash").arg(PG_SCRIPT).arg("start").arg(&dir).output().unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if tools_required() {
                panic!("ONETRIP_REQUIRE_TOOLS=1 and no PostgreSQL cluster could be started: {why}");
            }
            eprintln!("skipped: no PostgreSQL here ({why})");
            return None;
        }
        let line = String::from_utf8(out.stdout).unwrap();
        let url = line.trim().strip_prefix("export ONETRIP_TEST_POSTGRES_URL='").unwrap().trim_end_matches('\'');
        Some(Pg { dir, url: url.to_owned(), _tmp: tmp })
    }

    /// Stops (`halt`) or starts again on the same port (`resume`) the cluster.
    pub fn control(&self, what: &str) {
        let out = Command::new("bash").arg(PG_SCRIPT).arg(what).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "pg-throwaway {what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(PG_SCRIPT).arg("stop").arg(&self.dir).output();
    }
}

/// `onetrip <args> --store URL --data-dir DIR`, against the database directly.
pub fn cli(url: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .args(args)
        .args(["--store", url, "--data-dir"])
        .arg(dir)
        .env_remove("ONETRIP_PASSPHRASE")
        .output()
        .unwrap()
}

/// `keys create --json <args>` through the database; (key, id hex).
pub fn create_key(url: &str, dir: &Path, args: &[&str]) -> (ApiKey, String) {
    let out = cli(url, dir, &[&["keys", "create", "--json"], args].concat());
    assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (ApiKey::parse(v["api_key"].as_str().unwrap()).unwrap(), v["id"].as_str().unwrap().to_owned())
}

/// Waits (at most `limit`) until `done`; returns how long it took.
pub fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A port free right now on 127.0.0.1 (the kernel's pick; taken again at once by
/// the replica, and kept by it across restarts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// N replicas of one server on one PostgreSQL store, each with its own data
/// directory and a fixed port.
pub struct Fleet {
    /// Replicas, `None` while stopped.
    pub replicas: Vec<Option<Server>>,
    /// Each replica's port, kept across restarts.
    pub ports: Vec<u16>,
    args: Vec<String>,
    tmp: tempfile::TempDir,
    // Dropped last: the replicas go before their database.
    pub pg: Pg,
}

impl Fleet {
    /// `n` replicas started with `extra` serve flags; `None` when PostgreSQL is
    /// missing and not required.
    pub fn start(n: usize, extra: &[&str]) -> Option<Fleet> {
        let pg = Pg::start()?;
        let mut fleet = Fleet {
            replicas: Vec::new(),
            ports: Vec::new(),
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            tmp: tempfile::tempdir().unwrap(),
            pg,
        };
        for i in 0..n {
            fleet.ports.push(0);
            fleet.replicas.push(None);
            fleet.launch(i);
        }
        let fingerprint = fleet.replica(0).fingerprint;
        assert!(fleet.replicas.iter().flatten().all(|r| r.fingerprint == fingerprint), "one identity");
        Some(fleet)
    }

    /// The store URL the replicas share.
    pub fn url(&self) -> &str {
        &self.pg.url
    }

    /// Replica `i` (panics if stopped).
    pub fn replica(&self, i: usize) -> &Server {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// The running replicas.
    pub fn running(&self) -> impl Iterator<Item = &Server> {
        self.replicas.iter().flatten()
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("replica{i}"))
    }

    /// Starts replica `i` on its port (a fresh one the first time); retries on a
    /// port taken between the probe and the bind.
    pub fn launch(&mut self, i: usize) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = if self.ports[i] == 0 { free_port() } else { self.ports[i] };
            let listen = format!("127.0.0.1:{port}");
            let mut args: Vec<&str> = vec!["--store", &self.pg.url, "--listen", &listen];
            args.extend(self.args.iter().map(String::as_str));
            match Server::start_in(&self.dir(i), &args) {
                Ok(server) => {
                    self.ports[i] = server.port;
                    self.replicas[i] = Some(server);
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("replica {i} did not start: {last}");
    }

    /// SIGTERM to replica `i`, then waits (at most `limit`) for it to exit.
    pub fn terminate(&mut self, i: usize, limit: Duration) -> Duration {
        let mut server = self.replicas[i].take().expect("replica running");
        let start = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
        loop {
            if server.child.try_wait().unwrap().is_some() {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "replica {i} still running {limit:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` replica `i`.
    pub fn kill9(&mut self, i: usize) {
        self.replicas[i].take().expect("replica running").kill9();
    }

    /// `onetrip <args>` on the shared database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.pg.url, &self.tmp.path().join("cli"), args)
    }

    /// Creates a key through the database and waits until every running replica
    /// serves it.
    pub fn create_key(&self, args: &[&str]) -> (ApiKey, String) {
        let (key, id) = create_key(&self.pg.url, &self.tmp.path().join("cli"), args);
        for server in self.running() {
            until("every replica serves the new key", Duration::from_secs(10), || {
                matches!(server.handshake(&key, &ClientRequest::default()), Outcome::Granted(_))
            });
        }
        (key, id)
    }

    /// The sum over running replicas of a metric.
    pub fn metric_sum(&self, name: &str) -> u64 {
        self.running().map(|s| s.metric(name)).sum()
    }
}

/// One request's bytes and as many client states able to open its answers: each
/// state comes from the same ephemeral key and nonce, so each answer to a copy of
/// the request (a replay) can be opened and a second token would show.
pub struct Replayable {
    pub bytes: [u8; REQUEST_LEN],
    pub pending: Vec<AwaitingResponse>,
}

/// `copies` openers for one handshake request of `key` to the server of `doc`.
pub fn replayable(doc: &ServerKeyDocument, key: &ApiKey, req: &ClientRequest<'_>, copies: usize) -> Replayable {
    use rand_core::RngCore;
    let ephemeral = onetrip_protocol::Secret::<32>::random(&mut rand_core::OsRng);
    let mut nonce = [0u8; REQUEST_NONCE_LEN];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let now = common::now();
    let mut bytes = [0u8; REQUEST_LEN];
    let pending = (0..copies)
        .map(|_| {
            let client = ClientHandshake::new(DefaultBackend::default(), key, doc, now).unwrap();
            client.start_with_ephemeral(req, now, &ephemeral, &nonce, &mut bytes).unwrap()
        })
        .collect();
    Replayable { bytes, pending }
}

/// How a handshake request ended, as a client with a deadline sees it.
#[derive(Debug)]
pub enum Answer {
    /// HTTP 200 whose body opened as this outcome.
    Opened(Outcome),
    /// HTTP 200 whose body did not open: a wrong or corrupted answer.
    Unreadable(String),
    /// Another HTTP status (e.g. 503 from the server or the balancer).
    Status(u16, Vec<u8>),
    /// No answer within the deadline.
    Timeout,
    /// Connection refused or reset before an answer.
    Io(String),
}

impl Answer {
    /// A token.
    pub fn granted(&self) -> bool {
        matches!(self, Answer::Opened(Outcome::Granted(_)))
    }

    /// A clean "try later": `server_error` in the protocol or HTTP 503.
    pub fn clean_failure(&self) -> bool {
        matches!(self, Answer::Opened(Outcome::ServerError) | Answer::Status(503, _))
    }
}

/// POSTs a handshake to 127.0.0.1:`port` and opens the answer with `pending`,
/// giving up after `deadline` (connect, write and read together, roughly).
pub fn exchange(port: u16, bytes: &[u8], pending: AwaitingResponse, deadline: Duration) -> Answer {
    match post(port, "/v1/auth", bytes, deadline) {
        Ok(r) if r.status == 200 => match pending.finish(&r.body) {
            Ok(outcome) => Answer::Opened(outcome),
            Err(e) => Answer::Unreadable(format!("{e:?}")),
        },
        Ok(r) => Answer::Status(r.status, r.body),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Answer::Timeout,
        Err(e) => Answer::Io(e.to_string()),
    }
}

/// One POST on a fresh connection with a deadline, errors returned (not panics).
pub fn post(port: u16, path: &str, body: &[u8], deadline: Duration) -> std::io::Result<HttpResponse> {
    call(port, "POST", path, body, deadline)
}

/// One request on a fresh connection with a deadline, errors returned (not panics).
pub fn call(port: u16, method: &str, path: &str, body: &[u8], deadline: Duration) -> std::io::Result<HttpResponse> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, deadline)?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    s.set_nodelay(true)?;
    let headers = [("content-type", "application/octet-stream")];
    s.write_all(&common::request_bytes(method, path, &headers, body, true))?;
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if start.elapsed() > deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before an answer"));
    }
    Ok(common::parse_response(&raw))
}

/// The server-key document `port` serves (through a balancer too).
pub fn document(port: u16) -> ServerKeyDocument {
    ServerKeyDocument::parse(&common::http(port, "GET", "/v1/server-key", &[], b"").body).unwrap()
}

/// Whether this build's `serve` has `flag` (features other branches add:
/// `--shared`, `--drain-secs`, `--proxy-protocol-from`).
pub fn serve_has(flag: &str) -> bool {
    let out = Command::new(common::BIN).args(["serve", "--help"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("{flag} "))
}

/// [`serve_has`] for a test that cannot run without `flag`: says it skips when not.
pub fn needs(flag: &str) -> bool {
    let has = serve_has(flag);
    if !has {
        eprintln!("skipped: this onetrip serve has no {flag} yet");
    }
    has
}
