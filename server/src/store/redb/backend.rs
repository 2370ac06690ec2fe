//! The embedded backend: the state ports over the redb [`Store`]. redb is blocking
//! (a write ends in an fsync), so every call runs on tokio's blocking pool and the
//! request threads never wait on the disk.

use std::sync::Arc;

use async_trait::async_trait;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::Secret;

use super::heal::Handle;
use super::Store;
use crate::otp::lockout::Guard;
use crate::otp::Verification;
use crate::store::ports::{
    AuditLog, Erased, GuardChange, GuardSubject, KeyFilter, KeyRepo, KeyRotation, KeyUpdate, OtpRepo, SecretRepo,
    StillPending, TokenStateRepo, TotpAudit, TotpPut, TransitionAudit, VerificationChange, VerificationCheck,
};
use crate::store::{
    ApiKeyRecord, AuditEntry, KeyChanges, KeyPolicy, KeyValidity, ServerSecrets, StepUpStart, StoreError, TotpEnrolment,
};

impl Store {
    /// This store behind the ports.
    pub fn into_backend(self) -> crate::store::Backend {
        Arc::new(RedbBackend::new(self))
    }
}

/// The redb store behind the ports.
#[derive(Debug, Clone)]
pub struct RedbBackend {
    handle: Arc<Handle>,
    sealed: bool,
}

impl RedbBackend {
    /// Wraps an open store.
    pub fn new(store: Store) -> Self {
        Self { sealed: store.is_sealed(), handle: Arc::new(Handle::new(store)) }
    }

    /// The store itself, for what only the embedded engine does (backups, tests);
    /// unavailable while it is closed after a failed write.
    pub fn store(&self) -> Result<Arc<Store>, StoreError> {
        self.handle.current(false)
    }

    /// Runs `f` on the blocking pool; a failure is counted under `op`, named in a
    /// disk error's message, and an I/O failure closes the file to be reopened.
    async fn blocking<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let handle = Arc::clone(&self.handle);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let store = match handle.current(false) {
                Ok(store) => store,
                Err(e) => {
                    handle.record(op, started.elapsed(), true);
                    return Err(e);
                }
            };
            let result = f(&store);
            handle.record(op, started.elapsed(), result.is_err());
            if let Err(e) = &result {
                handle.failed(&store, op, e);
            }
            result.map_err(|e| e.during(op))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the store task did not finish: {e}")))?
    }
}

/// One process holds the file: the admin socket applies changes to the running server.
impl crate::store::ports::ChangeFeed for RedbBackend {}

#[async_trait]
impl KeyRepo for RedbBackend {
    async fn put_api_keys(
        &self,
        records: Vec<(KeyId, ApiKeyRecord)>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.blocking("put_api_keys", move |s| s.put_api_keys_audited(&records, audit.as_ref())).await
    }

    async fn update_api_keys(
        &self,
        ids: Vec<KeyId>,
        update: KeyUpdate,
        audit: Option<AuditEntry>,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        self.blocking("update_api_keys", move |s| s.update_api_keys_audited(&ids, update, audit.as_ref())).await
    }

    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.blocking("rotate_api_key", move |s| s.rotate_api_key(&rotation)).await
    }

    async fn get_api_key(&self, id: KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.blocking("get_api_key", move |s| s.get_api_key(&id)).await
    }

    async fn api_keys_page(
        &self,
        after: Option<KeyId>,
        limit: usize,
        filter: &KeyFilter,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        let filter = filter.clone();
        self.blocking("api_keys_page", move |s| s.api_keys_page(after.as_ref(), limit, &filter)).await
    }

    async fn put_totp(&self, enrolment: TotpPut, audit: TotpAudit) -> Result<TotpEnrolment, StoreError> {
        self.blocking("put_totp", move |s| {
            s.put_totp(&enrolment.owner, &enrolment.account, &enrolment.secret, enrolment.now, enrolment.replace, audit)
        })
        .await
    }

    async fn has_totp(&self, owner: [u8; 16], account: String) -> Result<bool, StoreError> {
        self.blocking("has_totp", move |s| s.has_totp(&owner, &account)).await
    }

    async fn get_guard(&self, subject: Vec<u8>) -> Result<Guard, StoreError> {
        self.blocking("get_guard", move |s| s.get_guard(&subject)).await
    }

    async fn update_guard(&self, subject: Vec<u8>, change: GuardChange) -> Result<Guard, StoreError> {
        self.blocking("update_guard", move |s| {
            s.update_guard(&subject, |g| {
                let entry = change(g);
                (g.clone(), entry)
            })
        })
        .await
    }
}

#[async_trait]
impl SecretRepo for RedbBackend {
    fn is_sealed(&self) -> bool {
        self.sealed
    }

    fn location(&self) -> String {
        self.handle.path().display().to_string()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A closed store is opened again here, so an idle server heals too.
        let handle = Arc::clone(&self.handle);
        tokio::task::spawn_blocking(move || handle.current(true).map(drop))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the store task did not finish: {e}")))?
    }

