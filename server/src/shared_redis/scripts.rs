//! The Lua scripts [`super::RedisShared`] runs: each touches one key (so one hash
//! slot, on any cluster layout) and is one round trip (`EVALSHA`, with a `SCRIPT
//! LOAD` and a retry when a node, e.g. a freshly promoted replica, has not seen it).
//!
//! Time inside the scripts is Redis's own `TIME`: replicas whose clocks disagree still
//! share one rate-limit schedule. Writing after `TIME` needs effects replication,
//! the default from Redis 5; `redis.replicate_commands()` asks for it on older ones.

/// One step of the GCRA of [`crate::shared::gcra`] on `KEYS[1]`, the bucket's
/// theoretical arrival time in Unix milliseconds, at Redis's `TIME`.
///
/// `ARGV[1]` limit (≥ 1; the caller answers a zero limit itself), `ARGV[2]` window in
/// milliseconds. Returns `{1, 0}` when allowed, `{0, retry_after_secs}` when limited.
/// The stored value expires when it is reached (a bucket past it is the same as none).
/// Numbers stay below 2^53 (the caller bounds the window), exact in Lua's doubles;
/// `%.0f` writes them without an exponent.
pub const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = math.max(math.ceil(window / limit), 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local start = math.max(tat, now)
local tolerance = (limit - 1) * interval
local ahead = start - now
if ahead > tolerance then
  return {0, math.max(math.ceil((ahead - tolerance) / 1000), 1)}
end
local next = start + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', string.format('%.0f', next - now))
return {1, 0}
";

/// Takes the lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` milliseconds when it
/// is free or already this holder's (as the in-memory backend does). Returns 1 when
/// taken, 0 while another holder's lease runs.
pub const TRY_LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes the lease `KEYS[1]` only while holder `ARGV[1]` has it: a lease that
/// expired and was taken by another holder since is left alone.
pub const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
