//! The properties behind the cargo-fuzz campaign (`fuzz/`), one public function per
//! target; each `fuzz/fuzz_targets/<name>.rs` is a one-line call to the function of
//! the same name. Compiled only with the `fuzzing` feature.
//!
//! Every function takes arbitrary bytes, never panics on them, and asserts a
//! property that only a real bug can break: a parser's view equals the bytes at the
//! documented offsets, nothing unauthenticated is ever accepted, a mutated message is
//! accepted iff it equals the genuine one, an accepted message yields exactly what was
//! sent, and both crypto backends agree byte for byte.
//!
//! Inputs are read by a small cursor ([`Input`]) with a layout documented on each
//! function: fixed fields first (missing bytes read as zero, so every byte string is
//! a valid input), length-prefixed strings, then a tail of 4-byte [`Mutation`]s.
//! A hand-written layout rather than `arbitrary` keeps the seed corpus exactly
//! constructible from `vectors/v1.json` (see `tests/fuzz_seeds.rs`).
//!
//! Everything is deterministic: fixed keys come from the vector inputs or from
//! [`fuzz_input`], randomness from [`FuzzRng`] seeded by the input. The fixed server
//! uses the vectors' identity, handshake key and dummy secret, so the vector requests
//! and responses in the seeds reach the deep paths (key lookup, AEAD) at once.

mod differential;
mod handshake;
mod keys;
mod response;
mod spec;
mod tokens;

use std::sync::OnceLock;

use rand_core::{CryptoRng, RngCore};

pub use differential::backend_differential;
pub use handshake::{request_mutate, request_parse, request_process};
pub use keys::{api_key_string, server_key_document};
pub use response::response_open;
pub use tokens::token_verify;

use crate::api_key::{ApiKey, KeyId};
use crate::backend::{CryptoBackend, DefaultBackend};
use crate::handshake::server::Responder;
use crate::kdf;
use crate::secret::Secret;
use crate::server_key::{IdentityKey, ServerKeyEntry};
use crate::token::{TokenKeyring, TokenVerifier};

/// The fixed clock of every fuzz target: the vectors' `now`.
pub const NOW: u64 = 1_790_000_000;
/// Audience of the fixed token verifier (the vectors' audience).
pub const AUDIENCE: &str = "db.example";
/// At most this many mutations are read from an input's tail.
pub const MAX_MUTATIONS: usize = 16;
/// Bytes per mutation in an input's tail.
pub const MUTATION_LEN: usize = 4;

/// The vectors' named inputs: `BLAKE3-derive_key("onetrip test vector input", name)`,
/// exactly as `tests/vectors.rs` derives them.
pub fn vector_input<const N: usize>(name: &str) -> [u8; N] {
    kdf::derive_public("onetrip test vector input", &[name.as_bytes()])
}

/// Fuzz-only fixed inputs, disjoint from every vector input.
pub fn fuzz_input<const N: usize>(name: &str) -> [u8; N] {
    kdf::derive_public("onetrip fuzz input", &[name.as_bytes()])
}

/// Deterministic CSPRNG-shaped generator (BLAKE3 XOF of a seed), for the APIs that
/// take an RNG. Fuzzing only: its output is a function of the input.
pub struct FuzzRng(blake3::OutputReader);

impl FuzzRng {
    /// A generator whose stream is determined by `seed`.
    pub fn new(seed: &[u8]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("onetrip fuzz rng");
        h.update(seed);
        Self(h.finalize_xof())
    }
}

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}
impl CryptoRng for FuzzRng {}

/// Reads a fuzz input front to back. Reads past the end yield zeros (fixed fields)
/// or fewer bytes (strings), so no input is ever refused by the harness itself.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }
    /// One byte.
    pub fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    /// `N` bytes, zero-padded when the input ends.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let n = N.min(self.0.len());
        let mut out = [0u8; N];
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    /// Big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    /// Big-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
    /// A length byte, then up to that many bytes.
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }
    /// Everything not yet read.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// One byte change: `op` = target << 1 | (1 = set, 0 = xor), position (big-endian,
/// taken modulo the target's length), value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mutation {
    /// Which buffer (for targets that mutate several); ignored elsewhere.
    pub target: u8,
    /// Replace the byte instead of xoring it.
    pub set: bool,
    /// Position, modulo the buffer length.
    pub pos: u16,
    /// Byte to set or xor in.
    pub value: u8,
}

impl Mutation {
    /// Reads up to [`MAX_MUTATIONS`] mutations from an input's tail.
    pub fn list(tail: &[u8]) -> impl Iterator<Item = Mutation> + '_ {
        tail.chunks_exact(MUTATION_LEN).take(MAX_MUTATIONS).map(|c| Mutation {
            target: c[0] >> 1,
            set: c[0] & 1 == 1,
            pos: u16::from_be_bytes([c[1], c[2]]),
            value: c[3],
        })
    }
    /// Applies the mutation to `buf` (no-op on an empty buffer).
    pub fn apply(&self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let i = usize::from(self.pos) % buf.len();
        if self.set {
            buf[i] = self.value;
        } else {
            buf[i] ^= self.value;
        }
    }
}

