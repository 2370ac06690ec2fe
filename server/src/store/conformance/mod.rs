//! The conformance suite of the state ports: one set of cases, each an `async fn`
//! over a [`Harness`] that can open (and reopen) one backend's state, instantiated
//! for every backend: redb in a temporary directory, PostgreSQL in a fresh database
//! of the server named by `ONETRIP_TEST_POSTGRES_URL` (skipped with a note when it is
//! unset, a failure when `ONETRIP_REQUIRE_TOOLS=1`). A case passes on both or the
//! backends differ in behaviour.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, RedbBackend, Store, StoreError};

mod cases;
mod measure;
mod otp_cases;

use cases::*;
use otp_cases::*;

/// The time every harness creates its state at.
pub(crate) const T0: u64 = 1_000;

/// One backend's state, opened as often as a case needs.
#[async_trait]
pub(crate) trait Harness: Send + Sync {
    /// Opens the state with `passphrase` (creating it on first use); true when created.
    async fn open_with(&self, passphrase: Option<&str>) -> Result<(Backend, bool), StoreError>;

    /// `n` handles on the state: separate connection pools where the backend has
    /// them (PostgreSQL), the same store otherwise (one process opens redb once).
    async fn handles(&self, n: usize) -> Vec<Backend>;

    /// Opens the state without a passphrase.
    async fn open(&self) -> Backend {
        self.open_with(None).await.expect("open the backend").0
    }
}

/// redb in a temporary directory.
pub(crate) struct RedbHarness {
    dir: tempfile::TempDir,
}

impl RedbHarness {
    pub(crate) fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl Harness for RedbHarness {
    async fn open_with(&self, passphrase: Option<&str>) -> Result<(Backend, bool), StoreError> {
        let dir = self.dir.path().to_owned();
        let passphrase = passphrase.map(str::to_owned);
        let (store, created) =
            tokio::task::spawn_blocking(move || Store::open_or_init(&dir, passphrase.as_deref(), T0))
                .await
                .expect("open task")?;
        Ok((Arc::new(RedbBackend::new(store)) as Backend, created))
    }

    async fn handles(&self, n: usize) -> Vec<Backend> {
        let backend = self.open().await;
        vec![backend; n]
    }
}

/// A database of its own on the test PostgreSQL server, dropped with the harness.
pub(crate) struct PgHarness {
    admin_url: String,
    database: String,
    url: String,
}

impl PgHarness {
    /// A fresh database, or `None` (after a skip note) when no server is configured.
    pub(crate) async fn new() -> Option<Self> {
        let admin_url = match std::env::var("ONETRIP_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var("ONETRIP_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
                    panic!(
                        "ONETRIP_TEST_POSTGRES_URL is not set but ONETRIP_REQUIRE_TOOLS=1: start a server with \
                         scripts/pg-throwaway.sh"
                    );
                }
                eprintln!("ONETRIP_TEST_POSTGRES_URL not set: PostgreSQL conformance case skipped");
                return None;
            }
        };
        let mut name = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut name);
        let database = format!("onetrip_test_{}", hex::encode(name));
        admin(&admin_url, &format!("CREATE DATABASE {database}")).await;
        let url = with_database(&admin_url, &database);
        Some(Self { admin_url, database, url })
    }

    /// The URL of this harness's database.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Harness for PgHarness {
    async fn open_with(&self, passphrase: Option<&str>) -> Result<(Backend, bool), StoreError> {
        let (backend, created) = super::postgres::PgBackend::connect(&self.url, passphrase, T0).await?;
        Ok((Arc::new(backend) as Backend, created))
    }

    async fn handles(&self, n: usize) -> Vec<Backend> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.open().await);
        }
        out
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        // Drop is synchronous: a thread with its own runtime does the async cleanup.
        let (url, sql) = (self.admin_url.clone(), format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database));
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(admin(&url, &sql));
        });
        let _ = done.join();
    }
}

/// Runs one statement on the admin database (the test URL's).
async fn admin(url: &str, sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to the test PostgreSQL");
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
}

/// `url` naming `database` instead of its own.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// One `#[tokio::test]` per case and backend.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let harness = super::RedbHarness::new();
                    super::$case(&harness).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(harness) = super::PgHarness::new().await else { return };
                    super::$case(&harness).await;
                }
            )*
        }
    };
}

conformance!(
    keys_are_written_read_paged_filtered_and_updated_with_their_audit,
    overlapping_imports_in_opposite_orders_both_land,
    a_rotation_writes_new_old_and_audit_together_or_nothing,
    fifty_parallel_wrong_checks_across_four_connections_evaluate_exactly_five,
    a_transition_is_written_back_with_its_audit,
    one_step_up_is_pending_per_key_under_concurrency,
    a_totp_enrolment_is_kept_unless_replaced_and_checks_see_it,
    guards_change_with_their_audit_and_clear_ones_go,
    revocations_keep_the_later_end_and_are_swept,
    replay_ids_ahead_are_kept_until_the_clock_passes_them,
    server_keys_rotate_and_are_maintained_with_their_audit,
    token_keys_rotate_and_retired_ones_are_dropped,
    the_otp_key_is_created_once_under_concurrency,
    audit_is_read_newest_first_and_deleted_oldest_first,
    expired_verifications_are_swept,
    everything_committed_survives_a_restart,
    a_sealed_state_refuses_a_wrong_missing_or_unexpected_passphrase,
);

#[test]
fn the_database_name_is_replaced_and_the_options_kept() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable", "t1"),
        "postgres://u:p@127.0.0.1:5432/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:1", "t2"), "postgres://h:1/t2");
}
