//! Private keys at rest: sealed with ChaCha20-Poly1305 under a key derived from the
//! operator's passphrase with argon2id, or stored plainly (with a loud warning) when
//! no passphrase is configured. Each blob is bound to its slot name through the AAD.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use onetrip_protocol::Secret;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Blob format byte: stored without a passphrase.
const BLOB_PLAIN: u8 = 0;
/// Blob format byte: nonce ‖ ciphertext ‖ tag under the passphrase key.
const BLOB_SEALED: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Text sealed into the store at creation so a wrong passphrase is detected at start.
const CHECK_PLAINTEXT: &[u8] = b"onetrip store passphrase check v1";

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The store is sealed and no passphrase was given.
    #[error("the store's private keys are sealed with a passphrase: set ONETRIP_PASSPHRASE or use --passphrase-file")]
    PassphraseRequired,
    /// The passphrase does not open the store.
    #[error("wrong passphrase for this store")]
    WrongPassphrase,
    /// A passphrase was given for a store created without one.
    #[error(
        "this store was created without a passphrase, so its private keys are not sealed: start without \
         ONETRIP_PASSPHRASE / --passphrase-file, or create a new store with a passphrase and move the keys over"
    )]
    NotSealed,
    /// A blob is damaged or was moved between slots.
    #[error("sealed value `{0}` is damaged or does not belong to this slot")]
    Damaged(String),
    /// argon2 refused its parameters.
    #[error("argon2id key derivation failed: {0}")]
    Kdf(String),
}

/// How the store's private keys are protected; persisted in the store's meta table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealParams {
    /// "none" or "argon2id".
    pub mode: String,
    /// argon2 salt (hex).
    #[serde(default)]
    pub salt: String,
    /// argon2 memory cost in KiB.
    #[serde(default)]
    pub m_cost: u32,
    /// argon2 iterations.
    #[serde(default)]
    pub t_cost: u32,
    /// argon2 lanes.
    #[serde(default)]
    pub p_cost: u32,
    /// [`CHECK_PLAINTEXT`] sealed under the derived key (hex).
    #[serde(default)]
    pub check: String,
}

/// Seals and opens private-key blobs for one store.
pub struct Sealer {
    key: Option<Secret<32>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("sealed", &self.key.is_some()).finish()
    }
}

impl Sealer {
    /// True when blobs are encrypted.
    pub fn is_sealed(&self) -> bool {
        self.key.is_some()
    }

    /// A new sealer for a new store: argon2id with fresh salt when a passphrase is
    /// given (OWASP-recommended 19 MiB, 2 passes), plain otherwise.
    pub fn create(passphrase: Option<&str>) -> Result<(Self, SealParams), SealError> {
        let Some(passphrase) = passphrase else {
            let params = SealParams {
                mode: "none".into(),
                salt: String::new(),
                m_cost: 0,
                t_cost: 0,
                p_cost: 0,
                check: String::new(),
            };
            return Ok((Self { key: None }, params));
        };
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let mut params = SealParams {
            mode: "argon2id".into(),
            salt: hex::encode(salt),
            m_cost: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            check: String::new(),
        };
        let sealer = Self { key: Some(derive_key(passphrase, &params)?) };
        params.check = hex::encode(sealer.seal("check", CHECK_PLAINTEXT));
        Ok((sealer, params))
    }

    /// The sealer for an existing store.
    pub fn open(params: &SealParams, passphrase: Option<&str>) -> Result<Self, SealError> {
        if params.mode == "none" {
            // Ignoring it would leave an operator believing the keys are sealed.
            if passphrase.is_some() {
                return Err(SealError::NotSealed);
            }
            return Ok(Self { key: None });
        }
        let passphrase = passphrase.ok_or(SealError::PassphraseRequired)?;
        let sealer = Self { key: Some(derive_key(passphrase, params)?) };
        let check = hex::decode(&params.check).map_err(|_| SealError::Damaged("check".into()))?;
        match sealer.open_blob("check", &check) {
            Ok(p) if p.as_slice() == CHECK_PLAINTEXT => Ok(sealer),
            _ => Err(SealError::WrongPassphrase),
        }
    }

