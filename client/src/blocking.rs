//! A blocking wrapper for callers without an async runtime (e.g. synchronous
//! database drivers): the async client driven by its own current-thread runtime,
//! with the same builder, cache, single flight and retries.

use crate::client::{Client, ClientBuilder};
use crate::error::Error;
use crate::token::{AccessToken, LoginCredential, SignedRequest};

/// Blocking onetrip client. Cheap to share by reference across threads; calls from
/// inside an async runtime are refused (use [`Client`] there).
#[derive(Debug)]
pub struct BlockingClient {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl BlockingClient {
    /// Builds from the same builder as the async client.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`], or [`Error::Config`] when the runtime cannot start.
    pub fn build(builder: ClientBuilder) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start a runtime for the blocking client: {e}")))?;
        // The connection pool spawns onto the runtime it is created in.
        let guard = runtime.enter();
        let client = builder.build()?;
        drop(guard);
        Ok(Self { client, runtime })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Config(
                "BlockingClient was called from inside an async runtime, where blocking would stall it: use onetrip_client::Client there".into(),
            ));
        }
        self.runtime.block_on(f)
    }

    /// See [`Client::token`].
    ///
    /// # Errors
    /// As [`Client::token`].
    pub fn token(&self) -> Result<AccessToken, Error> {
        self.block_on(self.client.token())
    }

    /// See [`Client::token_with_code`].
    ///
    /// # Errors
    /// As [`Client::token_with_code`].
    pub fn token_with_code(&self, operation: [u8; 16], code: &str) -> Result<AccessToken, Error> {
        self.block_on(self.client.token_with_code(operation, code))
    }

    /// See [`Client::sign_request`].
    ///
    /// # Errors
    /// As [`Client::sign_request`].
    pub fn sign_request(&self, method: &str, path: &str, body: &[u8]) -> Result<SignedRequest, Error> {
        self.block_on(self.client.sign_request(method, path, body))
    }

    /// See [`Client::login_credential`].
    ///
    /// # Errors
    /// As [`Client::login_credential`].
    pub fn login_credential(&self, user: &str, database: Option<&str>) -> Result<LoginCredential, Error> {
        self.block_on(self.client.login_credential(user, database))
    }

    /// See [`Client::otp_create`].
    ///
    /// # Errors
    /// As [`Client::otp_create`].
    pub fn otp_create(&self, new: &crate::NewVerification) -> Result<crate::Verification, Error> {
        self.block_on(self.client.otp_create(new))
    }

    /// See [`Client::otp_check`].
    ///
    /// # Errors
    /// As [`Client::otp_check`].
    pub fn otp_check(&self, id: &str, code: &str) -> Result<crate::CheckResult, Error> {
        self.block_on(self.client.otp_check(id, code))
    }

    /// See [`Client::otp_resend`].
    ///
    /// # Errors
    /// As [`Client::otp_resend`].
    pub fn otp_resend(&self, id: &str) -> Result<crate::Verification, Error> {
        self.block_on(self.client.otp_resend(id))
    }

    /// See [`Client::otp_cancel`].
    ///
    /// # Errors
    /// As [`Client::otp_cancel`].
    pub fn otp_cancel(&self, id: &str) -> Result<crate::Verification, Error> {
        self.block_on(self.client.otp_cancel(id))
    }

    /// See [`Client::otp_get`].
    ///
    /// # Errors
    /// As [`Client::otp_get`].
    pub fn otp_get(&self, id: &str) -> Result<crate::Verification, Error> {
        self.block_on(self.client.otp_get(id))
    }

    /// See [`Client::invalidate`].
    pub fn invalidate(&self) {
        self.client.invalidate();
    }

    /// Handshake requests sent so far, retries included.
    pub fn handshakes(&self) -> u64 {
        self.client.handshakes()
    }
}
