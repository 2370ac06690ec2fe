//! Set-up and process measurements around the load runs: bulk key creation, start-up
//! time to the first `/healthz` 200, waiting for the key cache, and an introspection
//! body made from a real token.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::{ClientHandshake, DefaultBackend, Fingerprint, Outcome, PopProof, ServerKeyDocument};
use onetrip_server::store::{ApiKeyRecord, Store};

use crate::http1;
use crate::rng::FastRng;
use crate::workloads::unix_now;

/// Keys per write transaction in `gen-keys`.
const BATCH: usize = 100_000;

/// Creates `count` API keys in the store at `data_dir` (initialising it if needed),
/// in transactions of [`BATCH`] records, and writes the key strings to `out`, one a
/// line. Verifier derivation (one X25519 base-point multiplication per key) runs on
/// `threads` threads.
pub fn gen_keys(data_dir: &Path, count: usize, out: &Path, threads: usize) -> Result<(), String> {
    let started = Instant::now();
    let now = unix_now();
    let (store, _) = Store::open_or_init(data_dir, None, now).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let (mut derive_s, mut write_s) = (0.0, 0.0);
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let t = Instant::now();
        let batch = pregenerate_quiet(n, threads, |rng| {
            let key = ApiKey::generate(rng);
            let verifier = key.verifier(&DefaultBackend::default()).expect("verifier");
            let record = ApiKeyRecord {
                name: "bench".into(),
                verifier: hex::encode(verifier.as_bytes()),
                scopes: vec!["bench".into()],
                audiences: Vec::new(),
                require_otp: false,
                otp_to: None,
                created_at: now,
                last_used_at: None,
                revoked_at: None,
                expires_at: None,
                replaced_by: None,
            };
            (key, record)
        });
        derive_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let records: Vec<_> = batch.iter().map(|(k, r)| (k.id(), r.clone())).collect();
        store.put_api_keys(&records).map_err(|e| e.to_string())?;
        for (k, _) in &batch {
            writeln!(file, "{}", k.encode().as_str()).map_err(|e| e.to_string())?;
        }
        write_s += t.elapsed().as_secs_f64();
        done += n;
    }
    file.flush().map_err(|e| e.to_string())?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "created {count} keys in {total:.2} s ({:.0}/s): derive {derive_s:.2} s on {threads} threads, store + file {write_s:.2} s, {} transactions",
        count as f64 / total,
        count.div_ceil(BATCH)
    );
    println!("RESULT mode=gen-keys count={count} secs={total:.3}");
    Ok(())
}

