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
//!     .build()?;
//! let signed = client.sign_request("POST", "/query", b"select 1").await?;
//! // send `Authorization: {signed.authorization()}` and `Onetrip-PoP: {signed.pop()}`
//! # Ok(()) }
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`core`] | sans-IO state: trust, document, clock offset, responses → tokens |
//! | [`client`] | async client: token cache, single flight, one-time retries |
//! | [`blocking`] | the same for synchronous callers |
//! | [`trust`] | pinning and trust on first use |
//! | [`error`] | typed, actionable errors |
//!
//! Resource servers verify tokens in-process with the re-exported
//! [`TokenVerifier`] (see `examples/db_driver.rs`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
pub mod client;
pub mod core;
pub mod error;
mod transport;
pub mod trust;

pub use blocking::BlockingClient;
pub use client::{Client, ClientBuilder};
pub use core::{AccessToken, SignedRequest, AUTHORIZATION_SCHEME, POP_HEADER};
pub use error::Error;
pub use onetrip_protocol::{
    ApiKey, Claims, DefaultBackend, Fingerprint, PopProof, Secret, Token, TokenError, TokenVerifier,
};
