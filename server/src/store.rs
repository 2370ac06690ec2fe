//! The embedded store: one redb file holding API key verifiers and metadata, the
//! server's identity, handshake and token keys (sealed at rest), and an audit log.
//! Every write is one durable transaction; an existing store is never recreated.
//! The handshake key lifecycle (rotation, destruction of retired keys) is in
//! `store/server_keys.rs`.

use std::path::{Path, PathBuf};

use onetrip_protocol::api_key::KeyId;
use onetrip_protocol::Secret;
use rand_core::OsRng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::seal::{SealError, SealParams, Sealer};

mod audit_retention;
pub mod backup;
#[cfg(test)]
mod conformance;
mod genesis;
pub mod ports;
pub mod postgres;
mod redb_backend;
mod replay_ids;
mod revocations;
mod second_factor;
mod token_keys;
pub use ports::{Backend, KeyFilter, KeyRotation, StateStore};
pub use redb_backend::RedbBackend;
pub use second_factor::{CheckView, StepUpStart, TotpEnrolment, TotpRecord};
mod server_keys;
pub use server_keys::{
    plan as plan_server_keys, KeyChanges, KeyPolicy, KeyValidity, DEFAULT_SERVER_KEY_LIFETIME_SECS,
    DEFAULT_SERVER_KEY_OVERLAP_SECS,
};

const API_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("api_keys");
const SERVER_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("server_keys");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const OTP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("otp_verifications");

/// An audit event written in the same write transaction as the change it records:
/// the change and its record reach the disk together or not at all (and with one
/// fsync instead of two).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// Event name, e.g. `otp.check`.
    pub event: &'static str,
    /// Event details (never a secret, code or token).
    pub detail: serde_json::Value,
}

/// Appends the audit entry an update produced, if any, and hands back its result.
fn append_audit_of<R>(
    w: &redb::WriteTransaction,
    path: &Path,
    result: Option<(R, Option<AuditEntry>)>,
) -> Result<Option<R>, StoreError> {
    let Some((r, entry)) = result else { return Ok(None) };
    if let Some(entry) = entry {
        append_audit(w, path, &entry)?;
    }
    Ok(Some(r))
}

fn append_audit(w: &redb::WriteTransaction, path: &Path, entry: &AuditEntry) -> Result<(), StoreError> {
    let mut table = w.open_table(AUDIT).map_err(|e| damaged(path, e))?;
    let next = table.last().map_err(|e| damaged(path, e))?.map_or(0, |(k, _)| k.value() + 1);
    let v = serde_json::to_vec(&serde_json::json!({ "at": entry.at, "event": entry.event, "detail": entry.detail }))
        .map_err(|_| StoreError::Record("audit".into()))?;
    table.insert(next, &v[..]).map_err(|e| damaged(path, e))?;
    Ok(())
}

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "onetrip.redb";
/// Written next to the store at creation; its presence without the store means
/// the store was lost, which must not silently become a fresh identity.
pub const MARKER_FILE: &str = "onetrip.identity";
const FORMAT: &[u8] = b"onetrip-store-v1";

/// Why the store could not be used. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (normally a running `onetrip serve`) holds the store.
    #[error(
        "the store {0} is in use by another process (is `onetrip serve` running? its admin socket was not reachable)"
    )]
    Locked(PathBuf),
    /// The store file is gone but the data directory says one existed.
    #[error("the store file {0} is missing but this data directory was initialised (identity marker present). Restore the file from backup; onetrip will not create a new identity over a lost one (clients pinned the old fingerprint). Remove {MARKER_FILE} only if you really want a fresh server")]
    Missing(PathBuf),
    /// redb reported corruption or an I/O error.
    #[error("cannot read the store {path}: {detail}. The file may be damaged: restore it from backup (onetrip never rewrites a damaged store)")]
    Damaged {
        /// Store file.
        path: PathBuf,
        /// redb's description.
        detail: String,
    },
    /// A setting the server state is built from is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Not an onetrip store, or a newer format.
    #[error("{0} is not an onetrip store of a supported format")]
    Format(PathBuf),
    /// Sealing problem (passphrase).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Filesystem problem around the store.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store cannot be reached now (a database down, a task that did not
    /// finish); nothing was written, and the operation may be retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded.
    #[error("store record {0} is damaged: restore it from backup (onetrip never rewrites a damaged store)")]
    Record(String),
}

