//! The request path, top to bottom.
//!
//! `Proxy::pipeline` is the life of a request as a short list of named phases (the shape of
//! Pingora's `ProxyHttp`). Each phase is a method that reads the request head and the
//! per-request [`RequestCtx`], and either continues or returns a [`Refusal`]; the one refusal
//! map ([`Refusal::into_response`]) turns every refusal into its answer.
//!
//! ```text
//! client ─▶ server: connection limits, deadlines, framing bytes      src/server.rs, framing.rs
//!  1 request_filter     framing on the parsed head, client address,  phases.rs, forwarded.rs,
//!                       session, normalized path                      isolation.rs, route.rs
//!  2 own_endpoint       /.anticamera/status (long poll), /lang        own.rs
//!  3 route              gate and cohort                               room/, cohort.rs
//!  4 rate_limit         session, address, cohort, gate buckets        ratelimit.rs
//!  5 waiting_room       hours, pass, ticket, queue or closed page;    room/, waitroom/,
//!                       the front of the line held until its turn    hold.rs
//!  6 upstream_request_filter  own cookies and identity headers out,   phases.rs
//!                       declared body size, Host
//!  7 cache_lookup       anonymous public pages (RFC 9111 strict)      forward.rs, microcache.rs
//!  8 forward            hop-by-hop out, X-Forwarded-*, breaker and    forward.rs, protect.rs,
//!                       guard, pooled client with deadlines           upstream.rs
//!  9 response_filter    leak guard, release header, private marking,  forward.rs
//!                       micro-cache store
//! ```
//! Every answer is counted by route, disposition and status (`metrics.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::config::Config;
use crate::forwarded::Forwarders;
use crate::guard::Guard;
use crate::isolation::Isolation;
use crate::microcache::Microcache;
use crate::pages;
use crate::ratelimit::RateLimiter;
use crate::refusal::Refusal;
use crate::room::{Room, RoomError};
use crate::upstream::{Targets, Upstream};

mod context;
mod forward;
mod hold;
mod hygiene;
mod metrics;
mod own;
mod phases;

pub use context::{Disposition, RequestCtx};
pub use metrics::{HELD, LIMITED, SLOT_WAIT};

/// State shared by every worker: the validated config and what is derived from it.
pub struct Shared {
    /// The configuration in force (a reload replaces it; parts that need a restart keep the
    /// values this process started with).
    pub config: ArcSwap<Config>,
    /// Trusted forwarders.
    pub forwarders: Forwarders,
    /// Portal addresses and their health.
    pub targets: Arc<Targets>,
    /// Set when shutdown begins; `/readyz` turns 503.
    pub draining: AtomicBool,
    /// Requests held open at the front of a line now (`waiting_room.hold_front`).
    pub held: AtomicUsize,
    /// The clock of every time-dependent decision (settable in tests and rehearsals).
    pub clock: Arc<Clock>,
    /// The waiting room (gates, cohorts, hours); `None` when no gate is configured.
    pub room: Option<Arc<Room>>,
    /// Page templates (reloadable).
    pub templates: ArcSwap<pages::Templates>,
    /// Admin API bearer token (reloadable).
    pub admin_token: ArcSwapOption<String>,
    /// Token buckets, if configured (reloadable; a changed `[rate_limits]` starts full buckets).
    pub limiter: ArcSwapOption<RateLimiter>,
    /// Portal concurrency limit, if configured.
    pub guard: Option<Guard>,
    /// Circuit breaker (with the guard).
    pub breaker: Option<Breaker>,
    /// Session isolation.
    pub isolation: Isolation,
    /// Micro-cache for public pages, if enabled.
    pub microcache: Option<Microcache>,
}

