//! How the client decides to trust a server identity: a pinned fingerprint
//! (recommended) or trust on first use, remembered in a file the caller names. The
//! decision itself is sans-IO ([`TrustAnchor`]); this module also reads and writes
//! the trust-on-first-use file for the async and blocking shells.

use std::io::Write;
use std::path::{Path, PathBuf};

use onetrip_protocol::Fingerprint;
use rand_core::RngCore;

use crate::error::Error;

/// The trust policy chosen in the builder.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Trust {
    /// Accept only this identity (`onetrip server-key show` prints it).
    Pin(Fingerprint),
    /// Accept the first identity seen and remember it in `path`; refuse any other later.
    FirstUse {
        /// File holding the fingerprint (created with mode 0600).
        path: PathBuf,
    },
}

/// What the sans-IO core checks a server key document against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustAnchor {
    /// Exactly this identity.
    Pinned(Fingerprint),
    /// Trust on first use: the identity remembered so far, if any.
    FirstUse(Option<Fingerprint>),
}

impl TrustAnchor {
    /// The identity expected now, if one is known.
    pub fn expected(&self) -> Option<Fingerprint> {
        match *self {
            TrustAnchor::Pinned(fp) => Some(fp),
            TrustAnchor::FirstUse(remembered) => remembered,
        }
    }
}

impl Trust {
    /// The anchor this policy starts from (reads the trust-on-first-use file).
    ///
    /// # Errors
    /// [`Error::TrustFile`] when the file exists but cannot be read or parsed.
    pub fn anchor(&self) -> Result<TrustAnchor, Error> {
        match self {
            Trust::Pin(fp) => Ok(TrustAnchor::Pinned(*fp)),
            Trust::FirstUse { path } => load(path).map(TrustAnchor::FirstUse),
        }
    }
}

/// Reads a remembered fingerprint; `None` when the file does not exist yet.
///
/// # Errors
/// [`Error::TrustFile`] for an unreadable or corrupted file.
pub fn load(path: &Path) -> Result<Option<Fingerprint>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            text.trim().parse().map(Some).map_err(|e| {
                trust_error(path, &format!("{e}; delete the file to trust the server again on next contact"))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(trust_error(path, &e.to_string())),
    }
}

/// Records a first-seen identity: written to a private temporary file, then linked
/// into place. Linking (unlike renaming) never replaces a file another process wrote
/// meanwhile; if one did, its identity must match ours.
///
/// # Errors
/// [`Error::TrustFile`] when the file cannot be written;
/// [`Error::ServerIdentityChanged`] when a concurrent first contact recorded another
/// identity.
pub fn remember(path: &Path, fp: &Fingerprint) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| trust_error(&dir, &e.to_string()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{:016x}.tmp", std::process::id(), rand_core::OsRng.next_u64()));
    write_private(&tmp, format!("{fp}\n").as_bytes()).map_err(|e| trust_error(&tmp, &e.to_string()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let result = match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match load(path)? {
            Some(existing) if existing == *fp => Ok(()),
            Some(existing) => Err(Error::ServerIdentityChanged { expected: existing, found: *fp }),
            None => Err(trust_error(path, "vanished while being written; try again")),
        },
        // A file system without hard links: rename is still atomic, only not exclusive.
        Err(_) => std::fs::rename(&tmp, path).map_err(|e| trust_error(path, &e.to_string())),
    };
    let _ = std::fs::remove_file(&tmp);
    if result.is_ok() {
        // Make the new directory entry durable too (best effort; not all platforms can).
        let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
    }
    result
}

fn trust_error(path: &Path, detail: &str) -> Error {
    Error::TrustFile { path: path.display().to_string(), detail: detail.to_owned() }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::of(&[b; 32])
    }

    #[test]
    fn remember_creates_a_private_file_and_refuses_a_different_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_server");
        assert_eq!(load(&path).unwrap(), None);
        remember(&path, &fp(1)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(fp(1)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Same identity again (a concurrent first contact): fine, and no stray files.
        remember(&path, &fp(1)).unwrap();
        let err = remember(&path, &fp(2)).unwrap_err();
        assert!(matches!(err, Error::ServerIdentityChanged { expected, found } if expected == fp(1) && found == fp(2)));
        assert_eq!(load(&path).unwrap(), Some(fp(1)), "the first identity stays");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "temporary files removed");
    }

    #[test]
    fn a_corrupted_file_is_an_actionable_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_server");
        std::fs::write(&path, "not a fingerprint").unwrap();
        let err = Trust::FirstUse { path: path.clone() }.anchor().unwrap_err();
        assert!(matches!(err, Error::TrustFile { .. }));
        assert!(err.to_string().contains("delete the file"), "{err}");
    }
}
