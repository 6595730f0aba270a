//! The portal side: a pooled HTTP/1.1 client per worker (plain or TLS, see [`crate::tls`]),
//! round-robin over the portal's addresses, passive health, and the two upstream deadlines
//! (connect, TLS handshake included → 502; response → 504).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{is_body_too_large, is_client_body_error, LimitedBody};
use crate::config::{Config, UpstreamTarget};
use crate::telemetry;
use crate::tls::{self, PortalConnector, PortalTls};

/// Why a request to the portal failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout, or a TLS handshake
    /// that failed: the portal's certificate did not verify).
    #[error("cannot connect to the portal: {0}")]
    Connect(String),
    /// The portal did not send a response head within `upstream.response_timeout`.
    #[error("the portal did not answer within {0:?}")]
    Timeout(Duration),
    /// The client's body grew past `server.max_body_bytes` while streaming.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's request body was malformed (bad chunking) or cut short.
    #[error("the client's request body is malformed: {0}")]
    ClientBody(String),
    /// The exchange broke after connecting (reset, bad framing, closed early).
    #[error("the portal broke the exchange: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream_connect",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::BodyTooLarge => "body_too_large",
            UpstreamError::Protocol(_) => "upstream_protocol",
            UpstreamError::ClientBody(_) => "client_body",
        }
    }
}

/// One portal address and its passive health, shared by all workers.
#[derive(Debug)]
pub struct Target {
    /// `host:port`.
    pub authority: Authority,
    scheme: Scheme,
    /// Label for metrics.
    pub label: String,
    consecutive_failures: AtomicU32,
    /// Skip this target until this instant (ms since `Targets::epoch`); 0 = healthy.
    down_until_ms: AtomicU64,
}

/// The portal's addresses with round-robin and passive health, shared by all workers.
#[derive(Debug)]
pub struct Targets {
    targets: Vec<Target>,
    next: AtomicUsize,
    epoch: Instant,
    unhealthy_after: u32,
    unhealthy_for: Duration,
    /// TLS for `https://` addresses, shared by every worker's connector.
    tls: PortalTls,
}

