//! SIGHUP: re-read the settings and apply what can change while serving (the log
//! filter, the TLS certificate and key files' contents), and name in the log what
//! needs a restart. SIGHUP never stops the server: logrotate and `systemctl reload`
//! send it as a matter of routine. SIGTERM and SIGINT keep their meaning
//! ([`crate::listener::shutdown_signal`]).

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::args::{Cli, ServeArgs};
use super::store_access::settings;
use super::CliError;
use crate::config::Settings;
use crate::state::AppState;
use crate::tls::CertificateFiles;

/// The handle that swaps the log filter in place.
pub(super) type LogFilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::filter::Targets, tracing_subscriber::Registry>;

/// SIGHUPs, caught from the moment this exists (before the server says it is up, so a
/// reload sent right after start cannot take the default action and kill it).
pub(super) struct Hangups(Signal);

impl Hangups {
    pub(super) fn listen() -> Result<Self, CliError> {
        signal(SignalKind::hangup()).map(Self).map_err(|e| format!("cannot handle SIGHUP: {e}").into())
    }
}

/// What a reload reads from and applies to.
pub(super) struct Reloader<'a> {
    pub cli: &'a Cli,
    pub args: &'a ServeArgs,
    pub state: &'a AppState,
    pub certificates: Option<Arc<CertificateFiles>>,
    pub log_filter: Option<LogFilterHandle>,
}

impl Reloader<'_> {
    /// Reloads on every SIGHUP; never returns.
    pub(super) async fn on_each(self, mut hangups: Hangups) -> std::convert::Infallible {
        let mut log = self.state.settings.log.clone();
        loop {
            if hangups.0.recv().await.is_none() {
                // The signal stream cannot end while the runtime runs; never spin.
                std::future::pending::<()>().await;
            }
            self.reload(&mut log);
        }
    }

    fn reload(&self, log: &mut String) {
        let fresh = match settings(self.cli, Some(self.args)) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the settings do not load; nothing was changed");
                return;
            }
        };
        let mut reloaded = Vec::new();
        if fresh.log != *log {
            let applied = match (crate::config::log_filter(&fresh.log), &self.log_filter) {
                (Ok(filter), Some(handle)) => handle.reload(filter).is_ok(),
                _ => false,
            };
            if applied {
                *log = fresh.log.clone();
                reloaded.push("log");
            } else {
                tracing::error!(log = %fresh.log, "SIGHUP: cannot apply the new log filter; the old one stays");
            }
        }
        if let Some(certificates) = &self.certificates {
            match certificates.reload() {
                Ok(()) => reloaded.push("tls certificate and key"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; the current certificate stays"),
            }
        }
        let pending = needs_restart(&self.state.settings, &fresh);
        if pending.is_empty() {
            tracing::info!(reloaded = %reloaded.join(", "), "SIGHUP: settings reloaded");
        } else {
            tracing::warn!(
                reloaded = %reloaded.join(", "),
                needs_restart = %pending.join(", "),
                "SIGHUP: settings reloaded; the changed settings named here need a restart and were left as they are"
            );
        }
    }
}

/// Names of the settings that differ between what runs and what was read, other than
/// those a reload applies. Compared by their shown (redacted) value, so a changed secret
/// whose redaction looks the same is not named.
fn needs_restart(running: &Settings, fresh: &Settings) -> Vec<&'static str> {
    macro_rules! differing {
        ($($field:ident),* $(,)?) => {{
            let mut names = Vec::new();
            $(if format!("{:?}", running.$field) != format!("{:?}", fresh.$field) {
                names.push(stringify!($field));
            })*
            names
        }};
    }
    differing!(
        listen,
        data_dir,
        store,
        shared,
        admin_socket,
        token_ttl_secs,
        clock_window_secs,
        default_audience,
        max_connections,
        max_connections_per_ip,
        header_timeout_ms,
        write_timeout_ms,
        idle_timeout_ms,
        body_timeout_ms,
        replay_cache_capacity,
        auth_rate_per_ip,
        auth_rate_per_key,
        server_key_lifetime_secs,
        server_key_overlap_secs,
        server_key_document_ttl_secs,
        audit_retention_days,
        tls_cert,
        tls_key,
        log_format,
        otp_console_codes,
        proxy_protocol_from,
        drain_secs,
        otp,
        metrics_token,
    )
}