/// The longest valid UTF-8 prefix of `b`.
pub(crate) fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// A text field from raw bytes: mapped onto printable ASCII and cut to `max` when
/// `sanitize`, else taken as (lossy) UTF-8, which may break the protocol's rules.
pub(crate) fn text(raw: &[u8], sanitize: bool, max: usize) -> String {
    if sanitize {
        raw.iter().take(max).map(|&b| char::from(0x20 + b % 95)).collect()
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

/// The protocol's rule for a text slot of `max` bytes (PROTOCOL.md §4.2): at most
/// `max` bytes, each printable ASCII (space included).
pub(crate) fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The fixed server every handshake target talks to: the vectors' identity,
/// handshake key and dummy secret, plus an expired and a staged handshake key, and
/// a token verifier with fuzz-only keys.
pub(crate) struct World {
    pub responder: Responder,
    /// The vectors' handshake key (the current one).
    pub entry: ServerKeyEntry,
    /// Its private half, for recomputing the key schedule from the spec.
    pub server_static: <DefaultBackend as CryptoBackend>::StaticKey,
    /// The identity public key.
    pub identity: [u8; 32],
    /// The vectors' registered API key.
    pub registered: ApiKey,
    /// Seals tokens for granted replies.
    pub tokens: TokenVerifier,
}

/// Id of the fixed responder's expired handshake key.
pub(crate) const EXPIRED_KEY_ID: [u8; 8] = *b"expired0";
/// Id of the fixed responder's staged (not yet current) handshake key.
pub(crate) const STAGED_KEY_ID: [u8; 8] = *b"staged00";

pub(crate) fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let backend = DefaultBackend::default();
        let seed = Secret::new(vector_input::<32>("identity seed"));
        let identity = IdentityKey::from_seed(&seed);
        let identity_public = identity.public();
        let mut responder = Responder::new(backend, identity, Secret::new(vector_input::<32>("dummy secret")));
        let expect = "fixed handshake keys are valid";
        let server_private = Secret::new(vector_input::<32>("server static private"));
        let server_static = backend.static_key(&server_private).expect(expect);
        let entry = responder
            .add_key(vector_input("server key id"), &server_private, NOW - 86_400, NOW + 86_400)
            .expect(expect);
        responder
            .add_key(EXPIRED_KEY_ID, &Secret::new(fuzz_input::<32>("expired key")), NOW - 172_800, NOW - 1)
            .expect(expect);
        responder
            .add_key(STAGED_KEY_ID, &Secret::new(fuzz_input::<32>("staged key")), NOW + 3_600, NOW + 172_800)
            .expect(expect);
        let registered = ApiKey::from_parts(
            KeyId::from_bytes(vector_input("api key id")),
            Secret::new(vector_input("api key secret")),
        );
        let keyring = TokenKeyring::new(*b"fz01", Secret::new(fuzz_input::<32>("grant token master")));
        let tokens = keyring.for_audience(backend, AUDIENCE).expect("fixed audience fits");
        World { responder, entry, server_static, identity: identity_public, registered, tokens }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_zero_padded_fields_and_clipped_strings() {
        let mut i = Input::new(&[1, 2, 3, 5, 9, 9]);
        assert_eq!(i.byte(), 1);
        assert_eq!(i.u16(), 0x0203);
        assert_eq!(i.bytes(), &[9, 9]);
        assert_eq!(i.array::<3>(), [0, 0, 0]);
        assert!(i.rest().is_empty());
    }

    #[test]
    fn mutations_wrap_positions_and_skip_empty_buffers() {
        let m: Vec<_> = Mutation::list(&[0x01, 0, 5, 7, 0x04, 0, 1, 0xff, 9]).collect();
        assert_eq!(m.len(), 2);
        let mut buf = [0u8; 3];
        m[0].apply(&mut buf); // set buf[5 % 3] = 7
        m[1].apply(&mut buf); // xor buf[1] ^= 0xff
        assert_eq!(buf, [0, 0xff, 7]);
        assert_eq!(m[1].target, 2);
        m[0].apply(&mut []);
    }

    #[test]
    fn world_matches_the_vectors() {
        let w = world();
        assert_eq!(w.registered.encode().as_str(), "otk_28hFN8fOrAwSJr_qm1YhqstTr-aN2AWbsYCqU4RnL8rGcm6T1mhXDWp9n9w");
        assert_eq!(w.entry.key_id, vector_input::<8>("server key id"));
    }
}
