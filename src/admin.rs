//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz`
//! (it should receive traffic: not draining, and at least one portal address in rotation).
//!
//! It runs on its own thread so a saturated proxy still answers its operators. The same thread
//! runs the waiting room's controller (ticks, state snapshots, and the reserver of ticket numbers).
//!
//! The admin API, behind `Authorization: Bearer <admin token>`:
//!
//! | request | effect |
//! |---|---|
//! | `GET /admin/gates` | every gate and lane: mode, capacity, waiting, active, admitted per minute, estimated wait |
//! | `GET /admin/gates/NAME` | one gate |
//! | `POST /admin/gates/NAME/pause` | no new admissions (admitted users continue) |
//! | `POST /admin/gates/NAME/resume` | back to the configured mode |
//! | `POST /admin/gates/NAME/queue-all` | everybody queues, even with room |
//! | `POST /admin/gates/NAME/limits` with `{"capacity": N, "admit_per_minute": M}` | change either at runtime |
//!
//! With `[store] kind = "redis"` the switches and limits are the fleet's: a change is written to
//! Redis first (503 and nothing applied when it does not answer) and every node applies it at its
//! next tick after its next sync.
//! | `POST /admin/reload` | re-read the config file and apply it (as `SIGHUP` does; see [`crate::reload`]) |
//!
//! Every admin API request leaves one audit line (log target `anticamera::audit`): the method
//! and path, the caller's address, the status answered and, for a change, what it changed.
//! Never the token or any other secret.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Shared;

/// Serves the admin listener until `shutdown` fires (after the workers have drained).
pub async fn serve(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    prometheus: &'static PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = std_listener.set_nonblocking(true) {
        tracing::error!(error = %e, "admin listener");
        return;
    }
    let listener = match TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            // Stopped after the workers have drained; until then /readyz answers 503.
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let (stream, peer) = stream;
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, &shared, prometheus, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Drains recorded histogram samples into their buckets every second, so memory stays flat
/// whether or not Prometheus scrapes `/metrics`.
pub async fn upkeep(prometheus: &'static PrometheusHandle, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => prometheus.run_upkeep(),
        }
    }
}

/// Metric: keys the rate limiter tracks now, by `kind`.
pub const RATELIMIT_KEYS: &str = "anticamera_ratelimit_keys";
/// Metric: rate-limit keys evicted to make room for new ones, by `kind`.
pub const RATELIMIT_EVICTED: &str = "anticamera_ratelimit_evicted_total";

/// Publishes the rate limiter's table (keys and evictions per kind) every second, and while a
/// table is at its cap, sweeps idle buckets (full ones, whose forgetting changes nothing) every
/// `[rate_limits] sweep_interval`, until `shutdown`. Reads the limiter in force, so a reload is followed.
pub async fn limiter_upkeep(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_sweep = tokio::time::Instant::now();
    // With a shared store: the node count and the limiter the fleet's limits were divided for.
    let mut divided: Option<(u32, usize)> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {
                divide_fleet_limits(&shared, &mut divided);
                let limiter = shared.limiter.load_full();
                let Some(limiter) = limiter.as_deref() else { continue };
                let keys = limiter.len_by_kind();
                for (kind, n) in [
                    ("session", keys.session),
                    ("address", keys.address),
                    ("cohort", keys.cohort),
                    ("gate", keys.gate),
                ] {
                    metrics::gauge!(RATELIMIT_KEYS, "kind" => kind).set(n as f64);
                }
                for (kind, n) in limiter.evicted_by_kind() {
                    metrics::counter!(RATELIMIT_EVICTED, "kind" => kind.as_str()).absolute(n);
                }
                if limiter.sweep_due() && last_sweep.elapsed() >= limiter.sweep_interval() {
                    limiter.sweep();
                    last_sweep = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// With a shared store, the per-gate and per-cohort rate limits are the fleet's: each node
/// enforces its share (divided by the nodes alive, [`RateLimitsConfig::shared_by`]), rebuilt
/// when the count changes or a reload replaced the limiter (buckets start full then, as after
/// a reload).
///
/// [`RateLimitsConfig::shared_by`]: crate::ratelimit::RateLimitsConfig::shared_by
fn divide_fleet_limits(shared: &Shared, divided: &mut Option<(u32, usize)>) {
    let Some(nodes) = shared.room.as_ref().and_then(|r| r.fleet_nodes()) else {
        return;
    };
    let config = shared.config.load();
    let Some(rl) = config
        .rate_limits
        .as_ref()
        .filter(|r| r.per_gate.is_some() || r.per_cohort.is_some())
    else {
        return;
    };
    let current = shared
        .limiter
        .load_full()
        .map_or(0, |l| Arc::as_ptr(&l) as usize);
    match *divided {
        Some((n, ptr)) if n == nodes && ptr == current => return,
        // As configured for one node: nothing to divide.
        None if nodes == 1 => {
            *divided = Some((1, current));
            return;
        }
        _ => {}
    }
    let limiter = Arc::new(crate::ratelimit::RateLimiter::new(&rl.shared_by(nodes)));
    let ptr = Arc::as_ptr(&limiter) as usize;
    shared.limiter.store(Some(limiter));
    *divided = Some((nodes, ptr));
    tracing::info!(
        nodes,
        "rate limits: per_gate and per_cohort divided among the nodes alive"
    );
}

/// Runs the waiting room's controller until `shutdown`: ticks every `waiting_room.tick`, saves
/// the state every `waiting_room.snapshot_interval`; beside it, the reserver of ticket numbers
/// (`numbers`).
pub async fn controller(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(room) = shared.room.clone() else {
        return;
    };
    let config = shared.config.load_full();
    let w = &config.waiting_room;
    if w.state_file.is_some() {
        tokio::spawn(numbers(room.clone(), w.tick.0, shutdown.clone()));
    }
    let mut tick = tokio::time::interval(w.tick.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut save = tokio::time::interval(w.snapshot_interval.0);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                feed_back(&shared, &room);
                room.tick();
            }
            // A shared store's leader: a session ended on another node.
            _ = room.released_elsewhere() => room.admit_released(),
            _ = save.tick() => {
                let room = room.clone();
                let r = tokio::task::spawn_blocking(move || room.save()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "cannot save waiting-room state");
                }
            }
        }
    }
}

