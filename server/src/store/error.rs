//! What can go wrong in the store, whichever engine holds it. Messages say what to do.

use std::path::PathBuf;

use super::redb::MARKER_FILE;
use crate::seal::SealError;

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
    /// redb found the file's structure broken (corruption, a foreign or newer file).
    #[error("cannot read the store {path}: {detail}. The file is damaged: restore it from backup (onetrip never rewrites a damaged store)")]
    Damaged {
        /// Store file.
        path: PathBuf,
        /// redb's description.
        detail: String,
    },
    /// The operating system refused a read or write (disk full, permissions, a
    /// failing device). The operation wrote nothing; a running server reopens the
    /// store and resumes writing by itself once the condition clears.
    #[error("{source} during the store operation `{op}` on {path}: nothing of it was written. Free disk space or fix the file's permissions; a running server reopens the store and resumes by itself")]
    Disk {
        /// The store operation (a port method's name), `access` when not known.
        op: &'static str,
        /// Store file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
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

impl StoreError {
    /// Names the operation a [`StoreError::Disk`] happened in; other errors unchanged.
    pub fn during(self, op: &'static str) -> Self {
        match self {
            StoreError::Disk { path, source, .. } => StoreError::Disk { op, path, source },
            other => other,
        }
    }

    /// True for an error the operating system raised (the store may heal by itself),
    /// as opposed to a damaged record or file.
    pub fn is_disk(&self) -> bool {
        matches!(self, StoreError::Disk { .. })
    }
}
