//! API keys: a public 16-byte key id and a 24-byte (192-bit) secret, shown once as
//! `otk_` + base64url(id ‖ secret ‖ checksum), and the verifier the server stores.
//!
//! The client's static X25519 private key is derived from the secret; the server
//! keeps only its public half (the [`Verifier`]), so a stolen key store cannot
//! authenticate anyone.

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::backend::{CryptoBackend, CryptoError};
use crate::kdf;
use crate::secret::Secret;

/// Length of an API key id.
pub const KEY_ID_LEN: usize = 16;
/// Length of an API key secret (192 bits).
pub const SECRET_LEN: usize = 24;
/// Length of the checksum inside the key string.
pub const CHECKSUM_LEN: usize = 4;
/// Prefix of every API key string; secret scanners match on it.
pub const API_KEY_PREFIX: &str = "otk_";
/// Decoded length: id ‖ secret ‖ checksum.
const RAW_LEN: usize = KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// base64url (no padding) length of the raw bytes.
pub const API_KEY_BASE64_LEN: usize = (RAW_LEN * 4).div_ceil(3);
/// Total length of an API key string.
pub const API_KEY_STRING_LEN: usize = API_KEY_PREFIX.len() + API_KEY_BASE64_LEN;

/// Why an API key string was refused. The messages never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// The string does not start with `otk_`.
    #[error("not an onetrip API key: it must start with \"otk_\"")]
    MissingPrefix,
    /// The string has the wrong number of characters (truncated or extended).
    #[error("API key has {found} characters, expected {API_KEY_STRING_LEN}: it was truncated or extended when copied")]
    Length {
        /// Characters found.
        found: usize,
    },
    /// A character outside base64url.
    #[error("API key contains characters outside base64url (A-Z a-z 0-9 - _): it was mangled when copied")]
    Encoding,
    /// The checksum does not match: a typo.
    #[error("API key checksum does not match: it was mistyped; copy it again")]
    Checksum,
}

/// Public identifier of an API key. Not secret; travels encrypted anyway.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        Self(bytes)
    }
    /// A fresh random id.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut b = [0u8; KEY_ID_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
    /// Parses the 32-character lowercase hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != KEY_ID_LEN * 2 {
            return None;
        }
        let mut out = [0u8; KEY_ID_LEN];
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(Self(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What the server stores per API key: the client's static X25519 public key.
/// Knowing it does not let anyone authenticate (that needs the private half).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verifier([u8; 32]);

impl Verifier {
    /// Wraps a stored public key.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str(")")
    }
}

/// An API key: id and secret. `Debug` shows the id only.
#[derive(Clone)]
pub struct ApiKey {
    id: KeyId,
    secret: Secret<SECRET_LEN>,
}

impl ApiKey {
    /// A new key from a CSPRNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self { id: KeyId::random(rng), secret: Secret::random(rng) }
    }

    /// A key from its parts (tests, vectors, rotation).
    pub fn from_parts(id: KeyId, secret: Secret<SECRET_LEN>) -> Self {
        Self { id, secret }
    }

    /// The public key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret.
    pub fn secret(&self) -> &Secret<SECRET_LEN> {
        &self.secret
    }

    /// Parses an `otk_…` string. Surrounding whitespace (a pasted newline) is ignored.
    ///
    /// # Errors
    /// [`ApiKeyError`] says what is wrong without echoing the key.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
        let body = s.strip_prefix(API_KEY_PREFIX).ok_or(ApiKeyError::MissingPrefix)?;
        if body.len() != API_KEY_BASE64_LEN {
            return Err(ApiKeyError::Length { found: s.chars().count() });
        }
        // The decoder's size estimate rounds up to whole 3-byte groups.
        let mut raw = Zeroizing::new([0u8; RAW_LEN + 2]);
        let n = URL_SAFE_NO_PAD.decode_slice(body.as_bytes(), &mut raw[..]).map_err(|_| ApiKeyError::Encoding)?;
        if n != RAW_LEN {
            return Err(ApiKeyError::Encoding);
        }
        let (id_secret, check) = raw[..RAW_LEN].split_at(KEY_ID_LEN + SECRET_LEN);
        let expected: [u8; CHECKSUM_LEN] = kdf::derive_public(kdf::LABEL_API_KEY_CHECKSUM, &[id_secret]);
        if !bool::from(expected.ct_eq(check)) {
            return Err(ApiKeyError::Checksum);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&id_secret[..KEY_ID_LEN]);
        let mut secret = Secret::new([0u8; SECRET_LEN]);
        secret.expose_mut().copy_from_slice(&id_secret[KEY_ID_LEN..]);
        Ok(Self { id: KeyId(id), secret })
    }

    /// The `otk_…` string to show the user once. It is the secret: the returned
    /// string zeroizes on drop; never log it.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; RAW_LEN]);
        raw[..KEY_ID_LEN].copy_from_slice(&self.id.0);
        raw[KEY_ID_LEN..KEY_ID_LEN + SECRET_LEN].copy_from_slice(self.secret.expose());
        let check: [u8; CHECKSUM_LEN] =
            kdf::derive_public(kdf::LABEL_API_KEY_CHECKSUM, &[&raw[..KEY_ID_LEN + SECRET_LEN]]);
        raw[KEY_ID_LEN + SECRET_LEN..].copy_from_slice(&check);
        let mut out = Zeroizing::new(String::with_capacity(API_KEY_STRING_LEN));
        out.push_str(API_KEY_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw[..], &mut out);
        out
    }

    /// The client's static X25519 private key:
    /// `BLAKE3-derive_key("onetrip v1 client static", secret)`.
    pub fn client_static_private(&self) -> Secret<32> {
        kdf::derive(kdf::LABEL_CLIENT_STATIC, &[self.secret.expose()])
    }

    /// The verifier the server stores for this key.
    ///
    /// # Errors
    /// Only if the backend refuses a 32-byte X25519 key, which does not happen.
    pub fn verifier<B: CryptoBackend>(&self, backend: &B) -> Result<Verifier, CryptoError> {
        let key = backend.static_key(&self.client_static_private())?;
        Ok(Verifier(backend.public_key(&key)))
    }
}

impl FromStr for ApiKey {
    type Err = ApiKeyError;
    fn from_str(s: &str) -> Result<Self, ApiKeyError> {
        Self::parse(s)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("id", &self.id).field("secret", &self.secret).finish()
    }
}
