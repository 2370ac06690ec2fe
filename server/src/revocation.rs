//! Token revocation across restarts and for resource servers: revocations are kept
//! in the store (`store::redb::revocations`) until the token would have expired, loaded
//! into the shared state at start (which `AppState::check_own_token` and
//! introspection consult), and listed at `GET /v1/revocations` so that a resource
//! server verifying tokens in-process with its audience key can poll them cheaply.

use crate::shared::SharedError;
use crate::state::AppState;
use crate::store::StoreError;

/// Why the revocations could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The store could not be read.
    #[error("cannot read token revocations: {0}")]
    Store(#[from] StoreError),
    /// The shared state refused them.
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// Loads every revocation still in force into the shared state; returns how many.
pub async fn restore(state: &AppState) -> Result<usize, RevocationError> {
    let revoked = state.store.revoked_tokens(state.now()).await?;
    for (id, until) in &revoked {
        state.shared.revoke_token(*id, *until).await?;
    }
    Ok(revoked.len())
}
