//! `onetrip store backup` and `onetrip store verify` against the real binary: a backup
//! taken while keys are created and OTP codes checked restores as a server holding
//! every key acknowledged before it began; sealed backups need the passphrase; bad
//! files and existing files are refused with clear errors and exit codes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

const PASSPHRASE: &str = "correct horse battery staple";

/// `onetrip <args> --data-dir DIR`, run in `cwd`, with `env`.
fn run(data_dir: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .current_dir(cwd)
        .env_remove("ONETRIP_PASSPHRASE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One OTP verification created, checked with a wrong code, then with the right one.
fn otp_round(server: &Server, grant: &onetrip_protocol::TokenGrant, to: &str) {
    let body = serde_json::json!({ "to": to, "channel": "console" }).to_string();
    let created = signed(server.port, grant, "POST", "/v1/otp/verifications", body.as_bytes());
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let code = server.console_code(&id);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let path = format!("/v1/otp/verifications/{id}/check");
    for (code, valid) in [(wrong, false), (code.as_str(), true)] {
        let body = serde_json::json!({ "code": code }).to_string();
        let checked = signed(server.port, grant, "POST", &path, body.as_bytes());
        assert_eq!(checked.status, 200, "{}", String::from_utf8_lossy(&checked.body));
        assert_eq!(checked.json()["valid"].as_bool(), Some(valid));
    }
}

#[test]
fn a_backup_under_load_verifies_and_restores_every_key_acknowledged_before_it() {
    let server = Server::start(&["--otp-console-codes"]);
    let tmp = tempfile::tempdir().unwrap();
    let (otp_key, _) = server.create_key(&["--name", "otp-caller", "--scope", "otp"]);
    let grant = own_grant(&server, &otp_key, "otp");
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let otp_rounds = AtomicUsize::new(0);
    let backup = tmp.path().join("under-load.redb");
    let (before, report) = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let created = server.create_key(&["--name", &format!("load-{i}")]);
                acknowledged.lock().unwrap().push(created);
            }
        });
        s.spawn(|| {
            for i in 0..15 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                otp_round(&server, &grant, &format!("user-{i}"));
                otp_rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Take the backup once the creates are well under way (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(60);
        let under_way = || acknowledged.lock().unwrap().len() >= 5 && otp_rounds.load(Ordering::Relaxed) >= 2;
        while !under_way() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let before: Vec<_> = acknowledged.lock().unwrap().clone();
        let report = json(&server.cli(&["store", "backup", backup.to_str().unwrap(), "--json"]));
        // Let the load go on a little past the backup, then stop it.
        let (keys_after, rounds_after) = (before.len() + 3, otp_rounds.load(Ordering::Relaxed) + 1);
        let went_on =
            || acknowledged.lock().unwrap().len() >= keys_after && otp_rounds.load(Ordering::Relaxed) >= rounds_after;
        while !went_on() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (before, report)
    });
    assert!(before.len() >= 5, "the creates did not get under way");
    assert!(otp_rounds.load(Ordering::Relaxed) >= 3, "the OTP checks did not go on around the backup");
    assert_eq!(report["fingerprint"], server.fingerprint.to_string());
    assert_eq!(report["sealed"], false);
    assert!(report["api_keys"].as_u64().unwrap() > before.len() as u64, "{report}");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    let events = json(&server.cli(&["audit", "--since", "1h", "--json"]));
    assert!(events.as_array().unwrap().iter().any(|e| e["event"] == "store.backup"), "the backup is audited");

    let verified = json(&run(tmp.path(), tmp.path(), &["store", "verify", backup.to_str().unwrap(), "--json"], &[]));
    assert_eq!(verified, report, "verify reads back what the backup reported");

    // Restore: the backup as onetrip.redb in a fresh data directory.
    let restored_dir = tmp.path().join("restored");
    std::fs::create_dir(&restored_dir).unwrap();
    std::fs::copy(&backup, restored_dir.join("onetrip.redb")).unwrap();
    let restored = Server::start_in(&restored_dir, &[]).unwrap();
    assert_eq!(restored.fingerprint, server.fingerprint, "the restored server is the same identity");
    let listed = json(&restored.cli(&["keys", "list", "--json"]));
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|k| k["id"].as_str()).collect();
    for (_, id) in &before {
        assert!(ids.contains(&id.as_str()), "key {id}, acknowledged before the backup, is missing");
    }
    let (key, _) = &before[0];
    assert!(matches!(restored.handshake(key, &ClientRequest::default()), Outcome::Granted(_)));
}

#[test]
fn a_sealed_backup_needs_the_passphrase_and_bad_files_get_their_own_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start_with_env(&data, &[], &[("ONETRIP_PASSPHRASE", PASSPHRASE)]).unwrap();
    server.create_key(&["--name", "one"]);
    // A relative path is the CLI's, not the server's working directory.
    let backed_up = run(&data, tmp.path(), &["store", "backup", "sealed.redb", "--json"], &[]);
    let report = json(&backed_up);
    let backup = tmp.path().join("sealed.redb");
    assert_eq!(report["path"], backup.to_str().unwrap());
    assert_eq!((report["sealed"].as_bool(), report["api_keys"].as_u64()), (Some(true), Some(1)));
    let before = std::fs::read(&backup).unwrap();

    let verify = |env: &[(&str, &str)]| run(&data, tmp.path(), &["store", "verify", "sealed.redb"], env);
    let no_passphrase = verify(&[]);
    assert_eq!(no_passphrase.status.code(), Some(4), "{}", stderr(&no_passphrase));
    assert!(stderr(&no_passphrase).contains("passphrase"), "{}", stderr(&no_passphrase));
    let wrong = verify(&[("ONETRIP_PASSPHRASE", "wrong")]);
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    let right = verify(&[("ONETRIP_PASSPHRASE", PASSPHRASE)]);
    assert!(right.status.success(), "{}", stderr(&right));
    let text = String::from_utf8_lossy(&right.stdout);
    assert!(text.contains("API keys: 1") && text.contains(&server.fingerprint.to_string()), "{text}");
    assert_eq!(std::fs::read(&backup).unwrap(), before, "verify never writes");

    // An existing file is kept unless --force.
    let again = run(&data, tmp.path(), &["store", "backup", "sealed.redb"], &[]);
    assert_eq!(again.status.code(), Some(7), "not allowed while the file exists");
    assert!(stderr(&again).contains("exists") && stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&backup).unwrap(), before);

    // Truncated and garbage files: a clear error, exit code 3, the file untouched.
    for (name, content) in [("truncated.redb", &before[..before.len() / 2]), ("garbage.redb", &[0x5a; 8192][..])] {
        let path = tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = verify_file(&data, &path);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a usable onetrip backup"), "{}", stderr(&out));
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name} was written to");
    }

    // With no server running, the CLI opens the store itself (the passphrase unseals it).
    server.kill9();
    let offline = tmp.path().join("offline.redb");
    let out =
        run(&data, tmp.path(), &["store", "backup", offline.to_str().unwrap()], &[("ONETRIP_PASSPHRASE", PASSPHRASE)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &data,
        tmp.path(),
        &["store", "verify", offline.to_str().unwrap(), "--json"],
        &[("ONETRIP_PASSPHRASE", PASSPHRASE)],
    );
    assert_eq!(json(&out)["api_keys"], 1);
}

fn verify_file(data: &Path, path: &Path) -> Output {
    run(
        data,
        path.parent().unwrap(),
        &["store", "verify", path.to_str().unwrap()],
        &[("ONETRIP_PASSPHRASE", PASSPHRASE)],
    )
}