    /// Seals `plaintext` for `slot`.
    pub fn seal(&self, slot: &str, plaintext: &[u8]) -> Vec<u8> {
        let Some(key) = &self.key else {
            let mut out = Vec::with_capacity(1 + plaintext.len());
            out.push(BLOB_PLAIN);
            out.extend_from_slice(plaintext);
            return out;
        };
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut buf = plaintext.to_vec();
        let cipher = ChaCha20Poly1305::new(key.expose().into());
        // Encryption of a short buffer with a valid key and nonce cannot fail.
        let tag = cipher.encrypt_in_place_detached((&nonce).into(), slot.as_bytes(), &mut buf).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len() + TAG_LEN);
        out.push(BLOB_SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a blob sealed for `slot`.
    pub fn open_blob(&self, slot: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let damaged = || SealError::Damaged(slot.to_owned());
        let (&kind, rest) = blob.split_first().ok_or_else(damaged)?;
        match (kind, &self.key) {
            (BLOB_PLAIN, None) => Ok(Zeroizing::new(rest.to_vec())),
            (BLOB_PLAIN, Some(_)) => Err(damaged()),
            (BLOB_SEALED, None) => Err(SealError::PassphraseRequired),
            (BLOB_SEALED, Some(key)) => {
                if rest.len() < NONCE_LEN + TAG_LEN {
                    return Err(damaged());
                }
                let (nonce, rest) = rest.split_at(NONCE_LEN);
                let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
                let mut buf = Zeroizing::new(ct.to_vec());
                ChaCha20Poly1305::new(key.expose().into())
                    .decrypt_in_place_detached(nonce.into(), slot.as_bytes(), &mut buf, tag.into())
                    .map_err(|_| damaged())?;
                Ok(buf)
            }
            _ => Err(damaged()),
        }
    }

    /// Opens a 32-byte secret.
    pub fn open_secret(&self, slot: &str, blob: &[u8]) -> Result<Secret<32>, SealError> {
        let bytes = self.open_blob(slot, blob)?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| SealError::Damaged(slot.to_owned()))?;
        Ok(Secret::new(arr))
    }
}

fn derive_key(passphrase: &str, params: &SealParams) -> Result<Secret<32>, SealError> {
    let salt = hex::decode(&params.salt).map_err(|_| SealError::Damaged("salt".into()))?;
    let p = Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
        .map_err(|e| SealError::Kdf(e.to_string()))?;
    Ok(Secret::new(*out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_round_trip_and_bind_to_their_slot() {
        let (sealer, params) = Sealer::create(Some("correct horse")).unwrap();
        let blob = sealer.seal("identity", &[7; 32]);
        assert!(!blob.windows(32).any(|w| w == [7; 32]), "plaintext visible in sealed blob");
        assert_eq!(sealer.open_secret("identity", &blob).unwrap().expose(), &[7; 32]);
        assert!(matches!(sealer.open_blob("dummy", &blob), Err(SealError::Damaged(_))));
        let reopened = Sealer::open(&params, Some("correct horse")).unwrap();
        assert_eq!(reopened.open_secret("identity", &blob).unwrap().expose(), &[7; 32]);
        assert!(matches!(Sealer::open(&params, Some("wrong")), Err(SealError::WrongPassphrase)));
        assert!(matches!(Sealer::open(&params, None), Err(SealError::PassphraseRequired)));
        let mut flipped = blob.clone();
        flipped[20] ^= 1;
        assert!(sealer.open_blob("identity", &flipped).is_err());
    }

    #[test]
    fn plain_mode_stores_and_refuses_mixing() {
        let (plain, params) = Sealer::create(None).unwrap();
        assert_eq!(params.mode, "none");
        let blob = plain.seal("x", b"abc");
        assert_eq!(plain.open_blob("x", &blob).unwrap().as_slice(), b"abc");
        let (sealed, _) = Sealer::create(Some("p")).unwrap();
        assert!(sealed.open_blob("x", &blob).is_err(), "a plain blob in a sealed store is refused");
    }
}