/// One API key as stored: the verifier, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    /// Human name.
    pub name: String,
    /// Client static public key (hex).
    pub verifier: String,
    /// Scopes this key may request.
    pub scopes: Vec<String>,
    /// Audiences this key may request tokens for (empty: only the default).
    pub audiences: Vec<String>,
    /// Handshakes need a second factor.
    pub require_otp: bool,
    /// Where second-factor codes go.
    pub otp_to: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Last successful handshake (coarse).
    pub last_used_at: Option<u64>,
    /// Revocation time.
    pub revoked_at: Option<u64>,
    /// End of validity (set on the old key by `keys rotate`).
    pub expires_at: Option<u64>,
    /// Key id that replaced this one.
    pub replaced_by: Option<String>,
}

#[cfg(test)]
impl ApiKeyRecord {
    /// An active record with a fixed verifier and no scopes, for unit tests.
    pub(crate) fn for_tests(last_used_at: Option<u64>) -> Self {
        Self {
            name: "k".into(),
            verifier: hex::encode([9u8; 32]),
            scopes: vec![],
            audiences: vec![],
            require_otp: false,
            otp_to: None,
            created_at: 0,
            last_used_at,
            revoked_at: None,
            expires_at: None,
            replaced_by: None,
        }
    }
}

impl ApiKeyRecord {
    /// Usable for a handshake at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now <= e)
    }
}

/// One server handshake key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerKeyRecord {
    /// Sealed X25519 private key (hex).
    pub private: String,
    /// Validity start.
    pub not_before: u64,
    /// Validity end.
    pub not_after: u64,
}

/// One token master key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeyRecord {
    /// 4-byte key id (hex).
    pub id: String,
    /// Sealed master key (hex).
    pub master: String,
    /// Creation time.
    pub created_at: u64,
    /// After a rotation: when this (older) key stops opening tokens and is deleted.
    #[serde(default)]
    pub retire_at: Option<u64>,
}

/// Everything the server needs from the store at start.
pub struct ServerSecrets {
    /// Ed25519 identity seed.
    pub identity_seed: Secret<32>,
    /// Dummy static-static secret.
    pub dummy_secret: Secret<32>,
    /// Handshake keys: id, private, not_before, not_after.
    pub server_keys: Vec<([u8; 8], Secret<32>, u64, u64)>,
    /// Token master keys, newest first.
    pub token_keys: Vec<([u8; 4], Secret<32>)>,
}

/// The open store.
pub struct Store {
    db: Db,
    sealer: Sealer,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("sealer", &self.sealer).finish()
    }
}

