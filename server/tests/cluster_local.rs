//! `deploy/local-cluster.sh` end to end: `start` brings up Redis Cluster, PostgreSQL,
//! three replicas and HAProxy and prints the endpoint and fingerprint; a client gets
//! a token through that endpoint, pinned to that fingerprint; `stop` leaves no
//! process of those it started running.

mod cluster;
mod common;

use std::process::Command;
use std::time::Duration;

use cluster::{exchange, replayable, tools_required};
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::Fingerprint;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local-cluster.sh");

fn tools_present() -> bool {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin} || test -x /usr/sbin/{bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> =
        ["redis-server", "redis-cli", "haproxy", "pg_config"].into_iter().filter(|b| !have(b)).collect();
    if missing.is_empty() {
        return true;
    }
    if tools_required() {
        panic!("ONETRIP_REQUIRE_TOOLS=1 but {missing:?} missing: apt-get install -y redis-server redis-tools haproxy postgresql");
    }
    eprintln!("skipped: {missing:?} not installed");
    false
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
}

/// Runs `stop` on drop: a failed assertion leaves nothing running either.
struct Stopper(std::path::PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("stop").env("ONETRIP_CLUSTER_DIR", &self.0).output();
    }
}

#[test]
fn local_cluster_starts_serves_a_token_through_its_endpoint_and_stops_everything() {
    for flag in ["--shared", "--proxy-protocol-from", "--drain-secs"] {
        if !cluster::needs(flag) {
            return;
        }
    }
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("cluster");
    let _stop = Stopper(state.clone());
    let run = |what: &str| {
        Command::new("bash")
            .arg(SCRIPT)
            .arg(what)
            .env("ONETRIP_BIN", common::BIN)
            .env("ONETRIP_CLUSTER_DIR", &state)
            .env("ONETRIP_DRAIN_SECS", "1")
            .output()
            .unwrap()
    };
    let out = run("start");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "start: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_owned()
    };
    let endpoint = field("endpoint:");
    let fingerprint: Fingerprint = field("fingerprint:").parse().expect("a fingerprint");
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let status = run("status");
    assert!(status.status.success(), "status: {}", String::from_utf8_lossy(&status.stdout));

    // A key through the store the cluster uses, then a pinned handshake through HAProxy.
    let url = std::fs::read_to_string(state.join("store-url")).unwrap();
    let (key, _) = cluster::create_key(url.trim(), &tmp.path().join("cli"), &["--name", "local"]);
    let doc = cluster::document(port);
    doc.check_pin(&fingerprint).expect("the endpoint serves the printed identity");
    let got = cluster::until("a token through the endpoint", Duration::from_secs(10), || {
        let r = replayable(&doc, &key, &ClientRequest::default(), 1);
        exchange(port, &r.bytes, r.pending.into_iter().next().unwrap(), Duration::from_secs(5)).granted()
    });
    eprintln!("a token through {endpoint} after {got:?}");

    let pids: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().trim().to_owned())
        .collect();
    assert_eq!(pids.len(), 6 + 3 + 1, "pid files for 6 Redis nodes, 3 replicas, HAProxy: {pids:?}");
    let pg_pid = std::fs::read_to_string(state.join("pg/data/postmaster.pid")).unwrap();
    let pg_pid = pg_pid.lines().next().unwrap().to_owned();
    let out = run("stop");
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<&String> = pids.iter().chain([&pg_pid]).filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "still running after stop: {left:?}");
    assert!(!state.exists(), "stop removes the state directory");
    assert_eq!(run("status").status.code(), Some(3), "status after stop says not running");
}
