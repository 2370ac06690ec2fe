//! The background task that keeps handshake keys short-lived without an operator:
//! `onetrip serve` runs [`run`], which every period makes a successor for a key near
//! its end, destroys retired private keys from the store once their overlap ends,
//! and re-signs the server key document before it expires
//! ([`AppState::maintain_handshake_keys`]). It also says, once, when an old
//! handshake key's overlap ends and when a rotated API key's grace ends
//! ([`GraceWatch`]), so operators see in the log the moment old credentials stop
//! working. The clock is injected so tests can move time instead of waiting for it.

use std::sync::Arc;
use std::time::Duration;

use onetrip_protocol::KeyId;

use crate::keys::KeyDirectory;
use crate::state::AppState;

/// Unix seconds; [`crate::state::unix_now`] in production.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Runs the handshake key lifecycle every `period` until the task is aborted.
/// Errors are logged and retried at the next tick: the store may be briefly busy.
pub async fn run(state: AppState, clock: Clock, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut graces = GraceWatch::default();
    loop {
        tick.tick().await;
        step(&state, clock(), &mut graces).await;
    }
}

/// One tick of [`run`] at `now`.
pub async fn step(state: &AppState, now: u64, graces: &mut GraceWatch) {
    match state.maintain_handshake_keys(now).await {
        Ok(changes) => {
            // A retired key is destroyed once, when its overlap is over: this line
            // cannot repeat for the same key.
            for id in &changes.destroyed {
                tracing::info!(key_id = %hex::encode(id),
                    "handshake key overlap ended: the old key is retired and its private key destroyed");
            }
            if let Some(id) = changes.new_key_id {
                tracing::info!(key_id = %hex::encode(id), "handshake key rotated automatically");
            }
        }
        Err(e) => tracing::error!(error = %e, "handshake key maintenance failed; retrying"),
    }
    graces.check(&state.keys, now);
}

/// Least time between two looks at the key directory for ended graces: a scan walks
/// every key, too much for every second with a million keys, and a grace end logged
/// up to this late (with its exact time in `ended_at`) is still useful.
pub const GRACE_SCAN_SECS: u64 = 10;

/// Logs, once each, the rotated API keys whose grace has ended. Nothing happens to
/// such a key at that moment (handshakes compare its `expires_at` with the clock), so
/// the watch remembers up to when it has looked and reports each end that falls
/// after that. Ends that passed while the server was down are not reported.
#[derive(Debug, Default)]
pub struct GraceWatch {
    /// The clock at the last scan; `None` before the first.
    checked_at: Option<u64>,
}

