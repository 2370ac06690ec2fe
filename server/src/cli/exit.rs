//! The `onetrip` exit codes, one per kind of failure, so scripts can tell a typo from
//! a missing key from a database that is down. Listed in `onetrip --help`.

/// Any other failure.
pub const EXIT_FAILURE: i32 = 1;
/// The command line or a value in it is invalid (clap uses 2 for usage errors too).
pub const EXIT_USAGE: i32 = 2;
/// The store or a backup is damaged, truncated or not an onetrip store.
pub const EXIT_DAMAGED: i32 = 3;
/// The store is sealed and the passphrase is missing or wrong.
pub const EXIT_PASSPHRASE: i32 = 4;
/// The key (or other object) named does not exist.
pub const EXIT_NOT_FOUND: i32 = 5;
/// The store (or the running server) cannot be reached now; retrying may work.
pub const EXIT_UNAVAILABLE: i32 = 6;
/// The object is not in a state that allows the operation (revoked, already enrolled).
pub const EXIT_CONFLICT: i32 = 7;

/// The exit codes as `onetrip --help` lists them.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 other failure, 2 invalid command line or value, \
3 damaged store or backup, 4 passphrase missing or wrong, 5 not found, 6 store or server unreachable \
(retry), 7 not allowed in the object's state (e.g. revoked, already enrolled).";

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code (one of the constants above).
    pub code: i32,
    /// Message for stderr.
    pub message: String,
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError { code: EXIT_FAILURE, message }
    }
}

/// A setting that cannot be used is an invalid value, like a bad flag.
impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError { code: EXIT_USAGE, message: e.to_string() }
    }
}

impl From<crate::admin::AdminError> for CliError {
    fn from(e: crate::admin::AdminError) -> Self {
        CliError { code: e.exit_code(), message: e.to_string() }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::admin::AdminError::Store(e).into()
    }
}
