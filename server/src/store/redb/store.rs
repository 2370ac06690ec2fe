//! The embedded store: one redb file holding API key verifiers and metadata, the
//! server's identity, handshake and token keys (sealed at rest), and an audit log.
//! Every write is one durable transaction; an existing store is never recreated.
//! This file opens (or creates) the store, checks it, and holds the API key table;
//! the other tables each have a file of their own beside it.

use std::path::{Path, PathBuf};

use onetrip_protocol::api_key::KeyId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::audit::append_audit;
use crate::seal::{SealParams, Sealer};
use crate::store::genesis;
use crate::store::ports::{KeyFilter, KeyRotation};
use crate::store::{
    hex_array, open_bound, server_key_slot, token_key_slot, ApiKeyRecord, AuditEntry, ServerKeyRecord, ServerSecrets,
    StoreError, TokenKeyRecord, FORMAT,
};

pub(super) const API_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("api_keys");
pub(super) const SERVER_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("server_keys");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub(super) const OTP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("otp_verifications");

/// Written and dropped again when a store is reopened after a failed write
/// ([`Store::reopen`]); no other time.
const WRITE_PROBE: TableDefinition<u8, &[u8]> = TableDefinition::new("write_probe");
/// How much the reopen probe writes: room for many key changes.
const WRITE_PROBE_BYTES: usize = 1 << 20;

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "onetrip.redb";
/// Written next to the store at creation; its presence without the store means
/// the store was lost, which must not silently become a fresh identity.
pub const MARKER_FILE: &str = "onetrip.identity";

