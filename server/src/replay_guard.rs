//! "Accepted once" across restarts: the replay cache ([`SharedState::remember_once`])
//! plus the start-time rule plus a small durable table.
//!
//! The rule (PROTOCOL.md §6.2 steps 7–8, §8): a stamp must be strictly after the
//! second the server started in. A request accepted by an earlier run at its clock
//! second `t` with a stamp `≤ t` is then refused by every later run, since that run
//! started at or after `t`. The only accepted ids a later run could see again are
//! those stamped ahead of the clock (`stamp > now`): they are written to the store
//! before their answer leaves ([`AheadWriter`], one transaction for every id that
//! arrived meanwhile), loaded back into the cache at start ([`restore`]), and swept
//! once the clock passes their stamp. A client in sync never stamps ahead of the
//! server, so it causes no store write.
//!
//! To refuse nobody for being in the start second, [`wait_past_start`] holds the
//! announcement and the accept loop until the clock has left it (at most one second).
//! Assumed: the wall clock does not step back across a restart.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use onetrip_protocol::kdf::{derive_public, LABEL_REPLAY_ID};
use onetrip_protocol::pop::TOKEN_BINDING_LEN;
use onetrip_protocol::PopProof;
use tokio::sync::{mpsc, oneshot};

use crate::shared::SharedError;
use crate::state::{unix_now, AppState};
use crate::store::{StateStore, StoreError};

/// Ids written in one store transaction at most.
const MAX_BATCH: usize = 1024;
/// Ids waiting for the writer at most; further requests wait for room.
const QUEUE: usize = 8192;

/// Why an id could not be recorded; the request then fails closed. `Clone`: one
/// failed transaction answers every request whose id it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplayGuardError {
    /// The replay cache refused (full, or a clock jump).
    #[error(transparent)]
    Shared(Arc<SharedError>),
    /// The store could not write (or, at start, read) the ids stamped ahead.
    #[error("cannot record a replay id in the store: {0}")]
    Store(Arc<StoreError>),
    /// The writer task is gone: the server is stopping.
    #[error("cannot record a replay id in the store: the replay id writer stopped")]
    WriterStopped,
    /// The store was closed before the writer reached the id.
    #[error("cannot record a replay id in the store: the store is closed")]
    StoreClosed,
    /// A persisted id does not fit the replay cache: the clock window was shortened
    /// while ids stamped far ahead were live.
    #[error("a replay id stamped {stamp} does not fit a clock window of {window} s at {now}: start with the previous clock_window_secs, or after {stamp}")]
    Horizon {
        /// The id's stamp.
        stamp: u64,
        /// The configured window.
        window: u64,
        /// The time of the start.
        now: u64,
    },
}

impl From<SharedError> for ReplayGuardError {
    fn from(e: SharedError) -> Self {
        Self::Shared(Arc::new(e))
    }
}

impl From<StoreError> for ReplayGuardError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

/// What became of a presented proof of possession.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofUse {
    /// First use: go ahead.
    Fresh,
    /// Seen before (within its window).
    Replayed,
    /// Stamped at or before the server's start: an earlier run may have accepted it.
    BeforeStart,
}

/// An id to write, and where to say how it went: `Ok(true)` for the first id of its
/// transaction (one fsync), `Ok(false)` for the others.
type Job = (u64, [u8; 16], oneshot::Sender<Result<bool, ReplayGuardError>>);

/// Group commit of ids stamped ahead: the first caller starts a writer task; each of
/// its transactions takes every id queued meanwhile, so a burst costs one fsync.
#[derive(Debug, Default)]
pub struct AheadWriter {
    tx: OnceLock<mpsc::Sender<Job>>,
}

impl AheadWriter {
    async fn persist(&self, state: &AppState, stamp: u64, id: [u8; 16]) -> Result<(), ReplayGuardError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            // Weak: the task must not keep the store open after the state is gone.
            tokio::spawn(write_batches(Arc::downgrade(&state.store), rx));
            tx
        });
        let (ack, done) = oneshot::channel();
        tx.send((stamp, id, ack)).await.map_err(|_| ReplayGuardError::WriterStopped)?;
        let first = done.await.map_err(|_| ReplayGuardError::WriterStopped)??;
        state.metrics.replay_ids_persisted.fetch_add(1, Ordering::Relaxed);
        if first {
            state.metrics.replay_id_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

async fn write_batches(store: Weak<dyn StateStore>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<(u64, [u8; 16])> = batch.iter().map(|(stamp, id, _)| (*stamp, *id)).collect();
        let result = match store.upgrade() {
            Some(st) => st.put_replay_ids(ids).await.map_err(ReplayGuardError::from),
            None => Err(ReplayGuardError::StoreClosed),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot persist replay ids; refusing the requests stamped ahead");
        }
        for (i, (_, _, ack)) in batch.drain(..).enumerate() {
            let _ = ack.send(result.clone().map(|()| i == 0));
        }
    }
}

