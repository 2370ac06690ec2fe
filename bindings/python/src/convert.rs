//! Argument conversions shared by the client and the verifier. Each failure is an
//! `InvalidInput` naming the argument; none repeats a secret it was given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onetrip_client::{Fingerprint, Secret};
use pyo3::prelude::*;
use zeroize::Zeroizing;

use crate::errors::InvalidInput;

/// Length of a token key id in an audience key line (`onetrip audience-key`).
const KEY_ID_LEN: usize = 4;
/// Length of an audience key.
const KEY_LEN: usize = 32;
/// Length of a step-up operation id.
pub const OPERATION_LEN: usize = 16;

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Exactly `N` bytes from `2N` hex characters; `None` otherwise.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// A step-up operation id: the 32 hex characters `SecondFactorRequired.operation` holds.
pub fn operation(s: &str) -> PyResult<[u8; OPERATION_LEN]> {
    unhex::<OPERATION_LEN>(s.trim()).ok_or_else(|| {
        InvalidInput::new_err(("operation: expected the 32 hex characters of SecondFactorRequired.operation",))
    })
}

/// A server identity fingerprint (`SHA256:…`, as `onetrip server-key show` prints).
pub fn fingerprint(s: &str) -> PyResult<Fingerprint> {
    s.parse().map_err(|_| {
        InvalidInput::new_err(("pin: expected the SHA256:… fingerprint `onetrip server-key show` prints",))
    })
}

/// Seconds as a positive, finite duration.
pub fn duration(name: &str, secs: f64) -> PyResult<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(InvalidInput::new_err((format!("{name}: expected a positive number of seconds"),))),
    }
}

/// The audience keys `onetrip audience-key <audience>` prints: one
/// `<key id hex>:<key hex>` per line, current first. Blank lines are skipped.
/// Errors name the line, never its content.
pub fn audience_keys(text: &str) -> PyResult<Vec<([u8; KEY_ID_LEN], Secret<KEY_LEN>)>> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(id, key)| {
            let id = unhex::<KEY_ID_LEN>(id.trim())?;
            let key = Zeroizing::new(unhex::<KEY_LEN>(key.trim())?);
            Some((id, Secret::new(*key)))
        });
        match parsed {
            Some(k) => keys.push(k),
            None => {
                return Err(InvalidInput::new_err((format!(
                    "audience_key line {}: expected `<8 hex key id>:<64 hex key>` as `onetrip audience-key` prints",
                    n + 1
                ),)))
            }
        }
    }
    if keys.is_empty() {
        return Err(InvalidInput::new_err((
            "audience_key: no key given; paste the output of `onetrip audience-key <audience>`",
        )));
    }
    Ok(keys)
}

/// The caller's `now`, or the system clock in unix seconds.
pub fn now_or_system(now: Option<u64>) -> u64 {
    now.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}
