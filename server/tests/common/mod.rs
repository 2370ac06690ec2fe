//! Test harness: runs the real `onetrip` binary on 127.0.0.1 with an ephemeral port
//! and a temporary data directory, kills it (by pid) on drop, and speaks raw HTTP/1.1
//! so every byte on the wire is visible.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN};
use onetrip_protocol::{AwaitingResponse, ClientHandshake, DefaultBackend, Fingerprint, Outcome, ServerKeyDocument};

pub const BIN: &str = env!("CARGO_BIN_EXE_onetrip");

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A running `onetrip serve`.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub fingerprint: Fingerprint,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Server::start_in(&dir, extra).expect("server starts");
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir`; `Err(stderr)` if it exits instead of listening.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::start_with_env(dir, extra, &[])
    }

    /// [`Server::start_in`] with extra environment variables (secrets such as
    /// `ONETRIP_WEBHOOK_SECRET` are only read from the environment).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        let stderr_path = dir.with_extension(format!("stderr.{}", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir)
            // An ephemeral port unless the caller chose one (a replica restarted
            // behind a load balancer comes back on its own port).
            .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(extra)
            .env_remove("ONETRIP_PASSPHRASE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut port, mut fingerprint) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while port.is_none() || fingerprint.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("server did not start in 20 s".into());
            }
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) =
                        line.split("listening on http://").nth(1).or(line.split("listening on https://").nth(1))
                    {
                        port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                    }
                    if let Some(fp) = line.strip_prefix("identity fingerprint: ") {
                        fingerprint = fp.trim().parse().ok();
                    }
                }
                _ => {
                    let _ = child.wait();
                    return Err(std::fs::read_to_string(&stderr_path).unwrap_or_default());
                }
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            port: port.unwrap(),
            fingerprint: fingerprint.unwrap(),
            data_dir: dir.to_owned(),
            _tmp: None,
            stderr_path,
        })
    }

    /// Runs `onetrip <args> --data-dir DIR`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.data_dir, args)
    }

    /// Creates a key through the CLI and returns (key, id hex).
    pub fn create_key(&self, args: &[&str]) -> (ApiKey, String) {
        create_key(&self.data_dir, args)
    }

    pub fn kill9(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    /// The code the console channel printed for verification / operation `id` (hex),
    /// latest first; waits up to 5 s for it.
    pub fn console_code(&self, id: &str) -> String {
        let marker = format!("(operation {id}): ");
        for _ in 0..250 {
            // Complete lines only: the server may be writing the last one right now.
            let text = self.stderr();
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            if let Some(line) = complete.lines().rev().find(|l| l.contains(&marker)) {
                return line.rsplit(": ").next().unwrap().trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no console code for {id}:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http(self.port, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http(self.port, "POST", path, headers, body)
    }

    pub fn document(&self) -> ServerKeyDocument {
        let doc = ServerKeyDocument::parse(&self.get("/v1/server-key").body).unwrap();
        doc.check_pin(&self.fingerprint).unwrap();
        doc
    }

    /// Builds a request for `key`; returns its bytes and the pending client state.
    pub fn request(&self, key: &ApiKey, req: &ClientRequest<'_>) -> ([u8; REQUEST_LEN], AwaitingResponse) {
        let client = ClientHandshake::new(DefaultBackend::default(), key, &self.document(), now()).unwrap();
        let mut out = [0u8; REQUEST_LEN];
        let pending = client.start(req, now(), &mut rand_core::OsRng, &mut out).unwrap();
        (out, pending)
    }

    /// One full handshake.
    pub fn handshake(&self, key: &ApiKey, req: &ClientRequest<'_>) -> Outcome {
        let (request, pending) = self.request(key, req);
        let resp = self.post("/v1/auth", &[("content-type", "application/octet-stream")], &request);
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        pending.finish(&resp.body).unwrap()
    }

    pub fn metric(&self, name: &str) -> u64 {
        metric_in(&String::from_utf8(self.get("/metrics").body).unwrap(), name)
    }
}

/// The value of metric `name` (with its labels) in a `/metrics` text.
pub fn metric_in(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

pub fn cli(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).arg("--data-dir").arg(data_dir).env_remove("ONETRIP_PASSPHRASE").output().unwrap()
}

pub fn create_key(data_dir: &Path, args: &[&str]) -> (ApiKey, String) {
    let mut full = vec!["keys", "create", "--json"];
    full.extend_from_slice(args);
    let out = cli(data_dir, &full);
    assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = ApiKey::parse(v["api_key"].as_str().unwrap()).unwrap();
    (key, v["id"].as_str().unwrap().to_owned())
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The bytes of one HTTP/1.1 request, head and body together (one write, so a
/// small body never waits for a delayed ACK).
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n", body.len());
    if close {
        head += "connection: close\r\n";
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// Reads one response (status, body) from a keep-alive connection.
pub fn read_answer(reader: &mut impl BufRead) -> (u16, Vec<u8>) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (status.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), body)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    // A server may answer (413) and close before a large body is sent: keep the answer.
    let _ = s.write_all(&request_bytes(method, path, headers, body, true));
    read_response(&mut s)
}

/// The `Authorization` and `Onetrip-PoP` values for a request signed with `grant`'s
/// session key (PoP over method, path and body).
pub fn pop_headers(grant: &onetrip_protocol::TokenGrant, method: &str, path: &str, body: &[u8]) -> (String, String) {
    pop_headers_at(grant, method, path, body, now())
}

/// [`pop_headers`] with the proof stamped `at` (a server on a test clock).
pub fn pop_headers_at(
    grant: &onetrip_protocol::TokenGrant,
    method: &str,
    path: &str,
    body: &[u8],
    at: u64,
) -> (String, String) {
    let proof = onetrip_protocol::PopProof::sign(
        &grant.session_key,
        grant.token.binding(),
        method,
        path,
        body,
        at,
        &mut rand_core::OsRng,
    )
    .unwrap();
    (format!("Onetrip {}", &*grant.token.to_base64()), proof.to_header())
}

/// A request signed with `grant`'s session key (PoP over method, path and body).
pub fn signed(port: u16, grant: &onetrip_protocol::TokenGrant, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let (auth, pop) = pop_headers(grant, method, path, body);
    http(port, method, path, &[("authorization", &auth), (onetrip_protocol::pop::POP_HEADER, &pop)], body)
}

/// A server on HTTPS (a fresh self-signed certificate) in `tmp/data`, and the CA to
/// trust it with.
pub fn start_tls(tmp: &Path) -> (Server, PathBuf, rustls_pki_types::CertificateDer<'static>) {
    let (cert, key_pem, ca) = self_signed(tmp);
    let dir = tmp.join("data");
    let server =
        Server::start_in(&dir, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key_pem.to_str().unwrap()])
            .unwrap();
    (server, dir, ca)
}

/// One handshake over HTTPS; the token, or a panic naming the outcome.
pub fn grant_over_tls(
    server: &Server,
    ca: &rustls_pki_types::CertificateDer<'static>,
    key: &ApiKey,
    request: &ClientRequest<'_>,
) -> onetrip_protocol::TokenGrant {
    let doc = ServerKeyDocument::parse(&https(server.port, ca, "GET", "/v1/server-key", &[], b"").body).unwrap();
    let client = ClientHandshake::new(DefaultBackend::default(), key, &doc, now()).unwrap();
    let mut req = [0u8; REQUEST_LEN];
    let pending = client.start(request, now(), &mut rand_core::OsRng, &mut req).unwrap();
    match pending.finish(&https(server.port, ca, "POST", "/v1/auth", &[], &req).body).unwrap() {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token over TLS, got {other:?}"),
    }
}

/// A token for the server's own audience (`/v1/*` calls) with `scopes`.
pub fn own_grant(server: &Server, key: &ApiKey, scopes: &str) -> onetrip_protocol::TokenGrant {
    match server.handshake(key, &ClientRequest { audience: "onetrip", scopes, second_factor: None }) {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token for audience onetrip, got {other:?}"),
    }
}

pub fn read_response(s: &mut impl Read) -> HttpResponse {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived (the server closed with unread input).
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response failed: {e}"),
        }
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    HttpResponse { status, headers, body: raw[split + 4..].to_vec() }
}

/// A self-signed certificate for `localhost`: (cert PEM path, key PEM path, DER).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf, rustls_pki_types::CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().clone())
}

/// One HTTPS request to 127.0.0.1:`port` (SNI `localhost`), trusting only `ca`.
pub fn https(
    port: u16,
    ca: &rustls_pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    tls.write_all(&msg).unwrap();
    read_response(&mut tls)
}

/// A connection to 127.0.0.1:`port` from the loopback address `source` (Linux routes
/// all of 127.0.0.0/8 to `lo`), so a test can play several clients that per-IP limits
/// tell apart. `recv_buffer` shrinks the socket's receive buffer before connecting.
pub fn connect_from(source: std::net::Ipv4Addr, port: u16, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        socket.bind((source, 0).into())?;
        let connect = socket.connect(([127, 0, 0, 1], port).into());
        let stream = tokio::time::timeout(Duration::from_secs(5), connect).await??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// `GET path` on a fresh connection from `source`; the status, or why there was none
/// within `limit` (connect, write and read together).
pub fn get_from(source: std::net::Ipv4Addr, port: u16, path: &str, limit: Duration) -> Result<u16, String> {
    let started = Instant::now();
    let mut s = connect_from(source, port, None).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(&request_bytes("GET", path, &[], b"", true)).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {} bytes", raw.len())),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer after {:?}: {e}", started.elapsed())),
        }
    }
    Ok(parse_response(&raw).status)
}
