//! `onetrip_handshake_*`: the client handshake without I/O, for a database that
//! carries onetrip's bytes over its own wire protocol. The caller moves three
//! messages: the server key document (`GET /v1/server-key`, once, and again when
//! asked), the `ONETRIP_REQUEST_LEN`-byte request and the `ONETRIP_RESPONSE_LEN`-byte
//! response (`POST /v1/auth`). This is `onetrip_client::core::ClientCore` with the
//! system clock and the OS CSPRNG plugged in; the loop is the one its docs show.

use std::ffi::c_char;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use onetrip_client::core::{ClientCore, Flight, Pending, Step};
use onetrip_client::trust::TrustAnchor;
use onetrip_client::{ApiKey, DefaultBackend, Fingerprint};
use onetrip_protocol::SecondFactor;
use zeroize::Zeroizing;

use crate::boundary::{self, guard, FfiError};
use crate::client::write_signed;
use crate::status::onetrip_status;
use crate::{ONETRIP_OPERATION_LEN, ONETRIP_REQUEST_LEN};

/// One client's handshake state (server document, clock offset, current token) for
/// one API key. Calls are serialised by a lock, so the handle may be shared between
/// threads, but a begin/complete pair is one conversation: run one at a time.
/// Create with `onetrip_handshake_new`, free with `onetrip_handshake_free`.
pub struct onetrip_handshake {
    state: Mutex<State>,
}

struct State {
    core: ClientCore,
    /// The request sent and not yet answered.
    pending: Option<Pending>,
    /// The one document refetch and one clock correction of the current token call.
    flight: Flight,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl onetrip_handshake {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock was reported as PANIC; the state's fields
        // are each assigned whole, so continuing is safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates handshake state for `api_key`, trusting only the identity `pin`
/// (`"SHA256:…"`), asking for `audience` and space-separated `scopes` (NULL: the
/// server's default audience, all of the key's scopes). No I/O.
///
/// On `ONETRIP_STATUS_OK`, `*out` holds a handle freed with `onetrip_handshake_free`.
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_new(
    api_key: *const c_char,
    pin: *const c_char,
    audience: *const c_char,
    scopes: *const c_char,
    out: *mut *mut onetrip_handshake,
) -> onetrip_status {
    guard(|| {
        boundary::require_out(out, "out")?;
        // SAFETY: the caller's contract covers every string argument.
        let (api_key, pin, audience, scopes) = unsafe {
            (
                boundary::text(api_key, "api_key")?,
                boundary::text(pin, "pin")?,
                boundary::optional_text(audience, "audience")?,
                boundary::optional_text(scopes, "scopes")?,
            )
        };
        let api_key = ApiKey::parse(api_key).map_err(onetrip_client::Error::from)?;
        let pin: Fingerprint = pin.parse().map_err(|e| FfiError::invalid(format!("pin: {e}")))?;
        let scopes = scopes.unwrap_or_default().split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
        let core = ClientCore::new(
            DefaultBackend::default(),
            api_key,
            TrustAnchor::Pinned(pin),
            audience.unwrap_or_default().to_owned(),
            scopes,
        );
        let state = State { core, pending: None, flight: Flight::default() };
        // SAFETY: `out` checked non-NULL above; writable per the caller's contract.
        unsafe { boundary::give(out, onetrip_handshake { state: Mutex::new(state) }) }
    })
}

/// Frees handshake state (NULL is a no-op); the API key copy and any token are wiped.
///
/// # Safety
/// `handshake` is NULL or a handle from `onetrip_handshake_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_free(handshake: *mut onetrip_handshake) {
    // SAFETY: the caller hands back ownership of a handle from onetrip_handshake_new.
    boundary::guard_void(|| unsafe { boundary::take(handshake) });
}

/// Checks and adopts a server key document (the body of `GET /v1/server-key`):
/// its signature, and its identity against the pin.
///
/// `ONETRIP_STATUS_SERVER_IDENTITY_CHANGED` when it is signed by another identity;
/// `ONETRIP_STATUS_PROTOCOL` when it is malformed, forged or expired.
///
/// # Safety
/// `handshake` is a live handle; `document` has `document_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_accept_document(
    handshake: *const onetrip_handshake,
    document: *const u8,
    document_len: usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers both pointers.
        let (handshake, document) = unsafe {
            (boundary::handle(handshake, "handshake")?, boundary::bytes(document, document_len, "document")?)
        };
        let mut state = handshake.lock();
        let checked = state.core.check_document(document)?;
        state.core.accept_document(checked, now())?;
        Ok(())
    })
}

