//! Token master key rotation: a new key seals from now on, older ones still open
//! tokens until their `retire_at` (at least the token lifetime, so no token in
//! circulation stops working), then they are deleted from the store. Resource servers
//! take the new audience key from `onetrip audience-key` during the overlap.

use rand_core::{OsRng, RngCore};
use redb::ReadableTable;

use super::{append_audit, damaged, AuditEntry, Store, StoreError, TokenKeyRecord, META};

fn read_records(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &std::path::Path,
) -> Result<Vec<TokenKeyRecord>, StoreError> {
    let bytes =
        meta.get("token_keys").map_err(|e| damaged(path, e))?.ok_or_else(|| StoreError::Record("token_keys".into()))?;
    serde_json::from_slice(bytes.value()).map_err(|_| StoreError::Record("token_keys".into()))
}

impl Store {
    /// Puts a new token master key first and schedules every older one to retire at
    /// `now + overlap_secs` (never later than it already would); keys whose time has
    /// come go now. One transaction, with its audit event; returns the new key id.
    pub fn rotate_token_key(&self, now: u64, overlap_secs: u64) -> Result<[u8; 4], StoreError> {
        let mut master = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(master.as_mut());
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let (id, retired) = {
            let mut meta = w.open_table(META).map_err(|e| damaged(&self.path, e))?;
            let mut records = read_records(&meta, &self.path)?;
            let mut id = [0u8; 4];
            while id == [0; 4] || records.iter().any(|r| r.id == hex::encode(id)) {
                OsRng.fill_bytes(&mut id);
            }
            let retire_at = now.saturating_add(overlap_secs);
            for r in &mut records {
                r.retire_at = Some(r.retire_at.map_or(retire_at, |t| t.min(retire_at)));
            }
            let before = records.len();
            records.retain(|r| r.retire_at.is_none_or(|t| t > now));
            let retired = before - records.len();
            records.insert(
                0,
                TokenKeyRecord {
                    id: hex::encode(id),
                    master: hex::encode(self.sealer.seal(&super::token_key_slot(&id), &master[..])),
                    created_at: now,
                    retire_at: None,
                },
            );
            let bytes = serde_json::to_vec(&records).map_err(|_| StoreError::Record("token_keys".into()))?;
            meta.insert("token_keys", &bytes[..]).map_err(|e| damaged(&self.path, e))?;
            (id, retired)
        };
        let audit = AuditEntry {
            at: now,
            event: "token_key.rotated",
            detail: serde_json::json!({ "new": hex::encode(id), "overlap_secs": overlap_secs, "retired_now": retired }),
        };
        append_audit(&w, &self.path, &audit)?;
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(id)
    }

    /// Deletes older token keys whose retirement time has come; returns how many
    /// (no write when none has).
    pub fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError> {
        let due = {
            let read = redb::ReadableDatabase::begin_read(&*self.db).map_err(|e| damaged(&self.path, e))?;
            let meta = read.open_table(META).map_err(|e| damaged(&self.path, e))?;
            read_records(&meta, &self.path)?.iter().filter(|r| r.retire_at.is_some_and(|t| t <= now)).count()
        };
        if due == 0 {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let dropped = {
            let mut meta = w.open_table(META).map_err(|e| damaged(&self.path, e))?;
            let mut records = read_records(&meta, &self.path)?;
            let before = records.len();
            records.retain(|r| r.retire_at.is_none_or(|t| t > now));
            let bytes = serde_json::to_vec(&records).map_err(|_| StoreError::Record("token_keys".into()))?;
            meta.insert("token_keys", &bytes[..]).map_err(|e| damaged(&self.path, e))?;
            before - records.len()
        };
        let audit = AuditEntry { at: now, event: "token_key.retired", detail: serde_json::json!({ "count": dropped }) };
        append_audit(&w, &self.path, &audit)?;
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_seals_and_the_old_one_opens_until_it_retires() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_or_init(dir.path(), None, 1_000).unwrap();
        let first = store.server_secrets().unwrap().token_keys[0].0;
        let new = store.rotate_token_key(1_000, 900).unwrap();
        let keys: Vec<[u8; 4]> = store.server_secrets().unwrap().token_keys.iter().map(|k| k.0).collect();
        assert_eq!(keys, [new, first], "the new key first, the old one still there");
        assert_eq!(store.drop_retired_token_keys(1_899).unwrap(), 0);
        assert_eq!(store.drop_retired_token_keys(1_900).unwrap(), 1);
        let keys: Vec<[u8; 4]> = store.server_secrets().unwrap().token_keys.iter().map(|k| k.0).collect();
        assert_eq!(keys, [new]);
        // A second rotation never extends an older key's retirement.
        let third = store.rotate_token_key(2_000, 0).unwrap();
        let keys: Vec<[u8; 4]> = store.server_secrets().unwrap().token_keys.iter().map(|k| k.0).collect();
        assert_eq!(keys, [third], "an overlap of 0 retires the old key at once");
    }
}
