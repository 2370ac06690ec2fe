//! API key records and the per-key second-factor rows (TOTP enrolments, lockout
//! guards) in PostgreSQL: the KeyRepo port. Key writes lock the rows they read (in
//! id order, so two multi-key updates cannot deadlock) and announce themselves on
//! the change feed in the same transaction.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use onetrip_protocol::api_key::KeyId;

use super::changes::notify_keys;
use super::{append_audit, begin, commit, db_count, db_time, decode, encode, execute, fixed, query, PgBackend};
use crate::otp::lockout::Guard;
use crate::store::ports::{GuardChange, KeyFilter, KeyRepo, KeyRotation, KeyUpdate, TotpAudit, TotpPut};
use crate::store::{totp_slot, TotpRecord};
use crate::store::{ApiKeyRecord, AuditEntry, StoreError, TotpEnrolment};

/// Rows per INSERT when many keys are written at once (7 parameters each, far
/// below the protocol's 65,535).
const KEYS_PER_INSERT: usize = 500;

/// Inserts or replaces `records` (ids unique), many rows per statement, in id order:
/// writers that touch the same keys take their row locks in one order, so two
/// overlapping imports wait for each other instead of deadlocking.
async fn put_keys(tx: &impl GenericClient, records: &[(KeyId, ApiKeyRecord)]) -> Result<(), StoreError> {
    let mut sorted: Vec<&(KeyId, ApiKeyRecord)> = records.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for chunk in sorted.chunks(KEYS_PER_INSERT) {
        let mut sql =
            String::from("INSERT INTO api_keys (id, name, scopes, audiences, revoked, created_at, record) VALUES ");
        let mut values: Vec<KeyColumns> = Vec::with_capacity(chunk.len());
        for (i, (id, record)) in chunk.iter().enumerate() {
            let p = i * 7;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${},${},${},${},${},${},${})", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6, p + 7));
            values.push(KeyColumns::of(id, record)?);
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, scopes = excluded.scopes, \
             audiences = excluded.audiences, revoked = excluded.revoked, created_at = excluded.created_at, \
             record = excluded.record",
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().flat_map(KeyColumns::params).collect();
        execute(tx, &sql, &params).await?;
    }
    Ok(())
}

/// The columns of one key row, derived from its record.
struct KeyColumns {
    id: Vec<u8>,
    name: Vec<u8>,
    scopes: Vec<Vec<u8>>,
    audiences: Vec<Vec<u8>>,
    revoked: bool,
    created_at: i64,
    record: Vec<u8>,
}

impl KeyColumns {
    fn of(id: &KeyId, r: &ApiKeyRecord) -> Result<Self, StoreError> {
        Ok(Self {
            id: id.as_bytes().to_vec(),
            name: r.name.as_bytes().to_vec(),
            scopes: r.scopes.iter().map(|s| s.as_bytes().to_vec()).collect(),
            audiences: r.audiences.iter().map(|s| s.as_bytes().to_vec()).collect(),
            revoked: r.revoked_at.is_some(),
            created_at: db_time(r.created_at),
            record: serde_json::to_vec(r).map_err(|_| StoreError::Record(id.to_string()))?,
        })
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [&self.id, &self.name, &self.scopes, &self.audiences, &self.revoked, &self.created_at, &self.record]
    }
}

fn key_row(row: &tokio_postgres::Row) -> Result<(KeyId, ApiKeyRecord), StoreError> {
    let id = KeyId::from_bytes(fixed::<16>(row.get(0), "api key id")?);
    let record = serde_json::from_slice(row.get(1)).map_err(|_| StoreError::Record(id.to_string()))?;
    Ok((id, record))
}

/// Later records of one id replace earlier ones, as successive inserts would.
fn last_of_each(records: Vec<(KeyId, ApiKeyRecord)>) -> Vec<(KeyId, ApiKeyRecord)> {
    let mut seen = HashSet::new();
    let mut out: Vec<_> = records.into_iter().rev().filter(|(id, _)| seen.insert(*id)).collect();
    out.reverse();
    out
}

/// The lockout guard under `subject`, locked for the rest of `tx`. A row that does
/// not exist yet is inserted (empty) first so that there is a row to lock; callers
/// write it back with [`write_guard`], which deletes it again when it is clear.
pub(super) async fn lock_guard(tx: &impl GenericClient, subject: &[u8]) -> Result<Guard, StoreError> {
    // A concurrent writer may delete a clear row between the insert and the lock:
    // then the insert is tried again (bounded; each round means another writer won).
    for _ in 0..16 {
        execute(
            tx,
            "INSERT INTO otp_guards (subject, record) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING",
            &[&subject, &&b"{}"[..]],
        )
        .await?;
        let rows = query(tx, "SELECT record FROM otp_guards WHERE subject = $1 FOR UPDATE", &[&subject]).await?;
        if let Some(row) = rows.first() {
            return decode(row.get(0), "otp guard");
        }
    }
    Err(StoreError::Unavailable("the lockout guard kept changing under concurrent writers".into()))
}

/// Writes a guard locked by [`lock_guard`]; a clear guard is deleted (as in redb).
pub(super) async fn write_guard(tx: &impl GenericClient, subject: &[u8], guard: &Guard) -> Result<(), StoreError> {
    if guard.is_clear() {
        execute(tx, "DELETE FROM otp_guards WHERE subject = $1", &[&subject]).await?;
    } else {
        execute(tx, "UPDATE otp_guards SET record = $2 WHERE subject = $1", &[&subject, &encode(guard, "otp guard")?])
            .await?;
    }
    Ok(())
}

