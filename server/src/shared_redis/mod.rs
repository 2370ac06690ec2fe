//! [`SharedState`] on Redis or Redis Cluster (also Valkey), so that several replicas
//! share one replay cache, one set of rate limits and OTP send windows, one list of
//! revoked tokens and one set of OTP resend leases.
//!
//! - Each operation is one round trip on one key: `SET … NX EX` (replay ids,
//!   revocations), a Lua script (rate limits, leases; see [`scripts`]), `EXISTS`.
//! - Every key starts with the configured prefix and expires on its own.
//! - Rate limits run on Redis's clock (`TIME` in the script), so replicas with skewed
//!   clocks share one schedule. Replay ids and revocations expire a margin
//!   ([`SKEW_MARGIN_SECS`]) after the replica's own horizon, so a replica whose clock
//!   lags by up to that margin still finds them.
//! - Fail closed: an unreachable, failing-over or hung Redis makes the operation an
//!   error (never a "not seen"), bounded by the command timeout; the error is counted
//!   per operation (`onetrip_shared_state_errors_total{op}`) and `/healthz` answers
//!   503 until a probe ([`SharedState::probe`], once a second) succeeds again.
//! - Redis may lose writes it acknowledged: a restart without persistence, or a
//!   failover before the replica got them (replication is asynchronous). So after an
//!   outage this replica has seen, it treats Redis as a freshly started replay cache:
//!   requests stamped at or before the recovery are refused (the rule of a process
//!   start, `crate::replay_guard`, but as server errors: a lost id cannot be told from
//!   a fresh request, and an honest client retries), and [`SharedState::take_recovery`]
//!   tells the serve loop to reload the ids stamped ahead and the revocations from the
//!   store.

mod scripts;
mod setting;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script};
use tokio::sync::Mutex;

pub use setting::{
    RedisSetting, SharedSetting, SharedSettingError, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_SHARED_PREFIX,
};

use crate::shared::{RateDecision, SharedError, SharedState};

/// Replay ids and revocations outlive the replica's horizon by this much, so a
/// replica whose clock lags the one that wrote them by up to this still sees them.
pub const SKEW_MARGIN_SECS: u64 = 30;
/// Longest rate window accepted (10 years): keeps the script's milliseconds exact.
const MAX_WINDOW_SECS: u64 = 315_360_000;
/// Largest limit passed to the script; any larger is the same in practice.
const MAX_LIMIT: u64 = 1 << 40;

/// The operations counted in `onetrip_shared_state_errors_total{op}`.
pub const OPS: [&str; 7] = ["replay", "rate_limit", "revoke", "revoked_check", "lease", "lease_release", "probe"];

#[derive(Clone, Copy)]
enum Op {
    Replay,
    RateLimit,
    Revoke,
    RevokedCheck,
    Lease,
    LeaseRelease,
    Probe,
}

/// A connection to one Redis or to a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn script<T: redis::FromRedisValue>(&mut self, inv: &redis::ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Conn::Single(c) => inv.invoke_async(c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
    }
}

/// Replica-shared state in Redis. See the module doc.
pub struct RedisShared {
    setting: RedisSetting,
    /// A cluster connection is made on first use (and after a failed first try), so a
    /// replica starts while Redis is down and serves once it is back.
    cluster: Option<ClusterClient>,
    conn: std::sync::Mutex<Option<Conn>>,
    /// Held by the one task making a cluster connection; the others fail at once
    /// rather than queue a connect timeout each.
    connecting: Mutex<()>,
    gcra: Script,
    try_lease: Script,
    release_lease: Script,
    healthy: AtomicBool,
    /// A command or probe failed since the last recovery: writes may have been lost.
    outage: AtomicBool,
    /// Stamps at or before this (Unix seconds) are refused (as server errors): the recovery.
    fence: AtomicU64,
    /// The clock window: a replay id expires at its stamp + this.
    window_secs: u64,
    /// Set on recovery, taken by the serve loop (which reloads from the store).
    recovered: AtomicBool,
    errors: [AtomicU64; OPS.len()],
}

impl std::fmt::Debug for RedisShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShared").field("setting", &self.setting).finish_non_exhaustive()
    }
}