impl Store {
    /// Opens the store in `data_dir`, creating the directory, identity, handshake and
    /// token keys on first use. Returns the store and whether it was just created.
    pub fn open_or_init(data_dir: &Path, passphrase: Option<&str>, now: u64) -> Result<(Self, bool), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            what: "cannot create data directory",
            path: data_dir.to_owned(),
            source,
        })?;
        restrict_permissions(data_dir, 0o700).map_err(|source| StoreError::Io {
            what: "cannot make the data directory private (mode 0700; onetrip must own it, on a file system with \
                   Unix permissions)",
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(STORE_FILE);
        let marker = data_dir.join(MARKER_FILE);
        if path.exists() {
            let store = Self::open_existing(&path, passphrase)?;
            return Ok((store, false));
        }
        if marker.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = builder().create(&path).map_err(|e| map_db_error(&path, e))?;
        restrict_permissions(&path, 0o600).map_err(|source| StoreError::Io {
            what: "cannot make the store file private (mode 0600)",
            path: path.clone(),
            source,
        })?;
        let (sealer, params) = Sealer::create(passphrase)?;
        let store = Self { db: Db(Some(db), path.clone()), sealer, path: path.clone() };
        store.initialise(&params, now)?;
        let fingerprint =
            onetrip_protocol::IdentityKey::from_seed(&store.server_secrets()?.identity_seed).fingerprint();
        std::fs::write(&marker, format!("{fingerprint}\n")).map_err(|source| StoreError::Io {
            what: "cannot write identity marker",
            path: marker.clone(),
            source,
        })?;
        Ok((store, true))
    }

    /// Opens an existing store. Everything the server reads at start (format, seal
    /// parameters, sealed keys, API key records) is first checked through a read-only
    /// handle, so a damaged or foreign file is refused without a single byte written
    /// to it. Only a store that was not shut down cleanly skips that look: redb must
    /// repair it (verifying its checksums) in the writable open that follows, as after
    /// any crash. The storage engine panics on some malformed pages; those panics
    /// become [`StoreError::Damaged`] too.
    fn open_existing(path: &Path, passphrase: Option<&str>) -> Result<Self, StoreError> {
        let checked = contain_panics(path, || match builder().open_read_only(path) {
            Ok(db) => check_contents(&db, path, passphrase).map(Some),
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(e) => Err(map_db_error(path, e)),
        })?;
        contain_panics(path, || {
            let db = builder().open(path).map_err(|e| map_db_error(path, e))?;
            let sealer = match checked {
                Some(sealer) => sealer,
                None => check_contents(&db, path, passphrase)?,
            };
            Ok(Self { db: Db(Some(db), path.to_owned()), sealer, path: path.to_owned() })
        })
    }

    fn initialise(&self, params: &SealParams, now: u64) -> Result<(), StoreError> {
        let genesis = genesis::genesis(&self.sealer, params, now)?;
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        {
            let mut meta = w.open_table(META).map_err(|e| damaged(&self.path, e))?;
            for (name, value) in &genesis.meta {
                meta.insert(*name, &value[..]).map_err(|e| damaged(&self.path, e))?;
            }
            w.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
            w.open_table(AUDIT).map_err(|e| damaged(&self.path, e))?;
            let mut sk = w.open_table(SERVER_KEYS).map_err(|e| damaged(&self.path, e))?;
            let (server_key_id, server_key) = &genesis.server_key;
            let record = serde_json::to_vec(server_key).map_err(|_| StoreError::Record("server key".into()))?;
            sk.insert(&server_key_id[..], &record[..]).map_err(|e| damaged(&self.path, e))?;
        }
        w.commit().map_err(|e| damaged(&self.path, e))?;
        self.audit(now, "store.created", serde_json::json!({ "sealed": self.sealer.is_sealed() }))?;
        Ok(())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when private keys are sealed with a passphrase.
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_sealed()
    }

    /// Loads and unseals the server's private material.
    pub fn server_secrets(&self) -> Result<ServerSecrets, StoreError> {
        read_server_secrets(&*self.db, &self.path, &self.sealer)
    }

    /// Inserts or replaces API key records in one durable transaction.
    pub fn put_api_keys(&self, records: &[(KeyId, ApiKeyRecord)]) -> Result<(), StoreError> {
        self.put_api_keys_audited(records, None)
    }

    /// [`Store::put_api_keys`] with the audit event of the change in the same transaction.
    pub fn put_api_keys_audited(
        &self,
        records: &[(KeyId, ApiKeyRecord)],
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        {
            let mut table = w.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
            for (id, record) in records {
                put_api_key(&mut table, &self.path, id, record)?;
            }
        }
        if let Some(entry) = audit {
            append_audit(&w, &self.path, entry)?;
        }
        w.commit().map_err(|e| damaged(&self.path, e))
    }

    /// Read-modify-write of API key records in one write transaction, so concurrent
    /// updates (an admin revoke, a last-used flush) cannot overwrite each other.
    /// `update` returns false to leave a record as it was. Returns the records written.
    pub fn update_api_keys(
        &self,
        ids: &[KeyId],
        update: impl FnMut(&KeyId, &mut ApiKeyRecord) -> bool,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        self.update_api_keys_audited(ids, update, None)
    }

    /// [`Store::update_api_keys`], appending `audit` when a record was written.
    pub fn update_api_keys_audited(
        &self,
        ids: &[KeyId],
        mut update: impl FnMut(&KeyId, &mut ApiKeyRecord) -> bool,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let mut written = Vec::new();
        {
            let mut table = w.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
            for id in ids {
                let Some(mut record) = get_api_key_in(&table, &self.path, id)? else { continue };
                if update(id, &mut record) {
                    put_api_key(&mut table, &self.path, id, &record)?;
                    written.push((*id, record));
                }
            }
        }
        if let (Some(entry), false) = (audit, written.is_empty()) {
            append_audit(&w, &self.path, entry)?;
        }
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(written)
    }

    /// Rotates a key in one transaction (new record, old record's end and successor,
    /// audit event). `Ok(None)`, nothing written, when the old key does not exist.
    pub fn rotate_api_key(&self, rotation: &KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let old = {
            let mut table = w.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
            match get_api_key_in(&table, &self.path, &rotation.old)? {
                None => None,
                Some(mut old) => {
                    let end = rotation.old_expires_at;
                    old.expires_at = Some(old.expires_at.map_or(end, |x| x.min(end)));
                    old.replaced_by = Some(rotation.new.0.to_string());
                    put_api_key(&mut table, &self.path, &rotation.old, &old)?;
                    put_api_key(&mut table, &self.path, &rotation.new.0, &rotation.new.1)?;
                    Some(old)
                }
            }
        };
        if old.is_none() {
            return Ok(None);
        }
        append_audit(&w, &self.path, &rotation.audit)?;
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(old)
    }

    /// Up to `limit` records matching `filter` with ids after `after`, in id order
    /// (one range read: a page costs the same at the start and the end of a million keys).
    pub fn api_keys_page(
        &self,
        after: Option<&KeyId>,
        limit: usize,
        filter: &KeyFilter,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| damaged(&self.path, e))?;
        let table = read.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
        let rows = match after {
            Some(after) => {
                use std::ops::Bound;
                let start: &[u8] = &after.as_bytes()[..];
                table.range::<&[u8]>((Bound::Excluded(start), Bound::Unbounded))
            }
            None => table.iter(),
        }
        .map_err(|e| damaged(&self.path, e))?;
        let mut out = Vec::new();
        for row in rows {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| damaged(&self.path, e))?;
            let id: [u8; 16] = k.value().try_into().map_err(|_| StoreError::Record("api key id".into()))?;
            let id = KeyId::from_bytes(id);
            let record: ApiKeyRecord =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::Record(id.to_string()))?;
            if filter.matches(&record) {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    /// Stores a new OTP verification (durably, before its code is sent), with its
    /// audit event when given, in one transaction.
    pub fn put_verification(&self, v: &crate::otp::Verification, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        {
            let mut table = w.open_table(OTP).map_err(|e| damaged(&self.path, e))?;
            let bytes = serde_json::to_vec(v).map_err(|_| StoreError::Record("otp verification".into()))?;
            table.insert(&v.id[..], &bytes[..]).map_err(|e| damaged(&self.path, e))?;
        }
        if let Some(entry) = audit {
            append_audit(&w, &self.path, &entry)?;
        }
        w.commit().map_err(|e| damaged(&self.path, e))
    }

    /// Runs `f` on a verification inside one durable write transaction and stores the
    /// result: concurrent checks are serialized by redb's single writer, and an
    /// attempt is on disk before its answer leaves the server. `Ok(None)` when there
    /// is no such verification.
    pub fn update_verification<R>(
        &self,
        id: &[u8; 16],
        f: impl FnOnce(&mut crate::otp::Verification) -> R,
    ) -> Result<Option<R>, StoreError> {
        self.update_verification_audited(id, f, |_, _| None)
    }

    /// [`Store::update_verification`], appending the audit event that `audit` makes
    /// of the result in the same transaction.
    pub fn update_verification_audited<R>(
        &self,
        id: &[u8; 16],
        f: impl FnOnce(&mut crate::otp::Verification) -> R,
        audit: impl FnOnce(&crate::otp::Verification, &R) -> Option<AuditEntry>,
    ) -> Result<Option<R>, StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let result = {
            let mut table = w.open_table(OTP).map_err(|e| damaged(&self.path, e))?;
            let current = table.get(&id[..]).map_err(|e| damaged(&self.path, e))?.map(|v| v.value().to_vec());
            match current {
                None => None,
                Some(bytes) => {
                    let mut v: crate::otp::Verification =
                        serde_json::from_slice(&bytes).map_err(|_| StoreError::Record("otp verification".into()))?;
                    let r = f(&mut v);
                    let bytes = serde_json::to_vec(&v).map_err(|_| StoreError::Record("otp verification".into()))?;
                    table.insert(&id[..], &bytes[..]).map_err(|e| damaged(&self.path, e))?;
                    let entry = audit(&v, &r);
                    Some((r, entry))
                }
            }
        };
        let result = append_audit_of(&w, &self.path, result)?;
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(result)
    }

    /// One verification, as stored.
    pub fn get_verification(&self, id: &[u8; 16]) -> Result<Option<crate::otp::Verification>, StoreError> {
        let read = self.db.begin_read().map_err(|e| damaged(&self.path, e))?;
        let table = match read.open_table(OTP) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(damaged(&self.path, e)),
        };
        match table.get(&id[..]).map_err(|e| damaged(&self.path, e))? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(v.value()).map(Some).map_err(|_| StoreError::Record("otp verification".into()))
            }
        }
    }

    /// Deletes verifications that expired more than `keep_secs` ago; returns how many.
    pub fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let removed = {
            let mut table = w.open_table(OTP).map_err(|e| damaged(&self.path, e))?;
            let mut old = Vec::new();
            for row in table.iter().map_err(|e| damaged(&self.path, e))? {
                let (k, v) = row.map_err(|e| damaged(&self.path, e))?;
                let v: crate::otp::Verification =
                    serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("otp verification".into()))?;
                if v.expires_at.saturating_add(keep_secs) < now {
                    old.push(k.value().to_vec());
                }
            }
            for k in &old {
                table.remove(&k[..]).map_err(|e| damaged(&self.path, e))?;
            }
            old.len()
        };
        w.commit().map_err(|e| damaged(&self.path, e))?;
        Ok(removed)
    }

    /// The key that OTP code hashes are made with, created on first use.
    pub fn otp_key(&self) -> Result<Secret<32>, StoreError> {
        {
            let read = self.db.begin_read().map_err(|e| damaged(&self.path, e))?;
            let meta = read.open_table(META).map_err(|e| damaged(&self.path, e))?;
            if let Some(blob) = meta.get("otp_key").map_err(|e| damaged(&self.path, e))? {
                return Ok(self.sealer.open_secret("otp_key", blob.value())?);
            }
        }
        let key = Secret::<32>::random(&mut OsRng);
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        let stored = {
            let mut meta = w.open_table(META).map_err(|e| damaged(&self.path, e))?;
            // Another writer may have created it meanwhile: keep theirs.
            let existing = meta.get("otp_key").map_err(|e| damaged(&self.path, e))?.map(|b| b.value().to_vec());
            match existing {
                Some(blob) => Some(blob),
                None => {
                    meta.insert("otp_key", &self.sealer.seal("otp_key", key.expose())[..])
                        .map_err(|e| damaged(&self.path, e))?;
                    None
                }
            }
        };
        w.commit().map_err(|e| damaged(&self.path, e))?;
        match stored {
            Some(blob) => Ok(self.sealer.open_secret("otp_key", &blob)?),
            None => Ok(key),
        }
    }

    /// Calls `f` on every API key record without collecting them (start-up with many keys).
    pub fn for_each_api_key(&self, f: impl FnMut(KeyId, ApiKeyRecord)) -> Result<usize, StoreError> {
        each_api_key(&*self.db, &self.path, f)
    }

    /// One API key record.
    pub fn get_api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| damaged(&self.path, e))?;
        let table = read.open_table(API_KEYS).map_err(|e| damaged(&self.path, e))?;
        let Some(v) = table.get(&id.as_bytes()[..]).map_err(|e| damaged(&self.path, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value()).map(Some).map_err(|_| StoreError::Record(id.to_string()))
    }

    /// Every API key record, ordered by key id.
    pub fn list_api_keys(&self) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        read_api_keys(&*self.db, &self.path)
    }

    /// Appends an audit event.
    pub fn audit(&self, now: u64, event: &'static str, detail: serde_json::Value) -> Result<(), StoreError> {
        self.record_audit(&AuditEntry { at: now, event, detail })
    }

    /// Appends an audit event that goes with no other change, in its own transaction.
    pub fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| damaged(&self.path, e))?;
        append_audit(&w, &self.path, entry)?;
        w.commit().map_err(|e| damaged(&self.path, e))
    }

    /// Audit events at or after `since` (unix seconds), newest `limit`, oldest first.
    pub fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let read = self.db.begin_read().map_err(|e| damaged(&self.path, e))?;
        let table = read.open_table(AUDIT).map_err(|e| damaged(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| damaged(&self.path, e))?.rev() {
            let (_, v) = row.map_err(|e| damaged(&self.path, e))?;
            let event: serde_json::Value =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("audit".into()))?;
            if event["at"].as_u64().unwrap_or(0) < since || out.len() >= limit {
                break;
            }
            out.push(event);
        }
        out.reverse();
        Ok(out)
    }
}