#[async_trait]
impl KeyRepo for PgBackend {
    async fn put_api_keys(
        &self,
        records: Vec<(KeyId, ApiKeyRecord)>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let records = last_of_each(records);
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        put_keys(&tx, &records).await?;
        if let Some(entry) = &audit {
            append_audit(&tx, entry).await?;
        }
        notify_keys(&tx, records.iter().map(|(id, _)| *id)).await?;
        commit(tx).await
    }

    async fn update_api_keys(
        &self,
        ids: Vec<KeyId>,
        mut update: KeyUpdate,
        audit: Option<AuditEntry>,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let wanted: Vec<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        let rows =
            query(&tx, "SELECT id, record FROM api_keys WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&wanted]).await?;
        let mut current: HashMap<KeyId, ApiKeyRecord> = rows.iter().map(key_row).collect::<Result<_, _>>()?;
        // In the caller's order, each id seeing the record as updated so far.
        let mut written = Vec::new();
        for id in &ids {
            let Some(record) = current.get_mut(id) else { continue };
            let mut next = record.clone();
            if update(id, &mut next) {
                *record = next.clone();
                written.push((*id, next));
            }
        }
        if written.is_empty() {
            return Ok(written);
        }
        put_keys(&tx, &last_of_each(written.clone())).await?;
        if let Some(entry) = &audit {
            append_audit(&tx, entry).await?;
        }
        notify_keys(&tx, written.iter().map(|(id, _)| *id)).await?;
        commit(tx).await?;
        Ok(written)
    }

    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let old_id = rotation.old.as_bytes().to_vec();
        let rows = query(&tx, "SELECT id, record FROM api_keys WHERE id = $1 FOR UPDATE", &[&old_id]).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let (_, mut old) = key_row(row)?;
        let end = rotation.old_expires_at;
        old.expires_at = Some(old.expires_at.map_or(end, |x| x.min(end)));
        old.replaced_by = Some(rotation.new.0.to_string());
        put_keys(&tx, &last_of_each(vec![(rotation.old, old.clone()), rotation.new.clone()])).await?;
        append_audit(&tx, &rotation.audit).await?;
        notify_keys(&tx, [rotation.old, rotation.new.0]).await?;
        commit(tx).await?;
        Ok(Some(old))
    }

    async fn get_api_key(&self, id: KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT id, record FROM api_keys WHERE id = $1", &[&&id.as_bytes()[..]]).await?;
        rows.first().map(key_row).transpose().map(|r| r.map(|(_, record)| record))
    }

    async fn api_keys_page(
        &self,
        after: Option<KeyId>,
        limit: usize,
        filter: &KeyFilter,
    ) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|id| id.as_bytes().to_vec());
        let name = filter.name.as_ref().map(|n| n.as_bytes().to_vec());
        let audience = filter.audience.as_ref().map(|a| a.as_bytes().to_vec());
        let scope = filter.scope.as_ref().map(|s| s.as_bytes().to_vec());
        let created_after = filter.created_after.map(db_time);
        // bytea compares as unsigned bytes: the order of redb's keys.
        let rows = query(
            &client,
            "SELECT id, record FROM api_keys
             WHERE ($1::bytea IS NULL OR id > $1)
               AND ($2::bytea IS NULL OR name = $2)
               AND ($3::bytea IS NULL OR $3 = ANY(audiences))
               AND ($4::bytea IS NULL OR $4 = ANY(scopes))
               AND ($5::boolean IS NULL OR revoked = $5)
               AND ($6::bigint IS NULL OR created_at >= $6)
             ORDER BY id LIMIT $7",
            &[&after, &name, &audience, &scope, &filter.revoked, &created_after, &db_count(limit)],
        )
        .await?;
        rows.iter().map(key_row).collect()
    }

    async fn put_totp(&self, enrolment: TotpPut, audit: TotpAudit) -> Result<TotpEnrolment, StoreError> {
        let TotpPut { owner, account, secret, now, replace } = enrolment;
        let record = TotpRecord {
            secret: hex::encode(self.sealer.seal(&totp_slot(&owner, &account), &secret)),
            created_at: now,
            last_step: None,
        };
        let bytes = encode(&record, "totp enrolment")?;
        let (owner, account) = (owner.to_vec(), account.as_bytes().to_vec());
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let inserted = execute(
            &tx,
            "INSERT INTO totp_enrollments (owner, account, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&owner, &account, &bytes],
        )
        .await?;
        let outcome = match (inserted, replace) {
            (1, _) => TotpEnrolment::Enrolled,
            (_, false) => TotpEnrolment::AlreadyEnrolled,
            (_, true) => {
                execute(
                    &tx,
                    "UPDATE totp_enrollments SET record = $3 WHERE owner = $1 AND account = $2",
                    &[&owner, &account, &bytes],
                )
                .await?;
                TotpEnrolment::Replaced
            }
        };
        append_audit(&tx, &audit(outcome)).await?;
        commit(tx).await?;
        Ok(outcome)
    }

    async fn has_totp(&self, owner: [u8; 16], account: String) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT 1 FROM totp_enrollments WHERE owner = $1 AND account = $2",
            &[&&owner[..], &account.as_bytes()],
        )
        .await?;
        Ok(!rows.is_empty())
    }

    async fn get_guard(&self, subject: Vec<u8>) -> Result<Guard, StoreError> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT record FROM otp_guards WHERE subject = $1", &[&subject]).await?;
        rows.first().map_or_else(|| Ok(Guard::default()), |r| decode(r.get(0), "otp guard"))
    }

    async fn update_guard(&self, subject: Vec<u8>, change: GuardChange) -> Result<Guard, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let mut guard = lock_guard(&tx, &subject).await?;
        let entry = change(&mut guard);
        write_guard(&tx, &subject, &guard).await?;
        if let Some(entry) = &entry {
            append_audit(&tx, entry).await?;
        }
        commit(tx).await?;
        Ok(guard)
    }
}
