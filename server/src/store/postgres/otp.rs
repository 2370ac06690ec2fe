//! OTP verifications in PostgreSQL: the OtpRepo port. A transition locks its
//! verification row for the whole transaction, so concurrent checks from any
//! replica are evaluated one after the other against the stored attempt count.
//! Locks are always taken in one order (verification, TOTP enrolment, guard; a
//! step-up start takes only its guard and reads the pending verification unlocked),
//! so no two transitions wait on each other in a cycle.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::keys::{lock_guard, write_guard};
use super::{append_audit, begin, commit, db_time, decode, encode, execute, query, PgBackend};
use crate::otp::Verification;
use crate::store::ports::{
    Erased, GuardSubject, OtpRepo, StillPending, TransitionAudit, VerificationChange, VerificationCheck,
};
use crate::store::{totp_slot, TotpRecord};
use crate::store::{AuditEntry, CheckView, StepUpStart, StoreError};

async fn put(tx: &impl GenericClient, v: &Verification) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO otp_verifications (id, expires_at, record) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, record = excluded.record",
        &[&&v.id[..], &db_time(v.expires_at), &encode(v, "otp verification")?],
    )
    .await?;
    Ok(())
}

/// The verification `id`, locked for the rest of `tx` when `lock`.
async fn read(tx: &impl GenericClient, id: &[u8], lock: bool) -> Result<Option<Verification>, StoreError> {
    let sql = if lock {
        "SELECT record FROM otp_verifications WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT record FROM otp_verifications WHERE id = $1"
    };
    query(tx, sql, &[&id]).await?.first().map(|r| decode(r.get(0), "otp verification")).transpose()
}

#[async_trait]
impl OtpRepo for PgBackend {
    async fn put_verification(&self, v: Verification, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        put(&tx, &v).await?;
        if let Some(entry) = &audit {
            append_audit(&tx, entry).await?;
        }
        commit(tx).await
    }

    async fn get_verification(&self, id: [u8; 16]) -> Result<Option<Verification>, StoreError> {
        let client = self.client().await?;
        read(&client, &id, false).await
    }

    async fn update_verification_erased(
        &self,
        id: [u8; 16],
        change: VerificationChange,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let Some(mut v) = read(&tx, &id, true).await? else { return Ok(None) };
        let r = change(&mut v);
        put(&tx, &v).await?;
        if let Some(entry) = audit(&v, &r) {
            append_audit(&tx, &entry).await?;
        }
        commit(tx).await?;
        Ok(Some(r))
    }

    async fn check_verification_erased(
        &self,
        id: [u8; 16],
        subject: GuardSubject,
        check: VerificationCheck,
        audit: TransitionAudit,
    ) -> Result<Option<Erased>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let Some(mut v) = read(&tx, &id, true).await? else { return Ok(None) };
        let (owner, account) = (v.owner.to_vec(), v.to.as_bytes().to_vec());
        let enrolled = query(
            &tx,
            "SELECT record FROM totp_enrollments WHERE owner = $1 AND account = $2 FOR UPDATE",
            &[&owner, &account],
        )
        .await?;
        let mut record: Option<TotpRecord> =
            enrolled.first().map(|r| decode(r.get(0), "totp enrolment")).transpose()?;
        let secret = match &record {
            Some(r) => {
                let blob = hex::decode(&r.secret).map_err(|_| StoreError::Record("totp enrolment".into()))?;
                Some(self.sealer.open_blob(&totp_slot(&v.owner, &v.to), &blob)?)
            }
            None => None,
        };
        let subject = subject(&v);
        let mut guard = match &subject {
            Some(s) => Some(lock_guard(&tx, s).await?),
            None => None,
        };
        let totp_view = match (&secret, record.as_mut()) {
            (Some(s), Some(rec)) => Some((&s[..], &mut rec.last_step)),
            _ => None,
        };
        let r = check(CheckView { verification: &mut v, totp: totp_view, guard: guard.as_mut() });
        put(&tx, &v).await?;
        if let Some(rec) = &record {
            execute(
                &tx,
                "UPDATE totp_enrollments SET record = $3 WHERE owner = $1 AND account = $2",
                &[&owner, &account, &encode(rec, "totp enrolment")?],
            )
            .await?;
        }
        if let (Some(s), Some(g)) = (&subject, &guard) {
            write_guard(&tx, s, g).await?;
        }
        if let Some(entry) = audit(&v, &r) {
            append_audit(&tx, &entry).await?;
        }
        commit(tx).await?;
        Ok(Some(r))
    }

    async fn start_step_up(
        &self,
        subject: Vec<u8>,
        now: u64,
        still_pending: StillPending,
        new: Verification,
        audit: AuditEntry,
    ) -> Result<StepUpStart, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        // The guard's row lock makes this the only start of this key's step-up.
        let mut guard = lock_guard(&tx, &subject).await?;
        let pending_id = guard.pending_step_up.as_deref().and_then(|h| hex::decode(h).ok());
        let pending = match pending_id {
            Some(id) => read(&tx, &id, false).await?,
            None => None,
        };
        let resumed = match pending {
            Some(mut v) => still_pending(&mut v).then_some(v),
            None => None,
        };
        let outcome = if let Some(retry_after) = guard.locked(now) {
            StepUpStart::Locked(retry_after)
        } else if let Some(v) = resumed {
            StepUpStart::Pending(v)
        } else {
            put(&tx, &new).await?;
            guard.pending_step_up = Some(hex::encode(new.id));
            StepUpStart::Created(new)
        };
        // Written back in every case: `lock_guard` may have made an empty row.
        write_guard(&tx, &subject, &guard).await?;
        if matches!(outcome, StepUpStart::Created(_)) {
            append_audit(&tx, &audit).await?;
        }
        commit(tx).await?;
        Ok(outcome)
    }

    async fn sweep_verifications(&self, now: u64, keep_secs: u64) -> Result<usize, StoreError> {
        // `expires_at + keep < now`, without overflow: nothing can be old enough yet.
        let Some(bound) = now.checked_sub(keep_secs) else { return Ok(0) };
        let client = self.client().await?;
        let n = execute(&client, "DELETE FROM otp_verifications WHERE expires_at < $1", &[&db_time(bound)]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
