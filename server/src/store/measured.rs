//! Per-operation counts and time for a backend that cannot count them itself in one
//! place (PostgreSQL: every port method runs its own queries). [`Measured`] wraps a
//! backend and times each port method call, feeding `onetrip_store_operations_total`,
//! `onetrip_store_errors_total` and `onetrip_store_operation_seconds_total` like the
//! embedded store's own accounting. It adds two clock reads and a short lock per call.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::Secret;

use super::ports::{
    AuditLog, Change, ChangeFeed, Erased, GuardChange, GuardSubject, KeyFilter, KeyRepo, KeyRotation, KeyUpdate,
    OpStats, OtpRepo, SecretRepo, StillPending, TokenStateRepo, TotpAudit, TotpPut, TransitionAudit,
    VerificationChange, VerificationCheck,
};
use super::{
    ApiKeyRecord, AuditEntry, KeyChanges, KeyPolicy, KeyValidity, ServerSecrets, StepUpStart, StoreError, TotpEnrolment,
};
use crate::otp::lockout::Guard;
use crate::otp::Verification;

/// Calls, failures and time per operation.
#[derive(Debug, Default)]
pub struct OpCounter(Mutex<BTreeMap<&'static str, OpStats>>);

impl OpCounter {
    /// Counts a call of `op` that took `took`.
    pub fn record(&self, op: &'static str, took: Duration, failed: bool) {
        let mut stats = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stats.entry(op).or_insert(OpStats { op, ..OpStats::default() });
        entry.calls += 1;
        entry.errors += u64::from(failed);
        entry.seconds += took.as_secs_f64();
    }

    /// Counts so far, by operation.
    pub fn stats(&self) -> Vec<OpStats> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).values().copied().collect()
    }
}

/// A backend whose port method calls are counted and timed.
#[derive(Debug)]
pub struct Measured<B> {
    inner: B,
    counter: OpCounter,
}

impl<B> Measured<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner, counter: OpCounter::default() }
    }

    async fn timed<R>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.counter.record(op, started.elapsed(), result.is_err());
        result
    }
}

#[async_trait]
impl<B: KeyRepo> KeyRepo for Measured<B> {
    async fn put_api_keys(
        &self,
        records: Vec<(KeyId, ApiKeyRecord)>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.timed("put_api_keys", self.inner.put_api_keys(records, audit)).await
    }
    async fn update_api_keys(
        &self,
        ids: Vec<KeyId>,
        update: KeyUpdate,
        audit: Option<AuditEntry>,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        self.timed("update_api_keys", self.inner.update_api_keys(ids, update, audit)).await
    }
    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.timed("rotate_api_key", self.inner.rotate_api_key(rotation)).await
    }
    async fn get_api_key(&self, id: KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.timed("get_api_key", self.inner.get_api_key(id)).await
    }
    async fn api_keys_page(
        &self,
        after: Option<KeyId>,
        limit: usize,
        filter: &KeyFilter,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        self.timed("api_keys_page", self.inner.api_keys_page(after, limit, filter)).await
    }
    async fn put_totp(&self, enrolment: TotpPut, audit: TotpAudit) -> Result<TotpEnrolment, StoreError> {
        self.timed("put_totp", self.inner.put_totp(enrolment, audit)).await
    }
    async fn has_totp(&self, owner: [u8; 16], account: String) -> Result<bool, StoreError> {
        self.timed("has_totp", self.inner.has_totp(owner, account)).await
    }
    async fn get_guard(&self, subject: Vec<u8>) -> Result<Guard, StoreError> {
        self.timed("get_guard", self.inner.get_guard(subject)).await
    }
    async fn update_guard(&self, subject: Vec<u8>, change: GuardChange) -> Result<Guard, StoreError> {
        self.timed("update_guard", self.inner.update_guard(subject, change)).await
    }
}

