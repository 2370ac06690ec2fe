//! Several `onetrip serve` processes on one real PostgreSQL: a change made by the CLI
//! reaches every replica through the change feed, and a PostgreSQL that stops and
//! starts again degrades the service and then heals it, with no restart and no lost
//! write. Each test runs its own throw-away cluster (`scripts/pg-throwaway.sh`), so
//! it can stop that cluster without touching anyone else's.

mod cluster;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{http, pop_headers, Server};
use onetrip_protocol::api_key::ApiKey;
use onetrip_protocol::handshake::ClientRequest;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::Outcome;

use cluster::{cli, create_key, until, Pg as Cluster};

fn granted(server: &Server, key: &ApiKey) -> bool {
    matches!(server.handshake(key, &ClientRequest::default()), Outcome::Granted(_))
}

fn serve(url: &str, dir: &Path) -> Server {
    Server::start_in(dir, &["--store", url]).expect("a replica starts on PostgreSQL")
}

#[test]
fn a_key_created_and_revoked_through_the_cli_reaches_both_replicas() {
    let Some(pg) = Cluster::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(&pg.url, &tmp.path().join("a"));
    let b = serve(&pg.url, &tmp.path().join("b"));
    assert_eq!(a.fingerprint, b.fingerprint, "replicas of one database are one server");

    // No server is asked: the CLI writes to PostgreSQL, the feed tells the replicas.
    let (key, id) = create_key(&pg.url, &tmp.path().join("cli"), &["--name", "shared"]);
    for (name, server) in [("a", &a), ("b", &b)] {
        let took =
            until(&format!("replica {name} serves the new key"), Duration::from_secs(10), || granted(server, &key));
        eprintln!("create reached replica {name} in {took:?}");
    }
    let out = cli(&pg.url, &tmp.path().join("cli"), &["keys", "revoke", &id]);
    assert!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    for (name, server) in [("a", &a), ("b", &b)] {
        let took = until(&format!("replica {name} refuses the revoked key"), Duration::from_secs(10), || {
            !granted(server, &key)
        });
        eprintln!("revoke reached replica {name} in {took:?}");
    }
    // The listing through the database shows the revocation too.
    let out = cli(&pg.url, &tmp.path().join("cli"), &["keys", "list", "--json", "--revoked"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // A batch, one transaction each way, reaches both replicas too.
    let file = tmp.path().join("batch.keys");
    let out = cli(
        &pg.url,
        &tmp.path().join("cli"),
        &["keys", "create", "--name", "batch", "--count", "40", "--out", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "bulk create: {}", String::from_utf8_lossy(&out.stderr));
    let batch: Vec<ApiKey> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| ApiKey::parse(l).unwrap()).collect();
    assert_eq!(batch.len(), 40);
    for server in [&a, &b] {
        until("the batch is served", Duration::from_secs(10), || batch.iter().all(|k| granted(server, k)));
    }
    let out = cli(&pg.url, &tmp.path().join("cli"), &["keys", "revoke", "--from", file.to_str().unwrap()]);
    assert!(out.status.success(), "bulk revoke: {}", String::from_utf8_lossy(&out.stderr));
    for server in [&a, &b] {
        until("the batch is refused", Duration::from_secs(10), || batch.iter().all(|k| !granted(server, k)));
    }
}

/// Creates an OTP verification through the API; returns the HTTP status.
fn otp_create(server: &Server, grant: &onetrip_protocol::TokenGrant) -> u16 {
    let path = "/v1/otp/verifications";
    let body = serde_json::json!({ "to": "ops", "channel": "console" }).to_string();
    let (auth, pop) = pop_headers(grant, "POST", path, body.as_bytes());
    let headers = [("authorization", auth.as_str()), (POP_HEADER, pop.as_str()), ("content-type", "application/json")];
    http(server.port, "POST", path, &headers, body.as_bytes()).status
}

#[test]
fn a_stopped_postgres_degrades_the_service_and_it_heals_without_a_restart() {
    let Some(pg) = Cluster::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(&pg.url, &tmp.path().join("a"));
    let cli_dir = tmp.path().join("cli");
    let (key, _) = create_key(&pg.url, &cli_dir, &["--name", "before", "--scope", "otp"]);
    until("the replica serves the key", Duration::from_secs(10), || granted(&server, &key));
    let health = |s: &Server| s.get("/healthz").json()["status"].as_str().unwrap_or("").to_owned();
    assert_eq!(health(&server), "ok");
    assert_eq!(server.get("/readyz").status, 200);

    pg.control("halt");
    // Handshakes of known keys go on from memory; the probe (1 s apart) notices.
    assert!(granted(&server, &key), "a known key still gets its token while PostgreSQL is down");
    until("/healthz says degraded", Duration::from_secs(15), || health(&server) == "degraded");
    let not_ready = server.get("/readyz");
    assert_eq!(not_ready.status, 503, "a load balancer takes the replica out while its store is down");
    assert_eq!(not_ready.json()["code"], "store_unavailable");
    assert_eq!(not_ready.header("retry-after"), Some("1"));
    // Counted per store operation, on PostgreSQL as on the embedded store.
    assert!(server.metric("onetrip_store_errors_total{op=\"ping\"}") >= 1, "the failed probes are counted");
    assert!(server.metric("onetrip_store_operations_total{op=\"api_keys_page\"}") >= 1, "start-up read the keys");
    let grant = match server.handshake(&key, &ClientRequest { audience: "onetrip", scopes: "otp", second_factor: None })
    {
        Outcome::Granted(g) => *g,
        other => panic!("expected a token, got {other:?}"),
    };
    assert_eq!(otp_create(&server, &grant), 503, "an OTP write is a clear 503, never a silent loss");
    let refused = cli(&pg.url, &cli_dir, &["keys", "create", "--name", "during"]);
    assert!(!refused.status.success(), "a key write fails loudly while PostgreSQL is down");
    assert!(!String::from_utf8_lossy(&refused.stderr).is_empty());

    pg.control("resume");
    until("/healthz is ok again", Duration::from_secs(30), || health(&server) == "ok");
    assert_eq!(server.get("/readyz").status, 200, "ready again without a restart");
    until("OTP writes work again", Duration::from_secs(30), || otp_create(&server, &grant) == 201);
    // Nothing committed was lost, and new writes reach the same process.
    let (after, _) = create_key(&pg.url, &cli_dir, &["--name", "after"]);
    until("the key created after the outage is served", Duration::from_secs(10), || granted(&server, &after));
    assert!(granted(&server, &key));
    let out = cli(&pg.url, &cli_dir, &["keys", "list", "--json"]);
    let names: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "before" || *n == "after").count(), 2, "{names:?}");
    assert!(!names.contains(&"during".to_owned()), "the refused write did not half-happen: {names:?}");
}

