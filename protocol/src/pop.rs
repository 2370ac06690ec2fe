//! Proof of possession: the client signs each request to a resource server with the
//! token's session key, so a sniffed token alone is useless (PROTOCOL.md §8).
//!
//! proof = version ‖ timestamp(8) ‖ nonce(12) ‖ MAC(32), where MAC is keyed BLAKE3
//! under `KDF("onetrip v1 pop key", session key)` over the version, timestamp,
//! nonce, the token's 25-byte clear header (its binding: unique per token through
//! the token nonce, and readable by the client, which cannot open the token),
//! length-prefixed method and path, and BLAKE3(body).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use crate::codec::{field, field_mut, read_u64, write_u64};
use crate::kdf;
use crate::secret::Secret;
pub use crate::token::TOKEN_BINDING_LEN;

/// Length of a proof in bytes.
pub const POP_PROOF_LEN: usize = 53;
/// Length of a proof as carried in the `Onetrip-PoP` header (base64url, no padding).
pub const POP_HEADER_LEN: usize = (POP_PROOF_LEN * 4).div_ceil(3);
/// HTTP header carrying the proof.
pub const POP_HEADER: &str = "Onetrip-PoP";
const OFF_VERSION: usize = 0;
const OFF_TIMESTAMP: usize = 1;
const OFF_NONCE: usize = 9;
const OFF_MAC: usize = 21;
const NONCE_LEN: usize = 12;
const _: () = assert!(OFF_MAC + 32 == POP_PROOF_LEN);

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PopError {
    /// Not exactly [`POP_PROOF_LEN`] bytes (or [`POP_HEADER_LEN`] characters).
    #[error("proof-of-possession has the wrong length")]
    Length,
    /// Not base64url.
    #[error("proof-of-possession header is not base64url")]
    Encoding,
    /// Unknown version byte.
    #[error("unsupported proof-of-possession version {0}")]
    Version(u8),
    /// Method longer than 65535 bytes or path longer than 4 GiB.
    #[error("method or path too long to sign")]
    TooLong,
    /// Timestamp outside the verifier's window: check the client clock or a replay.
    #[error("proof-of-possession timestamp {timestamp} is outside the accepted window around {now}")]
    Stale {
        /// Timestamp in the proof.
        timestamp: u64,
        /// Verifier's clock.
        now: u64,
    },
    /// The MAC does not match: wrong session key, or method, path or body changed.
    #[error("proof-of-possession signature does not match this request")]
    BadSignature,
}

/// A proof-of-possession for one request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PopProof([u8; POP_PROOF_LEN]);

impl core::fmt::Debug for PopProof {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PopProof").field("timestamp", &self.timestamp()).finish_non_exhaustive()
    }
}

impl PopProof {
    /// Signs `method`, `path` and `body` at `now` for the token whose
    /// [`crate::Token::binding`] is `binding`.
    ///
    /// # Errors
    /// [`PopError::TooLong`] for absurd method or path lengths.
    pub fn sign(
        session_key: &Secret<32>,
        binding: &[u8; TOKEN_BINDING_LEN],
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, PopError> {
        let mut proof = [0u8; POP_PROOF_LEN];
        proof[OFF_VERSION] = crate::VERSION;
        write_u64::<OFF_TIMESTAMP, POP_PROOF_LEN>(&mut proof, now);
        rng.fill_bytes(field_mut::<OFF_NONCE, NONCE_LEN, POP_PROOF_LEN>(&mut proof));
        let mac = mac(session_key, &proof, binding, method, path, body)?;
        *field_mut::<OFF_MAC, 32, POP_PROOF_LEN>(&mut proof) = mac;
        Ok(Self(proof))
    }

    /// Parses raw proof bytes.
    ///
    /// # Errors
    /// [`PopError::Length`] or [`PopError::Version`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PopError> {
        let proof: [u8; POP_PROOF_LEN] = bytes.try_into().map_err(|_| PopError::Length)?;
        if proof[OFF_VERSION] != crate::VERSION {
            return Err(PopError::Version(proof[OFF_VERSION]));
        }
        Ok(Self(proof))
    }

    /// Parses the `Onetrip-PoP` header value.
    ///
    /// # Errors
    /// [`PopError::Length`], [`PopError::Encoding`] or [`PopError::Version`].
    pub fn from_header(value: &str) -> Result<Self, PopError> {
        let value = value.trim();
        if value.len() != POP_HEADER_LEN {
            return Err(PopError::Length);
        }
        let mut raw = [0u8; POP_PROOF_LEN + 2];
        let n = URL_SAFE_NO_PAD.decode_slice(value, &mut raw).map_err(|_| PopError::Encoding)?;
        Self::from_bytes(&raw[..n])
    }

    /// The header value (base64url, [`POP_HEADER_LEN`] characters).
    pub fn to_header(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; POP_PROOF_LEN] {
        &self.0
    }

    /// The signed timestamp.
    pub fn timestamp(&self) -> u64 {
        read_u64::<OFF_TIMESTAMP, POP_PROOF_LEN>(&self.0)
    }

    /// A 16-byte id for a resource server's replay cache (proofs are otherwise
    /// reusable for the same method, path and body within the window).
    pub fn replay_id(&self) -> [u8; 16] {
        kdf::derive_public(kdf::LABEL_REPLAY_ID, &[&self.0])
    }

    /// Checks the proof against the request and the window (constant-time MAC compare).
    ///
    /// # Errors
    /// [`PopError::Stale`] or [`PopError::BadSignature`].
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        session_key: &Secret<32>,
        binding: &[u8; TOKEN_BINDING_LEN],
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
        window: u64,
    ) -> Result<(), PopError> {
        let expected = mac(session_key, &self.0, binding, method, path, body)?;
        if !bool::from(expected.ct_eq(field::<OFF_MAC, 32, POP_PROOF_LEN>(&self.0))) {
            return Err(PopError::BadSignature);
        }
        let timestamp = self.timestamp();
        if timestamp.abs_diff(now) > window {
            return Err(PopError::Stale { timestamp, now });
        }
        Ok(())
    }
}

fn mac(
    session_key: &Secret<32>,
    proof: &[u8; POP_PROOF_LEN],
    binding: &[u8; TOKEN_BINDING_LEN],
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<[u8; 32], PopError> {
    let method_len = u16::try_from(method.len()).map_err(|_| PopError::TooLong)?;
    let path_len = u32::try_from(path.len()).map_err(|_| PopError::TooLong)?;
    let key = kdf::derive(kdf::LABEL_POP_KEY, &[session_key.expose()]);
    let mut h = blake3::Hasher::new_keyed(key.expose());
    h.update(&proof[..OFF_MAC]);
    h.update(binding);
    h.update(&method_len.to_be_bytes());
    h.update(method.as_bytes());
    h.update(&path_len.to_be_bytes());
    h.update(path.as_bytes());
    h.update(blake3::hash(body).as_bytes());
    Ok(*h.finalize().as_bytes())
}
