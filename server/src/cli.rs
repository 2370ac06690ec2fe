//! The `onetrip` command line: `serve`, `keys …`, `server-key …`, `audience-key`, `store …`.
//! Key commands go to a running server over its admin socket, or open the store
//! directly when no server runs.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::admin::{self, AdminError, AdminRequest};
use crate::config::{default_data_dir, FileConfig, Settings, StoreSetting};
use crate::seal::SealError;
use crate::shared::MemoryShared;
use crate::state::{unix_now, AppState};
use crate::store::{Store, StoreError};

mod backup;
mod exit;

pub use backup::StoreCommand;
pub use exit::{
    CliError, EXIT_CODES_HELP, EXIT_CONFLICT, EXIT_DAMAGED, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_PASSPHRASE,
    EXIT_UNAVAILABLE, EXIT_USAGE,
};

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
        /// Most events shown.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON.
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
    /// Address to listen on [default: 127.0.0.1:7420].
    #[arg(long, env = "ONETRIP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Token lifetime in seconds [default: 900].
    #[arg(long, env = "ONETRIP_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
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
    /// DEVELOPMENT ONLY: the console OTP channel prints the codes on stderr.
    #[arg(long, env = "ONETRIP_OTP_CONSOLE_CODES")]
    pub otp_console_codes: bool,
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
        id: String,
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

/// `90s`, `30m`, `12h`, `7d`, a bare number of seconds, or a Unix time (≥ 10⁹).
pub fn parse_since(text: &str) -> Result<Since, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is neither a duration (90s, 30m, 12h, 7d) nor a Unix time");
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

