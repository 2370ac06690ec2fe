//! The state ports: everything request handlers, services and admin commands may ask
//! of durable state, as async traits split the way the data is used. A backend
//! (the embedded redb store, PostgreSQL) implements all of them; the rest of the
//! server holds a [`Backend`] and never names an engine.
//!
//! Each method that must be atomic is one method and one transaction in every
//! backend: a read-modify-write (an OTP check, a resend, a key rotation) takes a
//! *transition*, a plain function the backend runs on the current row inside its
//! transaction, so the rule it applies is written once and the backend only supplies
//! the isolation. Audit events ride in the same transaction as the change they record.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::Secret;

use super::{ApiKeyRecord, AuditEntry, KeyChanges, KeyPolicy, KeyValidity, ServerSecrets, StoreError};
use crate::otp::lockout::Guard;
use crate::otp::Verification;

/// What an enrolment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpEnrolment {
    /// The account had no enrolment.
    Enrolled,
    /// An enrolment existed and `replace` was asked: the old secret is gone.
    Replaced,
    /// An enrolment exists and `replace` was not asked: nothing changed.
    AlreadyEnrolled,
}

/// The check transaction's view of one verification.
pub struct CheckView<'a> {
    /// The verification (its attempt counter and status are written back).
    pub verification: &'a mut Verification,
    /// The opened TOTP secret and last accepted step, when its owner enrolled `to`.
    pub totp: Option<(&'a [u8], &'a mut Option<u64>)>,
    /// The lockout guard named by the caller, if any (written back).
    pub guard: Option<&'a mut Guard>,
}

/// How a step-up start ended.
#[derive(Debug)]
pub enum StepUpStart {
    /// A new verification was stored and is now the key's pending one.
    Created(Verification),
    /// The key already had a pending verification: it is returned, nothing stored.
    Pending(Verification),
    /// The key is locked for this many more seconds.
    Locked(u64),
}

/// The state every replica shares, as one handle.
pub type Backend = Arc<dyn StateStore>;

/// One store operation's counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStats {
    /// The port method's name.
    pub op: &'static str,
    /// Calls.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time taken by all calls, in seconds.
    pub seconds: f64,
}

/// A result produced inside a backend's transaction, handed back untyped across the
/// trait-object boundary and typed again by the generic helpers below.
pub type Erased = Box<dyn Any + Send>;

/// A change to one API key record; `false` leaves it as it was.
pub type KeyUpdate = Box<dyn for<'a, 'b> FnMut(&'a KeyId, &'b mut ApiKeyRecord) -> bool + Send>;
/// The audit event of a TOTP enrolment's outcome.
pub type TotpAudit = Box<dyn FnOnce(TotpEnrolment) -> AuditEntry + Send>;
/// A change to a lockout guard, returning its audit event.
pub type GuardChange = Box<dyn for<'a> FnOnce(&'a mut Guard) -> Option<AuditEntry> + Send>;
/// A transition of one verification.
pub type VerificationChange = Box<dyn for<'a> FnOnce(&'a mut Verification) -> Erased + Send>;
/// The audit event of a transition, from the verification as written and the result.
pub type TransitionAudit = Box<dyn for<'a, 'b> FnOnce(&'a Verification, &'b Erased) -> Option<AuditEntry> + Send>;
/// The lockout guard a check counts against, named from the verification.
pub type GuardSubject = Box<dyn for<'a> FnOnce(&'a Verification) -> Option<Vec<u8>> + Send>;
/// A check of one verification, seeing its TOTP enrolment and guard.
pub type VerificationCheck = Box<dyn for<'a> FnOnce(CheckView<'a>) -> Erased + Send>;
/// Whether a key's pending step-up can be resumed (brought up to date first).
pub type StillPending = Box<dyn for<'a> FnOnce(&'a mut Verification) -> bool + Send>;

/// Which keys a listing returns (all of the set conditions hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Name equal to this.
    pub name: Option<String>,
    /// Lists this audience.
    pub audience: Option<String>,
    /// Lists this scope.
    pub scope: Option<String>,
    /// Revoked (true) or not revoked (false).
    pub revoked: Option<bool>,
    /// Created at or after this unix second.
    pub created_after: Option<u64>,
}

