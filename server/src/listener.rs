//! The accept loop: a connection limit (semaphore, as in mini-redis) and a smaller one
//! per client, header and TLS handshake timeouts, write and idle timeouts on every
//! connection ([`crate::deadline_io`]), and graceful shutdown that lets in-flight
//! requests finish. The caller binds the listener and chooses the shutdown signal, so
//! tests use port 0. With `proxy_protocol_from` set, connections from those peers start
//! with a PROXY v2 header naming the client ([`crate::proxy_protocol`]), and every limit
//! and log line below counts that client instead of the proxy.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::deadline_io::{DeadlineIo, Deadlines};
use crate::http::{route, ConnInfo};
use crate::proxy_protocol::{self, ProxiedSource};
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

/// What every connection task needs from the accept loop.
struct Shared {
    state: AppState,
    tls: Option<TlsAcceptor>,
    per_client: Arc<PerClient>,
    header_timeout: Duration,
    deadlines: Deadlines,
    /// The second a PROXY-header problem was last logged at warn level: one line a
    /// second at most, so a flood of bad headers cannot flood the log.
    proxy_warned: AtomicU64,
}

/// Serves HTTP (or HTTPS when `tls` is set) on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, state: AppState, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(state.settings.max_connections));
    let graceful = GracefulShutdown::new();
    let proxies = state.settings.proxy_protocol_from.clone();
    let shared = Arc::new(Shared {
        per_client: Arc::new(PerClient::new(state.settings.max_connections_per_ip)),
        header_timeout: Duration::from_millis(state.settings.header_timeout_ms),
        deadlines: Deadlines {
            write: Duration::from_millis(state.settings.write_timeout_ms),
            idle: Duration::from_millis(state.settings.idle_timeout_ms),
        },
        state,
        tls,
        proxy_warned: AtomicU64::new(0),
    });
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
        let trusted = proxies.trusts(peer.ip());
        // A trusted proxy carries many clients: its connections are counted per
        // client once its header names them (in `serve_connection`).
        let early_slot = if trusted {
            None
        } else {
            let Some(slot) = shared.per_client.open(peer.ip()) else {
                // Closed before any TLS or HTTP work: this client holds its share already.
                shared.state.metrics.connections_refused_per_ip.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            };
            Some(slot)
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let opening = match (trusted, proxies.enabled()) {
            (true, _) => Opening::ProxyHeader,
            (false, true) => Opening::Check,
            (false, false) => Opening::Plain,
        };
        let task = ConnTask { shared: Arc::clone(&shared), permit, early_slot, opening, watcher: graceful.watcher() };
        tokio::spawn(task.serve(stream, peer));
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {}s; closing", DRAIN_TIMEOUT.as_secs());
    }
}

/// How a connection's first bytes are treated.
#[derive(Debug, Clone, Copy)]
enum Opening {
    /// From a trusted proxy: a PROXY v2 header must come first.
    ProxyHeader,
    /// PROXY headers are in use but this peer is not trusted: refuse one if it sends it.
    Check,
    /// PROXY headers are not in use: serve the bytes as they come.
    Plain,
}

/// One accepted connection, before its client is known.
struct ConnTask {
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    early_slot: Option<ClientSlot>,
    opening: Opening,
    /// Registered at accept: shutdown waits for this connection from its first byte.
    watcher: hyper_util::server::graceful::Watcher,
}

