//! Fixed byte layouts: typed sub-array access whose bounds are checked at compile
//! time, plus the little helpers every layout uses (big-endian integers, short
//! length-prefixed text fields).
//!
//! `field::<OFF, N, _>(buf)` borrows `buf[OFF..OFF + N]` of a `[u8; L]`; the
//! `const` assertion makes an out-of-range layout a build error, so no input can
//! reach a panic through it.

/// `&buf[OFF..OFF + N]` as an array reference.
pub(crate) fn field<const OFF: usize, const N: usize, const L: usize>(buf: &[u8; L]) -> &[u8; N] {
    const { assert!(OFF + N <= L, "field outside its buffer") };
    match buf[OFF..].first_chunk::<N>() {
        Some(chunk) => chunk,
        None => unreachable!("bounds checked at compile time"),
    }
}

/// `&mut buf[OFF..OFF + N]` as an array reference.
pub(crate) fn field_mut<const OFF: usize, const N: usize, const L: usize>(buf: &mut [u8; L]) -> &mut [u8; N] {
    const { assert!(OFF + N <= L, "field outside its buffer") };
    match buf[OFF..].first_chunk_mut::<N>() {
        Some(chunk) => chunk,
        None => unreachable!("bounds checked at compile time"),
    }
}

/// Big-endian u64 at `OFF`.
pub(crate) fn read_u64<const OFF: usize, const L: usize>(buf: &[u8; L]) -> u64 {
    u64::from_be_bytes(*field::<OFF, 8, L>(buf))
}

/// Writes a big-endian u64 at `OFF`.
pub(crate) fn write_u64<const OFF: usize, const L: usize>(buf: &mut [u8; L], v: u64) {
    *field_mut::<OFF, 8, L>(buf) = v.to_be_bytes();
}

/// Why a short text field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextError {
    /// Longer than its fixed slot.
    TooLong,
    /// The length byte points past the slot, padding is not zero, or a byte is outside
    /// the allowed set.
    Invalid,
}

/// Encodes `text` as length byte ‖ bytes ‖ zero padding into an `M`-byte slot
/// (so at most `M - 1` bytes of text).
pub(crate) fn write_text<const M: usize>(slot: &mut [u8; M], text: &str) -> Result<(), TextError> {
    const { assert!(M >= 1 && M <= 256, "text slot must hold a length byte") };
    let bytes = text.as_bytes();
    if bytes.len() > M - 1 || !text.bytes().all(is_text_byte) {
        return Err(if bytes.len() > M - 1 { TextError::TooLong } else { TextError::Invalid });
    }
    slot.fill(0);
    slot[0] = bytes.len() as u8;
    slot[1..1 + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Reads a text slot written by [`write_text`]: the length must fit, padding must be
/// zero, and every byte must be printable ASCII (space included, as scope separator).
pub(crate) fn read_text<const M: usize>(slot: &[u8; M]) -> Result<&str, TextError> {
    const { assert!(M >= 1 && M <= 256, "text slot must hold a length byte") };
    let len = usize::from(slot[0]);
    let Some((text, padding)) = slot[1..].split_at_checked(len) else {
        return Err(TextError::Invalid);
    };
    if !text.iter().copied().all(is_text_byte) || padding.iter().any(|&b| b != 0) {
        return Err(TextError::Invalid);
    }
    // All bytes are ASCII, so this cannot fail; the error arm keeps it panic-free.
    core::str::from_utf8(text).map_err(|_| TextError::Invalid)
}

/// Audience names, scope lists (space separated) and OTP codes: printable ASCII.
/// Space (0x20) is allowed as the scope separator.
fn is_text_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_rejects_bad_slots() {
        let mut slot = [0u8; 9];
        write_text(&mut slot, "db:read").unwrap();
        assert_eq!(read_text(&slot), Ok("db:read"));
        assert_eq!(write_text(&mut slot, "123456789"), Err(TextError::TooLong));
        assert_eq!(write_text(&mut slot, "tab\t"), Err(TextError::Invalid));
        let mut bad = slot;
        bad[0] = 9; // length past the slot
        assert_eq!(read_text(&bad), Err(TextError::Invalid));
        let mut bad = slot;
        bad[8] = 1; // non-zero padding
        assert_eq!(read_text(&bad), Err(TextError::Invalid));
        let mut bad = slot;
        bad[1] = 0xff; // not ASCII
        assert_eq!(read_text(&bad), Err(TextError::Invalid));
    }

    #[test]
    fn integers_are_big_endian() {
        let mut buf = [0u8; 10];
        write_u64::<2, 10>(&mut buf, 0x0102_0304_0506_0708);
        assert_eq!(buf, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read_u64::<2, 10>(&buf), 0x0102_0304_0506_0708);
    }
}
