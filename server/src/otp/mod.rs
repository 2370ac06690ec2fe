//! One-time passwords: the second factor of a step-up handshake and the standalone
//! OTP API for services that verify their own users.
//!
//! | module | job |
//! |---|---|
//! | [`verification`](Verification) | the verification state machine: codes, keyed hashes, attempts, resends |
//! | [`service`] | OTP operations shared by step-up and the API: store transitions, delivery, audit |
//! | [`api`] | `/v1/otp/*`: the JSON API and its OpenAPI document |
//! | [`lockout`] | wrong codes counted per key and per TOTP account, across verifications |
//! | [`totp`] | RFC 6238 authenticator codes: secrets, verification with replay rule, enrolment URI/QR |
//! | [`delivery`] | sending codes: SMTP, signed webhook, console; retries with backoff |

pub mod api;
pub mod delivery;
pub mod lockout;
pub mod metrics;
pub mod service;
pub mod totp;
mod verification;

pub use verification::*;
