//! Server settings: flags and `ONETRIP_*` environment variables (through clap)
//! override a TOML file (`--config`), which overrides the defaults below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod error;
mod logging;
pub use error::{ConfigError, LogProblem};
pub use logging::LogFormat;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// Longest token lifetime a server may be configured with; a revocation whose token's
/// expiry is unknown (it is sealed inside the token) is kept this long.
pub const MAX_TOKEN_TTL_SECS: u64 = 86_400;
/// Replay ids held by default: 65,000 handshakes/s (about twice this 2-core
/// machine's measured maximum) for their whole lifetime, at most ~19 bytes each
/// (`server::replay_cache`), so at most ~150 MB under that load and nothing idle.
pub const DEFAULT_REPLAY_CACHE_CAPACITY: usize = 8_000_000;
/// Seconds `/healthz` answers `draining` after SIGTERM before the listener closes.
pub const DEFAULT_DRAIN_SECS: u64 = 5;
/// Longest drain accepted.
pub const MAX_DRAIN_SECS: u64 = 3600;
/// Audit events are kept 90 days by default.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 90;
/// Longest audit retention accepted: 100 years is "forever" without overflow.
pub const MAX_AUDIT_RETENTION_DAYS: u64 = 36_500;

/// Settings as read from the TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Settings::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Settings::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Settings::store`] (`redb`, or a `postgres://` URL).
    pub store: Option<String>,
    /// See [`Settings::shared`] (`memory`, or redis:// URLs).
    pub shared: Option<String>,
    /// See [`crate::shared_redis::RedisSetting::prefix`].
    pub shared_prefix: Option<String>,
    /// See [`crate::shared_redis::RedisSetting::connect_timeout`].
    pub shared_connect_timeout_ms: Option<u64>,
    /// See [`crate::shared_redis::RedisSetting::command_timeout`].
    pub shared_command_timeout_ms: Option<u64>,
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
    /// See [`Settings::max_connections_per_ip`].
    pub max_connections_per_ip: Option<usize>,
    /// See [`Settings::header_timeout_ms`].
    pub header_timeout_ms: Option<u64>,
    /// See [`Settings::write_timeout_ms`].
    pub write_timeout_ms: Option<u64>,
    /// See [`Settings::idle_timeout_ms`].
    pub idle_timeout_ms: Option<u64>,
    /// See [`Settings::body_timeout_ms`].
    pub body_timeout_ms: Option<u64>,
    /// See [`Settings::replay_cache_capacity`].
    pub replay_cache_capacity: Option<usize>,
    /// See [`Settings::auth_rate_per_ip`].
    pub auth_rate_per_ip: Option<u64>,
    /// See [`Settings::auth_rate_per_key`].
    pub auth_rate_per_key: Option<u64>,
    /// See [`Settings::server_key_lifetime_secs`].
    pub server_key_lifetime_secs: Option<u64>,
    /// See [`Settings::server_key_overlap_secs`].
    pub server_key_overlap_secs: Option<u64>,
    /// See [`Settings::server_key_document_ttl_secs`].
    pub server_key_document_ttl_secs: Option<u64>,
    /// See [`Settings::audit_retention_days`].
    pub audit_retention_days: Option<u64>,
    /// See [`Settings::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`Settings::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`Settings::log`].
    pub log: Option<String>,
    /// See [`Settings::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`Settings::otp_console_codes`].
    pub otp_console_codes: Option<bool>,
    /// See [`Settings::proxy_protocol_from`]: CIDR ranges.
    pub proxy_protocol_from: Option<Vec<String>>,
    /// See [`Settings::drain_secs`].
    pub drain_secs: Option<u64>,
    /// The `[otp]` table: limits, MFA scopes, delivery channels.
    pub otp: Option<OtpFileConfig>,
}

/// The `[otp]` table of the TOML file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpFileConfig {
    /// See [`OtpSettings::sends_per_destination`].
    pub sends_per_destination: Option<u64>,
    /// See [`OtpSettings::sends_per_destination_global`].
    pub sends_per_destination_global: Option<u64>,
    /// See [`OtpSettings::sends_per_key`].
    pub sends_per_key: Option<u64>,
    /// See [`OtpSettings::api_rate_per_ip`].
    pub api_rate_per_ip: Option<u64>,
    /// See [`OtpSettings::api_rate_per_key`].
    pub api_rate_per_key: Option<u64>,
    /// See [`OtpSettings::mfa_scopes`].
    pub mfa_scopes: Option<Vec<String>>,
    /// See [`OtpSettings::totp_issuer`].
    pub totp_issuer: Option<String>,
    /// See [`OtpSettings::lockout`]: wrong codes per hour before a lock.
    pub max_code_failures: Option<u32>,
    /// See [`OtpSettings::lockout`]: the first lock's length in seconds.
    pub lockout_secs: Option<u64>,
    /// `[otp.smtp]`: email delivery.
    pub smtp: Option<SmtpFileConfig>,
    /// `[otp.webhook]`: signed webhook delivery.
    pub webhook: Option<WebhookFileConfig>,
}