impl Targets {
    /// Builds the target list and the portal TLS settings from the config (already
    /// validated; the TLS files and the system's trust store are read here).
    pub fn new(cfg: &Config) -> Result<Arc<Self>, tls::TlsError> {
        let tls = PortalTls::from_config(cfg)?;
        let targets = cfg
            .upstream_targets()
            .into_iter()
            .map(|UpstreamTarget { authority, scheme }| {
                let label = authority.to_string();
                // Every address starts in rotation: say so, not only on its first change.
                metrics::gauge!(telemetry::UPSTREAM_HEALTHY, "upstream" => label.clone()).set(1.0);
                Target {
                    label,
                    authority,
                    scheme,
                    consecutive_failures: AtomicU32::new(0),
                    down_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        Ok(Arc::new(Targets {
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            unhealthy_after: cfg.upstream.unhealthy_after,
            unhealthy_for: cfg.upstream.unhealthy_for.0,
            tls,
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Picks the next target in rotation, skipping those marked down; if all are down, the one
    /// due back soonest (the portal may have recovered; one request probes it).
    pub fn pick(&self) -> Option<&Target> {
        let n = self.targets.len();
        if n == 1 {
            return self.targets.first();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        for i in 0..n {
            let t = &self.targets[(start + i) % n];
            if t.down_until_ms.load(Ordering::Relaxed) <= now {
                return Some(t);
            }
        }
        self.targets
            .iter()
            .min_by_key(|t| t.down_until_ms.load(Ordering::Relaxed))
    }

    fn record(&self, t: &Target, ok: bool) {
        if ok {
            if t.consecutive_failures.load(Ordering::Relaxed) != 0 {
                t.consecutive_failures.store(0, Ordering::Relaxed);
                t.down_until_ms.store(0, Ordering::Relaxed);
                metrics::gauge!(telemetry::UPSTREAM_HEALTHY, "upstream" => t.label.clone())
                    .set(1.0);
            }
            return;
        }
        let f = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f >= self.unhealthy_after {
            let until = self.now_ms() + self.unhealthy_for.as_millis() as u64;
            t.down_until_ms.store(until, Ordering::Relaxed);
            metrics::gauge!(telemetry::UPSTREAM_HEALTHY, "upstream" => t.label.clone()).set(0.0);
            tracing::warn!(upstream = %t.label, failures = f, "portal address marked down");
        }
    }

    /// Whether at least one target is in rotation (for `/readyz`).
    pub fn any_healthy(&self) -> bool {
        let now = self.now_ms();
        self.targets
            .iter()
            .any(|t| t.down_until_ms.load(Ordering::Relaxed) <= now)
    }
}

/// A worker's connection pool to the portal.
#[derive(Clone)]
pub struct Upstream {
    client: Client<PortalConnector, LimitedBody>,
    targets: Arc<Targets>,
    response_timeout: Duration,
    in_flight: metrics::Gauge,
    duration: metrics::Histogram,
}

impl Upstream {
    /// Builds a pool for one worker.
    pub fn new(cfg: &Config, targets: Arc<Targets>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.upstream.connect_timeout.0));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.upstream.pool_idle_timeout.0)
            .pool_max_idle_per_host(cfg.upstream.pool_max_idle)
            .set_host(false)
            .build(tls::portal_connector(connector, &targets.tls));
        Upstream {
            client,
            targets,
            response_timeout: cfg.upstream.response_timeout.0,
            in_flight: metrics::gauge!(telemetry::UPSTREAM_IN_FLIGHT),
            duration: metrics::histogram!(telemetry::UPSTREAM_DURATION),
        }
    }

    /// Sends a request (its URI holding only path and query) to the next portal address and
    /// waits for the response head. The response body streams afterwards.
    ///
    /// `keep` (the portal slot) is held for as long as the portal works on the request: it is
    /// handed back with the answer, or, if this future is dropped first (the client went
    /// away), held by a task that lets the exchange run to its end or to the response deadline.
    /// The portal never sees more requests than the guard's limit because a client left.
    pub async fn send<K: Send + 'static>(
        &self,
        req: Request<LimitedBody>,
        mut keep: Option<K>,
    ) -> (Result<Response<Incoming>, UpstreamError>, Option<K>) {
        let result = self.exchange(req, &mut keep).await;
        (result, keep)
    }

    async fn exchange<K: Send + 'static>(
        &self,
        mut req: Request<LimitedBody>,
        keep: &mut Option<K>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = self
            .targets
            .pick()
            .ok_or_else(|| UpstreamError::Connect("no upstream configured".into()))?;
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(target.scheme.clone());
        parts.authority = Some(target.authority.clone());
        parts.path_and_query = Some(pq);
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| UpstreamError::Protocol(format!("cannot build upstream URI: {e}")))?;
        // The portal speaks HTTP/1.1 to us whatever the client spoke.
        *req.version_mut() = http::Version::HTTP_11;

        // One clock read: the exchange's start, its deadline and its duration.
        let started = tokio::time::Instant::now();
        let deadline = started + self.response_timeout;
        self.in_flight.increment(1.0);
        let mut exchange = Exchange {
            fut: Some(self.client.request(req)),
            keep: keep.take(),
            deadline,
        };
        let result = match exchange.fut.as_mut() {
            Some(fut) => Some(tokio::time::timeout_at(deadline, fut).await),
            None => None,
        };
        // Over (answered, failed or timed out): nothing left to finish.
        exchange.fut = None;
        *keep = exchange.keep.take();
        self.in_flight.decrement(1.0);
        let Some(result) = result else {
            // Cannot happen: the exchange was set just above.
            return Err(UpstreamError::Protocol(
                "the exchange was over before it began".into(),
            ));
        };
        self.duration.record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(resp)) => {
                self.targets.record(target, true);
                Ok(resp)
            }
            Ok(Err(e)) => {
                if is_body_too_large(&e) {
                    return Err(UpstreamError::BodyTooLarge);
                }
                if is_client_body_error(&e) {
                    return Err(UpstreamError::ClientBody(error_chain(&e)));
                }
                let why = error_chain(&e);
                // A refused handshake, or (TLS 1.3) a client certificate the portal refuses
                // after it: either way the log and the metric say why.
                if let Some(reason) = tls::failure_reason(&e) {
                    metrics::counter!(tls::UPSTREAM_TLS_ERRORS,
                        "upstream" => target.label.clone(), "reason" => reason)
                    .increment(1);
                    tracing::warn!(
                        upstream = %target.label,
                        reason,
                        error = %why,
                        "TLS with the portal failed; answering 502"
                    );
                }
                if e.is_connect() {
                    self.targets.record(target, false);
                    return Err(UpstreamError::Connect(why));
                }
                Err(UpstreamError::Protocol(why))
            }
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// An exchange with the portal and what must live as long as it (the portal slot). Dropped
/// before the exchange is over (the client went away and the request's task was cancelled),
/// it hands both to a task that lets the exchange finish, or the response deadline pass, and
/// only then lets go of the slot.
struct Exchange<K: Send + 'static> {
    fut: Option<hyper_util::client::legacy::ResponseFuture>,
    keep: Option<K>,
    deadline: tokio::time::Instant,
}

impl<K: Send + 'static> Drop for Exchange<K> {
    fn drop(&mut self) {
        let (Some(fut), Some(keep)) = (self.fut.take(), self.keep.take()) else {
            return;
        };
        let deadline = self.deadline;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                metrics::counter!(telemetry::UPSTREAM_ABANDONED).increment(1);
                rt.spawn(async move {
                    let _ = tokio::time::timeout_at(deadline, fut).await;
                    drop(keep);
                });
            }
            // No runtime (shutting down): nothing can wait; the slot goes with it.
            Err(_) => drop((fut, keep)),
        }
    }
}
