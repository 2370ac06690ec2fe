//! Consistent backups of the embedded store, and their read-only verification.
//!
//! Copying `onetrip.redb` while `onetrip serve` writes can tear it (a page of one
//! commit next to a page of another). A backup is instead read from one redb read
//! transaction, which sees exactly one committed state however many writers run
//! meanwhile, and every table is copied row by row into a new redb file. Sealed values
//! are copied as they are, so the backup opens with the store's passphrase and nothing
//! else. The new file is written under a temporary name in the destination directory
//! (mode 0600 from its creation), fsynced, and only then moved into place, so a
//! crash never leaves a half-written file under the backup's name. Restoring is
//! placing the file as `onetrip.redb` in a data directory whose server is stopped.
//!
//! [`verify_backup`] runs the checks `serve` runs at start (format, seal parameters
//! and passphrase, every sealed server secret, every API key record) through a
//! read-only handle: it never writes a byte to the file it checks.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use onetrip_protocol::IdentityKey;
use redb::{
    Database, Durability, Key, MultimapTableHandle, ReadTransaction, ReadableDatabase, ReadableTableMetadata,
    TableDefinition, TableHandle, Value,
};
use serde::{Deserialize, Serialize};

use super::store::{
    builder, check_contents, contain_panics, damaged, engine_error, map_db_error, read_server_secrets,
    restrict_permissions, API_KEYS, META,
};
use super::Store;
use crate::seal::SealError;
use crate::store::StoreError;

/// Rows written per write transaction of the copy: bounds the memory the new file's
/// uncommitted pages take with a million-key store. Only the last commit is durable.
const ROWS_PER_COMMIT: u64 = 50_000;

/// What a backup holds, as `store backup` and `store verify` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The backup file.
    pub path: PathBuf,
    /// API key records (active or not).
    pub api_keys: u64,
    /// The server identity's fingerprint, which clients pin.
    pub fingerprint: String,
    /// Private keys are sealed with a passphrase (needed to open the backup).
    pub sealed: bool,
    /// File size in bytes.
    pub bytes: u64,
    /// Rows of every table, by table name.
    pub tables: BTreeMap<String, u64>,
}