/// `[otp.smtp]`; the password comes from `ONETRIP_SMTP_PASSWORD`, never the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFileConfig {
    /// SMTP server host name.
    pub host: Option<String>,
    /// Port [default: 587 for starttls, 465 for tls, 25 for none].
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit) or `none` (loopback relays only).
    pub tls: Option<String>,
    /// SMTP user, if the relay wants authentication.
    pub username: Option<String>,
    /// Sender address.
    pub from: Option<String>,
}

/// `[otp.webhook]`; the HMAC secret comes from `ONETRIP_WEBHOOK_SECRET`, never the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFileConfig {
    /// URL the signed JSON is POSTed to.
    pub url: Option<String>,
    /// See [`WebhookConfig::retry_window_secs`].
    pub retry_window_secs: Option<u64>,
}

/// A secret setting (SMTP password, webhook key): zeroized on drop, redacted in Debug.
#[derive(Clone)]
pub struct SecretSetting(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSetting([redacted])")
    }
}

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSetting {
    /// The embedded redb file in the data directory (one process at a time).
    Embedded,
    /// A PostgreSQL database that several replicas share; the URL may hold a
    /// password, so it is never printed (see [`StoreSetting::shown`]).
    Postgres(zeroize::Zeroizing<String>),
}

impl StoreSetting {
    /// Reads `redb` / `embedded` (or nothing) and `postgres://…` / `postgresql://…`.
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.map(str::trim) {
            None | Some("" | "redb" | "embedded") => Ok(Self::Embedded),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned().into()))
            }
            Some(_) => Err(ConfigError::Store),
        }
    }

    /// For operators and logs: the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Self::Embedded => "redb (embedded)".into(),
            Self::Postgres(url) => crate::store::postgres::redact_url(url),
        }
    }
}

impl std::fmt::Debug for StoreSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// SMTP delivery settings.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub tls: String,
    /// User name for AUTH.
    pub username: Option<String>,
    /// Password for AUTH (from the environment).
    pub password: Option<SecretSetting>,
    /// Sender address.
    pub from: String,
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Target URL.
    pub url: String,
    /// HMAC-SHA256 key (from the environment).
    pub secret: SecretSetting,
    /// Seconds a delivery keeps retrying a failing receiver (backoff 0.5 s doubling
    /// to 15 s, with jitter), never past the code's expiry [default: 120].
    pub retry_window_secs: u64,
}

/// Default of [`WebhookConfig::retry_window_secs`]: long enough to ride out a gateway
/// restart, well inside the 10-minute default code lifetime.
pub const DEFAULT_WEBHOOK_RETRY_WINDOW_SECS: u64 = 120;
/// Largest [`WebhookConfig::retry_window_secs`].
pub const MAX_WEBHOOK_RETRY_WINDOW_SECS: u64 = 3_600;

/// Resolved OTP settings. Send limits are rates per 10 minutes with bursts of as
/// many (GCRA, [`crate::shared::gcra`]); destinations are normalised
/// ([`crate::limits::destination_key`]).
#[derive(Debug, Clone)]
pub struct OtpSettings {
    /// Codes one API key may have sent to one destination per 10 minutes (step-up
    /// included: a key's step-up pays only from its own budgets).
    pub sends_per_destination: u64,
    /// Codes sent to one destination per 10 minutes through the OTP API, all keys
    /// together (protects a recipient from many tenants; never applied to step-up).
    pub sends_per_destination_global: u64,
    /// Codes one API key may have sent per 10 minutes, charged before any
    /// destination budget.
    pub sends_per_key: u64,
    /// Failed authentications per second per client address (IPv6: per /64) on
    /// `/v1/otp/*`; an address over it is refused before its token is read.
    /// Authenticated calls do not count.
    pub api_rate_per_ip: u64,
    /// Authenticated `/v1/otp/*` calls per second per API key.
    pub api_rate_per_key: u64,
    /// Scopes granted only to tokens with the second-factor flag.
    pub mfa_scopes: Vec<String>,
    /// Issuer shown by authenticator apps for TOTP enrolments.
    pub totp_issuer: String,
    /// Wrong second-factor codes allowed per key (step-up) and per TOTP account per
    /// hour, across verifications, before a lock that doubles each time.
    pub lockout: crate::otp::lockout::LockoutPolicy,
    /// Email delivery, when configured.
    pub smtp: Option<SmtpConfig>,
    /// Webhook delivery, when configured.
    pub webhook: Option<WebhookConfig>,
}

