//! Second-factor state in the store: TOTP enrolments, lockout guards, and the two
//! transactions that must see them together with a verification: a check (attempt,
//! TOTP replay step, lockout count and audit event written at once) and the start of
//! a step-up (at most one pending per key).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::audit::{append_audit, append_audit_of};
use super::store::{engine_error, OTP};
use super::Store;
use crate::otp::lockout::Guard;
use crate::otp::Verification;
use crate::store::{totp_slot, AuditEntry, CheckView, StepUpStart, StoreError, TotpEnrolment, TotpRecord};

const TOTP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("totp_enrollments");
const GUARDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("otp_guards");

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Record(what.into()))
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| StoreError::Record(what.into()))
}

impl Store {
    /// Enrols `account` of `owner` for TOTP. An existing enrolment is replaced only
    /// when `replace` is set; the audit event `audit` makes of the outcome is written
    /// in the same transaction.
    pub fn put_totp(
        &self,
        owner: &[u8; 16],
        account: &str,
        secret: &[u8],
        now: u64,
        replace: bool,
        audit: impl FnOnce(TotpEnrolment) -> AuditEntry,
    ) -> Result<TotpEnrolment, StoreError> {
        let key = totp_key(owner, account);
        let record = TotpRecord {
            secret: hex::encode(self.sealer.seal(&totp_slot(owner, account), secret)),
            created_at: now,
            last_step: None,
        };
        let bytes = encode(&record, "totp enrolment")?;
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let outcome = {
            let mut table = w.open_table(TOTP).map_err(|e| engine_error(&self.path, e))?;
            let exists = table.get(&key[..]).map_err(|e| engine_error(&self.path, e))?.is_some();
            match (exists, replace) {
                (true, false) => TotpEnrolment::AlreadyEnrolled,
                (exists, _) => {
                    table.insert(&key[..], &bytes[..]).map_err(|e| engine_error(&self.path, e))?;
                    if exists {
                        TotpEnrolment::Replaced
                    } else {
                        TotpEnrolment::Enrolled
                    }
                }
            }
        };
        append_audit(&w, &self.path, &audit(outcome))?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(outcome)
    }

