//! Quick closed-loop handshake load over HTTP/1.1 keep-alive, for a smoke number
//! (the full benchmark harness is `bench/`). Every response is verified.
//!
//! `cargo run --release -p onetrip-server --example handshake_load -- URL API_KEY FINGERPRINT [CONNECTIONS] [SECONDS]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::{ClientHandshake, DefaultBackend, Fingerprint, Outcome, ServerKeyDocument};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Sends one request on a keep-alive connection and reads the fixed-size answer.
fn roundtrip(conn: &mut BufReader<TcpStream>, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
    let s = conn.get_mut();
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| "bad content-length")?;
        }
    }
    let mut out = vec![0u8; len];
    conn.read_exact(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: handshake_load URL API_KEY FINGERPRINT [CONNECTIONS] [SECONDS]");
        std::process::exit(2);
    }
    let addr = args[1].trim_start_matches("http://").trim_end_matches('/').to_owned();
    let key = ApiKey::parse(&args[2]).expect("API key");
    let pin: Fingerprint = args[3].parse().expect("fingerprint");
    let conns: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(2);
    let secs: u64 = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(5);

    let mut c = TcpStream::connect(&addr).expect("connect");
    write!(c, "GET /v1/server-key HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let doc = ServerKeyDocument::parse(&raw[split..]).expect("document");
    doc.check_pin(&pin).expect("pinned identity");
    let client = Arc::new(ClientHandshake::new(DefaultBackend::default(), &key, &doc, now()).expect("client"));

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (client, done, errors, addr) = (client.clone(), done.clone(), errors.clone(), addr.clone());
            std::thread::spawn(move || {
                let s = TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).ok();
                let mut conn = BufReader::new(s);
                let mut rng = rand_core::OsRng;
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut req = [0u8; REQUEST_LEN];
                    let pending = client.start(&ClientRequest::default(), now(), &mut rng, &mut req).expect("request");
                    match roundtrip(&mut conn, "/v1/auth", &req) {
                        Ok(resp) if resp.len() == RESPONSE_LEN => match pending.finish(&resp) {
                            Ok(Outcome::Granted(_)) => {
                                done.fetch_add(1, Ordering::Relaxed);
                                latencies.push(t.elapsed());
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        other => {
                            eprintln!("transport error: {:?}", other.map(|r| String::from_utf8_lossy(&r).into_owned()));
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} handshakes in {elapsed:.1} s over {conns} connections: {:.0}/s, p50 {:?}, p99 {:?}, errors {}",
        n as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
}