impl Default for OtpSettings {
    fn default() -> Self {
        Self {
            sends_per_destination: 5,
            sends_per_destination_global: 20,
            sends_per_key: 100,
            api_rate_per_ip: 50,
            api_rate_per_key: 200,
            mfa_scopes: Vec::new(),
            totp_issuer: "onetrip".into(),
            lockout: crate::otp::lockout::LockoutPolicy::default(),
            smtp: None,
            webhook: None,
        }
    }
}

impl OtpSettings {
    /// Resolves the `[otp]` table (flags already merged into `cfg`) and the secrets
    /// from the environment.
    pub fn resolve(
        cfg: OtpFileConfig,
        smtp_password: Option<String>,
        webhook_secret: Option<String>,
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let smtp = match cfg.smtp {
            Some(SmtpFileConfig { host: Some(host), port, tls, username, from }) => {
                let tls = tls.unwrap_or_else(|| "starttls".into()).to_ascii_lowercase();
                let default_port = match tls.as_str() {
                    "starttls" => 587,
                    "tls" => 465,
                    "none" => 25,
                    other => return Err(ConfigError::SmtpTls(other.to_owned())),
                };
                if tls == "none" && !is_loopback_host(&host) {
                    // Codes and the SMTP password would cross the network in clear.
                    return Err(ConfigError::SmtpCleartext(host));
                }
                let from = from.ok_or(ConfigError::SmtpFrom)?;
                let password = smtp_password.filter(|p| !p.is_empty()).map(|p| SecretSetting(p.into()));
                if username.is_some() != password.is_some() {
                    return Err(ConfigError::SmtpAuth);
                }
                Some(SmtpConfig { host, port: port.unwrap_or(default_port), tls, username, password, from })
            }
            Some(SmtpFileConfig { host: None, .. }) | None => None,
        };
        let webhook = match cfg.webhook {
            Some(WebhookFileConfig { url: Some(url), retry_window_secs }) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::WebhookUrl(url));
                }
                let secret = webhook_secret.filter(|s| s.len() >= 16).ok_or(ConfigError::WebhookSecret)?;
                let retry_window_secs = retry_window_secs.unwrap_or(DEFAULT_WEBHOOK_RETRY_WINDOW_SECS);
                if retry_window_secs > MAX_WEBHOOK_RETRY_WINDOW_SECS {
                    return Err(ConfigError::WebhookRetryWindow { max: MAX_WEBHOOK_RETRY_WINDOW_SECS });
                }
                Some(WebhookConfig { url, secret: SecretSetting(secret.into()), retry_window_secs })
            }
            Some(WebhookFileConfig { url: None, .. }) | None => None,
        };
        let sends_per_destination = cfg.sends_per_destination.unwrap_or(d.sends_per_destination);
        let s = Self {
            sends_per_destination,
            // Unset, it follows a raised per-key budget rather than refusing it.
            sends_per_destination_global: cfg
                .sends_per_destination_global
                .unwrap_or(d.sends_per_destination_global.max(sends_per_destination)),
            sends_per_key: cfg.sends_per_key.unwrap_or(d.sends_per_key),
            api_rate_per_ip: cfg.api_rate_per_ip.unwrap_or(d.api_rate_per_ip),
            api_rate_per_key: cfg.api_rate_per_key.unwrap_or(d.api_rate_per_key),
            mfa_scopes: cfg.mfa_scopes.unwrap_or(d.mfa_scopes),
            totp_issuer: cfg.totp_issuer.unwrap_or(d.totp_issuer),
            lockout: crate::otp::lockout::LockoutPolicy {
                max_failures: cfg.max_code_failures.unwrap_or(d.lockout.max_failures),
                lock_secs: cfg.lockout_secs.unwrap_or(d.lockout.lock_secs),
                ..d.lockout
            },
            smtp,
            webhook,
        };
        let limits = [s.sends_per_destination, s.sends_per_key, s.api_rate_per_ip, s.api_rate_per_key];
        if limits.contains(&0) {
            return Err(ConfigError::OtpZeroLimit);
        }
        if s.sends_per_destination_global < s.sends_per_destination {
            return Err(ConfigError::OtpGlobalBelowPerKey);
        }
        if s.lockout.max_failures == 0 || s.lockout.max_failures > 100 || s.lockout.lock_secs == 0 {
            return Err(ConfigError::OtpLockout);
        }
        Ok(s)
    }
}

