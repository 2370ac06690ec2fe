//! A userspace CSPRNG (BLAKE3 in XOF mode, seeded once from the OS), so that the
//! load generator does not pay two `getrandom` syscalls per handshake. The protocol
//! crate's criterion bench uses the same construction.

use rand_core::{CryptoRng, OsRng, RngCore};

/// BLAKE3 XOF keyed with 32 bytes from the OS.
pub struct FastRng(blake3::OutputReader);

impl FastRng {
    /// Seeds from the operating system.
    pub fn from_os() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        Self(blake3::Hasher::new_keyed(&seed).finalize_xof())
    }
}

impl std::fmt::Debug for FastRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastRng(<redacted>)")
    }
}

impl RngCore for FastRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill(d)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(d);
        Ok(())
    }
}

impl CryptoRng for FastRng {}