impl RedisShared {
    /// A backend for `setting`; connects lazily, so an unreachable Redis is not an
    /// error here (operations fail closed until it answers). Errors only on a URL the
    /// client refuses.
    pub async fn connect(setting: RedisSetting, window_secs: u64) -> Result<Self, SharedError> {
        let bad = |e: redis::RedisError| SharedError(format!("invalid shared state URL: {:?}", e.kind()));
        let (cluster, conn) = if setting.cluster {
            let client = ClusterClient::builder(setting.urls.iter().map(|u| u.as_str()))
                .connection_timeout(setting.connect_timeout)
                .response_timeout(setting.command_timeout)
                .retries(1)
                .build()
                .map_err(bad)?;
            (Some(client), None)
        } else {
            let url = setting.urls.first().ok_or_else(|| SharedError("no shared state URL".into()))?;
            let client = redis::Client::open(url.as_str()).map_err(bad)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(setting.connect_timeout))
                .set_response_timeout(Some(setting.command_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?;
            (None, Some(Conn::Single(manager)))
        };
        let shared = Self {
            setting,
            cluster,
            conn: std::sync::Mutex::new(conn),
            connecting: Mutex::new(()),
            gcra: Script::new(scripts::GCRA),
            try_lease: Script::new(scripts::TRY_LEASE),
            release_lease: Script::new(scripts::RELEASE_LEASE),
            healthy: AtomicBool::new(false),
            // The start is a recovery of its own: the replay guard refuses stamps up
            // to the start and has just been told to restore from the store.
            outage: AtomicBool::new(false),
            fence: AtomicU64::new(0),
            window_secs,
            recovered: AtomicBool::new(false),
            errors: Default::default(),
        };
        shared.probe().await;
        if !shared.healthy() {
            tracing::warn!(shared = %shared.setting.shown(), "shared state unreachable at start: handshakes and OTP fail closed until it answers");
        }
        Ok(shared)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.setting.prefix)
    }

    /// The connection, made now for a cluster that has none yet (bounded by the
    /// connect timeout).
    async fn connection(&self) -> Result<Conn, SharedError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let client = self.cluster.as_ref().ok_or_else(|| SharedError("no connection".into()))?;
        let Ok(_connecting) = self.connecting.try_lock() else {
            return Err(SharedError("connecting to the cluster".into()));
        };
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let made = tokio::time::timeout(self.setting.connect_timeout, client.get_async_connection())
            .await
            .map_err(|_| SharedError("connect timed out".into()))?
            .map_err(|e| SharedError(format!("cannot connect: {e}")))?;
        *self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Conn::Cluster(made.clone()));
        Ok(Conn::Cluster(made))
    }

    fn current(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Runs one operation under the command timeout; any failure is counted, marks the
    /// backend unhealthy, and becomes a [`SharedError`] (fail closed).
    async fn run<T, F, Fut>(&self, op: Op, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match self.connection().await {
            Ok(conn) => match tokio::time::timeout(self.setting.command_timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(SharedError(format!("redis: {e}"))),
                Err(_) => {
                    Err(SharedError(format!("redis: no answer within {} ms", self.setting.command_timeout.as_millis())))
                }
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
            self.healthy.store(false, Ordering::Relaxed);
            self.outage.store(true, Ordering::Relaxed);
        }
        result
    }
}

fn ttl_secs(expires_at: u64, now: u64) -> u64 {
    expires_at.saturating_sub(now).saturating_add(1).saturating_add(SKEW_MARGIN_SECS)
}

#[async_trait]
impl SharedState for RedisShared {
    async fn remember_once(&self, id: [u8; 16], now: u64, expires_at: u64) -> Result<bool, SharedError> {
        let stamp = expires_at.saturating_sub(self.window_secs);
        if !self.healthy() || self.outage.load(Ordering::Relaxed) {
            // Until a probe has seen Redis whole again (and fenced), refuse: an id
            // written before the outage may be gone.
            self.errors[Op::Replay as usize].fetch_add(1, Ordering::Relaxed);
            return Err(SharedError("shared state recovering from an outage".into()));
        }
        if stamp <= self.fence.load(Ordering::Relaxed) {
            // Stamped before the recovery: maybe a replay whose id Redis lost, maybe a
            // fresh request. Not knowing, refuse it as a server error (the client
            // retries with a new stamp) rather than as a replay (`auth_failed`, which
            // tells an honest client its key is wrong). Never accepted either way.
            return Err(SharedError("stamped before the shared state recovered from an outage".into()));
        }
        let key = self.key("replay", &hex::encode(id));
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(1u8).arg("NX").arg("EX").arg(ttl_secs(expires_at, now));
        // `OK` when set (new), nil when the id was there (a replay).
        let set: Option<String> = self.run(Op::Replay, |mut c| async move { c.query(&cmd).await }).await?;
        Ok(set.is_some())
    }

    async fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window_secs: u64,
        _now: u64,
    ) -> Result<RateDecision, SharedError> {
        if limit == 0 {
            return Ok(RateDecision::Limited { retry_after: window_secs.max(1) });
        }
        let key = self.key("rate", bucket);
        let window_ms = window_secs.min(MAX_WINDOW_SECS) * 1000;
        let mut inv = self.gcra.prepare_invoke();
        inv.key(&key).arg(limit.min(MAX_LIMIT)).arg(window_ms);
        let (allowed, retry_after): (u8, u64) =
            self.run(Op::RateLimit, |mut c| async move { c.script(&inv).await }).await?;
        Ok(if allowed == 1 { RateDecision::Allowed } else { RateDecision::Limited { retry_after } })
    }

    async fn revoke_token(&self, token_id: [u8; 16], until: u64) -> Result<(), SharedError> {
        let key = self.key("revoked", &hex::encode(token_id));
        let mut cmd = redis::cmd("SET");
        // Absolute: the revocation lasts as long as the token, on any replica's clock
        // within the margin. A past time deletes the key: the token is dead anyway.
        cmd.arg(&key).arg(1u8).arg("EXAT").arg(until.saturating_add(1 + SKEW_MARGIN_SECS));
        let _: Option<String> = self.run(Op::Revoke, |mut c| async move { c.query(&cmd).await }).await?;
        Ok(())
    }

    async fn is_token_revoked(&self, token_id: [u8; 16], _now: u64) -> Result<bool, SharedError> {
        let key = self.key("revoked", &hex::encode(token_id));
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&key);
        let n: u64 = self.run(Op::RevokedCheck, |mut c| async move { c.query(&cmd).await }).await?;
        Ok(n > 0)
    }

    async fn try_lease(&self, name: &str, holder: u128, now: u64, expires_at: u64) -> Result<bool, SharedError> {
        let key = self.key("lease", name);
        // Until the end of `expires_at`'s second, as the in-memory backend.
        let ms = expires_at.saturating_sub(now).saturating_add(1).saturating_mul(1000);
        let mut inv = self.try_lease.prepare_invoke();
        inv.key(&key).arg(format!("{holder:032x}")).arg(ms);
        let taken: u8 = self.run(Op::Lease, |mut c| async move { c.script(&inv).await }).await?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, name: &str, holder: u128) -> Result<(), SharedError> {
        let key = self.key("lease", name);
        let mut inv = self.release_lease.prepare_invoke();
        inv.key(&key).arg(format!("{holder:032x}"));
        let _: u8 = self.run(Op::LeaseRelease, |mut c| async move { c.script(&inv).await }).await?;
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn probe(&self) {
        // On a cluster, PING goes to every primary: a shard without a primary (mid
        // failover) is a failed probe.
        let cmd = redis::cmd("PING");
        let ok = self.run(Op::Probe, |mut c| async move { c.query::<String>(&cmd).await }).await.is_ok();
        if ok && self.outage.swap(false, Ordering::Relaxed) {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(u64::MAX, |d| d.as_secs());
            self.fence.fetch_max(now, Ordering::Relaxed);
            self.recovered.store(true, Ordering::Relaxed);
            tracing::warn!(fence = now, "shared state answers again: requests stamped before now are refused, ids stamped ahead and revocations are reloaded");
        }
        self.healthy.store(ok, Ordering::Relaxed);
    }

    fn take_recovery(&self) -> bool {
        self.recovered.swap(false, Ordering::Relaxed)
    }

    fn error_counts(&self) -> Vec<(&'static str, u64)> {
        OPS.iter().zip(&self.errors).map(|(op, n)| (*op, n.load(Ordering::Relaxed))).collect()
    }
}

