//! The in-memory key directory: API key records by id, each with its static-static DH
//! per server key, computed once and cached so the handshake hot path does one X25519
//! and one map lookup. Unknown, revoked and expired keys get the responder's dummy,
//! which costs the same as a cache hit.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use onetrip_protocol::api_key::{KeyId, Verifier};
use onetrip_protocol::handshake::server::StaticStatic;
use onetrip_protocol::token::SERVER_AUDIENCE;
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
    /// Which scopes the key holds for which audience.
    pub grants: ScopeGrants,
    /// Static-static values by server key id (one or two during a rotation), kept in
    /// the entry so the hot path looks the key up once.
    static_statics: RwLock<StaticStatics>,
    /// Last use already on its way to the store (Unix seconds).
    last_use_recorded: AtomicU64,
    /// This second's authenticated handshakes: `second << 24 | count`.
    handshakes_this_second: AtomicU64,
}

/// A key's static-static values by server key id. The usual single value lives
/// inline, so the hot path does not chase a second heap pointer per handshake (a
/// cache miss with a million keys); a second exists only during a rotation.
#[derive(Debug, Default)]
struct StaticStatics {
    first: Option<([u8; 8], StaticStatic)>,
    more: Vec<([u8; 8], StaticStatic)>,
}

impl StaticStatics {
    fn iter(&self) -> impl Iterator<Item = &([u8; 8], StaticStatic)> {
        self.first.iter().chain(self.more.iter())
    }

    fn find(&self, server_key_id: &[u8; 8]) -> Option<&StaticStatic> {
        self.iter().find(|(id, _)| id == server_key_id).map(|(_, ss)| ss)
    }

    fn insert(&mut self, server_key_id: [u8; 8], ss: StaticStatic) {
        if self.find(&server_key_id).is_some() {
            return;
        }
        if self.first.is_none() {
            self.first = Some((server_key_id, ss));
        } else {
            // Exact: a plain push would reserve room for four, for a rare second value.
            self.more.reserve_exact(1);
            self.more.push((server_key_id, ss));
        }
    }

    fn retain(&mut self, live: &[[u8; 8]]) {
        self.more.retain(|(id, _)| live.contains(id));
        if self.first.as_ref().is_some_and(|(id, _)| !live.contains(id)) {
            self.first = (!self.more.is_empty()).then(|| self.more.remove(0));
        }
    }

    fn len(&self) -> usize {
        self.iter().count()
    }
}

/// Scopes that only the authentication server's own API understands: granted only in
/// tokens for [`SERVER_AUDIENCE`], never handed to a resource server.
pub const SERVER_SCOPES: &[&str] = &["otp", "introspect"];

/// A key's scopes split by the audience they are granted for (PROTOCOL.md §6.3):
/// `scope@audience` only for that audience; a plain server scope ([`SERVER_SCOPES`])
/// only for [`SERVER_AUDIENCE`]; any other plain scope for every resource audience.
/// Precomputed so the usual grant borrows a string instead of building one.
#[derive(Debug, Default)]
pub struct ScopeGrants {
    resource: String,
    server: String,
    qualified: Vec<(String, String)>,
}

impl ScopeGrants {
    /// Splits a key's stored scopes.
    pub fn new(scopes: &[String]) -> Self {
        let mut grants = Self::default();
        let push = |to: &mut String, s: &str| {
            if !to.is_empty() {
                to.push(' ');
            }
            to.push_str(s);
        };
        for scope in scopes {
            match scope.split_once('@') {
                Some((name, audience)) if audience == SERVER_AUDIENCE => push(&mut grants.server, name),
                Some((name, audience)) => grants.qualified.push((audience.to_owned(), name.to_owned())),
                None if SERVER_SCOPES.contains(&scope.as_str()) => push(&mut grants.server, scope),
                None => push(&mut grants.resource, scope),
            }
        }
        grants
    }

