//! The handshake key lifecycle in the store: every key has a finite validity, a new
//! key is made when the newest one nears its end, and a retired key's private part
//! is deleted from the store as soon as its `not_after` has passed (the end of its
//! rotation overlap). Deciding what to do ([`plan`]) is a pure function of the
//! stored validities, the time and the [`KeyPolicy`], so it is tested without a
//! clock; [`Store::maintain_server_keys`] applies a plan in one durable transaction
//! together with its audit entries.

use redb::{ReadableDatabase, ReadableTable};

use super::{append_audit, damaged, AuditEntry, ServerKeyRecord, Store, StoreError, SERVER_KEYS};

/// Default validity of a handshake key: 30 days.
pub const DEFAULT_SERVER_KEY_LIFETIME_SECS: u64 = 30 * 86_400;
/// Default rotation overlap: the old key is still accepted for one day after its
/// successor appears, then destroyed.
pub const DEFAULT_SERVER_KEY_OVERLAP_SECS: u64 = 86_400;

/// How long handshake keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Validity of a new key, from its creation.
    pub lifetime_secs: u64,
    /// A successor is made when the newest key has this long left; the old key is
    /// accepted until its `not_after`, then destroyed.
    pub overlap_secs: u64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { lifetime_secs: DEFAULT_SERVER_KEY_LIFETIME_SECS, overlap_secs: DEFAULT_SERVER_KEY_OVERLAP_SECS }
    }
}

/// A stored key's id and validity (its private part stays sealed).
pub type KeyValidity = ([u8; 8], u64, u64);

/// What the lifecycle changes at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys whose `not_after` has passed: deleted from the store.
    pub destroyed: Vec<[u8; 8]>,
    /// Keys valid longer than the policy allows (e.g. the year-9999 validity older
    /// stores gave their first key), with their new `not_after`.
    pub shortened: Vec<([u8; 8], u64)>,
    /// A new key was made: its `not_before` and `not_after` (the id is drawn when
    /// the plan is applied).
    pub rotate: Option<(u64, u64)>,
    /// The id of the key made, once applied.
    pub new_key_id: Option<[u8; 8]>,
}

impl KeyChanges {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.destroyed.is_empty() && self.shortened.is_empty() && self.rotate.is_none()
    }
}

/// What to do with the stored keys at `now` under `policy`.
///
/// - a key whose `not_after < now` is destroyed;
/// - a key valid beyond `max(not_before + lifetime, now + overlap)` is cut back to
///   it (never lengthened), so a key too old for the policy still gets an overlap;
/// - when no key is left, or the newest (latest `not_before`, as clients choose)
///   ends within `overlap`, a key valid `now ..= now + lifetime` is made.
pub fn plan(keys: &[KeyValidity], now: u64, policy: KeyPolicy) -> KeyChanges {
    let mut changes = KeyChanges::default();
    let mut live: Vec<(u64, u64)> = Vec::new();
    for &(id, not_before, not_after) in keys {
        if not_after < now {
            changes.destroyed.push(id);
            continue;
        }
        let cap = not_before.saturating_add(policy.lifetime_secs).max(now.saturating_add(policy.overlap_secs));
        if not_after > cap {
            changes.shortened.push((id, cap));
        }
        live.push((not_before, not_after.min(cap)));
    }
    let newest = live.iter().max();
    if newest.is_none_or(|&(_, not_after)| not_after <= now.saturating_add(policy.overlap_secs)) {
        changes.rotate = Some((now, now.saturating_add(policy.lifetime_secs)));
    }
    changes
}

