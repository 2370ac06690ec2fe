//! The status codes every entry point returns, and the one place where each error
//! of the client and protocol crates is given its code. The mapping is deliberate:
//! one code per thing a C caller would do differently (retry, ask for a code, fix a
//! pin, fix the clock, get a new token); the message says the rest.

use onetrip_client::{Error, LoginError, PopError, TokenError};

use crate::boundary::FfiError;

/// What a call did. `ONETRIP_STATUS_OK` is 0; every other value is a failure whose
/// message `onetrip_last_error()` returns on the same thread. Values are stable:
/// new codes are only ever appended.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum onetrip_status {
    /// Success.
    Ok = 0,
    /// An argument is malformed (not UTF-8, bad fingerprint, bad API key, audience or
    /// scopes that do not fit, a handle used out of order). Fix the call.
    InvalidArgument = 1,
    /// A required pointer argument was NULL.
    NullPointer = 2,
    /// The output buffer is too small; the length out-parameter holds the length
    /// needed (without the NUL).
    BufferTooSmall = 3,
    /// The API key is unknown, wrong or revoked (the server does not say which).
    AuthFailed = 4,
    /// The key needs a second factor: `onetrip_last_operation` gives the operation,
    /// the message says where the code went; finish with
    /// `onetrip_client_token_with_code`.
    SecondFactorRequired = 5,
    /// The second-factor code was wrong, expired or already used.
    SecondFactorFailed = 6,
    /// The key may not have the requested audience or scopes.
    ScopeDenied = 7,
    /// The server's identity is not the pinned one: update the pin, or suspect an
    /// impostor.
    ServerIdentityChanged = 8,
    /// The server still reports clock skew after one correction, or a token or proof
    /// is dated in the future / outside the window: fix the clock (NTP).
    ClockSkew = 9,
    /// The server asks to slow down; the message says for how long.
    RateLimited = 10,
    /// The server cannot be reached, timed out, failed internally, or answered 5xx:
    /// retry later.
    Unavailable = 11,
    /// The server answered something this client cannot use (altered traffic,
    /// version skew, a forged or unusable key document).
    Protocol = 12,
    /// The server answered with an HTTP error other than 5xx.
    Http = 13,
    /// A token is malformed, forged, altered, for another audience, or sealed under a
    /// key the verifier does not hold.
    TokenInvalid = 14,
    /// A token is past its expiry: get a new one.
    TokenExpired = 15,
    /// A proof of possession does not match the request (method, path, body or
    /// session key).
    PopInvalid = 16,
    /// Sans-IO handshake: the clock offset was corrected; call
    /// `onetrip_handshake_begin` again.
    Retry = 17,
    /// Sans-IO handshake: fetch the server key document (`GET /v1/server-key`), pass
    /// it to `onetrip_handshake_accept_document`, then begin again.
    DocumentRequired = 18,
    /// A login credential was refused (malformed, forged, for another user,
    /// database or audience, outside its window).
    LoginInvalid = 19,
    /// A Rust panic was caught at the boundary. A bug: report it; drop the handle.
    Panic = 20,
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::AuthFailed => onetrip_status::AuthFailed,
            Error::SecondFactorRequired { operation, .. } => {
                return FfiError {
                    status: onetrip_status::SecondFactorRequired,
                    message: e.to_string(),
                    operation: Some(*operation),
                }
            }
            Error::SecondFactorFailed { .. } => onetrip_status::SecondFactorFailed,
            Error::ScopeDenied => onetrip_status::ScopeDenied,
            Error::ServerIdentityChanged { .. } => onetrip_status::ServerIdentityChanged,
            Error::RateLimited { .. } => onetrip_status::RateLimited,
            Error::ClockSkew => onetrip_status::ClockSkew,
            // Both mean "the server could not finish; nothing to change here".
            Error::ServerKeyChanged | Error::ServerError => onetrip_status::Unavailable,
            Error::Transport(_) | Error::Timeout(_) => onetrip_status::Unavailable,
            Error::Http { status, .. } if *status >= 500 => onetrip_status::Unavailable,
            Error::Http { .. } => onetrip_status::Http,
            Error::Malformed | Error::Protocol(_) | Error::Document(_) => onetrip_status::Protocol,
            Error::Config(_) | Error::InvalidRequest(_) | Error::InvalidApiKey(_) | Error::TrustFile { .. } => {
                onetrip_status::InvalidArgument
            }
            // A variant added to the client after this mapping: its message still
            // says what happened.
            _ => onetrip_status::Protocol,
        };
        FfiError::new(status, e.to_string())
    }
}