    fn store_stats(&self) -> Vec<crate::store::ports::OpStats> {
        self.handle.stats()
    }

    async fn server_secrets(&self) -> Result<ServerSecrets, StoreError> {
        self.blocking("server_secrets", |s| s.server_secrets()).await
    }

    async fn backup_to(
        &self,
        dest: std::path::PathBuf,
        force: bool,
    ) -> Result<super::backup::BackupSummary, super::backup::BackupError> {
        let handle = Arc::clone(&self.handle);
        tokio::task::spawn_blocking(move || handle.current(false)?.backup_to(&dest, force))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the backup task did not finish: {e}")))?
    }

    async fn otp_key(&self) -> Result<Secret<32>, StoreError> {
        self.blocking("otp_key", |s| s.otp_key()).await
    }

    async fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError> {
        self.blocking("server_key_validity", |s| s.server_key_validity()).await
    }

    async fn maintain_server_keys(&self, now: u64, policy: KeyPolicy) -> Result<KeyChanges, StoreError> {
        self.blocking("maintain_server_keys", move |s| s.maintain_server_keys(now, policy)).await
    }

    async fn rotate_server_key(
        &self,
        now: u64,
        old_not_after: u64,
        lifetime: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 8], StoreError> {
        self.blocking("rotate_server_key", move |s| s.rotate_server_key_by(now, old_not_after, lifetime, actor)).await
    }

    async fn rotate_token_key(
        &self,
        now: u64,
        overlap_secs: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 4], StoreError> {
        self.blocking("rotate_token_key", move |s| s.rotate_token_key_by(now, overlap_secs, actor)).await
    }

    async fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError> {
        self.blocking("drop_retired_token_keys", move |s| s.drop_retired_token_keys(now)).await
    }
}

#[async_trait]
impl OtpRepo for RedbBackend {
    async fn put_verification(&self, v: Verification, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        self.blocking("put_verification", move |s| s.put_verification(&v, audit)).await
    }

    async fn get_verification(&self, id: [u8; 16]) -> Result<Option<Verification>, StoreError> {
        self.blocking("get_verification", move |s| s.get_verification(&id)).await
    }

    async fn update_verification_erased(
        &self,
        id: [u8; 16],
        change: VerificationChange,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        self.blocking("update_verification_erased", move |s| s.update_verification_audited(&id, change, audit)).await
    }

    async fn check_verification_erased(
        &self,
        id: [u8; 16],
        subject: GuardSubject,
        check: VerificationCheck,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        self.blocking("check_verification_erased", move |s| s.check_verification(&id, subject, check, audit)).await
    }

    async fn start_step_up(
        &self,
        subject: Vec<u8>,
        now: u64,
        still_pending: StillPending,
        new: Verification,
        audit: AuditEntry,
    ) -> Result<StepUpStart, StoreError> {
        self.blocking("start_step_up", move |s| s.start_step_up(&subject, now, still_pending, new, audit)).await
    }

    async fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError> {
        self.blocking("sweep_verifications", move |s| s.sweep_verifications(now, keep_secs)).await
    }
}

#[async_trait]
impl AuditLog for RedbBackend {
    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.blocking("record_audit", move |s| s.record_audit(&entry)).await
    }

    async fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        self.blocking("audit_since", move |s| s.audit_since(since, limit)).await
    }

    async fn delete_audit_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError> {
        self.blocking("delete_audit_before", move |s| s.delete_audit_before(cutoff, max)).await
    }
}

#[async_trait]
impl TokenStateRepo for RedbBackend {
    async fn revoke_token(&self, token_id: [u8; 16], until: u64, audit: AuditEntry) -> Result<u64, StoreError> {
        self.blocking("revoke_token", move |s| s.revoke_token(&token_id, until, &audit)).await
    }

    async fn revoked_tokens(&self, now: u64) -> Result<Vec<([u8; 16], u64)>, StoreError> {
        self.blocking("revoked_tokens", move |s| s.revoked_tokens(now)).await
    }

    async fn sweep_revoked_tokens(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        self.blocking("sweep_revoked_tokens", move |s| s.sweep_revoked_tokens(now, max)).await
    }

    async fn put_replay_ids(&self, ids: Vec<(u64, [u8; 16])>) -> Result<(), StoreError> {
        self.blocking("put_replay_ids", move |s| s.put_replay_ids(&ids)).await
    }

    async fn replay_ids_after(&self, after: u64) -> Result<Vec<(u64, [u8; 16])>, StoreError> {
        self.blocking("replay_ids_after", move |s| s.replay_ids_after(after)).await
    }

    async fn sweep_replay_ids(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        self.blocking("sweep_replay_ids", move |s| s.sweep_replay_ids(now, max)).await
    }
}