/// `/healthz` while shared state fails: 503 `shared_state_unavailable`, with
/// Retry-After (the probe runs once a second).
pub fn unhealthy() -> http::Response<crate::problem::Body> {
    let mut r = crate::problem::problem(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "shared_state_unavailable",
        "Shared state unavailable",
        "this replica cannot reach its shared state (Redis): handshakes and OTP fail closed here",
    );
    r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(1u64));
    r
}

/// Appends `onetrip_shared_state_up` and `onetrip_shared_state_errors_total{op}` to
/// the `/metrics` text (zeros for a backend that does not fail that way).
pub fn render_metrics(out: &mut String, shared: &dyn SharedState) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP onetrip_shared_state_up 1 while replica-shared state (Redis) answers, else 0.");
    let _ = writeln!(out, "# TYPE onetrip_shared_state_up gauge");
    let _ = writeln!(out, "onetrip_shared_state_up {}", u8::from(shared.healthy()));
    let _ = writeln!(
        out,
        "# HELP onetrip_shared_state_errors_total Shared-state operations that failed (the request failed closed)."
    );
    let _ = writeln!(out, "# TYPE onetrip_shared_state_errors_total counter");
    let counts = shared.error_counts();
    for op in OPS {
        let n = counts.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "onetrip_shared_state_errors_total{{op=\"{op}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_cover_the_horizon_and_the_skew_margin() {
        assert_eq!(ttl_secs(160, 100), 61 + SKEW_MARGIN_SECS);
        assert_eq!(ttl_secs(100, 160), 1 + SKEW_MARGIN_SECS, "never zero or negative");
        assert_eq!(ttl_secs(u64::MAX, 0), u64::MAX);
    }
}
