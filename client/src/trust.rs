//! How the client decides to trust a server identity: a pinned fingerprint
//! (recommended) or trust on first use, persisted to a file the caller names.

use std::path::{Path, PathBuf};

use onetrip_protocol::Fingerprint;

use crate::error::Error;

/// The trust policy.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept only this identity.
    Pin(Fingerprint),
    /// Accept the first identity seen and remember it in `path`; refuse any other later.
    FirstUse {
        /// File holding the fingerprint (created with mode 0600).
        path: PathBuf,
    },
}

impl Trust {
    /// The identity this policy expects now, if any (reads the TOFU file).
    pub fn expected(&self) -> Result<Option<Fingerprint>, Error> {
        match self {
            Trust::Pin(fp) => Ok(Some(*fp)),
            Trust::FirstUse { path } => match std::fs::read_to_string(path) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|e| trust_error(path, &format!("{e}; delete the file to trust the server again"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(trust_error(path, &e.to_string())),
            },
        }
    }

    /// Records a first-seen identity (TOFU only), atomically (temp file + rename).
    pub fn remember(&self, fp: &Fingerprint) -> Result<(), Error> {
        let Trust::FirstUse { path } = self else { return Ok(()) };
        let tmp = path.with_extension("tmp");
        write_private(&tmp, format!("{fp}\n").as_bytes()).map_err(|e| trust_error(&tmp, &e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| trust_error(path, &e.to_string()))
    }
}

fn trust_error(path: &Path, detail: &str) -> Error {
    Error::TrustFile { path: path.display().to_string(), detail: detail.to_owned() }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
