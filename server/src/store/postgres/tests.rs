//! What only the PostgreSQL backend does: survive lost connections, refuse a
//! server that is not there with a typed error, and carry the change feed. Against
//! the server named by `ONETRIP_TEST_POSTGRES_URL`, each test in a database of its
//! own (see `store::conformance`).

use std::time::Duration;

use onetrip_protocol::api_key::KeyId;
use tokio::sync::mpsc;

use super::{Change, PgBackend};
use crate::store::conformance::{PgHarness, T0};
use crate::store::ports::{KeyRepo, KeyRotation, SecretRepo, TokenStateRepo};
use crate::store::{ApiKeyRecord, AuditEntry, StoreError};

/// Generous: the machine is shared and noisy; the feed normally takes milliseconds.
const WAIT: Duration = Duration::from_secs(5);

fn record(name: &str) -> ApiKeyRecord {
    let mut r = ApiKeyRecord::for_tests(None);
    r.name = name.into();
    r
}

fn audit() -> AuditEntry {
    AuditEntry { at: T0, event: "test.event", detail: serde_json::json!({}) }
}

/// Ends every session on the harness's database except the caller's.
async fn terminate_sessions(h: &PgHarness, filter: &str) {
    let (client, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() {filter}"
    );
    client.batch_execute(&sql).await.expect("terminate");
    drop(client);
    let _ = tokio::time::timeout(WAIT, driver).await;
}

