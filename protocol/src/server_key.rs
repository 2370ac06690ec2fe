//! The server key document: the server's X25519 handshake keys (current, and the
//! previous one during a rotation overlap) with their validity, signed by the
//! server's long-term Ed25519 identity key. Clients pin the identity's fingerprint.
//!
//! Layout (all integers big-endian), see PROTOCOL.md §3:
//! `magic "OTSK" ‖ version(2) ‖ count ‖ reserved(2) ‖ issued_at(8) ‖ expires_at(8) ‖
//! identity(32) ‖ count × entry(56) ‖ signature(64)`.
//!
//! The signed `expires_at` is what keeps a captured document from steering clients to
//! a handshake key the server has retired: a client refuses a document past it.

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::kdf::SIGN_CONTEXT_DOCUMENT;
use crate::secret::Secret;

/// First four bytes of a document.
pub const DOCUMENT_MAGIC: [u8; 4] = *b"OTSK";
/// Document format version (byte 4). Version 2 added the signed `expires_at`; it
/// evolves separately from the handshake's [`crate::VERSION`].
pub const DOCUMENT_VERSION: u8 = 2;
/// The format before `expires_at`, refused with [`DocumentError::NoExpiry`].
pub const LEGACY_DOCUMENT_VERSION: u8 = 1;
/// Default document lifetime (4 hours): the longest a copy captured before a key
/// rotation can steer a client. The reference server re-signs at half of it.
pub const DEFAULT_DOCUMENT_LIFETIME_SECS: u64 = 4 * 3600;
/// Length of a server handshake key id.
pub const SERVER_KEY_ID_LEN: usize = 8;
/// Most handshake keys one document lists (current + previous + room for staging).
pub const MAX_ENTRIES: usize = 4;
/// Length of one entry: key id ‖ X25519 public ‖ not_before ‖ not_after.
pub const ENTRY_LEN: usize = SERVER_KEY_ID_LEN + 32 + 8 + 8;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_COUNT: usize = 5;
const OFF_RESERVED: usize = 6;
const OFF_ISSUED_AT: usize = 8;
const OFF_EXPIRES_AT: usize = 16;
const OFF_IDENTITY: usize = 24;
/// Offset of the first entry.
pub const OFF_ENTRIES: usize = 56;
const ENTRY_OFF_ID: usize = 0;
const ENTRY_OFF_PUBLIC: usize = 8;
const ENTRY_OFF_NOT_BEFORE: usize = 40;
const ENTRY_OFF_NOT_AFTER: usize = 48;
const _: () = assert!(ENTRY_OFF_NOT_AFTER + 8 == ENTRY_LEN);
const _: () = assert!(OFF_ISSUED_AT + 8 == OFF_EXPIRES_AT && OFF_EXPIRES_AT + 8 == OFF_IDENTITY);
const _: () = assert!(OFF_IDENTITY + 32 == OFF_ENTRIES);

/// Length of a document with `count` entries.
pub const fn document_len(count: usize) -> usize {
    OFF_ENTRIES + count * ENTRY_LEN + SIGNATURE_LEN
}
/// Longest possible document.
pub const MAX_DOCUMENT_LEN: usize = document_len(MAX_ENTRIES);

