//! State that several replicas must share: the replay cache, rate limits and token
//! revocations. Handlers see only the [`SharedState`] trait; [`MemoryShared`] is the
//! single-node default, and a Redis backend can implement the same trait.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// A shared-state backend failed (e.g. Redis unreachable). Handlers fail closed.
#[derive(Debug, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct SharedError(pub String);

/// Outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allowed,
    /// Refuse; retry after this many seconds.
    Limited {
        /// Seconds until the window frees up.
        retry_after: u64,
    },
}

/// Replica-shared state. Every method is atomic with respect to other replicas.
pub trait SharedState: Send + Sync + 'static {
    /// Records `id` until `expires_at`; `Ok(true)` if it was new, `Ok(false)` if
    /// already present (a replay). Never records twice.
    fn remember_once(
        &self,
        id: [u8; 16],
        now: u64,
        expires_at: u64,
    ) -> impl Future<Output = Result<bool, SharedError>> + Send;

    /// Counts one event for `bucket` in a fixed window of `window_secs`, allowing
    /// `limit` per window.
    fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window_secs: u64,
        now: u64,
    ) -> impl Future<Output = Result<RateDecision, SharedError>> + Send;

    /// Revokes a token id until `until` (its expiry).
    fn revoke_token(&self, token_id: [u8; 16], until: u64) -> impl Future<Output = Result<(), SharedError>> + Send;

    /// True when the token id was revoked.
    fn is_token_revoked(&self, token_id: [u8; 16], now: u64) -> impl Future<Output = Result<bool, SharedError>> + Send;

    /// Entries in the replay cache (for metrics).
    fn replay_entries(&self) -> usize;

    /// Drops expired entries.
    fn sweep(&self, now: u64);
}

/// Single-node shared state in memory (dashmap), bounded in size.
#[derive(Debug)]
pub struct MemoryShared {
    replay: DashMap<[u8; 16], u64>,
    replay_capacity: usize,
    limits: DashMap<String, (u64, u64)>,
    revoked: DashMap<[u8; 16], u64>,
    last_sweep: AtomicU64,
}

impl MemoryShared {
    /// A store holding at most `replay_capacity` replay ids.
    pub fn new(replay_capacity: usize) -> Self {
        Self {
            replay: DashMap::new(),
            replay_capacity,
            limits: DashMap::new(),
            revoked: DashMap::new(),
            last_sweep: AtomicU64::new(0),
        }
    }
}

impl SharedState for MemoryShared {
    async fn remember_once(&self, id: [u8; 16], now: u64, expires_at: u64) -> Result<bool, SharedError> {
        if self.replay.len() >= self.replay_capacity {
            self.sweep(now);
            if self.replay.len() >= self.replay_capacity {
                // Fail closed: better to refuse a handshake than to forget replay ids.
                return Err(SharedError("replay cache full".into()));
            }
        }
        match self.replay.entry(id) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() < now {
                    e.insert(expires_at);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(expires_at);
                Ok(true)
            }
        }
    }

    async fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window_secs: u64,
        now: u64,
    ) -> Result<RateDecision, SharedError> {
        let window_start = now - now % window_secs.max(1);
        let mut entry = self.limits.entry(bucket.to_owned()).or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        if entry.1 >= limit {
            return Ok(RateDecision::Limited { retry_after: (window_start + window_secs).saturating_sub(now).max(1) });
        }
        entry.1 += 1;
        Ok(RateDecision::Allowed)
    }

    async fn revoke_token(&self, token_id: [u8; 16], until: u64) -> Result<(), SharedError> {
        self.revoked.insert(token_id, until);
        Ok(())
    }

    async fn is_token_revoked(&self, token_id: [u8; 16], now: u64) -> Result<bool, SharedError> {
        Ok(self.revoked.get(&token_id).is_some_and(|until| *until >= now))
    }

    fn replay_entries(&self) -> usize {
        self.replay.len()
    }

    fn sweep(&self, now: u64) {
        if self.last_sweep.swap(now, Ordering::Relaxed) == now {
            return;
        }
        self.replay.retain(|_, exp| *exp >= now);
        self.revoked.retain(|_, until| *until >= now);
        self.limits.retain(|_, (start, _)| *start + 3600 >= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replay_ids_are_remembered_once_until_expiry() {
        let s = MemoryShared::new(10);
        assert!(s.remember_once([1; 16], 100, 220).await.unwrap());
        assert!(!s.remember_once([1; 16], 150, 270).await.unwrap());
        assert!(s.remember_once([2; 16], 150, 270).await.unwrap());
        assert!(s.remember_once([1; 16], 221, 341).await.unwrap(), "expired ids may be reused");
    }

    #[tokio::test]
    async fn a_full_replay_cache_fails_closed() {
        let s = MemoryShared::new(2);
        s.remember_once([1; 16], 100, 200).await.unwrap();
        s.remember_once([2; 16], 100, 200).await.unwrap();
        assert!(s.remember_once([3; 16], 100, 200).await.is_err());
        assert!(s.remember_once([3; 16], 201, 300).await.unwrap(), "sweep frees expired ids");
    }

    #[tokio::test]
    async fn rate_limit_counts_per_window() {
        let s = MemoryShared::new(1);
        for _ in 0..3 {
            assert_eq!(s.rate_limit("k", 3, 10, 100).await.unwrap(), RateDecision::Allowed);
        }
        assert_eq!(s.rate_limit("k", 3, 10, 105).await.unwrap(), RateDecision::Limited { retry_after: 5 });
        assert_eq!(s.rate_limit("other", 3, 10, 105).await.unwrap(), RateDecision::Allowed);
        assert_eq!(s.rate_limit("k", 3, 10, 110).await.unwrap(), RateDecision::Allowed);
    }

    #[tokio::test]
    async fn revoked_tokens_stay_revoked_until_expiry() {
        let s = MemoryShared::new(1);
        s.revoke_token([9; 16], 500).await.unwrap();
        assert!(s.is_token_revoked([9; 16], 499).await.unwrap());
        assert!(!s.is_token_revoked([8; 16], 499).await.unwrap());
        assert!(!s.is_token_revoked([9; 16], 501).await.unwrap());
    }
}

/// Per-replica, per-IP fixed-window limiter for unauthenticated paths: checked before
/// any cryptography, without allocation, and never shared (an IP flooding one replica
/// need not cost the others a round trip to Redis).
#[derive(Debug, Default)]
pub struct IpLimiter {
    windows: DashMap<std::net::IpAddr, (u64, u64)>,
}

impl IpLimiter {
    /// Counts one request from `ip` in the current one-second window.
    pub fn check(&self, ip: std::net::IpAddr, per_second: u64, now: u64) -> RateDecision {
        if self.windows.len() > 100_000 {
            self.windows.retain(|_, (start, _)| *start + 1 >= now);
        }
        let mut w = self.windows.entry(ip).or_insert((now, 0));
        if w.0 != now {
            *w = (now, 0);
        }
        if w.1 >= per_second {
            return RateDecision::Limited { retry_after: 1 };
        }
        w.1 += 1;
        RateDecision::Allowed
    }
}
