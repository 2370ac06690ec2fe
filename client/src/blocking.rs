//! A blocking wrapper for callers without an async runtime (e.g. synchronous
//! database drivers): the async client driven by its own current-thread runtime.

use crate::client::{Client, ClientBuilder};
use crate::core::{AccessToken, SignedRequest};
use crate::error::Error;

/// Blocking onetrip client. Do not use from inside an async runtime.
#[derive(Debug)]
pub struct BlockingClient {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl BlockingClient {
    /// Builds from the same builder as the async client.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`], or when the runtime cannot start.
    pub fn build(builder: ClientBuilder) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start a runtime: {e}")))?;
        // hyper's pool needs the runtime when the client is created.
        let client = runtime.block_on(async { builder.build() })?;
        Ok(Self { client, runtime })
    }

    /// See [`Client::token`].
    ///
    /// # Errors
    /// As [`Client::token`].
    pub fn token(&self) -> Result<AccessToken, Error> {
        self.runtime.block_on(self.client.token())
    }

    /// See [`Client::token_with_code`].
    ///
    /// # Errors
    /// As [`Client::token_with_code`].
    pub fn token_with_code(&self, operation: [u8; 16], code: &str) -> Result<AccessToken, Error> {
        self.runtime.block_on(self.client.token_with_code(operation, code))
    }

    /// See [`Client::sign_request`].
    ///
    /// # Errors
    /// As [`Client::sign_request`].
    pub fn sign_request(&self, method: &str, path: &str, body: &[u8]) -> Result<SignedRequest, Error> {
        self.runtime.block_on(self.client.sign_request(method, path, body))
    }

    /// Handshakes sent so far.
    pub fn handshakes(&self) -> u64 {
        self.client.handshakes()
    }
}
