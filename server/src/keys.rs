//! The in-memory key directory: API key records by id, and the static-static DH per
//! (API key, server key), computed once and cached so the handshake hot path does one
//! X25519. Unknown, revoked and expired keys get the responder's dummy, which costs
//! the same as a cache hit.

use std::sync::Arc;

use dashmap::DashMap;
use onetrip_protocol::api_key::{KeyId, Verifier};
use onetrip_protocol::handshake::server::StaticStatic;
use onetrip_protocol::Responder;

use crate::store::ApiKeyRecord;

/// One API key as the hot path needs it.
#[derive(Debug)]
pub struct KeyEntry {
    /// The key id.
    pub id: KeyId,
    /// The stored record.
    pub record: ApiKeyRecord,
    /// Decoded verifier.
    pub verifier: Verifier,
    /// All of the key's scopes, space separated (granted when none are requested).
    pub all_scopes: String,
}

impl KeyEntry {
    /// Builds an entry; `None` when the verifier is not 32 bytes of hex.
    pub fn new(id: KeyId, record: ApiKeyRecord) -> Option<Self> {
        let verifier: [u8; 32] = hex::decode(&record.verifier).ok()?.try_into().ok()?;
        let all_scopes = record.scopes.join(" ");
        Some(Self { id, record, verifier: Verifier::from_bytes(verifier), all_scopes })
    }
}

/// API keys and cached static-static values.
#[derive(Debug, Default)]
pub struct KeyDirectory {
    keys: DashMap<KeyId, Arc<KeyEntry>>,
    static_statics: DashMap<(KeyId, [u8; 8]), StaticStatic>,
}

impl KeyDirectory {
    /// Adds or replaces a key; its cached DH values are dropped (the verifier may change).
    pub fn upsert(&self, entry: KeyEntry) {
        let id = entry.id;
        self.static_statics.retain(|(k, _), _| *k != id);
        self.keys.insert(id, Arc::new(entry));
    }

    /// The entry for `id`.
    pub fn get(&self, id: &KeyId) -> Option<Arc<KeyEntry>> {
        self.keys.get(id).map(|e| Arc::clone(&e))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Calls `f` on every entry.
    pub fn for_each(&self, mut f: impl FnMut(&KeyEntry)) {
        for e in self.keys.iter() {
            f(e.value());
        }
    }

    /// Drops cached values for server keys that are gone.
    pub fn retain_server_keys(&self, live: &[[u8; 8]]) {
        self.static_statics.retain(|(_, s), _| live.contains(s));
    }

    /// Computes the static-static value of every active key under every server key
    /// that is not cached yet. Run off the runtime after start, key creation and
    /// rotation, so that a key's first handshake does not take an extra DH (which
    /// would tell a prober that the key id exists). Returns how many were computed.
    pub fn warm(&self, responder: &Responder, now: u64) -> usize {
        let server_keys: Vec<[u8; 8]> = responder.entries().map(|e| e.key_id).collect();
        let entries: Vec<Arc<KeyEntry>> =
            self.keys.iter().filter(|e| e.record.is_active(now)).map(|e| Arc::clone(e.value())).collect();
        let mut computed = 0;
        for entry in entries {
            for sk in &server_keys {
                if self.static_statics.contains_key(&(entry.id, *sk)) {
                    continue;
                }
                if let Ok(ss) = responder.static_static(sk, &entry.verifier) {
                    self.static_statics.insert((entry.id, *sk), ss);
                    computed += 1;
                }
            }
        }
        computed
    }

    /// Cached static-static values (for tests and metrics).
    pub fn cached_static_statics(&self) -> usize {
        self.static_statics.len()
    }

    /// The static-static value to authenticate with, and the key entry when the key is
    /// known and usable at `now`. Everything else gets the dummy.
    pub fn static_static(
        &self,
        responder: &Responder,
        server_key_id: &[u8; 8],
        key_id: Option<KeyId>,
        now: u64,
    ) -> (StaticStatic, Option<Arc<KeyEntry>>) {
        let entry = key_id.and_then(|id| self.get(&id)).filter(|e| e.record.is_active(now));
        let Some(entry) = entry else {
            return (responder.dummy_static_static(server_key_id, key_id.as_ref()), None);
        };
        if let Some(ss) = self.static_statics.get(&(entry.id, *server_key_id)) {
            return (ss.clone(), Some(entry));
        }
        // First handshake of this key under this server key: one extra DH, then cached.
        match responder.static_static(server_key_id, &entry.verifier) {
            Ok(ss) => {
                self.static_statics.insert((entry.id, *server_key_id), ss.clone());
                (ss, Some(entry))
            }
            Err(_) => (responder.dummy_static_static(server_key_id, key_id.as_ref()), None),
        }
    }
}
