//! `AppState`: everything a request handler needs, behind one cheap `Clone`.
//! The responder and its signed document are swapped atomically on rotation, so the
//! hot path never takes a lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use onetrip_protocol::token::{audience_tag, Claims, TokenError, SERVER_AUDIENCE};
use onetrip_protocol::{DefaultBackend, IdentityKey, PopProof, Responder, Token, TokenKeyring, TokenVerifier};

use crate::config::Settings;
use crate::keys::{KeyDirectory, KeyEntry};
use crate::metrics::Metrics;
use crate::shared::{IpLimiter, Shared, SharedState};
use crate::store::ports::for_each_api_key;
use crate::store::{Backend, StoreError};

/// Keys read per store round trip at start-up.
const KEY_PAGE: usize = 10_000;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the server reads the time. Everything a request decides by the clock
/// (token expiry, OTP expiry and cooldowns, rate windows) asks [`AppState::now`], so a
/// test can move time instead of sleeping through it.
pub trait Clock: Send + Sync + 'static {
    /// Unix seconds now.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        unix_now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn at(at: u64) -> Self {
        Self(at.into())
    }

    /// Moves the clock `secs` forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The server's handshake keys and the document that lists them.
pub struct Handshake {
    /// The protocol responder.
    pub responder: Responder,
    /// Signed server key document, served at `/v1/server-key`.
    pub document: Bytes,
    /// When to sign a fresh document: half-way to this one's `expires_at`, so a
    /// client always fetches one with at least half its lifetime left.
    pub resign_at: u64,
}

/// Shared server state.
pub struct Inner {
    /// Resolved settings.
    pub settings: Settings,
    /// The time source ([`SystemClock`] when serving).
    pub clock: Arc<dyn Clock>,
    /// Durable state, through its ports (the embedded store or PostgreSQL).
    pub store: Backend,
    /// Responder + document, replaced on rotation.
    pub handshake: ArcSwap<Handshake>,
    /// API keys and cached static-static values.
    pub keys: KeyDirectory,
    /// Replica-shared state.
    pub shared: Shared,
    /// Counters.
    pub metrics: Metrics,
    /// Server start second; stamps at or before it are refused, so nothing an earlier
    /// run accepted can be accepted again ([`crate::replay_guard`]).
    pub started_at: u64,
    /// Writes the replay ids of requests stamped ahead of the clock to the store.
    pub ahead_ids: crate::replay_guard::AheadWriter,
    /// Per-IP limiter for `/v1/auth`, checked before any cryptography.
    pub ip_limiter: IpLimiter,
    /// Per-IP limiter for the public documents (`/v1/server-key`, `/v1/openapi.json`).
    pub public_ip_limiter: IpLimiter,
    /// Failed authentications per client address on the token routes (`/v1/otp/*`,
    /// `/v1/whoami`, `/v1/introspect`), checked before the token.
    pub otp_ip_limiter: crate::limits::AuthFailureGuard,
    /// OTP code delivery (console, SMTP, webhook).
    pub delivery: crate::otp::delivery::Deliverer,
    otp_key: std::sync::OnceLock<onetrip_protocol::Secret<32>>,
    /// Keys used since the last flush, with the time; written to the store in batches
    /// so a handshake never waits for a disk write.
    pub last_used: DashMap<onetrip_protocol::api_key::KeyId, u64>,
    /// Token keys and the verifiers made from them, replaced whole on rotation.
    tokens: ArcSwap<TokenKeys>,
}

/// The token master keys and what is prepared from them.
pub struct TokenKeys {
    keyring: TokenKeyring,
    /// Sealers/verifiers by audience name, made on first use.
    verifiers: DashMap<String, Arc<TokenVerifier>>,
    /// The server's own audience: the only tokens its API accepts.
    own_verifier: Arc<TokenVerifier>,
}

