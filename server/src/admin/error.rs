//! Why an admin operation failed. Each kind has a stable name on the admin socket
//! and its own CLI exit code, so a script can tell a typo from a missing key from a
//! store that is down.

use std::path::PathBuf;

use crate::shared::SharedError;
use crate::store::StoreError;

/// Why an admin operation failed; each kind has a stable name on the socket and
/// its own CLI exit code ([`AdminError::exit_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The request is malformed or names something invalid.
    #[error("{0}")]
    Invalid(String),
    /// The key (or other object) it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists but is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation failed for another reason (a file could not be written).
    #[error("{0}")]
    Failed(String),
    /// The change is stored, but the running server could not apply it yet.
    #[error("{LIVE_PREFIX}{0}")]
    Live(#[from] LiveError),
    /// A key could not be made (the crypto backend refused).
    #[error("cannot make the key: {0}")]
    Crypto(#[from] onetrip_protocol::CryptoError),
    /// The admin socket could not be reached, written or read.
    #[error("cannot reach the admin socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An answer (or a request) did not have the shape of its type: a server and a
    /// CLI of different versions, or a damaged message. Never read as empty values.
    #[error("the admin answer could not be read: {0}")]
    Answer(#[from] serde_json::Error),
}

/// What [`AdminError::Live`] says before the cause.
const LIVE_PREFIX: &str = "stored, but the running server could not apply it: ";

/// Why a running server could not apply a stored change to its memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// Reading the changed keys back from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state shared between replicas refused the change.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// As the server reported it over the admin socket (the CLI's side).
    #[error("{0}")]
    Reported(String),
}

impl AdminError {
    /// The name the admin socket sends for this kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) => "invalid",
            AdminError::NotFound(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
            AdminError::Store(StoreError::Unavailable(_) | StoreError::Locked(_) | StoreError::Disk { .. }) => {
                "unavailable"
            }
            AdminError::Store(StoreError::Seal(_)) => "passphrase",
            AdminError::Store(_) => "store",
            AdminError::Live(_) => "live",
            AdminError::Failed(_) | AdminError::Crypto(_) | AdminError::Socket { .. } | AdminError::Answer(_) => {
                "failed"
            }
        }
    }

    /// Rebuilds the error a server sent as `kind` and `message`.
    pub fn from_kind(kind: &str, message: String) -> Self {
        match kind {
            "invalid" => AdminError::Invalid(message),
            "not_found" => AdminError::NotFound(message),
            "conflict" => AdminError::Conflict(message),
            "unavailable" => AdminError::Store(StoreError::Unavailable(message)),
            // The message already says "stored, but …": say it once.
            "live" => AdminError::Live(LiveError::Reported(
                message.strip_prefix(LIVE_PREFIX).map_or(message.clone(), str::to_owned),
            )),
            "failed" => AdminError::Failed(message),
            _ => AdminError::Store(StoreError::Record(message)),
        }
    }

    /// The `onetrip` exit code for this failure (listed in `onetrip --help`).
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            "invalid" => crate::cli::EXIT_USAGE,
            "not_found" => crate::cli::EXIT_NOT_FOUND,
            "conflict" => crate::cli::EXIT_CONFLICT,
            "unavailable" => crate::cli::EXIT_UNAVAILABLE,
            "passphrase" => crate::cli::EXIT_PASSPHRASE,
            "store" => crate::cli::EXIT_DAMAGED,
            _ => crate::cli::EXIT_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_failure_read_back_from_the_socket_says_stored_once() {
        let sent = AdminError::Live(LiveError::Reported("the reload failed".into()));
        let received = AdminError::from_kind(sent.kind(), sent.to_string());
        assert_eq!(received.to_string(), sent.to_string());
        assert_eq!(received.exit_code(), crate::cli::EXIT_FAILURE);
    }

    #[test]
    fn every_kind_survives_the_socket() {
        let errors = [
            AdminError::Invalid("bad".into()),
            AdminError::NotFound("none".into()),
            AdminError::Conflict("revoked".into()),
            AdminError::Store(StoreError::Unavailable("down".into())),
            AdminError::Failed("disk".into()),
        ];
        for sent in errors {
            let received = AdminError::from_kind(sent.kind(), sent.to_string());
            assert_eq!((received.kind(), received.exit_code()), (sent.kind(), sent.exit_code()), "{sent:?}");
        }
    }
}
