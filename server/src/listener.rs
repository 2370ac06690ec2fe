//! The accept loop: a connection limit (semaphore, as in mini-redis) and a smaller one
//! per client, header and TLS handshake timeouts, write and idle timeouts on every
//! connection ([`crate::deadline_io`]), and graceful shutdown that lets in-flight
//! requests finish. The caller binds the listener and chooses the shutdown signal, so
//! tests use port 0.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::deadline_io::{DeadlineIo, Deadlines};
use crate::http::{route, ConnInfo};
use crate::shared::client_key;
use crate::state::AppState;

/// How long in-flight connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The kernel send buffer of a connection (Linux doubles it for bookkeeping). With
/// autotuning it grows to `tcp_wmem`'s maximum (often 4 MiB): room for ~19,000
/// pipelined answers that a client which never reads would make us compute. Our
/// answers are small, so this costs a normal client nothing.
const SEND_BUFFER: usize = 64 * 1024;

/// hyper's read and write buffer limit per connection (its default is ~400 KiB).
/// Requests here are at most 16 KiB of JSON plus headers, and answers are small, so
/// 64 KiB bounds what a pipelining client makes us hold at 64 MiB for 1,024
/// connections instead of 400 MiB.
const MAX_BUF: usize = 64 * 1024;

/// Serves HTTP (or HTTPS when `tls` is set) on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, state: AppState, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(state.settings.max_connections));
    let per_client = Arc::new(PerClient::new(state.settings.max_connections_per_ip));
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(state.settings.header_timeout_ms);
    let deadlines = Deadlines {
        write: Duration::from_millis(state.settings.write_timeout_ms),
        idle: Duration::from_millis(state.settings.idle_timeout_ms),
    };
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
        let Some(client_slot) = per_client.open(peer.ip()) else {
            // Closed before any TLS or HTTP work: this client holds its share already.
            state.metrics.connections_refused_per_ip.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let conn_state = state.clone();
        let info = ConnInfo { peer: peer.ip(), tls: tls.is_some() };
        let service = service_fn(move |req| route(conn_state.clone(), req, info));
        let mut builder = http1::Builder::new();
        // `writev(true)` picks hyper's queued write strategy, whose buffer takes the
        // next answer only once the previous one is on its way: with DeadlineIo
        // refusing reads while an answer is stalled, a client that pipelines and
        // never reads gets one answer buffered, not thousands.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .writev(true)
            .max_buf_size(MAX_BUF);
        let guard = ConnGuard::new(state.clone(), permit, client_slot);
        match &tls {
            None => {
                let io = TokioIo::new(DeadlineIo::new(stream, deadlines));
                let conn = graceful.watch(builder.serve_connection(io, service));
                tokio::spawn(async move {
                    let result = conn.await;
                    guard.ended(result);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    // Over TLS, so the timers see whether hyper's answers have left
                    // rustls's buffer too, not just whether TLS records were written.
                    let io = TokioIo::new(DeadlineIo::new(tls_stream, deadlines));
                    let result = watcher.watch(builder.serve_connection(io, service)).await;
                    guard.ended(result);
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

/// Holds a connection slot and its client's slot, and counts the connection as open,
/// while it lives.
struct ConnGuard {
    state: AppState,
    // Fields drop in order: the client's slot must be free before the global permit
    // lets the accept loop take the next connection, which may be the same client's.
    _client: ClientSlot,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnGuard {
    fn new(state: AppState, permit: tokio::sync::OwnedSemaphorePermit, client: ClientSlot) -> Self {
        let open = state.metrics.connections_open.fetch_add(1, Ordering::Relaxed) + 1;
        state.metrics.connections_peak.fetch_max(open, Ordering::Relaxed);
        Self { state, _client: client, _permit: permit }
    }

    /// Records how the connection ended, then releases its slots.
    fn ended(self, result: Result<(), hyper::Error>) {
        let Err(e) = result else { return };
        if timed_out(&e) {
            self.state.metrics.connections_timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "connection closed: write or idle timeout");
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// True when `e` comes from a [`DeadlineIo`] timer.
fn timed_out(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = err.source();
    }
    false
}

/// Open connections per client ([`client_key`]: an IPv4 address, an IPv6 /64), so
/// that one client cannot take the whole connection limit. The map holds only
/// clients with a connection open, so it is bounded by `max_connections`.
struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        Self { limit, open: Mutex::new(HashMap::new()) }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` open.
    fn open(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        // A std mutex: held for one map operation, never across an await.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot { table: Arc::clone(self), key })
    }
}

/// One open connection of a client; dropping it frees the slot.
struct ClientSlot {
    table: Arc<PerClient>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Drop for ConnGuard {
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
