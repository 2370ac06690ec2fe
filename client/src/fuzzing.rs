//! The property behind the client's fuzz target `client_http` (`fuzz/fuzz_targets/`):
//! a hostile or broken server. The real client (pooled hyper transport, pinned trust,
//! handshake, OTP calls) talks to a listener on 127.0.0.1 that answers one kind of
//! request with the fuzzer's bytes and every other one genuinely. Every call must end
//! in a typed error or a value within its timeout, never a panic, and bytes the
//! server's keys did not make never yield a token. Compiled only with `fuzzing`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::{REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::{
    ApiKey, Claims, DefaultBackend, Fingerprint, IdentityKey, KeyId, RequestError, Responder, Secret, StaticStatic,
    TokenKeyring, TokenVerifier,
};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::system_clock as unix_now;
use crate::{Client, Error, NewVerification, OtpChannel};

/// The request whose answer is the fuzzer's bytes (the input's first byte picks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// `GET /v1/server-key`.
    Document,
    /// `POST /v1/auth` (after a genuine document).
    Auth,
    /// `POST /v1/otp/verifications` (after a genuine token).
    OtpCreate,
    /// `POST /v1/otp/verifications/{id}/check` (after a genuine token).
    OtpCheck,
}

const HOSTILE: [Hostile; 4] = [Hostile::Document, Hostile::Auth, Hostile::OtpCreate, Hostile::OtpCheck];

/// Longest request head the listener reads (the client's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
/// Each call's bound: the client's own timeout is far shorter, so reaching this is a
/// hang in the client (a finding).
const CALL_BOUND: Duration = Duration::from_secs(10);

/// The genuine server: one identity, one handshake key, one registered API key.
/// The key's static-static value and the token sealer are made once: every input
/// would otherwise pay two more X25519 operations.
struct Genuine {
    responder: Responder,
    key_id: KeyId,
    static_static: StaticStatic,
    sealer: TokenVerifier,
}

/// What the listener answers for the input being run.
struct Script {
    hostile: Hostile,
    bytes: Vec<u8>,
    /// The hostile answer went out: the genuine steps before it worked.
    served: bool,
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    key: ApiKey,
    script: Arc<Mutex<Script>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime for the fuzz harness");
        let backend = DefaultBackend::default();
        let now = unix_now();
        let mut responder =
            Responder::new(backend, IdentityKey::from_seed(&Secret::random(&mut OsRng)), Secret::random(&mut OsRng));
        let server_key_id = *b"fuzzkey1";
        responder
            .add_key(server_key_id, &Secret::random(&mut OsRng), now.saturating_sub(3600), now + 10 * 86_400)
            .expect("key");
        let key = ApiKey::generate(&mut OsRng);
        let fingerprint = responder.identity().fingerprint();
        let verifier = key.verifier(&backend).expect("verifier");
        let genuine = Arc::new(Genuine {
            static_static: responder.static_static(&server_key_id, &verifier).expect("static-static"),
            key_id: key.id(),
            sealer: TokenKeyring::new(*b"tk01", Secret::random(&mut OsRng))
                .for_audience(backend, "db")
                .expect("sealer"),
            responder,
        });
        let script = Arc::new(Mutex::new(Script { hostile: Hostile::Document, bytes: Vec::new(), served: false }));
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", 0))).expect("listener on 127.0.0.1");
        let addr = listener.local_addr().expect("listener address");
        let (g, s) = (genuine.clone(), script.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, g.clone(), s.clone()));
            }
        });
        Harness { runtime, addr, fingerprint, key, script }
    })
}

/// Answers requests on one connection until the client closes it or the hostile
/// answer has been sent (then the connection is closed: the bytes may be anything).
async fn serve_connection(mut stream: TcpStream, genuine: Arc<Genuine>, script: Arc<Mutex<Script>>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let hostile = {
            let mut script = script.lock().unwrap_or_else(|p| p.into_inner());
            let hit = match script.hostile {
                Hostile::Document => path == "/v1/server-key",
                Hostile::Auth => path == "/v1/auth",
                Hostile::OtpCreate => path == "/v1/otp/verifications",
                Hostile::OtpCheck => path.ends_with("/check"),
            };
            script.served |= hit;
            hit.then(|| script.bytes.clone())
        };
        if let Some(bytes) = hostile {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            return;
        }
        if stream.write_all(&genuine.answer(&path, &body)).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body); `None` at EOF or on anything
