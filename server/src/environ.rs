//! Keeps `ONETRIP_PASSPHRASE` out of the running server's `/proc/PID/environ`.
//! Removing a variable inside the process does not change that file (it shows the
//! environment the process was started with), so `serve` re-executes itself without
//! the variable, handing the passphrase over on its standard input: one end of a
//! socket pair that holds nothing else and is closed after the write. The process id,
//! arguments and every other variable stay the same.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

/// The variable the passphrase comes in.
pub const PASSPHRASE_VAR: &str = "ONETRIP_PASSPHRASE";
/// Set for the re-executed server: its standard input carries the passphrase.
const HANDOFF_VAR: &str = "ONETRIP_PASSPHRASE_ON_STDIN";
/// Longest passphrase handed over.
const MAX_PASSPHRASE: u64 = 4096;

/// Why the passphrase could not be moved out of the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvironError {
    /// Setting up the hand-over or the re-execution failed.
    #[error("cannot restart without ONETRIP_PASSPHRASE in the environment ({0}): use --passphrase-file instead")]
    Reexec(std::io::Error),
    /// The handed-over passphrase could not be read.
    #[error("cannot read the passphrase handed over on standard input: {0}")]
    Read(std::io::Error),
}

/// With `ONETRIP_PASSPHRASE` set, replaces this process by the same program without
/// it (returns only on failure); without it, returns `Ok` at once.
pub fn reexec_without_passphrase() -> Result<(), EnvironError> {
    let Some(passphrase) = std::env::var_os(PASSPHRASE_VAR).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let passphrase = Zeroizing::new(passphrase.into_encoded_bytes());
    let (mut writer, reader) = UnixStream::pair().map_err(EnvironError::Reexec)?;
    writer.write_all(&passphrase).map_err(EnvironError::Reexec)?;
    drop(writer);
    let exe = std::env::current_exe().map_err(EnvironError::Reexec)?;
    let error = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env_remove(PASSPHRASE_VAR)
        .env(HANDOFF_VAR, "1")
        .stdin(Stdio::from(OwnedFd::from(reader)))
        .exec();
    Err(EnvironError::Reexec(error))
}

/// In a re-executed server, the passphrase from standard input (once: later calls
/// get `None`); `None` otherwise.
pub fn handed_over_passphrase() -> Result<Option<Zeroizing<String>>, EnvironError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if std::env::var_os(HANDOFF_VAR).is_none_or(|v| v != "1") || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin().take(MAX_PASSPHRASE).read_to_string(&mut text).map_err(EnvironError::Read)?;
    Ok(Some(text))
}
