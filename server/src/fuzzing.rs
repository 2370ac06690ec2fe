//! The properties behind the server's fuzz targets (`fuzz/fuzz_targets/http_server.rs`,
//! `otp_api_json.rs`): the real router and handlers behind hyper's HTTP/1.1 parser,
//! fed through an in-memory duplex pipe (no sockets). Compiled only with `fuzzing`.
//!
//! One process-wide harness holds a real store (under `/dev/shm` when present: every
//! OTP step is a durable transaction), an API key with the `otp` scope and a token
//! for it. A panic anywhere in hyper or a handler unwinds into the fuzzer, because
//! the connection is driven on the fuzzing thread, not in a spawned task.

use std::sync::OnceLock;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::{ClientHandshake, DefaultBackend, Outcome, PopProof, ServerKeyDocument, TokenGrant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::{self, AdminRequest};
use crate::config::Settings;
use crate::http::{route, ConnInfo};
use crate::shared::MemoryShared;
use crate::state::{unix_now, AppState};
use crate::store::Store;

/// Most response bytes read back per input: the server must not answer a bounded
/// request with unbounded output.
const MAX_OUTPUT: usize = 1 << 20;

struct Harness {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    grant: TokenGrant,
    _dir: std::path::PathBuf,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = base.join(format!("onetrip-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = unix_now();
        let (store, _) = Store::open_or_init(&dir, None, now).expect("fuzz store");
        let mut settings = Settings::defaults(dir.clone());
        settings.auth_rate_per_ip = u64::MAX;
        settings.otp.api_rate_per_ip = u64::MAX;
        // Every fuzz input is a call from one key: at the default 200/s the handlers
        // behind the per-key limit would only ever see 429s.
        settings.otp.api_rate_per_key = u64::MAX;
        settings.body_timeout_ms = 200;
        settings.header_timeout_ms = 200;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime for the fuzz harness");
        let state =
            runtime.block_on(AppState::new(settings, store.into_backend(), MemoryShared::new(100_000))).expect("state");
        // The server refuses stamps in its start second (an earlier run may have
        // accepted them): like `serve`, answer nothing until the clock has left it.
        runtime.block_on(crate::replay_guard::wait_past_start(&state));
        let now = unix_now();
        let created = runtime
            .block_on(admin::execute(
                &*state.store,
                Some(&state),
                AdminRequest::KeysCreate {
                    name: "fuzz".into(),
                    scopes: vec!["otp".into()],
                    audiences: vec![],
                    require_otp: false,
                    otp_to: None,
                },
                &admin::Actor::this_process(),
            ))
            .expect("fuzz key");
        let key = onetrip_protocol::ApiKey::parse(created["api_key"].as_str().expect("key string")).expect("key");
        let doc = ServerKeyDocument::parse(&state.handshake.load().document).expect("document");
        let client = ClientHandshake::new(DefaultBackend::default(), &key, &doc, now).expect("client");
        let mut request = [0u8; REQUEST_LEN];
        let pending =
            client.start(&ClientRequest::default(), now, &mut rand_core::OsRng, &mut request).expect("request");
        let mut response = [0u8; RESPONSE_LEN];
        runtime.block_on(crate::handshake::handle_auth(&state, &request, now, &mut response)).expect("handshake");
        let Ok(Outcome::Granted(grant)) = pending.finish(&response) else { panic!("the fuzz key got no token") };
        Harness { runtime, state, grant: *grant, _dir: dir }
    })
}

/// Serves `input` as raw bytes on one HTTP/1.1 connection and returns everything
/// the server wrote back. Panics (a finding) when the server's output is unbounded.
fn serve_raw(h: &Harness, input: &[u8]) -> Vec<u8> {
    h.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let state = h.state.clone();
        let info = ConnInfo { peer: std::net::IpAddr::from([127, 0, 0, 1]), tls: false };
        let service = service_fn(move |req| route(state.clone(), req, info));
        let mut builder = http1::Builder::new();
        // The input ends with EOF right after the last byte: without half-close, hyper
        // would drop a request whose handler is still running (an OTP store write).
        builder.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_millis(200)).half_close(true);
        let conn = builder.serve_connection(TokioIo::new(server), service);
        let (mut rd, mut wr) = tokio::io::split(client);
        let input = input.to_vec();
        let write = async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            // Keep the write half alive until the server is done: dropping it early is
            // a different (and also fine) case the input's own truncation covers.
            wr
        };
        let read = async move {
            let mut out = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        assert!(out.len() <= MAX_OUTPUT, "more than {MAX_OUTPUT} bytes of output for one input");
                    }
                }
            }
            out
        };
        let served = async move {
            let _ = conn.await;
        };
        let bounded = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let (_, _w, out) = tokio::join!(served, write, read);
            out
        });
        bounded.await.expect("one connection took more than 10 s")
    })
}

