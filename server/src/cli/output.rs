//! How answers are printed: JSON as it came, or lines for people read from the
//! answer's type.

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
    print_value(v, json, || human(&answer));
    Ok(())
}

/// Prints `v` pretty with `--json`, else the text `human` makes.
pub(super) fn print_value(v: &serde_json::Value, json: bool, human: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human());
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