/// Writes a handshake request (`ONETRIP_REQUEST_LEN` bytes) into `request`, to be
/// sent as the body of `POST /v1/auth`; `complete` reads the answer.
///
/// `operation` (`operation_len` = `ONETRIP_OPERATION_LEN` bytes) and `code` answer a
/// `ONETRIP_STATUS_SECOND_FACTOR_REQUIRED`; pass NULL, 0, NULL otherwise.
///
/// `ONETRIP_STATUS_DOCUMENT_REQUIRED` when no valid document is held: fetch one and
/// call `onetrip_handshake_accept_document` first.
///
/// # Safety
/// `handshake` is a live handle; `operation` is NULL or has `operation_len` readable
/// bytes; `code` is NULL or NUL-terminated; `request` has `request_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_begin(
    handshake: *const onetrip_handshake,
    operation: *const u8,
    operation_len: usize,
    code: *const c_char,
    request: *mut u8,
    request_len: usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (handshake, operation, code) = unsafe {
            (
                boundary::handle(handshake, "handshake")?,
                boundary::bytes(operation, operation_len, "operation")?,
                boundary::optional_text(code, "code")?,
            )
        };
        boundary::require_out(request, "request")?;
        if request_len < ONETRIP_REQUEST_LEN {
            return Err(FfiError::new(
                onetrip_status::BufferTooSmall,
                format!("the request buffer needs {ONETRIP_REQUEST_LEN} bytes, it has {request_len}"),
            ));
        }
        let operation: Option<[u8; ONETRIP_OPERATION_LEN]> = match (operation.is_empty(), code) {
            (true, None) => None,
            (false, Some(_)) => Some(
                operation
                    .try_into()
                    .map_err(|_| FfiError::invalid(format!("operation must be {ONETRIP_OPERATION_LEN} bytes")))?,
            ),
            _ => return Err(FfiError::invalid("give both operation and code, or neither")),
        };
        let second_factor = operation.as_ref().zip(code).map(|(op, code)| SecondFactor { operation: *op, code });
        let mut state = handshake.lock();
        let now = now();
        if state.core.needs_document(now) {
            return Err(FfiError::new(
                onetrip_status::DocumentRequired,
                "no valid server key document: fetch GET /v1/server-key and pass it to onetrip_handshake_accept_document",
            ));
        }
        let (bytes, pending) = state.core.begin(now, &mut rand_core::OsRng, second_factor)?;
        let bytes = Zeroizing::new(bytes);
        state.pending = Some(pending);
        // SAFETY: non-NULL with at least ONETRIP_REQUEST_LEN writable bytes (checked).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), request, ONETRIP_REQUEST_LEN) };
        Ok(())
    })
}

/// Reads the answer to the last `begin` (the 200 body of `POST /v1/auth`).
///
/// - `ONETRIP_STATUS_OK`: a token was granted; read it with `onetrip_handshake_token`
///   or sign with `onetrip_handshake_sign_request`.
/// - `ONETRIP_STATUS_RETRY`: the clock was corrected from the server's signed time:
///   `begin` again.
/// - `ONETRIP_STATUS_DOCUMENT_REQUIRED`: the server's key changed: fetch and accept
///   the document, then `begin` again.
/// - any refusal (`AUTH_FAILED`, `SECOND_FACTOR_REQUIRED`, …) as for the client.
///
/// # Safety
/// `handshake` is a live handle; `response` has `response_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_complete(
    handshake: *const onetrip_handshake,
    response: *const u8,
    response_len: usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers both pointers.
        let (handshake, response) = unsafe {
            (boundary::handle(handshake, "handshake")?, boundary::bytes(response, response_len, "response")?)
        };
        let mut state = handshake.lock();
        let pending =
            state.pending.take().ok_or_else(|| FfiError::invalid("no request is waiting: call begin first"))?;
        let State { core, flight, .. } = &mut *state;
        let step = core.complete(flight, pending, response, now());
        match step {
            Ok(Step::Granted(_)) => {
                state.flight = Flight::default();
                Ok(())
            }
            Ok(Step::RetryWithClock) => Err(FfiError::new(
                onetrip_status::Retry,
                "the server corrected this client's clock: call onetrip_handshake_begin again",
            )),
            Ok(Step::RefetchDocument) => Err(FfiError::new(
                onetrip_status::DocumentRequired,
                "the server's handshake key changed: fetch GET /v1/server-key, accept it, and begin again",
            )),
            Ok(_) => Err(FfiError::new(onetrip_status::Protocol, "unexpected handshake step")),
            Err(e) => {
                state.flight = Flight::default();
                Err(e.into())
            }
        }
    })
}

/// Writes the current token's `Authorization` value (`Onetrip <token>`) as
/// `onetrip_client_token` does. `ONETRIP_STATUS_INVALID_ARGUMENT` when no token is
/// held or it is past 80% of its lifetime: run the handshake again.
///
/// # Safety
/// `handshake` is a live handle; `buf` is NULL or has `buf_len` writable bytes;
/// `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_handshake_token(
    handshake: *const onetrip_handshake,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller promises a live handle or NULL.
        let handshake = unsafe { boundary::handle(handshake, "handshake")? };
        let token = handshake.lock().core.fresh_token(now()).ok_or_else(no_token)?;
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { boundary::write_text(&token.authorization(), buf, buf_len, out_len, "the authorization buffer") }
    })
}

/// Signs a request with the current token, as `onetrip_client_sign_request` does
/// (same buffers), without any I/O. `ONETRIP_STATUS_INVALID_ARGUMENT` when no fresh
/// token is held.
///
/// # Safety
/// As `onetrip_client_sign_request`, with a live `handshake` handle.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn onetrip_handshake_sign_request(
    handshake: *const onetrip_handshake,
    method: *const c_char,
    path: *const c_char,
    body: *const u8,
    body_len: usize,
    authorization: *mut c_char,
    authorization_len: usize,
    pop: *mut c_char,
    pop_len: usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (handshake, method, path, body) = unsafe {
            (
                boundary::handle(handshake, "handshake")?,
                boundary::text(method, "method")?,
                boundary::text(path, "path")?,
                boundary::bytes(body, body_len, "body")?,
            )
        };
        boundary::require_out(authorization, "authorization")?;
        boundary::require_out(pop, "pop")?;
        let now = now();
        let token = handshake.lock().core.fresh_token(now).ok_or_else(no_token)?;
        let signed = token.sign(method, path, body, now)?;
        // SAFETY: buffer contracts forwarded from the caller.
        unsafe { write_signed(&signed, authorization, authorization_len, pop, pop_len) }
    })
}

fn no_token() -> FfiError {
    FfiError::invalid("no fresh token: run onetrip_handshake_begin / onetrip_handshake_complete first")
}