    /// True when `account` of `owner` has a TOTP enrolment.
    pub fn has_totp(&self, owner: &[u8; 16], account: &str) -> Result<bool, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(TOTP) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        Ok(table.get(&totp_key(owner, account)[..]).map_err(|e| engine_error(&self.path, e))?.is_some())
    }

    /// The lockout guard stored under `subject` (a fresh one when none is).
    pub fn get_guard(&self, subject: &[u8]) -> Result<Guard, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = match read.open_table(GUARDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Guard::default()),
            Err(e) => return Err(engine_error(&self.path, e)),
        };
        match table.get(subject).map_err(|e| engine_error(&self.path, e))? {
            Some(v) => decode(v.value(), "otp guard"),
            None => Ok(Guard::default()),
        }
    }

    /// Changes the guard under `subject` with its audit event in one transaction.
    pub fn update_guard<R>(
        &self,
        subject: &[u8],
        f: impl FnOnce(&mut Guard) -> (R, Option<AuditEntry>),
    ) -> Result<R, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let (r, entry) = {
            let mut table = w.open_table(GUARDS).map_err(|e| engine_error(&self.path, e))?;
            let mut guard = match table.get(subject).map_err(|e| engine_error(&self.path, e))? {
                Some(v) => decode(v.value(), "otp guard")?,
                None => Guard::default(),
            };
            let out = f(&mut guard);
            write_guard(&mut table, subject, &guard, &self.path)?;
            out
        };
        if let Some(entry) = entry {
            append_audit(&w, &self.path, &entry)?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(r)
    }

    /// Starts a step-up for the key whose guard is `subject`, in one transaction:
    /// refused while the key is locked; its pending verification, if it has one that
    /// `still_pending` accepts, is handed back instead of a new one; otherwise `new`
    /// is stored as the pending one, with its audit event.
    pub fn start_step_up(
        &self,
        subject: &[u8],
        now: u64,
        still_pending: impl FnOnce(&mut Verification) -> bool,
        new: Verification,
        audit: AuditEntry,
    ) -> Result<StepUpStart, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let outcome = {
            let mut guards = w.open_table(GUARDS).map_err(|e| engine_error(&self.path, e))?;
            let mut otp = w.open_table(OTP).map_err(|e| engine_error(&self.path, e))?;
            let mut guard: Guard = match guards.get(subject).map_err(|e| engine_error(&self.path, e))? {
                Some(v) => decode(v.value(), "otp guard")?,
                None => Guard::default(),
            };
            let pending_id = guard.pending_step_up.as_deref().and_then(|h| hex::decode(h).ok());
            let pending = match pending_id {
                Some(id) => otp.get(&id[..]).map_err(|e| engine_error(&self.path, e))?.map(|v| v.value().to_vec()),
                None => None,
            };
            let pending: Option<Verification> = pending.map(|b| decode(&b, "otp verification")).transpose()?;
            let resumed = match pending {
                Some(mut v) => still_pending(&mut v).then_some(v),
                None => None,
            };
            if let Some(retry_after) = guard.locked(now) {
                StepUpStart::Locked(retry_after)
            } else if let Some(v) = resumed {
                StepUpStart::Pending(v)
            } else {
                otp.insert(&new.id[..], &encode(&new, "otp verification")?[..])
                    .map_err(|e| engine_error(&self.path, e))?;
                guard.pending_step_up = Some(hex::encode(new.id));
                write_guard(&mut guards, subject, &guard, &self.path)?;
                StepUpStart::Created(new)
            }
        };
        if matches!(outcome, StepUpStart::Created(_)) {
            append_audit(&w, &self.path, &audit)?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(outcome)
    }

    /// Checks a verification in one write transaction: `f` sees it with, when its
    /// owner enrolled `to`, the opened TOTP secret and last accepted step, and the
    /// lockout guard that `subject` names. All of them and the audit event are written
    /// back together, so the attempt counter, the TOTP replay rule and the lockout
    /// count hold under concurrency and across restarts. `Ok(None)`: no such id.
    pub fn check_verification<R>(
        &self,
        id: &[u8; 16],
        subject: impl FnOnce(&Verification) -> Option<Vec<u8>>,
        f: impl FnOnce(CheckView<'_>) -> R,
        audit: impl FnOnce(&Verification, &R) -> Option<AuditEntry>,
    ) -> Result<Option<R>, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let result = {
            let mut otp = w.open_table(OTP).map_err(|e| engine_error(&self.path, e))?;
            let mut totp = w.open_table(TOTP).map_err(|e| engine_error(&self.path, e))?;
            let mut guards = w.open_table(GUARDS).map_err(|e| engine_error(&self.path, e))?;
            let current = otp.get(&id[..]).map_err(|e| engine_error(&self.path, e))?.map(|v| v.value().to_vec());
            match current {
                None => None,
                Some(bytes) => {
                    let mut v: Verification = decode(&bytes, "otp verification")?;
                    let key = totp_key(&v.owner, &v.to);
                    let enrolled =
                        totp.get(&key[..]).map_err(|e| engine_error(&self.path, e))?.map(|r| r.value().to_vec());
                    let mut record: Option<TotpRecord> = enrolled.map(|b| decode(&b, "totp enrolment")).transpose()?;
                    let secret = match &record {
                        Some(r) => {
                            let blob =
                                hex::decode(&r.secret).map_err(|_| StoreError::Record("totp enrolment".into()))?;
                            Some(self.sealer.open_blob(&totp_slot(&v.owner, &v.to), &blob)?)
                        }
                        None => None,
                    };
                    let subject = subject(&v);
                    let mut guard: Option<Guard> = match &subject {
                        Some(s) => Some(match guards.get(&s[..]).map_err(|e| engine_error(&self.path, e))? {
                            Some(g) => decode(g.value(), "otp guard")?,
                            None => Guard::default(),
                        }),
                        None => None,
                    };
                    let totp_view = match (&secret, record.as_mut()) {
                        (Some(s), Some(rec)) => Some((&s[..], &mut rec.last_step)),
                        _ => None,
                    };
                    let r = f(CheckView { verification: &mut v, totp: totp_view, guard: guard.as_mut() });
                    otp.insert(&id[..], &encode(&v, "otp verification")?[..])
                        .map_err(|e| engine_error(&self.path, e))?;
                    if let Some(rec) = record {
                        totp.insert(&key[..], &encode(&rec, "totp enrolment")?[..])
                            .map_err(|e| engine_error(&self.path, e))?;
                    }
                    if let (Some(s), Some(g)) = (subject, guard) {
                        write_guard(&mut guards, &s, &g, &self.path)?;
                    }
                    let entry = audit(&v, &r);
                    Some((r, entry))
                }
            }
        };
        let result = append_audit_of(&w, &self.path, result)?;
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(result)
    }
}

fn write_guard(
    table: &mut redb::Table<&[u8], &[u8]>,
    subject: &[u8],
    guard: &Guard,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    if guard.is_clear() {
        table.remove(subject).map_err(|e| engine_error(path, e))?;
    } else {
        table.insert(subject, &encode(guard, "otp guard")?[..]).map_err(|e| engine_error(path, e))?;
    }
    Ok(())
}

fn totp_key(owner: &[u8; 16], account: &str) -> Vec<u8> {
    let mut k = owner.to_vec();
    k.extend_from_slice(account.as_bytes());
    k
}
