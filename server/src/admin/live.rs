//! How a running server learns of a change the admin operations stored, so that it
//! applies without a restart: a key record to serve, handshake or token keys to
//! reload, a revoked token to refuse.

use onetrip_protocol::api_key::KeyId;

use super::LiveError;
use crate::keys::KeyEntry;
use crate::state::AppState;
use crate::store::ApiKeyRecord;

/// Hooks into a running server so changes apply without restart.
#[async_trait::async_trait]
pub trait Live: Send + Sync {
    /// A key record was created or changed.
    async fn key_changed(&self, id: KeyId, record: &ApiKeyRecord);
    /// Handshake keys changed in the store.
    async fn server_keys_changed(&self) -> Result<(), LiveError>;
    /// Validity of new handshake keys (the server's configured lifetime).
    fn server_key_lifetime_secs(&self) -> u64 {
        crate::store::DEFAULT_SERVER_KEY_LIFETIME_SECS
    }
    /// The server's time (its injectable clock), which admin changes are stamped
    /// with, so that a rotation's times agree with the clock that judges them.
    fn now(&self) -> u64 {
        crate::state::unix_now()
    }
    /// A token was revoked until `until`.
    async fn token_revoked(&self, _token_id: [u8; 16], _until: u64) -> Result<(), LiveError> {
        Ok(())
    }
    /// Token master keys changed in the store.
    async fn token_keys_changed(&self) -> Result<(), LiveError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Live for AppState {
    fn now(&self) -> u64 {
        AppState::now(self)
    }

    async fn key_changed(&self, id: KeyId, record: &ApiKeyRecord) {
        match KeyEntry::new(id, record.clone()) {
            Some(entry) => {
                let (st, now) = (self.clone(), self.now());
                // One key's DH values (one per server key) before it is served: CPU
                // work, so off the request threads, and none for the other keys.
                let warmed = tokio::task::spawn_blocking(move || {
                    st.keys.upsert_warm(entry, &st.handshake.load().responder, now)
                })
                .await;
                if warmed.is_err() {
                    // Serve the key uncached rather than not at all.
                    if let Some(entry) = KeyEntry::new(id, record.clone()) {
                        self.keys.upsert(entry);
                    }
                }
            }
            None => tracing::error!(key = %id, "a key record in the store is damaged; it is not served"),
        }
    }
    async fn server_keys_changed(&self) -> Result<(), LiveError> {
        Ok(self.reload_handshake_keys().await?)
    }
    fn server_key_lifetime_secs(&self) -> u64 {
        self.settings.server_key_lifetime_secs
    }
    async fn token_keys_changed(&self) -> Result<(), LiveError> {
        Ok(self.reload_token_keys().await?)
    }
    async fn token_revoked(&self, token_id: [u8; 16], until: u64) -> Result<(), LiveError> {
        Ok(self.shared.revoke_token(token_id, until).await?)
    }
}