/// Why a server key document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Shorter than the fixed header, or not the length its entry count implies.
    #[error("server key document has {found} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        found: usize,
        /// Bytes the header implies.
        expected: usize,
    },
    /// Does not start with `OTSK`.
    #[error("not an onetrip server key document (bad magic)")]
    Magic,
    /// A version this library does not speak.
    #[error("unsupported server key document version {0}")]
    Version(u8),
    /// A version 1 document: it carries no expiry, so a copy captured before a key
    /// rotation would stay usable forever. Refused; the server must be upgraded.
    #[error("server key document version 1 has no expiry and is no longer accepted: upgrade the onetrip server to one that serves version 2")]
    NoExpiry,
    /// Zero entries, more than [`MAX_ENTRIES`], non-zero reserved bytes, or an
    /// `expires_at` before `issued_at`.
    #[error("server key document header is invalid: {0}")]
    Header(&'static str),
    /// An entry ends before it starts, or two entries share a key id.
    #[error("server key document entry {index} is invalid: {reason}")]
    Entry {
        /// Zero-based entry index.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The Ed25519 signature does not verify under the embedded identity key.
    #[error("server key document signature is invalid: the document was altered or forged")]
    Signature,
    /// Signature fine, but the identity is not the pinned one.
    #[error("server identity changed: expected {expected}, got {found}. If the operator rotated the identity key, update the pinned fingerprint; otherwise you may be talking to an impostor")]
    IdentityMismatch {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint the server presented.
        found: Fingerprint,
    },
    /// No entry is valid at the given time.
    #[error("server key document has no handshake key valid now (server clock or document stale)")]
    NoCurrentKey,
    /// The document is past its signed `expires_at`: fetch a fresh one. A server
    /// that keeps serving it is stale, or someone replays an old copy.
    #[error("server key document expired at {expires_at} (now {now}): fetch it again; if the server keeps serving an expired document it is replayed or this machine's clock is fast")]
    Expired {
        /// The document's `expires_at`.
        expires_at: u64,
        /// The time it was checked at.
        now: u64,
    },
}

/// The server's long-term Ed25519 identity key. Signs documents and
/// "server key changed" answers; never used for key agreement.
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    /// A new identity from a CSPRNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_seed(&Secret::random(rng))
    }
    /// The identity whose Ed25519 seed is `seed`.
    pub fn from_seed(seed: &Secret<32>) -> Self {
        Self(SigningKey::from_bytes(seed.expose()))
    }
    /// The seed, for sealed storage at rest.
    pub fn seed(&self) -> Secret<32> {
        Secret::new(self.0.to_bytes())
    }
    /// The Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public())
    }
    /// Ed25519 signature over `context ‖ message`.
    pub(crate) fn sign(&self, context: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut signed = Vec::with_capacity(context.len() + message.len());
        signed.extend_from_slice(context);
        signed.extend_from_slice(message);
        self.0.sign(&signed).to_bytes()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({}, private: [redacted])", self.fingerprint())
    }
}

/// Checks an Ed25519 signature over `context ‖ message` (strict verification).
pub(crate) fn verify_signature(
    identity: &[u8; 32],
    context: &[u8],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(identity) else {
        return false;
    };
    let mut signed = Vec::with_capacity(context.len() + message.len());
    signed.extend_from_slice(context);
    signed.extend_from_slice(message);
    key.verify_strict(&signed, &Signature::from_bytes(signature)).is_ok()
}

/// SHA-256 of the identity public key, shown as `SHA256:<base64>` like ssh.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why a fingerprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint: expected \"SHA256:\" followed by 43 base64 characters, as printed by `onetrip server-key show`")]
pub struct FingerprintParseError;

impl Fingerprint {
    /// The fingerprint of an Ed25519 identity public key.
    pub fn of(identity_public: &[u8; 32]) -> Self {
        Self(Sha256::digest(identity_public).into())
    }
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;
    fn from_str(s: &str) -> Result<Self, FingerprintParseError> {
        let b64 = s.trim().strip_prefix("SHA256:").ok_or(FingerprintParseError)?;
        let mut out = [0u8; 33];
        match STANDARD_NO_PAD.decode_slice(b64, &mut out) {
            Ok(32) => Ok(Self(out[..32].try_into().map_err(|_| FingerprintParseError)?)),
            _ => Err(FingerprintParseError),
        }
    }
}

/// One server handshake key as listed in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerKeyEntry {
    /// Identifies the key inside handshake requests.
    pub key_id: [u8; SERVER_KEY_ID_LEN],
    /// X25519 public key.
    pub public: [u8; 32],
    /// First unix second at which clients should use it.
    pub not_before: u64,
    /// Last unix second at which the server accepts it.
    pub not_after: u64,
}

