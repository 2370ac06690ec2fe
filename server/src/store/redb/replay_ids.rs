//! Replay ids that must outlive the process: those of requests stamped ahead of the
//! server's clock (PROTOCOL.md §6.2 step 8). Every other accepted stamp is at or
//! before the second it was accepted in, so a restarted server refuses it by its
//! start-time rule (`stamp > started_at`, strictly); an id stamped ahead is written
//! here before its answer leaves, loaded into the replay cache at start, and deleted
//! once the clock has passed its stamp (from then on the start-time rule covers it).
//!
//! Rows are keyed `stamp (u64 big-endian) ‖ replay id (16 bytes)`, with no value, so
//! that both the start-up load (stamps after the start) and the sweep (stamps up to
//! now) are one range read.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::store::engine_error;
use super::Store;
use crate::store::StoreError;

const REPLAY_IDS: TableDefinition<&[u8], ()> = TableDefinition::new("replay_ids_ahead");
const ROW_LEN: usize = 8 + 16;

fn row_key(stamp: u64, id: &[u8; 16]) -> [u8; ROW_LEN] {
    let mut key = [0u8; ROW_LEN];
    key[..8].copy_from_slice(&stamp.to_be_bytes());
    key[8..].copy_from_slice(id);
    key
}

fn parse_row(key: &[u8]) -> Option<(u64, [u8; 16])> {
    let key: &[u8; ROW_LEN] = key.try_into().ok()?;
    let (stamp, id) = key.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*stamp), id.try_into().ok()?))
}

impl Store {
    /// Records `(stamp, replay id)` pairs durably, all in one transaction (one fsync
    /// for a whole batch of concurrent requests).
    pub fn put_replay_ids(&self, ids: &[(u64, [u8; 16])]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut table = w.open_table(REPLAY_IDS).map_err(|e| engine_error(&self.path, e))?;
            for (stamp, id) in ids {
                table.insert(&row_key(*stamp, id)[..], ()).map_err(|e| engine_error(&self.path, e))?;
            }
        }
        w.commit().map_err(|e| engine_error(&self.path, e))
    }

    /// The recorded ids stamped strictly after `after`, as `(stamp, id)`.
    pub fn replay_ids_after(&self, after: u64) -> Result<Vec<(u64, [u8; 16])>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(REPLAY_IDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        let Some(first) = after.checked_add(1) else { return Ok(Vec::new()) };
        let start = row_key(first, &[0; 16]);
        let mut out = Vec::new();
        for row in table.range::<&[u8]>(&start[..]..).map_err(|e| engine_error(&self.path, e))? {
            let (k, ()) = row.map(|(k, v)| (k, v.value())).map_err(|e| engine_error(&self.path, e))?;
            out.push(parse_row(k.value()).ok_or_else(|| StoreError::Record("replay id".into()))?);
        }
        Ok(out)
    }

    fn oldest_replay_id_stamp(&self) -> Result<Option<u64>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(REPLAY_IDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        let first = table.first().map_err(|e| engine_error(&self.path, e))?;
        Ok(first.and_then(|(k, _)| parse_row(k.value())).map(|(stamp, _)| stamp))
    }

    /// Deletes at most `max` ids stamped at or before `now` (the start-time rule
    /// refuses them after any restart); returns how many went.
    pub fn sweep_replay_ids(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        // Read first: an idle pass (the usual case) costs no write transaction.
        if self.oldest_replay_id_stamp()?.is_none_or(|stamp| stamp > now) {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let removed = {
            let mut table = w.open_table(REPLAY_IDS).map_err(|e| engine_error(&self.path, e))?;
            let end = row_key(now, &[0xff; 16]);
            let mut old = Vec::new();
            for row in table.range::<&[u8]>(..=&end[..]).map_err(|e| engine_error(&self.path, e))?.take(max) {
                let (k, _) = row.map_err(|e| engine_error(&self.path, e))?;
                old.push(k.value().to_vec());
            }
            for k in &old {
                table.remove(&k[..]).map_err(|e| engine_error(&self.path, e))?;
            }
            old.len()
        };
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_ahead_are_kept_until_the_clock_passes_their_stamp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = Store::open_or_init(dir.path(), None, 1_000).expect("store");
        assert_eq!(store.replay_ids_after(0).expect("empty read"), vec![], "no table yet");
        store.put_replay_ids(&[(1_040, [1; 16]), (1_001, [2; 16]), (1_000, [3; 16])]).expect("put");
        // A start at 1_000 loads what it could otherwise accept again: stamps > 1_000.
        assert_eq!(store.replay_ids_after(1_000).expect("load"), vec![(1_001, [2; 16]), (1_040, [1; 16])]);
        assert_eq!(store.replay_ids_after(u64::MAX).expect("load"), vec![]);
        // Bounded batches: one at a time, oldest first, never a stamp after now.
        assert_eq!(store.sweep_replay_ids(1_039, 1).expect("sweep"), 1);
        assert_eq!(store.sweep_replay_ids(1_039, 10).expect("sweep"), 1);
        assert_eq!(store.sweep_replay_ids(1_039, 10).expect("sweep"), 0);
        assert_eq!(store.replay_ids_after(0).expect("load"), vec![(1_040, [1; 16])]);
        assert_eq!(store.sweep_replay_ids(1_040, 10).expect("sweep"), 1);
    }
}
