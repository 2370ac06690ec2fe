//! OTP verifications in the embedded store, one row each by verification id, and
//! the key their code hashes are made with. A check runs inside one write
//! transaction (redb's single writer serializes concurrent checks), so an attempt is
//! on disk before its answer leaves the server.

use onetrip_protocol::Secret;
use rand_core::OsRng;
use redb::{ReadableDatabase, ReadableTable};

use super::audit::{append_audit, append_audit_of};
use super::store::{engine_error, META, OTP};
use super::Store;
use crate::store::{AuditEntry, StoreError};

impl Store {
    /// Stores a new OTP verification (durably, before its code is sent), with its
    /// audit event when given, in one transaction.
    pub fn put_verification(&self, v: &crate::otp::Verification, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut table = w.open_table(OTP).map_err(|e| engine_error(&self.path, e))?;
            let bytes = serde_json::to_vec(v).map_err(|_| StoreError::Record("otp verification".into()))?;
            table.insert(&v.id[..], &bytes[..]).map_err(|e| engine_error(&self.path, e))?;
        }
        if let Some(entry) = audit {
            append_audit(&w, &self.path, &entry)?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))
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
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let result = {
            let mut table = w.open_table(OTP).map_err(|e| engine_error(&self.path, e))?;
            let current = table.get(&id[..]).map_err(|e| engine_error(&self.path, e))?.map(|v| v.value().to_vec());
            match current {
                None => None,
                Some(bytes) => {
                    let mut v: crate::otp::Verification =
                        serde_json::from_slice(&bytes).map_err(|_| StoreError::Record("otp verification".into()))?;
                    let r = f(&mut v);
                    let bytes = serde_json::to_vec(&v).map_err(|_| StoreError::Record("otp verification".into()))?;
                    table.insert(&id[..], &bytes[..]).map_err(|e| engine_error(&self.path, e))?;
                    let entry = audit(&v, &r);
                    Some((r, entry))
                }
            }
        };
        let result = append_audit_of(&w, &self.path, result)?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(result)
    }

    /// One verification, as stored.
    pub fn get_verification(&self, id: &[u8; 16]) -> Result<Option<crate::otp::Verification>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(OTP) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        match table.get(&id[..]).map_err(|e| engine_error(&self.path, e))? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(v.value()).map(Some).map_err(|_| StoreError::Record("otp verification".into()))
            }
        }
    }

    /// Deletes verifications that expired more than `keep_secs` ago; returns how many.
    pub fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let removed = {
            let mut table = w.open_table(OTP).map_err(|e| engine_error(&self.path, e))?;
            let mut old = Vec::new();
            for row in table.iter().map_err(|e| engine_error(&self.path, e))? {
                let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
                let v: crate::otp::Verification =
                    serde_json::from_slice(v.value()).map_err(|_| StoreError::Record("otp verification".into()))?;
                if v.expires_at.saturating_add(keep_secs) < now {
                    old.push(k.value().to_vec());
                }
            }
            for k in &old {
                table.remove(&k[..]).map_err(|e| engine_error(&self.path, e))?;
            }
            old.len()
        };
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(removed)
    }

    /// The key that OTP code hashes are made with, created on first use.
    pub fn otp_key(&self) -> Result<Secret<32>, StoreError> {
        {
            let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
            let meta = read.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            if let Some(blob) = meta.get("otp_key").map_err(|e| engine_error(&self.path, e))? {
                return Ok(self.sealer.open_secret("otp_key", blob.value())?);
            }
        }
        let key = Secret::<32>::random(&mut OsRng);
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let stored = {
            let mut meta = w.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            // Another writer may have created it meanwhile: keep theirs.
            let existing = meta.get("otp_key").map_err(|e| engine_error(&self.path, e))?.map(|b| b.value().to_vec());
            match existing {
                Some(blob) => Some(blob),
                None => {
                    meta.insert("otp_key", &self.sealer.seal("otp_key", key.expose())[..])
                        .map_err(|e| engine_error(&self.path, e))?;
                    None
                }
            }
        };
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        match stored {
            Some(blob) => Ok(self.sealer.open_secret("otp_key", &blob)?),
            None => Ok(key),
        }
    }
}
