//! The FFI boundary, in one audited place: the panic guard every entry point runs
//! in, the per-thread error state (`onetrip_last_error`, the pending second-factor
//! operation), and the only helpers that turn C pointers into Rust references or
//! write into caller buffers. Every other module calls these instead of
//! dereferencing pointers itself.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::status::onetrip_status;

/// A failed call: the status C sees and the message `onetrip_last_error` returns.
/// Messages never hold a secret (API key, token, code, credential): they come from
/// the typed errors of the client and protocol crates, which are tested for that,
/// or from the fixed texts in this crate.
#[derive(Debug)]
pub struct FfiError {
    pub(crate) status: onetrip_status,
    pub(crate) message: String,
    /// Set for `ONETRIP_STATUS_SECOND_FACTOR_REQUIRED`: the operation to answer.
    pub(crate) operation: Option<[u8; 16]>,
}

impl FfiError {
    pub(crate) fn new(status: onetrip_status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), operation: None }
    }
    pub(crate) fn null(what: &str) -> Self {
        Self::new(onetrip_status::NullPointer, format!("{what} is NULL"))
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(onetrip_status::InvalidArgument, message)
    }
}

/// What the last call that returned a status on this thread left behind.
struct LastCall {
    /// NUL-terminated; empty after a successful call.
    message: CString,
    operation: Option<[u8; 16]>,
}

thread_local! {
    static LAST: RefCell<LastCall> = RefCell::new(LastCall { message: CString::default(), operation: None });
}

fn remember(message: &str, operation: Option<[u8; 16]>) {
    // Interior NULs cannot come from our messages, but never fail over it.
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the status still reaches C.
    let _ = LAST.try_with(|last| *last.borrow_mut() = LastCall { message, operation });
}

/// The message of the last failed call on this thread, as a pointer valid until the
/// next `onetrip_*` call on this thread that returns a status.
pub(crate) fn last_message() -> *const c_char {
    LAST.try_with(|last| last.borrow().message.as_ptr()).unwrap_or(c"".as_ptr())
}

/// The operation of the last `SECOND_FACTOR_REQUIRED` on this thread.
pub(crate) fn last_operation() -> Option<[u8; 16]> {
    LAST.try_with(|last| last.borrow().operation).ok().flatten()
}

/// Runs one entry point: a panic becomes `ONETRIP_STATUS_PANIC`, an error becomes its
/// status and this thread's last error, success clears the last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), FfiError>) -> onetrip_status {
    // AssertUnwindSafe: after a panic the handles involved may hold half-updated
    // state; the client's own locks recover from poisoning, and C is told PANIC so
    // it can drop the handle.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            remember("", None);
            onetrip_status::Ok
        }
        Ok(Err(e)) => {
            remember(&e.message, e.operation);
            e.status
        }
        Err(_) => {
            remember("internal error: onetrip panicked; this is a bug, please report it", None);
            onetrip_status::Panic
        }
    }
}

/// Runs a function that returns no status (`*_free`): a panic is swallowed, never
/// unwound into C.
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged
/// for `'a`.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string alive for 'a.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| FfiError::invalid(format!("{what} is not UTF-8")))
}

/// Like [`text`], NULL meaning "not given".
///
/// # Safety
/// As [`text`].
pub(crate) unsafe fn optional_text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { text(p, what) }.map(Some)
}

/// A `(pointer, length)` byte argument; NULL is allowed only with length 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], FfiError> {
    if p.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(FfiError::null(what)) };
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes alive for 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A handle argument.
///
/// # Safety
/// `p` is NULL or a pointer this library handed out (by the matching `*_new`) and
/// not yet freed.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, FfiError> {
    // SAFETY: the caller promises a live handle from Box::into_raw, or NULL.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null(what))
}

/// Hands a new object to C through `out`.
///
/// # Safety
/// `out` is NULL or points to writable storage for one pointer.
pub(crate) unsafe fn give<T>(out: *mut *mut T, value: T) -> Result<(), FfiError> {
    if out.is_null() {
        return Err(FfiError::null("the output handle pointer"));
    }
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(Box::into_raw(Box::new(value))) };
    Ok(())
}

/// Frees a handle handed out by [`give`]; NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from [`give`] with the same `T` and is not used again.
pub(crate) unsafe fn take<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: it came from Box::into_raw and ownership returns here once.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Checks an output pointer before any work is done, so a NULL is reported before a
/// network call rather than after.
pub(crate) fn require_out<T>(p: *mut T, what: &str) -> Result<(), FfiError> {
    if p.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(())
    }
}

/// Writes `value` plus a NUL into `buf` (capacity `cap`), and its length (without
/// the NUL) into `*len_out` when that is not NULL: on success and also on
/// `ONETRIP_STATUS_BUFFER_TOO_SMALL`, so the caller can size the buffer. A `buf` of
/// NULL with `cap` 0 asks for the size only.
///
/// # Safety
/// `buf` is NULL or points to `cap` writable bytes; `len_out` is NULL or writable.
pub(crate) unsafe fn write_text(
    value: &str,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
    what: &str,
) -> Result<(), FfiError> {
    if !len_out.is_null() {
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { len_out.write(value.len()) };
    }
    if buf.is_null() && cap != 0 {
        return Err(FfiError::null(what));
    }
    if cap <= value.len() {
        return Err(FfiError::new(
            onetrip_status::BufferTooSmall,
            format!("{what} needs {} bytes (the value and its NUL), the buffer has {cap}", value.len() + 1),
        ));
    }
    // SAFETY: buf is non-NULL here (cap > 0) with cap > value.len() writable bytes;
    // the source is a distinct Rust allocation, so the ranges do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(value.as_ptr(), buf.cast::<u8>(), value.len());
        buf.add(value.len()).write(0);
    }
    Ok(())
}

/// Copies `value` into a fixed C array field, NUL-terminated, truncating never: the
/// field sizes are chosen so every valid value fits (checked by callers' asserts).
pub(crate) fn fill_field<const N: usize>(field: &mut [c_char; N], value: &str) {
    field.fill(0);
    for (dst, src) in field.iter_mut().zip(value.bytes().take(N - 1)) {
        *dst = src as c_char;
    }
}