impl TokenKeys {
    /// Prepares the keys the store holds (newest first).
    async fn from_store(store: &Backend) -> Result<Self, StoreError> {
        let mut token_keys = store.server_secrets().await?.token_keys.into_iter();
        let (id, master) = token_keys.next().ok_or_else(|| StoreError::Record("token_keys (empty)".into()))?;
        let mut keyring = TokenKeyring::new(id, master);
        for (id, master) in token_keys {
            keyring.push_previous(id, master);
        }
        let own_verifier = Arc::new(
            keyring
                .for_audience(DefaultBackend::default(), SERVER_AUDIENCE)
                .map_err(|e| StoreError::Record(format!("token keys: {e}")))?,
        );
        Ok(Self { keyring, verifiers: DashMap::new(), own_verifier })
    }
}

/// Cheap handle to the shared state.
pub struct AppState(Arc<Inner>);

impl Clone for AppState {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl AppState {
    /// Unix seconds now, by the state's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenCheckError {
    /// Token alone on a plain-HTTP listener.
    #[error("a token without proof of possession is only accepted over TLS: send the Onetrip-PoP header")]
    PopRequired,
    /// The token or proof failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Token fine, but its key was revoked or the token was revoked.
    #[error("token revoked")]
    Revoked,
    /// Shared state unavailable.
    #[error("cannot check revocation: {0}")]
    Shared(String),
}

impl AppState {
    /// Builds the state from an open store, reading every key into memory.
    pub async fn new(settings: Settings, store: Backend, shared: impl SharedState) -> Result<Self, StoreError> {
        Self::with_clock(settings, store, shared, Arc::new(SystemClock)).await
    }

    /// [`AppState::new`] on `clock`.
    pub async fn with_clock(
        settings: Settings,
        store: Backend,
        shared: impl SharedState,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Self::from_parts(settings, store, Arc::new(shared), clock).await
    }

    /// [`AppState::with_clock`] on a shared-state backend the caller keeps a handle
    /// to (the serve loop sweeps its in-memory one).
    pub async fn from_parts(
        settings: Settings,
        store: Backend,
        shared: Shared,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let now = clock.now();
        let delivery = crate::otp::delivery::Deliverer::new(delivery_config(&settings))
            .map_err(|e| StoreError::Config(format!("OTP delivery: {e}")))?;
        // A server that was down past its key's end, or a store from before keys had
        // a lifetime, gets its keys fitted to the policy before the first document.
        store.maintain_server_keys(now, settings.key_policy()).await?;
        let handshake = build_handshake(&store, now, settings.server_key_document_ttl_secs).await?;
        store.drop_retired_token_keys(now).await?;
        let tokens = TokenKeys::from_store(&store).await?;
        let keys = KeyDirectory::default();
        let mut bad = None;
        for_each_api_key(&*store, KEY_PAGE, |id, record| match KeyEntry::new(id, record) {
            Some(entry) => keys.upsert(entry),
            None => bad = Some(id),
        })
        .await?;
        if let Some(id) = bad {
            return Err(StoreError::Record(id.to_string()));
        }
        let state = Self(Arc::new(Inner {
            settings,
            clock,
            store,
            handshake: ArcSwap::from_pointee(handshake),
            keys,
            shared,
            metrics: Metrics::default(),
            started_at: now,
            ahead_ids: Default::default(),
            ip_limiter: IpLimiter::default(),
            public_ip_limiter: IpLimiter::default(),
            otp_ip_limiter: Default::default(),
            delivery,
            otp_key: std::sync::OnceLock::new(),
            last_used: DashMap::new(),
            tokens: ArcSwap::from_pointee(tokens),
        }));
        // The store answered everything above: it is up until a probe says otherwise.
        state.metrics.store_up.store(1, std::sync::atomic::Ordering::Relaxed);
        state.token_verifier(&state.settings.default_audience.clone());
        Ok(state)
    }

    /// True while the store answers its probes ([`Self::probe_store`]).
    pub fn store_up(&self) -> bool {
        self.metrics.store_up.load(std::sync::atomic::Ordering::Relaxed) == 1
    }

