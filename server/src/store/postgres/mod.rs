//! The PostgreSQL backend: the state ports over a database that several onetrip
//! replicas share. Observable behaviour is the redb store's, method for method;
//! what differs is the isolation: every read-modify-write is one transaction that
//! locks the rows it changes (`SELECT … FOR UPDATE`; a row that may not exist yet is
//! inserted first, then locked), and its audit row is inserted in that transaction.
//!
//! Files: `connection.rs` (URL, TLS, pool, errors), `migrations.rs` (the schema),
//! `keys.rs` (KeyRepo), `secrets.rs` (SecretRepo and creation), `otp.rs` (OtpRepo),
//! `log.rs` (AuditLog, TokenStateRepo), `changes.rs` (the change feed).

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{AuditEntry, StoreError};
use crate::seal::Sealer;

mod changes;
mod connection;
mod keys;
mod log;
mod migrations;
mod otp;
mod secrets;
#[cfg(test)]
mod tests;

pub use crate::store::ports::Change;

impl crate::store::ports::ChangeFeed for PgBackend {
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        Some(self.listen_changes())
    }
}
pub use connection::{redact_url, TlsMode};

/// The state ports over PostgreSQL. Cheap to clone (the pool and sealer are shared).
#[derive(Clone)]
pub struct PgBackend {
    pool: Pool,
    sealer: Arc<Sealer>,
    /// The URL without its password.
    shown: String,
    /// Where the change feed's own connection goes.
    target: Arc<connection::Target>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend").field("url", &self.shown).field("sealer", &self.sealer).finish()
    }
}

impl PgBackend {
    /// Connects to `url`, applies pending migrations, and creates the identity and
    /// keys on first use exactly as the redb store does (the first replica to get the
    /// lock creates them; the others open them). Refuses a wrong passphrase, a sealed
    /// database without one and an unsealed one with one, with the redb store's
    /// errors. Returns the backend and whether the state was just created.
    pub async fn connect(url: &str, passphrase: Option<&str>, now: u64) -> Result<(Self, bool), StoreError> {
        let target = connection::parse(url)?;
        let pool = connection::pool(&target)?;
        {
            let mut client = pool.get().await.map_err(connection::pool_error)?;
            let tx = client.transaction().await.map_err(connection::db_error)?;
            migrations::apply(&tx, &target.shown).await?;
            tx.commit().await.map_err(connection::db_error)?;
        }
        let shown = target.shown.clone();
        let (sealer, created) = secrets::open_or_create(&pool, &shown, passphrase, now).await?;
        let backend = Self { pool, sealer: Arc::new(sealer), shown, target: Arc::new(target) };
        // Every sealed secret must open now, not at the first request that needs one.
        super::ports::SecretRepo::server_secrets(&backend).await?;
        Ok((backend, created))
    }

    /// Applies pending migrations to the database at `url` and returns the versions
    /// applied (none when it was up to date): `onetrip store migrate`.
    pub async fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
        let target = connection::parse(url)?;
        let pool = connection::pool(&target)?;
        let mut client = pool.get().await.map_err(connection::pool_error)?;
        let tx = client.transaction().await.map_err(connection::db_error)?;
        let applied = migrations::apply(&tx, &target.shown).await?;
        tx.commit().await.map_err(connection::db_error)?;
        Ok(applied)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(connection::pool_error)
    }
}

/// Runs `sql` (prepared once per connection) on a client or in a transaction.
pub(crate) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(connection::db_error)?;
    c.query(&statement, params).await.map_err(connection::db_error)
}

/// [`query`] for a statement that returns no rows; returns how many it changed.
pub(crate) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(connection::db_error)?;
    c.execute(&statement, params).await.map_err(connection::db_error)
}

/// Begins a transaction on `client`.
pub(crate) async fn begin(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client.transaction().await.map_err(connection::db_error)
}

/// Commits `tx`. A commit whose answer is lost (the connection dropped) is reported
/// as unavailable: the caller must not assume it was written.
pub(crate) async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.commit().await.map_err(connection::db_error)
}

/// Appends an audit event in the caller's transaction, in the redb store's format.
pub(crate) async fn append_audit(tx: &impl GenericClient, entry: &AuditEntry) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec(&serde_json::json!({ "at": entry.at, "event": entry.event, "detail": entry.detail }))
            .map_err(|_| StoreError::Record("audit".into()))?;
    execute(tx, "INSERT INTO audit (at, entry) VALUES ($1, $2)", &[&db_time(entry.at), &bytes]).await?;
    Ok(())
}

/// A time as stored (`bigint`; see `migrations.rs`).
pub(crate) fn db_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A stored time.
pub(crate) fn from_db_time(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

/// A row count or limit as SQL takes it.
pub(crate) fn db_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A serde JSON record as stored.
pub(crate) fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| StoreError::Record(what.into()))
}

/// A stored serde JSON record.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Record(what.into()))
}

/// A fixed-size id read from a `bytea` column.
pub(crate) fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Record(what.into()))
}
