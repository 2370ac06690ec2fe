//! The handshake key lifecycle in the embedded store: [`Store::maintain_server_keys`]
//! applies a [`plan`](crate::store::plan_server_keys) in one durable transaction
//! together with its audit entries, and an operator's rotation adds a key the same way.

use redb::{ReadableDatabase, ReadableTable};

use super::audit::append_audit;
use super::store::{engine_error, SERVER_KEYS};
use super::Store;
use crate::store::{
    plan_server_keys as plan, AuditEntry, KeyChanges, KeyPolicy, KeyValidity, ServerKeyRecord, StoreError,
};

impl Store {
    /// Ids and validities of the stored handshake keys, without unsealing them.
    pub fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError> {
        let read = (*self.db).begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = read.open_table(SERVER_KEYS).map_err(|e| engine_error(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| engine_error(&self.path, e))? {
            let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
            let id: [u8; 8] = k.value().try_into().map_err(|_| StoreError::Record("server key id".into()))?;
            let r = record(v.value())?;
            out.push((id, r.not_before, r.not_after));
        }
        Ok(out)
    }

    /// Runs the lifecycle at `now` (see [`plan`]): destroys retired keys, cuts back
    /// over-long validities and makes a successor when due, in one durable
    /// transaction with its audit entries. Writes nothing when nothing is due.
    pub fn maintain_server_keys(&self, now: u64, policy: KeyPolicy) -> Result<KeyChanges, StoreError> {
        let mut changes = plan(&self.server_key_validity()?, now, policy);
        if changes.is_empty() {
            return Ok(changes);
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let mut audit = Vec::new();
        {
            let mut table = w.open_table(SERVER_KEYS).map_err(|e| engine_error(&self.path, e))?;
            for id in &changes.destroyed {
                table.remove(&id[..]).map_err(|e| engine_error(&self.path, e))?;
                audit.push(("server_key.destroyed", serde_json::json!({ "key_id": hex::encode(id) })));
            }
            for (id, not_after) in &changes.shortened {
                let stored = table.get(&id[..]).map_err(|e| engine_error(&self.path, e))?.map(|v| record(v.value()));
                let Some(r) = stored else { continue };
                let mut r = r?;
                r.not_after = *not_after;
                put(&mut table, &self.path, id, &r)?;
                audit.push((
                    "server_key.shortened",
                    serde_json::json!({ "key_id": hex::encode(id), "not_after": not_after }),
                ));
            }
            if let Some((not_before, not_after)) = changes.rotate {
                let (id, r) = self.new_key_record(not_before, not_after);
                put(&mut table, &self.path, &id, &r)?;
                changes.new_key_id = Some(id);
                audit.push((
                    "server_key.rotated",
                    serde_json::json!({ "new_key_id": hex::encode(id), "not_after": not_after, "automatic": true }),
                ));
            }
        }
        for (event, detail) in audit {
            append_audit(&w, &self.path, &AuditEntry { at: now, event, detail })?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(changes)
    }

    /// Adds a handshake key valid `now ..= now + lifetime` and ends every other key's
    /// validity at `old_not_after` (if earlier than it was); keys already past their
    /// `not_after` are destroyed. Returns the new key id.
    pub fn rotate_server_key(&self, now: u64, old_not_after: u64, lifetime: u64) -> Result<[u8; 8], StoreError> {
        self.rotate_server_key_by(now, old_not_after, lifetime, serde_json::Value::Null)
    }

    /// [`Self::rotate_server_key`], with who asked in its audit event.
    pub fn rotate_server_key_by(
        &self,
        now: u64,
        old_not_after: u64,
        lifetime: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 8], StoreError> {
        let (id, new) = self.new_key_record(now, now.saturating_add(lifetime));
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut table = w.open_table(SERVER_KEYS).map_err(|e| engine_error(&self.path, e))?;
            let mut updates = Vec::new();
            for row in table.iter().map_err(|e| engine_error(&self.path, e))? {
                let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
                let mut r = record(v.value())?;
                if r.not_after < now {
                    updates.push((k.value().to_vec(), None));
                } else if r.not_after > old_not_after {
                    r.not_after = old_not_after.max(r.not_before);
                    updates.push((k.value().to_vec(), Some(r)));
                }
            }
            for (k, r) in updates {
                match r {
                    Some(r) => put(&mut table, &self.path, &k, &r)?,
                    None => {
                        table.remove(&k[..]).map_err(|e| engine_error(&self.path, e))?;
                    }
                }
            }
            put(&mut table, &self.path, &id, &new)?;
            append_audit(
                &w,
                &self.path,
                &AuditEntry {
                    at: now,
                    event: "server_key.rotated",
                    detail: serde_json::json!({ "new_key_id": hex::encode(id), "old_not_after": old_not_after }),
                }
                .by(actor),
            )?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(id)
    }

    /// A fresh random key id and sealed private key with the given validity.
    pub(super) fn new_key_record(&self, not_before: u64, not_after: u64) -> ([u8; 8], ServerKeyRecord) {
        crate::store::genesis::new_server_key(&self.sealer, not_before, not_after)
    }
}

fn record(bytes: &[u8]) -> Result<ServerKeyRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Record("server key".into()))
}

fn put(
    table: &mut redb::Table<&[u8], &[u8]>,
    path: &std::path::Path,
    id: &[u8],
    r: &ServerKeyRecord,
) -> Result<(), StoreError> {
    let v = serde_json::to_vec(r).map_err(|_| StoreError::Record("server key".into()))?;
    table.insert(id, &v[..]).map_err(|e| engine_error(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_moved_to_another_key_id_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_or_init(dir.path(), Some("correct horse"), 1_000).unwrap();
        store.rotate_server_key(1_000, 2_000, 10_000).unwrap();
        assert_eq!(store.server_secrets().unwrap().server_keys.len(), 2);
        // Someone who can write the store swaps the two sealed private keys.
        let w = store.db.begin_write().unwrap();
        {
            let mut table = w.open_table(SERVER_KEYS).unwrap();
            let rows: Vec<(Vec<u8>, ServerKeyRecord)> = table
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value().to_vec(), serde_json::from_slice(v.value()).unwrap())
                })
                .collect();
            let (a, b) = (&rows[0], &rows[1]);
            for (key, from) in [(&a.0, &b.1), (&b.0, &a.1)] {
                let mut moved = if key == &a.0 { a.1.clone() } else { b.1.clone() };
                moved.private.clone_from(&from.private);
                table.insert(&key[..], &serde_json::to_vec(&moved).unwrap()[..]).unwrap();
            }
        }
        w.commit().unwrap();
        assert!(matches!(store.server_secrets(), Err(StoreError::Seal(_))), "swapped blobs must not open");
    }

    #[test]
    fn keys_sealed_before_slots_named_the_id_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_or_init(dir.path(), Some("correct horse"), 1_000).unwrap();
        let private = onetrip_protocol::Secret::new([7; 32]);
        let legacy = ServerKeyRecord {
            private: hex::encode(store.sealer.seal("server_key", private.expose())),
            not_before: 1_000,
            not_after: 5_000,
        };
        let w = store.db.begin_write().unwrap();
        w.open_table(SERVER_KEYS).unwrap().insert(&b"legacy01"[..], &serde_json::to_vec(&legacy).unwrap()[..]).unwrap();
        w.commit().unwrap();
        let keys = store.server_secrets().unwrap().server_keys;
        let opened = keys.iter().find(|k| &k.0 == b"legacy01").unwrap();
        assert!(opened.1.ct_eq(&private));
    }
}
