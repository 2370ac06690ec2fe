//! Revoked tokens, kept until the token would have expired anyway, so that a
//! revocation survives a restart: `serve` loads them into the shared state at start
//! and `GET /v1/revocations` lists them for resource servers. Rows are keyed by token
//! id; the value is the time the row may go (u64 big-endian).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::audit::append_audit;
use super::store::engine_error;
use super::Store;
use crate::store::{AuditEntry, StoreError};

const REVOKED_TOKENS: TableDefinition<&[u8], u64> = TableDefinition::new("revoked_tokens");

impl Store {
    /// Revokes `token_id` until `until`, with its audit event, in one transaction. A
    /// token revoked already keeps the later of the two times.
    pub fn revoke_token(&self, token_id: &[u8; 16], until: u64, audit: &AuditEntry) -> Result<u64, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let until = {
            let mut table = w.open_table(REVOKED_TOKENS).map_err(|e| engine_error(&self.path, e))?;
            let before = table.get(&token_id[..]).map_err(|e| engine_error(&self.path, e))?.map(|v| v.value());
            let until = before.map_or(until, |b| b.max(until));
            table.insert(&token_id[..], until).map_err(|e| engine_error(&self.path, e))?;
            until
        };
        append_audit(&w, &self.path, audit)?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(until)
    }

    /// Revocations still in force at `now`, as `(token id, until)`.
    pub fn revoked_tokens(&self, now: u64) -> Result<Vec<([u8; 16], u64)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(REVOKED_TOKENS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| engine_error(&self.path, e))? {
            let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
            let id: [u8; 16] = k.value().try_into().map_err(|_| StoreError::Record("revoked token".into()))?;
            if v.value() >= now {
                out.push((id, v.value()));
            }
        }
        Ok(out)
    }

    /// Deletes at most `max` revocations whose token has expired; returns how many.
    pub fn sweep_revoked_tokens(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        let expired: Vec<Vec<u8>> = {
            let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
            let table = match read.open_table(REVOKED_TOKENS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(engine_error(&self.path, e)),
            };
            let mut expired = Vec::new();
            for row in table.iter().map_err(|e| engine_error(&self.path, e))? {
                let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
                if v.value() < now {
                    expired.push(k.value().to_vec());
                    if expired.len() >= max {
                        break;
                    }
                }
            }
            expired
        };
        if expired.is_empty() {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut table = w.open_table(REVOKED_TOKENS).map_err(|e| engine_error(&self.path, e))?;
            for k in &expired {
                table.remove(&k[..]).map_err(|e| engine_error(&self.path, e))?;
            }
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_last_until_the_token_would_expire_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditEntry { at: 100, event: "token.revoked", detail: serde_json::json!({}) };
        {
            let (store, _) = Store::open_or_init(dir.path(), None, 100).unwrap();
            assert_eq!(store.revoke_token(&[1; 16], 500, &audit).unwrap(), 500);
            assert_eq!(store.revoke_token(&[1; 16], 400, &audit).unwrap(), 500, "never shortened");
            store.revoke_token(&[2; 16], 200, &audit).unwrap();
        }
        let (store, _) = Store::open_or_init(dir.path(), None, 100).unwrap();
        let mut live = store.revoked_tokens(300).unwrap();
        live.sort();
        assert_eq!(live, vec![([1; 16], 500)]);
        assert_eq!(store.sweep_revoked_tokens(300, 10).unwrap(), 1);
        assert_eq!(store.revoked_tokens(0).unwrap().len(), 1);
    }
}
