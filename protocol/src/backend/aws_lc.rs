//! aws-lc-rs backend: AWS-LC's assembly X25519 and ChaCha20-Poly1305.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroize;

use super::{CryptoBackend, CryptoError, NONCE_LEN, TAG_LEN};
use crate::secret::Secret;

/// The aws-lc-rs backend (the default: measured faster than the pure-Rust one).
#[derive(Debug, Default, Clone, Copy)]
pub struct AwsLc;

/// An AWS-LC X25519 private key with its public key computed once.
pub struct AwsLcStaticKey {
    private: PrivateKey,
    public: [u8; 32],
}

impl CryptoBackend for AwsLc {
    type StaticKey = AwsLcStaticKey;
    type AeadKey = LessSafeKey;

    fn name(&self) -> &'static str {
        "aws-lc-rs"
    }

    fn static_key(&self, private: &Secret<32>) -> Result<AwsLcStaticKey, CryptoError> {
        let private = PrivateKey::from_private_key(&X25519, private.expose()).map_err(|_| CryptoError::KeyRejected)?;
        let public_key = private.compute_public_key().map_err(|_| CryptoError::KeyRejected)?;
        let public: [u8; 32] = public_key.as_ref().try_into().map_err(|_| CryptoError::KeyRejected)?;
        Ok(AwsLcStaticKey { private, public })
    }

    fn public_key(&self, key: &AwsLcStaticKey) -> [u8; 32] {
        key.public
    }

    fn x25519(&self, key: &AwsLcStaticKey, peer: &[u8; 32]) -> Result<Secret<32>, CryptoError> {
        // AWS-LC refuses an all-zero result itself; the explicit check below keeps
        // both backends' rejection identical even if that ever changes.
        let shared = agreement::agree(
            &key.private,
            UnparsedPublicKey::new(&X25519, peer),
            CryptoError::LowOrderPoint,
            |material| {
                let bytes: [u8; 32] = material.try_into().map_err(|_| CryptoError::LowOrderPoint)?;
                Ok(Secret::new(bytes))
            },
        )?;
        if shared.is_all_zero() {
            return Err(CryptoError::LowOrderPoint);
        }
        Ok(shared)
    }

    fn aead_key(&self, key: &Secret<32>) -> LessSafeKey {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which the type guarantees, so
        // `UnboundKey::new` cannot fail here.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key.expose())
            .unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key rejected"));
        LessSafeKey::new(unbound)
    }

    fn seal(&self, key: &LessSafeKey, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8], tag: &mut [u8; TAG_LEN]) {
        // Sealing a few hundred bytes with a valid key cannot fail.
        if let Ok(t) = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out) {
            tag.copy_from_slice(t.as_ref());
        }
    }

    fn open(
        &self,
        key: &LessSafeKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        match key.open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, in_out) {
            Ok(_) => Ok(()),
            Err(_) => {
                in_out.zeroize();
                Err(CryptoError::Decrypt)
            }
        }
    }
}
