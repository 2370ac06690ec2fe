//! `onetrip serve`: the composition root. Opens the configured store, builds the
//! state, binds the listener and the admin socket, and runs the background tasks
//! (maintenance, key lifecycle, retention, the change feed) until a signal stops it.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::args::{Cli, ServeArgs};
use super::store_access::{open_backend, settings};
use super::CliError;
use crate::admin;
use crate::config::StoreSetting;
use crate::shared::MemoryShared;
use crate::shared_redis::{RedisShared, SharedSetting};
use crate::state::{AppState, SystemClock};
use crate::tls::{CertificateFiles, TlsSetupError};

pub(super) async fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let settings = settings(cli, Some(args))?;
    if args.check {
        // Settings only: the store and the TLS files are the start's own checks, and a
        // check run beside a live server must not contend for its store.
        println!("settings OK (store: {})", settings.store.shown());
        return Ok(());
    }
    let log_filter = init_tracing(&settings.log, settings.log_format);
    // Secrets are redacted in the settings' Debug form (SecretSetting, StoreSetting).
    tracing::info!(settings = ?settings, "effective settings");
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
    let certificates = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(CertificateFiles::load(cert, key)?),
        _ => None,
    };
    let tls = certificates.as_ref().map(|c| c.acceptor()).transpose()?;
    let listener =
        TcpListener::bind(settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_socket = settings.admin_socket.clone();
    let data_dir = settings.data_dir.clone();
    let store_shown = matches!(settings.store, StoreSetting::Postgres(_)).then(|| settings.store.shown());
    // The in-memory backend needs the maintenance task's sweep; Redis expires by itself.
    let (shared, memory): (crate::shared::Shared, Option<Arc<MemoryShared>>) = match &settings.shared {
        SharedSetting::Memory => {
            let m = Arc::new(MemoryShared::with_window(settings.clock_window_secs, settings.replay_cache_capacity));
            (m.clone(), Some(m))
        }
        SharedSetting::Redis(r) => {
            let redis = RedisShared::connect(r.clone(), settings.clock_window_secs).await.map_err(|e| e.to_string())?;
            println!("shared state: {}", r.shown());
            (Arc::new(redis), None)
        }
    };
    let state =
        AppState::from_parts(settings, store, shared, Arc::new(SystemClock)).await.map_err(|e| e.to_string())?;
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
    let signals = crate::listener::StopSignals::install();
    let hangups = super::reload::Hangups::listen()?;
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
    let maintenance = tokio::spawn(maintenance(state.clone(), memory));
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
        tokio::spawn(crate::low_priority::run("onetrip-warm", move || {
            let started = std::time::Instant::now();
            let n = st.warm_keys();
            st.keys.set_warming(false);
            tracing::info!(computed = n, elapsed_ms = started.elapsed().as_millis() as u64, "key cache warmed");
        }));
    }
    let shutdown = signals.drain_then_close(state.clone(), std::time::Duration::from_secs(state.settings.drain_secs));
    let reload = super::reload::Reloader { cli, args, state: &state, certificates, log_filter };
    tokio::select! {
        () = crate::listener::run(listener, tls, state.clone(), shutdown) => {}
        never = reload.on_each(hangups) => match never {},
    }
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
async fn maintenance(state: AppState, memory: Option<Arc<MemoryShared>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut refused_logged = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = state.now();
        if let Some(memory) = &memory {
            memory.sweep(now);
        }
        state.shared.probe().await;
        if state.shared.take_recovery() {
            restore_shared(&state).await;
        }
        state.probe_store(std::time::Duration::from_secs(2)).await;
        if ticks % 10 == 0 {
            if let Err(e) = state.flush_last_used().await {
                tracing::warn!(error = %e, "cannot record key last-use times");
            }
        }
        // Expired verifications are kept an hour (status queries), then deleted.
        if ticks % 60 == 0 {
            // Refusals are counted per request in /metrics; the log gets one line a
            // minute, so a flood is visible there without a line per refused request.
            let refused = state.metrics.refusals_total();
            if refused > refused_logged {
                tracing::warn!(
                    refused = refused - refused_logged,
                    "requests refused in the last minute (by route and reason: onetrip_refusals_total)"
                );
            }
            refused_logged = refused;
            if let Err(e) = state.store.sweep_verifications(now, 3600).await {
                tracing::warn!(error = %e, "cannot delete expired verifications");
            }
        }
    }
}

impl From<TlsSetupError> for CliError {
    fn from(e: TlsSetupError) -> Self {
        CliError { code: super::EXIT_FAILURE, message: e.to_string() }
    }
}

/// Logs to stderr through the `log` setting's filter (checked when the settings load),
/// as text (in colour only when stderr is a terminal) or JSON lines. Returns the
/// handle SIGHUP reloads the filter through.
fn init_tracing(filter: &str, format: crate::config::LogFormat) -> Option<super::reload::LogFilterHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = crate::config::log_filter(filter)
        .unwrap_or_else(|_| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = format == crate::config::LogFormat::Json;
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal())
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
    });
    tracing_subscriber::registry().with(filter).with(text_layer).with(json_layer).try_init().ok().map(|()| handle)
}

/// After a shared-state outage (Redis may have lost writes): put back what the
/// store knows, as at a start. A failure is retried at the next recovery; until then
/// requests stamped before the recovery are refused anyway.
async fn restore_shared(state: &AppState) {
    match crate::replay_guard::restore(state).await {
        Ok(n) => tracing::info!(restored = n, "replay ids stamped ahead reloaded into the shared state"),
        Err(e) => tracing::error!(error = %e, "cannot reload replay ids into the shared state"),
    }
    match crate::revocation::restore(state).await {
        Ok(n) => tracing::info!(revoked = n, "token revocations reloaded into the shared state"),
        Err(e) => tracing::error!(error = %e, "cannot reload token revocations into the shared state"),
    }
}