/// `localhost` or a loopback address (`127.0.0.0/8`, `::1`, bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().trim_end_matches('.');
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }
}

/// Resolved settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, identity marker, admin socket).
    pub data_dir: PathBuf,
    /// Where durable state lives: the embedded store (default) or PostgreSQL.
    pub store: StoreSetting,
    /// Where replica-shared state (replay ids, rate limits, revocations, OTP resend
    /// leases) lives: this process (default) or Redis / Redis Cluster.
    pub shared: crate::shared_redis::SharedSetting,
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
    /// Simultaneous connections from one client (an IPv4 address, an IPv6 /64); more
    /// are closed at once. Behind a proxy this counts the proxy, unless it sends PROXY headers (`proxy_protocol_from`).
    pub max_connections_per_ip: usize,
    /// Time allowed to receive request headers (and, on a kept-alive connection, the
    /// next request to start).
    pub header_timeout_ms: u64,
    /// Time an answer may wait for the client to read it; then the connection closes.
    pub write_timeout_ms: u64,
    /// Time a connection may move no byte at all; then it closes.
    pub idle_timeout_ms: u64,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: u64,
    /// Most replay ids held in memory (fail closed beyond).
    pub replay_cache_capacity: usize,
    /// Handshakes per second per client IP before cryptography is attempted.
    pub auth_rate_per_ip: u64,
    /// Authenticated handshakes per second per API key (per replica): one tenant
    /// cannot take everyone's share of the CPU or the replay cache.
    pub auth_rate_per_key: u64,
    /// Validity of a handshake key; a successor is made automatically.
    pub server_key_lifetime_secs: u64,
    /// How long a handshake key is still accepted after its successor appears; its
    /// private key is destroyed when this ends.
    pub server_key_overlap_secs: u64,
    /// Lifetime of a signed server key document (clients refuse it afterwards); the
    /// server re-signs at half of it. At most the overlap, so a copy captured before
    /// a rotation dies before the key it names is destroyed.
    pub server_key_document_ttl_secs: u64,
    /// Audit events older than this many days are deleted (in bounded batches, by a
    /// background task), so the audit log cannot grow without end.
    pub audit_retention_days: u64,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// tracing filter (e.g. `info`, `onetrip_server=debug`).
    pub log: String,
    /// Text or JSON lines.
    pub log_format: LogFormat,
    /// Development only: the console channel prints the codes it "sends".
    pub otp_console_codes: bool,
    /// Peers (load balancers) that must start each connection with a PROXY v2 header
    /// giving the client's address; a header from any other peer is refused. Empty:
    /// off.
    pub proxy_protocol_from: crate::proxy_protocol::TrustedProxies,
    /// After SIGTERM, seconds `/healthz` answers 503 `draining` (while everything else
    /// is served) before the listener closes; 0 closes it at once.
    pub drain_secs: u64,
    /// OTP limits and delivery channels.
    pub otp: OtpSettings,
    /// Bearer token that `/metrics` requires from any address (from
    /// `ONETRIP_METRICS_TOKEN` only); without one, `/metrics` answers loopback clients
    /// only.
    pub metrics_token: Option<SecretSetting>,
}

