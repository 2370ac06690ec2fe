//! The safe core of `pam_onetrip.so`: module arguments, the audience key file, the
//! login check and the replay directory. `lib.rs` only moves bytes across the PAM
//! boundary and calls [`authenticate`].
//!
//! Every PostgreSQL connection is a new backend process, so the replay record cannot
//! live in memory: each accepted credential's replay id becomes a file created with
//! `O_CREAT|O_EXCL` in a directory only the database user can use, named
//! `<replay id hex>.<not_after>`, and removed once `not_after` has passed.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use onetrip_client::{DefaultBackend, LoginError, Secret, TokenVerifier};
use zeroize::Zeroizing;

/// Longest key file read (a few hundred key lines).
const KEY_FILE_MAX: u64 = 64 * 1024;

/// Parsed module arguments (`auth required pam_onetrip.so keyfile=… audience=… replaydir=… [database=…]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `keyfile=`: the `<key id hex>:<key hex>` lines of `onetrip audience-key`.
    pub key_file: PathBuf,
    /// `audience=`: the audience those keys are for.
    pub audience: String,
    /// `replaydir=`: where accepted replay ids are recorded.
    pub replay_dir: PathBuf,
    /// `database=`: bind credentials to this database name (PAM is not told which
    /// database a client asked for; use one PAM service per database to bind it).
    pub database: Option<String>,
}

/// Why the module refused (or could not run). `Display` never contains the
/// credential: it is safe for the system log.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// An argument this module does not know (its name only).
    #[error("unknown module argument `{0}` (expected keyfile=, audience=, replaydir=, database=)")]
    UnknownArg(String),
    /// A required argument is missing.
    #[error("module argument {0}= is required")]
    MissingArg(&'static str),
    /// The key file is readable by group or others.
    #[error("key file {0} is readable by group or others: chmod 600 it (owner: the database user)")]
    KeyFilePermissions(PathBuf),
    /// The replay directory is usable by group or others.
    #[error("replay directory {0} must be a directory of mode 0700 owned by the database user")]
    ReplayDirPermissions(PathBuf),
    /// The key file could not be read or parsed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a key).
        reason: &'static str,
    },
    /// Reading the key file or the replay directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The credential was refused.
    #[error("login credential refused: {0}")]
    Refused(LoginError),
    /// The credential is valid but was already used.
    #[error("login credential refused: already used (replay)")]
    Replayed,
}

impl ModuleError {
    /// True when the fault is the deployment's (PAM_SERVICE_ERR), not the client's.
    pub fn is_config(&self) -> bool {
        !matches!(self, ModuleError::Refused(_) | ModuleError::Replayed)
    }
}

/// Parses `key=value` module arguments.
///
/// # Errors
/// [`ModuleError::UnknownArg`] or [`ModuleError::MissingArg`].
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Args, ModuleError> {
    let (mut key_file, mut audience, mut replay_dir, mut database) = (None, None, None, None);
    for arg in args {
        match arg.split_once('=') {
            Some(("keyfile", v)) => key_file = Some(PathBuf::from(v)),
            Some(("audience", v)) => audience = Some(v.to_owned()),
            Some(("replaydir", v)) => replay_dir = Some(PathBuf::from(v)),
            Some(("database", v)) => database = Some(v.to_owned()),
            _ => return Err(ModuleError::UnknownArg(arg.split('=').next().unwrap_or_default().to_owned())),
        }
    }
    Ok(Args {
        key_file: key_file.ok_or(ModuleError::MissingArg("keyfile"))?,
        audience: audience.ok_or(ModuleError::MissingArg("audience"))?,
        replay_dir: replay_dir.ok_or(ModuleError::MissingArg("replaydir"))?,
        database,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Io { path: path.to_owned(), source }
}

/// Loads the verifier from the key file, refusing a file group or others can read.
///
/// # Errors
/// [`ModuleError::KeyFilePermissions`], [`ModuleError::KeyFile`], [`ModuleError::Io`].
pub fn load_verifier(path: &Path, audience: &str) -> Result<TokenVerifier<DefaultBackend>, ModuleError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if meta.mode() & 0o077 != 0 {
        return Err(ModuleError::KeyFilePermissions(path.to_owned()));
    }
    if meta.len() > KEY_FILE_MAX {
        return Err(ModuleError::KeyFile { path: path.to_owned(), reason: "larger than 64 KiB" });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io(path))?);
    let bad = |reason| ModuleError::KeyFile { path: path.to_owned(), reason };
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (id, key) = line.split_once(':').ok_or(bad("a line is not <key id hex>:<key hex>"))?;
        let mut id_bytes = [0u8; 4];
        hex::decode_to_slice(id, &mut id_bytes).map_err(|_| bad("a key id is not 8 hex digits"))?;
        let mut key_bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(key, &mut key_bytes[..]).map_err(|_| bad("a key is not 64 hex digits"))?;
        keys.push((id_bytes, Secret::new(*key_bytes)));
    }
    TokenVerifier::new(DefaultBackend::default(), audience, &keys)
        .map_err(|_| bad("no key, or an audience over 64 bytes"))
}

/// Records `replay_id` until `not_after`; [`ModuleError::Replayed`] if it is there.
/// Prunes entries whose `not_after` has passed first.
///
/// # Errors
/// [`ModuleError::Replayed`], [`ModuleError::ReplayDirPermissions`], [`ModuleError::Io`].
pub fn record_replay(dir: &Path, replay_id: &[u8; 16], not_after: u64, now: u64) -> Result<(), ModuleError> {
    let meta = fs::metadata(dir).map_err(io(dir))?;
    // Another user who owns or can write the directory could delete records and so
    // reopen replays: only the database user's own 0700 directory is accepted.
    if !meta.is_dir() || meta.mode() & 0o077 != 0 || meta.uid() != crate::effective_uid() {
        return Err(ModuleError::ReplayDirPermissions(dir.to_owned()));
    }
    prune(dir, now);
    let path = dir.join(format!("{}.{not_after}", hex::encode(replay_id)));
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(ModuleError::Replayed),
        Err(e) => Err(ModuleError::Io { path, source: e }),
    }
}

/// Removes replay files whose `not_after` is before `now` (best effort: a file that
/// vanished meanwhile was pruned by a concurrent login).
fn prune(dir: &Path, now: u64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let expired = name
            .to_str()
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, t)| t.parse::<u64>().ok())
            .is_some_and(|not_after| not_after < now);
        if expired {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The whole check: load the key, verify the credential for `user` at `now`, record
/// its replay id.
///
/// # Errors
/// A [`ModuleError`]; [`ModuleError::is_config`] tells the deployment's faults apart.
pub fn authenticate(args: &Args, user: &str, credential: &str, now: u64) -> Result<(), ModuleError> {
    let verifier = load_verifier(&args.key_file, &args.audience)?;
    let ok = verifier.verify_login(credential, user, args.database.as_deref(), now).map_err(ModuleError::Refused)?;
    record_replay(&args.replay_dir, &ok.replay_id, ok.not_after, now)
}

#[cfg(test)]
#[path = "module_test.rs"]
mod tests;