/// Runs the command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    if let Command::Store(ref cmd) = cli.command {
        // Its own exit codes (a damaged backup is not any other error).
        return runtime.block_on(backup::run(&cli, cmd));
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(ref args) => serve(&cli, args).await,
            Command::Keys(ref k) => keys(&cli, k).await,
            Command::Token(ref t) => token(t).await,
            Command::ServerKey(ref s) => server_key(&cli, s).await,
            Command::Audit { since, since_secs, limit, json } => {
                let since = match (since_secs, since) {
                    (Some(secs), _) => unix_now().saturating_sub(secs),
                    (None, Since::Ago(secs)) => unix_now().saturating_sub(secs),
                    (None, Since::At(at)) => at,
                };
                let v = admin_call(&cli, AdminRequest::Audit { since, limit }).await?;
                print_value(&v, json, |v| {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .map(|e| {
                                    format!("{}  {:<20} {}", e["at"], e["event"].as_str().unwrap_or(""), e["detail"])
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default()
                });
                Ok(())
            }
            Command::TokenKey(TokenKeyCommand::Rotate { overlap_secs, json }) => {
                let v = admin_call(&cli, AdminRequest::TokenKeyRotate { overlap_secs }).await?;
                print_value(&v, json, |v| {
                    format!(
                        "new token key {}; older keys open tokens until {} (unix time), then go.\nRun `onetrip audience-key <audience>` for each resource server now.",
                        v["new_key_id"].as_str().unwrap_or(""),
                        v["older_keys_retire_at"]
                    )
                });
                Ok(())
            }
            Command::Tokens(TokensCommand::Revoke { ref token_id, json }) => {
                let v = admin_call(&cli, AdminRequest::TokensRevoke { token_id: token_id.clone() }).await?;
                print_value(&v, json, |v| {
                    format!(
                        "token {} revoked until {} (unix time)",
                        v["token_id"].as_str().unwrap_or(""),
                        v["revoked_until"]
                    )
                });
                Ok(())
            }
            Command::Store(_) => unreachable!("handled above"),
            Command::AudienceKey { ref audience, json } => {
                let v = admin_call(&cli, AdminRequest::AudienceKey { audience: audience.clone() }).await?;
                print_value(&v, json, |v| {
                    // One `<key_id>:<key>` per line, current first: the form
                    // ONETRIP_AUDIENCE_KEY and TokenVerifier users take as it is.
                    let lines: Vec<String> = v["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| format!("{}:{}", k["key_id"].as_str().unwrap_or(""), k["key"].as_str().unwrap_or("")))
                        .collect();
                    lines.join("\n")
                });
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

fn settings(cli: &Cli, args: Option<&ServeArgs>) -> Result<Settings, String> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut overrides = FileConfig { data_dir: cli.data_dir.clone(), store: cli.store.clone(), ..Default::default() };
    if let Some(a) = args {
        overrides.listen = a.listen;
        overrides.token_ttl_secs = a.token_ttl_secs;
        overrides.clock_window_secs = a.clock_window_secs;
        overrides.default_audience = a.default_audience.clone();
        overrides.max_connections = a.max_connections;
        overrides.max_connections_per_ip = a.max_connections_per_ip;
        overrides.header_timeout_ms = a.header_timeout_ms;
        overrides.write_timeout_ms = a.write_timeout_ms;
        overrides.idle_timeout_ms = a.idle_timeout_ms;
        overrides.body_timeout_ms = a.body_timeout_ms;
        overrides.replay_cache_capacity = a.replay_cache_capacity;
        overrides.auth_rate_per_ip = a.auth_rate_per_ip;
        overrides.auth_rate_per_key = a.auth_rate_per_key;
        overrides.server_key_lifetime_secs = a.server_key_lifetime_secs;
        overrides.server_key_overlap_secs = a.server_key_overlap_secs;
        overrides.server_key_document_ttl_secs = a.server_key_document_ttl_secs;
        overrides.audit_retention_days = a.audit_retention_days;
        overrides.admin_socket = a.admin_socket.clone();
        overrides.tls_cert = a.tls_cert.clone();
        overrides.tls_key = a.tls_key.clone();
        overrides.log = a.log.clone();
        overrides.otp_console_codes = a.otp_console_codes.then_some(true);
        let smtp = (a.smtp_host.is_some()
            || a.smtp_port.is_some()
            || a.smtp_tls.is_some()
            || a.smtp_username.is_some()
            || a.smtp_from.is_some())
        .then(|| crate::config::SmtpFileConfig {
            host: a.smtp_host.clone(),
            port: a.smtp_port,
            tls: a.smtp_tls.clone(),
            username: a.smtp_username.clone(),
            from: a.smtp_from.clone(),
        });
        overrides.otp = Some(crate::config::OtpFileConfig {
            sends_per_destination: a.otp_sends_per_destination,
            sends_per_destination_global: a.otp_sends_per_destination_global,
            sends_per_key: a.otp_sends_per_key,
            api_rate_per_ip: a.otp_api_rate_per_ip,
            api_rate_per_key: a.otp_api_rate_per_key,
            mfa_scopes: (!a.mfa_scopes.is_empty()).then(|| a.mfa_scopes.clone()),
            totp_issuer: None,
            max_code_failures: a.otp_max_code_failures,
            lockout_secs: a.otp_lockout_secs,
            smtp,
            webhook: a.webhook_url.clone().map(|url| crate::config::WebhookFileConfig { url: Some(url) }),
        });
    }
    Settings::merge(overrides, file, default_data_dir())
}

/// The passphrase from ONETRIP_PASSPHRASE or the passphrase file, if any.
fn passphrase(cli: &Cli) -> Result<Option<zeroize::Zeroizing<String>>, String> {
    if let Some(p) = crate::environ::handed_over_passphrase().map_err(|e| e.to_string())? {
        return Ok(Some(p));
    }
    if let Ok(p) = std::env::var("ONETRIP_PASSPHRASE") {
        if !p.is_empty() {
            return Ok(Some(zeroize::Zeroizing::new(p)));
        }
    }
    if let Some(path) = &cli.passphrase_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read passphrase file {}: {e}", path.display()))?;
        return Ok(Some(zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())));
    }
    Ok(None)
}

/// Opens (or creates) the configured store behind its ports.
async fn open_backend(cli: &Cli, settings: &Settings) -> Result<(crate::store::Backend, bool), CliError> {
    match &settings.store {
        StoreSetting::Embedded => {
            let (store, created) = open_store(cli, &settings.data_dir)?;
            Ok((store.into_backend(), created))
        }
        StoreSetting::Postgres(url) => {
            let pass = passphrase(cli)?;
            let (pg, created) =
                crate::store::postgres::PgBackend::connect(url, pass.as_deref().map(String::as_str), unix_now())
                    .await?;
            Ok((Arc::new(pg), created))
        }
    }
}

/// Opens (or creates) the store, prompting for the passphrase on a terminal if the
/// store is sealed and none was configured.
fn open_store(cli: &Cli, data_dir: &Path) -> Result<(Store, bool), CliError> {
    let pass = passphrase(cli)?;
    match Store::open_or_init(data_dir, pass.as_deref().map(String::as_str), unix_now()) {
        Err(StoreError::Seal(SealError::PassphraseRequired)) if pass.is_none() && std::io::stdin().is_terminal() => {
            let typed = zeroize::Zeroizing::new(
                rpassword::prompt_password("onetrip store passphrase: ")
                    .map_err(|e| format!("cannot read passphrase: {e}"))?,
            );
            Ok(Store::open_or_init(data_dir, Some(&typed), unix_now())?)
        }
        other => Ok(other?),
    }
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let settings = settings(cli, Some(args))?;
    init_tracing(&settings.log);
    let (store, created) = open_backend(cli, &settings).await?;
    if !store.is_sealed() {
        tracing::warn!(
            store = %store.location(),
            "private keys are stored UNENCRYPTED: set ONETRIP_PASSPHRASE (or --passphrase-file) before the first start to seal them"
        );
    }
    if settings.otp_console_codes {
        tracing::warn!("--otp-console-codes is on: one-time codes are printed on stderr. Never use this in production");
    }
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener =
        TcpListener::bind(settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_socket = settings.admin_socket.clone();
    let data_dir = settings.data_dir.clone();
    let store_shown = matches!(settings.store, StoreSetting::Postgres(_)).then(|| settings.store.shown());
    let shared = MemoryShared::with_window(settings.clock_window_secs, settings.replay_cache_capacity);
    let state = AppState::new(settings, store, shared).await.map_err(|e| e.to_string())?;
    let restored = crate::replay_guard::restore(&state).await.map_err(|e| e.to_string())?;
    tracing::debug!(restored, "replay ids stamped ahead by the previous run loaded");
    let revoked = crate::revocation::restore(&state).await.map_err(|e| e.to_string())?;
    tracing::debug!(revoked, "token revocations loaded");
    if let StoreSetting::Postgres(_) = state.settings.store {
        // No store file here, but the admin socket still lives in the data directory.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", data_dir.display()))?;
    }
    let admin_listener = admin::bind_socket(&admin_socket)
        .map_err(|e| format!("cannot create the admin socket {}: {e}", admin_socket.display()))?;
    // Before the announcement below: a SIGTERM sent as soon as we are "up" must stop
    // us gracefully, not by the default action.
    let shutdown = crate::listener::shutdown_signal();
    // Stamps in the start second are refused (crate::replay_guard): answer nobody
    // before the clock has left it, so no client in sync is refused.
    crate::replay_guard::wait_past_start(&state).await;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("onetrip {} listening on {scheme}://{local}", env!("CARGO_PKG_VERSION"));
    println!("identity fingerprint: {}", state.fingerprint());
    match &store_shown {
        Some(shown) => println!("store: {shown}{}", if created { " (created)" } else { "" }),
        None => println!("data directory: {}{}", data_dir.display(), if created { " (created)" } else { "" }),
    }
    println!("admin socket: {}", admin_socket.display());
    tracing::info!(%local, fingerprint = %state.fingerprint(), "serving");

    let admin = {
        let state = state.clone();
        let socket = admin_socket.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve_socket(admin_listener, state).await {
                tracing::error!(error = %e, socket = %socket.display(), "admin socket failed; key commands must wait for a restart");
            }
        })
    };
    let maintenance = tokio::spawn(maintenance(state.clone()));
    let clock = Arc::clone(&state.clock);
    let key_lifecycle = tokio::spawn(crate::key_lifecycle::run(
        state.clone(),
        Arc::new(move || clock.now()),
        std::time::Duration::from_secs(1),
    ));
    let retention = tokio::spawn(crate::retention::run(state.clone()));
    // A shared store: other replicas and the CLI change it; apply their changes here.
    let feed = state.store.changes().map(|changes| tokio::spawn(crate::change_feed::run(state.clone(), changes)));
    {
        // Set before the listener runs: no handshake can see a half-warm cache without
        // the equal-work rule (keys::KeyDirectory::static_static).
        state.keys.set_warming(true);
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let n = st.warm_keys();
            st.keys.set_warming(false);
            tracing::info!(computed = n, elapsed_ms = started.elapsed().as_millis() as u64, "key cache warmed");
        });
    }
    crate::listener::run(listener, tls, state.clone(), shutdown).await;
    admin.abort();
    maintenance.abort();
    key_lifecycle.abort();
    retention.abort();
    if let Some(feed) = feed {
        feed.abort();
    }
    // The last flush is the only copy of the uses queued since the previous one.
    if let Err(e) = state.flush_last_used().await {
        tracing::warn!(error = %e, "cannot record key last-use times at shutdown");
    }
    let _ = std::fs::remove_file(&admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// Once a second: expire replay ids and rate windows; every ten seconds, persist
/// `last_used_at`. (Handshake keys have their own task, [`crate::key_lifecycle`].)
async fn maintenance(state: AppState<MemoryShared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = state.now();
        state.shared.sweep(now);
        state.probe_store(std::time::Duration::from_secs(2)).await;
        if ticks % 10 == 0 {
            if let Err(e) = state.flush_last_used().await {
                tracing::warn!(error = %e, "cannot record key last-use times");
            }
        }
        // Expired verifications are kept an hour (status queries), then deleted.
        if ticks % 60 == 0 {
            if let Err(e) = state.store.sweep_verifications(now, 3600).await {
                tracing::warn!(error = %e, "cannot delete expired verifications");
            }
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid TLS certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read TLS key {}: {e}", key.display()))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Logs to stderr through the `log` setting's filter (checked when the settings load).
fn init_tracing(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = crate::config::log_filter(filter)
        .unwrap_or_else(|_| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// Where admin requests go: a running server's socket, or the store itself.
enum AdminTarget {
    Socket(PathBuf),
    Direct(crate::store::Backend),
}

impl AdminTarget {
    async fn call(&self, req: AdminRequest) -> Result<serde_json::Value, CliError> {
        match self {
            AdminTarget::Socket(socket) => admin::request(socket, &req)
                .await?
                .unwrap_or_else(|| {
                    Err(AdminError::Store(StoreError::Unavailable(
                        "the server stopped while the command ran: run it again".to_owned(),
                    )))
                })
                .map_err(CliError::from),
            AdminTarget::Direct(store) => Ok(admin::execute(&**store, None, req).await?),
        }
    }
}

/// Runs an admin request through the running server, or against the store directly.
async fn admin_call(cli: &Cli, req: AdminRequest) -> Result<serde_json::Value, CliError> {
    admin_target(cli).await?.call(req).await
}

/// Finds the running server's socket, or opens the store when no server runs.
async fn admin_target(cli: &Cli) -> Result<AdminTarget, CliError> {
    let settings = settings(cli, None)?;
    // A shared database is written directly: every replica hears of it (change feed).
    if let StoreSetting::Postgres(_) = settings.store {
        return Ok(AdminTarget::Direct(open_backend(cli, &settings).await?.0));
    }
    if admin::request(&settings.admin_socket, &AdminRequest::Ping).await?.is_some() {
        return Ok(AdminTarget::Socket(settings.admin_socket));
    }
    if !settings.data_dir.join(crate::store::STORE_FILE).exists() {
        return Err(CliError {
            code: EXIT_NOT_FOUND,
            message: format!(
                "no onetrip store in {} and no server running: start `onetrip serve` first (or pass --data-dir)",
                settings.data_dir.display()
            ),
        });
    }
    let cli_data_dir = settings.data_dir.clone();
    let (store, _) = match open_store(cli, &cli_data_dir) {
        Ok(s) => s,
        Err(e) => {
            // A server may be starting: it holds the store before its socket exists.
            for _ in 0..20 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if admin::request(&settings.admin_socket, &AdminRequest::Ping).await?.is_some() {
                    return Ok(AdminTarget::Socket(settings.admin_socket));
                }
            }
            return Err(e);
        }
    };
    Ok(AdminTarget::Direct(store.into_backend()))
}

fn print_value(v: &serde_json::Value, json: bool, human: impl FnOnce(&serde_json::Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

fn key_line(v: &serde_json::Value) -> String {
    let list = |k: &str| {
        v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
    };
    format!(
        "{}  {:<20} scopes={} audiences={} {}{}",
        v["id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        list("scopes"),
        list("audiences"),
        if v["active"].as_bool() == Some(true) { "active" } else { "INACTIVE" },
        if v["require_otp"].as_bool() == Some(true) { " otp" } else { "" },
    )
}

async fn keys(cli: &Cli, cmd: &KeysCommand) -> Result<(), CliError> {
    let (req, json) = match cmd {
        KeysCommand::Create { name, scopes, audiences, require_otp, otp_to, json } => (
            AdminRequest::KeysCreate {
                name: name.clone(),
                scopes: scopes.clone(),
                audiences: audiences.clone(),
                require_otp: *require_otp,
                otp_to: otp_to.clone(),
            },
            *json,
        ),
        KeysCommand::List { limit, after, name, audience, scope, revoked, created_after, json } => {
            let filter = ListFilter {
                name: name.clone(),
                audience: audience.clone(),
                scope: scope.clone(),
                revoked: *revoked,
                created_after: *created_after,
            };
            return list_keys(cli, *limit, after.clone(), filter, *json).await;
        }
        KeysCommand::TotpEnroll { id, replace, json } => {
            (AdminRequest::KeysTotpEnroll { id: id.clone(), replace: *replace }, *json)
        }
        KeysCommand::Show { id, json } => (AdminRequest::KeysShow { id: id.clone() }, *json),
        KeysCommand::Revoke { id, json } => (AdminRequest::KeysRevoke { id: id.clone() }, *json),
        KeysCommand::Unlock { id, json } => (AdminRequest::KeysUnlock { id: id.clone() }, *json),
        KeysCommand::Rotate { id, grace_secs, json } => {
            (AdminRequest::KeysRotate { id: id.clone(), grace_secs: *grace_secs }, *json)
        }
    };
    let v = admin_call(cli, req).await?;
    print_value(&v, json, |v| match cmd {
        KeysCommand::Create { .. } | KeysCommand::Rotate { .. } => format!(
            "{}\n\n  {}\n\nThis is the only time the API key is shown: store it in your secret manager.{}",
            key_line(v),
            v["api_key"].as_str().unwrap_or(""),
            v["old_key_expires_at"]
                .as_u64()
                .map(|t| format!("\nThe old key stays valid until {t} (unix time)."))
                .unwrap_or_default()
        ),
        KeysCommand::TotpEnroll { .. } => {
            let uri = v["otpauth_uri"].as_str().unwrap_or("");
            format!(
                "Scan this with an authenticator app (or enter the secret by hand):\n\n{}\n  secret: {}\n  uri:    {uri}\n\nThis is the only time the secret is shown. Codes: 6 digits, 30 s, SHA-1.",
                crate::otp::totp::qr_terminal(uri),
                v["secret"].as_str().unwrap_or(""),
            )
        }
        KeysCommand::Show { .. } | KeysCommand::Unlock { .. } => {
            let lock = &v["second_factor_lock"];
            let state = match lock["locked_until"].as_u64() {
                Some(until) => format!("LOCKED until {until} (unix time): `onetrip keys unlock` clears it"),
                None => "not locked".to_owned(),
            };
            let line = if v["name"].is_null() { v["id"].as_str().unwrap_or("").to_owned() } else { key_line(v) };
            format!(
                "{line}\n  second factor: {state}; wrong codes in the last hour: {}; locks since the last right code: {}",
                lock["wrong_codes_last_hour"],
                lock["lockouts"]
            )
        }
        _ => key_line(v),
    });
    Ok(())
}

/// The filters of `keys list`.
struct ListFilter {
    name: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    revoked: Option<bool>,
    created_after: Option<u64>,
}

/// Prints keys a page at a time as they arrive: memory stays one page, here and in
/// the server, whatever the number of keys.
async fn list_keys(
    cli: &Cli,
    limit: Option<usize>,
    mut after: Option<String>,
    filter: ListFilter,
    json: bool,
) -> Result<(), CliError> {
    use std::io::Write;
    let target = admin_target(cli).await?;
    let mut left = limit.unwrap_or(usize::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let io = |e: std::io::Error| format!("cannot write the listing: {e}");
    if json {
        write!(out, "[").map_err(io)?;
    }
    while left > 0 {
        let req = AdminRequest::KeysList {
            after: after.take(),
            limit: left.min(admin::MAX_KEYS_PAGE),
            name: filter.name.clone(),
            audience: filter.audience.clone(),
            scope: filter.scope.clone(),
            revoked: filter.revoked,
            created_after: filter.created_after,
        };
        let page = target.call(req).await?;
        let keys = page["keys"].as_array().cloned().unwrap_or_default();
        for key in &keys {
            if json {
                let sep = if first { "\n" } else { ",\n" };
                write!(out, "{sep}{}", serde_json::to_string(key).unwrap_or_default()).map_err(io)?;
            } else {
                writeln!(out, "{}", key_line(key)).map_err(io)?;
            }
            first = false;
        }
        left = left.saturating_sub(keys.len());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" }).map_err(io)?;
    }
    Ok(out.flush().map_err(io)?)
}

async fn token(args: &TokenArgs) -> Result<(), CliError> {
    use onetrip_client::{Client, Error};
    let api_key = match &args.api_key_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => std::env::var("ONETRIP_API_KEY")
            .map_err(|_| "set ONETRIP_API_KEY (or --api-key-file) to the API key".to_owned())?,
    };
    let api_key = zeroize::Zeroizing::new(api_key.trim().to_owned());
    let mut builder = Client::builder().server(&args.server).api_key(api_key.as_str()).scopes(args.scopes.clone());
    builder = match (&args.pin, &args.trust_file) {
        (Some(pin), _) => builder.pin(pin.parse().map_err(|e| format!("--pin: {e}"))?),
        (None, Some(file)) => builder.trust_on_first_use(file),
        (None, None) => {
            return Err(String::from("pass --pin <fingerprint> (see `onetrip server-key show`) or --trust-file").into())
        }
    };
    if let Some(a) = &args.audience {
        builder = builder.audience(a);
    }
    if let Some(ca) = &args.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        builder = builder.ca_certificates_pem(&pem);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let token = match client.token().await {
        Err(Error::SecondFactorRequired { operation, channel, destination }) => {
            eprint!("second factor: enter the code sent by {} to {destination}: ", channel.as_str());
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the code: {e}"))?;
            client.token_with_code(operation, line.trim()).await
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    if args.json {
        let v = serde_json::json!({
            "token": &*token.token().to_base64(),
            "expires_at": token.expires_at(),
            "second_factor": token.second_factor(),
        });
        println!("{v}");
    } else {
        println!("{}", &*token.token().to_base64());
    }
    Ok(())
}

async fn server_key(cli: &Cli, cmd: &ServerKeyCommand) -> Result<(), CliError> {
    let (req, json) = match cmd {
        ServerKeyCommand::Show { json } => (AdminRequest::ServerKeyShow, *json),
        ServerKeyCommand::Rotate { overlap_secs, json } => {
            (AdminRequest::ServerKeyRotate { overlap_secs: *overlap_secs }, *json)
        }
    };
    let v = admin_call(cli, req).await?;
    print_value(&v, json, |v| {
        let mut s = format!(
            "identity fingerprint: {}\nprivate keys sealed: {}\n",
            v["fingerprint"].as_str().unwrap_or(""),
            v["sealed"].as_bool().unwrap_or(false)
        );
        for k in v["keys"].as_array().into_iter().flatten() {
            s += &format!(
                "handshake key {}  valid {}..{}{}\n",
                k["key_id"].as_str().unwrap_or(""),
                k["not_before"],
                k["not_after"],
                if k["valid_now"].as_bool() == Some(true) { "" } else { " (not valid now)" }
            );
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_unix_times_and_explains_mistakes() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(90)));
        assert_eq!(parse_since("30m"), Ok(Since::Ago(1800)));
        assert_eq!(parse_since("12h"), Ok(Since::Ago(43_200)));
        assert_eq!(parse_since("7d"), Ok(Since::Ago(604_800)));
        assert_eq!(parse_since("3600"), Ok(Since::Ago(3600)));
        assert_eq!(parse_since("1795600000"), Ok(Since::At(1_795_600_000)));
        for bad in ["", "h", "5w", "-1h", "1.5h", "99999999999999999999d", "12hh"] {
            assert!(parse_since(bad).unwrap_err().contains("duration"), "{bad}");
        }
    }
}
