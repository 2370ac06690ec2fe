//! The PostgreSQL schema, as numbered migrations applied in order at start (or by
//! `onetrip store migrate`), each in the transaction that records it in
//! `schema_migrations`, under an advisory lock so that replicas starting together
//! apply each migration once.
//!
//! Schema (version 1). Each record is stored exactly as the redb store stores it
//! (serde JSON in a `bytea`, so names with any character survive and both backends
//! decode the same bytes); the columns beside it are what SQL filters and orders on:
//! - `meta(name, value)`: format, seal parameters, sealed identity, dummy secret,
//!   OTP key and the token key list (one JSON list, rotated under a row lock);
//! - `api_keys(id, name, scopes, audiences, revoked, created_at, record)`: `id`
//!   orders listings by its bytes, as redb does; name/scopes/audiences are the
//!   record's, as UTF-8 bytes, for exact matches;
//! - `server_keys(id, record)`; `otp_verifications(id, expires_at, record)`;
//!   `totp_enrollments(owner, account, record)`; `otp_guards(subject, record)`;
//! - `audit(seq, at, entry)`: `seq` is the append order the log is read in;
//! - `revoked_tokens(token_id, until)`; `replay_ids(stamp, id)`.
//!
//! Times are unix seconds in `bigint` (a value past `i64::MAX`, year 292 billion,
//! is stored as `i64::MAX`).

use deadpool_postgres::Transaction;

use super::connection::db_error;
use crate::store::StoreError;

/// Any number, the same for every onetrip: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6f6e_6574_7269_7001;

/// The migrations, by version. Never edit one that has shipped: add the next.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE meta (name text PRIMARY KEY, value bytea NOT NULL);
     CREATE TABLE api_keys (
         id bytea PRIMARY KEY,
         name bytea NOT NULL,
         scopes bytea[] NOT NULL,
         audiences bytea[] NOT NULL,
         revoked boolean NOT NULL,
         created_at bigint NOT NULL,
         record bytea NOT NULL
     );
     CREATE INDEX api_keys_by_name ON api_keys (name);
     CREATE INDEX api_keys_by_created_at ON api_keys (created_at);
     CREATE TABLE server_keys (id bytea PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE otp_verifications (id bytea PRIMARY KEY, expires_at bigint NOT NULL, record bytea NOT NULL);
     CREATE INDEX otp_verifications_by_expiry ON otp_verifications (expires_at);
     CREATE TABLE totp_enrollments (
         owner bytea NOT NULL,
         account bytea NOT NULL,
         record bytea NOT NULL,
         PRIMARY KEY (owner, account)
     );
     CREATE TABLE otp_guards (subject bytea PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE audit (seq bigserial PRIMARY KEY, at bigint NOT NULL, entry bytea NOT NULL);
     CREATE TABLE revoked_tokens (token_id bytea PRIMARY KEY, until bigint NOT NULL);
     CREATE INDEX revoked_tokens_by_until ON revoked_tokens (until);
     CREATE TABLE replay_ids (stamp bigint NOT NULL, id bytea NOT NULL, PRIMARY KEY (stamp, id));",
)];

/// Applies the migrations `tx`'s database lacks, in order; returns their versions.
/// A database migrated by a newer onetrip is refused, not touched.
pub(crate) async fn apply(tx: &Transaction<'_>, shown: &str) -> Result<Vec<i32>, StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(db_error)?;
    let rows = tx.query("SELECT version FROM schema_migrations", &[]).await.map_err(db_error)?;
    let applied: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(v) = applied.iter().find(|v| **v > newest) {
        return Err(StoreError::Config(format!(
            "the database {shown} has schema version {v}, newer than this onetrip knows ({newest}): upgrade onetrip"
        )));
    }
    let mut done = Vec::new();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await.map_err(db_error)?;
        done.push(*version);
    }
    Ok(done)
}
