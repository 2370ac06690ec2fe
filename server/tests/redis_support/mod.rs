//! Real Redis for the integration tests: one plain `redis-server` ([`RedisNode`]) or
//! a 6-node Redis Cluster, 3 primaries and 3 replicas ([`RedisCluster`]), on
//! 127.0.0.1, in temporary directories, without persistence (`--save '' --appendonly
//! no`). Every process is killed by pid when its guard drops (also on a panic).
//!
//! A missing `redis-server`/`redis-cli` skips the test with a note (`start()` returns
//! `None`), or panics when `ONETRIP_REQUIRE_TOOLS=1`.
//!
//! Use from a test crate with `mod redis_support;`. The API is kept stable: other
//! tests (the multi-replica suite) build on it.

// Each test crate that includes this module uses only some of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Redis Cluster hash slot count.
const SLOTS: u32 = 16384;
/// How long a node may take to answer PING after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to agree it is whole (`cluster_state:ok`).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis Cluster's bus listens on the client port + this.
const BUS_OFFSET: u16 = 10000;

fn tools_required() -> bool {
    std::env::var("ONETRIP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Whether redis-server and redis-cli can run; prints the skip note (or panics under
/// `ONETRIP_REQUIRE_TOOLS=1`) when not.
pub fn redis_available() -> bool {
    let ok = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("redis-server") && ok("redis-cli") {
        return true;
    }
    if tools_required() {
        panic!(
            "redis-server/redis-cli not found but ONETRIP_REQUIRE_TOOLS=1: apt-get install -y redis-server redis-tools"
        );
    }
    eprintln!("redis-server/redis-cli not found, skipped (install: apt-get install -y redis-server redis-tools)");
    false
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().unwrap().port();
        let Some(bus) = port.checked_add(BUS_OFFSET) else { continue };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
    // The ephemeral range is often above 55535; pick below it and probe.
    for port in (20000..30000u16).step_by(7) {
        let seed = std::process::id() as u16 % 7;
        let p = port + seed;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + BUS_OFFSET)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for redis");
}

/// Runs `redis-cli -p port args…` and returns its stdout (trimmed).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// One `redis-server` process, killed by pid when dropped.
pub struct RedisNode {
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl RedisNode {
    /// A plain (non-cluster) node; `None` after the skip note when Redis is missing.
    pub fn start() -> Option<RedisNode> {
        if !redis_available() {
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut node =
            RedisNode { child: None, port: free_port(), dir: tmp.path().into(), cluster: false, _tmp: Some(tmp) };
        node.restart();
        Some(node)
    }

    fn cluster_member(dir: PathBuf) -> RedisNode {
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut node = RedisNode { child: None, port: free_port(), dir, cluster: true, _tmp: None };
        node.restart();
        node
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis-cli` against this node.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// `kill -9` (no shutdown, no save), then reaps it. The port stays this node's.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port and directory (a cluster member
    /// rejoins from its `nodes.conf`), and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]).args([
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
            ]);
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.cli(&["ping"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process keeps its socket (connects succeed) but answers nothing.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
        }
    }

    /// SIGCONT after [`RedisNode::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of 6 nodes, 3 primaries with one replica each, node timeout 1 s
/// (so a replica takes over about 2 s after its primary dies). Dropping it kills all.
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the 6 nodes, `redis-cli --cluster create … --cluster-replicas 1`, and
    /// waits for `cluster_state:ok` on every node. `None` after the skip note when
    /// Redis is missing.
    pub fn start() -> Option<RedisCluster> {
        if !redis_available() {
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<RedisNode> =
            (0..6).map(|i| RedisNode::cluster_member(tmp.path().join(format!("n{i}")))).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes, _tmp: tmp };
        assert!(cluster.wait_ok(CLUSTER_TIMEOUT), "the cluster did not reach cluster_state:ok");
        Some(cluster)
    }

    /// Every node's `redis://127.0.0.1:<port>`, primaries and replicas.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// The value for `--shared`: every node's URL, comma-separated.
    pub fn shared_arg(&self) -> String {
        self.urls().join(",")
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// A node by client port.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisNode {
        self.nodes.iter_mut().find(|n| n.port == port).expect("no node on that port")
    }

    /// `redis-cli -c` (following redirects) against the first running node.
    pub fn cli(&self, args: &[&str]) -> String {
        let node = self.nodes.iter().find(|n| n.is_running()).expect("no node runs");
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        node.cli(&all)
    }

    /// Lines of `CLUSTER NODES` as some running node sees them.
    fn cluster_nodes(&self) -> Vec<String> {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let out = n.cli(&["cluster", "nodes"]);
            if !out.is_empty() {
                return out.lines().map(str::to_owned).collect();
            }
        }
        Vec::new()
    }

    /// The live primaries as (port, pid), ordered by port.
    pub fn primaries(&self) -> Vec<(u16, u32)> {
        let mut out: Vec<(u16, u32)> = self
            .cluster_nodes()
            .iter()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| port_of(l))
            .filter_map(|p| self.nodes.iter().find(|n| n.port == p).and_then(|n| n.pid().map(|pid| (p, pid))))
            .collect();
        out.sort_unstable();
        out
    }

    /// The port of the primary that serves `key`'s hash slot (a `{tag}` counts).
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let slot: u32 = self.cli(&["cluster", "keyslot", key]).parse().expect("keyslot");
        for line in self.cluster_nodes() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u32>(), hi.parse::<u32>()) {
                    if (lo..=hi).contains(&slot) {
                        return port_of(&line).expect("node address");
                    }
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// `kill -9` the primary serving `key`; returns its port (for
    /// [`RedisCluster::restart_node`]). Its replica takes over after the node timeout.
    pub fn kill_primary_for_key(&mut self, key: &str) -> u16 {
        let port = self.primary_for_key(key);
        self.node_mut(port).kill();
        port
    }

    /// Starts a killed node again; it rejoins (as a replica if it was replaced).
    pub fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart();
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// served; false on timeout.
    pub fn wait_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info = n.cli(&["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
            });
            if ok {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The client port in a `CLUSTER NODES` line (`id ip:port@bus …`).
fn port_of(line: &str) -> Option<u16> {
    let addr = line.split_whitespace().nth(1)?;
    let hostport = addr.split('@').next()?;
    hostport.rsplit_once(':')?.1.parse().ok()
}
