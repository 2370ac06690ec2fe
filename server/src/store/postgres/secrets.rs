//! The server's private material in PostgreSQL: creation on first use (under an
//! advisory lock, so replicas starting together make one identity), the passphrase
//! check at open, and the SecretRepo port: handshake keys (one row each, changed
//! under a table lock so concurrent rotations serialize) and token keys (one JSON
//! list in `meta`, changed under its row lock), sealed exactly as in redb.

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use onetrip_protocol::Secret;
use zeroize::Zeroizing;

use super::changes::notify;
use super::connection::{db_error, pool_error};
use super::{append_audit, begin, commit, decode, encode, execute, fixed, query, PgBackend};
use crate::seal::{SealParams, Sealer};
use crate::store::genesis::{
    decode_token_records, drop_retired_token_records, encode_token_records, genesis, new_server_key,
    rotate_token_records, token_rotation_event,
};
use crate::store::ports::Change;
use crate::store::ports::SecretRepo;
use crate::store::{
    hex_array, open_bound, plan_server_keys, server_key_slot, token_key_slot, AuditEntry, KeyChanges, KeyPolicy,
    KeyValidity, ServerKeyRecord, ServerSecrets, StoreError, FORMAT,
};

/// The advisory lock creation runs under (not the migrations' one).
const CREATION_LOCK: i64 = 0x6f6e_6574_7269_7002;

/// Opens the sealed state of the database, or creates it. Returns the sealer and
/// whether the state was created by this call.
pub(super) async fn open_or_create(
    pool: &Pool,
    shown: &str,
    passphrase: Option<&str>,
    now: u64,
) -> Result<(Sealer, bool), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    if let Some(params) = seal_params(&client, shown).await? {
        return Ok((open_sealer(params, passphrase).await?, false));
    }
    // argon2 takes a while and much memory: on the blocking pool, before any lock.
    let pass = passphrase.map(|p| Zeroizing::new(p.to_owned()));
    let (sealer, params) = tokio::task::spawn_blocking(move || Sealer::create(pass.as_ref().map(|p| p.as_str())))
        .await
        .map_err(|e| StoreError::Unavailable(format!("the key derivation task did not finish: {e}")))??;
    let first = genesis(&sealer, &params, now)?;
    let tx = begin(&mut client).await?;
    query(&tx, "SELECT pg_advisory_xact_lock($1)", &[&CREATION_LOCK]).await?;
    if let Some(params) = seal_params(&tx, shown).await? {
        // Another replica created it meanwhile: open theirs.
        drop(tx);
        return Ok((open_sealer(params, passphrase).await?, false));
    }
    for (name, value) in &first.meta {
        execute(&tx, "INSERT INTO meta (name, value) VALUES ($1, $2)", &[name, value]).await?;
    }
    let (id, record) = &first.server_key;
    execute(&tx, "INSERT INTO server_keys (id, record) VALUES ($1, $2)", &[&&id[..], &encode(record, "server key")?])
        .await?;
    let created =
        AuditEntry { at: now, event: "store.created", detail: serde_json::json!({ "sealed": sealer.is_sealed() }) };
    append_audit(&tx, &created).await?;
    commit(tx).await?;
    Ok((sealer, true))
}

/// The seal parameters, once the format marker says this is an onetrip database.
async fn seal_params(c: &impl GenericClient, shown: &str) -> Result<Option<SealParams>, StoreError> {
    let rows = query(c, "SELECT name, value FROM meta WHERE name IN ('format', 'seal')", &[]).await?;
    let get = |name: &str| rows.iter().find(|r| r.get::<_, &str>(0) == name).map(|r| r.get::<_, Vec<u8>>(1));
    match (get("format"), get("seal")) {
        (None, None) => Ok(None),
        (Some(format), Some(seal)) if format == FORMAT => {
            serde_json::from_slice(&seal).map(Some).map_err(|_| StoreError::Record("seal".into()))
        }
        _ => Err(StoreError::Format(shown.into())),
    }
}

async fn open_sealer(params: SealParams, passphrase: Option<&str>) -> Result<Sealer, StoreError> {
    let pass = passphrase.map(|p| Zeroizing::new(p.to_owned()));
    let sealer = tokio::task::spawn_blocking(move || Sealer::open(&params, pass.as_ref().map(|p| p.as_str())))
        .await
        .map_err(|e| StoreError::Unavailable(format!("the key derivation task did not finish: {e}")))??;
    Ok(sealer)
}