    /// Every scope granted in tokens for `audience`, space separated.
    pub fn for_audience(&self, audience: &str) -> Cow<'_, str> {
        if audience == SERVER_AUDIENCE {
            return Cow::Borrowed(&self.server);
        }
        let mut own = self.qualified.iter().filter(|(a, _)| a == audience).peekable();
        if own.peek().is_none() {
            return Cow::Borrowed(&self.resource);
        }
        let mut all = self.resource.clone();
        for (_, name) in own {
            if !all.is_empty() {
                all.push(' ');
            }
            all.push_str(name);
        }
        Cow::Owned(all)
    }

    /// True when `scope` may be granted in a token for `audience`.
    pub fn allows(&self, audience: &str, scope: &str) -> bool {
        let listed = |list: &str| list.split(' ').any(|s| s == scope);
        !scope.is_empty()
            && if audience == SERVER_AUDIENCE {
                listed(&self.server)
            } else {
                listed(&self.resource) || self.qualified.iter().any(|(a, n)| a == audience && n == scope)
            }
    }
}

/// `last_used_at` is recorded at most once per this many seconds per key: operators
/// see "used within the hour", and a busy key costs no store write per handshake.
pub const LAST_USE_GRANULARITY_SECS: u64 = 3600;

impl KeyEntry {
    /// Builds an entry; `None` when the verifier is not 32 bytes of hex.
    pub fn new(id: KeyId, mut record: ApiKeyRecord) -> Option<Self> {
        let verifier: [u8; 32] = hex::decode(&record.verifier).ok()?.try_into().ok()?;
        // Decoded once; the hex copy would cost ~90 bytes per key in memory for nothing.
        record.verifier = String::new();
        let grants = ScopeGrants::new(&record.scopes);
        let last_use_recorded = AtomicU64::new(record.last_used_at.unwrap_or(0));
        Some(Self {
            id,
            record,
            verifier: Verifier::from_bytes(verifier),
            grants,
            static_statics: RwLock::new(StaticStatics::default()),
            last_use_recorded,
            handshakes_this_second: AtomicU64::new(0),
        })
    }

    fn cached(&self, server_key_id: &[u8; 8]) -> Option<StaticStatic> {
        self.static_statics.read().unwrap_or_else(|p| p.into_inner()).find(server_key_id).cloned()
    }

    fn cache(&self, server_key_id: [u8; 8], ss: StaticStatic) {
        self.static_statics.write().unwrap_or_else(|p| p.into_inner()).insert(server_key_id, ss);
    }

