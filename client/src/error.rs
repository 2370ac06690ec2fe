//! The client's typed errors. Messages say what failed and what to do; none ever
//! contains the API key, a token, a session key or a code.

use std::time::Duration;

use onetrip_protocol::{ApiKeyError, DocumentError, Fingerprint, HandshakeError};

/// Everything that can go wrong getting or using a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Unknown key, wrong secret or revoked key (the server does not say which).
    #[error("authentication failed: the API key is unknown, wrong or revoked; check the key or create a new one with `onetrip keys create`")]
    AuthFailed,
    /// The key needs a second factor: get the code sent over `channel` and call
    /// `token_with_code(operation, code)`.
    #[error("a second factor is required: enter the code sent by {channel} to {destination} with token_with_code()")]
    SecondFactorRequired {
        /// Operation id to pass back with the code.
        operation: [u8; 16],
        /// Where the code went (`email`, `webhook`, `totp`, `console`).
        channel: &'static str,
        /// Masked destination, for the user.
        destination: String,
    },
    /// The code was wrong, expired or used.
    #[error("the second-factor code was not accepted ({attempts_left} attempts left)")]
    SecondFactorFailed {
        /// Checks left on the operation.
        attempts_left: u8,
    },
    /// The key may not have the requested audience or scopes.
    #[error("the server refused the requested audience or scopes for this key: ask for fewer, or widen the key")]
    ScopeDenied,
    /// The server's identity is not the pinned (or first-seen) one.
    #[error("server identity changed: expected {expected}, got {found}. If the operator rotated the identity, update the pin (or delete the trust-on-first-use file); otherwise you may be talking to an impostor")]
    ServerIdentityChanged {
        /// Pinned fingerprint.
        expected: Fingerprint,
        /// Fingerprint presented.
        found: Fingerprint,
    },
    /// Too many requests.
    #[error("rate limited by the server: retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait.
        retry_after: Duration,
    },
    /// Still `clock_skew` after adjusting the clock offset once.
    #[error("the server still reports clock skew after one correction: fix the system clock (NTP)")]
    ClockSkew,
    /// Still `server_key_changed` after refetching the document once.
    #[error("the server keeps reporting a changed handshake key after a refetch: retry later")]
    ServerKeyChanged,
    /// The server failed; retry later.
    #[error("the server could not complete the handshake (server error): retry later")]
    ServerError,
    /// The server could not read the decrypted request (version skew or client bug).
    #[error("the server reports the request as malformed: update onetrip-client")]
    Malformed,
    /// A protocol message was invalid (altered in transit, or not from this server).
    #[error("handshake failed: {0}")]
    Protocol(#[from] HandshakeError),
    /// The server key document is invalid.
    #[error("server key document rejected: {0}")]
    Document(DocumentError),
    /// Could not reach the server.
    #[error("cannot reach the onetrip server: {0}")]
    Transport(String),
    /// The server did not answer in time.
    #[error("the onetrip server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an HTTP error.
    #[error("onetrip server answered HTTP {status} ({code}): {detail}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Problem `code`.
        code: String,
        /// Problem `detail`.
        detail: String,
    },
    /// The client is misconfigured.
    #[error("client configuration: {0}")]
    Config(String),
    /// The API key string is invalid.
    #[error("invalid API key: {0}")]
    InvalidApiKey(#[from] ApiKeyError),
    /// Reading or writing the trust-on-first-use file failed.
    #[error("trust file {path}: {detail}")]
    TrustFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

impl From<DocumentError> for Error {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::IdentityMismatch { expected, found } => Error::ServerIdentityChanged { expected, found },
            other => Error::Document(other),
        }
    }
}

impl Error {
    /// True for errors worth retrying later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Timeout(_) | Error::ServerError | Error::RateLimited { .. })
            || matches!(self, Error::Http { status, .. } if *status >= 500)
    }
}