/// the well-behaved client under test would not send.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let end = head_end + 4 + length;
    while buf.len() < end {
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end + 4..end].to_vec();
    buf.drain(..end);
    Some((head, body))
}

fn http_answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Genuine {
    /// The answer an onetrip server would give (the OTP API is only ever hostile).
    fn answer(&self, path: &str, body: &[u8]) -> Vec<u8> {
        let now = unix_now();
        match path {
            "/v1/server-key" => {
                match self.responder.signed_document(now, onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS)
                {
                    Ok(doc) => http_answer("200 OK", "application/octet-stream", &doc),
                    Err(_) => http_answer("503 Service Unavailable", "text/plain", b"no document"),
                }
            }
            "/v1/auth" if body.len() == REQUEST_LEN => {
                http_answer("200 OK", "application/octet-stream", &self.handshake(body, now))
            }
            _ => http_answer("404 Not Found", "text/plain", b"not found"),
        }
    }

    /// The server side of one handshake: a grant for the registered key.
    fn handshake(&self, request: &[u8], now: u64) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        let opened = match self.responder.open_request(request, now) {
            Ok(opened) => opened,
            Err(RequestError::UnknownServerKey) => {
                let _ = self.responder.server_key_changed(request, now, &mut out);
                return out;
            }
            Err(_) => return out,
        };
        // One handshake key, so a request that opened was made for it.
        let dummy;
        let ss = if opened.key_id() == Some(self.key_id) {
            &self.static_static
        } else {
            dummy = self.responder.dummy_static_static(opened.server_key_id(), opened.key_id().as_ref());
            &dummy
        };
        let auth = match opened.authenticate(ss) {
            Ok(auth) => auth,
            Err(rejected) => {
                rejected.respond(now, &mut OsRng, &mut out);
                return out;
            }
        };
        let session_key = Secret::random(&mut OsRng);
        let mut token_id = [0u8; 16];
        OsRng.fill_bytes(&mut token_id);
        let expires_at = now + 900;
        let claims = Claims::new(token_id, auth.key_id(), now, expires_at, false, "db", "otp", session_key.clone());
        let token = claims.and_then(|c| self.sealer.seal(&c, &mut OsRng));
        match token {
            Ok(token) => auth.respond(
                &Reply::Granted { token: &token, session_key: &session_key, expires_at },
                now,
                &mut OsRng,
                &mut out,
            ),
            Err(_) => auth.respond(&Reply::ServerError, now, &mut OsRng, &mut out),
        }
        out
    }
}

/// `client_http`: byte 0 picks the request to answer with the rest of the input.
pub fn client_http(data: &[u8]) {
    let h = harness();
    let (selector, bytes) = data.split_first().map_or((0, &[][..]), |(s, rest)| (*s, rest));
    let hostile = HOSTILE[usize::from(selector) % HOSTILE.len()];
    *h.script.lock().unwrap_or_else(|p| p.into_inner()) = Script { hostile, bytes: bytes.to_vec(), served: false };
    let _runtime = h.runtime.enter();
    let client = Client::builder()
        .server(format!("http://{}", h.addr))
        .api_key(&h.key)
        .pin(h.fingerprint)
        .audience("db")
        .timeout(Duration::from_millis(500))
        .retries(1, Duration::from_millis(1))
        .build()
        .expect("client");
    let outcome = h.runtime.block_on(tokio::time::timeout(CALL_BOUND, async {
        match hostile {
            Hostile::Document | Hostile::Auth => client.token().await.map(|_| ()),
            Hostile::OtpCreate => {
                client.otp_create(&NewVerification::new(OtpChannel::Email, "fuzz@example.com")).await.map(|_| ())
            }
            Hostile::OtpCheck => client.otp_check("00112233445566778899aabbccddeeff", "123456").await.map(|_| ()),
        }
    }));
    let result: Result<(), Error> =
        outcome.unwrap_or_else(|_| panic!("a {hostile:?} call took more than {CALL_BOUND:?}"));
    let served = h.script.lock().unwrap_or_else(|p| p.into_inner()).served;
    assert!(served, "the {hostile:?} request never came (the genuine steps before it failed: {result:?})");
    if matches!(hostile, Hostile::Document | Hostile::Auth) {
        // Neither a document nor an answer can be forged without the server's keys.
        assert!(result.is_err(), "a token from {hostile:?} bytes the server never made");
    }
    // An OTP answer may be anything the server says; the property is a typed result.
    if let Err(e) = result {
        assert!(!e.to_string().is_empty(), "an error without a message");
    }
}
