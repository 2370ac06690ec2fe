//! The audit log in the embedded store: events appended in the transaction of the
//! change they record, read back newest last, and retention, which deletes the
//! oldest rows in bounded batches, so that a busy key cannot grow the store without
//! end and no single transaction (or the write lock it holds) grows with the backlog.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};

use super::store::{engine_error, AUDIT};
use super::Store;
use crate::store::{AuditEntry, StoreError};

/// Appends the audit entry an update produced, if any, and hands back its result.
pub(super) fn append_audit_of<R>(
    w: &redb::WriteTransaction,
    path: &Path,
    result: Option<(R, Option<AuditEntry>)>,
) -> Result<Option<R>, StoreError> {
    let Some((r, entry)) = result else { return Ok(None) };
    if let Some(entry) = entry {
        append_audit(w, path, &entry)?;
    }
    Ok(Some(r))
}

pub(super) fn append_audit(w: &redb::WriteTransaction, path: &Path, entry: &AuditEntry) -> Result<(), StoreError> {
    let mut table = w.open_table(AUDIT).map_err(|e| engine_error(path, e))?;
    let next = table.last().map_err(|e| engine_error(path, e))?.map_or(0, |(k, _)| k.value() + 1);
    let v = serde_json::to_vec(&serde_json::json!({ "at": entry.at, "event": entry.event, "detail": entry.detail }))
        .map_err(|_| StoreError::Record("audit".into()))?;
    table.insert(next, &v[..]).map_err(|e| engine_error(path, e))?;
    Ok(())
}

impl Store {
    /// Appends an audit event.
    pub fn audit(&self, now: u64, event: &'static str, detail: serde_json::Value) -> Result<(), StoreError> {
        self.record_audit(&AuditEntry { at: now, event, detail })
    }

    /// Appends an audit event that goes with no other change, in its own transaction.
    pub fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        append_audit(&w, &self.path, entry)?;
        w.commit().map_err(|e| engine_error(&self.path, e))
    }

    /// Audit events at or after `since` (unix seconds), newest `limit`, oldest first.
    pub fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = read.open_table(AUDIT).map_err(|e| engine_error(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| engine_error(&self.path, e))?.rev() {
            let (_, v) = row.map_err(|e| engine_error(&self.path, e))?;
            let event: serde_json::Value =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("audit".into()))?;
            if event["at"].as_u64().unwrap_or(0) < since || out.len() >= limit {
                break;
            }
            out.push(event);
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes at most `max` audit rows recorded before `cutoff` (unix seconds),
    /// oldest first, in one transaction; returns how many went. Rows are appended in
    /// time order, so the scan stops at the first row at or after `cutoff`.
    pub fn delete_audit_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError> {
        // Read first: an idle pass costs no write transaction (no fsync, no file change).
        if !self.oldest_audit_before(cutoff)? {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let removed = {
            let mut table = w.open_table(AUDIT).map_err(|e| engine_error(&self.path, e))?;
            let mut old = Vec::new();
            for row in table.iter().map_err(|e| engine_error(&self.path, e))?.take(max) {
                let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
                let at = serde_json::from_slice::<serde_json::Value>(v.value())
                    .map_err(|_| StoreError::Record("audit".into()))?["at"]
                    .as_u64()
                    .unwrap_or(0);
                if at >= cutoff {
                    break;
                }
                old.push(k.value());
            }
            for k in &old {
                table.remove(k).map_err(|e| engine_error(&self.path, e))?;
            }
            old.len()
        };
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(removed)
    }

    /// True when the oldest audit row was recorded before `cutoff`.
    fn oldest_audit_before(&self, cutoff: u64) -> Result<bool, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        let Some((_, v)) = table.first().map_err(|e| engine_error(&self.path, e))? else { return Ok(false) };
        let event: serde_json::Value =
            serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("audit".into()))?;
        Ok(event["at"].as_u64().unwrap_or(0) < cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_audit_rows_go_in_bounded_batches_and_recent_ones_stay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = Store::open_or_init(dir.path(), None, 1_000).expect("store");
        let before = store.audit_since(0, usize::MAX).expect("read").len();
        for at in [1_000, 1_001, 1_002, 5_000, 5_001] {
            store.audit(at, "test.event", serde_json::json!({ "at": at })).expect("audit");
        }
        // Batches of at most 2 rows until none is older than 5_000 (the store's own
        // creation events, stamped 1_000, go too).
        let mut removed = Vec::new();
        loop {
            match store.delete_audit_before(5_000, 2).expect("batch") {
                0 => break,
                n => removed.push(n),
            }
        }
        assert!(removed.iter().all(|&n| n <= 2), "{removed:?}");
        assert_eq!(removed.iter().sum::<usize>(), before + 3);
        let left: Vec<u64> =
            store.audit_since(0, usize::MAX).expect("read").iter().map(|e| e["at"].as_u64().expect("at")).collect();
        assert_eq!(left, vec![5_000, 5_001]);
        // A new row after the old ones went still gets a fresh position at the end.
        store.audit(6_000, "test.event", serde_json::json!({})).expect("audit");
        assert_eq!(store.audit_since(5_001, 10).expect("read").len(), 2);
    }
}
