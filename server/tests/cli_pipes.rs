//! Listings piped into a reader that stops early (`onetrip audit | head -1`) end
//! quietly with success: no panic, no error, no exit 101.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{now, BIN};
use onetrip_protocol::api_key::KeyId;
use onetrip_server::store::{ApiKeyRecord, Store};

/// A store with far more listing than a pipe holds (64 KiB): 200 audit events of
/// ~1 KB each, and 3,000 keys.
fn big_store(dir: &Path) {
    let (store, _) = Store::open_or_init(dir, None, now()).unwrap();
    let padding = "x".repeat(1_000);
    for i in 0..200 {
        store.audit(now(), "test.event", serde_json::json!({ "i": i, "padding": padding })).unwrap();
    }
    let records: Vec<_> = (0..3_000u32)
        .map(|i| {
            let mut id = [0x5a; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let record = ApiKeyRecord {
                name: format!("key-{i}"),
                verifier: hex::encode([9u8; 32]),
                scopes: vec!["read".into(), "write".into()],
                audiences: vec!["billing".into()],
                require_otp: false,
                otp_to: None,
                created_at: 1_000,
                last_used_at: None,
                revoked_at: None,
                expires_at: None,
                replaced_by: None,
            };
            (KeyId::from_bytes(id), record)
        })
        .collect();
    store.put_api_keys(&records).unwrap();
}

/// Runs `onetrip ARGS` against `dir`, reads one line of its stdout and closes the
/// pipe, as `| head -1` does; returns the exit code and stderr.
fn first_line_then_close(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("ONETRIP_PASSPHRASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
    } // The read end closes here: every later write of the child gets EPIPE.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("onetrip {args:?} still runs 60 s after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr, line)
}

#[test]
fn listings_end_quietly_with_success_when_their_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    big_store(dir.path());
    for args in [
        &["audit", "--limit", "100000"][..],
        &["audit", "--limit", "100000", "--json"],
        &["keys", "list"],
        &["keys", "list", "--json"],
    ] {
        let (code, stderr, first) = first_line_then_close(dir.path(), args);
        assert!(!first.is_empty(), "{args:?}: no first line; stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(!stderr.contains("error"), "{args:?} reported an error: {stderr}");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
}
