//! How a command reaches durable state: the settings it runs with, the passphrase,
//! the configured backend, and where admin requests go (a running server's socket, or
//! the store itself).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::{Cli, ServeArgs};
use super::{CliError, EXIT_NOT_FOUND};
use crate::admin::{self, AdminError, AdminRequest};
use crate::config::{default_data_dir, ConfigError, FileConfig, Settings, StoreSetting};
use crate::seal::SealError;
use crate::state::unix_now;
use crate::store::{Store, StoreError};

pub(super) fn settings(cli: &Cli, args: Option<&ServeArgs>) -> Result<Settings, ConfigError> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut overrides = FileConfig { data_dir: cli.data_dir.clone(), store: cli.store.clone(), ..Default::default() };
    if let Some(a) = args {
        overrides.listen = a.listen;
        overrides.shared = a.shared.clone();
        overrides.shared_prefix = a.shared_prefix.clone();
        overrides.shared_connect_timeout_ms = a.shared_connect_timeout_ms;
        overrides.shared_command_timeout_ms = a.shared_command_timeout_ms;
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
        overrides.log_format = a.log_format;
        overrides.otp_console_codes = a.otp_console_codes.then_some(true);
        overrides.proxy_protocol_from = a.proxy_protocol_from.clone();
        overrides.drain_secs = a.drain_secs;
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
            webhook: a
                .webhook_url
                .clone()
                .map(|url| crate::config::WebhookFileConfig { url: Some(url), retry_window_secs: None }),
        });
    }
    Settings::merge(overrides, file, default_data_dir())
}

/// Why the passphrase could not be had.
#[derive(Debug, thiserror::Error)]
pub(super) enum PassphraseError {
    /// The parent process's hand-over of the passphrase failed.
    #[error(transparent)]
    HandOver(#[from] crate::environ::EnvironError),
    /// `--passphrase-file` cannot be read.
    #[error("cannot read passphrase file {}: {source}", path.display())]
    File {
        /// The file named.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
}

impl From<PassphraseError> for CliError {
    fn from(e: PassphraseError) -> Self {
        CliError { code: super::EXIT_FAILURE, message: e.to_string() }
    }
}

/// The passphrase from ONETRIP_PASSPHRASE or the passphrase file, if any.
pub(super) fn passphrase(cli: &Cli) -> Result<Option<zeroize::Zeroizing<String>>, PassphraseError> {
    if let Some(p) = crate::environ::handed_over_passphrase()? {
        return Ok(Some(p));
    }
    if let Ok(p) = std::env::var("ONETRIP_PASSPHRASE") {
        if !p.is_empty() {
            return Ok(Some(zeroize::Zeroizing::new(p)));
        }
    }
    if let Some(path) = &cli.passphrase_file {
        let text =
            std::fs::read_to_string(path).map_err(|source| PassphraseError::File { path: path.clone(), source })?;
        return Ok(Some(zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())));
    }
    Ok(None)
}

/// Opens (or creates) the configured store behind its ports.
pub(super) async fn open_backend(cli: &Cli, settings: &Settings) -> Result<(crate::store::Backend, bool), CliError> {
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
            // PostgreSQL runs its own queries per port method: count them at the port.
            Ok((Arc::new(crate::store::measured::Measured::new(pg)), created))
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

/// Where admin requests go: a running server's socket, or the store itself.
pub(super) enum AdminTarget {
    Socket(PathBuf),
    Direct(crate::store::Backend),
}

impl AdminTarget {
    pub(super) async fn call(&self, req: AdminRequest) -> Result<serde_json::Value, CliError> {
        match self {
            AdminTarget::Socket(socket) => admin::request(socket, &req)
                .await?
                .unwrap_or_else(|| {
                    Err(AdminError::Store(StoreError::Unavailable(
                        "the server stopped while the command ran: run it again".to_owned(),
                    )))
                })
                .map_err(CliError::from),
            AdminTarget::Direct(store) => Ok(admin::execute(&**store, None, req, &admin::Actor::this_process()).await?),
        }
    }
}

/// Runs an admin request through the running server, or against the store directly.
pub(super) async fn admin_call(cli: &Cli, req: AdminRequest) -> Result<serde_json::Value, CliError> {
    admin_target(cli).await?.call(req).await
}

/// Finds the running server's socket, or opens the store when no server runs.
pub(super) async fn admin_target(cli: &Cli) -> Result<AdminTarget, CliError> {
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
