//! One id per request, so that an operator can find every log line of one request
//! and match it with what a client or proxy saw. A well-formed incoming
//! `X-Request-Id` (set by a proxy in front) is kept; otherwise the id is made here
//! from a random per-process prefix and a counter, with no system call per request.
//! It goes back as the `X-Request-Id` header and is a field of the request's span.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};

/// The header, lower-case as HTTP/2 wants it.
pub const HEADER: &str = "x-request-id";
/// The longest incoming id kept; a longer one is replaced.
const MAX_INCOMING: usize = 64;

/// The id of a request with these headers.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(HEADER).filter(|v| well_formed(v.as_bytes())) {
        return given.clone();
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| rand_core::RngCore::next_u32(&mut rand_core::OsRng));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Hex digits only: always a valid header value.
    HeaderValue::from_str(&format!("{prefix:08x}{n:012x}")).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Letters, digits and `-_.:`, at most [`MAX_INCOMING`]: nothing a log line or a
/// terminal could misread.
fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_INCOMING
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incoming_id_is_kept_only_when_well_formed_and_made_ids_differ() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("req-42.a:b_c"));
        assert_eq!(of(&h), "req-42.a:b_c");
        for bad in ["has space", "new\u{7f}line", "quote\"d", "{json}"] {
            h.insert(HEADER, HeaderValue::from_bytes(bad.as_bytes()).unwrap());
            assert_ne!(of(&h).as_bytes(), bad.as_bytes(), "{bad}");
        }
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(MAX_INCOMING + 1)).unwrap());
        assert_eq!(of(&h).len(), 20, "too long: replaced by a made id");
        let (a, b) = (of(&HeaderMap::new()), of(&HeaderMap::new()));
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