/// Page cache of the store. redb's default (1 GiB) would keep most of a million-key
/// store resident after the start-up read; the hot path never reads the store, so a
/// small cache costs nothing there.
pub const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(STORE_CACHE_BYTES);
    b
}

/// Reads and checks what a server needs at start: the format marker, the seal
/// parameters (and the passphrase against them), every sealed server secret and
/// every API key record. Returns the sealer.
fn check_contents(db: &impl ReadableDatabase, path: &Path, passphrase: Option<&str>) -> Result<Sealer, StoreError> {
    let read = db.begin_read().map_err(|e| damaged(path, e))?;
    let meta = read.open_table(META).map_err(|_| StoreError::Format(path.to_owned()))?;
    let format =
        meta.get("format").map_err(|e| damaged(path, e))?.ok_or_else(|| StoreError::Format(path.to_owned()))?;
    if format.value() != FORMAT {
        return Err(StoreError::Format(path.to_owned()));
    }
    let params = meta.get("seal").map_err(|e| damaged(path, e))?.ok_or_else(|| StoreError::Record("seal".into()))?;
    let params: SealParams = serde_json::from_slice(params.value()).map_err(|_| StoreError::Record("seal".into()))?;
    let sealer = Sealer::open(&params, passphrase)?;
    drop((format, meta, read));
    read_server_secrets(db, path, &sealer)?;
    each_api_key(db, path, |_, _| {})?;
    Ok(sealer)
}

