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
