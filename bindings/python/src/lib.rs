//! # onetrip-python
//!
//! The native half (`onetrip._onetrip`) of the `onetrip` Python package: a thin
//! PyO3 layer over `onetrip-client`. No protocol logic lives here; this crate only
//! converts arguments, releases the GIL around network and crypto work, and maps
//! Rust errors to the exception classes of `onetrip._errors`.
//!
//! | module | job |
//! |---|---|
//! | [`client`] | `Client` (blocking, GIL released) and `_AsyncClient` (tokio futures as asyncio awaitables) |
//! | [`verifier`] | `TokenVerifier` and `Claims`: the resource-server side, in-process |
//! | [`errors`] | every `onetrip_client::Error` and `TokenError` → one Python exception class |
//! | [`convert`] | argument parsing shared by both: hex, fingerprints, audience keys, clock |
//!
//! The Python side (`python/onetrip/`) holds the exception classes, the coroutine
//! wrapper `AsyncClient`, and the type stubs.
// PyO3's macros expand to `unsafe` FFI glue; this crate itself writes none.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod convert;
pub mod errors;
pub mod verifier;

use pyo3::prelude::*;

/// `onetrip._onetrip`: the classes the `onetrip` package re-exports.
#[pymodule]
fn _onetrip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::AsyncClientCore>()?;
    m.add_class::<client::AccessToken>()?;
    m.add_class::<verifier::TokenVerifier>()?;
    m.add_class::<verifier::Claims>()?;
    m.add_class::<verifier::VerifiedLogin>()?;
    m.add("LOGIN_CREDENTIAL_MAX_LEN", onetrip_client::LOGIN_CREDENTIAL_MAX_LEN)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("AUTHORIZATION_SCHEME", onetrip_client::AUTHORIZATION_SCHEME)?;
    m.add("POP_HEADER", onetrip_client::POP_HEADER)?;
    Ok(())
}