/// With a state file: reserves ticket numbers ahead of need (see
/// [`Room::reserve_numbers_now`](crate::room::Room::reserve_numbers_now)), every `tick` and at
/// once when an arrival finds a reservation due; its own task, so neither a tick nor a state
/// save ever waits for it, nor it for them.
async fn numbers(
    room: Arc<crate::room::Room>,
    tick: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {}
            _ = room.numbers_wanted() => {}
        }
        let r = {
            let room = room.clone();
            tokio::task::spawn_blocking(move || room.reserve_numbers_now()).await
        };
        match r {
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot reserve ticket numbers"),
            Err(e) => tracing::warn!(error = %e, "ticket number reserver"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Metric: the portal concurrency limit now (fixed, or learned in adaptive mode).
pub const UPSTREAM_LIMIT: &str = "anticamera_upstream_limit";
/// Metric: requests waiting for a portal slot.
pub const UPSTREAM_QUEUED: &str = "anticamera_upstream_queued";
/// Metric: circuit breaker state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "anticamera_breaker_state";

/// The loop between the portal and the waiting room: when the portal slows down (its learned
/// limit drops), requests of people let in pile up for a slot, or the breaker opens, new admissions slow down
/// (multiplicative decrease); when it is healthy again they recover (additive increase).
fn feed_back(shared: &Shared, room: &crate::room::Room) {
    if let Some(g) = &shared.guard {
        room.follow_portal(g.load());
    }
    let mut f = room.health();
    let mut struggling = false;
    if let Some(b) = &shared.breaker {
        let st = b.state();
        metrics::gauge!(BREAKER_STATE).set(match st {
            crate::breaker::BreakerState::Closed => 0.0,
            crate::breaker::BreakerState::Open => 1.0,
            crate::breaker::BreakerState::HalfOpen => 2.0,
        });
        if st != crate::breaker::BreakerState::Closed {
            f *= 0.5;
            struggling = true;
        }
    }
    let config = shared.config.load();
    if let (Some(g), Some(cfg)) = (&shared.guard, &config.upstream_guard) {
        let limit = g.current_limit();
        metrics::gauge!(UPSTREAM_LIMIT).set(limit as f64);
        metrics::gauge!(UPSTREAM_QUEUED).set(g.queued() as f64);
        // What the guard learned, not this node's part of a shared portal (a fleet's node holds
        // a fraction of `max_in_flight` by design).
        let learned_low = (g.own_limit() as f64) < 0.8 * cfg.max_in_flight as f64;
        // Only the requests of people let in count: they are what admission adds. New
        // arrivals' open pages queueing for their share is a surge at the door, and admitting
        // fewer would leave the portal's other slots idle without taking one of them away.
        // Against the guard's own limit: a fleet's node holds a part of the portal that may be
        // small for a while (joining, or waiting for another node to shrink).
        let piling_up = g.queued_inside() > g.own_limit() / 4;
        if !struggling && (learned_low || piling_up) {
            f *= 0.9;
            struggling = true;
        }
    }
    if !struggling {
        f += 0.02;
    }
    room.set_health(f);
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    prometheus: &PrometheusHandle,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path().starts_with("/admin/") {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let (resp, change) = admin_api(req, shared).await;
        audit(&method, &path, peer, resp.status(), change.as_deref());
        return resp;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            prometheus.run_upkeep();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                prometheus.render(),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if !shared.targets.any_healthy() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no portal address in rotation\n".into(),
                )
            } else if let Some((false, mode)) = shared.room.as_ref().and_then(|r| r.store_state()) {
                // Still 200: Redis is every node's, so a 503 here would take the whole fleet
                // out of the balancer and cut off the people inside, who keep their passes.
                // Alerting uses anticamera_store_up.
                text(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "ready, degraded: shared store unreachable (fail_mode {}: {})\n",
                        mode.as_str(),
                        match mode {
                            crate::store::FailMode::Closed =>
                                "nobody new admitted; people inside keep their passes",
                            crate::store::FailMode::OpenLocal =>
                                "this node admits up to its share of the capacity on its own",
                        }
                    ),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, "application/json", v.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"anticamera admin\""),
        );
    }
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": msg }))
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = v.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

