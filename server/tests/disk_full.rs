//! A full disk under a running server, for real: the data directory is a small tmpfs
//! that a filler file fills, then frees. Writes must fail with the OS error named,
//! `/readyz` must go 503 and back, writes (a revocation) must resume without a
//! restart, and nothing acknowledged may be lost. Mounting needs root (CI runs as
//! root); elsewhere the test is skipped unless `ONETRIP_REQUIRE_TOOLS=1`.

mod common;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Outcome;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir, _parent: parent }),
            Ok(o) => {
                support::missing_tool(
                    &format!("mounting a tmpfs ({})", String::from_utf8_lossy(&o.stderr).trim()),
                    "run the test as root",
                );
                None
            }
            Err(e) => {
                support::missing_tool(&format!("mount ({e})"), "apt-get install -y mount; run as root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes to `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

fn ready(server: &Server) -> u16 {
    server.get("/readyz").status
}

fn wait_ready(server: &Server, want: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while ready(server) != want {
        assert!(Instant::now() < deadline, "/readyz did not answer {want} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (id, active) of every key.
fn listed_ids(server: &Server) -> Vec<(String, bool)> {
    let out = server.cli(&["keys", "list", "--json"]);
    assert!(out.status.success(), "keys list: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys = v.as_array().expect("a list of keys");
    keys.iter().map(|k| (k["id"].as_str().expect("id").to_owned(), k["active"] == true)).collect()
}

#[test]
fn a_full_disk_fails_writes_by_name_then_heals_without_a_restart_and_loses_nothing() {
    let Some(disk) = Tmpfs::mount("8m") else { return };
    let mut server = Server::start_in(&disk.dir, &[]).expect("server starts on the tmpfs");
    let (leaked, leaked_id) = server.create_key(&["--name", "leaked"]);
    assert_eq!(ready(&server), 200);

    // Fill the disk, then create keys until the store refuses one.
    let filler = disk.dir.join("filler");
    fill(&filler);
    let mut acknowledged = vec![leaked_id.clone()];
    let mut refusal = None;
    for i in 0..400 {
        let out = server.cli(&["keys", "create", "--json", "--name", &format!("during-{i}")]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            acknowledged.push(v["id"].as_str().expect("id").to_owned());
        } else {
            refusal = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refusal = refusal.expect("a full disk refuses a key create within 400 tries");
    assert!(refusal.contains("No space left on device"), "the OS error is named: {refusal}");
    assert!(refusal.contains("put_api_keys"), "the operation is named: {refusal}");
    assert!(!refusal.contains("damaged") && !refusal.contains("restore"), "no advice to restore: {refusal}");

    // Not ready while full; still alive, and handshakes of known keys go on.
    wait_ready(&server, 503, Duration::from_secs(5));
    let health = server.get("/healthz");
    assert_eq!(health.status, 200, "liveness keeps its meaning");
    assert!(matches!(server.handshake(&leaked, &ClientRequest::default()), Outcome::Granted(_)));
    assert!(server.metric("onetrip_store_errors_total{op=\"put_api_keys\"}") >= 1);

    // Free the disk: the store heals by itself, and the leaked key can be revoked.
    std::fs::remove_file(&filler).expect("free the disk");
    wait_ready(&server, 200, Duration::from_secs(5));
    let revoke = server.cli(&["keys", "revoke", &leaked_id]);
    assert!(revoke.status.success(), "revoke after the disk is freed: {}", String::from_utf8_lossy(&revoke.stderr));
    assert!(matches!(server.handshake(&leaked, &ClientRequest::default()), Outcome::AuthFailed), "revoked at once");

    // Everything acknowledged is there after a restart, and the revocation held.
    let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    let _ = server.child.wait();
    drop(server);
    let server = Server::start_in(&disk.dir, &[]).expect("server restarts");
    let listed = listed_ids(&server);
    for id in &acknowledged {
        assert!(listed.iter().any(|(l, _)| l == id), "acknowledged key {id} survived");
    }
    assert!(listed.iter().any(|(l, active)| l == &leaked_id && !*active), "the revocation survived");
}

#[test]
fn a_first_start_on_a_full_disk_leaves_nothing_behind() {
    let Some(disk) = Tmpfs::mount("2m") else { return };
    let filler = disk.dir.join("filler");
    fill(&filler);
    let data = disk.dir.join("data");
    let failed = Server::start_in(&data, &[]);
    assert!(failed.is_err(), "no store can be created on a full disk");
    let left: Vec<_> =
        std::fs::read_dir(&data).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.iter().all(|name| name != "onetrip.redb" && name != "onetrip.identity"), "left behind: {left:?}");
    // Once there is room, the first start succeeds.
    std::fs::remove_file(&filler).expect("free the disk");
    let server = Server::start_in(&data, &[]).expect("a first start after the disk is freed");
    assert_eq!(server.get("/readyz").status, 200);
}