/// Why a backup could not be written or is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The destination exists and replacing it was not asked for.
    #[error("{0} exists: choose another file name, or pass --force to replace it")]
    Exists(PathBuf),
    /// The destination is the live store itself.
    #[error("{0} is the store being backed up: write the backup to another file")]
    WouldReplaceStore(PathBuf),
    /// The destination names a directory, or no file at all.
    #[error("{0} is not a file name: name the backup file, e.g. /var/backups/onetrip-2026-01-31.redb")]
    NotAFile(PathBuf),
    /// The destination's directory is missing or cannot be written.
    #[error("cannot write the backup into {path}: {source}")]
    Destination {
        /// The directory (or temporary file) that failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The new file could not be written.
    #[error("cannot write the backup {path}: {detail}")]
    Write {
        /// The backup file.
        path: PathBuf,
        /// The storage engine's description.
        detail: String,
    },
    /// The store has a table whose types this version does not know: refusing is
    /// better than a backup that silently lacks it.
    #[error("the store has a table `{0}` this version of onetrip cannot copy: no backup was written")]
    UnknownTable(String),
    /// The backend is a database server, backed up with its own tools.
    #[error("the store {0} is not backed up by onetrip: use the database's own tools (PostgreSQL: pg_dump, point-in-time recovery; the sealed columns need the passphrase)")]
    Unsupported(String),
    /// The live store could not be read.
    #[error(transparent)]
    Source(#[from] StoreError),
    /// The file to verify cannot be read (missing, a directory, no permission).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is held by a running server (it is a live store, not a backup).
    #[error("{0} is in use by a running onetrip server: verify a backup, not the live store")]
    InUse(PathBuf),
    /// Damaged, truncated, foreign or of a newer format.
    #[error("{path} is not a usable onetrip backup: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The backup is sealed and the passphrase is missing or wrong (or one was given
    /// for a backup that is not sealed).
    #[error("{path}: {source}")]
    Passphrase {
        /// The file.
        path: PathBuf,
        /// Which of the three.
        source: SealError,
    },
}

impl Store {
    /// Writes a consistent copy of the store to `dest`: every table, read in one read
    /// transaction (concurrent writers go on; the backup holds exactly the changes
    /// committed before it began). `dest` is replaced only with `force`, and never
    /// when it is the store itself.
    pub fn backup_to(&self, dest: &Path, force: bool) -> Result<BackupSummary, BackupError> {
        let secrets = self.server_secrets()?;
        let fingerprint = IdentityKey::from_seed(&secrets.identity_seed).fingerprint().to_string();
        drop(secrets);
        let (tables, bytes) = write_backup(&*self.db, &self.path, dest, force)?;
        Ok(BackupSummary {
            path: dest.to_owned(),
            api_keys: tables.get(API_KEYS.name()).copied().unwrap_or(0),
            fingerprint,
            sealed: self.is_sealed(),
            bytes,
            tables,
        })
    }
}

/// Checks a backup (or a stopped server's store) as `serve` checks its store at start,
/// through a read-only handle, and summarises it. `passphrase` is the store's.
pub fn verify_backup(path: &Path, passphrase: Option<&str>) -> Result<BackupSummary, BackupError> {
    let read_error = |source| BackupError::Read { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(io::Error::other("not a regular file")));
    }
    let summary = contain_panics(path, || {
        let db = match builder().open_read_only(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(damaged(
                    path,
                    "the file was not closed cleanly (a copy of a store in use, not a file written by `onetrip store backup`?)",
                ))
            }
            Err(e) => return Err(map_db_error(path, e)),
        };
        let sealer = check_contents(&db, path, passphrase)?;
        let secrets = read_server_secrets(&db, path, &sealer)?;
        let fingerprint = IdentityKey::from_seed(&secrets.identity_seed).fingerprint().to_string();
        drop(secrets);
        let read = db.begin_read().map_err(|e| engine_error(path, e))?;
        // Made on first OTP use; sealed like the keys, so it must open too.
        let meta = read.open_table(META).map_err(|e| engine_error(path, e))?;
        if let Some(blob) = meta.get("otp_key").map_err(|e| engine_error(path, e))? {
            sealer.open_secret("otp_key", blob.value())?;
        }
        let tables = row_counts(&read, path)?;
        Ok(BackupSummary {
            path: path.to_owned(),
            api_keys: tables.get(API_KEYS.name()).copied().unwrap_or(0),
            fingerprint,
            sealed: sealer.is_sealed(),
            bytes: meta_len(path),
            tables,
        })
    });
    summary.map_err(|e| unusable(path, e))
}

fn meta_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Rows of every table seen by `read`.
fn row_counts(read: &ReadTransaction, path: &Path) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for handle in read.list_tables().map_err(|e| engine_error(path, e))? {
        let name = handle.name().to_owned();
        let table = read.open_untyped_table(handle).map_err(|e| engine_error(path, e))?;
        out.insert(name, table.len().map_err(|e| engine_error(path, e))?);
    }
    Ok(out)
}

/// Sorts a store error met while verifying into what the operator must do about it.
fn unusable(path: &Path, e: StoreError) -> BackupError {
    let path = path.to_owned();
    let detail = match e {
        StoreError::Seal(
            source @ (SealError::PassphraseRequired | SealError::WrongPassphrase | SealError::NotSealed),
        ) => return BackupError::Passphrase { path, source },
        StoreError::Locked(_) => return BackupError::InUse(path),
        StoreError::Io { source, .. } | StoreError::Disk { source, .. } => return BackupError::Read { path, source },
        StoreError::Damaged { detail, .. } => detail,
        StoreError::Format(_) => "not an onetrip store of a supported format".to_owned(),
        StoreError::Record(what) => format!("the record `{what}` does not decode"),
        StoreError::Seal(SealError::Damaged(slot)) => format!("the sealed value `{slot}` does not open"),
        other => other.to_string(),
    };
    BackupError::Invalid { path, detail }
}