impl KeyFilter {
    /// True when `record` passes every condition that is set.
    pub fn matches(&self, record: &ApiKeyRecord) -> bool {
        self.name.as_ref().is_none_or(|n| &record.name == n)
            && self.audience.as_ref().is_none_or(|a| record.audiences.contains(a))
            && self.scope.as_ref().is_none_or(|s| record.scopes.contains(s))
            && self.revoked.is_none_or(|r| record.revoked_at.is_some() == r)
            && self.created_after.is_none_or(|t| record.created_at >= t)
    }
}

/// A key rotation, written as one transaction: the new key is stored, the old one
/// gets its end of validity and successor, and the audit event is appended.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    /// The key being replaced.
    pub old: KeyId,
    /// The new key and its record.
    pub new: (KeyId, ApiKeyRecord),
    /// When the old key stops working (an earlier end it already had is kept).
    pub old_expires_at: u64,
    /// The `key.rotated` event.
    pub audit: AuditEntry,
}

/// API key records and the second-factor state of each key.
#[async_trait]
pub trait KeyRepo: Send + Sync {
    /// Inserts or replaces key records, with `audit` in the same transaction.
    async fn put_api_keys(
        &self,
        records: Vec<(KeyId, ApiKeyRecord)>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError>;

    /// Read-modify-write of key records in one transaction; `audit` is appended when
    /// at least one record was written. Returns the records written.
    async fn update_api_keys(
        &self,
        ids: Vec<KeyId>,
        update: KeyUpdate,
        audit: Option<AuditEntry>,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError>;

    /// Rotates a key in one transaction; returns the old record as written, or
    /// `None` (nothing written) when the old key does not exist.
    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// One key record.
    async fn get_api_key(&self, id: KeyId) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Up to `limit` records matching `filter`, with ids after `after`, ordered by id:
    /// the way to read every key without holding them all (start-up, listings).
    async fn api_keys_page(
        &self,
        after: Option<KeyId>,
        limit: usize,
        filter: &KeyFilter,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError>;

    /// Enrols `account` of `owner` for TOTP (sealed like the server keys); an
    /// enrolment is replaced only with `replace`. The audit event `audit` makes of the
    /// outcome is written in the same transaction.
    async fn put_totp(&self, enrolment: TotpPut, audit: TotpAudit) -> Result<TotpEnrolment, StoreError>;

    /// True when `account` of `owner` has a TOTP enrolment.
    async fn has_totp(&self, owner: [u8; 16], account: String) -> Result<bool, StoreError>;

    /// The lockout guard stored under `subject` (a fresh one when none is).
    async fn get_guard(&self, subject: Vec<u8>) -> Result<Guard, StoreError>;

    /// Changes the guard under `subject`, with the audit event `change` returns, in
    /// one transaction; returns the guard as written.
    async fn update_guard(&self, subject: Vec<u8>, change: GuardChange) -> Result<Guard, StoreError>;
}

/// A TOTP enrolment to store.
pub struct TotpPut {
    /// Key that owns the account.
    pub owner: [u8; 16],
    /// Account name (`@key` for the key's own step-up).
    pub account: String,
    /// The authenticator secret (sealed by the backend before it is written).
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    /// Enrolment time.
    pub now: u64,
    /// Replace an existing enrolment.
    pub replace: bool,
}

impl std::fmt::Debug for TotpPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpPut").field("account", &self.account).field("secret", &"<redacted>").finish()
    }
}

/// The server's private material: identity, handshake keys, token master keys and
/// the OTP hash key, sealed at rest.
#[async_trait]
pub trait SecretRepo: Send + Sync {
    /// True when private keys are sealed with a passphrase.
    fn is_sealed(&self) -> bool;

    /// Where the state lives, for operators (a path, or a URL without its password).
    fn location(&self) -> String;

    /// Answers when the store can be reached now ([`StoreError::Unavailable`] when
    /// not). The embedded store also reopens itself here after a failed write.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Store operations since start, by operation (a port method's name): calls,
    /// failures and time taken, for `onetrip_store_operations_total` and friends.
    fn store_stats(&self) -> Vec<OpStats> {
        Vec::new()
    }

