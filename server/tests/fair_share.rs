//! One tenant at full speed against everyone else: its handshakes are limited per key
//! before they reach the replay cache, so another key's handshakes keep succeeding
//! and nothing fails with `server_error`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

#[test]
fn one_key_at_full_speed_cannot_make_another_keys_handshake_fail() {
    let server = Arc::new(Server::start(&["--auth-rate-per-key", "40"]));
    let (noisy, _) = server.create_key(&["--name", "noisy"]);
    let (quiet, _) = server.create_key(&["--name", "quiet"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (granted, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let hammers: Vec<_> = (0..3)
        .map(|_| {
            let (server, noisy, stop) = (Arc::clone(&server), noisy.clone(), Arc::clone(&stop));
            let (granted, limited) = (Arc::clone(&granted), Arc::clone(&limited));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match server.handshake(&noisy, &ClientRequest::default()) {
                        Outcome::Granted(_) => granted.fetch_add(1, Ordering::Relaxed),
                        Outcome::RateLimited { retry_after_secs: 1 } => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("the noisy key got {other:?}"),
                    };
                }
            })
        })
        .collect();
    // Wait until the noisy key is being limited, then the quiet key asks.
    let started = Instant::now();
    while limited.load(Ordering::Relaxed) < 20 && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..30 {
        let outcome = server.handshake(&quiet, &ClientRequest::default());
        assert!(matches!(outcome, Outcome::Granted(_)), "quiet handshake {i} got {outcome:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().unwrap();
    }
    let (granted, limited) = (granted.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    let seconds = started.elapsed().as_secs() + 1;
    assert!(limited >= 20, "the noisy key was never limited ({granted} granted)");
    assert!(granted <= 40 * (seconds + 1), "{granted} granted in about {seconds} s with a limit of 40/s");
    assert_eq!(server.metric("onetrip_handshakes_total{status=\"server_error\"}"), 0);
}

/// Sends `n` requests as fast as it can and counts the answers by status.
fn burst(n: usize, send: impl Fn() -> HttpResponse) -> (usize, usize) {
    let statuses: Vec<u16> = (0..n).map(|_| send().status).collect();
    (statuses.iter().filter(|s| **s == 429).count(), statuses.len())
}

#[test]
fn every_route_but_healthz_has_a_per_address_limit() {
    // A budget of 5 per second per address: 40 requests in a burst (well under two
    // seconds here) cannot all pass, whichever second boundaries they straddle.
    let server = Server::start(&["--auth-rate-per-ip", "5", "--otp-api-rate-per-ip", "5"]);
    let (key, _) = server.create_key(&["--name", "svc"]);
    let forged = {
        let mut g = own_grant(&server, &key, "");
        g.session_key = onetrip_protocol::Secret::new([1; 32]);
        g
    };
    for path in ["/v1/server-key", "/v1/openapi.json"] {
        let (limited, sent) = burst(40, || server.get(path));
        assert!(limited >= 20, "{path}: {limited} of {sent} limited");
    }
    // Token routes count failed authentications: bad proofs from one address are
    // refused before their token is looked at.
    for (method, path) in [("GET", "/v1/whoami"), ("POST", "/v1/introspect"), ("GET", "/v1/revocations")] {
        let (limited, sent) = burst(40, || signed(server.port, &forged, method, path, b"{}"));
        assert!(limited >= 20, "{method} {path}: {limited} of {sent} limited");
    }
    let (limited, _) = burst(40, || server.get("/healthz"));
    assert_eq!(limited, 0, "health checks are never limited");
}