/// Checks every response in `output`: a status line, a Content-Length body for every
/// 4xx/5xx, JSON or problem+json bodies for JSON endpoints, and no 500.
fn check_responses(output: &[u8]) {
    let mut rest = output;
    while !rest.is_empty() {
        let Some(head_end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("a response without a complete head: {:?}", String::from_utf8_lossy(rest));
        };
        let head = std::str::from_utf8(&rest[..head_end]).expect("response head is ASCII");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        // hyper answers an HTTP/1.0 request in kind.
        assert!(
            status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
            "bad status line {status_line:?}"
        );
        let status: u16 = status_line.get(9..12).and_then(|s| s.parse().ok()).expect("status code");
        assert_ne!(status, 500, "internal server error: {head}");
        let mut length = None;
        let mut content_type = "";
        for line in lines {
            let (k, v) = line.split_once(':').expect("header line");
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
            if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim();
            }
        }
        let body_start = head_end + 4;
        let length = length.unwrap_or(0);
        let body = &rest[body_start..(body_start + length).min(rest.len())];
        if content_type.contains("json") {
            let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
            if content_type == "application/problem+json" {
                assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "problem without a code: {v}");
                assert_eq!(v["status"].as_u64(), Some(u64::from(status)), "problem status differs: {v}");
            }
        }
        rest = &rest[(body_start + length).min(rest.len())..];
    }
}

/// `http_server`: arbitrary bytes as one HTTP/1.1 connection to the real router
/// (handshake, token, OTP, metrics and every other endpoint). Never a panic, never a
/// 500, every answer well formed, output bounded.
pub fn http_server(data: &[u8]) {
    let h = harness();
    let out = serve_raw(h, data);
    check_responses(&out);
}

/// The OTP endpoints `otp_api_json` aims at: the first input byte picks one.
const OTP_ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1/otp/verifications"),
    ("POST", "/v1/otp/verifications/{id}/check"),
    ("POST", "/v1/otp/verifications/{id}/resend"),
    ("POST", "/v1/otp/verifications/{id}/cancel"),
    ("GET", "/v1/otp/verifications/{id}"),
    ("POST", "/v1/otp/totp"),
];

/// `otp_api_json`: arbitrary JSON bodies, correctly signed with the harness token,
/// into the OTP API. Layout: byte 0 picks the endpoint, byte 1 picks the id (a
/// verification the harness created, or a random one), the rest is the body.
/// Every answer is JSON or problem+json with a stable code, never a 500.
pub fn otp_api_json(data: &[u8]) {
    let h = harness();
    let (method, template) = OTP_ENDPOINTS[usize::from(data.first().copied().unwrap_or(0)) % OTP_ENDPOINTS.len()];
    let id = match data.get(1).copied().unwrap_or(0) % 4 {
        0 => "0123456789abcdef0123456789abcdef".to_owned(),
        _ => known_verification(h),
    };
    let path = template.replace("{id}", &id);
    let body = data.get(2..).unwrap_or_default();
    let proof = PopProof::sign(
        &h.grant.session_key,
        h.grant.token.binding(),
        method,
        &path,
        body,
        unix_now(),
        &mut rand_core::OsRng,
    )
    .expect("proof");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: fuzz\r\ncontent-type: application/json\r\ncontent-length: {}\r\nauthorization: Onetrip {}\r\nonetrip-pop: {}\r\n\r\n",
        body.len(),
        &*h.grant.token.to_base64(),
        proof.to_header()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let out = serve_raw(h, &request);
    check_responses(&out);
    let status = out.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse::<u16>().ok());
    assert!(
        matches!(status, Some(200 | 201 | 400 | 403 | 404 | 409 | 413 | 429)),
        "unexpected status {status:?} for a signed OTP request: {}",
        String::from_utf8_lossy(&out)
    );
}

/// The id of a pending verification created by the harness (renewed when used up).
fn known_verification(h: &Harness) -> String {
    static ID: std::sync::Mutex<Option<(String, u64)>> = std::sync::Mutex::new(None);
    let mut slot = ID.lock().unwrap_or_else(|p| p.into_inner());
    let now = unix_now();
    if let Some((id, at)) = slot.as_ref() {
        if now < at + 5 {
            return id.clone();
        }
    }
    let new = crate::otp::service::NewVerification {
        owner: *h.grant_key_id().as_bytes(),
        owner_name: "fuzz".into(),
        purpose: crate::otp::Purpose::Api,
        channel: onetrip_protocol::Channel::Console,
        to: format!("fuzz-{now}"),
        policy: crate::otp::Policy::default(),
        locale: None,
    };
    let id = match h.runtime.block_on(crate::otp::service::create(&h.state, new, now)) {
        Ok(v) => hex::encode(v.id),
        Err(_) => "fedcba9876543210fedcba9876543210".to_owned(),
    };
    *slot = Some((id.clone(), now));
    id
}

impl Harness {
    fn grant_key_id(&self) -> onetrip_protocol::KeyId {
        let verifier = self.state.token_verifier(&self.state.settings.default_audience).expect("verifier");
        verifier.verify(self.grant.token.as_bytes(), unix_now()).expect("harness token").api_key_id
    }
}
