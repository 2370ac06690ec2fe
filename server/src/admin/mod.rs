//! Key management operations, and the admin Unix socket that carries them to a
//! running server. redb allows one process at a time, so while `onetrip serve` runs
//! the CLI sends its request over `admin.sock` (mode 0600: filesystem permissions are
//! the authentication); otherwise the CLI opens the store and runs the same
//! [`execute`] itself.
//!
//! | module | job |
//! |---|---|
//! | here | [`AdminRequest`]: the operations, as they travel on the socket |
//! | `ops` | [`execute`]: runs one operation against the store |
//! | [`answers`] | what each operation answers, one type each |
//! | `audit` | the audit log a page at a time, newest first, with its cursor |
//! | `error` | [`AdminError`], with its socket name and exit code |
//! | `live` | [`Live`]: how a running server applies a change without a restart |
//! | `socket` | the socket: [`bind_socket`], [`serve_socket`], [`request`] |

use serde::{Deserialize, Serialize};

mod actor;
pub mod answers;
mod audit;
mod bulk;
mod error;
mod live;
mod ops;
mod socket;

pub use actor::Actor;
pub use audit::AuditCursor;
pub use error::{AdminError, LiveError};
pub use live::Live;
pub use ops::execute;
pub use socket::{bind_socket, request, serve_socket};

/// Most keys in one `keys_list` answer.
pub const MAX_KEYS_PAGE: usize = 1_000;

/// The most keys one bulk create or revoke changes, in one transaction; the CLI
/// splits larger files into transactions of this size.
pub const MAX_BULK: usize = 10_000;

fn default_keys_page() -> usize {
    MAX_KEYS_PAGE
}

/// One admin operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Create an API key; the answer carries the key string, shown once.
    KeysCreate {
        /// Human name.
        name: String,
        /// Scopes it may request.
        scopes: Vec<String>,
        /// Audiences it may request tokens for.
        audiences: Vec<String>,
        /// Requires a second factor.
        require_otp: bool,
        /// Where codes go.
        otp_to: Option<String>,
    },
    /// One page of keys, in id order: at most [`MAX_KEYS_PAGE`] records, so neither
    /// the server nor the socket ever holds a whole million-key listing.
    KeysList {
        /// Start after this key id (the previous page's `next_after`).
        #[serde(default)]
        after: Option<String>,
        /// Most records in this page (at most [`MAX_KEYS_PAGE`]).
        #[serde(default = "default_keys_page")]
        limit: usize,
        /// Only keys with this name.
        #[serde(default)]
        name: Option<String>,
        /// Only keys that list this audience.
        #[serde(default)]
        audience: Option<String>,
        /// Only keys that list this scope.
        #[serde(default)]
        scope: Option<String>,
        /// Only revoked (true) or only not revoked (false) keys.
        #[serde(default)]
        revoked: Option<bool>,
        /// Only keys created at or after this unix second.
        #[serde(default)]
        created_after: Option<u64>,
    },
    /// Show one key.
    KeysShow {
        /// Key id (hex).
        id: String,
    },
    /// Clear a key's second-factor lockout (wrong step-up codes).
    KeysUnlock {
        /// Key id (hex).
        id: String,
    },
    /// Revoke a key now.
    KeysRevoke {
        /// Key id (hex).
        id: String,
    },
    /// Create `count` keys alike (at most [`MAX_BULK`]) in one transaction; the
    /// answer carries every key string, shown once.
    KeysCreateMany {
        /// Human name, shared by all.
        name: String,
        /// Scopes they may request.
        scopes: Vec<String>,
        /// Audiences they may request tokens for.
        audiences: Vec<String>,
        /// Require a second factor.
        require_otp: bool,
        /// Where codes go.
        otp_to: Option<String>,
        /// How many.
        count: usize,
    },
    /// Revoke these keys (at most [`MAX_BULK`]) in one transaction.
    KeysRevokeMany {
        /// Key ids (hex).
        ids: Vec<String>,
    },
    /// New key with the same settings; the old one stays valid `grace_secs`.
    KeysRotate {
        /// Key id (hex).
        id: String,
        /// Grace period for the old key.
        grace_secs: u64,
    },
    /// Enrol a key created with `--otp-to totp` in an authenticator app; the answer
    /// carries the secret and its `otpauth://` URI, shown once.
    KeysTotpEnroll {
        /// Key id (hex).
        id: String,
        /// Replace an existing enrolment (audited as `otp.totp_replace`).
        #[serde(default)]
        replace: bool,
    },
    /// Is a server answering on this socket? (The answer is `"pong"`.)
    Ping,
    /// Fingerprint and handshake keys.
    ServerKeyShow,
    /// New handshake key; the old ones stay valid `overlap_secs`.
    ServerKeyRotate {
        /// Overlap period.
        overlap_secs: u64,
    },
    /// The audience key a resource server needs for its `TokenVerifier`.
    AudienceKey {
        /// Audience name.
        audience: String,
    },
    /// New token master key; older ones still open tokens for `overlap_secs`.
    TokenKeyRotate {
        /// How long tokens sealed under the older keys stay valid.
        overlap_secs: u64,
    },
    /// Revoke one token (by the `token_id` whoami or introspection shows) until it
    /// would have expired; persisted, so a restart keeps it.
    TokensRevoke {
        /// Token id (32 hex characters).
        token_id: String,
    },
    /// Write a consistent backup of the store to `path` (absolute: the server's
    /// working directory is not the CLI's), from one read transaction.
    StoreBackup {
        /// Backup file.
        path: std::path::PathBuf,
        /// Replace an existing file.
        #[serde(default)]
        force: bool,
    },
    /// The newest audit events since a time, a page at a time ([`answers::AuditPage`]).
    Audit {
        /// Unix seconds.
        since: u64,
        /// Most events returned.
        limit: usize,
        /// Only events older than this cursor (the previous page's `next_before`).
        #[serde(default)]
        before: Option<String>,
    },
}
