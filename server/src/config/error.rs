//! Why the settings were refused. Each variant names the setting and what is wrong
//! with it; the messages are what `onetrip serve` prints, so they say what to do.

use std::path::PathBuf;

use super::MAX_AUDIT_RETENTION_DAYS;

/// A setting (flag, `ONETRIP_*` variable or config file value) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML or has an unknown or mistyped field.
    #[error("invalid config {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader found.
        source: toml::de::Error,
    },
    /// `store` is neither the embedded engine nor a PostgreSQL URL.
    #[error("store must be `redb` (the embedded default) or a postgres:// URL")]
    Store,
    /// `shared`, `shared_prefix` or a shared-state timeout is refused.
    #[error(transparent)]
    Shared(#[from] crate::shared_redis::SharedSettingError),
    /// `token_ttl_secs` is out of range.
    #[error("token_ttl_secs must be between 60 and {}", super::MAX_TOKEN_TTL_SECS)]
    TokenTtl,
    /// `clock_window_secs` is out of range.
    #[error("clock_window_secs must be between 5 and 3600")]
    ClockWindow,
    /// `default_audience` is empty or too long.
    #[error("default_audience must be 1 to 64 characters")]
    DefaultAudience,
    /// A connection or rate limit is zero.
    #[error(
        "max_connections, max_connections_per_ip, replay_cache_capacity, auth_rate_per_ip and \
         auth_rate_per_key must be positive"
    )]
    ZeroLimit,
    /// A connection timeout is out of range.
    #[error("{setting} must be between 100 (0.1 s) and 3600000 (1 h), not {ms}")]
    Timeout {
        /// Which timeout (`header_timeout_ms`, …).
        setting: &'static str,
        /// The value given.
        ms: u64,
    },
    /// `ONETRIP_METRICS_TOKEN` is too short to be a secret.
    #[error("ONETRIP_METRICS_TOKEN must be at least 16 characters")]
    MetricsToken,
    /// `server_key_lifetime_secs` is out of range.
    #[error("server_key_lifetime_secs must be between 3600 (1 hour) and 31622400 (366 days)")]
    ServerKeyLifetime,
    /// `server_key_overlap_secs` is too short for the clock window or too long for
    /// the lifetime.
    #[error(
        "server_key_overlap_secs must be at least twice clock_window_secs ({least}) and at most half of \
         server_key_lifetime_secs ({lifetime})"
    )]
    ServerKeyOverlap {
        /// Twice the clock window.
        least: u64,
        /// The key lifetime.
        lifetime: u64,
    },
    /// `server_key_document_ttl_secs` is too short or outlives the overlap.
    #[error(
        "server_key_document_ttl_secs must be between 60 and server_key_overlap_secs ({overlap}): a document \
         must not outlive the overlap of the key it names"
    )]
    ServerKeyDocumentTtl {
        /// The overlap.
        overlap: u64,
    },
    /// `audit_retention_days` is out of range.
    #[error("audit_retention_days must be between 1 and {MAX_AUDIT_RETENTION_DAYS}")]
    AuditRetention,
    /// A `proxy_protocol_from` entry is not a CIDR range.
    #[error("proxy_protocol_from: {0}")]
    ProxyProtocolFrom(crate::proxy_protocol::CidrError),
    /// `drain_secs` is out of range.
    #[error("drain_secs must be between 0 and {}", super::MAX_DRAIN_SECS)]
    DrainSecs,
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("TLS needs both tls_cert and tls_key")]
    TlsPair,
    /// `log` is not a filter.
    #[error(
        "log must be a level (error, warn, info, debug, trace, off) and/or target=level pairs separated by \
         commas, e.g. `warn,onetrip_server=debug`; {spec:?} is not: {problem}"
    )]
    Log {
        /// The value given.
        spec: String,
        /// What is wrong with it.
        problem: LogProblem,
    },
    /// `otp.smtp.tls` is not a known mode.
    #[error("otp.smtp.tls must be starttls, tls or none, not {0:?}")]
    SmtpTls(String),
    /// `otp.smtp.tls = "none"` towards a relay on another machine.
    #[error(
        "otp.smtp.tls = \"none\" sends codes and the SMTP password unencrypted, so it is allowed only for a \
         relay on this machine (127.0.0.1, ::1 or localhost), not {0:?}: use tls = \"starttls\" (port 587) or \
         \"tls\" (port 465), or run a local relay"
    )]
    SmtpCleartext(String),
    /// `otp.smtp.host` without `otp.smtp.from`.
    #[error("otp.smtp.from (the sender address) is required with otp.smtp.host")]
    SmtpFrom,
    /// Only one of the SMTP user name and password is set.
    #[error("SMTP authentication needs both otp.smtp.username and ONETRIP_SMTP_PASSWORD")]
    SmtpAuth,
    /// `otp.webhook.url` is not an HTTP(S) URL.
    #[error("otp.webhook.url must be an http:// or https:// URL, not {0:?}")]
    WebhookUrl(String),
    /// `otp.webhook.url` without a usable `ONETRIP_WEBHOOK_SECRET`.
    #[error("otp.webhook.url needs ONETRIP_WEBHOOK_SECRET (at least 16 characters)")]
    WebhookSecret,
    /// `otp.webhook.retry_window_secs` is out of range.
    #[error("otp.webhook.retry_window_secs must be between 0 (one attempt) and {max} (1 hour)")]
    WebhookRetryWindow {
        /// The largest window accepted.
        max: u64,
    },
    /// An OTP send or API rate is zero.
    #[error(
        "otp.sends_per_destination, otp.sends_per_key, otp.api_rate_per_ip and otp.api_rate_per_key must be \
         positive"
    )]
    OtpZeroLimit,
    /// The all-keys cap per destination is below the per-key one.
    #[error("otp.sends_per_destination_global must be at least otp.sends_per_destination")]
    OtpGlobalBelowPerKey,
    /// The lockout settings are out of range.
    #[error("otp.max_code_failures must be 1 to 100 and otp.lockout_secs positive")]
    OtpLockout,
}

/// What is wrong with a `log` value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogProblem {
    /// A bare word that is not a level (tracing would take it for a target and
    /// silently log nothing else).
    #[error("`{0}` is not a level")]
    NotALevel(String),
    /// Nothing but commas and spaces.
    #[error("it is empty (use `off` to log nothing)")]
    Empty,
    /// tracing refused a `target=level` pair.
    #[error(transparent)]
    Directive(#[from] tracing_subscriber::filter::ParseError),
}
