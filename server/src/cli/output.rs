//! How answers are printed: JSON as it came, or lines for people read from the
//! answer's type.

use std::io::Write;

use serde::de::DeserializeOwned;

use super::CliError;
use crate::admin::answers::KeySummary;
use crate::admin::AdminError;

/// Reads `v` as the answer type `T`: a field it lacks is an error with its own
/// exit code, never an empty value printed as if it were right.
pub(super) fn decode<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| AdminError::Answer(e).into())
}

/// Prints answer `v`: as it came with `--json`, else as `human` writes its `T`.
/// Checked as a `T` either way, so `--json` never passes on a malformed answer.
pub(super) fn print_answer<T: DeserializeOwned>(
    v: &serde_json::Value,
    json: bool,
    human: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    let answer: T = decode(v)?;
    print_value(v, json, || human(&answer))
}

/// Prints `v` pretty with `--json`, else the text `human` makes.
pub(super) fn print_value(v: &serde_json::Value, json: bool, human: impl FnOnce() -> String) -> Result<(), CliError> {
    let text = if json { serde_json::to_string_pretty(v).unwrap_or_default() } else { human() };
    print_line(&text)
}

/// Prints `text` and a newline on stdout (see [`Stdout`] for a reader that went away).
pub(super) fn print_line(text: &str) -> Result<(), CliError> {
    let mut out = Stdout::new();
    writeln!(out, "{text}")?;
    Ok(out.finish()?)
}

/// Stdout could not be written (other than by its reader going away).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the output: {0}")]
pub(super) struct WriteError(std::io::Error);

impl From<WriteError> for CliError {
    fn from(e: WriteError) -> Self {
        CliError { code: super::EXIT_FAILURE, message: e.to_string() }
    }
}

/// Buffered stdout where a reader that went away (`onetrip audit | head`: EPIPE, as
/// Rust ignores SIGPIPE) ends the output quietly instead of failing the command (or
/// panicking, as `println!` does): like `cat`, the command did what was asked of it.
/// Later writes are dropped; [`Stdout::gone`] lets a listing stop fetching pages.
pub(super) struct Stdout {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    gone: bool,
}

impl Stdout {
    pub(super) fn new() -> Self {
        Stdout { out: std::io::BufWriter::new(std::io::stdout().lock()), gone: false }
    }

    /// True once the reader has gone away.
    pub(super) fn gone(&self) -> bool {
        self.gone
    }

    /// What `write!` calls.
    pub(super) fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), WriteError> {
        let result = if self.gone { Ok(()) } else { self.out.write_fmt(args) };
        self.settle(result)
    }

    /// Flushes what is buffered.
    pub(super) fn finish(mut self) -> Result<(), WriteError> {
        let result = if self.gone { Ok(()) } else { self.out.flush() };
        self.settle(result)
    }

    fn settle(&mut self, result: std::io::Result<()>) -> Result<(), WriteError> {
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            other => other.map_err(WriteError),
        }
    }
}

/// One line per key: id, name, grants and state.
pub(super) fn key_line(k: &KeySummary) -> String {
    format!(
        "{}  {:<20} scopes={} audiences={} {}{}",
        k.id,
        k.name,
        k.scopes.join(","),
        k.audiences.join(","),
        if k.active { "active" } else { "INACTIVE" },
        if k.require_otp { " otp" } else { "" },
    )
}
