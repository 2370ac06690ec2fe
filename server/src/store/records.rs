//! The records every engine stores, and how their secrets are sealed: the same
//! serialized forms in redb and PostgreSQL, so a record means one thing whichever
//! engine holds it.

use onetrip_protocol::Secret;
use serde::{Deserialize, Serialize};

use crate::seal::{SealError, Sealer};
use crate::store::StoreError;

/// An audit event written in the same write transaction as the change it records:
/// the change and its record reach the disk together or not at all (and with one
/// fsync instead of two).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// Event name, e.g. `otp.check`.
    pub event: &'static str,
    /// Event details (never a secret, code or token).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// This entry with `actor` (who asked; `null` for the server's own doing) in its
    /// detail.
    pub fn by(mut self, actor: serde_json::Value) -> Self {
        if let (false, Some(map)) = (actor.is_null(), self.detail.as_object_mut()) {
            map.insert("actor".into(), actor);
        }
        self
    }
}

/// Format marker of a store, in its `meta` table: the same in every engine.
pub(crate) const FORMAT: &[u8] = b"onetrip-store-v1";

/// One API key as stored: the verifier, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    /// Human name.
    pub name: String,
    /// Client static public key (hex).
    pub verifier: String,
    /// Scopes this key may request.
    pub scopes: Vec<String>,
    /// Audiences this key may request tokens for (empty: only the default).
    pub audiences: Vec<String>,
    /// Handshakes need a second factor.
    pub require_otp: bool,
    /// Where second-factor codes go.
    pub otp_to: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Last successful handshake (coarse).
    pub last_used_at: Option<u64>,
    /// Revocation time.
    pub revoked_at: Option<u64>,
    /// End of validity (set on the old key by `keys rotate`).
    pub expires_at: Option<u64>,
    /// Key id that replaced this one.
    pub replaced_by: Option<String>,
}

#[cfg(test)]
impl ApiKeyRecord {
    /// An active record with a fixed verifier and no scopes, for unit tests.
    pub(crate) fn for_tests(last_used_at: Option<u64>) -> Self {
        Self {
            name: "k".into(),
            verifier: hex::encode([9u8; 32]),
            scopes: vec![],
            audiences: vec![],
            require_otp: false,
            otp_to: None,
            created_at: 0,
            last_used_at,
            revoked_at: None,
            expires_at: None,
            replaced_by: None,
        }
    }
}

impl ApiKeyRecord {
    /// Usable for a handshake at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now <= e)
    }
}

/// One server handshake key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerKeyRecord {
    /// Sealed X25519 private key (hex).
    pub private: String,
    /// Validity start.
    pub not_before: u64,
    /// Validity end.
    pub not_after: u64,
}

/// One token master key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeyRecord {
    /// 4-byte key id (hex).
    pub id: String,
    /// Sealed master key (hex).
    pub master: String,
    /// Creation time.
    pub created_at: u64,
    /// After a rotation: when this (older) key stops opening tokens and is deleted.
    #[serde(default)]
    pub retire_at: Option<u64>,
}

/// Everything the server needs from the store at start.
pub struct ServerSecrets {
    /// Ed25519 identity seed.
    pub identity_seed: Secret<32>,
    /// Dummy static-static secret.
    pub dummy_secret: Secret<32>,
    /// Handshake keys: id, private, not_before, not_after.
    pub server_keys: Vec<([u8; 8], Secret<32>, u64, u64)>,
    /// Token master keys, newest first.
    pub token_keys: Vec<([u8; 4], Secret<32>)>,
}

/// Seal slot of a handshake private key, bound to its key id: a sealed key moved to
/// another id (by someone who can write the store) no longer opens.
pub(crate) fn server_key_slot(id: &[u8; 8]) -> String {
    format!("server_key:{}", hex::encode(id))
}

/// Seal slot of a token master key, bound to its key id.
pub(crate) fn token_key_slot(id: &[u8; 4]) -> String {
    format!("token_key:{}", hex::encode(id))
}

/// Opens a key sealed under its id-bound `slot`, or under the unbound `legacy` slot
/// that stores sealed before slots named the id used (those keys are re-sealed bound
/// when they are rotated; handshake keys rotate on their own).
pub(crate) fn open_bound(sealer: &Sealer, slot: &str, legacy: &str, blob: &[u8]) -> Result<Secret<32>, StoreError> {
    match sealer.open_secret(slot, blob) {
        Err(SealError::Damaged(_)) => Ok(sealer.open_secret(legacy, blob)?),
        other => Ok(other?),
    }
}

pub(crate) fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// A TOTP enrolment: the authenticator secret (sealed like the server keys) and the
/// last accepted time step, so a code is never accepted twice, even across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpRecord {
    /// Sealed secret, hex.
    pub secret: String,
    /// Enrolment time.
    pub created_at: u64,
    /// Last time step whose code was accepted.
    pub last_step: Option<u64>,
}

/// Seal slot of a TOTP secret, bound to its owner and account.
pub(crate) fn totp_slot(owner: &[u8; 16], account: &str) -> String {
    format!("totp:{}:{account}", hex::encode(owner))
}
