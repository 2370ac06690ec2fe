//! The command line's shape: every subcommand, flag and `ONETRIP_*` variable (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::backup::StoreCommand;
use super::EXIT_CODES_HELP;

/// onetrip: one-roundtrip API-key authentication server.
#[derive(Debug, Parser)]
#[command(name = "onetrip", version, about, long_about = None, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Data directory (store, identity marker, admin socket).
    /// Default: $XDG_DATA_HOME/onetrip, else ~/.local/share/onetrip.
    #[arg(long, global = true, env = "ONETRIP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where durable state lives: `redb` (the embedded file in the data directory,
    /// the default) or a PostgreSQL URL (`postgres://user@host/db?sslmode=verify-full`;
    /// the password from the URL or PGPASSWORD) that several replicas share.
    #[arg(long, global = true, env = "ONETRIP_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// TOML configuration file (flags and ONETRIP_* variables override it).
    #[arg(long, global = true, env = "ONETRIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// File holding the passphrase that seals private keys at rest
    /// (or set ONETRIP_PASSPHRASE; prompted for on a terminal when needed).
    #[arg(long, global = true, env = "ONETRIP_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `onetrip token-key …`.
#[derive(Debug, Subcommand)]
pub enum TokenKeyCommand {
    /// Make a new token master key; tokens sealed under the older ones stay valid for
    /// the overlap, then those keys are deleted. Give resource servers the new
    /// `onetrip audience-key` output during the overlap. `--overlap-secs 0` retires
    /// every older key at once (a leaked key): every token in circulation stops working.
    Rotate {
        /// Seconds older keys still open tokens; at least the token lifetime keeps every
        /// token working until it expires.
        #[arg(long, default_value_t = crate::config::MAX_TOKEN_TTL_SECS)]
        overlap_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onetrip tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Revoke one token now (its `token_id`, as whoami and introspection show it):
    /// refused by the server's API and introspection at once, listed at
    /// GET /v1/revocations for resource servers; kept across restarts until the token
    /// would have expired. To revoke every token of a key, revoke the key.
    Revoke {
        /// Token id (32 hex characters).
        token_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Subcommands.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (creates the data directory and keys on first start).
    Serve(ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show or rotate the server's handshake keys.
    #[command(subcommand, name = "server-key")]
    ServerKey(ServerKeyCommand),
    /// Get a token from a server with an API key (ONETRIP_API_KEY) and print it, for
    /// scripts and curl (`Authorization: Bearer` on HTTPS). Asks for the code on
    /// stdin when the key needs a second factor.
    Token(TokenArgs),
    /// Print audit events (key changes, rotations, second-factor events; never codes).
    Audit {
        /// Only events since then: a duration ago (`90s`, `30m`, `12h`, `7d`) or a Unix
        /// time (e.g. `1795600000`).
        #[arg(long, default_value = "24h", value_parser = parse_since)]
        since: Since,
        /// Only events at or after this many seconds ago (overrides --since).
        #[arg(long)]
        since_secs: Option<u64>,
        /// Most events shown: the newest ones. When older ones exist, a line on stderr
        /// says so and gives the command that shows them (with --before).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only events older than this cursor, as the "more events" line prints it.
        #[arg(long)]
        before: Option<String>,
        /// Print JSON (an array of the events; the "more events" line still goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Revoke tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Rotate the token master key (tokens are sealed with the new one at once).
    #[command(subcommand, name = "token-key")]
    TokenKey(TokenKeyCommand),
    /// Back up the store, or check a backup.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print the token key a resource server needs to verify tokens for AUDIENCE.
    AudienceKey {
        /// Audience (resource server name).
        audience: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onetrip serve` options; each also reads an `ONETRIP_*` variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Load and validate the settings (flags, variables, config file), print
    /// `settings OK`, and exit without opening the store, the TLS files or a socket:
    /// for `ExecStartPre=` and for checking a config file before a reload.
    #[arg(long)]
    pub check: bool,
    /// Address to listen on [default: 127.0.0.1:7420].
    #[arg(long, env = "ONETRIP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Token lifetime in seconds [default: 900].
    #[arg(long, env = "ONETRIP_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// Replica-shared state (replay ids, rate limits, revocations): `memory`, one
    /// plain Redis `redis://host:port`, or a Redis Cluster `redis://a:p,b:p` /
    /// `redis+cluster://host:port` [default: memory].
    #[arg(long, env = "ONETRIP_SHARED")]
    pub shared: Option<String>,
    /// Prefix of every Redis key [default: onetrip:].
    #[arg(long, env = "ONETRIP_SHARED_PREFIX")]
    pub shared_prefix: Option<String>,
    /// Milliseconds one connection attempt to Redis may take [default: 500].
    #[arg(long, env = "ONETRIP_SHARED_CONNECT_TIMEOUT_MS")]
    pub shared_connect_timeout_ms: Option<u64>,
    /// Milliseconds one Redis command may take before the request fails closed [default: 100].
    #[arg(long, env = "ONETRIP_SHARED_COMMAND_TIMEOUT_MS")]
    pub shared_command_timeout_ms: Option<u64>,
    /// Accepted client clock difference in seconds, ± [default: 60].
    #[arg(long, env = "ONETRIP_CLOCK_WINDOW_SECS")]
    pub clock_window_secs: Option<u64>,
    /// Audience of tokens for keys without audiences [default: onetrip].
    #[arg(long, env = "ONETRIP_DEFAULT_AUDIENCE")]
    pub default_audience: Option<String>,
    /// Simultaneous connections [default: 1024].
    #[arg(long, env = "ONETRIP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Simultaneous connections from one client: an IPv4 address, an IPv6 /64
    /// (behind a proxy, the proxy) [default: 64].
    #[arg(long, env = "ONETRIP_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Milliseconds allowed to receive request headers [default: 5000].
    #[arg(long, env = "ONETRIP_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Milliseconds an answer may wait for the client to read it [default: 10000].
    #[arg(long, env = "ONETRIP_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds a connection may stay without traffic [default: 30000].
    #[arg(long, env = "ONETRIP_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds allowed to receive a request body [default: 5000].
    #[arg(long, env = "ONETRIP_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Most request ids kept by the replay cache; ~19 bytes each at most
    /// [default: 8000000].
    #[arg(long, env = "ONETRIP_REPLAY_CACHE_CAPACITY")]
    pub replay_cache_capacity: Option<usize>,
    /// Handshakes per second per client IP [default: 10000].
    #[arg(long, env = "ONETRIP_AUTH_RATE_PER_IP")]
    pub auth_rate_per_ip: Option<u64>,
    /// Authenticated handshakes per second per API key, per replica [default: 1000].
    #[arg(long, env = "ONETRIP_AUTH_RATE_PER_KEY")]
    pub auth_rate_per_key: Option<u64>,
    /// Validity of a handshake key in seconds; rotated automatically [default: 2592000, 30 days].
    #[arg(long, env = "ONETRIP_SERVER_KEY_LIFETIME_SECS")]
    pub server_key_lifetime_secs: Option<u64>,
    /// Seconds an old handshake key is still accepted after rotation, then destroyed [default: 86400].
    #[arg(long, env = "ONETRIP_SERVER_KEY_OVERLAP_SECS")]
    pub server_key_overlap_secs: Option<u64>,
    /// Lifetime of the signed server key document in seconds [default: 14400].
    #[arg(long, env = "ONETRIP_SERVER_KEY_DOCUMENT_TTL_SECS")]
    pub server_key_document_ttl_secs: Option<u64>,
    /// Days audit events are kept before a background task deletes them [default: 90].
    #[arg(long, env = "ONETRIP_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<u64>,
    /// Admin Unix socket [default: DATA_DIR/admin.sock].
    #[arg(long, env = "ONETRIP_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// TLS certificate chain, PEM (enables HTTPS and bearer tokens).
    #[arg(long, env = "ONETRIP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, env = "ONETRIP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log filter, e.g. `info` or `onetrip_server=debug` [default: info].
    #[arg(long, env = "ONETRIP_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` or `json` (one object a line, with the request id) [default: text].
    #[arg(long, env = "ONETRIP_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// DEVELOPMENT ONLY: the console OTP channel prints the codes on stderr.
    #[arg(long, env = "ONETRIP_OTP_CONSOLE_CODES")]
    pub otp_console_codes: bool,
    /// Load balancers (CIDR ranges, comma-separated, e.g. `127.0.0.1/32,::1/128`) that
    /// must start every connection with a PROXY v2 header naming the client; a header
    /// from any other address is refused [default: none, off].
    #[arg(long, env = "ONETRIP_PROXY_PROTOCOL_FROM", value_delimiter = ',')]
    pub proxy_protocol_from: Option<Vec<String>>,
    /// After SIGTERM: seconds /healthz answers 503 `draining` while requests are still
    /// served, before the listener closes; 0 = close at once [default: 5].
    #[arg(long, env = "ONETRIP_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Scope that only second-factor tokens get (repeatable), e.g. `admin`.
    #[arg(long = "mfa-scope", env = "ONETRIP_MFA_SCOPES", value_delimiter = ',')]
    pub mfa_scopes: Vec<String>,
    /// OTP codes one API key may have sent to one destination per 10 minutes [default: 5].
    #[arg(long, env = "ONETRIP_OTP_SENDS_PER_DESTINATION")]
    pub otp_sends_per_destination: Option<u64>,
    /// OTP API codes sent to one destination per 10 minutes, all keys together;
    /// never applied to step-up [default: 20].
    #[arg(long, env = "ONETRIP_OTP_SENDS_PER_DESTINATION_GLOBAL")]
    pub otp_sends_per_destination_global: Option<u64>,
    /// OTP codes one API key may have sent per 10 minutes [default: 100].
    #[arg(long, env = "ONETRIP_OTP_SENDS_PER_KEY")]
    pub otp_sends_per_key: Option<u64>,
    /// Failed authentications per second per client IP on /v1/otp/*, after which
    /// the address is refused before its token is read [default: 50].
    #[arg(long, env = "ONETRIP_OTP_API_RATE_PER_IP")]
    pub otp_api_rate_per_ip: Option<u64>,
    /// Wrong second-factor codes per key (step-up) or TOTP account per hour, across
    /// verifications, before a lock [default: 10].
    #[arg(long, env = "ONETRIP_OTP_MAX_CODE_FAILURES")]
    pub otp_max_code_failures: Option<u32>,
    /// First lock's length in seconds; each further lock doubles, up to 7 days [default: 3600].
    #[arg(long, env = "ONETRIP_OTP_LOCKOUT_SECS")]
    pub otp_lockout_secs: Option<u64>,
    /// Authenticated /v1/otp/* calls per second per API key [default: 200].
    #[arg(long, env = "ONETRIP_OTP_API_RATE_PER_KEY")]
    pub otp_api_rate_per_key: Option<u64>,
    /// SMTP relay for the email channel (password: ONETRIP_SMTP_PASSWORD).
    #[arg(long, env = "ONETRIP_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port [default: 587, 465 with --smtp-tls tls, 25 with none].
    #[arg(long, env = "ONETRIP_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// SMTP transport security: starttls, tls or none [default: starttls].
    #[arg(long, env = "ONETRIP_SMTP_TLS")]
    pub smtp_tls: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "ONETRIP_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Sender address of OTP emails.
    #[arg(long, env = "ONETRIP_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// URL the signed webhook channel POSTs to (HMAC key: ONETRIP_WEBHOOK_SECRET).
    #[arg(long, env = "ONETRIP_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
}

/// `onetrip keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Enrol a `--otp-to totp` key in an authenticator app: prints the secret, its
    /// otpauth:// URI and a QR code, once. Enrolling again replaces the secret.
    TotpEnroll {
        /// Key id.
        id: String,
        /// Replace an existing enrolment (the old authenticator stops working).
        #[arg(long)]
        replace: bool,
        /// Print JSON (no QR code).
        #[arg(long)]
        json: bool,
    },
    /// Create an API key and print it once.
    Create {
        /// Human name.
        #[arg(long)]
        name: String,
        /// Scope the key may request (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Audience the key may get tokens for (repeatable).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Require a second factor on every handshake.
        #[arg(long, requires = "otp_to")]
        require_otp: bool,
        /// Where second-factor codes go (email address, webhook target, `totp`).
        #[arg(long)]
        otp_to: Option<String>,
        /// Create this many keys alike, one transaction per 10,000; needs `--out`.
        #[arg(long, requires = "out", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        count: Option<u64>,
        /// With `--count`: write the API keys to FILE (a new file, mode 0600), one a
        /// line; they are not printed.
        #[arg(long, value_name = "FILE", requires = "count")]
        out: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys, in id order, streamed a page at a time.
    List {
        /// Stop after this many keys.
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this key id (resume a listing).
        #[arg(long)]
        after: Option<String>,
        /// Only keys with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only keys that list this audience.
        #[arg(long)]
        audience: Option<String>,
        /// Only keys that list this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only revoked keys (`--revoked=false`: only keys not revoked).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        revoked: Option<bool>,
        /// Only keys created at or after this unix time.
        #[arg(long)]
        created_after: Option<u64>,
        /// Print JSON (one array, written as it is read).
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        /// Key id (hex).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key (new handshakes fail at once).
    Revoke {
        /// Key id (hex).
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        id: Option<String>,
        /// Revoke every key in FILE (`-`: standard input): one API key or key id a
        /// line, as `keys create --count --out` writes; one transaction per 10,000.
        #[arg(long, value_name = "FILE")]
        from: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Clear a key's second-factor lockout after too many wrong step-up codes (audited).
    Unlock {
        /// Key id (hex).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret (new key id); the old key keeps working for the grace period.
    Rotate {
        /// Key id (hex).
        id: String,
        /// Seconds the old key stays valid.
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onetrip audit --since`: a duration ago, or an absolute Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This many seconds before now.
    Ago(u64),
    /// This Unix time.
    At(u64),
}

/// A `--since` value that is neither a duration nor a Unix time (clap prints it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither a duration (90s, 30m, 12h, 7d) nor a Unix time")]
pub struct SinceError(String);

/// `90s`, `30m`, `12h`, `7d`, a bare number of seconds, or a Unix time (≥ 10⁹).
pub fn parse_since(text: &str) -> Result<Since, SinceError> {
    let text = text.trim();
    let bad = || SinceError(text.to_owned());
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
        _ => (text, None),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        None if n >= 1_000_000_000 => return Ok(Since::At(n)),
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some(_) => return Err(bad()),
    };
    n.checked_mul(scale).map(Since::Ago).ok_or_else(bad)
}

/// `onetrip token` options. The API key comes from the environment or a file, never
/// from the command line (where `ps` and shell history would show it).
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Server URL.
    #[arg(long, env = "ONETRIP_SERVER", default_value = "http://127.0.0.1:7420")]
    pub server: String,
    /// File holding the API key (else ONETRIP_API_KEY).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Expected server fingerprint (`onetrip server-key show`).
    #[arg(long, env = "ONETRIP_FINGERPRINT")]
    pub pin: Option<String>,
    /// Trust-on-first-use file, when no --pin is given.
    #[arg(long, conflicts_with = "pin")]
    pub trust_file: Option<PathBuf>,
    /// CA certificate (PEM) for an https server with a private CA.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Audience to ask for.
    #[arg(long)]
    pub audience: Option<String>,
    /// Scope to ask for (repeatable; default: all of the key's).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Print JSON (token, expiry, second-factor flag).
    #[arg(long)]
    pub json: bool,
}

/// `onetrip server-key …`
#[derive(Debug, Subcommand)]
pub enum ServerKeyCommand {
    /// Fingerprint, key ids and validity.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// New handshake key; clients on the old one keep working for the overlap.
    Rotate {
        /// Seconds the old key stays valid.
        #[arg(long, default_value_t = 86_400)]
        overlap_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