impl Store {
    /// Ids and validities of the stored handshake keys, without unsealing them.
    pub fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError> {
        let read = (*self.db).begin_read().map_err(|e| damaged(&self.path, e))?;
        let table = read.open_table(SERVER_KEYS).map_err(|e| damaged(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| damaged(&self.path, e))? {
            let (k, v) = row.map_err(|e| damaged(&self.path, e))?;
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
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let mut audit = Vec::new();
        {
            let mut table = w.open_table(SERVER_KEYS).map_err(|e| damaged(&self.path, e))?;
            for id in &changes.destroyed {
                table.remove(&id[..]).map_err(|e| damaged(&self.path, e))?;
                audit.push(("server_key.destroyed", serde_json::json!({ "key_id": hex::encode(id) })));
            }
            for (id, not_after) in &changes.shortened {
                let stored = table.get(&id[..]).map_err(|e| damaged(&self.path, e))?.map(|v| record(v.value()));
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
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(changes)
    }

    /// Adds a handshake key valid `now ..= now + lifetime` and ends every other key's
    /// validity at `old_not_after` (if earlier than it was); keys already past their
    /// `not_after` are destroyed. Returns the new key id.
    pub fn rotate_server_key(&self, now: u64, old_not_after: u64, lifetime: u64) -> Result<[u8; 8], StoreError> {
        let (id, new) = self.new_key_record(now, now.saturating_add(lifetime));
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        {
            let mut table = w.open_table(SERVER_KEYS).map_err(|e| damaged(&self.path, e))?;
            let mut updates = Vec::new();
            for row in table.iter().map_err(|e| damaged(&self.path, e))? {
                let (k, v) = row.map_err(|e| damaged(&self.path, e))?;
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
                        table.remove(&k[..]).map_err(|e| damaged(&self.path, e))?;
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
                },
            )?;
        }
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(id)
    }

    /// A fresh random key id and sealed private key with the given validity.
    pub(super) fn new_key_record(&self, not_before: u64, not_after: u64) -> ([u8; 8], ServerKeyRecord) {
        super::genesis::new_server_key(&self.sealer, not_before, not_after)
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
    table.insert(id, &v[..]).map_err(|e| damaged(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: KeyPolicy = KeyPolicy { lifetime_secs: 100, overlap_secs: 20 };

    #[test]
    fn a_key_is_left_alone_until_its_overlap_then_succeeded_then_destroyed() {
        let key = (*b"key00001", 1_000, 1_100);
        assert!(plan(&[key], 1_050, POLICY).is_empty());
        assert!(plan(&[key], 1_079, POLICY).is_empty());
        assert_eq!(plan(&[key], 1_080, POLICY).rotate, Some((1_080, 1_180)), "successor when 20 s are left");
        let successor = (*b"key00002", 1_080, 1_180);
        assert!(plan(&[key, successor], 1_100, POLICY).is_empty(), "the old key lives out its overlap");
        let after = plan(&[key, successor], 1_101, POLICY);
        assert_eq!(after.destroyed, vec![*b"key00001"], "and is destroyed the second it ends");
        assert_eq!((after.rotate, after.shortened.len()), (None, 0));
    }

    #[test]
    fn a_year_9999_key_is_cut_back_and_given_an_overlap() {
        // Stores made before keys had a lifetime: the first key was valid until 9999.
        let old = (*b"legacy01", 1_000, 253_402_300_799);
        let fresh = plan(&[old], 1_010, POLICY);
        assert_eq!(fresh.shortened, vec![(*b"legacy01", 1_100)], "cut to not_before + lifetime");
        assert_eq!(fresh.rotate, None);
        let ancient = plan(&[old], 5_000, POLICY);
        assert_eq!(ancient.shortened, vec![(*b"legacy01", 5_020)], "too old: it keeps only an overlap");
        assert_eq!(ancient.rotate, Some((5_000, 5_100)), "and gets its successor at once");
    }

    #[test]
    fn a_store_without_a_live_key_gets_one() {
        let expired = (*b"expired1", 0, 10);
        let changes = plan(&[expired], 500, POLICY);
        assert_eq!((changes.destroyed, changes.rotate), (vec![*b"expired1"], Some((500, 600))));
        assert_eq!(plan(&[], 500, POLICY).rotate, Some((500, 600)));
    }

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