async fn next(rx: &mut mpsc::Receiver<Change>) -> Change {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a change within the wait").expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_is_unavailable_not_a_panic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("postgres://onetrip:secret-pw@127.0.0.1:{port}/onetrip?sslmode=disable");
    match PgBackend::connect(&url, None, T0).await {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("secret-pw"), "{m}"),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("nothing listens there"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_while_the_server_is_there_and_says_unavailable_when_not() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    // A backend whose server went away after it was opened.
    let target = super::connection::parse(&format!("postgres://u@127.0.0.1:{port}/d?sslmode=disable")).expect("url");
    let gone = PgBackend {
        pool: super::connection::pool(&target).expect("pool"),
        sealer: std::sync::Arc::new(crate::seal::Sealer::create(None).expect("sealer").0),
        shown: target.shown.clone(),
        target: std::sync::Arc::new(target),
    };
    assert!(matches!(gone.ping().await, Err(StoreError::Unavailable(_))));
    let Some(h) = PgHarness::new().await else { return };
    let (b, _) = PgBackend::connect(h.url(), None, T0).await.expect("connect");
    b.ping().await.expect("the server is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_after_its_connections_are_killed() {
    let Some(h) = PgHarness::new().await else { return };
    let (b, _) = PgBackend::connect(h.url(), None, T0).await.expect("connect");
    b.put_api_keys(vec![(KeyId::from_bytes([1; 16]), record("before"))], None).await.expect("put");
    terminate_sessions(&h, "").await;
    // A call may still meet a connection that died under it (a typed error); a
    // broken connection is never handed out again, so the next ones succeed.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let got = b.get_api_key(KeyId::from_bytes([1; 16])).await;
        let ok = got.is_ok();
        outcomes.push(got);
        if ok {
            break;
        }
    }
    for o in &outcomes {
        if let Err(e) = o {
            assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        }
    }
    let last = outcomes.pop().expect("at least one call").expect("recovered within three calls");
    assert_eq!(last.expect("committed before the kill").name, "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Some(h) = PgHarness::new().await else { return };
    assert_eq!(PgBackend::migrate(h.url()).await.expect("migrate"), vec![1]);
    assert_eq!(PgBackend::migrate(h.url()).await.expect("again"), Vec::<i32>::new(), "nothing left to apply");
    let (client, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    client.batch_execute("INSERT INTO schema_migrations (version) VALUES (999)").await.expect("insert");
    drop(client);
    let _ = tokio::time::timeout(WAIT, driver).await;
    match PgBackend::connect(h.url(), None, T0).await {
        Err(StoreError::Config(m)) => assert!(m.contains("999"), "{m}"),
        Err(other) => panic!("expected Config, got {other}"),
        Ok(_) => panic!("a newer schema must not be used"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_the_others_feed() {
    let Some(h) = PgHarness::new().await else { return };
    let (writer, _) = PgBackend::connect(h.url(), None, T0).await.expect("writer");
    let (reader, _) = PgBackend::connect(h.url(), None, T0).await.expect("reader");
    let mut feed = reader.listen_changes();
    assert_eq!(next(&mut feed).await, Change::Resync, "listening starts with a resync");

    let (a, b) = (KeyId::from_bytes([1; 16]), KeyId::from_bytes([2; 16]));
    writer.put_api_keys(vec![(a, record("a"))], None).await.expect("put");
    assert_eq!(next(&mut feed).await, Change::Key(a));
    // A rotation that writes nothing announces nothing: the next change is the revoke.
    let missing = KeyRotation { old: b, new: (b, record("b")), old_expires_at: 0, audit: audit() };
    assert_eq!(writer.rotate_api_key(missing).await.expect("rotate"), None);
    writer
        .update_api_keys(
            vec![a],
            Box::new(|_, r| {
                r.revoked_at = Some(T0);
                true
            }),
            None,
        )
        .await
        .expect("revoke");
    assert_eq!(next(&mut feed).await, Change::Key(a));
    writer.revoke_token([7; 16], T0 + 10, audit()).await.expect("revoke token");
    assert_eq!(next(&mut feed).await, Change::TokenRevoked([7; 16]));
    writer.rotate_server_key(T0, T0 + 10, 100, serde_json::Value::Null).await.expect("rotate server key");
    assert_eq!(next(&mut feed).await, Change::ServerKeys);
    writer.rotate_token_key(T0, 10, serde_json::Value::Null).await.expect("rotate token key");
    assert_eq!(next(&mut feed).await, Change::TokenKeys);

    // The listening connection dies: the feed reconnects and asks for a resync.
    terminate_sessions(&h, "AND query LIKE 'LISTEN%'").await;
    assert_eq!(next(&mut feed).await, Change::Resync);
    writer.put_api_keys(vec![(b, record("b"))], None).await.expect("put");
    assert_eq!(next(&mut feed).await, Change::Key(b));
}

/// A stand-in for a TLS PostgreSQL server on 127.0.0.1: answers the SSL request,
/// runs a TLS handshake with `cert`, then refuses the login. The task returns
/// whether the TLS handshake completed.
async fn tls_stand_in(
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> (u16, tokio::task::JoinHandle<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let serve = async {
            let (mut tcp, _) = listener.accept().await.ok()?;
            let mut ssl_request = [0u8; 8];
            tcp.read_exact(&mut ssl_request).await.ok()?;
            tcp.write_all(b"S").await.ok()?;
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let mut len = [0u8; 4];
            tls.read_exact(&mut len).await.ok()?;
            let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            tls.read_exact(&mut startup).await.ok()?;
            let fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"u\"\0\0";
            let mut error = vec![b'E'];
            error.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
            error.extend_from_slice(fields);
            tls.write_all(&error).await.ok()?;
            tls.flush().await.ok()?;
            Some(())
        };
        tokio::time::timeout(WAIT, serve).await.ok().flatten().is_some()
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_talks_only_to_a_certificate_of_a_trusted_root_for_the_host() {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let leaf = |host: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("leaf");
        (cert.der().clone(), rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    };
    let url = |port: u16, query: &str| format!("postgres://u:pw@127.0.0.1:{port}/d?{query}");
    let root = format!("sslrootcert={}", ca_file.display());

    // Trusted root, right host: TLS completes and the login is what fails.
    let (cert, key) = leaf("127.0.0.1");
    let (port, server) = tls_stand_in(cert, key).await;
    match PgBackend::connect(&url(port, &format!("sslmode=verify-full&{root}")), None, T0).await {
        Err(StoreError::Config(m)) => assert!(m.contains("password authentication failed"), "{m}"),
        Err(other) => panic!("expected the login refusal, got {other}"),
        Ok(_) => panic!("the stand-in accepts no login"),
    }
    assert!(server.await.expect("server task"), "the TLS handshake completed");

    // The certificate's root is not trusted (public roots only): no TLS session.
    let (cert, key) = leaf("127.0.0.1");
    let (port, server) = tls_stand_in(cert, key).await;
    let refused = PgBackend::connect(&url(port, "sslmode=verify-full"), None, T0).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{:?}", refused.err());
    assert!(!server.await.expect("server task"), "no session with an untrusted certificate");

    // Trusted root, another host's certificate; `require` checks the same way.
    let (cert, key) = leaf("db.example");
    let (port, server) = tls_stand_in(cert, key).await;
    let refused = PgBackend::connect(&url(port, &format!("sslmode=require&{root}")), None, T0).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{:?}", refused.err());
    assert!(!server.await.expect("server task"), "no session with a certificate for another host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_audit_log_is_read_in_pages_and_stops_at_the_first_older_event() {
    use crate::store::ports::AuditLog;
    let Some(h) = PgHarness::new().await else { return };
    let (b, _) = PgBackend::connect(h.url(), None, T0).await.expect("connect");
    let client = b.client().await.expect("client");
    // 2,500 events after the store's own; the 100th of them is stamped long before.
    client
        .batch_execute(
            "INSERT INTO audit (at, entry)
             SELECT t, convert_to(json_build_object('at', t, 'event', 'test.event', 'detail', n)::text, 'UTF8')
             FROM (SELECT n, CASE WHEN n = 100 THEN 1 ELSE 10000 + n END AS t FROM generate_series(1, 2500) n) rows",
        )
        .await
        .expect("insert");
    let all = b.audit_since(5_000, usize::MAX).await.expect("read");
    let details: Vec<u64> = all.iter().map(|e| e["detail"].as_u64().expect("n")).collect();
    assert_eq!(details, (101..=2_500).collect::<Vec<u64>>(), "after the older event, oldest first");
    let newest = b.audit_since(5_000, 1_500).await.expect("read");
    assert_eq!(newest.first().map(|e| e["detail"].clone()), Some(serde_json::json!(1_001)));
    assert_eq!(newest.len(), 1_500);
}