impl Settings {
    /// Defaults for a data directory.
    pub fn defaults(data_dir: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7420))),
            admin_socket: data_dir.join("admin.sock"),
            data_dir,
            store: StoreSetting::Embedded,
            shared: crate::shared_redis::SharedSetting::Memory,
            token_ttl_secs: 900,
            clock_window_secs: onetrip_protocol::DEFAULT_CLOCK_WINDOW_SECS,
            default_audience: "onetrip".into(),
            max_connections: 1024,
            max_connections_per_ip: 64,
            header_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            body_timeout_ms: 5_000,
            replay_cache_capacity: DEFAULT_REPLAY_CACHE_CAPACITY,
            auth_rate_per_ip: 10_000,
            auth_rate_per_key: 1_000,
            server_key_lifetime_secs: crate::store::DEFAULT_SERVER_KEY_LIFETIME_SECS,
            server_key_overlap_secs: crate::store::DEFAULT_SERVER_KEY_OVERLAP_SECS,
            server_key_document_ttl_secs: onetrip_protocol::server_key::DEFAULT_DOCUMENT_LIFETIME_SECS,
            audit_retention_days: DEFAULT_AUDIT_RETENTION_DAYS,
            tls_cert: None,
            tls_key: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            otp_console_codes: false,
            proxy_protocol_from: crate::proxy_protocol::TrustedProxies::default(),
            drain_secs: DEFAULT_DRAIN_SECS,
            otp: OtpSettings::default(),
            metrics_token: None,
        }
    }

    /// Fills every unset field from the file, then from defaults.
    pub fn merge(overrides: FileConfig, file: FileConfig, default_data_dir: PathBuf) -> Result<Self, ConfigError> {
        let otp = merge_otp(overrides.otp.clone().unwrap_or_default(), file.otp.clone().unwrap_or_default());
        let otp = OtpSettings::resolve(
            otp,
            std::env::var("ONETRIP_SMTP_PASSWORD").ok(),
            std::env::var("ONETRIP_WEBHOOK_SECRET").ok(),
        )?;
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
            store: StoreSetting::parse(overrides.store.as_deref().or(file.store.as_deref()))?,
            shared: crate::shared_redis::SharedSetting::parse(
                overrides.shared.as_deref().or(file.shared.as_deref()),
                overrides.shared_prefix.as_deref().or(file.shared_prefix.as_deref()),
                overrides.shared_connect_timeout_ms.or(file.shared_connect_timeout_ms),
                overrides.shared_command_timeout_ms.or(file.shared_command_timeout_ms),
            )?,
            token_ttl_secs: pick!(token_ttl_secs),
            clock_window_secs: pick!(clock_window_secs),
            default_audience: pick!(default_audience),
            max_connections: pick!(max_connections),
            max_connections_per_ip: pick!(max_connections_per_ip),
            header_timeout_ms: pick!(header_timeout_ms),
            write_timeout_ms: pick!(write_timeout_ms),
            idle_timeout_ms: pick!(idle_timeout_ms),
            body_timeout_ms: pick!(body_timeout_ms),
            replay_cache_capacity: pick!(replay_cache_capacity),
            auth_rate_per_ip: pick!(auth_rate_per_ip),
            auth_rate_per_key: pick!(auth_rate_per_key),
            server_key_lifetime_secs: pick!(server_key_lifetime_secs),
            server_key_overlap_secs: pick!(server_key_overlap_secs),
            server_key_document_ttl_secs: pick!(server_key_document_ttl_secs),
            audit_retention_days: pick!(audit_retention_days),
            tls_cert: overrides.tls_cert.or(file.tls_cert),
            tls_key: overrides.tls_key.or(file.tls_key),
            log: pick!(log),
            log_format: pick!(log_format),
            otp_console_codes: pick!(otp_console_codes),
            proxy_protocol_from: crate::proxy_protocol::TrustedProxies::parse(
                &overrides.proxy_protocol_from.or(file.proxy_protocol_from).unwrap_or_default(),
            )
            .map_err(ConfigError::ProxyProtocolFrom)?,
            drain_secs: pick!(drain_secs),
            otp,
            metrics_token: std::env::var("ONETRIP_METRICS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(|t| SecretSetting(t.into())),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(60..=MAX_TOKEN_TTL_SECS).contains(&self.token_ttl_secs) {
            return Err(ConfigError::TokenTtl);
        }
        if !(5..=3600).contains(&self.clock_window_secs) {
            return Err(ConfigError::ClockWindow);
        }
        if self.default_audience.is_empty() || self.default_audience.len() > 64 {
            return Err(ConfigError::DefaultAudience);
        }
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.replay_cache_capacity == 0
            || self.auth_rate_per_ip == 0
            || self.auth_rate_per_key == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        for (setting, ms) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Timeout { setting, ms });
            }
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            return Err(ConfigError::MetricsToken);
        }
        self.validate_server_keys()?;
        if !(1..=MAX_AUDIT_RETENTION_DAYS).contains(&self.audit_retention_days) {
            return Err(ConfigError::AuditRetention);
        }
        if self.drain_secs > MAX_DRAIN_SECS {
            return Err(ConfigError::DrainSecs);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        log_filter(&self.log)?;
        Ok(())
    }
}

