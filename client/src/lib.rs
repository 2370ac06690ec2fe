//! # onetrip-client
//!
//! Gets short-lived, proof-of-possession tokens from an onetrip server in one
//! roundtrip, caches them, and signs requests to resource servers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), onetrip_client::Error> {
//! let client = onetrip_client::Client::builder()
//!     .server("http://127.0.0.1:7420")
//!     .api_key("otk_…")
//!     .pin("SHA256:…".parse().expect("fingerprint"))
//!     .audience("db")
//!     .scopes(["db:read"])
//!     .build()?;
//! let signed = client.sign_request("POST", "/query", b"select 1").await?;
//! // send `Authorization: {signed.authorization()}` and `Onetrip-PoP: {signed.pop()}`
//! # Ok(()) }
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`core`] | sans-IO state: trust, document, handshake, clock offset, token; responses → steps |
//! | [`client`] | async client (tokio + hyper): token cache, single flight, retries |
//! | [`blocking`] | the same for synchronous callers |
//! | [`token`] | the access token and the headers it signs |
//! | [`trust`] | pinning and trust on first use |
//! | [`otp`] | typed calls to the server's OTP API (create, check, resend, cancel, get) |
//! | [`error`] | typed, actionable errors |
//!
//! Resource servers verify tokens in-process with the re-exported
//! [`TokenVerifier`] (see `examples/db_driver.rs`). Over plain HTTP always send the
//! proof of possession; `Authorization: Bearer` without one is for TLS only.
//!
//! Databases take a [`LoginCredential`] as the password
//! ([`Client::login_credential`]) and check it with [`TokenVerifier::verify_login`].
//!
//! Features: `http` (default) is the HTTP client (`client`, `blocking`, `otp`:
//! hyper, tokio, rustls); `aws-lc` (default) or `rustcrypto` picks the crypto
//! backend. With `default-features = false, features = ["aws-lc"]` only the verifier
//! side and the sans-IO pieces remain, without any async runtime or HTTP stack.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "http")]
pub mod blocking;
#[cfg(feature = "http")]
pub mod client;
pub mod core;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "http")]
pub mod otp;
pub mod token;
#[cfg(feature = "http")]
mod transport;
pub mod trust;

#[cfg(feature = "http")]
pub use blocking::BlockingClient;
#[cfg(feature = "http")]
pub use client::{Client, ClientBuilder, Clock, IntoApiKey};
pub use error::Error;
/// The login credential format (PROTOCOL.md §14): constants and the sans-IO builder.
pub use onetrip_protocol::login;
pub use onetrip_protocol::{
    ApiKey, ApiKeyError, Channel, Claims, DefaultBackend, DocumentError, Fingerprint, KeyId, LoginError, PopError,
    PopProof, Secret, Token, TokenError, TokenVerifier, VerifiedLogin, LOGIN_CREDENTIAL_MAX_LEN, LOGIN_WINDOW_SECS,
};
#[cfg(feature = "http")]
pub use otp::{CheckResult, NewVerification, OtpChannel, Verification, VerificationStatus};
pub use token::{AccessToken, LoginCredential, SignedRequest, AUTHORIZATION_SCHEME, POP_HEADER};
pub use trust::Trust;