/// The open database. Closing writes redb's allocator state, and redb panics there
/// when a damaged file slipped past the checks at open (its page checksums are only
/// verified by repair): the panic is contained and reported instead of aborting.
struct Db(Option<Database>, PathBuf);

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        // Some from construction until drop.
        self.0.as_ref().unwrap_or_else(|| unreachable!("the database is only taken in drop"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            // The panic hook cannot be swapped while this thread unwinds (a failing
            // test): close plainly then, rather than abort the process.
            if std::thread::panicking() {
                drop(db);
                return;
            }
            let closed = contain_panics(&self.1, move || {
                drop(db);
                Ok(())
            });
            if let Err(e) = closed {
                tracing::error!(error = %e, "the store could not be closed cleanly");
                eprintln!("warning: the store could not be closed cleanly: {e}");
            }
        }
    }
}

/// Runs `f`, turning a panic inside the storage engine into [`StoreError::Damaged`]
/// (with the default panic message silenced meanwhile; the lock keeps concurrent
/// opens from losing the process's own hook).
fn contain_panics<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "malformed data".to_owned());
        Err(damaged(path, format!("the storage engine stopped on malformed data ({what})")))
    })
}

fn read_server_secrets(db: &impl ReadableDatabase, path: &Path, sealer: &Sealer) -> Result<ServerSecrets, StoreError> {
    let read = db.begin_read().map_err(|e| damaged(path, e))?;
    let meta = read.open_table(META).map_err(|e| damaged(path, e))?;
    let get = |k: &str| -> Result<Vec<u8>, StoreError> {
        Ok(meta.get(k).map_err(|e| damaged(path, e))?.ok_or_else(|| StoreError::Record(k.into()))?.value().to_vec())
    };
    let identity_seed = sealer.open_secret("identity", &get("identity")?)?;
    let dummy_secret = sealer.open_secret("dummy_secret", &get("dummy_secret")?)?;
    let token_records: Vec<TokenKeyRecord> =
        serde_json::from_slice(&get("token_keys")?).map_err(|_| StoreError::Record("token_keys".into()))?;
    let mut token_keys = Vec::new();
    for t in token_records {
        let id: [u8; 4] = hex_array(&t.id).ok_or_else(|| StoreError::Record("token key id".into()))?;
        let blob = hex::decode(&t.master).map_err(|_| StoreError::Record("token key".into()))?;
        token_keys.push((id, open_bound(sealer, &token_key_slot(&id), "token_key", &blob)?));
    }
    let mut server_keys = Vec::new();
    let table = read.open_table(SERVER_KEYS).map_err(|e| damaged(path, e))?;
    for row in table.iter().map_err(|e| damaged(path, e))? {
        let (k, v) = row.map_err(|e| damaged(path, e))?;
        let id: [u8; 8] = k.value().try_into().map_err(|_| StoreError::Record("server key id".into()))?;
        let r: ServerKeyRecord =
            serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("server key".into()))?;
        let blob = hex::decode(&r.private).map_err(|_| StoreError::Record("server key".into()))?;
        server_keys.push((
            id,
            open_bound(sealer, &server_key_slot(&id), "server_key", &blob)?,
            r.not_before,
            r.not_after,
        ));
    }
    Ok(ServerSecrets { identity_seed, dummy_secret, server_keys, token_keys })
}

