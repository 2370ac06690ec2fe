//! Reference servers on the same stack as onetrip (tokio multi-thread runtime,
//! hyper 1 HTTP/1.1 keep-alive, `TCP_NODELAY`), so that only the per-request work
//! differs:
//!
//! - `hello`: reads the POST body and answers 400 fixed bytes: the HTTP floor.
//! - `hello-dh`: the same, plus one X25519 (aws-lc-rs, onetrip's backend) per request:
//!   the composed limit (one DH on top of the HTTP floor) measured rather than added up,
//!   so it pays the same per-answer kernel costs at the same request rate as onetrip.
//! - `noise`: a snow `Noise_IK_25519_ChaChaPoly_BLAKE2s` responder: reads IK message
//!   1 (384 bytes) and answers message 2 (400 bytes, token-sized payload). Any
//!   initiator static key is accepted (no key lookup: this favours snow).
//!
//! Both print `listening on http://ADDR` first, and serve `GET /v1/server-key`
//! (the Noise responder's static public key, 32 raw bytes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use onetrip_protocol::backend::AwsLc;
use onetrip_protocol::{CryptoBackend, Secret};

use crate::rng::FastRng;
use crate::workloads::{NOISE_PARAMS, NOISE_RESPONSE_PAYLOAD};

/// Which reference server.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Fixed 400-byte answer.
    Hello,
    /// One X25519 per request, then a 400-byte answer that depends on its result.
    HelloDh,
    /// Noise IK responder.
    Noise,
}

struct Inner {
    kind: Kind,
    params: snow::params::NoiseParams,
    private: Vec<u8>,
    public: Bytes,
    dh: DhPair,
}

/// A static X25519 key and a fixed peer: `hello-dh` agrees on them once per request.
struct DhPair {
    backend: AwsLc,
    key: <AwsLc as CryptoBackend>::StaticKey,
    peer: [u8; 32],
}

impl DhPair {
    fn new() -> Result<Self, String> {
        let backend = AwsLc;
        let mut rng = FastRng::from_os();
        let key = backend.static_key(&Secret::random(&mut rng)).map_err(|e| e.to_string())?;
        let other = backend.static_key(&Secret::random(&mut rng)).map_err(|e| e.to_string())?;
        let peer = backend.public_key(&other);
        Ok(Self { backend, key, peer })
    }

    /// The 400-byte answer, its first bytes taken from the shared secret so the DH
    /// cannot be skipped.
    fn answer(&self) -> Option<Bytes> {
        let shared = self.backend.x25519(&self.key, &self.peer).ok()?;
        let mut body = HELLO.to_vec();
        body[..32].copy_from_slice(shared.expose());
        Some(Bytes::from(body))
    }
}

/// Runs a reference server until killed.
pub fn serve(kind: Kind, listen: SocketAddr) -> Result<(), String> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(|e| format!("{e:?}"))?;
    let keys = snow::Builder::new(params.clone()).generate_keypair().map_err(|e| e.to_string())?;
    let inner =
        Arc::new(Inner { kind, params, private: keys.private, public: Bytes::from(keys.public), dh: DhPair::new()? });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on http://{local}");
        if matches!(kind, Kind::Noise) {
            println!("noise static public key: {}", hex::encode(&inner.public));
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            let inner = inner.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(inner.clone(), req));
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/v1/server-key" {
        return Ok(octets(StatusCode::OK, inner.public.clone()));
    }
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return Ok(octets(StatusCode::OK, Bytes::from_static(b"ok")));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(octets(StatusCode::BAD_REQUEST, Bytes::new())),
    };
    Ok(match inner.kind {
        Kind::Hello => octets(StatusCode::OK, Bytes::from_static(&HELLO)),
        Kind::HelloDh => match inner.dh.answer() {
            Some(out) => octets(StatusCode::OK, out),
            None => octets(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()),
        },
        Kind::Noise => match respond_noise(&inner, &body) {
            Ok(out) => octets(StatusCode::OK, Bytes::from(out)),
            Err(_) => octets(StatusCode::BAD_REQUEST, Bytes::new()),
        },
    })
}

/// The hello body: 400 bytes, the size of an onetrip response.
static HELLO: [u8; onetrip_protocol::RESPONSE_LEN] = [b'h'; onetrip_protocol::RESPONSE_LEN];

/// IK responder: read message 1, write message 2 with a token-sized payload.
fn respond_noise(inner: &Inner, msg1: &[u8]) -> Result<Vec<u8>, snow::Error> {
    let mut hs = snow::Builder::new(inner.params.clone()).local_private_key(&inner.private)?.build_responder()?;
    let mut payload = [0u8; onetrip_protocol::REQUEST_LEN];
    hs.read_message(msg1, &mut payload)?;
    let token = [0x74; NOISE_RESPONSE_PAYLOAD];
    let mut out = vec![0u8; onetrip_protocol::RESPONSE_LEN];
    let n = hs.write_message(&token, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn octets(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

/// Measures one Noise IK responder step in-process (read 1 + write 2), for `inproc`.
pub fn noise_pair() -> Result<(impl FnMut() -> bool, impl FnMut() -> bool), String> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(|e| format!("{e:?}"))?;
    let server = snow::Builder::new(params.clone()).generate_keypair().map_err(|e| e.to_string())?;
    let client = snow::Builder::new(params.clone()).generate_keypair().map_err(|e| e.to_string())?;
    let inner = Inner {
        kind: Kind::Noise,
        params: params.clone(),
        private: server.private,
        public: server.public.into(),
        dh: DhPair::new()?,
    };
    let make_msg1 = {
        let (params, public, cpriv) = (params.clone(), inner.public.clone(), client.private.clone());
        move || -> Result<(snow::HandshakeState, Vec<u8>), snow::Error> {
            let mut hs = snow::Builder::new(params.clone())
                .local_private_key(&cpriv)?
                .remote_public_key(&public)?
                .build_initiator()?;
            let mut out = vec![0u8; onetrip_protocol::REQUEST_LEN];
            let n = hs.write_message(&[0x5a; crate::workloads::NOISE_REQUEST_PAYLOAD], &mut out)?;
            out.truncate(n);
            Ok((hs, out))
        }
    };
    let (_, msg1) = make_msg1().map_err(|e| e.to_string())?;
    let responder = move || respond_noise(&inner, &msg1).is_ok();
    let initiator = move || make_msg1().is_ok();
    Ok((responder, initiator))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_dh_answers_400_bytes_that_carry_the_agreement() {
        let pair = DhPair::new().expect("keys");
        let answer = pair.answer().expect("agreement");
        assert_eq!(answer.len(), onetrip_protocol::RESPONSE_LEN);
        let shared = pair.backend.x25519(&pair.key, &pair.peer).expect("agreement");
        assert_eq!(&answer[..32], shared.expose(), "the DH result is in the body, so it cannot be skipped");
        assert!(answer[32..].iter().all(|b| *b == b'h'));
    }
}