/// The open store.
pub struct Store {
    pub(super) db: Db,
    pub(super) sealer: Sealer,
    pub(super) path: PathBuf,
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
        // Built under a temporary name and renamed once complete, so a first start
        // that fails (a full disk) leaves no half-made store to be refused later.
        let building = data_dir.join(format!("{STORE_FILE}.new-{}", std::process::id()));
        let built = Self::create_at(&building, passphrase, now);
        let (sealer, fingerprint) = match built {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&building);
                return Err(e);
            }
        };
        let placed =
            std::fs::rename(&building, &path).and_then(|()| std::fs::File::open(data_dir)?.sync_all()).map_err(
                |source| StoreError::Io { what: "cannot move the new store into place", path: path.clone(), source },
            );
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&building);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        if let Err(source) = std::fs::write(&marker, format!("{fingerprint}\n")) {
            // Nothing was served from the new store yet: take it back rather than
            // leave a store whose loss the marker would not catch.
            let _ = std::fs::remove_file(&marker);
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::Io { what: "cannot write identity marker", path: marker, source });
        }
        let db = contain_panics(&path, || builder().open(&path).map_err(|e| map_db_error(&path, e)))?;
        let store = Self { db: Db(Some(db), path.clone()), sealer, path };
        Ok((store, true))
    }

    /// Creates a complete store at `path` (identity, keys, first audit event) and
    /// closes it; returns its unsealing key and identity fingerprint.
    fn create_at(path: &Path, passphrase: Option<&str>, now: u64) -> Result<(Sealer, String), StoreError> {
        let db = builder().create(path).map_err(|e| map_db_error(path, e))?;
        restrict_permissions(path, 0o600).map_err(|source| StoreError::Io {
            what: "cannot make the store file private (mode 0600)",
            path: path.to_owned(),
            source,
        })?;
        let (sealer, params) = Sealer::create(passphrase)?;
        let store = Self { db: Db(Some(db), path.to_owned()), sealer, path: path.to_owned() };
        store.initialise(&params, now)?;
        let fingerprint =
            onetrip_protocol::IdentityKey::from_seed(&store.server_secrets()?.identity_seed).fingerprint().to_string();
        Ok((store.close(), fingerprint))
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
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut meta = w.open_table(META).map_err(|e| engine_error(&self.path, e))?;
            for (name, value) in &genesis.meta {
                meta.insert(*name, &value[..]).map_err(|e| engine_error(&self.path, e))?;
            }
            w.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
            w.open_table(AUDIT).map_err(|e| engine_error(&self.path, e))?;
            let mut sk = w.open_table(SERVER_KEYS).map_err(|e| engine_error(&self.path, e))?;
            let (server_key_id, server_key) = &genesis.server_key;
            let record = serde_json::to_vec(server_key).map_err(|_| StoreError::Record("server key".into()))?;
            sk.insert(&server_key_id[..], &record[..]).map_err(|e| engine_error(&self.path, e))?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        self.audit(now, "store.created", serde_json::json!({ "sealed": self.sealer.is_sealed() }))?;
        Ok(())
    }

    /// Closes the database file, keeping the unsealing key for [`Self::reopen`]. A
    /// close that cannot write its clean-shutdown mark (the disk that failed) leaves
    /// the file for redb to repair at the next open, as after a crash.
    pub(super) fn close(self) -> Sealer {
        let Store { db, sealer, .. } = self;
        drop(db);
        sealer
    }

    /// Opens `path` again after [`Self::close`] and proves it writable: a transaction
    /// writes [`WRITE_PROBE_BYTES`] and the next drops them, so a disk with no room
    /// left fails here rather than at the next key change. On failure the unsealing
    /// key comes back for the next try.
    pub(super) fn reopen(path: &Path, sealer: Sealer) -> Result<Self, (Sealer, StoreError)> {
        let db = match contain_panics(path, || builder().open(path).map_err(|e| map_db_error(path, e))) {
            Ok(db) => db,
            Err(e) => return Err((sealer, e)),
        };
        let store = Self { db: Db(Some(db), path.to_owned()), sealer, path: path.to_owned() };
        match store.probe_write() {
            Ok(()) => Ok(store),
            Err(e) => Err((store.close(), e)),
        }
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        let fail = |e: redb::Error| engine_error(&self.path, e);
        let w = self.db.begin_write().map_err(|e| fail(e.into()))?;
        w.open_table(WRITE_PROBE)
            .map_err(|e| fail(e.into()))?
            .insert(0, &vec![0u8; WRITE_PROBE_BYTES][..])
            .map_err(|e| fail(e.into()))?;
        w.commit().map_err(|e| fail(e.into()))?;
        let w = self.db.begin_write().map_err(|e| fail(e.into()))?;
        w.delete_table(WRITE_PROBE).map_err(|e| fail(e.into()))?;
        w.commit().map_err(|e| fail(e.into()))
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
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        {
            let mut table = w.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
            for (id, record) in records {
                put_api_key(&mut table, &self.path, id, record)?;
            }
        }
        if let Some(entry) = audit {
            append_audit(&w, &self.path, entry)?;
        }
        w.commit().map_err(|e| engine_error(&self.path, e))
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
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let mut written = Vec::new();
        {
            let mut table = w.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
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
        w.commit().map_err(|e| engine_error(&self.path, e))?;
        Ok(written)
    }

    /// Rotates a key in one transaction (new record, old record's end and successor,
    /// audit event). `Ok(None)`, nothing written, when the old key does not exist.
    pub fn rotate_api_key(&self, rotation: &KeyRotation) -> Result<Option<ApiKeyRecord>, StoreError> {
        let w = self.db.begin_write().map_err(|e| engine_error(&self.path, e))?;
        let old = {
            let mut table = w.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
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
        w.commit().map_err(|e| engine_error(&self.path, e))?;
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
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = read.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
        let rows = match after {
            Some(after) => {
                use std::ops::Bound;
                let start: &[u8] = &after.as_bytes()[..];
                table.range::<&[u8]>((Bound::Excluded(start), Bound::Unbounded))
            }
            None => table.iter(),
        }
        .map_err(|e| engine_error(&self.path, e))?;
        let mut out = Vec::new();
        for row in rows {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| engine_error(&self.path, e))?;
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

    /// Calls `f` on every API key record without collecting them (start-up with many keys).
    pub fn for_each_api_key(&self, f: impl FnMut(KeyId, ApiKeyRecord)) -> Result<usize, StoreError> {
        each_api_key(&*self.db, &self.path, f)
    }

    /// One API key record.
    pub fn get_api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| engine_error(&self.path, e))?;
        let table = read.open_table(API_KEYS).map_err(|e| engine_error(&self.path, e))?;
        let Some(v) = table.get(&id.as_bytes()[..]).map_err(|e| engine_error(&self.path, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value()).map(Some).map_err(|_| StoreError::Record(id.to_string()))
    }

    /// Every API key record, ordered by key id.
    pub fn list_api_keys(&self) -> Result<Vec<(KeyId, ApiKeyRecord)>, StoreError> {
        read_api_keys(&*self.db, &self.path)
    }
}

/// Page cache of the store. redb's default (1 GiB) would keep most of a million-key
/// store resident after the start-up read; the hot path never reads the store, so a
/// small cache costs nothing there.
pub const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

pub(super) fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(STORE_CACHE_BYTES);
    b
}

