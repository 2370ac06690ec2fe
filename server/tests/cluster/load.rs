//! A steady handshake load for the cluster tests: a few client threads, each doing
//! one fresh handshake after another on a new connection with a per-request deadline,
//! and an optional replayer that sends copies of one request spread over time and
//! counts the tokens they got. Every answer is kept with its time, so a test can ask
//! what failed, how, and when.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, ServerKeyDocument};

use super::{exchange, replayable, Answer};

/// What one answer was, for the tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A token that opened with the client's state.
    Granted,
    /// `server_error` or HTTP 503: the documented "try again".
    Clean,
    /// Anything else: a hang, a reset, a 502, an unreadable answer, a refusal.
    Bad(String),
}

/// One answer and when it came (since the load started).
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub kind: Kind,
}

/// A running load; [`Load::stop`] joins it and gives the answers.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub started: Instant,
    threads: Vec<JoinHandle<Vec<Event>>>,
    replayer: Option<JoinHandle<Vec<usize>>>,
}

/// Sorts one answer.
pub fn kind(answer: &Answer) -> Kind {
    match answer {
        Answer::Opened(Outcome::Granted(_)) => Kind::Granted,
        a if a.clean_failure() => Kind::Clean,
        Answer::Status(code, body) => Kind::Bad(format!("HTTP {code}: {}", String::from_utf8_lossy(body))),
        other => Kind::Bad(format!("{other:?}")),
    }
}

impl Load {
    /// `clients` threads doing handshakes for `key` against 127.0.0.1:`port`, each
    /// request given `deadline`, with `pause` between a thread's requests.
    pub fn start(
        port: u16,
        doc: &ServerKeyDocument,
        key: &ApiKey,
        clients: usize,
        deadline: Duration,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|_| {
                let (stop, doc, key) = (stop.clone(), doc.clone(), key.clone());
                std::thread::spawn(move || {
                    let mut events = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let now = super::common::now();
                        let client = ClientHandshake::new(DefaultBackend::default(), &key, &doc, now).unwrap();
                        let mut bytes = [0u8; REQUEST_LEN];
                        let pending =
                            client.start(&ClientRequest::default(), now, &mut rand_core::OsRng, &mut bytes).unwrap();
                        let answer = exchange(port, &bytes, pending, deadline);
                        events.push(Event { at: started.elapsed(), kind: kind(&answer) });
                        std::thread::sleep(pause);
                    }
                    events
                })
            })
            .collect();
        Load { stop, started, threads, replayer: None }
    }

    /// Adds a replayer: one request after another, each sent `copies` times
    /// `spacing` apart, copy `i` to `ports[i % len]`; for each request, how many of
    /// its copies got a token.
    pub fn with_replays(
        mut self,
        ports: Vec<u16>,
        doc: &ServerKeyDocument,
        key: &ApiKey,
        copies: usize,
        spacing: Duration,
    ) -> Load {
        let (stop, doc, key) = (self.stop.clone(), doc.clone(), key.clone());
        self.replayer = Some(std::thread::spawn(move || {
            let mut tokens = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = replayable(&doc, &key, &ClientRequest::default(), copies);
                let mut got = 0;
                for (i, pending) in r.pending.into_iter().enumerate() {
                    if exchange(ports[i % ports.len()], &r.bytes, pending, Duration::from_secs(3)).granted() {
                        got += 1;
                    }
                    std::thread::sleep(spacing);
                }
                tokens.push(got);
            }
            tokens
        }));
        self
    }

    /// Stops the clients and returns every answer in time order, and per replayed
    /// request the number of tokens its copies got.
    pub fn stop(self) -> (Report, Vec<usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut events: Vec<Event> = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        events.sort_by_key(|e| e.at);
        let replays = self.replayer.map(|t| t.join().unwrap()).unwrap_or_default();
        (Report { events }, replays)
    }
}

/// The answers of a load run.
pub struct Report {
    pub events: Vec<Event>,
}

impl Report {
    pub fn count(&self, what: impl Fn(&Kind) -> bool) -> usize {
        self.events.iter().filter(|e| what(&e.kind)).count()
    }

    pub fn granted(&self) -> usize {
        self.count(|k| *k == Kind::Granted)
    }

    /// Answers that were not a token.
    pub fn failed(&self) -> Vec<&Event> {
        self.events.iter().filter(|e| e.kind != Kind::Granted).collect()
    }

    /// Answers that were neither a token nor a clean "try again".
    pub fn bad(&self) -> Vec<&Event> {
        self.events.iter().filter(|e| matches!(e.kind, Kind::Bad(_))).collect()
    }

    /// Failures at or after `t`.
    pub fn failed_after(&self, t: Duration) -> Vec<&Event> {
        self.failed().into_iter().filter(|e| e.at >= t).collect()
    }

    /// The longest stretch without a token after `from` (the outage as clients
    /// saw it), and where it started.
    pub fn longest_gap_after(&self, from: Duration) -> (Duration, Duration) {
        let mut last_ok = from;
        let mut best = (Duration::ZERO, from);
        for e in self.events.iter().filter(|e| e.at >= from && e.kind == Kind::Granted) {
            if e.at - last_ok > best.0 {
                best = (e.at - last_ok, last_ok);
            }
            last_ok = e.at;
        }
        best
    }

    /// Tokens granted at or after `t`.
    pub fn granted_after(&self, t: Duration) -> usize {
        self.events.iter().filter(|e| e.at >= t && e.kind == Kind::Granted).count()
    }
}
