//! The `shared` setting: in-memory (one replica) or Redis, and how its value is read.
//!
//! - absent, `memory`: in this process (the single-node default);
//! - `redis://host:port[/db]`: one plain Redis or Valkey (no cluster);
//! - several comma-separated nodes, `redis://a:7000,redis://b:7001` (or
//!   `redis://a:7000,b:7001`), or `redis+cluster://host:port[,…]`: a Redis Cluster,
//!   discovered from those seed nodes.
//!
//! TLS (`rediss://`) is not built in: put Redis on a private network or loopback.

use std::time::Duration;

use zeroize::Zeroizing;

/// Default key prefix.
pub const DEFAULT_SHARED_PREFIX: &str = "onetrip:";
/// Default connect timeout (ms).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 500;
/// Default per-command timeout (ms): a handshake waits at most this for Redis.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 100;

/// Why a shared-state setting is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SharedSettingError {
    /// Not `memory` nor a redis:// URL list.
    #[error("shared must be `memory` or redis://host:port[,host:port…] (or redis+cluster://…)")]
    Url,
    /// A prefix that is empty, long, or holds characters that would break key names
    /// or hash tags.
    #[error("shared_prefix must be 1 to 64 printable characters without spaces or braces")]
    Prefix,
    /// A timeout out of range.
    #[error("{setting} must be between 1 and 60000 ms, not {ms}")]
    Timeout {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        ms: u64,
    },
}

/// Where replica-shared state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum SharedSetting {
    /// In this process.
    Memory,
    /// Redis or Redis Cluster.
    Redis(RedisSetting),
}

/// A Redis backend's settings. URLs may hold a password: never printed (see
/// [`RedisSetting::shown`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSetting {
    /// Node URLs (`redis://…`), one for a plain server, the seeds for a cluster.
    pub urls: Vec<Zeroizing<String>>,
    /// Cluster mode.
    pub cluster: bool,
    /// Prefix of every key.
    pub prefix: String,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one command (round trip).
    pub command_timeout: Duration,
}

impl RedisSetting {
    /// For operators and logs: the nodes without passwords.
    pub fn shown(&self) -> String {
        let nodes: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        format!("{} ({})", nodes.join(","), if self.cluster { "cluster" } else { "single" })
    }
}

impl std::fmt::Debug for RedisSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl std::fmt::Debug for SharedSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(r) => r.fmt(f),
        }
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

impl SharedSetting {
    /// Reads the setting (see the module doc) with its prefix and timeouts.
    pub fn parse(
        value: Option<&str>,
        prefix: Option<&str>,
        connect_timeout_ms: Option<u64>,
        command_timeout_ms: Option<u64>,
    ) -> Result<Self, SharedSettingError> {
        let value = value.map(str::trim).unwrap_or("");
        if value.is_empty() || value == "memory" {
            return Ok(Self::Memory);
        }
        let (cluster_scheme, rest) = match value.split_once("://") {
            Some(("redis+cluster", rest)) => (true, rest),
            Some(("redis", rest)) => (false, rest),
            _ => return Err(SharedSettingError::Url),
        };
        let mut urls = Vec::new();
        for node in rest.split(',').map(str::trim) {
            let node = node.strip_prefix("redis://").unwrap_or(node);
            if node.is_empty() || node.contains("://") {
                return Err(SharedSettingError::Url);
            }
            urls.push(Zeroizing::new(format!("redis://{node}")));
        }
        let prefix = prefix.unwrap_or(DEFAULT_SHARED_PREFIX);
        let prefix_ok =
            (1..=64).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
        if !prefix_ok {
            return Err(SharedSettingError::Prefix);
        }
        let timeout = |setting: &'static str, ms: Option<u64>, default: u64| {
            let ms = ms.unwrap_or(default);
            if (1..=60_000).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(SharedSettingError::Timeout { setting, ms })
            }
        };
        Ok(Self::Redis(RedisSetting {
            cluster: cluster_scheme || urls.len() > 1,
            urls,
            prefix: prefix.to_owned(),
            connect_timeout: timeout("shared_connect_timeout_ms", connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS)?,
            command_timeout: timeout("shared_command_timeout_ms", command_timeout_ms, DEFAULT_COMMAND_TIMEOUT_MS)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(value: &str) -> RedisSetting {
        match SharedSetting::parse(Some(value), None, None, None).unwrap() {
            SharedSetting::Redis(r) => r,
            SharedSetting::Memory => panic!("memory"),
        }
    }

    #[test]
    fn one_url_is_a_plain_server_and_several_are_a_cluster() {
        assert_eq!(SharedSetting::parse(None, None, None, None).unwrap(), SharedSetting::Memory);
        assert_eq!(SharedSetting::parse(Some(" memory "), None, None, None).unwrap(), SharedSetting::Memory);
        let one = redis("redis://127.0.0.1:6379");
        assert!(!one.cluster);
        assert_eq!(one.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["redis://127.0.0.1:6379"]);
        assert_eq!(one.prefix, "onetrip:");
        assert_eq!(one.command_timeout, Duration::from_millis(100));
        assert_eq!(one.connect_timeout, Duration::from_millis(500));
        let many = redis("redis://a:7000,b:7001, redis://c:7002");
        assert!(many.cluster);
        assert_eq!(
            many.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            ["redis://a:7000", "redis://b:7001", "redis://c:7002"]
        );
        assert!(redis("redis+cluster://a:7000").cluster);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in ["postgres://x", "rediss://a:1", "redis://", "redis://a:1,,b:2", "redis://a:1,http://b:2", "a:1"] {
            assert_eq!(SharedSetting::parse(Some(bad), None, None, None), Err(SharedSettingError::Url), "{bad}");
        }
        for bad in ["", "has space", "{tag}", &"x".repeat(65)] {
            let r = SharedSetting::parse(Some("redis://a:1"), Some(bad), None, None);
            assert_eq!(r, Err(SharedSettingError::Prefix), "{bad:?}");
        }
        let r = SharedSetting::parse(Some("redis://a:1"), None, Some(0), None);
        assert!(matches!(r, Err(SharedSettingError::Timeout { setting: "shared_connect_timeout_ms", .. })));
        let r = SharedSetting::parse(Some("redis://a:1"), None, None, Some(60_001));
        assert!(matches!(r, Err(SharedSettingError::Timeout { setting: "shared_command_timeout_ms", .. })));
    }

    #[test]
    fn passwords_are_never_shown() {
        let r = redis("redis://:hunter2@a:1,redis://user:pw@b:2");
        let shown = format!("{r:?} {}", r.shown());
        assert!(!shown.contains("hunter2") && !shown.contains("pw@"), "{shown}");
        assert!(shown.contains("***@a:1"), "{shown}");
    }
}