    /// Writes a consistent backup of everything the backend holds to `dest`, sealed as
    /// it is stored. Only the embedded engine does this itself; a database server is
    /// backed up with its own tools (PostgreSQL: pg_dump, point-in-time recovery).
    async fn backup_to(
        &self,
        dest: std::path::PathBuf,
        force: bool,
    ) -> Result<super::backup::BackupSummary, super::backup::BackupError> {
        let _ = (dest, force);
        Err(super::backup::BackupError::Unsupported(self.location()))
    }

    /// Loads and unseals the server's private material.
    async fn server_secrets(&self) -> Result<ServerSecrets, StoreError>;

    /// The key OTP code hashes are made with, created on first use (the first writer wins).
    async fn otp_key(&self) -> Result<Secret<32>, StoreError>;

    /// Ids and validity of the handshake keys.
    async fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError>;

    /// Destroys handshake keys past their end and makes a successor in time, in one
    /// transaction (see `store::plan_server_keys`).
    async fn maintain_server_keys(&self, now: u64, policy: KeyPolicy) -> Result<KeyChanges, StoreError>;

    /// A new handshake key valid for `lifetime`; older keys end by `old_not_after`.
    async fn rotate_server_key(
        &self,
        now: u64,
        old_not_after: u64,
        lifetime: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 8], StoreError>;

    /// A new token master key; older ones keep opening tokens for `overlap_secs`.
    async fn rotate_token_key(
        &self,
        now: u64,
        overlap_secs: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 4], StoreError>;

    /// Deletes token keys whose overlap ended; returns how many.
    async fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError>;
}

/// OTP verifications, with the atomic transitions on them.
#[async_trait]
pub trait OtpRepo: Send + Sync {
    /// Stores a new verification (durably, before its code is sent) with its audit event.
    async fn put_verification(&self, v: Verification, audit: Option<AuditEntry>) -> Result<(), StoreError>;

    /// One verification, as stored.
    async fn get_verification(&self, id: [u8; 16]) -> Result<Option<Verification>, StoreError>;

    /// Runs `change` on a verification in one transaction and writes it back with
    /// the audit event `audit` makes of it. `Ok(None)`: no such verification. Use
    /// [`update_verification`] for a typed result.
    async fn update_verification_erased(
        &self,
        id: [u8; 16],
        change: VerificationChange,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError>;

    /// Checks a verification in one transaction, together with its owner's TOTP
    /// enrolment (opened) and the lockout guard `subject` names; all written back with
    /// the audit event. Use [`check_verification`] for a typed result.
    async fn check_verification_erased(
        &self,
        id: [u8; 16],
        subject: GuardSubject,
        check: VerificationCheck,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError>;

    /// Starts a step-up for the key whose guard is `subject`, in one transaction
    /// (refused while locked; a pending one that `still_pending` accepts is returned
    /// instead of storing `new`).
    async fn start_step_up(
        &self,
        subject: Vec<u8>,
        now: u64,
        still_pending: StillPending,
        new: Verification,
        audit: AuditEntry,
    ) -> Result<StepUpStart, StoreError>;

    /// Deletes verifications that expired more than `keep_secs` ago; returns how many.
    async fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError>;
}

/// The audit log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an event that goes with no other change.
    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Events at or after `since`, the newest `limit`, oldest first.
    async fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError>;

    /// Deletes up to `max` events older than `cutoff`; returns how many.
    async fn delete_audit_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError>;
}

/// Revoked tokens and the replay ids a restart must still refuse.
#[async_trait]
pub trait TokenStateRepo: Send + Sync {
    /// Revokes a token until `until` (a later existing end is kept), with its audit
    /// event; returns the end stored.
    async fn revoke_token(&self, token_id: [u8; 16], until: u64, audit: AuditEntry) -> Result<u64, StoreError>;

    /// Tokens revoked and not yet past their end.
    async fn revoked_tokens(&self, now: u64) -> Result<Vec<([u8; 16], u64)>, StoreError>;