/// Reads and checks what a server needs at start: the format marker, the seal
/// parameters (and the passphrase against them), every sealed server secret and
/// every API key record. Returns the sealer.
pub(super) fn check_contents(
    db: &impl ReadableDatabase,
    path: &Path,
    passphrase: Option<&str>,
) -> Result<Sealer, StoreError> {
    let read = db.begin_read().map_err(|e| engine_error(path, e))?;
    let meta = read.open_table(META).map_err(|_| StoreError::Format(path.to_owned()))?;
    let format =
        meta.get("format").map_err(|e| engine_error(path, e))?.ok_or_else(|| StoreError::Format(path.to_owned()))?;
    if format.value() != FORMAT {
        return Err(StoreError::Format(path.to_owned()));
    }
    let params =
        meta.get("seal").map_err(|e| engine_error(path, e))?.ok_or_else(|| StoreError::Record("seal".into()))?;
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
pub(super) struct Db(Option<Database>, PathBuf);

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
pub(super) fn contain_panics<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
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
        Err(damaged(path, &format!("the storage engine stopped on malformed data ({what})")))
    })
}

pub(super) fn read_server_secrets(
    db: &impl ReadableDatabase,
    path: &Path,
    sealer: &Sealer,
) -> Result<ServerSecrets, StoreError> {
    let read = db.begin_read().map_err(|e| engine_error(path, e))?;
    let meta = read.open_table(META).map_err(|e| engine_error(path, e))?;
    let get = |k: &str| -> Result<Vec<u8>, StoreError> {
        Ok(meta
            .get(k)
            .map_err(|e| engine_error(path, e))?
            .ok_or_else(|| StoreError::Record(k.into()))?
            .value()
            .to_vec())
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
    let table = read.open_table(SERVER_KEYS).map_err(|e| engine_error(path, e))?;
    for row in table.iter().map_err(|e| engine_error(path, e))? {
        let (k, v) = row.map_err(|e| engine_error(path, e))?;
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

/// What a redb error means to an operator: the operating system refusing I/O (disk
/// full, permissions) is [`StoreError::Disk`], which heals; only a broken structure
/// is [`StoreError::Damaged`].
pub(super) fn engine_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        // redb reports a file that is not (or no longer) a redb file as I/O errors of
        // these kinds: those are about the file, not the disk.
        redb::Error::Io(source)
            if matches!(source.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            StoreError::Damaged { path: path.to_owned(), detail: source.to_string() }
        }
        redb::Error::Io(source) => StoreError::Disk { op: "access", path: path.to_owned(), source },
        redb::Error::PreviousIo => StoreError::Disk {
            op: "access",
            path: path.to_owned(),
            source: std::io::Error::other("an earlier write to the store failed, so it must be reopened first"),
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked(path.to_owned()),
        other => StoreError::Damaged { path: path.to_owned(), detail: other.to_string() },
    }
}

/// A store that cannot be used for a reason of its own (not an engine error).
pub(super) fn damaged(path: &Path, detail: &str) -> StoreError {
    StoreError::Damaged { path: path.to_owned(), detail: detail.to_owned() }
}

pub(super) fn map_db_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    engine_error(path, e)
}

/// Sets `mode` and checks that it holds: some file systems accept a chmod and ignore it.
pub(super) fn restrict_permissions(path: &Path, mode: u32) -> std::io::Result<()> {
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

fn put_api_key(
    table: &mut redb::Table<&[u8], &[u8]>,
    path: &Path,
    id: &KeyId,
    record: &ApiKeyRecord,
) -> Result<(), StoreError> {
    let v = serde_json::to_vec(record).map_err(|_| StoreError::Record(id.to_string()))?;
    table.insert(&id.as_bytes()[..], &v[..]).map_err(|e| engine_error(path, e))?;
    Ok(())
}

fn get_api_key_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    path: &Path,
    id: &KeyId,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    let Some(v) = table.get(&id.as_bytes()[..]).map_err(|e| engine_error(path, e))? else { return Ok(None) };
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
    let read = db.begin_read().map_err(|e| engine_error(path, e))?;
    let table = read.open_table(API_KEYS).map_err(|e| engine_error(path, e))?;
    let mut n = 0;
    for row in table.iter().map_err(|e| engine_error(path, e))? {
        let (k, v) = row.map_err(|e| engine_error(path, e))?;
        let id: [u8; 16] = k.value().try_into().map_err(|_| StoreError::Record("api key id".into()))?;
        let id = KeyId::from_bytes(id);
        let record = serde_json::from_slice(v.value()).map_err(|_| StoreError::Record(id.to_string()))?;
        f(id, record);
        n += 1;
    }
    Ok(n)
}