impl ServerKeyEntry {
    /// True when the server accepts this key at `now`.
    pub fn is_valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A verified server key document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeyDocument {
    issued_at: u64,
    expires_at: u64,
    identity: [u8; 32],
    count: usize,
    entries: [ServerKeyEntry; MAX_ENTRIES],
}

const EMPTY_ENTRY: ServerKeyEntry =
    ServerKeyEntry { key_id: [0; SERVER_KEY_ID_LEN], public: [0; 32], not_before: 0, not_after: 0 };

impl ServerKeyDocument {
    /// Builds and checks a document for `identity`'s public key, usable by clients
    /// from `issued_at` to `expires_at` inclusive.
    ///
    /// # Errors
    /// [`DocumentError::Header`] / [`DocumentError::Entry`] for an empty or oversized
    /// list, `expires_at < issued_at`, an inverted validity or a duplicate key id.
    pub fn new(
        issued_at: u64,
        expires_at: u64,
        identity: [u8; 32],
        list: &[ServerKeyEntry],
    ) -> Result<Self, DocumentError> {
        if list.is_empty() || list.len() > MAX_ENTRIES {
            return Err(DocumentError::Header("entry count must be 1 to 4"));
        }
        let mut entries = [EMPTY_ENTRY; MAX_ENTRIES];
        entries[..list.len()].copy_from_slice(list);
        let doc = Self { issued_at, expires_at, identity, count: list.len(), entries };
        doc.check_entries()?;
        Ok(doc)
    }

    fn check_entries(&self) -> Result<(), DocumentError> {
        if self.expires_at < self.issued_at {
            return Err(DocumentError::Header("expires_at is before issued_at"));
        }
        for (index, e) in self.entries().iter().enumerate() {
            if e.not_before > e.not_after {
                return Err(DocumentError::Entry { index, reason: "not_after is before not_before" });
            }
            if self.entries()[..index].iter().any(|p| p.key_id == e.key_id) {
                return Err(DocumentError::Entry { index, reason: "duplicate key id" });
            }
        }
        Ok(())
    }