/// Records a request's replay id: `Ok(true)` when new, `Ok(false)` for a replay.
/// The caller has already refused stamps at or before the start and outside the
/// window; an id stamped ahead of `now` is durable before this returns.
pub async fn remember_once(state: &AppState, id: [u8; 16], stamp: u64, now: u64) -> Result<bool, ReplayGuardError> {
    // Kept until the stamp leaves the window: a request is only acceptable within
    // ±window of its stamp, so after stamp + window it is refused without the cache.
    let expires_at = stamp.saturating_add(state.settings.clock_window_secs);
    if !state.shared.remember_once(id, now, expires_at).await? {
        return Ok(false);
    }
    if stamp > now {
        state.ahead_ids.persist(state, stamp, id).await?;
    }
    Ok(true)
}

/// The replay id of a proof of possession on the server's own API: the proof and the
/// clear header of the token it is bound to (PROTOCOL.md §8).
pub fn proof_replay_id(proof: &PopProof, binding: &[u8; TOKEN_BINDING_LEN]) -> [u8; 16] {
    derive_public(LABEL_REPLAY_ID, &[proof.as_bytes(), binding])
}

/// Accepts a verified proof once, across restarts too (the same rule as handshakes).
pub async fn accept_proof(
    state: &AppState,
    proof: &PopProof,
    binding: &[u8; TOKEN_BINDING_LEN],
    now: u64,
) -> Result<ProofUse, ReplayGuardError> {
    if proof.timestamp() <= state.started_at {
        return Ok(ProofUse::BeforeStart);
    }
    Ok(match remember_once(state, proof_replay_id(proof, binding), proof.timestamp(), now).await? {
        true => ProofUse::Fresh,
        false => ProofUse::Replayed,
    })
}

/// Loads the ids an earlier run accepted ahead of its clock into the replay cache
/// (before the server answers anything); returns how many.
pub async fn restore(state: &AppState) -> Result<usize, ReplayGuardError> {
    let ids = state.store.replay_ids_after(state.started_at).await?;
    let (now, window) = (state.now(), state.settings.clock_window_secs);
    for (stamp, id) in &ids {
        let expires_at = stamp.saturating_add(window);
        match state.shared.remember_once(*id, now, expires_at).await {
            Ok(_) => {}
            Err(_) if expires_at > now => return Err(ReplayGuardError::Horizon { stamp: *stamp, window, now }),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ids.len())
}

/// Returns once the clock is past the start second (stamps in it are refused).
pub async fn wait_past_start(state: &AppState) {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    // Bounded: a second and a bit, even if the clock were to stall.
    for _ in 0..50 {
        if unix_now() > state.started_at {
            return;
        }
        let into_second = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
        let left = 1000u64.saturating_sub(u64::from(into_second)).clamp(1, 1000);
        tokio::time::sleep(Duration::from_millis(left.min(50))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::shared::MemoryShared;

    async fn state(dir: &std::path::Path) -> AppState {
        let (store, _) = crate::store::Store::open_or_init(dir, None, unix_now()).expect("store");
        AppState::new(Settings::defaults(dir.into()), store.into_backend(), MemoryShared::new(1_000))
            .await
            .expect("state")
    }

    #[tokio::test]
    async fn only_ids_stamped_ahead_reach_the_store_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let st = state(dir.path()).await;
        let now = st.started_at + 1;
        assert!(remember_once(&st, [1; 16], now, now).await.expect("in sync"));
        assert!(remember_once(&st, [2; 16], now - 5, now).await.expect("behind"));
        assert!(remember_once(&st, [3; 16], now + 40, now).await.expect("ahead"));
        assert!(!remember_once(&st, [3; 16], now + 40, now).await.expect("replay"));
        assert_eq!(st.metrics.replay_ids_persisted.load(Ordering::Relaxed), 1);
        assert_eq!(st.store.replay_ids_after(0).await.expect("read"), vec![(now + 40, [3; 16])]);
        drop(st);
        // The next run starts at or after `now`: it refuses stamps ≤ its start, and
        // only the id stamped ahead comes back.
        let st = state(dir.path()).await;
        assert_eq!(restore(&st).await.expect("restore"), 1);
        assert!(!remember_once(&st, [3; 16], now + 40, unix_now()).await.expect("replay after restart"));
    }

    #[tokio::test]
    async fn a_proof_is_accepted_once_and_never_from_before_the_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let st = state(dir.path()).await;
        let key = onetrip_protocol::Secret::<32>::random(&mut rand::thread_rng());
        let sign = |at| PopProof::sign(&key, &[7; 25], "POST", "/v1/otp/x", b"{}", at, &mut rand::thread_rng());
        let proof = sign(st.started_at + 1).expect("proof");
        let now = st.started_at + 1;
        assert_eq!(accept_proof(&st, &proof, &[7; 25], now).await.expect("first"), ProofUse::Fresh);
        assert_eq!(accept_proof(&st, &proof, &[7; 25], now).await.expect("again"), ProofUse::Replayed);
        // The same proof bytes under another token's binding are another id.
        assert_eq!(accept_proof(&st, &proof, &[8; 25], now).await.expect("other"), ProofUse::Fresh);
        let early = sign(st.started_at).expect("proof");
        assert_eq!(accept_proof(&st, &early, &[7; 25], now).await.expect("early"), ProofUse::BeforeStart);
    }
}