    /// Asks the store whether it can be reached (bounded by `limit`) and records the
    /// answer for `/healthz` and `onetrip_store_up`; logs when it changes.
    pub async fn probe_store(&self, limit: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        let answer = match tokio::time::timeout(limit, self.store.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {} ms", limit.as_millis()))),
        };
        let up = answer.is_ok();
        let was = self.metrics.store_up.swap(i64::from(up), Ordering::Relaxed) == 1;
        match answer {
            Err(e) => {
                self.metrics.store_probe_failures.fetch_add(1, Ordering::Relaxed);
                if was {
                    tracing::error!(error = %e, "the store is unreachable: handshakes of known keys go on, writes and OTP answer 503");
                }
            }
            Ok(()) if !was => tracing::warn!("the store answers again"),
            Ok(()) => {}
        }
        up
    }

    /// The server identity fingerprint.
    pub fn fingerprint(&self) -> onetrip_protocol::Fingerprint {
        self.handshake.load().responder.identity().fingerprint()
    }

    /// Re-reads handshake keys from the store (after rotation), re-signs the document
    /// and precomputes the new key's static-static values.
    pub async fn reload_handshake_keys(&self) -> Result<(), StoreError> {
        self.reload_handshake_keys_at(self.now()).await
    }

    /// [`Self::reload_handshake_keys`] at `now`.
    pub async fn reload_handshake_keys_at(&self, now: u64) -> Result<(), StoreError> {
        let hs = Arc::new(build_handshake(&self.store, now, self.settings.server_key_document_ttl_secs).await?);
        let live: Vec<[u8; 8]> = hs.responder.entries().map(|e| e.key_id).collect();
        // Precomputing is CPU work over every key: off the request threads, at the
        // lowest priority, so that handshakes meanwhile keep their CPU.
        let (keys, responder_hs) = (self.clone(), Arc::clone(&hs));
        crate::low_priority::run("onetrip-warm", move || keys.keys.warm(&responder_hs.responder, now))
            .await
            .map_err(|e| StoreError::Unavailable(format!("key warm-up did not finish: {e}")))?;
        self.handshake.store(Arc::clone(&hs));
        self.keys.retain_server_keys(&live);
        Ok(())
    }

    /// The key OTP code hashes are made with (read from the store once).
    pub async fn otp_key(&self) -> Result<onetrip_protocol::Secret<32>, StoreError> {
        if let Some(k) = self.otp_key.get() {
            return Ok(k.clone());
        }
        let k = self.store.otp_key().await?;
        Ok(self.otp_key.get_or_init(|| k).clone())
    }

    /// Precomputes static-static values for every key (blocking; see [`KeyDirectory::warm`]).
    pub fn warm_keys(&self) -> usize {
        self.keys.warm(&self.handshake.load().responder, self.now())
    }

    /// The handshake key lifecycle at `now` (the `serve` loop runs it every second):
    /// in the store, destroys keys past their `not_after` and makes a successor when
    /// the newest key is within its overlap of the end
    /// ([`crate::store::ports::SecretRepo::maintain_server_keys`]); in memory, drops
    /// expired keys and re-signs the document when keys changed or it is half-way to
    /// its expiry.
    pub async fn maintain_handshake_keys(&self, now: u64) -> Result<crate::store::KeyChanges, StoreError> {
        let changes = self.store.maintain_server_keys(now, self.settings.key_policy()).await?;
        let stale = {
            let current = self.handshake.load();
            now >= current.resign_at || current.responder.entries().any(|e| e.not_after < now)
        };
        if !changes.is_empty() || stale {
            self.reload_handshake_keys_at(now).await?;
        }
        Ok(changes)
    }

    /// Writes pending `last_used_at` times to the store.
    pub async fn flush_last_used(&self) -> Result<usize, StoreError> {
        // A map, not a list: with a million keys an hourly flush can carry most of them,
        // and a linear search per record made the flush quadratic (minutes of CPU).
        let pending: HashMap<onetrip_protocol::api_key::KeyId, u64> =
            self.last_used.iter().map(|e| (*e.key(), *e.value())).collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let ids: Vec<_> = pending.keys().copied().collect();
        let pending = Arc::new(pending);
        let update = {
            let pending = Arc::clone(&pending);
            Box::new(move |id: &onetrip_protocol::api_key::KeyId, r: &mut crate::store::ApiKeyRecord| {
                r.last_used_at = pending.get(id).copied().max(r.last_used_at);
                true
            })
        };
        let written = self.store.update_api_keys(ids, update, None).await?;
        for (id, at) in pending.iter() {
            self.last_used.remove_if(id, |_, v| v == at);
        }
        Ok(written.len())
    }