async fn meta_value(c: &impl GenericClient, name: &str) -> Result<Vec<u8>, StoreError> {
    let rows = query(c, "SELECT value FROM meta WHERE name = $1", &[&name]).await?;
    rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Record(name.into()))
}

/// Every handshake key row, in id order (redb's order).
async fn server_key_rows(c: &impl GenericClient) -> Result<Vec<([u8; 8], ServerKeyRecord)>, StoreError> {
    let rows = query(c, "SELECT id, record FROM server_keys ORDER BY id", &[]).await?;
    rows.iter().map(|r| Ok((fixed::<8>(r.get(0), "server key id")?, decode(r.get(1), "server key")?))).collect()
}

async fn put_server_key(tx: &impl GenericClient, id: &[u8; 8], r: &ServerKeyRecord) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO server_keys (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        &[&&id[..], &encode(r, "server key")?],
    )
    .await?;
    Ok(())
}

/// Serializes the handshake key writers (readers go on).
async fn lock_server_keys(tx: &impl GenericClient) -> Result<(), StoreError> {
    tx.batch_execute("LOCK TABLE server_keys IN SHARE ROW EXCLUSIVE MODE").await.map_err(db_error)
}

#[async_trait]
impl SecretRepo for PgBackend {
    fn is_sealed(&self) -> bool {
        self.sealer.is_sealed()
    }