    /// Deletes up to `max` revocations past their end; returns how many.
    async fn sweep_revoked_tokens(&self, now: u64, max: usize) -> Result<usize, StoreError>;

    /// Stores replay ids (expiry second, id) of requests stamped ahead of the clock.
    async fn put_replay_ids(&self, ids: Vec<(u64, [u8; 16])>) -> Result<(), StoreError>;

    /// Replay ids that expire after `after`.
    async fn replay_ids_after(&self, after: u64) -> Result<Vec<(u64, [u8; 16])>, StoreError>;

    /// Deletes up to `max` replay ids expired by `now`; returns how many.
    async fn sweep_replay_ids(&self, now: u64, max: usize) -> Result<usize, StoreError>;
}

/// One change a replica must apply to what it holds in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An API key record was written (created, revoked, rotated, updated): reload it.
    Key(KeyId),
    /// The handshake keys changed: reload them.
    ServerKeys,
    /// The token master keys changed: reload them.
    TokenKeys,
    /// A token was revoked.
    TokenRevoked([u8; 16]),
    /// Changes may have been missed: reload everything.
    Resync,
}

/// Changes other processes make to a shared store, for the replicas that keep its
/// key directory in memory. A store only one process opens has none.
pub trait ChangeFeed: Send + Sync {
    /// The changes made by every replica and CLI from now on, or `None` when no other
    /// process can change this store.
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }
}

/// Everything a backend provides.
pub trait StateStore: KeyRepo + SecretRepo + OtpRepo + AuditLog + TokenStateRepo + ChangeFeed {}

impl<T: KeyRepo + SecretRepo + OtpRepo + AuditLog + TokenStateRepo + ChangeFeed> StateStore for T {}

fn typed<R: 'static>(erased: Erased) -> Result<R, StoreError> {
    erased.downcast::<R>().map(|r| *r).map_err(|_| StoreError::Record("transition result of an unexpected type".into()))
}

/// [`OtpRepo::update_verification_erased`] with a typed result.
pub async fn update_verification<R: Send + 'static>(
    repo: &(impl OtpRepo + ?Sized),
    id: [u8; 16],
    change: impl FnOnce(&mut Verification) -> R + Send + 'static,
    audit: impl FnOnce(&Verification, &R) -> Option<AuditEntry> + Send + 'static,
) -> Result<Option<R>, StoreError> {
    let out = repo
        .update_verification_erased(
            id,
            Box::new(move |v| Box::new(change(v)) as Erased),
            Box::new(move |v, r| r.downcast_ref::<R>().and_then(|r| audit(v, r))),
        )
        .await?;
    out.map(typed::<R>).transpose()
}

/// [`OtpRepo::check_verification_erased`] with a typed result.
pub async fn check_verification<R: Send + 'static>(
    repo: &(impl OtpRepo + ?Sized),
    id: [u8; 16],
    subject: impl FnOnce(&Verification) -> Option<Vec<u8>> + Send + 'static,
    check: impl for<'a> FnOnce(CheckView<'a>) -> R + Send + 'static,
    audit: impl FnOnce(&Verification, &R) -> Option<AuditEntry> + Send + 'static,
) -> Result<Option<R>, StoreError> {
    let out = repo
        .check_verification_erased(
            id,
            Box::new(subject),
            Box::new(move |view| Box::new(check(view)) as Erased),
            Box::new(move |v, r| r.downcast_ref::<R>().and_then(|r| audit(v, r))),
        )
        .await?;
    out.map(typed::<R>).transpose()
}

/// Calls `f` on every key record, a page at a time; returns how many there were.
pub async fn for_each_api_key(
    repo: &(impl KeyRepo + ?Sized),
    page_size: usize,
    mut f: impl FnMut(KeyId, ApiKeyRecord),
) -> Result<usize, StoreError> {
    let mut after = None;
    let mut n = 0;
    loop {
        let page = repo.api_keys_page(after, page_size, &KeyFilter::default()).await?;
        let full = page.len() == page_size;
        for (id, record) in page {
            after = Some(id);
            f(id, record);
            n += 1;
        }
        if !full {
            return Ok(n);
        }
    }
}
