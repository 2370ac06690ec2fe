//! Generation of the server's private material, shared by every backend so that a
//! redb store and a PostgreSQL database are born the same way: the first contents of
//! a new store (identity, dummy secret, first token key, first handshake key), a new
//! handshake key, and the token key rotation rule.

use onetrip_protocol::Secret;
use rand_core::{OsRng, RngCore};

use super::{
    server_key_slot, token_key_slot, ServerKeyRecord, StoreError, TokenKeyRecord, DEFAULT_SERVER_KEY_LIFETIME_SECS,
    FORMAT,
};
use crate::seal::{SealParams, Sealer};

/// What a new store holds before its first request: meta values by name (format,
/// seal parameters, sealed identity and dummy secret, the token key list) and the
/// first handshake key.
pub(crate) struct Genesis {
    /// `(name, value)` rows of the meta table, values exactly as redb stores them.
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// The first handshake key: id and record.
    pub server_key: ([u8; 8], ServerKeyRecord),
}

/// The first contents of a store sealed by `sealer` (whose parameters are `params`).
pub(crate) fn genesis(sealer: &Sealer, params: &SealParams, now: u64) -> Result<Genesis, StoreError> {
    let mut rng = OsRng;
    let identity = Secret::<32>::random(&mut rng);
    let dummy = Secret::<32>::random(&mut rng);
    let token_master = Secret::<32>::random(&mut rng);
    let mut token_id = [0u8; 4];
    rng.fill_bytes(&mut token_id);
    // The first handshake key gets the default lifetime; `maintain_server_keys`
    // (run at every start) fits it to the configured policy.
    let server_key = new_server_key(sealer, now, now.saturating_add(DEFAULT_SERVER_KEY_LIFETIME_SECS));
    let params = serde_json::to_vec(params).map_err(|_| StoreError::Record("seal".into()))?;
    let tokens = vec![TokenKeyRecord {
        id: hex::encode(token_id),
        master: hex::encode(sealer.seal(&token_key_slot(&token_id), token_master.expose())),
        created_at: now,
        retire_at: None,
    }];
    let tokens = serde_json::to_vec(&tokens).map_err(|_| StoreError::Record("token_keys".into()))?;
    Ok(Genesis {
        meta: vec![
            ("format", FORMAT.to_vec()),
            ("seal", params),
            ("identity", sealer.seal("identity", identity.expose())),
            ("dummy_secret", sealer.seal("dummy_secret", dummy.expose())),
            ("token_keys", tokens),
        ],
        server_key,
    })
}

/// A fresh random handshake key id and sealed private key with the given validity.
pub(crate) fn new_server_key(sealer: &Sealer, not_before: u64, not_after: u64) -> ([u8; 8], ServerKeyRecord) {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    let private = Secret::<32>::random(&mut OsRng);
    let sealed = hex::encode(sealer.seal(&server_key_slot(&id), private.expose()));
    (id, ServerKeyRecord { private: sealed, not_before, not_after })
}

/// Puts a new token master key first in `records` and schedules every older one to
/// retire at `now + overlap_secs` (never later than it already would); keys whose
/// time has come are removed. Returns the new id and how many were removed.
pub(crate) fn rotate_token_records(
    sealer: &Sealer,
    records: &mut Vec<TokenKeyRecord>,
    now: u64,
    overlap_secs: u64,
) -> ([u8; 4], usize) {
    let mut master = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(master.as_mut());
    let mut id = [0u8; 4];
    while id == [0; 4] || records.iter().any(|r| r.id == hex::encode(id)) {
        OsRng.fill_bytes(&mut id);
    }
    let retire_at = now.saturating_add(overlap_secs);
    for r in records.iter_mut() {
        r.retire_at = Some(r.retire_at.map_or(retire_at, |t| t.min(retire_at)));
    }
    let retired = drop_retired_token_records(records, now);
    records.insert(
        0,
        TokenKeyRecord {
            id: hex::encode(id),
            master: hex::encode(sealer.seal(&token_key_slot(&id), &master[..])),
            created_at: now,
            retire_at: None,
        },
    );
    (id, retired)
}

/// Removes token keys whose retirement time has come; returns how many.
pub(crate) fn drop_retired_token_records(records: &mut Vec<TokenKeyRecord>, now: u64) -> usize {
    let before = records.len();
    records.retain(|r| r.retire_at.is_none_or(|t| t > now));
    before - records.len()
}

/// Token key records from their stored form.
pub(crate) fn decode_token_records(bytes: &[u8]) -> Result<Vec<TokenKeyRecord>, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Record("token_keys".into()))
}

/// Token key records in their stored form.
pub(crate) fn encode_token_records(records: &[TokenKeyRecord]) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(records).map_err(|_| StoreError::Record("token_keys".into()))
}

/// The audit event of a token key rotation.
pub(crate) fn token_rotation_event(id: &[u8; 4], now: u64, overlap_secs: u64, retired: usize) -> super::AuditEntry {
    super::AuditEntry {
        at: now,
        event: "token_key.rotated",
        detail: serde_json::json!({ "new": hex::encode(id), "overlap_secs": overlap_secs, "retired_now": retired }),
    }
}
