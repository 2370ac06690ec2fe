//! Server settings: flags and `ONETRIP_*` environment variables (through clap)
//! override a TOML file (`--config`), which overrides the defaults below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// Settings as read from the TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Settings::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Settings::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Settings::admin_socket`].
    pub admin_socket: Option<PathBuf>,
    /// See [`Settings::token_ttl_secs`].
    pub token_ttl_secs: Option<u64>,
    /// See [`Settings::clock_window_secs`].
    pub clock_window_secs: Option<u64>,
    /// See [`Settings::default_audience`].
    pub default_audience: Option<String>,
    /// See [`Settings::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`Settings::header_timeout_ms`].
    pub header_timeout_ms: Option<u64>,
    /// See [`Settings::body_timeout_ms`].
    pub body_timeout_ms: Option<u64>,
    /// See [`Settings::replay_cache_capacity`].
    pub replay_cache_capacity: Option<usize>,
    /// See [`Settings::auth_rate_per_ip`].
    pub auth_rate_per_ip: Option<u64>,
    /// See [`Settings::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`Settings::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`Settings::log`].
    pub log: Option<String>,
    /// See [`Settings::otp_console_codes`].
    pub otp_console_codes: Option<bool>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }
}

/// Resolved settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, identity marker, admin socket).
    pub data_dir: PathBuf,
    /// Admin Unix socket path.
    pub admin_socket: PathBuf,
    /// Token lifetime.
    pub token_ttl_secs: u64,
    /// Accepted client clock difference (±).
    pub clock_window_secs: u64,
    /// Audience for tokens when the key has none and the client asks for none.
    pub default_audience: String,
    /// Simultaneous connections; more wait in the kernel backlog.
    pub max_connections: usize,
    /// Time allowed to receive request headers.
    pub header_timeout_ms: u64,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: u64,
    /// Most replay ids held in memory.
    pub replay_cache_capacity: usize,
    /// Handshakes per second per client IP before cryptography is attempted.
    pub auth_rate_per_ip: u64,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// tracing filter (e.g. `info`, `onetrip_server=debug`).
    pub log: String,
    /// Development only: the console channel prints the codes it "sends".
    pub otp_console_codes: bool,
}

impl Settings {
    /// Defaults for a data directory.
    pub fn defaults(data_dir: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7420))),
            admin_socket: data_dir.join("admin.sock"),
            data_dir,
            token_ttl_secs: 900,
            clock_window_secs: onetrip_protocol::DEFAULT_CLOCK_WINDOW_SECS,
            default_audience: "onetrip".into(),
            max_connections: 1024,
            header_timeout_ms: 5_000,
            body_timeout_ms: 5_000,
            replay_cache_capacity: 1_000_000,
            auth_rate_per_ip: 10_000,
            tls_cert: None,
            tls_key: None,
            log: "info".into(),
            otp_console_codes: false,
        }
    }

    /// Fills every unset field from the file, then from defaults.
    pub fn merge(overrides: FileConfig, file: FileConfig, default_data_dir: PathBuf) -> Result<Self, String> {
        let data_dir = overrides.data_dir.or(file.data_dir).unwrap_or(default_data_dir);
        let d = Self::defaults(data_dir.clone());
        macro_rules! pick {
            ($f:ident) => {
                overrides.$f.or(file.$f).unwrap_or(d.$f)
            };
        }
        let s = Self {
            listen: pick!(listen),
            admin_socket: overrides.admin_socket.or(file.admin_socket).unwrap_or(d.admin_socket),
            data_dir,
            token_ttl_secs: pick!(token_ttl_secs),
            clock_window_secs: pick!(clock_window_secs),
            default_audience: pick!(default_audience),
            max_connections: pick!(max_connections),
            header_timeout_ms: pick!(header_timeout_ms),
            body_timeout_ms: pick!(body_timeout_ms),
            replay_cache_capacity: pick!(replay_cache_capacity),
            auth_rate_per_ip: pick!(auth_rate_per_ip),
            tls_cert: overrides.tls_cert.or(file.tls_cert),
            tls_key: overrides.tls_key.or(file.tls_key),
            log: pick!(log),
            otp_console_codes: pick!(otp_console_codes),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if !(60..=86_400).contains(&self.token_ttl_secs) {
            return Err("token_ttl_secs must be between 60 and 86400".into());
        }
        if !(5..=3600).contains(&self.clock_window_secs) {
            return Err("clock_window_secs must be between 5 and 3600".into());
        }
        if self.default_audience.is_empty() || self.default_audience.len() > 64 {
            return Err("default_audience must be 1 to 64 characters".into());
        }
        if self.max_connections == 0 || self.replay_cache_capacity == 0 || self.auth_rate_per_ip == 0 {
            return Err("max_connections, replay_cache_capacity and auth_rate_per_ip must be positive".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("TLS needs both tls_cert and tls_key".into());
        }
        Ok(())
    }
}

/// `$XDG_DATA_HOME/onetrip`, else `~/.local/share/onetrip`, else `./onetrip-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("onetrip");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/onetrip");
    }
    PathBuf::from("onetrip-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:9000\"\ntoken_ttl_secs = 600\n").unwrap();
        let flags = FileConfig { token_ttl_secs: Some(300), ..Default::default() };
        let s = Settings::merge(flags, file, PathBuf::from("/tmp/x")).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.token_ttl_secs, 300);
        assert_eq!(s.clock_window_secs, 60);
        assert_eq!(s.admin_socket, PathBuf::from("/tmp/x/admin.sock"));
    }

    #[test]
    fn invalid_settings_are_explained() {
        let bad = FileConfig { token_ttl_secs: Some(5), ..Default::default() };
        assert!(Settings::merge(bad, FileConfig::default(), "/tmp".into()).unwrap_err().contains("token_ttl_secs"));
        assert!(toml::from_str::<FileConfig>("no_such_option = 1").is_err());
    }
}
