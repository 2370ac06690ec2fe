//! `onetrip_client_*`: the blocking client behind an opaque handle. One handle per
//! API key and server; it is thread-safe (`BlockingClient` is `Sync`: concurrent
//! callers share its token cache and single in-flight handshake), so a driver
//! creates one at start-up and calls it from every connection thread.

use std::ffi::c_char;

use ::onetrip_client::{BlockingClient, Client, Fingerprint, SignedRequest};

use crate::boundary::{self, guard, FfiError};
use crate::status::onetrip_status;
use crate::ONETRIP_OPERATION_LEN;

/// A client for one API key and one server. Thread-safe: share one handle between
/// threads. Create with `onetrip_client_new`, free with `onetrip_client_free`.
pub struct onetrip_client {
    inner: BlockingClient,
}

/// Creates a client. Makes no network request (the first token call does).
///
/// - `server_url`: e.g. `"http://127.0.0.1:7420"` or `"https://auth.example.com"`;
/// - `api_key`: the `otk_…` string (the library keeps its own copy, wiped on free;
///   the caller wipes its own);
/// - `pin`: the server identity fingerprint, `"SHA256:…"` (`onetrip server-key show`);
/// - `audience`: the resource server tokens are for, or NULL for the server default;
/// - `scopes`: space-separated scopes, or NULL for all of the key's;
/// - `ca_pem`: PEM CA certificates for an `https://` server with a private CA, or
///   NULL for the public roots.
///
/// On `ONETRIP_STATUS_OK`, `*out` holds a new handle the caller frees with
/// `onetrip_client_free`; otherwise `*out` is untouched.
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_new(
    server_url: *const c_char,
    api_key: *const c_char,
    pin: *const c_char,
    audience: *const c_char,
    scopes: *const c_char,
    ca_pem: *const c_char,
    out: *mut *mut onetrip_client,
) -> onetrip_status {
    guard(|| {
        boundary::require_out(out, "out")?;
        // SAFETY: the caller's contract covers every string argument.
        let (server_url, api_key, pin, audience, scopes, ca_pem) = unsafe {
            (
                boundary::text(server_url, "server_url")?,
                boundary::text(api_key, "api_key")?,
                boundary::text(pin, "pin")?,
                boundary::optional_text(audience, "audience")?,
                boundary::optional_text(scopes, "scopes")?,
                boundary::optional_text(ca_pem, "ca_pem")?,
            )
        };
        let pin: Fingerprint = pin
            .parse()
            .map_err(|e| FfiError::invalid(format!("pin: {e} (expected the SHA256:… of `onetrip server-key show`)")))?;
        let mut builder = Client::builder().server(server_url).api_key(api_key).pin(pin);
        if let Some(audience) = audience {
            builder = builder.audience(audience);
        }
        if let Some(scopes) = scopes {
            builder = builder.scopes(scopes.split(' ').filter(|s| !s.is_empty()));
        }
        if let Some(pem) = ca_pem {
            builder = builder.ca_certificates_pem(pem.as_bytes());
        }
        let inner = BlockingClient::build(builder)?;
        // SAFETY: `out` checked non-NULL above; writable per the caller's contract.
        unsafe { boundary::give(out, onetrip_client { inner }) }
    })
}

/// Frees a client (NULL is a no-op). Its API key copy, cached token and session key
/// are wiped. Do not use the handle afterwards, nor free it while another thread
/// still calls it.
///
/// # Safety
/// `client` is NULL or a handle from `onetrip_client_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_free(client: *mut onetrip_client) {
    // SAFETY: the caller hands back ownership of a handle from onetrip_client_new.
    boundary::guard_void(|| unsafe { boundary::take(client) });
}

/// Writes the `Authorization` header value, `Onetrip <token>`
/// (`ONETRIP_AUTHORIZATION_LEN` characters), into `buf`. The token is cached until
/// 80% of its lifetime; concurrent callers share one handshake.
///
/// `buf_len` must be at least `ONETRIP_AUTHORIZATION_LEN + 1`; `*out_len` (if
/// `out_len` is not NULL) receives the length without the NUL, also with
/// `ONETRIP_STATUS_BUFFER_TOO_SMALL`. The value is a bearer secret: wipe the buffer
/// when done.
///
/// `ONETRIP_STATUS_SECOND_FACTOR_REQUIRED`: call `onetrip_last_operation`, get the
/// code to the user, then `onetrip_client_token_with_code`.
///
/// # Safety
/// `client` is a live handle; `buf` is NULL or has `buf_len` writable bytes;
/// `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_token(
    client: *const onetrip_client,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller promises a live handle or NULL.
        let client = unsafe { boundary::handle(client, "client")? };
        let token = client.inner.token()?;
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { boundary::write_text(&token.authorization(), buf, buf_len, out_len, "the authorization buffer") }
    })
}

