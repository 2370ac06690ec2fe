//! The client's typed errors. Every message says what failed and what to do about it;
//! none ever contains the API key, a token, a session key or a second-factor code
//! (the tests check `Display` and `Debug` of each against the key string).

use std::time::Duration;

use onetrip_protocol::{ApiKeyError, Channel, DocumentError, Fingerprint, HandshakeError, LoginError, PopError};

/// Everything that can go wrong getting or using a token.
///
/// `Clone` so that concurrent callers sharing one in-flight handshake each get the
/// same answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Unknown key, wrong secret or revoked key: the server deliberately does not say
    /// which. Never retried.
    #[error("authentication failed: the API key is unknown, wrong or revoked; check the key, or create a new one with `onetrip keys create`")]
    AuthFailed,
    /// The key needs a second factor: get the code sent over `channel` to
    /// `destination` and call `token_with_code(operation, code)`.
    #[error("a second factor is required: enter the code sent by {} to {destination} with token_with_code(operation, code)", .channel.as_str())]
    SecondFactorRequired {
        /// Operation id to pass back with the code (not secret).
        operation: [u8; 16],
        /// Where the code went.
        channel: Channel,
        /// Masked destination (e.g. `a***@example.com`), for showing to the user.
        destination: String,
    },
    /// The second-factor code was wrong, expired or already used.
    #[error("the second-factor code was not accepted ({attempts_left} attempts left): check the code, or call token() to get a new one")]
    SecondFactorFailed {
        /// Checks left on the operation.
        attempts_left: u8,
    },
    /// The key may not have the requested audience or scopes.
    #[error("the server refused the requested audience or scopes for this key: ask for fewer, or widen the key (`onetrip keys show`)")]
    ScopeDenied,
    /// The server's identity is not the pinned (or first-seen) one.
    #[error("server identity changed: expected {expected}, got {found}. If the operator rotated the identity key, update the pin (or delete the trust-on-first-use file); otherwise you may be talking to an impostor")]
    ServerIdentityChanged {
        /// The pinned or remembered fingerprint.
        expected: Fingerprint,
        /// The fingerprint the server presented.
        found: Fingerprint,
    },
    /// The server (HTTP 429 or the signed `rate_limited` answer) asks to slow down.
    #[error("rate limited by the onetrip server: retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait before trying again (an HTTP `Retry-After` is capped at
        /// an hour).
        retry_after: Duration,
    },
    /// Still `clock_skew` after adjusting the clock offset once.
    #[error("the server still reports clock skew after one correction: fix the system clock (NTP)")]
    ClockSkew,
    /// Still `server_key_changed` after refetching the server key document once.
    #[error("the server still reports a changed handshake key after one refetch of its key document: retry later")]
    ServerKeyChanged,
    /// The server could not complete the handshake (e.g. its storage failed).
    #[error("the onetrip server could not complete the handshake (server error): retry later")]
    ServerError,
    /// The server could not read the decrypted request (version skew or client bug).
    #[error("the onetrip server reports the request as malformed: update onetrip-client to the server's version")]
    Malformed,
    /// A handshake message was invalid: altered in transit, or not from this server.
    #[error("handshake failed: {0}; if this persists, something between you and the server alters traffic")]
    Protocol(HandshakeError),
    /// The server key document is invalid (not signed by its identity, or unusable).
    #[error("server key document rejected: {0}")]
    Document(DocumentError),
    /// Could not reach the server (connection refused, reset, TLS failure, …).
    #[error("cannot reach the onetrip server: {0}; check the server URL and that the server runs")]
    Transport(String),
    /// The server did not answer within the per-request timeout.
    #[error("the onetrip server did not answer within {0:?}: check the network, or raise .timeout(..)")]
    Timeout(Duration),
    /// The server answered with an HTTP error (`application/problem+json`).
    #[error("onetrip server answered HTTP {status} ({code}): {detail}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The problem's machine-readable `code` (`unknown` when absent).
        code: String,
        /// The problem's `detail` (or `title`).
        detail: String,
    },
    /// The client is misconfigured; the message names the setting.
    #[error("onetrip client configuration: {0}")]
    Config(String),
    /// A request field does not fit the protocol (audience, scopes or code too long,
    /// bad characters).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The API key string is invalid (the message never repeats it).
    #[error("invalid API key: {0}")]
    InvalidApiKey(#[from] ApiKeyError),
    /// Reading or writing the trust-on-first-use file failed.
    #[error("trust file {path}: {detail}")]
    TrustFile {
        /// The file.
        path: String,
        /// What went wrong and what to do.
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

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Document(d) => d.into(),
            HandshakeError::InvalidRequest(what) => Error::InvalidRequest(what),
            other => Error::Protocol(other),
        }
    }
}

impl From<PopError> for Error {
    fn from(e: PopError) -> Self {
        match e {
            PopError::TooLong => Error::InvalidRequest("method or path too long to sign"),
            _ => Error::InvalidRequest("cannot sign the request"),
        }
    }
}

impl From<LoginError> for Error {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::NameTooLong => Error::InvalidRequest("user or database name longer than 255 bytes"),
            _ => Error::InvalidRequest("cannot make the login credential"),
        }
    }
}

impl Error {
    /// True for errors worth retrying later without changing anything (the client
    /// has already retried transport errors and 503 itself).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Timeout(_) | Error::ServerError | Error::RateLimited { .. })
            || matches!(self, Error::Http { status, .. } if *status >= 500)
    }

    /// True for errors the client retries itself with backoff: transport failures,
    /// timeouts and HTTP 503. Protocol answers are never in this set.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Timeout(_) | Error::Http { status: 503, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_mismatch_becomes_server_identity_changed() {
        let a: Fingerprint = "SHA256:WuyQi83biVkgNAgEKEsu1A2ovrUtjbLGvRho3SOX3MY".parse().unwrap();
        let b = Fingerprint::of(&[9; 32]);
        let e = Error::from(HandshakeError::Document(DocumentError::IdentityMismatch { expected: a, found: b }));
        let shown = e.to_string();
        assert!(shown.contains(&a.to_string()) && shown.contains(&b.to_string()), "{shown}");
        assert!(matches!(e, Error::ServerIdentityChanged { .. }));
    }

    #[test]
    fn only_transport_timeouts_and_503_are_transient() {
        assert!(Error::Transport("reset".into()).is_transient());
        assert!(Error::Timeout(Duration::from_secs(1)).is_transient());
        let http = |status| Error::Http { status, code: "x".into(), detail: "y".into() };
        assert!(http(503).is_transient());
        for e in [http(500), http(400), Error::AuthFailed, Error::ServerError, Error::ClockSkew] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