fn put_api_key(
    table: &mut redb::Table<&[u8], &[u8]>,
    path: &Path,
    id: &KeyId,
    record: &ApiKeyRecord,
) -> Result<(), StoreError> {
    let v = serde_json::to_vec(record).map_err(|_| StoreError::Record(id.to_string()))?;
    table.insert(&id.as_bytes()[..], &v[..]).map_err(|e| damaged(path, e))?;
    Ok(())
}

fn get_api_key_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    path: &Path,
    id: &KeyId,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    let Some(v) = table.get(&id.as_bytes()[..]).map_err(|e| damaged(path, e))? else { return Ok(None) };
    serde_json::from_slice(v.value()).map(Some).map_err(|_| StoreError::Record(id.to_string()))
}

fn read_api_keys(db: &impl ReadableDatabase, path: &Path) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
    let mut out = Vec::new();
    each_api_key(db, path, |id, record| out.push((id, record)))?;
    Ok(out)
}

/// Calls `f` on every API key record, decoding one at a time (a million-key store is
/// never held twice in memory). Returns how many there were.
fn each_api_key(
    db: &impl ReadableDatabase,
    path: &Path,
    mut f: impl FnMut(KeyId, ApiKeyRecord),
) -> Result<usize, StoreError> {
    let read = db.begin_read().map_err(|e| damaged(path, e))?;
    let table = read.open_table(API_KEYS).map_err(|e| damaged(path, e))?;
    let mut n = 0;
    for row in table.iter().map_err(|e| damaged(path, e))? {
        let (k, v) = row.map_err(|e| damaged(path, e))?;
        let id: [u8; 16] = k.value().try_into().map_err(|_| StoreError::Record("api key id".into()))?;
        let id = KeyId::from_bytes(id);
        let record = serde_json::from_slice(v.value()).map_err(|_| StoreError::Record(id.to_string()))?;
        f(id, record);
        n += 1;
    }
    Ok(n)
}