    /// The prepared token verifier/sealer for `audience` (the server's own key for
    /// [`SERVER_AUDIENCE`]).
    pub fn token_verifier(&self, audience: &str) -> Option<Arc<TokenVerifier>> {
        let tokens = self.tokens.load();
        if audience == SERVER_AUDIENCE {
            return Some(Arc::clone(&tokens.own_verifier));
        }
        if let Some(v) = tokens.verifiers.get(audience) {
            return Some(Arc::clone(&v));
        }
        let v = Arc::new(tokens.keyring.for_audience(DefaultBackend::default(), audience).ok()?);
        tokens.verifiers.insert(audience.to_owned(), Arc::clone(&v));
        Some(v)
    }

    /// Re-reads the token keys from the store (after a rotation or a retirement):
    /// tokens are sealed with the new first key from now on.
    pub async fn reload_token_keys(&self) -> Result<(), StoreError> {
        self.tokens.store(Arc::new(TokenKeys::from_store(&self.store).await?));
        Ok(())
    }

    /// Checks a token presented to the server's own API: it must be sealed for
    /// [`SERVER_AUDIENCE`], whose key no resource server holds. One AEAD open; a token
    /// of any other audience costs a tag comparison and nothing else.
    pub async fn check_own_token(
        &self,
        token: &Token,
        pop: Option<PresentedProof<'_>>,
        tls: bool,
        now: u64,
    ) -> Result<Claims, TokenCheckError> {
        let own = Arc::clone(&self.tokens.load().own_verifier);
        self.check_token_with(&own, token, pop, tls, now).await
    }

    /// Checks a token for one of `audiences` (the introspecting resource server's):
    /// tokens of any other audience are refused as [`TokenError::WrongAudience`].
    pub async fn check_token_for(
        &self,
        audiences: &[String],
        token: &Token,
        pop: Option<PresentedProof<'_>>,
        tls: bool,
        now: u64,
    ) -> Result<Claims, TokenCheckError> {
        let tag = token.audience_tag();
        let audience = audiences.iter().find(|a| audience_tag(a) == tag).ok_or(TokenError::WrongAudience)?;
        let verifier = self.token_verifier(audience).ok_or(TokenError::WrongAudience)?;
        self.check_token_with(&verifier, token, pop, tls, now).await
    }