/// The audit line of one admin API request.
fn audit(method: &Method, path: &str, peer: SocketAddr, status: StatusCode, change: Option<&str>) {
    tracing::info!(
        target: "anticamera::audit",
        %method,
        path,
        from = %peer,
        status = status.as_u16(),
        change = change.unwrap_or("-"),
        "admin request"
    );
}

/// An admin API request: the answer, and what it changed (for the audit line).
async fn admin_api(
    req: Request<Incoming>,
    shared: &Shared,
) -> (Response<Full<Bytes>>, Option<String>) {
    let token = shared.admin_token.load_full();
    let Some(token) = token.as_deref() else {
        let e = error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set admin.token_env (or admin.token) to enable it",
        );
        return (e, None);
    };
    if !authorized(&req, token) {
        return (
            error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
            None,
        );
    }
    if req.uri().path().trim_end_matches('/') == "/admin/reload" {
        if req.method() != Method::POST {
            return (error(StatusCode::METHOD_NOT_ALLOWED, "use POST"), None);
        }
        return reload_answer(shared);
    }
    let action = format!("{} {}", req.method(), req.uri().path());
    let resp = gates_api(req, shared).await;
    let change = (resp.status() == StatusCode::OK && action.starts_with("POST")).then_some(action);
    (resp, change)
}

/// `POST /admin/reload`: the outcome as JSON (200 applied, 400 refused and why).
fn reload_answer(shared: &Shared) -> (Response<Full<Bytes>>, Option<String>) {
    match crate::reload::reload(shared) {
        Ok(r) => {
            let change = format!(
                "reload {}: applied {:?}; needs restart {:?}",
                r.file.display(),
                r.applied,
                r.needs_restart
            );
            let body = serde_json::json!({
                "reloaded": r.file.display().to_string(),
                "applied": r.applied,
                "needs_restart": r.needs_restart,
            });
            (json(StatusCode::OK, body), Some(change))
        }
        Err(e) => {
            let body = serde_json::json!({ "error": "reload refused; nothing changed", "reason": e.to_string() });
            (
                json(StatusCode::BAD_REQUEST, body),
                Some("reload refused".into()),
            )
        }
    }
}

