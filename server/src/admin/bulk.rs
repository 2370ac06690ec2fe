//! Bulk key changes: `keys create --count N` and `keys revoke --from FILE`. Each
//! request is one store transaction with one audit event naming every key, so a
//! batch is all there or not there at all; a running server then precomputes (or
//! drops) only the keys that changed.

use std::collections::HashSet;

use onetrip_protocol::api_key::KeyId;

use super::answers::{KeyCreated, KeySummary, KeysCreated, KeysRevoked};
use super::ops::{key_id, NewKeySpec};
use super::{Actor, AdminError, Live, MAX_BULK};
use crate::store::{ApiKeyRecord, StateStore};

/// Creates `count` keys like `spec` in one transaction.
pub(super) async fn create_many(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    spec: NewKeySpec,
    count: usize,
    now: u64,
    actor: &Actor,
) -> Result<KeysCreated, AdminError> {
    within_bulk_limit(count)?;
    let mut keys = Vec::with_capacity(count);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let (key, record) = spec.generate(now)?;
        records.push((key.id(), record));
        keys.push(key);
    }
    let ids: Vec<String> = records.iter().map(|(id, _)| id.to_string()).collect();
    let audit =
        actor.event(now, "key.created_many", serde_json::json!({ "ids": ids, "name": spec.name, "count": count }));
    store.put_api_keys(records.clone(), Some(audit)).await?;
    if let Some(live) = live {
        for (id, record) in &records {
            live.key_changed(*id, record).await;
        }
    }
    let created = keys
        .iter()
        .zip(&records)
        .map(|(key, (id, record))| KeyCreated {
            key: KeySummary::new(id, record, now),
            api_key: key.encode().to_string().into(),
        })
        .collect();
    Ok(KeysCreated { keys: created })
}

/// Revokes `ids` in one transaction. Unknown ids are reported, not fatal: in an
/// incident the keys that exist must go at once.
pub(super) async fn revoke_many(
    store: &dyn StateStore,
    live: Option<&dyn Live>,
    ids: &[String],
    now: u64,
    actor: &Actor,
) -> Result<KeysRevoked, AdminError> {
    within_bulk_limit(ids.len())?;
    let mut wanted: Vec<KeyId> = ids.iter().map(|s| key_id(s)).collect::<Result<_, _>>()?;
    wanted.sort_unstable_by_key(|id| *id.as_bytes());
    wanted.dedup();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let found = std::sync::Arc::clone(&seen);
    let revoke = Box::new(move |id: &KeyId, r: &mut ApiKeyRecord| {
        found.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*id);
        let fresh = r.revoked_at.is_none();
        r.revoked_at.get_or_insert(now);
        fresh
    });
    let audit = actor.event(
        now,
        "key.revoked_many",
        serde_json::json!({ "ids": wanted.iter().map(KeyId::to_string).collect::<Vec<_>>() }),
    );
    let written = store.update_api_keys(wanted.clone(), revoke, Some(audit)).await?;
    if let Some(live) = live {
        for (id, record) in &written {
            live.key_changed(*id, record).await;
        }
    }
    // Sets: a batch is up to 10,000 ids, too many for pairwise look-ups.
    let seen: HashSet<[u8; 16]> = std::mem::take(&mut *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
        .iter()
        .map(|id: &KeyId| *id.as_bytes())
        .collect();
    let fresh: HashSet<[u8; 16]> = written.iter().map(|(id, _)| *id.as_bytes()).collect();
    let revoked: Vec<String> = written.iter().map(|(id, _)| id.to_string()).collect();
    let already_revoked = wanted
        .iter()
        .filter(|id| seen.contains(id.as_bytes()) && !fresh.contains(id.as_bytes()))
        .map(KeyId::to_string)
        .collect();
    let not_found = wanted.iter().filter(|id| !seen.contains(id.as_bytes())).map(KeyId::to_string).collect();
    Ok(KeysRevoked { revoked, already_revoked, not_found })
}

fn within_bulk_limit(n: usize) -> Result<(), AdminError> {
    if n == 0 || n > MAX_BULK {
        return Err(AdminError::Invalid(format!("a bulk change takes 1 to {MAX_BULK} keys, not {n}")));
    }
    Ok(())
}
