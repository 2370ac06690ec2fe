//! Disk retention, run by `serve` at start and then every minute: audit events older
//! than `audit_retention_days`, and persisted replay ids whose stamp the clock has
//! passed ([`crate::replay_guard`]). Deletions go in bounded batches, each its own
//! transaction, so a large backlog never becomes one huge transaction that holds the
//! store's write lock while requests wait.

use std::time::Duration;

use crate::state::AppState;
use crate::store::{StateStore, StoreError};

/// Rows deleted per transaction.
pub const BATCH: usize = 1_000;
/// Time between two passes.
const PERIOD: Duration = Duration::from_secs(60);

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Audit events.
    pub audit: usize,
    /// Replay ids.
    pub replay_ids: usize,
    /// Revocations of tokens that have expired anyway.
    pub revocations: usize,
    /// Token master keys past their overlap.
    pub token_keys: usize,
}

/// One pass: deletes audit events from before `now − retention_days` and replay ids
/// stamped at or before `now`, `batch` rows per transaction, until none is left.
pub async fn sweep(store: &dyn StateStore, now: u64, retention_days: u64, batch: usize) -> Result<Swept, StoreError> {
    let cutoff = now.saturating_sub(retention_days.saturating_mul(86_400));
    let batch = batch.max(1);
    Ok(Swept {
        audit: drain(batch, || store.delete_audit_before(cutoff, batch)).await?,
        replay_ids: drain(batch, || store.sweep_replay_ids(now, batch)).await?,
        token_keys: store.drop_retired_token_keys(now).await?,
        revocations: drain(batch, || store.sweep_revoked_tokens(now, batch)).await?,
    })
}

/// Runs a bounded delete until it deletes less than a full batch; returns the total.
async fn drain<F>(batch: usize, mut delete: impl FnMut() -> F) -> Result<usize, StoreError>
where
    F: std::future::Future<Output = Result<usize, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        if n < batch {
            return Ok(total);
        }
    }
}

/// The background task: one [`sweep`] at start, then one a minute.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        match sweep(&*state.store, state.now(), state.settings.audit_retention_days, BATCH).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    audit = swept.audit,
                    replay_ids = swept.replay_ids,
                    revocations = swept.revocations,
                    token_keys = swept.token_keys,
                    "expired rows deleted"
                );
                // A retired token key must stop opening tokens now, not at a restart.
                if swept.token_keys > 0 {
                    // Dropped once, so said once: the old key's overlap is over.
                    tracing::info!(
                        token_keys = swept.token_keys,
                        "token key overlap ended: tokens sealed with the old key are refused from now on"
                    );
                    if let Err(e) = state.reload_token_keys().await {
                        tracing::error!(error = %e, "cannot reload the token keys after a retirement");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot delete expired audit events or replay ids"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{RedbBackend, Store};

    #[tokio::test]
    async fn a_pass_deletes_old_audit_events_and_passed_replay_ids_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let day = 86_400;
        let now = 1_000 * day;
        let (store, _) = Store::open_or_init(dir.path(), None, now - 100 * day).expect("store");
        let backend = RedbBackend::new(store);
        let store = backend.store().expect("open");
        // 25 events from 91 to 67 days ago, one a day, in the order they were written.
        for age in (67..=91).rev() {
            store.audit(now - age * day, "test.event", serde_json::json!({ "age": age })).expect("audit");
        }
        store.put_replay_ids(&[(now - 1, [1; 16]), (now, [2; 16]), (now + 30, [3; 16])]).expect("ids");

        let swept = sweep(&backend, now, 90, 4).await.expect("sweep");
        // The store's own creation events (100 days old) go too.
        let left = store.audit_since(0, usize::MAX).expect("read");
        assert_eq!(left.len(), 90 - 67 + 1, "events of the last 90 days stay");
        assert!(left.iter().all(|e| e["at"].as_u64().is_some_and(|at| at >= now - 90 * day)));
        assert!(swept.audit >= 2, "{swept:?}");
        assert_eq!(swept.replay_ids, 2);
        assert_eq!(store.replay_ids_after(0).expect("ids"), vec![(now + 30, [3; 16])]);
        assert_eq!(sweep(&backend, now, 90, 4).await.expect("again"), Swept::default());
    }
}