impl Settings {
    /// The handshake key policy these settings give.
    pub fn key_policy(&self) -> crate::store::KeyPolicy {
        crate::store::KeyPolicy {
            lifetime_secs: self.server_key_lifetime_secs,
            overlap_secs: self.server_key_overlap_secs,
        }
    }

    fn validate_server_keys(&self) -> Result<(), ConfigError> {
        let (lifetime, overlap, ttl) =
            (self.server_key_lifetime_secs, self.server_key_overlap_secs, self.server_key_document_ttl_secs);
        if !(3_600..=366 * 86_400).contains(&lifetime) {
            return Err(ConfigError::ServerKeyLifetime);
        }
        if overlap < 2 * self.clock_window_secs || overlap.saturating_mul(2) > lifetime {
            return Err(ConfigError::ServerKeyOverlap { least: 2 * self.clock_window_secs, lifetime });
        }
        if ttl < 60 || ttl > overlap {
            return Err(ConfigError::ServerKeyDocumentTtl { overlap });
        }
        Ok(())
    }
}

/// The `log` setting as a filter: a level (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`) for everything, and/or `target=level` pairs, comma-separated
/// (`warn,onetrip_server=debug`). A bare word must be a level: tracing would read
/// `infoo` as a target name and silently log nothing else.
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::filter::Targets, ConfigError> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let explain = |problem| ConfigError::Log { spec: spec.to_owned(), problem };
    let directives: Vec<&str> = spec.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if let Some(typo) =
        directives.iter().find(|d| !d.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)))
    {
        return Err(explain(LogProblem::NotALevel((*typo).to_owned())));
    }
    if directives.is_empty() {
        return Err(explain(LogProblem::Empty));
    }
    directives.join(",").parse().map_err(|e| explain(LogProblem::Directive(e)))
}

