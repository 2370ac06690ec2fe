//! OTP cost figures on this machine, in one run: verifications created and checked
//! per second through the embedded store (each a durable redb transaction holding
//! the change and its audit event, as the server does them; creation also as two
//! transactions, for comparison), with 1 and 4 threads, and the store bytes per pending
//! verification. The server holds no per-verification state in memory: only the
//! send-limit windows (one small entry per destination and per key).
//!
//! `cargo run --release -p onetrip-server --example otp_throughput [VERIFICATIONS]`

use std::sync::Arc;
use std::time::Instant;

use onetrip_server::otp::{Policy, Verification};
use onetrip_server::store::{AuditEntry, Store, STORE_FILE};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open_or_init(dir.path(), None, 1_000).expect("store");
    let store = Arc::new(store);
    let key = *store.otp_key().expect("otp key").expose();
    let file = dir.path().join(STORE_FILE);
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);

    let audit = |event: &'static str, id: &[u8; 16]| AuditEntry {
        at: 1_000,
        event,
        detail: serde_json::json!({ "verification": hex::encode(id), "outcome": "example" }),
    };
    let make = |i: usize| {
        Verification::create(
            &mut rand_core::OsRng,
            &key,
            [1; 16],
            "email",
            &format!("user{i}@example.com"),
            Policy::default(),
            1_000,
        )
        .expect("create")
        .0
    };

    // As the server does it: the verification and its audit event in one transaction.
    let before = size();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let v = make(i);
        store.put_verification(&v, Some(audit("otp.generate", &v.id))).expect("put");
        ids.push(v.id);
    }
    let create_secs = started.elapsed().as_secs_f64();
    let grown = size().saturating_sub(before);

    // For comparison: the same work as two transactions (two fsyncs).
    let started = Instant::now();
    for i in n..n + n / 2 {
        let v = make(i);
        store.put_verification(&v, None).expect("put");
        store.record_audit(&audit("otp.generate", &v.id)).expect("audit");
    }
    let create_two_tx = (n / 2) as f64 / started.elapsed().as_secs_f64();

    let check = |threads: usize| {
        let per = ids.len() / threads;
        let started = Instant::now();
        std::thread::scope(|s| {
            for chunk in ids.chunks(per.max(1)).take(threads) {
                let store = Arc::clone(&store);
                s.spawn(move || {
                    for id in chunk {
                        store
                            .update_verification_audited(
                                id,
                                |v| v.check(&key, "000000x", 1_001),
                                |v, _| Some(audit("otp.check", &v.id)),
                            )
                            .expect("check");
                    }
                });
            }
        });
        (per * threads) as f64 / started.elapsed().as_secs_f64()
    };
    let one = check(1);
    let four = check(4);

    println!("verifications: {n} (durable redb write transaction each, fsync included)");
    println!("create + store + audit, one transaction:  {:>9.0} /s", n as f64 / create_secs);
    println!(
        "  same as two transactions:               {create_two_tx:>9.0} /s  (one transaction is {:.2}x)",
        (n as f64 / create_secs) / create_two_tx
    );
    println!("check + audit, 1 thread:                  {one:>9.0} /s");
    println!(
        "check + audit, 4 threads:                 {four:>9.0} /s  (redb serializes writers: {:.2}x of 1 thread)",
        four / one
    );
    println!(
        "store growth:                             {:>9.0} bytes per pending verification with its audit event ({} bytes for {n})",
        grown as f64 / n as f64,
        grown
    );
    println!("server memory per pending verification: 0 bytes (state lives in the store)");
}