/// Seal slot of a handshake private key, bound to its key id: a sealed key moved to
/// another id (by someone who can write the store) no longer opens.
pub(crate) fn server_key_slot(id: &[u8; 8]) -> String {
    format!("server_key:{}", hex::encode(id))
}

/// Seal slot of a token master key, bound to its key id.
pub(crate) fn token_key_slot(id: &[u8; 4]) -> String {
    format!("token_key:{}", hex::encode(id))
}

/// Opens a key sealed under its id-bound `slot`, or under the unbound `legacy` slot
/// that stores sealed before slots named the id used (those keys are re-sealed bound
/// when they are rotated; handshake keys rotate on their own).
fn open_bound(sealer: &Sealer, slot: &str, legacy: &str, blob: &[u8]) -> Result<Secret<32>, StoreError> {
    match sealer.open_secret(slot, blob) {
        Err(SealError::Damaged(_)) => Ok(sealer.open_secret(legacy, blob)?),
        other => Ok(other?),
    }
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    hex::decode(s).ok()?.try_into().ok()
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged { path: path.to_owned(), detail: e.to_string() }
}

fn map_db_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_owned()),
        other => damaged(path, other),
    }
}

/// Sets `mode` and checks that it holds: some file systems accept a chmod and ignore it.
fn restrict_permissions(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let actual = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if actual != mode {
            return Err(std::io::Error::other(format!("the mode is {actual:o} after setting {mode:o}")));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
