//! The audit log, token revocations and persisted replay ids in PostgreSQL: the
//! AuditLog and TokenStateRepo ports. Reads follow the redb store's orders (the log
//! by append order, revocations by token id, replay ids by stamp then id) and every
//! sweep is bounded, as there.

use async_trait::async_trait;

use super::changes::notify;
use super::{append_audit, begin, commit, db_count, db_time, decode, execute, fixed, from_db_time, query, PgBackend};
use crate::store::ports::Change;
use crate::store::ports::{AuditLog, TokenStateRepo};
use crate::store::{AuditEntry, StoreError};

/// Audit rows read per round trip.
const AUDIT_PAGE: usize = 1_000;

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[async_trait]
impl AuditLog for PgBackend {
    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let client = self.client().await?;
        append_audit(&client, &entry).await
    }

    async fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        // Newest first, stopping at the first event before `since` (as redb reads it),
        // a bounded page at a time so a long log is never held whole.
        let client = self.client().await?;
        let mut out = Vec::new();
        let mut before = i64::MAX;
        while out.len() < limit {
            let page = db_count((limit - out.len()).min(AUDIT_PAGE));
            let rows = query(
                &client,
                "SELECT seq, entry FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                &[&before, &page],
            )
            .await?;
            for row in &rows {
                let event: serde_json::Value = decode(row.get(1), "audit")?;
                if event["at"].as_u64().unwrap_or(0) < since {
                    out.reverse();
                    return Ok(out);
                }
                out.push(event);
                before = row.get(0);
            }
            if rows.len() < usize::try_from(page).unwrap_or(usize::MAX) {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn delete_audit_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError> {
        // The oldest `max` rows, up to the first one at or after `cutoff`.
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let rows =
            query(&tx, "SELECT seq, at FROM audit ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED", &[&db_count(max)])
                .await?;
        let old: Vec<i64> =
            rows.iter().take_while(|r| from_db_time(r.get(1)) < cutoff).map(|r| r.get::<_, i64>(0)).collect();
        if old.is_empty() {
            return Ok(0);
        }
        let n = execute(&tx, "DELETE FROM audit WHERE seq = ANY($1)", &[&old]).await?;
        commit(tx).await?;
        Ok(count(n))
    }
}

#[async_trait]
impl TokenStateRepo for PgBackend {
    async fn revoke_token(&self, token_id: [u8; 16], until: u64, audit: AuditEntry) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        // One statement: a revocation already stored keeps the later end.
        let rows = query(
            &tx,
            "INSERT INTO revoked_tokens (token_id, until) VALUES ($1, $2)
             ON CONFLICT (token_id) DO UPDATE SET until = GREATEST(revoked_tokens.until, excluded.until)
             RETURNING until",
            &[&&token_id[..], &db_time(until)],
        )
        .await?;
        let stored =
            rows.first().map(|r| from_db_time(r.get(0))).ok_or_else(|| StoreError::Record("revoked token".into()))?;
        append_audit(&tx, &audit).await?;
        notify(&tx, &Change::TokenRevoked(token_id)).await?;
        commit(tx).await?;
        // `stored` is capped at i64::MAX; the answer is the later end, as in redb.
        Ok(stored.max(until))
    }

    async fn revoked_tokens(&self, now: u64) -> Result<Vec<([u8; 16], u64)>, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT token_id, until FROM revoked_tokens WHERE until >= $1 ORDER BY token_id",
            &[&db_time(now)],
        )
        .await?;
        rows.iter().map(|r| Ok((fixed::<16>(r.get(0), "revoked token")?, from_db_time(r.get(1))))).collect()
    }

    async fn sweep_revoked_tokens(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "DELETE FROM revoked_tokens WHERE token_id IN
             (SELECT token_id FROM revoked_tokens WHERE until < $1 ORDER BY token_id LIMIT $2)",
            &[&db_time(now), &db_count(max)],
        )
        .await?;
        Ok(count(n))
    }

    async fn put_replay_ids(&self, ids: Vec<(u64, [u8; 16])>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let stamps: Vec<i64> = ids.iter().map(|(s, _)| db_time(*s)).collect();
        let keys: Vec<&[u8]> = ids.iter().map(|(_, id)| &id[..]).collect();
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO replay_ids (stamp, id) SELECT * FROM unnest($1::bigint[], $2::bytea[]) ON CONFLICT DO NOTHING",
            &[&stamps, &keys],
        )
        .await?;
        Ok(())
    }

    async fn replay_ids_after(&self, after: u64) -> Result<Vec<(u64, [u8; 16])>, StoreError> {
        let client = self.client().await?;
        let rows =
            query(&client, "SELECT stamp, id FROM replay_ids WHERE stamp > $1 ORDER BY stamp, id", &[&db_time(after)])
                .await?;
        rows.iter().map(|r| Ok((from_db_time(r.get(0)), fixed::<16>(r.get(1), "replay id")?))).collect()
    }

    async fn sweep_replay_ids(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "DELETE FROM replay_ids WHERE (stamp, id) IN
             (SELECT stamp, id FROM replay_ids WHERE stamp <= $1 ORDER BY stamp, id LIMIT $2)",
            &[&db_time(now), &db_count(max)],
        )
        .await?;
        Ok(count(n))
    }
}
