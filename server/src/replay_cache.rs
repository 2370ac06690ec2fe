//! The single-node replay cache: ids kept in one slot per expiry second, so that a
//! second's ids are dropped together, without a scan, the moment they expire. A
//! request stamped `T` is accepted while `|T − now| ≤ window`, so its id is kept until
//! `T + window` and no longer: live expiries span at most `2·window + 1` seconds,
//! which is the ring's size plus one spare slot.
//!
//! Memory is bounded by `capacity` ids (fail closed beyond it). Each id is kept as its
//! first 8 bytes (ids are BLAKE3 outputs: two requests share 8 bytes with odds of
//! 2⁻⁶⁴, and a replay always matches itself): 8 bytes in a hash set, 9 to 19 bytes
//! with the set's control bytes and growth. A slot keeps its allocation when it is
//! reused, so the cache's memory is its peak: at most about 19 bytes × `capacity`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Why an id could not be recorded (the handshake then fails closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayCacheError {
    /// `capacity` ids are live: more handshakes per second than the cache was sized for.
    #[error("replay cache full ({capacity} live ids): raise replay_cache_capacity")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The expiry is outside the ring (`now` moved backwards past it, or an expiry
    /// further ahead than the window allows).
    #[error("replay id expiry {expires_at} is outside the cache's horizon at {now}")]
    Horizon {
        /// The id's expiry.
        expires_at: u64,
        /// The time of the call.
        now: u64,
    },
}

#[derive(Debug, Default)]
struct Slot {
    expires_at: u64,
    ids: HashSet<u64>,
}

/// Each second's ids are split over this many locks (by a byte of the id that the
/// set does not store), so concurrent handshakes of one second rarely wait.
const SHARDS: usize = 16;

/// Replay ids by expiry second; see the module documentation.
#[derive(Debug)]
pub struct ReplayCache {
    /// `ring · SHARDS` slots: second `s`, shard `k` at `(s mod ring) · SHARDS + k`.
    slots: Vec<Mutex<Slot>>,
    ring: u64,
    live: AtomicUsize,
    capacity: usize,
}

impl ReplayCache {
    /// A cache for requests accepted within ±`window_secs`, holding at most
    /// `capacity` ids.
    pub fn new(window_secs: u64, capacity: usize) -> Self {
        let ring = window_secs.saturating_mul(2).saturating_add(2).min(1 << 16);
        let slots = (0..ring as usize * SHARDS).map(|_| Mutex::new(Slot::default())).collect();
        Self { slots, ring, live: AtomicUsize::new(0), capacity }
    }

    /// Records `id` until `expires_at`: `Ok(true)` when it was new, `Ok(false)` when
    /// it is live already (a replay). An id whose expiry has passed is not recorded
    /// (`Ok(true)`: its request is outside the window anyway, and refused there).
    pub fn remember_once(&self, id: [u8; 16], now: u64, expires_at: u64) -> Result<bool, ReplayCacheError> {
        if expires_at < now {
            return Ok(true);
        }
        if expires_at - now >= self.ring {
            return Err(ReplayCacheError::Horizon { expires_at, now });
        }
        let second = usize::try_from(expires_at % self.ring).unwrap_or(0);
        let index = second * SHARDS + usize::from(id[8]) % SHARDS;
        let mut slot = self.slots[index].lock().unwrap_or_else(|p| p.into_inner());
        if slot.expires_at != expires_at {
            if slot.expires_at >= now && !slot.ids.is_empty() {
                // A live second of another expiry in this slot: `now` went backwards.
                return Err(ReplayCacheError::Horizon { expires_at, now });
            }
            self.live.fetch_sub(slot.ids.len(), Ordering::Relaxed);
            slot.ids.clear();
            slot.expires_at = expires_at;
        }
        let short = u64::from_le_bytes(id[..8].try_into().unwrap_or_default());
        if slot.ids.contains(&short) {
            return Ok(false);
        }
        if self.live.load(Ordering::Relaxed) >= self.capacity {
            drop(slot);
            self.sweep(now);
            if self.live.load(Ordering::Relaxed) >= self.capacity {
                return Err(ReplayCacheError::Full { capacity: self.capacity });
            }
            return self.remember_once(id, now, expires_at);
        }
        slot.ids.insert(short);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Live ids (for metrics; expired slots count until they are reused or swept).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties every expired slot (each keeps its allocation for reuse).
    pub fn sweep(&self, now: u64) {
        for slot in &self.slots {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.expires_at < now && !slot.ids.is_empty() {
                self.live.fetch_sub(slot.ids.len(), Ordering::Relaxed);
                slot.ids.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        id
    }

    #[test]
    fn an_id_is_a_replay_until_its_expiry_and_new_after() {
        let c = ReplayCache::new(60, 100);
        assert_eq!(c.remember_once(id(1), 1000, 1060), Ok(true));
        assert_eq!(c.remember_once(id(1), 1060, 1060), Ok(false), "still live at its expiry second");
        assert_eq!(c.remember_once(id(1), 1030, 1059), Ok(true), "another expiry is another slot");
        assert_eq!(c.remember_once(id(1), 1061, 1121), Ok(true), "expired ids are forgotten");
        assert_eq!(c.remember_once(id(2), 1000, 999), Ok(true), "already expired: nothing to keep");
    }

    #[test]
    fn expiries_beyond_the_window_or_behind_a_backwards_clock_fail_closed() {
        let c = ReplayCache::new(60, 100);
        assert!(matches!(c.remember_once(id(1), 1000, 1122), Err(ReplayCacheError::Horizon { .. })));
        assert_eq!(c.remember_once(id(1), 1000, 1121), Ok(true), "2·window + 1 ahead fits");
        // The clock jumps back 122 s: expiry 999 maps onto the live slot of 1121.
        assert!(matches!(c.remember_once(id(2), 878, 999), Err(ReplayCacheError::Horizon { .. })));
    }

    #[test]
    fn a_full_cache_fails_closed_until_seconds_expire() {
        let c = ReplayCache::new(60, 3);
        for n in 0..3 {
            assert_eq!(c.remember_once(id(n), 100, 160), Ok(true));
        }
        assert_eq!(c.remember_once(id(9), 100, 161), Err(ReplayCacheError::Full { capacity: 3 }));
        assert_eq!(c.remember_once(id(0), 100, 160), Ok(false), "a replay is still recognised when full");
        assert_eq!(c.remember_once(id(9), 161, 221), Ok(true), "the expired second is dropped");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn sustained_load_at_the_servers_rate_never_fills_the_default_cache() {
        // 65,000 handshakes/s (about twice this machine's measured 2-core maximum)
        // for longer than the longest entry lifetime (2·window + 1 s), stamps spread
        // as skewed clients send them: with the default capacity no id is refused.
        let window = 60;
        let c = ReplayCache::new(window, crate::config::DEFAULT_REPLAY_CACHE_CAPACITY);
        let rate = 65_000u64;
        let mut n = 0u64;
        for now in 1_000..1_000 + 2 * window + 10 {
            for i in 0..rate {
                // Most clients are in sync; one in eight is up to a window ahead.
                let skew = if i % 8 == 0 { i % (window + 1) } else { 0 };
                assert_eq!(c.remember_once(id(n), now, now + skew + window), Ok(true), "at {now}");
                n += 1;
            }
        }
        assert!(c.len() <= crate::config::DEFAULT_REPLAY_CACHE_CAPACITY);
    }
}
