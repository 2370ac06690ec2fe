//! Secret bytes: zeroized on drop, never printed, compared only in constant time.
//!
//! Every private key, DH output, derived key, session key and API secret in onetrip
//! lives in a [`Secret`], so a stray `{:?}` or a forgotten buffer cannot leak it.

use core::fmt;

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// `N` secret bytes. No `PartialEq` (use [`Secret::ct_eq`]), no public field, and a
/// `Debug` that prints `Secret([redacted])`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret<const N: usize>([u8; N]);

impl<const N: usize> Secret<N> {
    /// Wraps `bytes`. The caller's array is a copy (arrays are `Copy`): zeroize it if
    /// it held anything but a fresh value.
    pub fn new(bytes: [u8; N]) -> Self {
        Self(bytes)
    }

    /// Fills a new secret from a CSPRNG.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut s = Self([0u8; N]);
        rng.fill_bytes(&mut s.0);
        s
    }

    /// The secret bytes, for feeding into a primitive. Do not copy them out.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// Mutable access for filling the secret in place (decryption, derivation).
    pub(crate) fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// True when every byte is zero (constant time): X25519's output for a
    /// low-order peer point.
    pub fn is_all_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; N]).into()
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_bytes() {
        let s = Secret::new([0xAB; 32]);
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret([redacted])");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn ct_eq_compares_every_byte() {
        let a = Secret::new([7u8; 24]);
        let mut b_bytes = [7u8; 24];
        assert!(a.ct_eq(&Secret::new(b_bytes)));
        b_bytes[23] ^= 1;
        assert!(!a.ct_eq(&Secret::new(b_bytes)));
        assert!(Secret::new([0u8; 32]).is_all_zero());
        assert!(!a.is_all_zero());
    }
}
