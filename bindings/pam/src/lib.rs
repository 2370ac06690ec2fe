//! `pam_onetrip.so`: a PAM module that accepts an onetrip database login credential
//! (PROTOCOL.md §14) as the password and verifies it in process with the audience key,
//! for databases that authenticate through PAM (PostgreSQL's `pam` method).
//!
//! ```text
//! # /etc/pam.d/onetrip-db
//! auth    required  pam_onetrip.so keyfile=/etc/onetrip/db.key audience=db replaydir=/var/lib/postgresql/onetrip-replay
//! account required  pam_onetrip.so
//! ```
//!
//! This file is the FFI boundary and the only place with `unsafe`: it reads the user
//! name, the password (the credential) and the arguments from PAM and hands them to
//! [`module::authenticate`]. Refusals go to the system log through `pam_syslog`, by
//! reason and user, never with the credential.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod module;

use std::ffi::{c_char, c_int, CStr, CString};
use std::time::{SystemTime, UNIX_EPOCH};

/// `PAM_SUCCESS`.
const PAM_SUCCESS: c_int = 0;
/// `PAM_SERVICE_ERR`: the module is misconfigured.
const PAM_SERVICE_ERR: c_int = 3;
/// `PAM_AUTH_ERR`: the credential was refused.
const PAM_AUTH_ERR: c_int = 7;
/// `PAM_AUTHTOK`: the item holding the password.
const PAM_AUTHTOK: c_int = 6;
/// `LOG_NOTICE` and `LOG_ERR` (syslog priorities).
const LOG_NOTICE: c_int = 5;
const LOG_ERR: c_int = 3;

/// The opaque `pam_handle_t`.
#[repr(C)]
pub struct PamHandle {
    _opaque: [u8; 0],
}

#[link(name = "pam")]
extern "C" {
    fn pam_get_user(pamh: *mut PamHandle, user: *mut *const c_char, prompt: *const c_char) -> c_int;
    fn pam_get_authtok(pamh: *mut PamHandle, item: c_int, authtok: *mut *const c_char, prompt: *const c_char) -> c_int;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

/// The process's effective uid (the replay directory must be ours).
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Logs `msg` through `pam_syslog` as a `%s` argument (never as the format).
fn log(pamh: *mut PamHandle, priority: c_int, msg: &str) {
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else { return };
    // SAFETY: pamh is the handle PAM passed to the entry point that called us (valid
    // for the call); the format is a NUL-terminated literal taking one C string, and
    // msg is a live NUL-terminated CString.
    unsafe { pam_syslog(pamh, priority, c"pam_onetrip: %s".as_ptr(), msg.as_ptr()) }
}

/// The module arguments as UTF-8 strings (a non-UTF-8 one becomes a name the parser
/// refuses).
///
/// # Safety
/// `argv` must point to `argc` NUL-terminated strings, as PAM guarantees.
unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    let n = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    (0..n)
        .map(|i| {
            // SAFETY: i < argc and PAM passes argc valid pointers in argv.
            let p = unsafe { *argv.add(i) };
            if p.is_null() {
                return String::from("<null>");
            }
            // SAFETY: each argv entry is a NUL-terminated string owned by PAM for the call.
            unsafe { CStr::from_ptr(p) }.to_str().map(str::to_owned).unwrap_or_else(|_| "<not utf-8>".into())
        })
        .collect()
}

/// Reads a NUL-terminated string PAM returned, or None.
///
/// # Safety
/// `p` is null or a NUL-terminated string that stays valid while it is used.
unsafe fn text<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: by this function's contract.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// PAM `auth`: the password must be a valid, unused login credential for the user.
///
/// # Safety
/// Called by libpam with a live handle and `argc` argument strings.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_authenticate(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    // SAFETY: argc/argv come from libpam for this call.
    let raw_args = unsafe { args(argc, argv) };
    let parsed = match module::parse_args(raw_args.iter().map(String::as_str)) {
        Ok(a) => a,
        Err(e) => {
            log(pamh, LOG_ERR, &e.to_string());
            return PAM_SERVICE_ERR;
        }
    };
    let mut user_ptr: *const c_char = std::ptr::null();
    // SAFETY: pamh is live; user_ptr is a valid out-pointer; a null prompt means the
    // default. PAM keeps the string alive until pam_end.
    if unsafe { pam_get_user(pamh, &mut user_ptr, std::ptr::null()) } != PAM_SUCCESS {
        log(pamh, LOG_ERR, "no user name from PAM");
        return PAM_AUTH_ERR;
    }
    // SAFETY: on success user_ptr is a NUL-terminated string owned by PAM.
    let Some(user) = (unsafe { text(user_ptr) }) else {
        log(pamh, LOG_NOTICE, "user name is not UTF-8");
        return PAM_AUTH_ERR;
    };
    let mut tok_ptr: *const c_char = std::ptr::null();
    // SAFETY: as above; PAM asks the application's conversation (PostgreSQL asks the
    // client for its password) and keeps the answer as the PAM_AUTHTOK item.
    if unsafe { pam_get_authtok(pamh, PAM_AUTHTOK, &mut tok_ptr, std::ptr::null()) } != PAM_SUCCESS {
        log(pamh, LOG_NOTICE, &format!("no password from the client for user {user}"));
        return PAM_AUTH_ERR;
    }
    // SAFETY: on success tok_ptr is a NUL-terminated string owned by PAM.
    let Some(credential) = (unsafe { text(tok_ptr) }) else {
        log(pamh, LOG_NOTICE, &format!("login credential refused for user {user}: not UTF-8"));
        return PAM_AUTH_ERR;
    };
    match module::authenticate(&parsed, user, credential, now()) {
        Ok(()) => PAM_SUCCESS,
        Err(e) if e.is_config() => {
            log(pamh, LOG_ERR, &e.to_string());
            PAM_SERVICE_ERR
        }
        Err(e) => {
            log(pamh, LOG_NOTICE, &format!("user {user}: {e}"));
            PAM_AUTH_ERR
        }
    }
}

/// PAM `setcred`: nothing to set.
///
/// # Safety
/// Called by libpam.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_setcred(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_SUCCESS
}

/// PAM `account`: the credential already carried everything (the token expiry and the
/// API key's standing at its handshake); nothing more to check.
///
/// # Safety
/// Called by libpam.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_acct_mgmt(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_SUCCESS
}