/// Measurements for the operator notes (ignored: run with `--ignored --nocapture`):
/// how long a CLI revoke takes to reach two replicas over 100 revokes, and how long a
/// replica takes to start with 100,000 keys in PostgreSQL.
#[test]
#[ignore]
fn measure_revoke_propagation_and_startup_with_100k_keys() {
    let Some(pg) = Cluster::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(&pg.url, &tmp.path().join("a"));
    let b = serve(&pg.url, &tmp.path().join("b"));
    let cli_dir = tmp.path().join("cli");
    let mut took = Vec::new();
    for i in 0..100 {
        let (key, id) = create_key(&pg.url, &cli_dir, &["--name", &format!("k{i}")]);
        until("created", Duration::from_secs(10), || granted(&a, &key) && granted(&b, &key));
        let out = cli(&pg.url, &cli_dir, &["keys", "revoke", &id]);
        assert!(out.status.success());
        let start = Instant::now();
        until("revoked on a", Duration::from_secs(10), || !granted(&a, &key));
        until("revoked on b", Duration::from_secs(10), || !granted(&b, &key));
        took.push(start.elapsed());
    }
    took.sort();
    eprintln!(
        "RESULT revoke_to_both_replicas n=100 p50_ms={:.1} max_ms={:.1} (after the CLI returned; includes one handshake per check)",
        took[49].as_secs_f64() * 1e3,
        took[99].as_secs_f64() * 1e3
    );
    drop((a, b));

    // 100,000 keys written through the port, then a replica's start-up.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use onetrip_server::store::ports::KeyRepo;
        let (backend, _) =
            onetrip_server::store::postgres::PgBackend::connect(&pg.url, None, common::now()).await.unwrap();
        for batch in 0..100u32 {
            let records = (0..1_000u32)
                .map(|i| {
                    let n = batch * 1_000 + i;
                    let mut id = [0u8; 16];
                    id[..4].copy_from_slice(&n.to_be_bytes());
                    id[15] = 0xa5;
                    let key = onetrip_protocol::api_key::KeyId::from_bytes(id);
                    let record = onetrip_server::store::ApiKeyRecord {
                        name: format!("bulk{n}"),
                        verifier: hex::encode([9u8; 32]),
                        scopes: vec![],
                        audiences: vec![],
                        require_otp: false,
                        otp_to: None,
                        created_at: 1,
                        last_used_at: None,
                        revoked_at: None,
                        expires_at: None,
                        replaced_by: None,
                    };
                    (key, record)
                })
                .collect();
            backend.put_api_keys(records, None).await.unwrap();
        }
    });
    let start = Instant::now();
    let c = serve(&pg.url, &tmp.path().join("c"));
    eprintln!("RESULT startup_100k_keys_from_postgres_ms={} (process start to listening)", start.elapsed().as_millis());
    assert!(c.metric("onetrip_api_keys") >= 100_000);
}