impl ConnTask {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        let sh = &self.shared;
        let state = &sh.state;
        let client = match self.opening {
            Opening::Plain => peer.ip(),
            Opening::ProxyHeader => match proxy_protocol::read_header(&mut stream, sh.header_timeout).await {
                Ok(ProxiedSource::Client(addr)) => addr.ip(),
                Ok(ProxiedSource::Local) => peer.ip(),
                Err(e) => {
                    state.metrics.proxy_headers_invalid.fetch_add(1, Ordering::Relaxed);
                    if sh.warn_now() {
                        tracing::warn!(%peer, error = %e, "closed a connection from a trusted proxy: no valid PROXY v2 header (is send-proxy-v2 set for this server?)");
                    }
                    return;
                }
            },
            Opening::Check => match sniff(&stream, sh.header_timeout).await {
                Some(proxy_protocol::Opening::ProxyHeader) => {
                    state.metrics.proxy_headers_refused.fetch_add(1, Ordering::Relaxed);
                    if sh.warn_now() {
                        tracing::warn!(%peer, "refused a PROXY header from an address not in proxy_protocol_from");
                    }
                    return;
                }
                Some(_) => peer.ip(),
                // Nothing (or half a signature) within the header timeout: what
                // hyper's own header timeout would have done.
                None => return,
            },
        };
        let client_slot = match self.early_slot {
            Some(slot) => slot,
            None => {
                let Some(slot) = sh.per_client.open(client) else {
                    state.metrics.connections_refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                slot
            }
        };
        let guard = ConnGuard::new(state.clone(), self.permit, client_slot);
        let conn_state = state.clone();
        let info = ConnInfo { peer: client, tls: sh.tls.is_some() };
        let service = service_fn(move |req| route(conn_state.clone(), req, info));
        let mut builder = http1::Builder::new();
        // `writev(true)` picks hyper's queued write strategy, whose buffer takes the
        // next answer only once the previous one is on its way: with DeadlineIo
        // refusing reads while an answer is stalled, a client that pipelines and
        // never reads gets one answer buffered, not thousands.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(sh.header_timeout)
            .keep_alive(true)
            .writev(true)
            .max_buf_size(MAX_BUF);
        let result = match &sh.tls {
            None => {
                let io = TokioIo::new(DeadlineIo::new(stream, sh.deadlines));
                self.watcher.watch(builder.serve_connection(io, service)).await
            }
            Some(acceptor) => {
                let tls_stream = match tokio::time::timeout(sh.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                // Over TLS, so the timers see whether hyper's answers have left
                // rustls's buffer too, not just whether TLS records were written.
                let io = TokioIo::new(DeadlineIo::new(tls_stream, sh.deadlines));
                self.watcher.watch(builder.serve_connection(io, service)).await
            }
        };
        guard.ended(result);
    }
}

impl Shared {
    /// True at most once a second: whether this PROXY-header problem gets a warn line.
    fn warn_now(&self) -> bool {
        let now = self.state.now();
        self.proxy_warned.swap(now, Ordering::Relaxed) != now
    }
}

/// Peeks (without consuming) at the first bytes of an untrusted peer's connection
/// until they show whether it starts with a PROXY header; `None` when they do not
/// arrive within `timeout`.
async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<proxy_protocol::Opening> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut start = [0u8; proxy_protocol::SIGNATURE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut start)).await {
            Ok(Ok(n)) => n,
            // A reset or a close: hyper will see it too.
            Ok(Err(_)) => return Some(proxy_protocol::Opening::Other),
            Err(_) => return None,
        };
        if n == 0 {
            return Some(proxy_protocol::Opening::Other);
        }
        match proxy_protocol::classify_opening(&start[..n]) {
            // Part of a signature so far: peek returns at once while those bytes wait,
            // so wait a little for the rest.
            proxy_protocol::Opening::Undecided => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            decided => return Some(decided),
        }
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

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (a supervisor's stop, a rolling restart): drain first.
    Term,
    /// SIGINT (Ctrl-C), or the only signal on other platforms: stop at once.
    Int,
}

/// The SIGTERM and SIGINT handlers. They are installed when this is made, not when it
/// is first polled: a supervisor may send SIGTERM as soon as the server announces
/// itself, and the default action would kill it mid-request.
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => StopSignal::Term,
                () = recv(&mut self.int) => StopSignal::Int,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Int
        }
    }

    /// Resolves when the listener should close. SIGINT: at once. SIGTERM: after
    /// `drain`, during which `/healthz` answers 503 `draining` (so a load balancer
    /// takes this replica out) while every request is still served; a second signal
    /// ends the drain early. A zero `drain` closes at once, as before drains existed.
    pub async fn drain_then_close(mut self, state: AppState, drain: Duration) {
        if self.next().await == StopSignal::Int || drain.is_zero() {
            return;
        }
        state.metrics.draining.store(1, Ordering::Relaxed);
        tracing::info!(
            drain_secs = drain.as_secs(),
            "SIGTERM: draining; /healthz answers 503 draining, requests are still served until the listener closes (a second SIGTERM or SIGINT closes it now)"
        );
        tokio::select! {
            () = tokio::time::sleep(drain) => {}
            signal = self.next() => tracing::info!(?signal, "second signal: drain ended early"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM (handlers installed when this is called).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut signals = StopSignals::install();
    async move {
        signals.next().await;
    }
}
