//! Listeners, connections and shutdown.
//!
//! Thread per core: each worker thread runs its own current-thread tokio runtime, accepts on its
//! own `SO_REUSEPORT` listener bound to the same address, and keeps its own pool of portal
//! connections. Nothing on the request path crosses threads except atomics in `proxy::Shared`.
//!
//! Per connection: a count against `server.max_connections` (over it: a 503 and close), the TLS
//! handshake when `[server.tls]` is set (under the request-head deadline; ALPN picks HTTP/2 or
//! HTTP/1.1; the framing validator reads the decrypted bytes), and a watchdog that closes a connection whose request head does not complete within
//! `server.request_head_timeout` (slowloris) or that sits idle with no request in flight for
//! `server.idle_timeout`. On shutdown every worker stops accepting, asks its connections to
//! finish (HTTP/1.1: close after the current response; HTTP/2: GOAWAY) and waits for them up to
//! `server.shutdown_grace`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin;
use crate::config::Config;
use crate::framing::{FramingError, FramingValidator};
use crate::proxy::{ConnInfo, Proxy, Shared};
use crate::refusal::Refusal;
use crate::telemetry;
use crate::tls::{self, ServerTls};

/// Failure to start the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The waiting room could not start (state file, templates, keys).
    #[error("{0}")]
    Room(#[from] crate::room::RoomError),
    /// A worker thread or runtime could not be started.
    #[error("cannot start worker: {0}")]
    Worker(io::Error),
    /// The client-facing certificate or key cannot be used.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

/// Sockets bound and ready; nothing accepted yet. Binding first lets `port = 0` resolve and
/// lets the caller learn the addresses before serving.
pub struct BoundServer {
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    admin: std::net::TcpListener,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
}

impl BoundServer {
    /// Binds the client listeners (one per worker) and the admin listener.
    pub fn bind(config: Config) -> Result<BoundServer, ServerError> {
        // The recorder first: the waiting room takes metric handles when it is built.
        telemetry::prometheus();
        let config = Arc::new(config);
        let tls = match &config.server.tls {
            Some(t) => Some(ServerTls::load(t, &config.base_dir, config.server.http2)?),
            None => None,
        };
        let workers = config.worker_count();
        let s = &config.server;
        let first = reuseport_listener(s.listen, s.backlog)?;
        let addr = first.local_addr().map_err(|source| ServerError::Bind {
            addr: s.listen,
            source,
        })?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(reuseport_listener(addr, s.backlog)?);
        }
        let admin = std::net::TcpListener::bind(config.admin.listen).map_err(|source| {
            ServerError::Bind {
                addr: config.admin.listen,
                source,
            }
        })?;
        let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
            addr: config.admin.listen,
            source,
        })?;
        Ok(BoundServer {
            shared: Shared::new(config)?,
            listeners,
            admin,
            addr,
            admin_addr,
            tls,
        })
    }

    /// The client-facing address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Starts the worker threads and the admin thread.
    pub fn start(self) -> Result<RunningServer, ServerError> {
        let handle = telemetry::prometheus();
        let (tx, rx) = watch::channel(false);
        let conns = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let rx = rx.clone();
            let conns = conns.clone();
            let tls = self.tls.clone();
            let t = spawn_on_own_runtime(format!("anticamera-w{i}"), move || {
                worker(listener, shared, rx, conns, tls)
            })
            .map_err(ServerError::Worker)?;
            threads.push(t);
        }
        let shared = self.shared.clone();
        let admin = self.admin;
        let (admin_tx, arx) = watch::channel(false);
        let tls = self.tls.clone();
        let admin_thread = spawn_on_own_runtime("anticamera-admin".into(), move || async move {
            if let Some(tls) = tls {
                // The certificate files are checked here, off the workers' threads.
                tokio::spawn(tls.watch(arx.clone()));
            }
            let ctl = tokio::spawn(admin::controller(shared.clone(), arx.clone()));
            tokio::spawn(admin::upkeep(handle, arx.clone()));
            tokio::spawn(admin::limiter_upkeep(shared.clone(), arx.clone()));
            admin::serve(admin, shared, handle, arx).await;
            let _ = ctl.await;
        })
        .map_err(ServerError::Worker)?;
        tracing::info!(
            listen = %self.addr,
            admin = %self.admin_addr,
            tls = self.tls.is_some(),
            "anticamera started"
        );
        Ok(RunningServer {
            shutdown: tx,
            threads,
            admin_stop: admin_tx,
            admin_thread,
            shared: self.shared,
            addr: self.addr,
            admin_addr: self.admin_addr,
        })
    }
}

/// A running server.
pub struct RunningServer {
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    admin_stop: watch::Sender<bool>,
    admin_thread: JoinHandle<()>,
    shared: Arc<Shared>,
    /// The client-facing address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin_addr: SocketAddr,
}