/// Copies every table of `source` into a new file placed at `dest`; returns the rows
/// per table and the file's size.
fn write_backup(
    source: &impl ReadableDatabase,
    source_path: &Path,
    dest: &Path,
    force: bool,
) -> Result<(BTreeMap<String, u64>, u64), BackupError> {
    let dir = check_destination(source_path, dest, force)?;
    let name = dest.file_name().ok_or_else(|| BackupError::NotAFile(dest.to_owned()))?;
    let tmp = dir.join(format!(".{}.{:016x}.tmp", name.to_string_lossy(), rand::random::<u64>()));
    let written = (|| -> Result<BTreeMap<String, u64>, BackupError> {
        let file = create_private(&tmp)?;
        let tables = contain_panics(source_path, || Ok(copy_all(source, source_path, file, dest)))??;
        // redb fsynced its last commit; closing wrote its allocator state after that.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| BackupError::Destination { path: tmp.clone(), source })?;
        place(&tmp, dest, force)?;
        sync_dir(&dir);
        Ok(tables)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let tables = written?;
    let bytes = std::fs::metadata(dest).map_err(|source| BackupError::Destination { path: dest.to_owned(), source })?;
    Ok((tables, bytes.len()))
}

/// The directory the backup goes into, after refusing destinations that would lose
/// data: an existing file without `force`, the store itself, a directory.
fn check_destination(source_path: &Path, dest: &Path, force: bool) -> Result<PathBuf, BackupError> {
    if dest.file_name().is_none() {
        return Err(BackupError::NotAFile(dest.to_owned()));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir_meta = std::fs::metadata(&dir).map_err(|source| BackupError::Destination { path: dir.clone(), source })?;
    if !dir_meta.is_dir() {
        let source = io::Error::other("not a directory");
        return Err(BackupError::Destination { path: dir, source });
    }
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => Err(BackupError::NotAFile(dest.to_owned())),
        Ok(m) if same_file(&m, source_path) => Err(BackupError::WouldReplaceStore(dest.to_owned())),
        Ok(_) if !force => Err(BackupError::Exists(dest.to_owned())),
        _ => Ok(dir),
    }
}

fn same_file(dest: &std::fs::Metadata, other: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(other).is_ok_and(|o| o.dev() == dest.dev() && o.ino() == dest.ino())
}

/// Creates `path` (never an existing file or a planted link) with mode 0600 from the
/// first instant: the umask can only take bits away.
fn create_private(path: &Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| BackupError::Destination { path: path.to_owned(), source })?;
    restrict_permissions(path, 0o600).map_err(|source| BackupError::Destination { path: path.to_owned(), source })?;
    Ok(file)
}

/// Copies every table of one read transaction into a new database in `file`.
fn copy_all(
    source: &impl ReadableDatabase,
    source_path: &Path,
    file: std::fs::File,
    dest: &Path,
) -> Result<BTreeMap<String, u64>, BackupError> {
    let write_error = |e: &dyn std::fmt::Display| BackupError::Write { path: dest.to_owned(), detail: e.to_string() };
    let read = source.begin_read().map_err(|e| engine_error(source_path, e))?;
    if let Some(t) = read.list_multimap_tables().map_err(|e| engine_error(source_path, e))?.next() {
        return Err(BackupError::UnknownTable(t.name().to_owned()));
    }
    let backend = redb::backends::FileBackend::new(file).map_err(|e| write_error(&e))?;
    let db = builder().create_with_backend(backend).map_err(|e| write_error(&e))?;
    let mut tables = BTreeMap::new();
    for handle in read.list_tables().map_err(|e| engine_error(source_path, e))? {
        let name = handle.name().to_owned();
        let mut rows = None;
        for copy in COPIERS {
            rows = copy(&read, &db, &name, source_path, dest)?;
            if rows.is_some() {
                break;
            }
        }
        let rows = rows.ok_or_else(|| BackupError::UnknownTable(name.clone()))?;
        tables.insert(name, rows);
    }
    // The earlier commits were not durable; this one makes them all so.
    let mut w = db.begin_write().map_err(|e| write_error(&e))?;
    w.set_durability(Durability::Immediate).map_err(|e| write_error(&e))?;
    w.commit().map_err(|e| write_error(&e))?;
    // Read back from the new file: every table holds what was copied into it.
    let copied = row_counts(&db.begin_read().map_err(|e| write_error(&e))?, dest).map_err(|e| write_error(&e))?;
    if copied != tables {
        return Err(write_error(&"the written file does not hold every row read from the store"));
    }
    Ok(tables)
}

type Copier = fn(&ReadTransaction, &Database, &str, &Path, &Path) -> Result<Option<u64>, BackupError>;

/// One copier per key and value type the store's tables use (store.rs and store/*.rs).
/// A table of any other type is refused by name ([`BackupError::UnknownTable`]).
const COPIERS: [Copier; 5] = [
    copy_table::<&'static [u8], &'static [u8]>,
    copy_table::<&'static str, &'static [u8]>,
    copy_table::<u64, &'static [u8]>,
    copy_table::<&'static [u8], ()>,
    copy_table::<&'static [u8], u64>,
];

/// Copies table `name` if its types are `K`, `V`; `Ok(None)` when they are not.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    db: &Database,
    name: &str,
    source_path: &Path,
    dest: &Path,
) -> Result<Option<u64>, BackupError> {
    let write_error = |e: &dyn std::fmt::Display| BackupError::Write { path: dest.to_owned(), detail: e.to_string() };
    let def = TableDefinition::<K, V>::new(name);
    let table = match read.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableTypeMismatch { .. }) => return Ok(None),
        Err(e) => return Err(engine_error(source_path, e).into()),
    };
    let begin = || -> Result<redb::WriteTransaction, BackupError> {
        let mut w = db.begin_write().map_err(|e| write_error(&e))?;
        w.set_durability(Durability::None).map_err(|e| write_error(&e))?;
        Ok(w)
    };
    let mut rows = 0u64;
    let mut source_rows = read_rows(&table, source_path)?;
    let mut done = false;
    // One write transaction per ROWS_PER_COMMIT rows; the first one creates the
    // table even when it is empty (the backup has the same tables as the store).
    while !done {
        let w = begin()?;
        {
            let mut out = w.open_table(def).map_err(|e| write_error(&e))?;
            let mut batch = 0;
            while batch < ROWS_PER_COMMIT {
                let Some(row) = source_rows.next() else {
                    done = true;
                    break;
                };
                let (k, v) = row.map_err(|e| engine_error(source_path, e))?;
                out.insert(k.value(), v.value()).map_err(|e| write_error(&e))?;
                batch += 1;
            }
            rows += batch;
        }
        w.commit().map_err(|e| write_error(&e))?;
    }
    Ok(Some(rows))
}

fn read_rows<'t, K: Key + 'static, V: Value + 'static>(
    table: &'t redb::ReadOnlyTable<K, V>,
    source_path: &Path,
) -> Result<redb::Range<'t, K, V>, StoreError> {
    redb::ReadableTable::iter(table).map_err(|e| engine_error(source_path, e))
}

/// Moves the finished file into place: without `force`, by a hard link, which fails
/// atomically when the name exists (no check-then-rename race with another writer).
fn place(tmp: &Path, dest: &Path, force: bool) -> Result<(), BackupError> {
    let moved = |r: io::Result<()>| r.map_err(|source| BackupError::Destination { path: dest.to_owned(), source });
    if force {
        return moved(std::fs::rename(tmp, dest));
    }
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => moved(std::fs::remove_file(tmp)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(BackupError::Exists(dest.to_owned())),
        // File systems without hard links.
        Err(_) if dest.exists() => Err(BackupError::Exists(dest.to_owned())),
        Err(_) => moved(std::fs::rename(tmp, dest)),
    }
}

/// Makes the new name durable; best effort (some file systems refuse fsync on a directory).
fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the backup's directory");
    }
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
