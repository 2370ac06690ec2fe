//! In-process rates, one thread: X25519 on both backends, token verify, token + PoP
//! verify (what a resource server pays per request), and the snow Noise IK responder
//! and initiator steps. Each is timed for a fixed wall time after a short warm-up.

use std::hint::black_box;
use std::time::{Duration, Instant};

use onetrip_protocol::backend::{AwsLc, RustCrypto};
use onetrip_protocol::pop::PopProof;
use onetrip_protocol::token::Claims;
use onetrip_protocol::{CryptoBackend, KeyId, Secret, TokenKeyring};

use crate::rng::FastRng;

/// Mean ns per call of `f`, run for about `time`.
fn ns_per_op(time: Duration, mut f: impl FnMut() -> bool) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < time / 5 {
        black_box(f());
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < time {
        for _ in 0..64 {
            black_box(f());
        }
        n += 64;
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn x25519_ns<B: CryptoBackend>(time: Duration, rng: &mut FastRng) -> Result<f64, String> {
    let b = B::default();
    let sk = b.static_key(&Secret::random(rng)).map_err(|e| e.to_string())?;
    let peer = b.public_key(&b.static_key(&Secret::random(rng)).map_err(|e| e.to_string())?);
    Ok(ns_per_op(time, || b.x25519(&sk, black_box(&peer)).is_ok()))
}

/// Runs every measurement and prints one `RESULT mode=inproc` line.
pub fn run(time: Duration) -> Result<(), String> {
    let mut rng = FastRng::from_os();
    let now = crate::workloads::unix_now();
    let dh_aws = x25519_ns::<AwsLc>(time, &mut rng)?;
    let dh_rc = x25519_ns::<RustCrypto>(time, &mut rng)?;

    let tokens =
        TokenKeyring::new(*b"tk01", Secret::random(&mut rng)).for_audience(AwsLc, "db").map_err(|e| e.to_string())?;
    let session_key = Secret::random(&mut rng);
    let claims =
        Claims::new([1; 16], KeyId::from_bytes([2; 16]), now, now + 900, false, "db", "db:read", session_key.clone())
            .map_err(|e| e.to_string())?;
    let token = tokens.seal(&claims, &mut rng).map_err(|e| e.to_string())?;
    let verify = ns_per_op(time, || tokens.verify(black_box(token.as_bytes()), now).is_ok());
    let proof = PopProof::sign(&session_key, token.binding(), "POST", "/v1/query", b"select 1", now, &mut rng)
        .map_err(|e| e.to_string())?;
    let verify_pop = ns_per_op(time, || {
        tokens.verify_request(black_box(token.as_bytes()), &proof, "POST", "/v1/query", b"select 1", now, 60).is_ok()
    });
    let (responder, initiator) = crate::servers::noise_pair()?;
    let noise_resp = ns_per_op(time, responder);
    let noise_init = ns_per_op(time, initiator);

    let line = |name: &str, ns: f64| println!("{name:<34} {:>10.2} µs  {:>12.0}/s", ns / 1000.0, 1e9 / ns);
    line("x25519 aws-lc-rs", dh_aws);
    line("x25519 rustcrypto (pure Rust)", dh_rc);
    line("token verify (aws-lc-rs)", verify);
    line("token + PoP verify (aws-lc-rs)", verify_pop);
    line("snow IK responder (read 1, write 2)", noise_resp);
    line("snow IK initiator (write 1)", noise_init);
    println!(
        "RESULT mode=inproc x25519_awslc_ns={dh_aws:.1} x25519_rustcrypto_ns={dh_rc:.1} token_verify_ns={verify:.1} \
         token_pop_verify_ns={verify_pop:.1} snow_responder_ns={noise_resp:.1} snow_initiator_ns={noise_init:.1}"
    );
    Ok(())
}