impl RunningServer {
    /// Begins graceful shutdown: stop accepting, let in-flight requests finish.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }

    /// A handle that can trigger shutdown or a reload from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Waits for every worker to finish (after [`RunningServer::shutdown`]), then stops the
    /// admin listener.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin_thread.join();
        if let Some(room) = &self.shared.room {
            match room.save_final() {
                Ok(()) => tracing::info!("waiting-room state saved"),
                Err(e) => tracing::error!(error = %e, "cannot save waiting-room state"),
            }
            // A shared store: give the leader lease up now (another node takes over within a
            // sync rather than when the lease lapses).
            room.leave_fleet();
        }
    }

    /// The clock of every time-dependent decision (tests and rehearsals set it).
    pub fn clock(&self) -> std::sync::Arc<crate::clock::Clock> {
        self.shared.clock.clone()
    }

    /// The waiting room, if gates are configured.
    pub fn room(&self) -> Option<std::sync::Arc<crate::room::Room>> {
        self.shared.room.clone()
    }
}

/// Triggers graceful shutdown.
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Begins graceful shutdown.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.tx.send(true);
    }

    /// Re-reads the config file and applies it (what `SIGHUP` does; see `reload.rs`).
    pub fn reload(&self) -> Result<crate::reload::Reloaded, crate::reload::ReloadError> {
        crate::reload::reload(&self.shared)
    }
}

/// Runs a future to completion on a new named thread with its own current-thread runtime.
pub fn spawn_on_own_runtime<F, Fut>(name: String, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(f()),
                Err(e) => tracing::error!(error = %e, thread = %name, "cannot build a runtime"),
            }
        })
}

fn reuseport_listener(
    addr: SocketAddr,
    backlog: u32,
) -> Result<std::net::TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    #[cfg(unix)]
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// Answers written as raw bytes before hyper parses a request, rendered once from the refusal
/// map.
static TOO_MANY: LazyLock<Bytes> = LazyLock::new(|| Refusal::TooManyConnections.raw_http1());
static BAD_REQUEST: LazyLock<Bytes> = LazyLock::new(|| Refusal::FramingBytes.raw_http1());
static HEAD_TOO_LARGE: LazyLock<Bytes> = LazyLock::new(|| Refusal::HeadTooLarge.raw_http1());

async fn worker(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    conns: Arc<AtomicUsize>,
    tls: Option<Arc<ServerTls>>,
) {
    let listener = match TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let proxy = Arc::new(Proxy::new(shared.clone()));
    let cfg = shared.config.load_full();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(cfg.server.max_header_bytes.0 as usize)
        .max_headers(cfg.server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.server.http2_max_streams)
        .max_header_list_size(cfg.server.max_header_bytes.0 as u32);
    if !cfg.server.http2 {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    let max_conns = cfg.server.max_connections;
    let conn_cfg = Arc::new(ConnConfig {
        builder,
        proxy,
        timeouts: Timeouts {
            head: cfg.server.request_head_timeout.0,
            idle: cfg.server.idle_timeout.0,
        },
        // Twice hyper's limit: an oversized head gets hyper's own 431 first.
        max_head: cfg.server.max_header_bytes.0 as usize * 2,
    });
    let open = metrics::gauge!(telemetry::OPEN_CONNECTIONS);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if conns.fetch_add(1, Ordering::AcqRel) >= max_conns {
            conns.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(telemetry::CONNECTIONS_TOTAL, "result" => "refused_limit")
                .increment(1);
            // Raw bytes: over TLS they end the handshake (the client sees a failed
            // handshake and no connection), which is the same refusal.
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&TOO_MANY).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        }
        metrics::counter!(telemetry::CONNECTIONS_TOTAL, "result" => "accepted").increment(1);
        open.increment(1.0);
        let _ = stream.set_nodelay(true);
        let conns = conns.clone();
        let open = open.clone();
        let watcher = graceful.watcher();
        let conn_cfg = conn_cfg.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let info = ConnInfo {
                        peer,
                        scheme: "http",
                    };
                    conn_cfg.serve(stream, info, watcher).await;
                }
                Some(acceptor) => {
                    // The handshake sits under the request-head deadline: a client that
                    // trickles its ClientHello is a slowloris like one trickling a head.
                    let t = conn_cfg.timeouts.head;
                    match tokio::time::timeout(t, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let info = ConnInfo {
                                peer,
                                scheme: "https",
                            };
                            conn_cfg.serve(stream, info, watcher).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!(tls::HANDSHAKE_FAILURES, "reason" => "error")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "client TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(tls::HANDSHAKE_FAILURES, "reason" => "timeout")
                                .increment(1);
                            metrics::counter!(
                                telemetry::CONNECTIONS_CLOSED_TOTAL,
                                "reason" => "head_timeout"
                            )
                            .increment(1);
                            tracing::debug!(%peer, "client TLS handshake did not finish in time");
                        }
                    }
                }
            }
            conns.fetch_sub(1, Ordering::AcqRel);
            open.decrement(1.0);
        });
    }
    drop(listener);
    let grace = cfg.server.shutdown_grace.0;
    tracing::info!(open = graceful.count(), "worker draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "shutdown grace elapsed with connections still open");
    }
}