    /// When the server produced this document.
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }
    /// The last second at which clients may use this document (signed).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// Refuses the document once `now` is past its `expires_at`.
    ///
    /// # Errors
    /// [`DocumentError::Expired`] naming both times.
    pub fn check_fresh(&self, now: u64) -> Result<(), DocumentError> {
        if now > self.expires_at {
            return Err(DocumentError::Expired { expires_at: self.expires_at, now });
        }
        Ok(())
    }
    /// The Ed25519 identity public key that signed it.
    pub fn identity(&self) -> &[u8; 32] {
        &self.identity
    }
    /// The identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.identity)
    }
    /// The listed handshake keys.
    pub fn entries(&self) -> &[ServerKeyEntry] {
        &self.entries[..self.count]
    }
    /// The key a client should use at `now`: among the valid ones, the newest (latest
    /// `not_before`; on a tie, the one valid longest, i.e. the rotation successor).
    ///
    /// # Errors
    /// [`DocumentError::Expired`] when the document itself is past `expires_at` (a
    /// stale document names no key at all); [`DocumentError::NoCurrentKey`] if no
    /// entry is valid at `now`.
    pub fn current(&self, now: u64) -> Result<&ServerKeyEntry, DocumentError> {
        self.check_fresh(now)?;
        self.entries()
            .iter()
            .filter(|e| e.is_valid_at(now))
            .max_by_key(|e| (e.not_before, e.not_after))
            .ok_or(DocumentError::NoCurrentKey)
    }

    /// Checks the identity against a pinned fingerprint (constant time).
    ///
    /// # Errors
    /// [`DocumentError::IdentityMismatch`] naming both fingerprints.
    pub fn check_pin(&self, pinned: &Fingerprint) -> Result<(), DocumentError> {
        let found = self.fingerprint();
        if found.matches(pinned) {
            Ok(())
        } else {
            Err(DocumentError::IdentityMismatch { expected: *pinned, found })
        }
    }

    /// Encodes the document and signs it with `identity`.
    ///
    /// # Errors
    /// [`DocumentError::IdentityMismatch`] if `identity` is not the key the document
    /// names.
    pub fn sign(&self, identity: &IdentityKey) -> Result<Vec<u8>, DocumentError> {
        if identity.public() != self.identity {
            return Err(DocumentError::IdentityMismatch {
                expected: Fingerprint::of(&self.identity),
                found: identity.fingerprint(),
            });
        }
        let mut out = [0u8; MAX_DOCUMENT_LEN];
        out[OFF_MAGIC..OFF_VERSION].copy_from_slice(&DOCUMENT_MAGIC);
        out[OFF_VERSION] = DOCUMENT_VERSION;
        out[OFF_COUNT] = self.count as u8;
        out[OFF_ISSUED_AT..OFF_EXPIRES_AT].copy_from_slice(&self.issued_at.to_be_bytes());
        out[OFF_EXPIRES_AT..OFF_IDENTITY].copy_from_slice(&self.expires_at.to_be_bytes());
        out[OFF_IDENTITY..OFF_ENTRIES].copy_from_slice(&self.identity);
        for (i, e) in self.entries().iter().enumerate() {
            let at = OFF_ENTRIES + i * ENTRY_LEN;
            let slot = &mut out[at..at + ENTRY_LEN];
            slot[ENTRY_OFF_ID..ENTRY_OFF_PUBLIC].copy_from_slice(&e.key_id);
            slot[ENTRY_OFF_PUBLIC..ENTRY_OFF_NOT_BEFORE].copy_from_slice(&e.public);
            slot[ENTRY_OFF_NOT_BEFORE..ENTRY_OFF_NOT_AFTER].copy_from_slice(&e.not_before.to_be_bytes());
            slot[ENTRY_OFF_NOT_AFTER..ENTRY_LEN].copy_from_slice(&e.not_after.to_be_bytes());
        }
        let signed_len = document_len(self.count) - SIGNATURE_LEN;
        let signature = identity.sign(SIGN_CONTEXT_DOCUMENT, &out[..signed_len]);
        out[signed_len..signed_len + SIGNATURE_LEN].copy_from_slice(&signature);
        Ok(out[..signed_len + SIGNATURE_LEN].to_vec())
    }

    /// Parses a signed document and verifies its signature under the identity key it
    /// carries. Pinning is a separate step ([`Self::check_pin`]).
    ///
    /// # Errors
    /// A [`DocumentError`] naming the first problem found.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let header: &[u8; OFF_ENTRIES] =
            bytes.first_chunk().ok_or(DocumentError::Length { found: bytes.len(), expected: document_len(1) })?;
        if header[OFF_MAGIC..OFF_VERSION] != DOCUMENT_MAGIC {
            return Err(DocumentError::Magic);
        }
        match header[OFF_VERSION] {
            DOCUMENT_VERSION => {}
            LEGACY_DOCUMENT_VERSION => return Err(DocumentError::NoExpiry),
            other => return Err(DocumentError::Version(other)),
        }
        let count = usize::from(header[OFF_COUNT]);
        if count == 0 || count > MAX_ENTRIES {
            return Err(DocumentError::Header("entry count must be 1 to 4"));
        }
        if header[OFF_RESERVED..OFF_ISSUED_AT] != [0, 0] {
            return Err(DocumentError::Header("reserved bytes must be zero"));
        }
        let expected = document_len(count);
        if bytes.len() != expected {
            return Err(DocumentError::Length { found: bytes.len(), expected });
        }
        let (signed, signature) = bytes.split_at(expected - SIGNATURE_LEN);
        let signature: &[u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| DocumentError::Length { found: bytes.len(), expected })?;
        let identity: [u8; 32] = *crate::codec::field::<OFF_IDENTITY, 32, OFF_ENTRIES>(header);
        if !verify_signature(&identity, SIGN_CONTEXT_DOCUMENT, signed, signature) {
            return Err(DocumentError::Signature);
        }
        let mut entries = [EMPTY_ENTRY; MAX_ENTRIES];
        for (entry, raw) in entries.iter_mut().zip(signed[OFF_ENTRIES..].chunks_exact(ENTRY_LEN)) {
            let raw: &[u8; ENTRY_LEN] =
                raw.try_into().map_err(|_| DocumentError::Length { found: bytes.len(), expected })?;
            *entry = ServerKeyEntry {
                key_id: *crate::codec::field::<ENTRY_OFF_ID, SERVER_KEY_ID_LEN, ENTRY_LEN>(raw),
                public: *crate::codec::field::<ENTRY_OFF_PUBLIC, 32, ENTRY_LEN>(raw),
                not_before: crate::codec::read_u64::<ENTRY_OFF_NOT_BEFORE, ENTRY_LEN>(raw),
                not_after: crate::codec::read_u64::<ENTRY_OFF_NOT_AFTER, ENTRY_LEN>(raw),
            };
        }
        let doc = Self {
            issued_at: crate::codec::read_u64::<OFF_ISSUED_AT, OFF_ENTRIES>(header),
            expires_at: crate::codec::read_u64::<OFF_EXPIRES_AT, OFF_ENTRIES>(header),
            identity,
            count,
            entries,
        };
        doc.check_entries()?;
        Ok(doc)
    }
}
