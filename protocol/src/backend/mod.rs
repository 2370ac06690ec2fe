//! The crypto primitives that have two implementations: X25519 and
//! ChaCha20-Poly1305. BLAKE3 (KDF, MACs) and Ed25519 (document signatures, off the hot
//! path) have one implementation each and are used directly.
//!
//! Both backends must produce identical bytes; `tests/vectors.rs` and the
//! `backend_differential` fuzz target check that.

use crate::secret::Secret;

#[cfg(feature = "aws-lc")]
mod aws_lc;
#[cfg(feature = "rustcrypto")]
mod rustcrypto;

#[cfg(feature = "aws-lc")]
pub use aws_lc::AwsLc;
#[cfg(feature = "rustcrypto")]
pub use rustcrypto::RustCrypto;

/// The backend used when none is named: aws-lc-rs when compiled in (measured faster),
/// else the pure-Rust one.
#[cfg(feature = "aws-lc")]
pub type DefaultBackend = AwsLc;
/// The backend used when none is named: aws-lc-rs when compiled in (measured faster),
/// else the pure-Rust one.
#[cfg(all(feature = "rustcrypto", not(feature = "aws-lc")))]
pub type DefaultBackend = RustCrypto;

/// Length of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of a ChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 12;

/// A failure inside a primitive. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// X25519 produced the all-zero output: the peer sent a low-order point.
    #[error("X25519 peer public key is a low-order point")]
    LowOrderPoint,
    /// The backend refused a key (never happens for 32-byte X25519/ChaCha keys).
    #[error("the crypto backend rejected a key")]
    KeyRejected,
    /// AEAD authentication failed: wrong key, or the bytes were changed.
    #[error("authenticated decryption failed")]
    Decrypt,
}

/// X25519 and ChaCha20-Poly1305, as one backend provides them.
///
/// Keys are "prepared" once ([`CryptoBackend::static_key`],
/// [`CryptoBackend::aead_key`]) so a server can keep its handshake key and token keys
/// in the backend's native form and pay only for the operation itself.
pub trait CryptoBackend: Send + Sync + Default + Clone + 'static {
    /// An X25519 private key in the backend's native form.
    type StaticKey: Send + Sync;
    /// A ChaCha20-Poly1305 key in the backend's native form.
    type AeadKey: Send + Sync;

    /// Short name for logs and benchmarks (`"aws-lc-rs"`, `"rustcrypto"`).
    fn name(&self) -> &'static str;

    /// Prepares an X25519 private key (RFC 7748 clamping applies when it is used).
    ///
    /// # Errors
    /// [`CryptoError::KeyRejected`] if the backend refuses the key.
    fn static_key(&self, private: &Secret<32>) -> Result<Self::StaticKey, CryptoError>;

    /// The X25519 public key of `key`.
    fn public_key(&self, key: &Self::StaticKey) -> [u8; 32];

    /// X25519(`key`, `peer`).
    ///
    /// # Errors
    /// [`CryptoError::LowOrderPoint`] when the output is all zero.
    fn x25519(&self, key: &Self::StaticKey, peer: &[u8; 32]) -> Result<Secret<32>, CryptoError>;

    /// Prepares a ChaCha20-Poly1305 key.
    fn aead_key(&self, key: &Secret<32>) -> Self::AeadKey;

    /// Encrypts `in_out` in place and writes the tag.
    fn seal(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    );

    /// Checks `tag` and decrypts `in_out` in place.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the tag does not verify; `in_out` is then
    /// zeroed, never left half-decrypted.
    fn open(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError>;
}
