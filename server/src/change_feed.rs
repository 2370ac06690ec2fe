//! Applies the store's change feed to what this replica holds in memory: the key
//! directory (that is what keeps a handshake one DH, without a store round trip),
//! the handshake keys, the token keys and revoked tokens. Another replica or the CLI
//! writing to a shared store (PostgreSQL) reaches every replica this way; a
//! [`Change::Resync`] (sent after every reconnection of the feed) and a periodic full
//! resync reload everything, so a change missed while the feed was down is caught.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::admin::Live;
use crate::state::{unix_now, AppState};
use crate::store::ports::{for_each_api_key, Change};
use crate::store::StoreError;

/// Time between two full resyncs, feed or no feed.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);

/// Applies changes until the feed ends (the task is aborted at shutdown).
pub async fn run(state: AppState, mut changes: mpsc::Receiver<Change>) {
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.tick().await;
    loop {
        let change = tokio::select! {
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
            _ = resync.tick() => Change::Resync,
        };
        // A change that cannot be applied now (the store is down) becomes a resync
        // at the next tick rather than a silent gap.
        if let Err(e) = apply(&state, &change).await {
            tracing::warn!(error = %e, ?change, "cannot apply a store change; retrying with a full resync");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = apply(&state, &Change::Resync).await {
                tracing::error!(error = %e, "full resync failed; the next change or tick retries");
            }
        }
    }
}

/// Applies one change to the in-memory state.
pub async fn apply(state: &AppState, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::Key(id) => {
            if let Some(record) = state.store.get_api_key(*id).await? {
                state.key_changed(*id, &record).await;
            }
        }
        Change::ServerKeys => state.reload_handshake_keys().await?,
        Change::TokenKeys => state.reload_token_keys().await?,
        Change::TokenRevoked(_) => load_revocations(state).await?,
        Change::Resync => {
            let mut fresh = Vec::new();
            for_each_api_key(&*state.store, 10_000, |id, record| {
                let changed = state.keys.get(&id).is_none_or(|k| k.record != record);
                if changed {
                    fresh.push((id, record));
                }
            })
            .await?;
            for (id, record) in fresh {
                state.key_changed(id, &record).await;
            }
            state.reload_handshake_keys().await?;
            state.reload_token_keys().await?;
            load_revocations(state).await?;
        }
    }
    Ok(())
}

async fn load_revocations(state: &AppState) -> Result<(), StoreError> {
    for (id, until) in state.store.revoked_tokens(unix_now()).await? {
        state
            .shared
            .revoke_token(id, until)
            .await
            .map_err(|e| StoreError::Unavailable(format!("shared state: {e}")))?;
    }
    Ok(())
}
