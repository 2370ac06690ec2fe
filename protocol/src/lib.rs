//! # onetrip-protocol
//!
//! The sans-IO heart of onetrip: every byte that crosses the wire, every key
//! derivation, and the state machines of both handshake sides. No sockets, no clock
//! and no OS randomness are reached from here: callers pass a unix-seconds `now` and a
//! [`rand_core::CryptoRngCore`], so every run is reproducible and fuzzable.
//!
//! | module | job |
//! |---|---|
//! | [`secret`] | zeroizing, redacted, constant-time secret bytes |
//! | [`backend`] | the X25519 / ChaCha20-Poly1305 trait and its two backends |
//! | [`kdf`] | BLAKE3 key derivation and every domain-separation label |
//! | [`api_key`] | the `otk_…` API key string, the client static key and its verifier |
//! | [`server_key`] | the Ed25519-signed server key document and identity fingerprint |
//! | [`handshake`] | the one-roundtrip request/response, client and server state machines |
//! | [`token`] | fixed-size sealed tokens, per-audience keys, the `TokenVerifier` |
//! | [`pop`] | proof-of-possession signatures made with the session key |
//! | [`login`] | database login credentials: token and proof in one password string |
//! | `fuzzing` | (feature `fuzzing`) the properties the `fuzz/` targets check |
//!
//! The byte-level specification is `PROTOCOL.md` at the repository root; every
//! constant named there is a `pub const` here.
#![forbid(unsafe_code, unused_must_use)]
#![warn(missing_docs)]

#[cfg(not(any(feature = "rustcrypto", feature = "aws-lc")))]
compile_error!("enable at least one crypto backend feature: `aws-lc` or `rustcrypto`");

pub mod api_key;
pub mod backend;
mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod kdf;
pub mod login;
pub mod pop;
pub mod secret;
pub mod server_key;
pub mod token;

pub use api_key::{ApiKey, ApiKeyError, KeyId, Verifier};
pub use backend::{CryptoBackend, CryptoError, DefaultBackend};
pub use handshake::{
    client::{AwaitingResponse, ClientHandshake, HandshakeError, Outcome, TokenGrant},
    server::{Authenticated, OpenedRequest, RejectReason, Rejected, Reply, RequestError, Responder, StaticStatic},
    status::Status,
    Channel, ClientRequest, SecondFactor, WireError, REQUEST_LEN, RESPONSE_LEN,
};
pub use login::{
    login_credential, LoginError, VerifiedLogin, LOGIN_CREDENTIAL_MAX_LEN, LOGIN_NAME_MAX_LEN, LOGIN_NONCE_LEN,
    LOGIN_PREFIX, LOGIN_WINDOW_SECS,
};
pub use pop::{PopError, PopProof};
pub use secret::Secret;
pub use server_key::{DocumentError, Fingerprint, IdentityKey, ServerKeyDocument, ServerKeyEntry};
pub use token::{Claims, Token, TokenError, TokenKeyring, TokenVerifier, TOKEN_LEN};

/// Protocol version: the first byte of every message, token and proof. The server key
/// document has its own version, [`server_key::DOCUMENT_VERSION`].
pub const VERSION: u8 = 1;

/// Default accepted clock difference between client and server, in seconds.
pub const DEFAULT_CLOCK_WINDOW_SECS: u64 = 60;