    /// Checks a token (and its proof of possession, when given) with `verifier`, and
    /// that neither it nor its key was revoked.
    async fn check_token_with(
        &self,
        verifier: &TokenVerifier,
        token: &Token,
        pop: Option<PresentedProof<'_>>,
        tls: bool,
        now: u64,
    ) -> Result<Claims, TokenCheckError> {
        self.metrics.token_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claims = match pop {
            Some((proof, method, path, body)) => verifier.verify_request(
                token.as_bytes(),
                proof,
                method,
                path,
                body,
                now,
                self.settings.clock_window_secs,
            )?,
            None if tls => verifier.verify(token.as_bytes(), now)?,
            None => return Err(TokenCheckError::PopRequired),
        };
        let key_active = self.keys.get(&claims.api_key_id).is_some_and(|k| k.record.is_active(now));
        let revoked = self
            .shared
            .is_token_revoked(claims.token_id, now)
            .await
            .map_err(|e| TokenCheckError::Shared(e.to_string()))?;
        if !key_active || revoked {
            return Err(TokenCheckError::Revoked);
        }
        Ok(claims)
    }
}

/// A proof of possession with what it signs: (proof, method, path, body).
pub type PresentedProof<'a> = (&'a PopProof, &'a str, &'a str, &'a [u8]);

fn delivery_config(settings: &Settings) -> crate::otp::delivery::DeliveryConfig {
    use crate::otp::delivery::{DeliveryConfig, SmtpSettings, SmtpTls, WebhookSettings};
    let otp = &settings.otp;
    DeliveryConfig {
        smtp: otp.smtp.as_ref().map(|s| SmtpSettings {
            host: s.host.clone(),
            port: s.port,
            tls: match s.tls.as_str() {
                "none" => SmtpTls::None,
                "tls" => SmtpTls::Tls,
                _ => SmtpTls::StartTls,
            },
            username: s.username.clone(),
            password: s.password.as_ref().map(|p| p.0.clone()),
            from: s.from.clone(),
        }),
        webhook: otp.webhook.as_ref().map(|w| WebhookSettings { url: w.url.clone(), secret: w.secret.0.clone() }),
        webhook_retry_window: std::time::Duration::from_secs(
            otp.webhook.as_ref().map_or(crate::config::DEFAULT_WEBHOOK_RETRY_WINDOW_SECS, |w| w.retry_window_secs),
        ),
        console_codes: settings.otp_console_codes,
        ..DeliveryConfig::default()
    }
}

async fn build_handshake(store: &Backend, now: u64, document_ttl: u64) -> Result<Handshake, StoreError> {
    let secrets = store.server_secrets().await?;
    let identity = IdentityKey::from_seed(&secrets.identity_seed);
    let mut responder = Responder::new(DefaultBackend::default(), identity, secrets.dummy_secret);
    for (id, private, not_before, not_after) in secrets.server_keys.iter().filter(|k| k.3 >= now) {
        responder
            .add_key(*id, private, *not_before, *not_after)
            .map_err(|e| StoreError::Record(format!("server key: {e}")))?;
    }
    let document = responder
        .signed_document(now, document_ttl)
        .map_err(|e| StoreError::Record(format!("server key document: {e}")))?;
    let expires_at = onetrip_protocol::ServerKeyDocument::parse(&document)
        .map_err(|e| StoreError::Record(format!("server key document: {e}")))?
        .expires_at();
    Ok(Handshake { responder, document: Bytes::from(document), resign_at: now + expires_at.saturating_sub(now) / 2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryShared;
    use crate::store::{ApiKeyRecord, Store};
    use onetrip_protocol::api_key::KeyId;

    fn id(i: u32) -> KeyId {
        let mut bytes = [0u8; onetrip_protocol::api_key::KEY_ID_LEN];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        KeyId::from_bytes(bytes)
    }

    #[tokio::test]
    async fn flushing_last_use_writes_each_queued_key_once_and_never_moves_it_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = Store::open_or_init(dir.path(), None, 1_000).expect("store");
        // Key 0 already records a later use than the one queued for it.
        let records: Vec<_> = (0..3_000).map(|i| (id(i), ApiKeyRecord::for_tests((i == 0).then_some(9_000)))).collect();
        store.put_api_keys(&records).expect("keys");
        let backend: Backend = Arc::new(crate::store::RedbBackend::new(store));
        let state =
            AppState::new(Settings::defaults(dir.path().into()), backend, MemoryShared::new(16)).await.expect("state");
        for i in 0..3_000 {
            state.last_used.insert(id(i), 5_000 + u64::from(i));
        }
        // A queued id whose record is gone is skipped, not an error.
        state.last_used.insert(id(99_999), 7_000);

        assert_eq!(state.flush_last_used().await.expect("flush"), 3_000);
        assert_eq!(state.store.get_api_key(id(0)).await.expect("read").and_then(|r| r.last_used_at), Some(9_000));
        for i in [1, 1_234, 2_999] {
            let at = state.store.get_api_key(id(i)).await.expect("read").and_then(|r| r.last_used_at);
            assert_eq!(at, Some(5_000 + u64::from(i)), "key {i}");
        }
        assert!(state.last_used.is_empty(), "flushed uses leave the queue");
        assert_eq!(state.flush_last_used().await.expect("second flush"), 0);
    }
}
