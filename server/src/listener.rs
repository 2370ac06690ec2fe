//! The accept loop: a connection limit (semaphore, as in mini-redis), header and TLS
//! handshake timeouts, and graceful shutdown that lets in-flight requests finish.
//! The caller binds the listener and chooses the shutdown signal, so tests use port 0.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::http::{route, ConnInfo};
use crate::shared::SharedState;
use crate::state::AppState;

/// How long in-flight connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP (or HTTPS when `tls` is set) on `listener` until `shutdown` resolves.
pub async fn run<S: SharedState>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState<S>,
    shutdown: impl Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(state.settings.max_connections));
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(state.settings.header_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting leaves excess clients in the kernel
        // backlog instead of holding sockets we cannot serve.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_state = state.clone();
        let info = ConnInfo { peer: peer.ip(), tls: tls.is_some() };
        let service = service_fn(move |req| route(conn_state.clone(), req, info));
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        let metrics_state = ConnGuard::new(state.clone(), permit);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _guard = metrics_state;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _guard = metrics_state;
                    let tls_stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {}s; closing", DRAIN_TIMEOUT.as_secs());
    }
}

/// Holds a connection slot, and counts the connection as open, while it lives.
struct ConnGuard<S: SharedState> {
    state: AppState<S>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: SharedState> ConnGuard<S> {
    fn new(state: AppState<S>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        let open = state.metrics.connections_open.fetch_add(1, Ordering::Relaxed) + 1;
        state.metrics.connections_peak.fetch_max(open, Ordering::Relaxed);
        Self { state, _permit: permit }
    }
}

impl<S: SharedState> Drop for ConnGuard<S> {
    fn drop(&mut self) {
        self.state.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a supervisor may send SIGTERM as soon as the
/// server announces itself, and the default action would kill it mid-request.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
