//! Criterion benchmarks of the protocol's hot paths, on every compiled-in backend,
//! followed by a table of ratios measured in this same run:
//! server handshake / one X25519 (target ≤ 1.2 on aws-lc-rs) and token verify (< 2 µs).
//!
//! `cargo bench -p onetrip-protocol --bench handshake`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::server::Reply;
use onetrip_protocol::handshake::{ClientRequest, REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::pop::PopProof;
use onetrip_protocol::token::Claims;
use onetrip_protocol::{
    ClientHandshake, CryptoBackend, IdentityKey, Responder, Secret, ServerKeyDocument, TokenKeyring,
};
use rand_core::{CryptoRng, RngCore};

const NOW: u64 = 1_790_000_000;

/// A userspace CSPRNG stand-in (BLAKE3 XOF), as a server would use seeded from the OS.
struct BenchRng(blake3::OutputReader);
impl BenchRng {
    fn new() -> Self {
        Self(blake3::Hasher::new_derive_key("onetrip bench rng").finalize_xof())
    }
}
impl RngCore for BenchRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill(d)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(d);
        Ok(())
    }
}
impl CryptoRng for BenchRng {}

fn bench_backend<B: CryptoBackend>(c: &mut Criterion) {
    let b = B::default();
    let name = b.name();
    let mut rng = BenchRng::new();

    // One X25519 with a prepared static key: the physical floor of the server.
    let static_key = b.static_key(&Secret::random(&mut rng)).unwrap();
    let peer = b.public_key(&b.static_key(&Secret::random(&mut rng)).unwrap());
    c.bench_function(&format!("x25519/{name}"), |bench| {
        bench.iter(|| b.x25519(&static_key, black_box(&peer)).unwrap())
    });

    let mut responder = Responder::new(b.clone(), IdentityKey::generate(&mut rng), Secret::random(&mut rng));
    let entry = responder.add_key(*b"benchkey", &Secret::random(&mut rng), 0, u64::MAX).unwrap();
    let doc = ServerKeyDocument::parse(
        &responder.signed_document(NOW, onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS).unwrap(),
    )
    .unwrap();
    let api_key = ApiKey::generate(&mut rng);
    let client = ClientHandshake::new(b.clone(), &api_key, &doc, NOW).unwrap();
    let ss = responder.static_static(&entry.key_id, &api_key.verifier(&b).unwrap()).unwrap();
    let tokens = TokenKeyring::new(*b"tk01", Secret::random(&mut rng)).for_audience(b.clone(), "db").unwrap();
    let req = ClientRequest { audience: "db", scopes: "db:read", second_factor: None };
    let mut request = [0u8; REQUEST_LEN];
    client.start(&req, NOW, &mut rng, &mut request).unwrap();

    // Server: parse + one DH + cached static-static + token seal + response seal.
    c.bench_function(&format!("server_handshake/{name}"), |bench| {
        let mut response = [0u8; RESPONSE_LEN];
        bench.iter(|| {
            let opened = responder.open_request(black_box(&request), NOW).unwrap();
            let auth = opened.authenticate(&ss).unwrap();
            let session_key = Secret::random(&mut rng);
            let mut token_id = [0u8; 16];
            rng.fill_bytes(&mut token_id);
            let claims =
                Claims::new(token_id, auth.key_id(), NOW, NOW + 900, false, "db", auth.scopes(), session_key.clone())
                    .unwrap();
            let token = tokens.seal(&claims, &mut rng).unwrap();
            auth.respond(
                &Reply::Granted { token: &token, session_key: &session_key, expires_at: NOW + 900 },
                NOW,
                &mut rng,
                &mut response,
            );
            black_box(&response);
        })
    });

    // Client: build a request (ephemeral keygen + one DH), then open a response.
    c.bench_function(&format!("client_request/{name}"), |bench| {
        let mut out = [0u8; REQUEST_LEN];
        bench.iter(|| black_box(client.start(&req, NOW, &mut rng, &mut out).unwrap()))
    });
    let mut response = [0u8; RESPONSE_LEN];
    let mut fixed = BenchRng::new();
    let mut request2 = [0u8; REQUEST_LEN];
    client.start(&req, NOW, &mut fixed, &mut request2).unwrap();
    let auth = responder.open_request(&request2, NOW).unwrap().authenticate(&ss).unwrap();
    auth.respond(&Reply::ClockSkew, NOW, &mut rng, &mut response);
    c.bench_function(&format!("client_response/{name}"), |bench| {
        bench.iter_batched(
            || client.start(&req, NOW, &mut BenchRng::new(), &mut [0u8; REQUEST_LEN]).unwrap(),
            |pending| black_box(pending.finish(&response).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });

    // Token verify and PoP verify (resource-server side, in-process).
    let session_key = Secret::random(&mut rng);
    let claims =
        Claims::new([1; 16], api_key.id(), NOW, NOW + 900, false, "db", "db:read", session_key.clone()).unwrap();
    let token = tokens.seal(&claims, &mut rng).unwrap();
    c.bench_function(&format!("token_verify/{name}"), |bench| {
        bench.iter(|| black_box(tokens.verify(black_box(token.as_bytes()), NOW).unwrap()))
    });
    let proof = PopProof::sign(&session_key, token.binding(), "POST", "/v1/query", b"select 1", NOW, &mut rng).unwrap();
    c.bench_function(&format!("token_and_pop_verify/{name}"), |bench| {
        bench.iter(|| {
            black_box(
                tokens
                    .verify_request(black_box(token.as_bytes()), &proof, "POST", "/v1/query", b"select 1", NOW, 60)
                    .unwrap(),
            )
        })
    });
}

/// Reads criterion's point estimate (mean, ns) for a benchmark id.
fn mean_ns(id: &str) -> Option<f64> {
    // The running binary is target/<profile>/deps/handshake-*: its target directory is
    // where criterion wrote (a path baked in at compile time may belong to another
    // checkout that shares the target directory).
    let from_exe = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.parent()?.to_owned()));
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or(from_exe)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir.join("criterion").join(id.replace('/', "_")).join("new/estimates.json");
    let path = if path.exists() {
        path
    } else {
        let mut p = dir.join("criterion");
        for part in id.split('/') {
            p = p.join(part);
        }
        p.join("new/estimates.json")
    };
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut backends = Vec::new();
    #[cfg(feature = "aws-lc")]
    {
        bench_backend::<onetrip_protocol::backend::AwsLc>(&mut c);
        backends.push("aws-lc-rs");
    }
    #[cfg(feature = "rustcrypto")]
    {
        bench_backend::<onetrip_protocol::backend::RustCrypto>(&mut c);
        backends.push("rustcrypto");
    }
    c.final_summary();

    println!("\n== onetrip-protocol: ratios measured in this run ==");
    println!(
        "{:<12} {:>10} {:>12} {:>10} {:>11} {:>11} {:>12} {:>12}",
        "backend", "x25519", "server_hs", "hs/DH", "client_req", "client_resp", "token_verify", "token+pop"
    );
    for name in backends {
        let get = |bench: &str| mean_ns(&format!("{bench}/{name}"));
        let (Some(dh), Some(hs)) = (get("x25519"), get("server_handshake")) else {
            println!("{name}: estimates missing (run without a filter)");
            continue;
        };
        let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2} µs", v / 1000.0));
        println!(
            "{:<12} {:>10} {:>12} {:>10.2} {:>11} {:>11} {:>12} {:>12}",
            name,
            us(Some(dh)),
            us(Some(hs)),
            hs / dh,
            us(get("client_request")),
            us(get("client_response")),
            us(get("token_verify")),
            us(get("token_and_pop_verify")),
        );
    }
    if let (Some(a), Some(r)) = (mean_ns("x25519/aws-lc-rs"), mean_ns("x25519/rustcrypto")) {
        println!("x25519 rustcrypto / aws-lc-rs = {:.2}x", r / a);
    }
    println!("targets: server_hs/DH <= 1.2 on aws-lc-rs; token_verify < 2 µs");
}