async fn gates_api(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let Some(room) = &shared.room else {
        return error(StatusCode::NOT_FOUND, "no gates are configured");
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(2).collect(); // ["gates", name, action]
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["gates"]) => json(
            StatusCode::OK,
            serde_json::json!({ "gates": room.gates.iter().map(gate_json).collect::<Vec<_>>() }),
        ),
        (Method::GET, ["gates", name]) => match room.gates.iter().find(|g| g.name == *name) {
            Some(g) => json(StatusCode::OK, gate_json(g)),
            None => error(StatusCode::NOT_FOUND, "no such gate"),
        },
        (Method::POST, ["gates", name, action]) => {
            let Some(g) = room.gates.iter().find(|g| g.name == *name) else {
                return error(StatusCode::NOT_FOUND, "no such gate");
            };
            use crate::room::Switch;
            use crate::waitroom::Mode;
            let switch = match *action {
                "pause" => Some(Switch::Forced(Mode::Paused)),
                "resume" => Some(Switch::Configured),
                "queue-all" => Some(Switch::Forced(Mode::QueueAll)),
                "open" => Some(Switch::Forced(Mode::Open)),
                _ => None,
            };
            match *action {
                "pause" | "resume" | "queue-all" | "open" => {
                    // With a shared store the switch is the fleet's: published first, so a
                    // change Redis did not take is not applied on this node alone.
                    if room.publish_admin(name, switch, None, None).is_err() {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the shared store does not answer: not applied (the switch is the fleet's)",
                        );
                    }
                    if let Some(sw) = switch {
                        g.set_switch(sw);
                    }
                }
                "limits" => {
                    #[derive(serde::Deserialize)]
                    #[serde(deny_unknown_fields)]
                    struct Limits {
                        capacity: Option<u32>,
                        admit_per_minute: Option<u32>,
                    }
                    let body = match Limited::new(req.into_body(), 4096).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
                    };
                    let l: Limits = match serde_json::from_slice(&body) {
                        Ok(l) => l,
                        Err(e) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                &format!(
                                    "expected {{\"capacity\": N, \"admit_per_minute\": M}}: {e}"
                                ),
                            )
                        }
                    };
                    if let Some(c) = l.capacity {
                        if c == 0 || c > 1 << 20 {
                            return error(StatusCode::BAD_REQUEST, "capacity must be 1..=1048576");
                        }
                    }
                    if room
                        .publish_admin(name, None, l.capacity, l.admit_per_minute)
                        .is_err()
                    {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the shared store does not answer: not applied (the limits are the fleet's)",
                        );
                    }
                    if let Some(c) = l.capacity {
                        g.capacity.store(c, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(r) = l.admit_per_minute {
                        g.admit_per_minute
                            .store(r, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                _ => return error(StatusCode::NOT_FOUND, "unknown action"),
            }
            room.tick();
            json(StatusCode::OK, gate_json(g))
        }
        _ => error(StatusCode::NOT_FOUND, "unknown admin endpoint"),
    }
}

fn gate_json(g: &crate::room::GateRuntime) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    // One snapshot per lane, used for the lane and for the gate's totals.
    let stats: Vec<(&str, crate::waitroom::GateStats)> = g
        .lanes
        .iter()
        .map(|l| (l.cohort_name.as_str(), l.gate.stats()))
        .collect();
    let lanes: Vec<serde_json::Value> = stats
        .iter()
        .map(|(cohort, s)| {
            serde_json::json!({
                "cohort": cohort,
                "mode": s.mode.as_str(),
                "capacity": s.capacity,
                "waiting": s.waiting,
                "active": s.active,
                "pending": s.pending,
                "late": s.late,
                "issued": s.issued,
                "admitted": s.admitted,
                "released": s.released,
                "abandoned": s.abandoned,
                "expired": s.expired,
                "admitted_last_minute": s.admitted_last_minute,
                "admission_rate_per_second": s.admission_rate,
                "estimated_wait_seconds": s.estimated_wait.map(|d| d.as_secs()),
            })
        })
        .collect();
    let sum = |f: fn(&crate::waitroom::GateStats) -> u64| -> u64 {
        stats.iter().map(|(_, s)| f(s)).sum()
    };
    serde_json::json!({
        "name": g.name,
        "switch": match g.switch() {
            crate::room::Switch::Configured => "configured",
            crate::room::Switch::Forced(m) => m.as_str(),
        },
        "capacity": g.capacity.load(Ordering::Relaxed),
        "steering_capacity": g.steering.load(Ordering::Relaxed),
        "admit_per_minute": g.admit_per_minute.load(Ordering::Relaxed),
        "waiting": sum(|s| s.waiting),
        "active": sum(|s| u64::from(s.active)),
        "admitted_last_minute": sum(|s| s.admitted_last_minute),
        "estimated_wait_seconds": stats.iter().filter_map(|(_, s)| s.estimated_wait).max().map(|d| d.as_secs()),
        "lanes": lanes,
    })
}