impl GraceWatch {
    /// Logs each key whose grace ended since the last scan (at most one scan per
    /// [`GRACE_SCAN_SECS`]); returns their ids.
    pub fn check(&mut self, keys: &KeyDirectory, now: u64) -> Vec<KeyId> {
        let Some(since) = self.checked_at else {
            self.checked_at = Some(now);
            return Vec::new();
        };
        if now < since.saturating_add(GRACE_SCAN_SECS) {
            return Vec::new();
        }
        self.checked_at = Some(now);
        let mut ended = Vec::new();
        keys.for_each(|entry| {
            let record = &entry.record;
            // Usable through `expires_at`, refused after it: still usable at the last
            // scan (`since`), refused now.
            let Some(end) = record.expires_at else { return };
            if record.revoked_at.is_none() && since <= end && end < now {
                tracing::info!(key_id = %entry.id, name = %record.name, ended_at = end,
                    "API key rotation grace ended: the old key is refused from now on");
                ended.push(entry.id);
            }
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use onetrip_protocol::ServerKeyDocument;

    use super::*;
    use crate::config::Settings;
    use crate::shared::MemoryShared;
    use crate::state::{unix_now, ManualClock};
    use crate::store::Store;

    /// A fresh store in `dir` and its state, on a clock standing at `start` (the
    /// state's first document is signed at exactly `start`).
    /// Handshake keys that live 100 s with a 20 s overlap, documents 10 s: a whole
    /// lifecycle in a few moves of the clock.
    fn short_key_policy(dir: &std::path::Path) -> Settings {
        let mut settings = Settings::defaults(dir.into());
        settings.server_key_lifetime_secs = 100;
        settings.server_key_overlap_secs = 20;
        settings.server_key_document_ttl_secs = 10;
        settings
    }

    async fn state_at(dir: &std::path::Path, start: u64, settings: Settings) -> AppState {
        let (store, _) = Store::open_or_init(dir, None, start).expect("store");
        let clock = Arc::new(ManualClock::at(start));
        AppState::with_clock(settings, store.into_backend(), MemoryShared::new(16), clock).await.expect("state")
    }

    async fn stored_ids(state: &AppState) -> Vec<[u8; 8]> {
        state.store.server_secrets().await.expect("secrets").server_keys.iter().map(|k| k.0).collect()
    }

    /// Polls `done` while the task runs (bounded: 10 s).
    async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
        for _ in 0..1_000 {
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn the_task_rotates_and_destroys_the_retired_key_without_any_rotate_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let start = unix_now();
        let settings = short_key_policy(dir.path());
        let state = state_at(dir.path(), start, settings).await;
        // The first key was fitted to the policy at start: valid start ..= start + 100.
        let first = stored_ids(&state).await;
        assert_eq!(first.len(), 1);
        let doc = ServerKeyDocument::parse(&state.handshake.load().document).expect("document");
        assert_eq!(doc.entries()[0].not_after, start + 100, "no more year-9999 keys");
        assert_eq!(doc.expires_at() - doc.issued_at(), 10, "documents live server_key_document_ttl_secs");

        let clock_now = Arc::new(AtomicU64::new(start));
        let c = clock_now.clone();
        let clock: Clock = Arc::new(move || c.load(Ordering::SeqCst));
        let task = tokio::spawn(run(state.clone(), clock, Duration::from_millis(5)));

        // 20 s before the end: a successor appears, and the document names it.
        clock_now.store(start + 80, Ordering::SeqCst);
        until("a successor is made", || async { stored_ids(&state).await.len() == 2 }).await;
        until("the document names it", || async {
            let doc = ServerKeyDocument::parse(&state.handshake.load().document).expect("document");
            doc.current(start + 80).is_ok_and(|k| k.key_id != first[0])
        })
        .await;
        // The old key is still accepted for its overlap.
        assert!(state.handshake.load().responder.entries().any(|e| e.key_id == first[0]));
        assert!(stored_ids(&state).await.contains(&first[0]));

        // One second after its overlap: the retired private key leaves the store.
        clock_now.store(start + 101, Ordering::SeqCst);
        until("the retired key is destroyed", || async { !stored_ids(&state).await.contains(&first[0]) }).await;
        until("and leaves the responder", || async {
            state.handshake.load().responder.entries().all(|e| e.key_id != first[0])
        })
        .await;
        let audit = state.store.audit_since(0, 100).await.expect("audit");
        let events: Vec<&str> = audit.iter().filter_map(|e| e["event"].as_str()).collect();
        assert!(events.contains(&"server_key.rotated") && events.contains(&"server_key.destroyed"), "{events:?}");
        task.abort();
    }

    /// Bytes written by a `tracing` subscriber that is the default while the guard
    /// lives (this thread only: the tests run on a current-thread runtime).
    fn capture_logs() -> (Arc<std::sync::Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // Another test thread may have met these callsites first, with no subscriber,
        // and cached "never log": recompute with this one in place.
        tracing::callsite::rebuild_interest_cache();
        (buf, guard)
    }

    fn lines_with(logs: &std::sync::Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
        let text = String::from_utf8(logs.lock().expect("log buffer").clone()).expect("utf-8 logs");
        text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn the_end_of_a_grace_and_of_an_overlap_is_logged_once_each() {
        use crate::admin::{execute, Actor, AdminRequest};
        let dir = tempfile::tempdir().expect("temp dir");
        let start = unix_now();
        let settings = short_key_policy(dir.path());
        let state = state_at(dir.path(), start, settings).await;
        let first_server_key = stored_ids(&state).await[0];
        let (logs, _guard) = capture_logs();
        let mut graces = GraceWatch::default();
        step(&state, start, &mut graces).await;

        // An API key rotated (on the state's clock, still at `start`) with a 30 s grace.
        let create = AdminRequest::KeysCreate {
            name: "billing-cron".into(),
            scopes: vec![],
            audiences: vec![],
            require_otp: false,
            otp_to: None,
        };
        let created = execute(&*state.store, Some(&state), create, &Actor::this_process()).await.expect("create");
        let key = onetrip_protocol::ApiKey::parse(created["api_key"].as_str().expect("api_key")).expect("key");
        let rotate = AdminRequest::KeysRotate { id: key.id().to_string(), grace_secs: 30 };
        let rotated = execute(&*state.store, Some(&state), rotate, &Actor::this_process()).await.expect("rotate");
        assert_eq!(rotated["old_key_expires_at"].as_u64(), Some(start + 30));

        // Every second from the start to well past both ends, as `run` would tick.
        for now in start..=start + 130 {
            step(&state, now, &mut graces).await;
            let grace = lines_with(&logs, "grace ended");
            if now <= start + 30 {
                assert!(grace.is_empty(), "logged while the grace still runs, at +{}", now - start);
            }
        }
        let grace = lines_with(&logs, "grace ended");
        assert_eq!(grace.len(), 1, "{grace:?}");
        assert!(grace[0].contains("INFO"), "{}", grace[0]);
        assert!(grace[0].contains(&key.id().to_string()) && grace[0].contains("billing-cron"), "{}", grace[0]);
        assert!(grace[0].contains("the old key is refused from now on"), "{}", grace[0]);
        assert!(grace[0].contains(&format!("ended_at={}", start + 30)), "{}", grace[0]);

        let overlap = lines_with(&logs, "overlap ended");
        assert_eq!(overlap.len(), 1, "{overlap:?}");
        assert!(overlap[0].contains(&hex::encode(first_server_key)), "{}", overlap[0]);
        assert!(!stored_ids(&state).await.contains(&first_server_key));
    }

    #[tokio::test]
    async fn a_store_whose_key_is_valid_until_9999_is_fitted_to_the_policy_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let start = unix_now();
        let (store, _) = Store::open_or_init(dir.path(), None, start).expect("store");
        // What stores made before keys had a lifetime hold: a key valid until 9999.
        let legacy = store.rotate_server_key(start, start, 253_402_300_799 - start).expect("legacy key");
        let state = AppState::new(Settings::defaults(dir.path().into()), store.into_backend(), MemoryShared::new(16))
            .await
            .expect("state");
        let keys = state.store.server_key_validity().await.expect("keys");
        let (_, not_before, not_after) = *keys.iter().find(|k| k.0 == legacy).expect("still there");
        assert_eq!(not_after, not_before + 30 * 86_400, "cut back to the default lifetime");
        assert!(keys.iter().all(|k| k.2 < 253_402_300_799));
    }

    #[tokio::test]
    async fn the_document_is_re_signed_before_it_expires() {
        let dir = tempfile::tempdir().expect("temp dir");
        let start = unix_now();
        let mut settings = Settings::defaults(dir.path().into());
        settings.server_key_document_ttl_secs = 600;
        let state = state_at(dir.path(), start, settings).await;
        let clock_now = Arc::new(AtomicU64::new(start + 299));
        let c = clock_now.clone();
        let task =
            tokio::spawn(run(state.clone(), Arc::new(move || c.load(Ordering::SeqCst)), Duration::from_millis(5)));
        let expires = || ServerKeyDocument::parse(&state.handshake.load().document).expect("document").expires_at();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(expires(), start + 600, "not yet half-way");
        clock_now.store(start + 300, Ordering::SeqCst);
        until("a fresh document is signed", || async { expires() == start + 900 }).await;
        task.abort();
    }
}
