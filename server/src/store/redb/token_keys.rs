//! Token master key rotation: a new key seals from now on, older ones still open
//! tokens until their `retire_at` (at least the token lifetime, so no token in
//! circulation stops working), then they are deleted from the store. Resource servers
//! take the new audience key from `onetrip audience-key` during the overlap.

use redb::ReadableTable;

use super::audit::append_audit;
use super::store::{engine_error, META};
use super::Store;
use crate::store::genesis::{
    decode_token_records, drop_retired_token_records, encode_token_records, rotate_token_records, token_rotation_event,
};
use crate::store::{AuditEntry, StoreError, TokenKeyRecord};

fn read_records(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &std::path::Path,
) -> Result<Vec<TokenKeyRecord>, StoreError> {
    let bytes = meta
        .get("token_keys")
        .map_err(|e| engine_error(path, e))?
        .ok_or_else(|| StoreError::Record("token_keys".into()))?;
    decode_token_records(bytes.value())
}

impl Store {
    /// Puts a new token master key first and schedules every older one to retire at
    /// `now + overlap_secs` (never later than it already would); keys whose time has
    /// come go now. One transaction, with its audit event; returns the new key id.
    pub fn rotate_token_key(&self, now: u64, overlap_secs: u64) -> Result<[u8; 4], StoreError> {
        self.rotate_token_key_by(now, overlap_secs, serde_json::Value::Null)
    }

    /// [`Self::rotate_token_key`], with who asked in its audit event.
    pub fn rotate_token_key_by(
        &self,
        now: u64,
        overlap_secs: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 4], StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let (id, retired) = {
            let mut meta = w.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            let mut records = read_records(&meta, &self.path)?;
            let rotated = rotate_token_records(&self.sealer, &mut records, now, overlap_secs);
            meta.insert("token_keys", &encode_token_records(&records)?[..]).map_err(|e| engine_error(&self.path, e))?;
            rotated
        };
        append_audit(&w, &self.path, &token_rotation_event(&id, now, overlap_secs, retired).by(actor))?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(id)
    }

    /// Deletes older token keys whose retirement time has come; returns how many
    /// (no write when none has).
    pub fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError> {
        let due = {
            let read = redb::ReadableDatabase::begin_read(&*self.db).map_err(|e| engine_error(&self.path, e))?;
            let meta = read.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            read_records(&meta, &self.path)?.iter().filter(|r| r.retire_at.is_some_and(|t| t <= now)).count()
        };
        if due == 0 {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let dropped = {
            let mut meta = w.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            let mut records = read_records(&meta, &self.path)?;
            let dropped = drop_retired_token_records(&mut records, now);
            meta.insert("token_keys", &encode_token_records(&records)?[..]).map_err(|e| engine_error(&self.path, e))?;
            dropped
        };
        let audit = AuditEntry { at: now, event: "token_key.retired", detail: serde_json::json!({ "count": dropped }) };
        append_audit(&w, &self.path, &audit)?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
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