    fn location(&self) -> String {
        self.shown.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A round trip on a pooled connection: a dead one is found and replaced here.
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db_error)?;
        Ok(())
    }

    async fn server_secrets(&self) -> Result<ServerSecrets, StoreError> {
        let client = self.client().await?;
        let sealer = &self.sealer;
        let identity_seed = sealer.open_secret("identity", &meta_value(&client, "identity").await?)?;
        let dummy_secret = sealer.open_secret("dummy_secret", &meta_value(&client, "dummy_secret").await?)?;
        let mut token_keys = Vec::new();
        for t in decode_token_records(&meta_value(&client, "token_keys").await?)? {
            let id: [u8; 4] = hex_array(&t.id).ok_or_else(|| StoreError::Record("token key id".into()))?;
            let blob = hex::decode(&t.master).map_err(|_| StoreError::Record("token key".into()))?;
            token_keys.push((id, open_bound(sealer, &token_key_slot(&id), "token_key", &blob)?));
        }
        let mut server_keys = Vec::new();
        for (id, r) in server_key_rows(&client).await? {
            let blob = hex::decode(&r.private).map_err(|_| StoreError::Record("server key".into()))?;
            let private = open_bound(sealer, &server_key_slot(&id), "server_key", &blob)?;
            server_keys.push((id, private, r.not_before, r.not_after));
        }
        Ok(ServerSecrets { identity_seed, dummy_secret, server_keys, token_keys })
    }

    async fn otp_key(&self) -> Result<Secret<32>, StoreError> {
        let client = self.client().await?;
        let read = "SELECT value FROM meta WHERE name = 'otp_key'";
        if let Some(row) = query(&client, read, &[]).await?.first() {
            return Ok(self.sealer.open_secret("otp_key", row.get(0))?);
        }
        let key = Secret::<32>::random(&mut rand_core::OsRng);
        let sealed = self.sealer.seal("otp_key", key.expose());
        // The first writer wins; everyone then reads the winner's key.
        execute(
            &client,
            "INSERT INTO meta (name, value) VALUES ('otp_key', $1) ON CONFLICT (name) DO NOTHING",
            &[&sealed],
        )
        .await?;
        let rows = query(&client, read, &[]).await?;
        let blob: Vec<u8> = rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Record("otp_key".into()))?;
        Ok(self.sealer.open_secret("otp_key", &blob)?)
    }

    async fn server_key_validity(&self) -> Result<Vec<KeyValidity>, StoreError> {
        let client = self.client().await?;
        Ok(server_key_rows(&client).await?.into_iter().map(|(id, r)| (id, r.not_before, r.not_after)).collect())
    }

    async fn maintain_server_keys(&self, now: u64, policy: KeyPolicy) -> Result<KeyChanges, StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        lock_server_keys(&tx).await?;
        let rows = server_key_rows(&tx).await?;
        let validity: Vec<KeyValidity> = rows.iter().map(|(id, r)| (*id, r.not_before, r.not_after)).collect();
        let mut changes = plan_server_keys(&validity, now, policy);
        if changes.is_empty() {
            return Ok(changes);
        }
        let mut audit = Vec::new();
        for id in &changes.destroyed {
            execute(&tx, "DELETE FROM server_keys WHERE id = $1", &[&&id[..]]).await?;
            audit.push(("server_key.destroyed", serde_json::json!({ "key_id": hex::encode(id) })));
        }
        for (id, not_after) in &changes.shortened {
            let Some((_, r)) = rows.iter().find(|(k, _)| k == id) else { continue };
            let mut r = r.clone();
            r.not_after = *not_after;
            put_server_key(&tx, id, &r).await?;
            audit.push((
                "server_key.shortened",
                serde_json::json!({ "key_id": hex::encode(id), "not_after": not_after }),
            ));
        }
        if let Some((not_before, not_after)) = changes.rotate {
            let (id, r) = new_server_key(&self.sealer, not_before, not_after);
            put_server_key(&tx, &id, &r).await?;
            changes.new_key_id = Some(id);
            audit.push((
                "server_key.rotated",
                serde_json::json!({ "new_key_id": hex::encode(id), "not_after": not_after, "automatic": true }),
            ));
        }
        for (event, detail) in audit {
            append_audit(&tx, &AuditEntry { at: now, event, detail }).await?;
        }
        notify(&tx, &Change::ServerKeys).await?;
        commit(tx).await?;
        Ok(changes)
    }

    async fn rotate_server_key(
        &self,
        now: u64,
        old_not_after: u64,
        lifetime: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 8], StoreError> {
        let (id, new) = new_server_key(&self.sealer, now, now.saturating_add(lifetime));
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        lock_server_keys(&tx).await?;
        for (k, mut r) in server_key_rows(&tx).await? {
            if r.not_after < now {
                execute(&tx, "DELETE FROM server_keys WHERE id = $1", &[&&k[..]]).await?;
            } else if r.not_after > old_not_after {
                r.not_after = old_not_after.max(r.not_before);
                put_server_key(&tx, &k, &r).await?;
            }
        }
        put_server_key(&tx, &id, &new).await?;
        let detail = serde_json::json!({ "new_key_id": hex::encode(id), "old_not_after": old_not_after });
        append_audit(&tx, &AuditEntry { at: now, event: "server_key.rotated", detail }.by(actor)).await?;
        notify(&tx, &Change::ServerKeys).await?;
        commit(tx).await?;
        Ok(id)
    }

    async fn rotate_token_key(
        &self,
        now: u64,
        overlap_secs: u64,
        actor: serde_json::Value,
    ) -> Result<[u8; 4], StoreError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let rows = query(&tx, "SELECT value FROM meta WHERE name = 'token_keys' FOR UPDATE", &[]).await?;
        let bytes: Vec<u8> = rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Record("token_keys".into()))?;
        let mut records = decode_token_records(&bytes)?;
        let (id, retired) = rotate_token_records(&self.sealer, &mut records, now, overlap_secs);
        execute(&tx, "UPDATE meta SET value = $1 WHERE name = 'token_keys'", &[&encode_token_records(&records)?])
            .await?;
        append_audit(&tx, &token_rotation_event(&id, now, overlap_secs, retired).by(actor)).await?;
        notify(&tx, &Change::TokenKeys).await?;
        commit(tx).await?;
        Ok(id)
    }

    async fn drop_retired_token_keys(&self, now: u64) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let due = decode_token_records(&meta_value(&client, "token_keys").await?)?
            .iter()
            .filter(|r| r.retire_at.is_some_and(|t| t <= now))
            .count();
        if due == 0 {
            return Ok(0);
        }
        let tx = begin(&mut client).await?;
        let rows = query(&tx, "SELECT value FROM meta WHERE name = 'token_keys' FOR UPDATE", &[]).await?;
        let bytes: Vec<u8> = rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Record("token_keys".into()))?;
        let mut records = decode_token_records(&bytes)?;
        let dropped = drop_retired_token_records(&mut records, now);
        execute(&tx, "UPDATE meta SET value = $1 WHERE name = 'token_keys'", &[&encode_token_records(&records)?])
            .await?;
        let audit = AuditEntry { at: now, event: "token_key.retired", detail: serde_json::json!({ "count": dropped }) };
        append_audit(&tx, &audit).await?;
        notify(&tx, &Change::TokenKeys).await?;
        commit(tx).await?;
        Ok(dropped)
    }
}
