//! Rust errors → Python exceptions. The classes live in `onetrip/_errors.py`
//! (attributes, multiple inheritance such as `Timeout(Unavailable, TimeoutError)`,
//! docstrings); this module decides which class each Rust variant becomes.
//!
//! Every `PyErr` built here is lazy (class + argument tuple, both `Send`), so the
//! async client can fail inside a tokio task without holding the GIL. Messages are
//! the Rust `Display` texts, which never contain a key, token or code.

use onetrip_client::Error as ClientError;
use onetrip_client::{LoginError, PopError, TokenError};
use pyo3::PyErr;

use crate::convert::hex;

pyo3::import_exception!(onetrip._errors, Error);
pyo3::import_exception!(onetrip._errors, AuthFailed);
pyo3::import_exception!(onetrip._errors, SecondFactorRequired);
pyo3::import_exception!(onetrip._errors, SecondFactorFailed);
pyo3::import_exception!(onetrip._errors, ScopeDenied);
pyo3::import_exception!(onetrip._errors, ServerIdentityChanged);
pyo3::import_exception!(onetrip._errors, ClockSkew);
pyo3::import_exception!(onetrip._errors, Unavailable);
pyo3::import_exception!(onetrip._errors, Timeout);
pyo3::import_exception!(onetrip._errors, RateLimited);
pyo3::import_exception!(onetrip._errors, ProtocolError);
pyo3::import_exception!(onetrip._errors, HttpError);
pyo3::import_exception!(onetrip._errors, InvalidInput);
pyo3::import_exception!(onetrip._errors, TrustFileError);
pyo3::import_exception!(onetrip._errors, InvalidToken);

/// One deliberate Python class per client error. `onetrip_client::Error` is
/// `#[non_exhaustive]`: a variant added later surfaces as the base `onetrip.Error`
/// until it gets its own arm here.
pub fn client_error(e: ClientError) -> PyErr {
    let msg = e.to_string();
    match e {
        // Unknown, wrong or revoked key: the server never says which.
        ClientError::AuthFailed => AuthFailed::new_err((msg,)),
        ClientError::SecondFactorRequired { operation, channel, destination } => {
            SecondFactorRequired::new_err((msg, hex(&operation), channel.as_str(), destination))
        }
        ClientError::SecondFactorFailed { attempts_left } => SecondFactorFailed::new_err((msg, attempts_left)),
        ClientError::ScopeDenied => ScopeDenied::new_err((msg,)),
        ClientError::ServerIdentityChanged { expected, found } => {
            ServerIdentityChanged::new_err((msg, expected.to_string(), found.to_string()))
        }
        ClientError::ClockSkew => ClockSkew::new_err((msg,)),
        ClientError::RateLimited { retry_after } => RateLimited::new_err((msg, retry_after.as_secs_f64())),
        ClientError::Timeout(_) => Timeout::new_err((msg,)),
        // Worth retrying later with nothing changed: the server or the path to it.
        ClientError::Transport(_) | ClientError::ServerError | ClientError::ServerKeyChanged => {
            Unavailable::new_err((msg,))
        }
        ClientError::Http { status, .. } if status >= 500 => Unavailable::new_err((msg,)),
        ClientError::Http { status, code, detail } => HttpError::new_err((msg, status, code, detail)),
        // Altered traffic, an impostor's document, or version skew: not retryable.
        ClientError::Protocol(_) | ClientError::Document(_) | ClientError::Malformed => ProtocolError::new_err((msg,)),
        ClientError::Config(_) | ClientError::InvalidRequest(_) | ClientError::InvalidApiKey(_) => {
            InvalidInput::new_err((msg,))
        }
        ClientError::TrustFile { path, .. } => TrustFileError::new_err((msg, path)),
        _ => Error::new_err((msg,)),
    }
}

/// The stable `reason` code of a refused token or proof (`InvalidToken.reason`).
pub fn token_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Length => "length",
        TokenError::Encoding => "encoding",
        TokenError::Version(_) => "version",
        TokenError::UnknownKey => "unknown_key",
        TokenError::WrongAudience => "wrong_audience",
        TokenError::Invalid => "invalid",
        TokenError::Malformed => "malformed",
        TokenError::Expired { .. } => "expired",
        TokenError::NotYetValid { .. } => "not_yet_valid",
        TokenError::Pop(p) => pop_reason(p),
        _ => "invalid",
    }
}

/// The stable `reason` code of a refused proof of possession.
pub fn pop_reason(e: &PopError) -> &'static str {
    match e {
        PopError::Stale { .. } => "pop_stale",
        PopError::BadSignature => "pop_signature",
        _ => "pop_malformed",
    }
}

/// A refused token (verifier side): `InvalidToken(message, reason)`.
pub fn token_error(e: TokenError) -> PyErr {
    InvalidToken::new_err((e.to_string(), token_reason(&e)))
}

/// A malformed `Onetrip-PoP` header.
pub fn pop_error(e: PopError) -> PyErr {
    InvalidToken::new_err((e.to_string(), pop_reason(&e)))
}

/// The stable `reason` code of a refused login credential.
pub fn login_reason(e: &LoginError) -> &'static str {
    match e {
        LoginError::TooLong => "too_long",
        LoginError::Prefix => "prefix",
        LoginError::Length => "length",
        LoginError::Encoding => "encoding",
        LoginError::NameTooLong => "name_too_long",
        LoginError::WrongAudience => "wrong_audience",
        LoginError::Expired { .. } => "expired",
        LoginError::ClockWindow { .. } => "clock_window",
        // Another user, another database, or altered: bound in the MAC, so the
        // verifier cannot tell which.
        LoginError::BadProof => "bad_proof",
        LoginError::Token(t) => token_reason(t),
        _ => "invalid",
    }
}

/// A refused login credential (verifier side): `InvalidToken(message, reason)`.
pub fn login_error(e: LoginError) -> PyErr {
    InvalidToken::new_err((e.to_string(), login_reason(&e)))
}