impl Shared {
    /// Derives the shared state from a validated config (restoring saved queue state).
    pub fn new(config: Arc<Config>) -> Result<Arc<Self>, RoomError> {
        let clock = Arc::new(Clock::system());
        let room = if config.gates.is_empty() {
            None
        } else {
            Some(Arc::new(Room::new(&config, clock.clone())?))
        };
        let templates = templates_of(&config)?;
        let admin_token = config
            .admin_token()
            .map_err(|(k, r)| RoomError::Config(k, r))?;
        let guard_cfg = config.upstream_guard.clone();
        let guard = guard_cfg.as_ref().map(Guard::new);
        // Several nodes in front of one portal: each uses only its part of the capacity.
        if let (Some(g), Some(cfg), Some(fleet)) =
            (&guard, &guard_cfg, room.as_ref().and_then(|r| r.fleet()))
        {
            fleet.share_portal(g.clone(), cfg.max_in_flight);
        }
        Ok(Arc::new(Shared {
            limiter: ArcSwapOption::from_pointee(config.rate_limits.as_ref().map(RateLimiter::new)),
            guard,
            breaker: guard_cfg
                .as_ref()
                .map(|g| Breaker::new(&g.breaker, Instant::now())),
            isolation: {
                let iso = Isolation::new(&config.isolation);
                // With a shared store a session's binding is the fleet's.
                if let Some(fleet) = room.as_ref().and_then(|r| r.fleet()) {
                    let f2 = fleet.clone();
                    iso.set_fleet_binder(
                        Box::new(move |session, user, idle_ms| {
                            fleet.bind_session(session, user, idle_ms)
                        }),
                        Box::new(move |session, user, idle_ms| {
                            f2.queue_binding(session, user, idle_ms)
                        }),
                    );
                }
                iso
            },
            microcache: config
                .microcache
                .enabled
                .then(|| Microcache::new(&config.microcache)),
            forwarders: Forwarders::new(config.forwarding.trusted_forwarders.clone()),
            targets: Targets::new(&config).map_err(|e| RoomError::Config(e.key, e.reason))?,
            draining: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            clock,
            room,
            templates: ArcSwap::from_pointee(templates),
            admin_token: ArcSwapOption::from_pointee(admin_token),
            config: ArcSwap::new(config),
        }))
    }
}

/// The page templates a config names (or the built-in ones).
pub(crate) fn templates_of(config: &Config) -> Result<pages::Templates, RoomError> {
    match &config.waiting_room.templates {
        Some(dir) => pages::Templates::load(&config.base_dir.join(dir))
            .map_err(|e| RoomError::Config("waiting_room.templates".into(), e.to_string())),
        None => Ok(pages::Templates::builtin()),
    }
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// How the client reached us: `http` (or `https` once TLS terminates here).
    pub scheme: &'static str,
}

/// One worker's proxy: shared state plus this worker's upstream pool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Upstream,
    max_body: u64,
    metrics: metrics::RequestMetrics,
}

impl Proxy {
    /// Builds a worker's proxy.
    pub fn new(shared: Arc<Shared>) -> Self {
        let config = shared.config.load();
        let upstream = Upstream::new(&config, shared.targets.clone());
        let max_body = config.server.max_body_bytes.0;
        Proxy {
            metrics: metrics::RequestMetrics::new(&shared),
            shared,
            upstream,
            max_body,
        }
    }

    /// Answers one request. Never fails: every refusal becomes its answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let mut ctx = RequestCtx::new(req.headers(), conn);
        let resp = match self.pipeline(req, &mut ctx).await {
            Ok(resp) => resp,
            Err(refusal) => {
                ctx.disposition = refusal.disposition();
                refusal.into_response(&self.shared, ctx.json, ctx.body_unread)
            }
        };
        self.metrics.record(
            ctx.route_index(),
            ctx.disposition,
            resp.status().as_u16(),
            ctx.started.elapsed(),
        );
        resp
    }

    /// The request path, top to bottom: each phase continues or refuses.
    async fn pipeline(
        &self,
        req: Request<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (mut head, body) = req.into_parts();
        ctx.body_unread = !hyper::body::Body::is_end_stream(&body);
        self.request_filter(&head, ctx)?;
        if let Some(answer) = self.own_endpoint(&head, ctx).await? {
            return Ok(answer);
        }
        self.route(&head, ctx);
        self.rate_limit(ctx)?;
        self.waiting_room(&mut head, ctx).await?;
        self.upstream_request_filter(&mut head)?;
        if let Some(hit) = self.cache_lookup(&head, ctx) {
            return Ok(hit);
        }
        let resp = self.forward(head, body, ctx).await?;
        self.response_filter(resp, ctx).await
    }
}