/// Flag values win over the file, field by field.
fn merge_otp(flags: OtpFileConfig, file: OtpFileConfig) -> OtpFileConfig {
    let smtp = match (flags.smtp, file.smtp) {
        (Some(f), Some(c)) => Some(SmtpFileConfig {
            host: f.host.or(c.host),
            port: f.port.or(c.port),
            tls: f.tls.or(c.tls),
            username: f.username.or(c.username),
            from: f.from.or(c.from),
        }),
        (f, c) => f.or(c),
    };
    // Field by field too: `--webhook-url` must not drop the file's retry window.
    let webhook = match (flags.webhook, file.webhook) {
        (Some(f), Some(c)) => Some(WebhookFileConfig {
            url: f.url.or(c.url),
            retry_window_secs: f.retry_window_secs.or(c.retry_window_secs),
        }),
        (f, c) => f.or(c),
    };
    OtpFileConfig {
        sends_per_destination: flags.sends_per_destination.or(file.sends_per_destination),
        sends_per_destination_global: flags.sends_per_destination_global.or(file.sends_per_destination_global),
        sends_per_key: flags.sends_per_key.or(file.sends_per_key),
        api_rate_per_ip: flags.api_rate_per_ip.or(file.api_rate_per_ip),
        api_rate_per_key: flags.api_rate_per_key.or(file.api_rate_per_key),
        mfa_scopes: flags.mfa_scopes.or(file.mfa_scopes),
        totp_issuer: flags.totp_issuer.or(file.totp_issuer),
        max_code_failures: flags.max_code_failures.or(file.max_code_failures),
        lockout_secs: flags.lockout_secs.or(file.lockout_secs),
        smtp,
        webhook,
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
    fn the_store_setting_names_an_engine_and_never_shows_a_password() {
        assert!(matches!(StoreSetting::parse(None), Ok(StoreSetting::Embedded)));
        assert!(matches!(StoreSetting::parse(Some("redb")), Ok(StoreSetting::Embedded)));
        assert!(matches!(StoreSetting::parse(Some("mysql://x")), Err(ConfigError::Store)));
        assert!(matches!(StoreSetting::parse(Some("/var/lib/onetrip")), Err(ConfigError::Store)));
        let pg = StoreSetting::parse(Some("postgres://app:hunter2secret@db.internal:5432/onetrip?sslmode=verify-full"))
            .expect("postgres");
        assert!(matches!(pg, StoreSetting::Postgres(_)));
        for shown in [pg.shown(), format!("{pg:?}")] {
            assert!(!shown.contains("hunter2secret"), "{shown}");
            assert!(shown.contains("db.internal:5432/onetrip"), "{shown}");
        }
        let in_query = StoreSetting::parse(Some("postgresql://app@h/db?password=hunter2")).expect("postgres");
        assert!(!in_query.shown().contains("hunter2"), "{in_query:?}");
    }

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
        let e = Settings::merge(bad, FileConfig::default(), "/tmp".into()).unwrap_err();
        assert!(matches!(e, ConfigError::TokenTtl), "{e:?}");
        assert_eq!(e.to_string(), "token_ttl_secs must be between 60 and 86400");
        assert!(toml::from_str::<FileConfig>("no_such_option = 1").is_err());
        let bad_log = FileConfig { log: Some("verbose".into()), ..Default::default() };
        let e = Settings::merge(bad_log, FileConfig::default(), "/tmp".into()).unwrap_err().to_string();
        assert!(e.contains("log must be a level") && e.contains("`verbose` is not a level"), "{e}");
        let e = Settings::merge(
            FileConfig { header_timeout_ms: Some(99), ..Default::default() },
            FileConfig::default(),
            "/tmp".into(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "header_timeout_ms must be between 100 (0.1 s) and 3600000 (1 h), not 99");
    }

    #[test]
    fn an_unreadable_or_invalid_config_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.toml");
        let e = FileConfig::load(&missing).unwrap_err();
        assert!(matches!(&e, ConfigError::Read { path, .. } if *path == missing), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot read config {}: ", missing.display())), "{e}");
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "no_such_option = 1\n").expect("write");
        let e = FileConfig::load(&typo).unwrap_err();
        assert!(matches!(&e, ConfigError::Parse { path, .. } if *path == typo), "{e:?}");
        assert!(e.to_string().contains("no_such_option"), "{e}");
    }

    #[test]
    fn otp_limits_are_positive_and_the_global_cap_is_not_below_the_per_key_one() {
        let s = OtpSettings::resolve(OtpFileConfig::default(), None, None).unwrap();
        assert_eq!((s.sends_per_destination, s.sends_per_destination_global, s.api_rate_per_key), (5, 20, 200));
        let zero = OtpFileConfig { api_rate_per_key: Some(0), ..Default::default() };
        let e = OtpSettings::resolve(zero, None, None).unwrap_err();
        assert!(matches!(e, ConfigError::OtpZeroLimit) && e.to_string().contains("api_rate_per_key"), "{e}");
        let low = OtpFileConfig { sends_per_destination_global: Some(4), ..Default::default() };
        let e = OtpSettings::resolve(low, None, None).unwrap_err();
        assert!(matches!(e, ConfigError::OtpGlobalBelowPerKey), "{e:?}");
        assert!(e.to_string().contains("sends_per_destination_global"), "{e}");
        let raised = OtpFileConfig { sends_per_destination: Some(30), ..Default::default() };
        assert_eq!(OtpSettings::resolve(raised, None, None).unwrap().sends_per_destination_global, 30);
        let file: FileConfig =
            toml::from_str("[otp]\nsends_per_destination_global = 50\napi_rate_per_key = 7\n").unwrap();
        let s = Settings::merge(FileConfig::default(), file, "/tmp".into()).unwrap();
        assert_eq!((s.otp.sends_per_destination_global, s.otp.api_rate_per_key), (50, 7));
    }

    #[test]
    fn connection_limits_and_timeouts_have_defaults_and_refuse_nonsense() {
        let s = Settings::merge(FileConfig::default(), FileConfig::default(), "/tmp/x".into()).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (1024, 64));
        assert_eq!((s.write_timeout_ms, s.idle_timeout_ms), (10_000, 30_000));
        let file: FileConfig =
            toml::from_str("max_connections_per_ip = 8\nwrite_timeout_ms = 2000\nidle_timeout_ms = 4000\n").unwrap();
        let s = Settings::merge(FileConfig::default(), file, "/tmp/x".into()).unwrap();
        assert_eq!((s.max_connections_per_ip, s.write_timeout_ms, s.idle_timeout_ms), (8, 2000, 4000));
        for bad in [
            FileConfig { max_connections_per_ip: Some(0), ..Default::default() },
            FileConfig { write_timeout_ms: Some(0), ..Default::default() },
            FileConfig { idle_timeout_ms: Some(99), ..Default::default() },
            FileConfig { header_timeout_ms: Some(0), ..Default::default() },
        ] {
            assert!(Settings::merge(bad, FileConfig::default(), "/tmp".into()).is_err());
        }
    }

    fn smtp(host: &str, tls: &str) -> OtpFileConfig {
        OtpFileConfig {
            smtp: Some(SmtpFileConfig {
                host: Some(host.into()),
                tls: Some(tls.into()),
                from: Some("otp@example.com".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn smtp_without_tls_is_refused_unless_the_relay_is_on_this_machine() {
        for host in ["smtp.example.com", "192.0.2.25", "10.0.0.1", "2001:db8::25", "localhost.example.com"] {
            let e = OtpSettings::resolve(smtp(host, "none"), None, None).unwrap_err();
            assert!(matches!(&e, ConfigError::SmtpCleartext(h) if h == host), "{host}: {e:?}");
            let e = e.to_string();
            assert!(e.contains("unencrypted") && e.contains("starttls"), "{host}: {e}");
        }
        for host in ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "LOCALHOST."] {
            let s = OtpSettings::resolve(smtp(host, "none"), None, None).unwrap();
            assert_eq!(s.smtp.unwrap().port, 25, "{host}");
        }
        assert!(OtpSettings::resolve(smtp("smtp.example.com", "starttls"), None, None).is_ok());
        assert!(OtpSettings::resolve(smtp("smtp.example.com", "tls"), None, None).is_ok());
    }

    #[test]
    fn the_webhook_retry_window_defaults_to_two_minutes_and_is_bounded() {
        let secret = || Some("whsec-0123456789abcdef".to_owned());
        let hook = |window| OtpFileConfig {
            webhook: Some(WebhookFileConfig {
                url: Some("https://hooks.example.com/otp".into()),
                retry_window_secs: window,
            }),
            ..Default::default()
        };
        let window = |w| OtpSettings::resolve(hook(w), None, secret()).map(|s| s.webhook.unwrap().retry_window_secs);
        assert_eq!(window(None).unwrap(), 120);
        assert_eq!(window(Some(0)).unwrap(), 0);
        assert_eq!(window(Some(3_600)).unwrap(), 3_600);
        let e = window(Some(3_601)).unwrap_err();
        assert!(matches!(e, ConfigError::WebhookRetryWindow { max: 3_600 }), "{e:?}");
        assert!(e.to_string().contains("retry_window_secs"), "{e}");
    }

    #[test]
    fn handshake_keys_have_a_finite_default_lifetime_and_the_limits_are_explained() {
        let s = Settings::merge(FileConfig::default(), FileConfig::default(), "/tmp".into()).unwrap();
        assert_eq!(
            (s.server_key_lifetime_secs, s.server_key_overlap_secs, s.server_key_document_ttl_secs),
            (30 * 86_400, 86_400, 4 * 3_600)
        );
        let file: FileConfig = toml::from_str(
            "server_key_lifetime_secs = 604800\nserver_key_overlap_secs = 7200\nserver_key_document_ttl_secs = 3600\n",
        )
        .unwrap();
        let s = Settings::merge(FileConfig::default(), file, "/tmp".into()).unwrap();
        assert_eq!(s.key_policy(), crate::store::KeyPolicy { lifetime_secs: 604_800, overlap_secs: 7_200 });
        let merge = |f: FileConfig| Settings::merge(f, FileConfig::default(), "/tmp".into()).unwrap_err().to_string();
        let e = merge(FileConfig { server_key_lifetime_secs: Some(253_402_300_799), ..Default::default() });
        assert!(e.contains("server_key_lifetime_secs"), "{e}");
        let e = merge(FileConfig { server_key_overlap_secs: Some(30 * 86_400), ..Default::default() });
        assert!(e.contains("at most half"), "{e}");
        let e = merge(FileConfig { server_key_document_ttl_secs: Some(2 * 86_400), ..Default::default() });
        assert!(e.contains("must not outlive the overlap"), "{e}");
    }

    #[test]
    fn log_filters_take_levels_and_target_pairs_and_refuse_typos() {
        use tracing::Level;
        let f = log_filter("warn,onetrip_server=debug").unwrap();
        assert!(f.would_enable("onetrip_server::http", &Level::DEBUG));
        assert!(!f.would_enable("hyper", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));
        assert!(log_filter("OFF").is_ok());
        assert!(log_filter(" info ").unwrap().would_enable("x", &Level::INFO));
        for bad in ["", " , ", "infoo", "verbose", "onetrip_server=loud", "warn,onetrip=nope"] {
            let e = log_filter(bad).unwrap_err();
            assert!(matches!(&e, ConfigError::Log { spec, .. } if spec == bad), "{bad:?}: {e:?}");
            assert!(e.to_string().starts_with("log must be a level"), "{bad:?}: {e}");
        }
    }
}
