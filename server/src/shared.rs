//! State that several replicas must share: the replay cache, rate limits and token
//! revocations. Handlers see only the [`SharedState`] trait; [`MemoryShared`] is the
//! single-node default; [`crate::shared_redis::RedisShared`] shares it between replicas.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use dashmap::DashMap;

use crate::replay_cache::ReplayCache;

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
/// Handlers hold it as [`Shared`] (a trait object), so the backend is chosen at start
/// without a type parameter on every handler.
#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// Records `id` until `expires_at`; `Ok(true)` if it was new, `Ok(false)` if
    /// already present (a replay). Never records twice.
    async fn remember_once(&self, id: [u8; 16], now: u64, expires_at: u64) -> Result<bool, SharedError>;

    /// Counts one event for `bucket` at a sustained rate of `limit` per `window_secs`
    /// with bursts of at most `limit` ([`gcra`]: no window boundary to burst across).
    /// A refused event is not counted.
    async fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window_secs: u64,
        now: u64,
    ) -> Result<RateDecision, SharedError>;

    /// Revokes a token id until `until` (its expiry).
    async fn revoke_token(&self, token_id: [u8; 16], until: u64) -> Result<(), SharedError>;

    /// True when the token id was revoked.
    async fn is_token_revoked(&self, token_id: [u8; 16], now: u64) -> Result<bool, SharedError>;

    /// Takes the exclusive lease `name` for `holder` until `expires_at`: `Ok(true)` if
    /// taken, `Ok(false)` while another holder's lease runs. The expiry bounds how
    /// long a holder that crashed (or a replica that died) can keep others out. On
    /// Redis this is `SET name holder NX PX`.
    async fn try_lease(&self, name: &str, holder: u128, now: u64, expires_at: u64) -> Result<bool, SharedError>;

    /// Ends `holder`'s lease on `name`; a lease that expired and was taken by another
    /// holder since is left alone.
    async fn release_lease(&self, name: &str, holder: u128) -> Result<(), SharedError>;

    /// Backend hook for `/metrics`: the ids this process's own replay cache holds,
    /// when the backend keeps one here (a shared server's sizes are not this process's).
    fn local_replay_entries(&self) -> Option<usize> {
        None
    }

    /// False while the backend is known to fail (its last probe or a command since
    /// failed): `/healthz` then answers 503 `shared_state_unavailable`, so that a load
    /// balancer takes this replica out. Cheap: no round trip.
    fn healthy(&self) -> bool {
        true
    }

    /// Checks the backend (the serve loop calls it once a second), so that
    /// [`SharedState::healthy`] recovers without traffic.
    async fn probe(&self) {}

    /// True once after the backend came back from an outage in which it may have
    /// lost writes (Redis restarted, or failed over): the serve loop then reloads the
    /// replay ids stamped ahead and the token revocations from the store.
    fn take_recovery(&self) -> bool {
        false
    }

    /// Backend hook for `/metrics`: failed operations by name
    /// (`onetrip_shared_state_errors_total{op}`); none for a backend that cannot fail
    /// that way.
    fn error_counts(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The shared-state backend as handlers hold it.
pub type Shared = Arc<dyn SharedState>;

/// Single-node shared state in memory (dashmap), bounded in size.
#[derive(Debug)]
pub struct MemoryShared {
    replay: ReplayCache,
    /// Bucket → GCRA theoretical arrival time in milliseconds (see [`gcra`]).
    limits: DashMap<String, u64>,
    revoked: DashMap<[u8; 16], u64>,
    /// Lease name → (holder, expiry).
    leases: DashMap<String, (u128, u64)>,
    last_sweep: AtomicU64,
}

impl MemoryShared {
    /// A store holding at most `replay_capacity` replay ids, for the default clock
    /// window ([`MemoryShared::with_window`]).
    pub fn new(replay_capacity: usize) -> Self {
        Self::with_window(onetrip_protocol::DEFAULT_CLOCK_WINDOW_SECS, replay_capacity)
    }

    /// A store for requests accepted within ±`window_secs`, holding at most
    /// `replay_capacity` replay ids.
    pub fn with_window(window_secs: u64, replay_capacity: usize) -> Self {
        Self {
            replay: ReplayCache::new(window_secs, replay_capacity),
            limits: DashMap::new(),
            revoked: DashMap::new(),
            leases: DashMap::new(),
            last_sweep: AtomicU64::new(0),
        }
    }
}

/// One step of the generic cell rate algorithm (GCRA) on a bucket's single stored
/// value, its theoretical arrival time `tat` in Unix milliseconds (0 for a new
/// bucket): returns the decision and the value to store. Events are spaced
/// `window_secs / limit` apart on average, and at most `limit` can come at once; in
/// any stretch of time `d` at most `limit + d·limit/window_secs` are allowed, so the
/// burst of two full windows across a boundary (fixed windows) cannot happen.
///
/// Pure integer arithmetic on one value, so a Redis backend can run it atomically in a
/// Lua script: `GET` the value, compute this, `SET ... PX` it with the time until
/// `tat` (a bucket past its `tat` is the same as none).
pub fn gcra(tat: u64, limit: u64, window_secs: u64, now: u64) -> (RateDecision, u64) {
    if limit == 0 {
        return (RateDecision::Limited { retry_after: window_secs.max(1) }, tat);
    }
    let now_ms = now.saturating_mul(1000);
    let interval = window_secs.saturating_mul(1000).div_ceil(limit).max(1);
    let start = tat.max(now_ms);
    // How far ahead of now the bucket may run: `limit - 1` intervals of burst.
    let tolerance = (limit - 1).saturating_mul(interval);
    let ahead = start - now_ms;
    if ahead > tolerance {
        let wait_ms = ahead - tolerance;
        return (RateDecision::Limited { retry_after: wait_ms.div_ceil(1000).max(1) }, tat);
    }
    (RateDecision::Allowed, start.saturating_add(interval))
}

#[async_trait]
impl SharedState for MemoryShared {
    async fn remember_once(&self, id: [u8; 16], now: u64, expires_at: u64) -> Result<bool, SharedError> {
        // Fail closed: better to refuse a handshake than to forget replay ids.
        self.replay.remember_once(id, now, expires_at).map_err(|e| SharedError(e.to_string()))
    }

    async fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window_secs: u64,
        now: u64,
    ) -> Result<RateDecision, SharedError> {
        let mut tat = self.limits.entry(bucket.to_owned()).or_insert(0);
        let (decision, next) = gcra(*tat, limit, window_secs, now);
        *tat = next;
        Ok(decision)
    }

    async fn revoke_token(&self, token_id: [u8; 16], until: u64) -> Result<(), SharedError> {
        self.revoked.insert(token_id, until);
        Ok(())
    }

    async fn is_token_revoked(&self, token_id: [u8; 16], now: u64) -> Result<bool, SharedError> {
        Ok(self.revoked.get(&token_id).is_some_and(|until| *until >= now))
    }

    async fn try_lease(&self, name: &str, holder: u128, now: u64, expires_at: u64) -> Result<bool, SharedError> {
        let mut lease = self.leases.entry(name.to_owned()).or_insert((holder, 0));
        let (current, until) = *lease;
        if current != holder && until >= now {
            return Ok(false);
        }
        *lease = (holder, expires_at);
        Ok(true)
    }

    async fn release_lease(&self, name: &str, holder: u128) -> Result<(), SharedError> {
        self.leases.remove_if(name, |_, (current, _)| *current == holder);
        Ok(())
    }

    fn local_replay_entries(&self) -> Option<usize> {
        Some(self.replay_entries())
    }
}

