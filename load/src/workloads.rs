//! The three workloads the driver runs: onetrip handshakes, snow Noise IK handshakes
//! (same HTTP shape: 384 bytes in, 400 bytes out) and a fixed-body POST (hello
//! server, introspection, the OAuth2 token endpoint).
//!
//! Handshake workloads either build each request inside the timed loop (the client
//! pays its ephemeral key generation and DH there: the honest closed-loop number) or,
//! with `--pregenerate N`, build N requests before the clock starts so that a
//! one-core load generator does not cap the server. The output says which.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::{AwaitingResponse, ClientHandshake, DefaultBackend, Outcome, ServerKeyDocument};

use crate::drive::Workload;
use crate::rng::FastRng;

/// Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Builds `count` items on `threads` threads (outside any timed loop).
pub fn pregenerate<T: Send>(count: usize, threads: usize, make: impl Fn(&mut FastRng) -> T + Sync) -> Vec<T> {
    let started = Instant::now();
    let threads = threads.max(1);
    let per = count.div_ceil(threads);
    let out: Vec<T> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let make = &make;
                let n = per.min(count.saturating_sub(i * per));
                s.spawn(move || {
                    let mut rng = FastRng::from_os();
                    (0..n).map(|_| make(&mut rng)).collect::<Vec<T>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    eprintln!("pre-generated {} requests in {:.2} s (not timed)", out.len(), started.elapsed().as_secs_f64());
    out
}

/// Requests built before the clock starts, with what is needed to check each answer.
type Pool<P> = Option<Mutex<Vec<(Vec<u8>, P)>>>;

/// onetrip handshakes over many API keys, round robin.
pub struct Onetrip {
    clients: Vec<ClientHandshake<DefaultBackend>>,
    next: AtomicUsize,
    pool: Pool<AwaitingResponse<DefaultBackend>>,
}

impl std::fmt::Debug for Onetrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onetrip").field("clients", &self.clients.len()).finish_non_exhaustive()
    }
}

impl Onetrip {
    /// One client handshake per key (each costs one DH: the cached static-static).
    pub fn new(keys: &[ApiKey], doc: &ServerKeyDocument, threads: usize) -> Result<Self, String> {
        let now = unix_now();
        let chunk = keys.len().div_ceil(threads.max(1)).max(1);
        let clients: Result<Vec<_>, String> = std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|k| {
                                ClientHandshake::new(DefaultBackend::default(), k, doc, now).map_err(|e| e.to_string())
                            })
                            .collect::<Result<Vec<_>, String>>()
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().map_err(|_| "client set-up panicked".to_string())??);
            }
            Ok(all)
        });
        Ok(Self { clients: clients?, next: AtomicUsize::new(0), pool: None })
    }

    /// Builds `count` requests now (outside the timed loop).
    pub fn pregenerate(&mut self, count: usize, threads: usize) {
        let clients = &self.clients;
        let next = AtomicUsize::new(0);
        let now = unix_now();
        let pool = pregenerate(count, threads, |rng| {
            let c = &clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()];
            let mut req = [0u8; REQUEST_LEN];
            let pending = c.start(&ClientRequest::default(), now, rng, &mut req).expect("request fits");
            (req.to_vec(), pending)
        });
        self.pool = Some(Mutex::new(pool));
    }
}

impl Workload for Onetrip {
    type Pending = AwaitingResponse<DefaultBackend>;

    fn next(&self, rng: &mut FastRng) -> Option<(Vec<u8>, Self::Pending)> {
        if let Some(pool) = &self.pool {
            return pool.lock().ok()?.pop();
        }
        let c = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()];
        let mut req = [0u8; REQUEST_LEN];
        let pending = c.start(&ClientRequest::default(), unix_now(), rng, &mut req).ok()?;
        Some((req.to_vec(), pending))
    }

    fn check(&self, pending: Self::Pending, status: u16, body: &[u8]) -> Result<(), String> {
        if status != 200 || body.len() != RESPONSE_LEN {
            return Err(format!("HTTP {status}, {} bytes: {}", body.len(), String::from_utf8_lossy(body)));
        }
        match pending.finish(body) {
            Ok(Outcome::Granted(_)) => Ok(()),
            Ok(other) => Err(format!("not granted: {other:?}")),
            Err(e) => Err(format!("response rejected: {e}")),
        }
    }
}