fn pregenerate_quiet<T: Send>(n: usize, threads: usize, make: impl Fn(&mut FastRng) -> T + Sync) -> Vec<T> {
    // Same as `pregenerate`, without its progress line.
    let threads = threads.max(1);
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let make = &make;
                let k = per.min(n.saturating_sub(i * per));
                s.spawn(move || {
                    let mut rng = FastRng::from_os();
                    (0..k).map(|_| make(&mut rng)).collect::<Vec<T>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Reads up to `max` API keys from a file written by `gen-keys`.
pub fn read_keys(path: &Path, max: usize) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(max)
        .map(|l| ApiKey::parse(l.trim()).map_err(|e| format!("bad API key in {}: {e}", path.display())))
        .collect()
}

/// Fetches and checks the server key document.
pub fn server_document(addr: SocketAddr, pin: Option<&str>) -> Result<ServerKeyDocument, String> {
    let resp = http1::get_blocking(addr, "/v1/server-key", Duration::from_secs(5))?;
    if resp.status != 200 {
        return Err(format!("GET /v1/server-key: HTTP {}", resp.status));
    }
    let doc = ServerKeyDocument::parse(&resp.body).map_err(|e| format!("server key document: {e}"))?;
    if let Some(pin) = pin {
        let pin: Fingerprint = pin.parse().map_err(|e| format!("fingerprint: {e}"))?;
        doc.check_pin(&pin).map_err(|e| format!("pinned identity: {e}"))?;
    }
    Ok(doc)
}

/// Spawns `cmd --listen 127.0.0.1:PORT` (a free port picked here) `runs` times,
/// measures spawn → first `GET /healthz` 200 (polled every 100 µs), reads VmRSS
/// then, and stops the process with SIGTERM.
pub fn startup(cmd: &[String], runs: usize) -> Result<(), String> {
    let (program, args) = cmd.split_first().ok_or("startup: give the server command after --")?;
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs.max(1) {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {program}: {e}"))?;
        let result = loop {
            if let Ok(r) = http1::get_blocking(addr, "/healthz", Duration::from_secs(1)) {
                if r.status == 200 {
                    break Ok(t.elapsed());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!("server exited early: {status}"));
            }
            if t.elapsed() > Duration::from_secs(120) {
                break Err("no /healthz within 120 s".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        rss.push(vm_rss_kb(child.id()).unwrap_or(0));
        // SIGTERM: graceful shutdown, as an operator would.
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
        times.push(result?);
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t.as_secs_f64() * 1e3)).collect();
    println!(
        "start-up to first /healthz 200: median {:.1} ms over {} runs ({} ms)",
        median.as_secs_f64() * 1e3,
        times.len(),
        ms.join(", ")
    );
    println!(
        "RESULT mode=startup median_ms={:.2} min_ms={:.2} rss_kb={}",
        median.as_secs_f64() * 1e3,
        sorted[0].as_secs_f64() * 1e3,
        rss.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// VmRSS of a process, in kB.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `/metrics` until every API key has its static-static cached (the server
/// warms the cache on a background thread after start).
pub fn wait_warm(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let r = http1::get_blocking(addr, "/metrics", Duration::from_secs(5))?;
        let text = String::from_utf8_lossy(&r.body);
        let gauge = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        };
        let (keys, cached) = (gauge("onetrip_api_keys"), gauge("onetrip_static_static_cached"));
        if let (Some(k), Some(c)) = (keys, cached) {
            if c >= k {
                println!("key cache warm: {c} of {k} after {:.2} s", t.elapsed().as_secs_f64());
                println!("RESULT mode=wait-warm keys={k} secs={:.3}", t.elapsed().as_secs_f64());
                return Ok(());
            }
        }
        if t.elapsed() > timeout {
            return Err(format!("key cache not warm after {timeout:?}: {keys:?} keys, {cached:?} cached"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One handshake over HTTP/1.1 for `request`; the grant, or why not.
fn grant(
    addr: SocketAddr,
    doc: &ServerKeyDocument,
    key: &ApiKey,
    request: &ClientRequest<'_>,
    rng: &mut FastRng,
) -> Result<onetrip_protocol::TokenGrant, String> {
    let client = ClientHandshake::new(DefaultBackend::default(), key, doc, unix_now()).map_err(|e| e.to_string())?;
    let mut req = [0u8; REQUEST_LEN];
    let pending = client.start(request, unix_now(), rng, &mut req).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let resp = rt.block_on(async {
        let mut conn = http1::Conn::connect(addr).await.map_err(|e| e.to_string())?;
        conn.roundtrip(&http1::Template::new("POST", "/v1/auth", &addr.to_string(), &[]), &req).await
    })?;
    match pending.finish(&resp.body) {
        Ok(Outcome::Granted(grant)) => Ok(*grant),
        other => Err(format!("handshake not granted: HTTP {}: {other:?}", resp.status)),
    }
}

/// Gets a real token for `key` and writes an introspection JSON body with a PoP proof
/// over `POST /v1/query` and an empty body to `out`; the resource server `caller`
/// (a key with the `introspect` scope listing the token's audience) gets its own
/// token, and the two headers that authenticate the call go to `out` + `.headers`,
/// one per line (valid for the server's clock window).
pub fn introspect_body(
    addr: SocketAddr,
    key: &ApiKey,
    caller: &ApiKey,
    pin: Option<&str>,
    out: &Path,
) -> Result<(), String> {
    let doc = server_document(addr, pin)?;
    let mut rng = FastRng::from_os();
    let token = grant(addr, &doc, key, &ClientRequest::default(), &mut rng)?;
    let own =
        ClientRequest { audience: onetrip_protocol::token::SERVER_AUDIENCE, scopes: "introspect", second_factor: None };
    let caller = grant(addr, &doc, caller, &own, &mut rng)?;
    let proof =
        PopProof::sign(&token.session_key, token.token.binding(), "POST", "/v1/query", b"", unix_now(), &mut rng)
            .map_err(|e| e.to_string())?;
    let body = format!(
        "{{\"token\":\"{}\",\"pop\":\"{}\",\"method\":\"POST\",\"path\":\"/v1/query\"}}",
        token.token.to_base64().as_str(),
        proof.to_header()
    );
    let caller_proof = PopProof::sign(
        &caller.session_key,
        caller.token.binding(),
        "POST",
        "/v1/introspect",
        body.as_bytes(),
        unix_now(),
        &mut rng,
    )
    .map_err(|e| e.to_string())?;
    let headers = format!(
        "authorization: Onetrip {}\n{}: {}\n",
        caller.token.to_base64().as_str(),
        onetrip_protocol::pop::POP_HEADER,
        caller_proof.to_header()
    );
    std::fs::write(out, body).map_err(|e| format!("{}: {e}", out.display()))?;
    let headers_path = out.with_extension("headers");
    std::fs::write(&headers_path, headers).map_err(|e| format!("{}: {e}", headers_path.display()))
}