/// In-memory details, not part of [`SharedState`]: a backend that expires entries on
/// its own (Redis) has nothing to sweep, and its sizes are not this process's.
impl MemoryShared {
    /// Entries in the replay cache (for metrics).
    pub fn replay_entries(&self) -> usize {
        self.replay.len()
    }

    /// Drops expired entries (the serve loop calls it once a second).
    pub fn sweep(&self, now: u64) {
        if self.last_sweep.swap(now, Ordering::Relaxed) == now {
            return;
        }
        self.replay.sweep(now);
        self.revoked.retain(|_, until| *until >= now);
        self.leases.retain(|_, (_, until)| *until >= now);
        // A bucket whose arrival time has passed is full again: the same as no entry.
        let now_ms = now.saturating_mul(1000);
        self.limits.retain(|_, tat| *tat > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replay_ids_are_remembered_once_until_expiry() {
        let s = MemoryShared::new(10);
        // A request's id always comes with the same expiry (its stamp + window).
        assert!(s.remember_once([1; 16], 100, 160).await.unwrap());
        assert!(!s.remember_once([1; 16], 150, 160).await.unwrap());
        assert!(!s.remember_once([1; 16], 160, 160).await.unwrap(), "live through its last second");
        assert!(s.remember_once([2; 16], 150, 210).await.unwrap());
        assert!(s.remember_once([1; 16], 221, 281).await.unwrap(), "expired ids may be reused");
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_until_released_or_expired() {
        let s = MemoryShared::new(10);
        assert!(s.try_lease("otp.resend:aa", 1, 100, 110).await.unwrap());
        assert!(!s.try_lease("otp.resend:aa", 2, 105, 115).await.unwrap(), "held by 1");
        assert!(s.try_lease("otp.resend:bb", 2, 105, 115).await.unwrap(), "other names are free");
        // Only the holder can release; another holder's release changes nothing.
        s.release_lease("otp.resend:aa", 2).await.unwrap();
        assert!(!s.try_lease("otp.resend:aa", 3, 106, 116).await.unwrap());
        s.release_lease("otp.resend:aa", 1).await.unwrap();
        assert!(s.try_lease("otp.resend:aa", 3, 106, 116).await.unwrap(), "free once released");
        // A holder that never releases (a replica that died) keeps it until expiry.
        assert!(!s.try_lease("otp.resend:aa", 4, 116, 126).await.unwrap(), "live through its last second");
        assert!(s.try_lease("otp.resend:aa", 4, 117, 127).await.unwrap(), "expired leases can be taken");
        // The old holder's late release does not end the new holder's lease.
        s.release_lease("otp.resend:aa", 3).await.unwrap();
        assert!(!s.try_lease("otp.resend:aa", 5, 118, 128).await.unwrap());
        s.sweep(200);
        assert!(s.leases.is_empty(), "sweep drops expired leases");
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
    async fn rate_limit_allows_a_burst_of_limit_then_the_sustained_rate() {
        let s = MemoryShared::new(1);
        for _ in 0..3 {
            assert_eq!(s.rate_limit("k", 3, 10, 100).await.unwrap(), RateDecision::Allowed);
        }
        // One event every 10/3 s: the next frees up at 103.334 s.
        assert_eq!(s.rate_limit("k", 3, 10, 100).await.unwrap(), RateDecision::Limited { retry_after: 4 });
        assert_eq!(s.rate_limit("other", 3, 10, 100).await.unwrap(), RateDecision::Allowed);
        assert_eq!(s.rate_limit("k", 3, 10, 103).await.unwrap(), RateDecision::Limited { retry_after: 1 });
        assert_eq!(s.rate_limit("k", 3, 10, 104).await.unwrap(), RateDecision::Allowed);
        assert_eq!(s.rate_limit("k", 3, 10, 104).await.unwrap(), RateDecision::Limited { retry_after: 3 });
        // After a full quiet window the whole burst is back.
        for _ in 0..3 {
            assert_eq!(s.rate_limit("k", 3, 10, 120).await.unwrap(), RateDecision::Allowed);
        }
    }

    #[tokio::test]
    async fn a_burst_across_a_window_boundary_is_refused() {
        // Fixed, epoch-aligned windows allowed `limit` at 599 s and `limit` more at
        // 600 s: twice the limit in one second.
        let s = MemoryShared::new(1);
        let mut allowed = 0;
        for now in [599, 600] {
            for _ in 0..5 {
                if s.rate_limit("dest", 5, 600, now).await.unwrap() == RateDecision::Allowed {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 5, "a 2x burst across the boundary must be refused");
        // Refused events are not counted: the sustained rate (one per 120 s) holds.
        assert_eq!(s.rate_limit("dest", 5, 600, 718).await.unwrap(), RateDecision::Limited { retry_after: 1 });
        assert_eq!(s.rate_limit("dest", 5, 600, 719).await.unwrap(), RateDecision::Allowed);
    }

    #[test]
    fn gcra_handles_extreme_limits() {
        assert_eq!(gcra(0, 0, 10, 100).0, RateDecision::Limited { retry_after: 10 });
        let mut tat = 0;
        for _ in 0..1000 {
            let (d, next) = gcra(tat, u64::MAX, 1, 100);
            assert_eq!(d, RateDecision::Allowed);
            tat = next;
        }
        assert_eq!(gcra(u64::MAX, 1, u64::MAX, u64::MAX).0, RateDecision::Allowed);
    }

    #[tokio::test]
    async fn sweep_forgets_only_refilled_buckets() {
        let s = MemoryShared::new(1);
        s.rate_limit("a", 1, 10, 100).await.unwrap();
        s.sweep(105);
        assert_eq!(s.limits.len(), 1, "a is still draining");
        s.sweep(110);
        assert_eq!(s.limits.len(), 0);
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

/// The client a per-IP limit counts `ip` as: an IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket), or an IPv6 /64. One host or one customer
/// usually holds a whole /64, so counting single IPv6 addresses would give it 2^64
/// separate budgets.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Distinct clients past which requests sweep out stale windows, at most once a
/// second between them (not on every request, as before).
pub const IP_LIMITER_SWEEP_ABOVE: usize = 100_000;
/// Most clients tracked at once (~40 bytes each, ~20 MB): memory stays bounded however
/// many distinct sources (IPv4 addresses, IPv6 /64s) arrive within one second.
pub const IP_LIMITER_CAPACITY: usize = 500_000;

/// Per-replica, per-client fixed-window limiter for unauthenticated paths: checked
/// before any cryptography, without allocation, and never shared (an IP flooding one
/// replica need not cost the others a round trip to Redis). Clients are counted by
/// [`client_key`] (IPv6 per /64).
///
/// Bounded in work and memory: past `sweep_above` clients, stale windows are dropped
/// at most once a second (one request that second pays one pass over the table; the
/// others pay nothing), and past `capacity` clients a new client is refused until the
/// next second's sweep, while the clients already counted go on as usual. Only a
/// source that holds more than `capacity` addresses (or /64s) in one second can meet
/// that refusal, and it is one second long.
#[derive(Debug)]
pub struct IpLimiter {
    windows: DashMap<IpAddr, (u64, u64)>,
    last_sweep: AtomicU64,
    sweep_above: usize,
    capacity: usize,
    #[cfg(test)]
    sweeps: AtomicU64,
}

impl Default for IpLimiter {
    fn default() -> Self {
        Self::with_bounds(IP_LIMITER_SWEEP_ABOVE, IP_LIMITER_CAPACITY)
    }
}

impl IpLimiter {
    /// A limiter that sweeps above `sweep_above` clients and tracks at most `capacity`.
    pub fn with_bounds(sweep_above: usize, capacity: usize) -> Self {
        Self {
            windows: DashMap::new(),
            last_sweep: AtomicU64::new(0),
            sweep_above,
            capacity: capacity.max(1),
            #[cfg(test)]
            sweeps: AtomicU64::new(0),
        }
    }

    /// Counts one request from `ip` in the current one-second window.
    pub fn check(&self, ip: IpAddr, per_second: u64, now: u64) -> RateDecision {
        let key = client_key(ip);
        if self.windows.len() > self.sweep_above && self.last_sweep.swap(now, Ordering::Relaxed) != now {
            // A window of an earlier second is reset on its client's next request
            // anyway: it holds nothing worth keeping.
            self.windows.retain(|_, (start, _)| *start >= now);
            #[cfg(test)]
            self.sweeps.fetch_add(1, Ordering::Relaxed);
        }
        if self.windows.len() >= self.capacity && !self.windows.contains_key(&key) {
            return RateDecision::Limited { retry_after: 1 };
        }
        let mut w = self.windows.entry(key).or_insert((now, 0));
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

#[cfg(test)]
mod ip_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:3::1")));
        // Dual-stack sockets show IPv4 clients as ::ffff:a.b.c.d: still one per address,
        // not every IPv4 client in one ::ffff:0:0/64 bucket.
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(client_key(ip("::ffff:192.0.2.7")), client_key(ip("::ffff:192.0.2.8")));
    }

    #[test]
    fn the_ip_limiter_counts_an_ipv6_slash_64_as_one_client() {
        let l = IpLimiter::default();
        // Rotating through addresses of one /64 does not buy more requests.
        for i in 0..3u16 {
            let addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, i, i, i + 1));
            assert_eq!(l.check(addr, 3, 100), RateDecision::Allowed);
        }
        assert_eq!(l.check(ip("2001:db8:0:1:dead:beef::1"), 3, 100), RateDecision::Limited { retry_after: 1 });
        // Another /64, and IPv4 addresses, have their own budgets.
        assert_eq!(l.check(ip("2001:db8:0:2::1"), 3, 100), RateDecision::Allowed);
        for _ in 0..3 {
            assert_eq!(l.check(ip("192.0.2.1"), 3, 100), RateDecision::Allowed);
        }
        assert_eq!(l.check(ip("192.0.2.2"), 3, 100), RateDecision::Allowed);
    }

    fn nth_ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn a_large_table_is_swept_at_most_once_a_second_not_on_every_request() {
        // The bounds the server runs with: before, every request past 100,000 clients
        // ran a full pass over the table.
        let l = IpLimiter::default();
        let past = u32::try_from(IP_LIMITER_SWEEP_ABOVE).unwrap() + 1_000;
        for i in 0..past {
            assert_eq!(l.check(nth_ip(i), 5, 100), RateDecision::Allowed);
        }
        for i in 0..10_000 {
            l.check(nth_ip(i), 5, 100);
        }
        assert_eq!(l.sweeps.load(Ordering::Relaxed), 1, "one pass in second 100, however many requests");
        assert_eq!(l.windows.len(), past as usize, "nothing was stale in second 100");
        for i in 0..10_000 {
            l.check(nth_ip(i), 5, 101);
        }
        assert_eq!(l.sweeps.load(Ordering::Relaxed), 2, "one more pass in second 101");
        assert!(l.windows.len() <= 10_000, "the stale windows of second 100 are gone: {}", l.windows.len());
    }

    #[test]
    fn the_table_holds_at_most_its_capacity_and_known_clients_go_on() {
        let l = IpLimiter::with_bounds(10, 100);
        let mut refused = 0;
        for i in 0..1_000 {
            if l.check(nth_ip(i), 5, 100) != RateDecision::Allowed {
                refused += 1;
            }
        }
        assert_eq!(l.windows.len(), 100, "memory is bounded by the capacity");
        assert_eq!(refused, 900, "new clients past the capacity wait for the next second");
        assert_eq!(l.check(nth_ip(3), 5, 100), RateDecision::Allowed, "a counted client is unaffected");
        // The next second's sweep frees the table for everyone.
        assert_eq!(l.check(nth_ip(999), 5, 101), RateDecision::Allowed);
        assert_eq!(l.windows.len(), 1);
    }
}