impl From<TokenError> for FfiError {
    fn from(e: TokenError) -> Self {
        let status = match &e {
            TokenError::Expired { .. } => onetrip_status::TokenExpired,
            TokenError::NotYetValid { .. } => onetrip_status::ClockSkew,
            TokenError::Pop(PopError::Stale { .. }) => onetrip_status::ClockSkew,
            TokenError::Pop(PopError::TooLong) => onetrip_status::InvalidArgument,
            TokenError::Pop(_) => onetrip_status::PopInvalid,
            TokenError::Length
            | TokenError::Encoding
            | TokenError::Version(_)
            | TokenError::UnknownKey
            | TokenError::WrongAudience
            | TokenError::Invalid
            | TokenError::Malformed => onetrip_status::TokenInvalid,
            // Only when building a verifier: the arguments are wrong.
            TokenError::ClaimsTooLong(_) | TokenError::NoKey | TokenError::ReservedAudience => {
                onetrip_status::InvalidArgument
            }
            _ => onetrip_status::TokenInvalid,
        };
        FfiError::new(status, e.to_string())
    }
}

impl From<LoginError> for FfiError {
    fn from(e: LoginError) -> Self {
        let status = match &e {
            LoginError::Expired { .. } => onetrip_status::TokenExpired,
            LoginError::ClockWindow { .. } => onetrip_status::ClockSkew,
            LoginError::NameTooLong => onetrip_status::InvalidArgument,
            LoginError::Token(t) => return t.clone().into(),
            // Malformed, forged, for another user, database or audience: one code, as
            // the verifier cannot tell "another user" from "altered".
            _ => onetrip_status::LoginInvalid,
        };
        FfiError::new(status, e.to_string())
    }
}

impl From<PopError> for FfiError {
    fn from(e: PopError) -> Self {
        TokenError::Pop(e).into()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_client_error_gets_its_own_actionable_code() {
        let cases = [
            (Error::AuthFailed, onetrip_status::AuthFailed),
            (Error::SecondFactorFailed { attempts_left: 2 }, onetrip_status::SecondFactorFailed),
            (Error::ScopeDenied, onetrip_status::ScopeDenied),
            (Error::RateLimited { retry_after: Duration::from_secs(3) }, onetrip_status::RateLimited),
            (Error::ClockSkew, onetrip_status::ClockSkew),
            (Error::ServerError, onetrip_status::Unavailable),
            (Error::ServerKeyChanged, onetrip_status::Unavailable),
            (Error::Transport("refused".into()), onetrip_status::Unavailable),
            (Error::Timeout(Duration::from_secs(1)), onetrip_status::Unavailable),
            (Error::Http { status: 503, code: "x".into(), detail: "y".into() }, onetrip_status::Unavailable),
            (Error::Http { status: 404, code: "x".into(), detail: "y".into() }, onetrip_status::Http),
            (Error::Malformed, onetrip_status::Protocol),
            (Error::Config("c".into()), onetrip_status::InvalidArgument),
            (Error::InvalidRequest("r"), onetrip_status::InvalidArgument),
        ];
        for (error, status) in cases {
            let shown = error.to_string();
            let ffi = FfiError::from(error);
            assert_eq!(ffi.status, status, "{shown}");
            assert_eq!(ffi.message, shown);
            assert!(ffi.operation.is_none());
        }
    }

    #[test]
    fn second_factor_required_carries_its_operation() {
        let e = Error::SecondFactorRequired {
            operation: [7; 16],
            channel: onetrip_client::Channel::Console,
            destination: "c***".into(),
        };
        let ffi = FfiError::from(e);
        assert_eq!(ffi.status, onetrip_status::SecondFactorRequired);
        assert_eq!(ffi.operation, Some([7; 16]));
    }

    #[test]
    fn token_errors_separate_expiry_clock_and_forgery() {
        assert_eq!(FfiError::from(TokenError::Expired { expires_at: 1 }).status, onetrip_status::TokenExpired);
        assert_eq!(FfiError::from(TokenError::NotYetValid { issued_at: 1 }).status, onetrip_status::ClockSkew);
        assert_eq!(FfiError::from(PopError::Stale { timestamp: 1, now: 99 }).status, onetrip_status::ClockSkew);
        assert_eq!(FfiError::from(PopError::BadSignature).status, onetrip_status::PopInvalid);
        for e in [TokenError::Invalid, TokenError::WrongAudience, TokenError::UnknownKey, TokenError::Length] {
            assert_eq!(FfiError::from(e).status, onetrip_status::TokenInvalid);
        }
        assert_eq!(FfiError::from(TokenError::NoKey).status, onetrip_status::InvalidArgument);
    }

    #[test]
    fn login_errors_separate_expiry_clock_names_and_forgery() {
        assert_eq!(FfiError::from(LoginError::Expired { expires_at: 1 }).status, onetrip_status::TokenExpired);
        let window = LoginError::ClockWindow { timestamp: 1, now: 999 };
        assert_eq!(FfiError::from(window).status, onetrip_status::ClockSkew);
        assert_eq!(FfiError::from(LoginError::NameTooLong).status, onetrip_status::InvalidArgument);
        for e in [LoginError::BadProof, LoginError::Prefix, LoginError::WrongAudience, LoginError::Encoding] {
            assert_eq!(FfiError::from(e).status, onetrip_status::LoginInvalid);
        }
        assert_eq!(FfiError::from(LoginError::Token(TokenError::Invalid)).status, onetrip_status::TokenInvalid);
    }
}