#[async_trait]
impl<B: SecretRepo> SecretRepo for Measured<B> {
    fn is_sealed(&self) -> bool {
        self.inner.is_sealed()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
    fn store_stats(&self) -> Vec<OpStats> {
        self.counter.stats()
    }
    async fn backup_to(
        &self,
        dest: std::path::PathBuf,
        force: bool,
    ) -> Result<super::backup::BackupSummary, super::backup::BackupError> {
        self.inner.backup_to(dest, force).await
    }
    async fn server_secrets(&self) -> Result<ServerSecrets, StoreError> {
        self.timed("server_secrets", self.inner.server_secrets()).await
    }
    async fn otp_key(&self) -> Result<Secret<32>, StoreError> {
        self.timed("otp_key", self.inner.otp_key()).await
    }
    async fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError> {
        self.timed("server_key_validity", self.inner.server_key_validity()).await
    }
    async fn maintain_server_keys(&self, now: u64, policy: KeyPolicy) -> Result<KeyChanges, StoreError> {
        self.timed("maintain_server_keys", self.inner.maintain_server_keys(now, policy)).await
    }
    async fn rotate_server_key(
        &self,
        now: u64,
        old_not_after: u64,
        lifetime: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 8], StoreError> {
        self.timed("rotate_server_key", self.inner.rotate_server_key(now, old_not_after, lifetime, actor)).await
    }
    async fn rotate_token_key(
        &self,
        now: u64,
        overlap_secs: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 4], StoreError> {
        self.timed("rotate_token_key", self.inner.rotate_token_key(now, overlap_secs, actor)).await
    }
    async fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError> {
        self.timed("drop_retired_token_keys", self.inner.drop_retired_token_keys(now)).await
    }
}

#[async_trait]
impl<B: OtpRepo> OtpRepo for Measured<B> {
    async fn put_verification(&self, v: Verification, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        self.timed("put_verification", self.inner.put_verification(v, audit)).await
    }
    async fn get_verification(&self, id: [u8; 16]) -> Result<Option<Verification>, StoreError> {
        self.timed("get_verification", self.inner.get_verification(id)).await
    }
    async fn update_verification_erased(
        &self,
        id: [u8; 16],
        change: VerificationChange,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        self.timed("update_verification_erased", self.inner.update_verification_erased(id, change, audit)).await
    }
    async fn check_verification_erased(
        &self,
        id: [u8; 16],
        subject: GuardSubject,
        check: VerificationCheck,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        self.timed("check_verification_erased", self.inner.check_verification_erased(id, subject, check, audit)).await
    }
    async fn start_step_up(
        &self,
        subject: Vec<u8>,
        now: u64,
        still_pending: StillPending,
        new: Verification,
        audit: AuditEntry,
    ) -> Result<StepUpStart, StoreError> {
        self.timed("start_step_up", self.inner.start_step_up(subject, now, still_pending, new, audit)).await
    }
    async fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError> {
        self.timed("sweep_verifications", self.inner.sweep_verifications(now, keep_secs)).await
    }
}

#[async_trait]
impl<B: AuditLog> AuditLog for Measured<B> {
    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.timed("record_audit", self.inner.record_audit(entry)).await
    }
    async fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        self.timed("audit_since", self.inner.audit_since(since, limit)).await
    }
    async fn delete_audit_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError> {
        self.timed("delete_audit_before", self.inner.delete_audit_before(cutoff, max)).await
    }
}

#[async_trait]
impl<B: TokenStateRepo> TokenStateRepo for Measured<B> {
    async fn revoke_token(&self, token_id: [u8; 16], until: u64, audit: AuditEntry) -> Result<u64, StoreError> {
        self.timed("revoke_token", self.inner.revoke_token(token_id, until, audit)).await
    }
    async fn revoked_tokens(&self, now: u64) -> Result<Vec<([u8; 16], u64)>, StoreError> {
        self.timed("revoked_tokens", self.inner.revoked_tokens(now)).await
    }
    async fn sweep_revoked_tokens(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        self.timed("sweep_revoked_tokens", self.inner.sweep_revoked_tokens(now, max)).await
    }
    async fn put_replay_ids(&self, ids: Vec<(u64, [u8; 16])>) -> Result<(), StoreError> {
        self.timed("put_replay_ids", self.inner.put_replay_ids(ids)).await
    }
    async fn replay_ids_after(&self, after: u64) -> Result<Vec<(u64, [u8; 16])>, StoreError> {
        self.timed("replay_ids_after", self.inner.replay_ids_after(after)).await
    }
    async fn sweep_replay_ids(&self, now: u64, max: usize) -> Result<usize, StoreError> {
        self.timed("sweep_replay_ids", self.inner.sweep_replay_ids(now, max)).await
    }
}

impl<B: ChangeFeed> ChangeFeed for Measured<B> {
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        self.inner.changes()
    }
}