    fn cached_count(&self) -> usize {
        self.static_statics.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Counts one authenticated handshake at `now`; false when the key already had
    /// `per_second` this second (per replica). One atomic on the key's own entry, so
    /// keys never contend with each other.
    pub fn admit_handshake(&self, now: u64, per_second: u64) -> bool {
        const COUNT_BITS: u32 = 24;
        const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
        let second = now & (u64::MAX >> COUNT_BITS);
        let limit = per_second.min(COUNT_MASK);
        let mut current = self.handshakes_this_second.load(Ordering::Relaxed);
        loop {
            let next = if current >> COUNT_BITS == second {
                if current & COUNT_MASK >= limit {
                    return false;
                }
                current + 1
            } else {
                (second << COUNT_BITS) | 1
            };
            match self.handshakes_this_second.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// True once per [`LAST_USE_GRANULARITY_SECS`]: the caller then queues `now` as the
    /// key's last use for the store.
    pub fn should_record_use(&self, now: u64) -> bool {
        let last = self.last_use_recorded.load(Ordering::Relaxed);
        now >= last.saturating_add(LAST_USE_GRANULARITY_SECS)
            && self.last_use_recorded.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// API keys and cached static-static values.
#[derive(Debug, Default)]
pub struct KeyDirectory {
    keys: DashMap<KeyId, Arc<KeyEntry>>,
    /// True while the start-up warm-up runs: every handshake then does one X25519
    /// for its static-static, known key or not (see [`KeyDirectory::static_static`]).
    warming: std::sync::atomic::AtomicBool,
    /// Static-static X25519 operations done on the hot path (misses and equal work).
    hot_path_dh: AtomicU64,
}

/// Verifier of the equal-work X25519 that unknown ids get while the cache warms: any
/// point that is not of low order does.
const EQUAL_WORK_VERIFIER: [u8; 32] = [9; 32];

impl KeyDirectory {
    /// Adds or replaces a key; a replaced entry's cached DH values go with it (the
    /// verifier may change).
    pub fn upsert(&self, entry: KeyEntry) {
        self.keys.insert(entry.id, Arc::new(entry));
    }

    /// The entry for `id`.
    pub fn get(&self, id: &KeyId) -> Option<Arc<KeyEntry>> {
        self.keys.get(id).map(|e| Arc::clone(&e))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Number of keys usable at `now`: neither revoked nor expired (the
    /// `onetrip_api_keys` gauge; revoked keys stay in the directory to be refused).
    pub fn active_len(&self, now: u64) -> usize {
        self.keys.iter().filter(|e| e.record.is_active(now)).count()
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
        for entry in self.keys.iter() {
            entry.static_statics.write().unwrap_or_else(|p| p.into_inner()).retain(live);
        }
    }

    /// Computes the static-static value of every active key under every server key
    /// that is not cached yet. Run off the runtime after start and server-key
    /// rotation, so that a key's first handshake does not take an extra DH (which
    /// would tell a prober that the key id exists). Returns how many were computed.
    pub fn warm(&self, responder: &Responder, now: u64) -> usize {
        let entries: Vec<Arc<KeyEntry>> =
            self.keys.iter().filter(|e| e.record.is_active(now)).map(|e| Arc::clone(e.value())).collect();
        entries.iter().map(|entry| Self::warm_entry(entry, responder)).sum()
    }

    /// Adds or replaces one key with its static-static values already computed: the
    /// work of a key create, rotate or revoke is this key's, whatever the number of
    /// keys (a revoked or expired key needs none). Returns how many were computed.
    pub fn upsert_warm(&self, entry: KeyEntry, responder: &Responder, now: u64) -> usize {
        let computed = if entry.record.is_active(now) { Self::warm_entry(&entry, responder) } else { 0 };
        self.upsert(entry);
        computed
    }

    /// Caches `entry`'s static-static values under every server key it lacks.
    fn warm_entry(entry: &KeyEntry, responder: &Responder) -> usize {
        let mut computed = 0;
        for sk in responder.entries().map(|e| e.key_id) {
            if entry.cached(&sk).is_some() {
                continue;
            }
            if let Ok(ss) = responder.static_static(&sk, &entry.verifier) {
                entry.cache(sk, ss);
                computed += 1;
            }
        }
        computed
    }

    /// Marks the start-up warm-up as running (`true`) or over (`false`).
    pub fn set_warming(&self, warming: bool) {
        self.warming.store(warming, Ordering::Relaxed);
    }

    /// Static-static X25519 operations done on the hot path so far.
    pub fn hot_path_dh(&self) -> u64 {
        self.hot_path_dh.load(Ordering::Relaxed)
    }

    /// Cached static-static values (for tests and metrics).
    pub fn cached_static_statics(&self) -> usize {
        self.keys.iter().map(|e| e.cached_count()).sum()
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
        // While the start-up warm-up runs, a known key may or may not be cached yet: an
        // uncached one costs an X25519, which would tell known ids from unknown ones.
        // Until it ends, every handshake pays that X25519 (hits recompute, unknown ids
        // do one on a throwaway point); afterwards every known key is a hit.
        let warming = self.warming.load(Ordering::Relaxed);
        let entry = key_id.and_then(|id| self.get(&id)).filter(|e| e.record.is_active(now));
        let Some(entry) = entry else {
            if warming {
                self.hot_path_dh.fetch_add(1, Ordering::Relaxed);
                let _ = responder.static_static(server_key_id, &Verifier::from_bytes(EQUAL_WORK_VERIFIER));
            }
            return (responder.dummy_static_static(server_key_id, key_id.as_ref()), None);
        };
        if let Some(ss) = entry.cached(server_key_id).filter(|_| !warming) {
            return (ss, Some(entry));
        }
        // First handshake of this key under this server key (or the warm-up): one
        // extra DH, then cached.
        self.hot_path_dh.fetch_add(1, Ordering::Relaxed);
        match responder.static_static(server_key_id, &entry.verifier) {
            Ok(ss) => {
                entry.cache(*server_key_id, ss.clone());
                (ss, Some(entry))
            }
            Err(_) => (responder.dummy_static_static(server_key_id, key_id.as_ref()), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder with server keys `[1; 8]`, `[2; 8]`, … (`count` of them).
    fn responder_with_server_keys(count: u8) -> Responder {
        use onetrip_protocol::{DefaultBackend, IdentityKey, Secret};
        let mut responder = Responder::new(
            DefaultBackend::default(),
            IdentityKey::from_seed(&Secret::new([3; 32])),
            Secret::new([4; 32]),
        );
        for n in 1..=count {
            responder.add_key([n; 8], &Secret::new([n + 4; 32]), 0, u64::MAX).unwrap();
        }
        responder
    }

    #[test]
    fn while_warming_known_and_unknown_ids_do_the_same_x25519() {
        let responder = responder_with_server_keys(1);
        let dir = KeyDirectory::default();
        let known = KeyId::from_bytes([1; 16]);
        let mut record = ApiKeyRecord::for_tests(None);
        record.verifier = hex::encode([9; 32]);
        dir.upsert(KeyEntry::new(known, record).unwrap());
        let unknown = Some(KeyId::from_bytes([2; 16]));
        let dh = |id: Option<KeyId>| {
            let before = dir.hot_path_dh();
            let (_, entry) = dir.static_static(&responder, &[1; 8], id, 100);
            (dir.hot_path_dh() - before, entry.is_some())
        };
        dir.set_warming(true);
        assert_eq!(dh(unknown), (1, false), "an unknown id pays the X25519 a cold known key pays");
        assert_eq!(dh(Some(known)), (1, true), "cold");
        assert_eq!(dh(Some(known)), (1, true), "cached, but recomputed while warming");
        dir.set_warming(false);
        assert_eq!(dh(Some(known)), (0, true), "a hit afterwards");
        assert_eq!(dh(unknown), (0, false), "and the dummy alone for unknown ids");
    }

    #[test]
    fn last_use_is_queued_once_per_granularity() {
        let e = KeyEntry::new(KeyId::from_bytes([1; 16]), ApiKeyRecord::for_tests(None)).unwrap();
        assert!(e.should_record_use(10_000));
        assert!(!e.should_record_use(10_001));
        assert!(!e.should_record_use(10_000 + LAST_USE_GRANULARITY_SECS - 1));
        assert!(e.should_record_use(10_000 + LAST_USE_GRANULARITY_SECS));
        let recent = KeyEntry::new(KeyId::from_bytes([2; 16]), ApiKeyRecord::for_tests(Some(50_000))).unwrap();
        assert!(!recent.should_record_use(50_010), "a use already stored counts");
    }

    #[test]
    fn a_retired_first_value_hands_its_inline_slot_to_the_next() {
        let responder = responder_with_server_keys(3);
        let verifier = Verifier::from_bytes([9; 32]);
        let ss = |id: [u8; 8]| responder.static_static(&id, &verifier).unwrap();
        let mut cache = StaticStatics::default();
        cache.insert([1; 8], ss([1; 8]));
        cache.insert([2; 8], ss([2; 8]));
        cache.insert([2; 8], ss([2; 8]));
        assert_eq!(cache.len(), 2, "no duplicates");
        cache.retain(&[[2; 8]]);
        assert_eq!(cache.len(), 1);
        assert!(cache.find(&[1; 8]).is_none());
        assert!(cache.first.as_ref().is_some_and(|(id, _)| *id == [2; 8]), "the survivor moved inline");
        assert!(cache.more.is_empty());
        cache.insert([3; 8], ss([3; 8]));
        assert!(cache.find(&[2; 8]).is_some() && cache.find(&[3; 8]).is_some());
        cache.retain(&[]);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn static_statics_live_in_the_entry_and_follow_server_keys() {
        let responder = responder_with_server_keys(2);
        let dir = KeyDirectory::default();
        let id = KeyId::from_bytes([1; 16]);
        dir.upsert(KeyEntry::new(id, ApiKeyRecord::for_tests(None)).unwrap());
        assert_eq!(dir.warm(&responder, 1), 2, "one per server key");
        assert_eq!(dir.warm(&responder, 1), 0, "cached");
        let (_, entry) = dir.static_static(&responder, &[2; 8], Some(id), 1);
        assert!(entry.is_some());
        dir.retain_server_keys(&[[2; 8]]);
        assert_eq!(dir.cached_static_statics(), 1);
        dir.upsert(KeyEntry::new(id, ApiKeyRecord::for_tests(None)).unwrap());
        assert_eq!(dir.cached_static_statics(), 0, "a replaced entry starts empty");
        let (_, unknown) = dir.static_static(&responder, &[2; 8], Some(KeyId::from_bytes([9; 16])), 1);
        assert!(unknown.is_none());
    }
}