/// Answers `ONETRIP_STATUS_SECOND_FACTOR_REQUIRED` with the code the user received;
/// writes the `Authorization` value like `onetrip_client_token`. The token (flagged
/// second-factor) is cached, so later `onetrip_client_token` calls return it.
///
/// `operation` points to `operation_len` (= `ONETRIP_OPERATION_LEN`) bytes from
/// `onetrip_last_operation`; `code` is the code as typed.
///
/// # Safety
/// As `onetrip_client_token`; `operation` is NULL or has `operation_len` readable
/// bytes; `code` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_token_with_code(
    client: *const onetrip_client,
    operation: *const u8,
    operation_len: usize,
    code: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (client, operation, code) = unsafe {
            (
                boundary::handle(client, "client")?,
                boundary::bytes(operation, operation_len, "operation")?,
                boundary::text(code, "code")?,
            )
        };
        let operation: [u8; ONETRIP_OPERATION_LEN] = operation
            .try_into()
            .map_err(|_| FfiError::invalid(format!("operation must be {ONETRIP_OPERATION_LEN} bytes")))?;
        let token = client.inner.token_with_code(operation, code)?;
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { boundary::write_text(&token.authorization(), buf, buf_len, out_len, "the authorization buffer") }
    })
}

/// Writes a database login credential for `user` (and `database`, or NULL when the
/// database side cannot see the database name) into `buf`: an `otl1.…` string of
/// `ONETRIP_LOGIN_CREDENTIAL_LEN` characters to send as the password. It carries the
/// token and a proof bound to user, database, audience and the current time; the
/// database checks it with `onetrip_verifier_verify_login`. A new credential per
/// connection: each has its own replay id. Buffer rules as `onetrip_client_token`;
/// wipe the buffer when done.
///
/// # Safety
/// `client` is a live handle; `user` is NUL-terminated; `database` is NULL or
/// NUL-terminated; `buf` is NULL or has `buf_len` writable bytes; `out_len` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_login_credential(
    client: *const onetrip_client,
    user: *const c_char,
    database: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller's contract covers each pointer.
        let (client, user, database) = unsafe {
            (
                boundary::handle(client, "client")?,
                boundary::text(user, "user")?,
                boundary::optional_text(database, "database")?,
            )
        };
        let credential = client.inner.login_credential(user, database)?;
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { boundary::write_text(credential.as_str(), buf, buf_len, out_len, "the credential buffer") }
    })
}

/// Signs one request to a resource server: writes the `Authorization` value into
/// `authorization` and the `Onetrip-PoP` value into `pop`. For a database login,
/// method `"CONNECT"`, path the database name and body the startup packet is one
/// convention; the verifier must use the same three.
///
/// `authorization_len` must be at least `ONETRIP_AUTHORIZATION_LEN + 1` and `pop_len`
/// at least `ONETRIP_POP_LEN + 1`, else `ONETRIP_STATUS_BUFFER_TOO_SMALL` (nothing
/// written). `body` may be NULL when `body_len` is 0.
///
/// # Safety
/// `client` is a live handle; `method` and `path` are NUL-terminated; `body` has
/// `body_len` readable bytes (or is NULL with 0); each output buffer has its stated
/// length of writable bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn onetrip_client_sign_request(
    client: *const onetrip_client,
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
        let (client, method, path, body) = unsafe {
            (
                boundary::handle(client, "client")?,
                boundary::text(method, "method")?,
                boundary::text(path, "path")?,
                boundary::bytes(body, body_len, "body")?,
            )
        };
        boundary::require_out(authorization, "authorization")?;
        boundary::require_out(pop, "pop")?;
        let signed = client.inner.sign_request(method, path, body)?;
        // SAFETY: buffer contracts forwarded from the caller.
        unsafe { write_signed(&signed, authorization, authorization_len, pop, pop_len) }
    })
}

/// Writes both header values, or neither when either buffer is too small.
///
/// # Safety
/// Each buffer is non-NULL with its stated length of writable bytes.
pub(crate) unsafe fn write_signed(
    signed: &SignedRequest,
    authorization: *mut c_char,
    authorization_len: usize,
    pop: *mut c_char,
    pop_len: usize,
) -> Result<(), FfiError> {
    if authorization_len <= signed.authorization().len() || pop_len <= signed.pop().len() {
        return Err(FfiError::new(
            onetrip_status::BufferTooSmall,
            format!(
                "the authorization buffer needs {} bytes and the pop buffer {} (values and their NULs)",
                signed.authorization().len() + 1,
                signed.pop().len() + 1
            ),
        ));
    }
    let none = std::ptr::null_mut();
    // SAFETY: forwarded; both sizes were checked above.
    unsafe {
        boundary::write_text(signed.authorization(), authorization, authorization_len, none, "authorization")?;
        boundary::write_text(signed.pop(), pop, pop_len, none, "pop")
    }
}

/// Forgets the cached token (e.g. after a resource server refused it), so the next
/// call makes a handshake.
///
/// # Safety
/// `client` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn onetrip_client_invalidate(client: *const onetrip_client) -> onetrip_status {
    guard(|| {
        // SAFETY: the caller promises a live handle or NULL.
        unsafe { boundary::handle(client, "client")? }.inner.invalidate();
        Ok(())
    })
}