/// What every connection of a worker is served with.
struct ConnConfig {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    timeouts: Timeouts,
    max_head: usize,
}

impl ConnConfig {
    /// Serves one connection (plain TCP or decrypted TLS) until it ends or stalls.
    async fn serve<S>(&self, stream: S, info: ConnInfo, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(ActivityIo {
            inner: stream,
            activity: activity.clone(),
            framing: Some(FramingValidator::new(self.max_head)),
            rejected: false,
        });
        let proxy = self.proxy.clone();
        let svc_activity = activity.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let guard = svc_activity.begin_request();
            async move {
                let resp = proxy.handle(req, info).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection(io, svc).into_owned();
        let conn = watcher.watch(conn);
        watchdog(conn, activity, self.timeouts).await;
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    head: Duration,
    idle: Duration,
}

/// Drives a connection and closes it when it stalls: a request head that does not complete in
/// time, or no request and no bytes for the idle timeout. The I/O path only bumps counters; the
/// watchdog reads the clock once per tick.
async fn watchdog<F: std::future::Future>(conn: F, activity: Arc<Activity>, t: Timeouts) {
    tokio::pin!(conn);
    let tick = (t.head.min(t.idle) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut last_io = activity.io.load(Ordering::Relaxed);
    let mut idle_since = Instant::now();
    let mut head_seen: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = tokio::time::sleep(tick) => {
                let now = Instant::now();
                let io = activity.io.load(Ordering::Relaxed);
                let busy = activity.in_flight.load(Ordering::Relaxed) != 0;
                if io != last_io || busy {
                    last_io = io;
                    idle_since = now;
                }
                let head = activity.head_started.load(Ordering::Relaxed);
                let reason = if busy || head == 0 {
                    head_seen = None;
                    (!busy && now - idle_since > t.idle).then_some("idle")
                } else {
                    let started = match head_seen {
                        Some((h, at)) if h == head => at,
                        _ => {
                            head_seen = Some((head, now));
                            now
                        }
                    };
                    (now - started > t.head).then_some("head_timeout")
                };
                if let Some(reason) = reason {
                    metrics::counter!(telemetry::CONNECTIONS_CLOSED_TOTAL, "reason" => reason).increment(1);
                    tracing::debug!(reason, "closing stalled connection");
                    return;
                }
            }
        }
    }
}

/// What the watchdog needs to know about a connection, updated by its I/O and its requests
/// with plain counters (no clock reads on the I/O path).
struct Activity {
    /// Requests being answered on this connection.
    in_flight: AtomicU32,
    /// Bumped on every read or write that moved bytes.
    io: AtomicU64,
    /// Non-zero while a request head is being read (a sequence number per head).
    head_started: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
        }
    }

    fn on_read(&self) {
        let n = self.io.fetch_add(1, Ordering::Relaxed) + 1;
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(n, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.io.fetch_add(1, Ordering::Relaxed);
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.io.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client connection that reports its activity to the watchdog and validates request framing
/// before hyper parses a byte (see `framing.rs`). Bytes of a request whose framing is
/// ambiguous never reach hyper: the client gets a 400 (when no earlier response is pending)
/// and the connection ends. `S` is the TCP stream, or the TLS stream over it: the validator
/// always reads decrypted bytes.
struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
    framing: Option<FramingValidator>,
    rejected: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rejected {
            // End of stream for hyper: the connection closes.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
            let this = &mut *self;
            if let Some(v) = &mut this.framing {
                match v.feed(&buf.filled()[before..]) {
                    Ok(()) => {
                        if v.is_passthrough() {
                            this.framing = None;
                        }
                    }
                    Err(e) => {
                        buf.set_filled(before);
                        this.rejected = true;
                        metrics::counter!(telemetry::FRAMING_REJECTED, "reason" => e.reason())
                            .increment(1);
                        tracing::debug!(error = %e, "request framing refused");
                        if this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                            let answer = if e == FramingError::HeadTooLarge {
                                &HEAD_TOO_LARGE
                            } else {
                                &BAD_REQUEST
                            };
                            // Best effort, never waiting: into the socket (or the TLS
                            // session's buffer, flushed here and at shutdown).
                            let mut inner = Pin::new(&mut this.inner);
                            let _ = inner.as_mut().poll_write(cx, answer);
                            let _ = inner.poll_flush(cx);
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