/// The Noise pattern of the reference: IK, as onetrip's construction is IK-like.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// IK message 1 = e (32) + s (32 + 16) + payload + 16: 384 bytes like onetrip's request.
pub const NOISE_REQUEST_PAYLOAD: usize = REQUEST_LEN - 32 - 48 - 16;
/// IK message 2 = e (32) + payload + 16: 400 bytes like onetrip's response (token-sized payload).
pub const NOISE_RESPONSE_PAYLOAD: usize = RESPONSE_LEN - 32 - 16;

/// snow Noise IK initiators over many client static keys.
pub struct Noise {
    params: snow::params::NoiseParams,
    statics: Vec<Vec<u8>>,
    server_public: Vec<u8>,
    next: AtomicUsize,
    pool: Pool<snow::HandshakeState>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Noise").field("statics", &self.statics.len()).finish_non_exhaustive()
    }
}

impl Noise {
    /// `keys` client static key pairs; `server_public` is the responder's static key.
    pub fn new(server_public: Vec<u8>, keys: usize) -> Result<Self, String> {
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(|e| format!("{e:?}"))?;
        let statics = (0..keys.max(1))
            .map(|_| snow::Builder::new(params.clone()).generate_keypair().map(|k| k.private))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Self { params, statics, server_public, next: AtomicUsize::new(0), pool: None })
    }

    fn make(&self, i: usize) -> Result<(Vec<u8>, snow::HandshakeState), snow::Error> {
        let s = &self.statics[i % self.statics.len()];
        let mut hs = snow::Builder::new(self.params.clone())
            .local_private_key(s)?
            .remote_public_key(&self.server_public)?
            .build_initiator()?;
        let payload = [0x5a; NOISE_REQUEST_PAYLOAD];
        let mut out = vec![0u8; REQUEST_LEN];
        let n = hs.write_message(&payload, &mut out)?;
        out.truncate(n);
        Ok((out, hs))
    }

    /// Builds `count` first messages now (outside the timed loop).
    pub fn pregenerate(&mut self, count: usize, threads: usize) {
        let next = AtomicUsize::new(0);
        let pool =
            pregenerate(count, threads, |_| self.make(next.fetch_add(1, Ordering::Relaxed)).expect("noise message"));
        self.pool = Some(Mutex::new(pool));
    }
}

impl Workload for Noise {
    type Pending = snow::HandshakeState;

    fn next(&self, _rng: &mut FastRng) -> Option<(Vec<u8>, Self::Pending)> {
        if let Some(pool) = &self.pool {
            return pool.lock().ok()?.pop();
        }
        self.make(self.next.fetch_add(1, Ordering::Relaxed)).ok()
    }

    fn check(&self, mut hs: Self::Pending, status: u16, body: &[u8]) -> Result<(), String> {
        if status != 200 || body.len() != RESPONSE_LEN {
            return Err(format!("HTTP {status}, {} bytes", body.len()));
        }
        let mut payload = [0u8; RESPONSE_LEN];
        let n = hs.read_message(body, &mut payload).map_err(|e| format!("noise response: {e}"))?;
        if n != NOISE_RESPONSE_PAYLOAD || !hs.is_handshake_finished() {
            return Err(format!("noise response payload {n} bytes"));
        }
        Ok(())
    }
}

/// A fixed body, with the answer checked by status, optional length and substring.
#[derive(Debug)]
pub struct Fixed {
    /// Request body.
    pub body: Vec<u8>,
    /// Required status.
    pub status: u16,
    /// Required body length.
    pub len: Option<usize>,
    /// Required substring of the body.
    pub contains: Option<Vec<u8>>,
}

impl Workload for Fixed {
    type Pending = ();

    fn next(&self, _rng: &mut FastRng) -> Option<(Vec<u8>, ())> {
        Some((self.body.clone(), ()))
    }

    fn check(&self, _: (), status: u16, body: &[u8]) -> Result<(), String> {
        if status != self.status {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
        }
        if let Some(len) = self.len {
            if body.len() != len {
                return Err(format!("body {} bytes, expected {len}", body.len()));
            }
        }
        if let Some(needle) = &self.contains {
            if !body.windows(needle.len()).any(|w| w == &needle[..]) {
                return Err(format!(
                    "body lacks {:?}: {}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
        }
        Ok(())
    }
}
