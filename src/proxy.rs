//! The request path, top to bottom.
//!
//! ```text
//! client ─▶ server (limits, timeouts)                  src/server.rs
//!        ─▶ framing checks (CL/TE, Host)               here
//!        ─▶ anticamera's own endpoints (/.anticamera/) here + src/pages.rs
//!        ─▶ classify: client address                   src/forwarded.rs
//!        ─▶ route: which gate (normalized path)        src/route.rs
//!        ─▶ waiting room: cohort, hours, pass/ticket   src/room.rs  ─▶ queue / closed page
//!        ─▶ request limits (body size)                 here
//!        ─▶ header hygiene (hop-by-hop, forwarded, own cookies)  here + src/forwarded.rs
//!        ─▶ forward (pooled client, deadlines)         src/upstream.rs
//!        ─▶ response hygiene (release header) ─▶ client   here
//! ```
//! Every answer is counted by route, outcome and status. Answers anticamera makes itself are
//! [`Synthetic`]s, rendered in one place.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{LimitedBody, ProxyBody};
use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::config::Config;
use crate::forwarded::Forwarders;
use crate::guard::{Guard, Outcome as GuardOutcome, Priority};
use crate::isolation::{self, Isolation, Verdict};
use crate::microcache::{self, Microcache};
use crate::pages;
use crate::ratelimit::{RateLimiter, RequestKeys};
use crate::respond::{wants_json, Synthetic};
use crate::room::{strip_own_cookies, Answer, Room, RoomError};
use crate::route;
use crate::telemetry;
use crate::upstream::{Targets, Upstream, UpstreamError};

/// State shared by every worker: the validated config and what is derived from it.
pub struct Shared {
    /// The configuration this process runs.
    pub config: Arc<Config>,
    /// Trusted forwarders.
    pub forwarders: Forwarders,
    /// Portal addresses and their health.
    pub targets: Arc<Targets>,
    /// Set when shutdown begins; `/readyz` turns 503.
    pub draining: AtomicBool,
    /// The clock of every time-dependent decision (settable in tests and rehearsals).
    pub clock: Arc<Clock>,
    /// The waiting room (gates, cohorts, hours); `None` when no gate is configured.
    pub room: Option<Arc<Room>>,
    /// Page templates.
    pub templates: pages::Templates,
    /// Admin API bearer token.
    pub admin_token: Option<String>,
    /// Token buckets, if configured.
    pub limiter: Option<RateLimiter>,
    /// Portal concurrency limit, if configured.
    pub guard: Option<Guard>,
    /// Circuit breaker (with the guard).
    pub breaker: Option<Breaker>,
    /// Session isolation.
    pub isolation: Isolation,
    /// Micro-cache for public pages, if enabled.
    pub microcache: Option<Microcache>,
}

/// Metric: requests refused by a rate limit, by `kind`.
pub const LIMITED: &str = "anticamera_ratelimit_limited_total";
/// Metric: requests shed to protect the portal, by `reason` and `priority`.
pub const SHED: &str = "anticamera_shed_total";
/// Metric: time spent waiting for a portal slot (seconds).
pub const SLOT_WAIT: &str = "anticamera_upstream_slot_wait_seconds";

/// A long poll reports a place that moved only after being held this long (admission is
/// reported at once).
const LONG_POLL_MOVE_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

impl Shared {
    /// Derives the shared state from a validated config (restoring saved queue state).
    pub fn new(config: Arc<Config>) -> Result<Arc<Self>, RoomError> {
        let clock = Arc::new(Clock::system());
        let room = if config.gates.is_empty() {
            None
        } else {
            Some(Arc::new(Room::new(&config, clock.clone())?))
        };
        let templates = match &config.waiting_room.templates {
            Some(dir) => pages::Templates::load(&config.base_dir.join(dir))
                .map_err(|e| RoomError::Config("waiting_room.templates".into(), e.to_string()))?,
            None => pages::Templates::builtin(),
        };
        let admin_token = config
            .admin_token()
            .map_err(|(k, r)| RoomError::Config(k, r))?;
        let guard_cfg = config.upstream_guard.clone();
        Ok(Arc::new(Shared {
            limiter: config.rate_limits.as_ref().map(RateLimiter::new),
            guard: guard_cfg.as_ref().map(Guard::new),
            breaker: guard_cfg
                .as_ref()
                .map(|g| Breaker::new(&g.breaker, Instant::now())),
            isolation: Isolation::new(&config.isolation),
            microcache: config
                .microcache
                .enabled
                .then(|| Microcache::new(&config.microcache)),
            forwarders: Forwarders::new(config.forwarding.trusted_forwarders.clone()),
            targets: Targets::new(&config),
            draining: AtomicBool::new(false),
            clock,
            room,
            templates,
            admin_token,
            config,
        }))
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

/// How a request ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The portal answered.
    Forwarded,
    /// The waiting room answered (queue page) or the gate is closed for this cohort.
    Queued,
    /// Closed for this cohort at this hour.
    Closed,
    /// Refused by a rate limit.
    Limited,
    /// Shed to protect the portal (breaker open, concurrency limit).
    Shed,
    /// Served from the micro-cache.
    Cached,
    /// anticamera refused the request before the portal (limits, malformed).
    Refused,
    /// The portal could not be reached, broke the exchange or timed out.
    UpstreamError,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Queued => "queued",
            Outcome::Closed => "closed",
            Outcome::Limited => "limited",
            Outcome::Shed => "shed",
            Outcome::Cached => "cached",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// One worker's proxy: shared state plus this worker's upstream pool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Upstream,
    max_body: u64,
    metrics: RequestMetrics,
}

/// Per-worker cache of metric handles, so the request path does not look labels up in the
/// global registry (a hash and a lock) for every request.
struct RequestMetrics {
    routes: Vec<String>,
    durations: Vec<metrics::Histogram>,
    slot_wait: metrics::Histogram,
    cache_hit: metrics::Counter,
    cache_miss: metrics::Counter,
    cache_stored: metrics::Counter,
    cache_not_storable: metrics::Counter,
    counters: std::sync::Mutex<std::collections::HashMap<(usize, Outcome, u16), metrics::Counter>>,
}

impl RequestMetrics {
    fn new(shared: &Shared) -> Self {
        let mut routes = vec!["open".to_string()];
        if let Some(room) = &shared.room {
            routes.extend(room.gates.iter().map(|g| g.name.clone()));
        }
        let durations = routes
            .iter()
            .map(|r| metrics::histogram!(telemetry::REQUEST_DURATION, "route" => r.clone()))
            .collect();
        let cache = |r: &'static str| metrics::counter!(microcache::RESULTS, "result" => r);
        RequestMetrics {
            routes,
            durations,
            slot_wait: metrics::histogram!(SLOT_WAIT),
            cache_hit: cache("hit"),
            cache_miss: cache("miss"),
            cache_stored: cache("stored"),
            cache_not_storable: cache("not_storable"),
            counters: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn record(&self, route: usize, outcome: Outcome, status: u16, took: std::time::Duration) {
        let route = route.min(self.routes.len() - 1);
        if let Ok(mut map) = self.counters.lock() {
            map.entry((route, outcome, status))
                .or_insert_with(|| {
                    metrics::counter!(telemetry::REQUESTS_TOTAL,
                        "route" => self.routes[route].clone(),
                        "outcome" => outcome.label(),
                        "status" => telemetry::status_label(status))
                })
                .increment(1);
        }
        self.durations[route].record(took.as_secs_f64());
    }
}

impl Proxy {
    /// Builds a worker's proxy.
    pub fn new(shared: Arc<Shared>) -> Self {
        let upstream = Upstream::new(&shared.config, shared.targets.clone());
        let max_body = shared.config.server.max_body_bytes.0;
        Proxy {
            metrics: RequestMetrics::new(&shared),
            shared,
            upstream,
            max_body,
        }
    }

    /// Answers one request. Never fails: every problem becomes a response.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let json = wants_json(req.headers());
        let mut route = 0usize;
        let (resp, outcome) = match self.pipeline(req, conn, &mut route).await {
            Ok(r) => r,
            Err((synthetic, outcome)) => (synthetic.into_response(json), outcome),
        };
        self.metrics
            .record(route, outcome, resp.status().as_u16(), started.elapsed());
        resp
    }

    /// The request path, top to bottom.
    async fn pipeline(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        route: &mut usize,
    ) -> Result<(Response<ProxyBody>, Outcome), (Synthetic, Outcome)> {
        let (mut parts, body) = req.into_parts();
        let has_body = !hyper::body::Body::is_end_stream(&body);

        // Framing: refuse what two HTTP parsers could read differently.
        check_framing(&parts).map_err(|msg| (Synthetic::bad_request(msg), Outcome::Refused))?;

        // Who is the client, and which session (credentials) does the request carry.
        let sh = &*self.shared;
        let fw = &sh.forwarders;
        let client = fw.client_addr(conn.peer.ip(), &parts.headers);
        let session = sh.isolation.session_key(&parts.headers);

        // Route: anticamera's own endpoints, a gate, or an open path.
        let path = if sh.room.is_some() || sh.microcache.is_some() {
            Some(route::normalize(parts.uri.path()).map_err(|_| {
                (
                    Synthetic::bad_request("The request path is not valid."),
                    Outcome::Refused,
                )
            })?)
        } else {
            None
        };
        let mut gate = None;
        let mut cohort = 0u16;
        if let (Some(room), Some(path)) = (&sh.room, &path) {
            if let Some(own) = path.strip_prefix(pages::OWN_PREFIX) {
                let resp = self.own_endpoint(room, own, &parts, client, conn).await;
                return Ok((close_if_unread(resp, has_body), Outcome::Queued));
            }
            let c = room.classify(&parts, client, conn.peer.ip());
            cohort = c.index() as u16;
            gate = room.route(&parts.method, path).map(|g| (g, c));
            if let Some((g, _)) = gate {
                *route = g + 1;
            }
        }

        // Rate limits: per session, address, cohort, gate.
        if let Some(limiter) = &sh.limiter {
            let keys = RequestKeys {
                session,
                addr: client,
                cohort,
                gate: gate.map(|(g, _)| g as u16),
            };
            if let Err(limited) = limiter.check(&keys) {
                metrics::counter!(LIMITED, "kind" => limited.kind().as_str()).increment(1);
                let mut resp = Synthetic::too_many_requests(limited.retry_after_secs() as u32)
                    .into_response(wants_json(&parts.headers));
                limited.headers().apply(resp.headers_mut());
                return Ok((close_if_unread(resp, has_body), Outcome::Limited));
            }
        }

        // The waiting room (and opening hours) of the gate.
        let mut seat = None;
        let mut set_cookie = None;
        if let Some(room) = &sh.room {
            if let Some((g, c)) = gate {
                let d = room.decide(g, c, &parts);
                if let Some(answer) = d.answer {
                    let outcome = match answer {
                        Answer::Closed { .. } => Outcome::Closed,
                        Answer::Queue { .. } => Outcome::Queued,
                    };
                    let mut resp = self.render(room, &answer, &parts, wants_json(&parts.headers));
                    if let Some(c) = d.set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    return Ok((close_if_unread(resp, has_body), outcome));
                }
                seat = d.seat;
                set_cookie = d.set_cookie;
            }
            strip_own_cookies(&mut parts.headers, |n| room.is_own_cookie(n));
        }
        sh.isolation.strip_request(&mut parts.headers);

        // Request limits.
        if let Some(len) = content_length(&parts.headers) {
            if len > self.max_body {
                count_error("body_too_large");
                return Err((Synthetic::payload_too_large(), Outcome::Refused));
            }
        }

        // Header hygiene towards the portal.
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority.
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }

        // Micro-cache: anonymous informational pages only (never a gated path).
        let cache_key = match (&sh.microcache, &path, gate) {
            (Some(_), Some(path), None) => Microcache::key(
                &parts.method,
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok()),
                path,
                parts.uri.query(),
                &parts.headers,
            ),
            _ => None,
        };
        if let (Some(cache), Some(key)) = (&sh.microcache, &cache_key) {
            if let Some(e) = cache.get(key, &parts.headers) {
                self.metrics.cache_hit.increment(1);
                let mut resp = Response::new(if parts.method == http::Method::HEAD {
                    ProxyBody::empty()
                } else {
                    ProxyBody::full(e.body.clone())
                });
                *resp.status_mut() = e.status;
                *resp.headers_mut() = e.headers.clone();
                resp.headers_mut()
                    .insert(header::AGE, HeaderValue::from(e.age()));
                return Ok((resp, Outcome::Cached));
            }
            self.metrics.cache_miss.increment(1);
        }
        let req_headers_for_cache = cache_key.as_ref().map(|_| parts.headers.clone());

        strip_hop_by_hop(&mut parts.headers);
        fw.rewrite(conn.peer.ip(), client, conn.scheme, &mut parts.headers);

        // Protect the portal: circuit breaker, then the concurrency limit (users already inside
        // are shed last).
        let breaker_ticket = match &sh.breaker {
            Some(b) => match b.allow(Instant::now()) {
                Ok(t) => Some(t),
                Err(open) => {
                    metrics::counter!(SHED, "reason" => "breaker_open", "priority" => "any")
                        .increment(1);
                    return Err((
                        Synthetic::unavailable(
                            "portal_unavailable",
                            "The service is temporarily unavailable. Please try again in a few minutes: nothing you submitted has been lost.",
                            open.retry_after_secs().clamp(1, 3600) as u32,
                        ),
                        Outcome::Shed,
                    ));
                }
            },
            None => None,
        };
        let priority = if seat.is_some() || session.is_some() {
            Priority::Inside
        } else {
            Priority::New
        };
        let permit = match &sh.guard {
            Some(g) => match g.acquire(priority, tokio::time::Instant::now()).await {
                Ok(p) => {
                    self.metrics.slot_wait.record(p.waited().as_secs_f64());
                    Some(p)
                }
                Err(shed) => {
                    metrics::counter!(SHED, "reason" => shed.reason.as_str(), "priority" => priority.as_str()).increment(1);
                    // Not the portal's fault: the breaker ticket stays unrecorded (neither a
                    // failure nor a success; an unreported probe frees itself after open_for).
                    return Err((
                        Synthetic::unavailable(
                            "overloaded",
                            "The service is very busy right now. Please try again in a few seconds.",
                            shed.retry_after_secs().clamp(1, 60) as u32,
                        ),
                        Outcome::Shed,
                    ));
                }
            },
            None => None,
        };

        let sent = Instant::now();
        let req = Request::from_parts(parts, LimitedBody::new(body, self.max_body));
        let result = self.upstream.send(req).await;
        let overload = match &result {
            Ok(r) => matches!(r.status().as_u16(), 502..=504),
            Err(e) => matches!(
                e,
                UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Protocol(_)
            ),
        };
        if let Some(p) = permit {
            p.done(
                sent.elapsed(),
                if overload {
                    GuardOutcome::Overload
                } else {
                    GuardOutcome::Success
                },
            );
        }
        if let (Some(b), Some(t)) = (&sh.breaker, breaker_ticket) {
            b.record(t, !overload, Instant::now());
        }
        let resp = result.map_err(upstream_failure)?;

        // Response hygiene towards the client.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if sh
            .isolation
            .check_response(session, &mut parts.headers, sh.clock.now_ms())
            == Verdict::Leak
        {
            metrics::counter!(isolation::LEAKS_BLOCKED).increment(1);
            tracing::error!(
                session = session
                    .map(|s| format!("{:08x}", s >> 32))
                    .unwrap_or_else(|| "none".into()),
                "leak guard: the portal answered with a page stamped for another user; refused"
            );
            return Err((Synthetic::leak_blocked(), Outcome::UpstreamError));
        }
        if let Some(room) = &sh.room {
            if parts.headers.remove(&room.release_header).is_some() {
                if let Some(s) = seat.take() {
                    set_cookie = room.release(s);
                }
            }
        }
        if let Some(c) = set_cookie {
            parts.headers.append(header::SET_COOKIE, c);
        }
        sh.isolation
            .mark_private(session.is_some() || seat.is_some(), &mut parts.headers);

        // Store in the micro-cache what RFC 9111 allows (small, declared length only).
        if let (Some(cache), Some(key), Some(req_h)) =
            (&sh.microcache, cache_key, req_headers_for_cache)
        {
            let len = content_length(&parts.headers);
            match cache.storable(parts.status, &parts.headers) {
                Some((ttl, age)) if len.is_some_and(|l| l <= cache.max_object) => {
                    use http_body_util::BodyExt;
                    let bytes = match http_body_util::Limited::new(body, cache.max_object as usize)
                        .collect()
                        .await
                    {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return Err((Synthetic::bad_gateway(), Outcome::UpstreamError)),
                    };
                    cache.put(key, &req_h, parts.headers.clone(), bytes.clone(), ttl, age);
                    self.metrics.cache_stored.increment(1);
                    return Ok((
                        Response::from_parts(parts, ProxyBody::full(bytes)),
                        Outcome::Forwarded,
                    ));
                }
                _ => self.metrics.cache_not_storable.increment(1),
            }
        }
        Ok((
            Response::from_parts(parts, ProxyBody::Upstream(body)),
            Outcome::Forwarded,
        ))
    }

    /// `/.anticamera/status?gate=NAME` (JSON poll) and `/.anticamera/lang/{it,en}?return=PATH`.
    async fn own_endpoint(
        &self,
        room: &Room,
        own: &str,
        parts: &http::request::Parts,
        client: std::net::IpAddr,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let query = parts.uri.query().unwrap_or("");
        if own == "/status" {
            let gate = query_param(query, "gate")
                .and_then(|name| room.gates.iter().position(|g| g.name == name));
            let Some(gate) = gate else {
                return Synthetic::not_found("Unknown gate.").into_response(true);
            };
            // Long poll: `wait=N` holds the answer up to N seconds (at most 20) until the
            // ticket is admitted, so an admitted user's place does not sit idle until their
            // next poll. Only admissions at or just ahead of this position wake it (room.rs).
            // A place that moved is reported too, but only once the poll has been held for
            // `LONG_POLL_MOVE_HOLD`: near the front the place moves with every admission, and
            // answering each move would keep those pollers between two polls, out of reach of
            // their own admission, most of the time.
            let wait = query_param(query, "wait")
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
                .min(20);
            let peer = conn.peer.ip();
            let start = tokio::time::Instant::now();
            let deadline = start + std::time::Duration::from_secs(wait);
            let moved_deadline = (start + LONG_POLL_MOVE_HOLD).min(deadline);
            let mut seen_ahead = None;
            let answer = loop {
                match room.status_for_long_poll(gate, parts, client, peer) {
                    Some((answer @ Answer::Queue { ahead, .. }, Some(pending))) if wait > 0 => {
                        let until = if *seen_ahead.get_or_insert(ahead) == ahead {
                            deadline
                        } else {
                            moved_deadline
                        };
                        if tokio::time::Instant::now() >= until {
                            break Some(answer);
                        }
                        if tokio::time::timeout_at(until, pending).await.is_err() {
                            // Held long enough: answer with the latest position.
                            break room.status(gate, parts, client, peer);
                        }
                    }
                    other => break other.map(|(a, _)| a),
                }
            };
            return match answer {
                Some(answer) => self.render(room, &answer, parts, true),
                None => {
                    Synthetic::not_found("No ticket for this gate: reload the page to take one.")
                        .into_response(true)
                }
            };
        }
        if let Some(lang) = own.strip_prefix("/lang/").and_then(pages::Lang::parse) {
            let back = query_param(query, "return")
                .and_then(local_path)
                .unwrap_or("/");
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = http::StatusCode::SEE_OTHER;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(back) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}={}; Path=/; Max-Age=31536000; SameSite=Lax",
                pages::LANG_COOKIE,
                lang.code()
            )) {
                h.insert(header::SET_COOKIE, v);
            }
            return resp;
        }
        Synthetic::not_found("Not found.").into_response(wants_json(&parts.headers))
    }

    fn view<'a>(
        &self,
        room: &'a Room,
        answer: &Answer,
        parts: &'a http::request::Parts,
    ) -> (pages::Lang, View<'a>) {
        let lang = pages::negotiate_lang(&parts.headers);
        // Where the page sends the user back.
        let page_url = parts
            .uri
            .path_and_query()
            .and_then(|p| local_path(p.as_str()))
            .unwrap_or("/");
        let tz_of = |gate: usize| {
            room.gates[gate]
                .schedule
                .as_ref()
                .map(|s| s.time_zone())
                .unwrap_or(chrono_tz::Europe::Rome)
        };
        match answer {
            Answer::Queue {
                gate,
                ahead,
                wait,
                opens_at,
                prequeue_random,
                admitted,
                number,
                missed_turn,
            } => {
                let g = &room.gates[*gate];
                let tz = tz_of(*gate);
                (
                    lang,
                    View::Queue {
                        gate: &g.name,
                        label: &g.label,
                        state: if *admitted {
                            pages::QueueState::Admitted
                        } else if opens_at.is_some() {
                            pages::QueueState::PreQueue
                        } else {
                            pages::QueueState::Waiting
                        },
                        ahead: *ahead,
                        wait: *wait,
                        opens_at: opens_at.map(|t| t.with_timezone(&tz)),
                        prequeue_random: *prequeue_random,
                        number: *number,
                        missed_turn: *missed_turn,
                        page_url,
                    },
                )
            }
            Answer::Closed {
                gate,
                cohort,
                opens_at,
            } => {
                let g = &room.gates[*gate];
                let tz = tz_of(*gate);
                (
                    lang,
                    View::Closed {
                        gate: &g.name,
                        label: &g.label,
                        cohort: cohort.clone(),
                        opens_at: opens_at.map(|t| t.with_timezone(&tz)),
                        page_url,
                    },
                )
            }
        }
    }

    /// The queue or closed page (or its JSON twin) for a waiting-room answer.
    fn render(
        &self,
        room: &Room,
        answer: &Answer,
        parts: &http::request::Parts,
        json: bool,
    ) -> Response<ProxyBody> {
        let (lang, view) = self.view(room, answer, parts);
        self.render_view(room, lang, view, json)
    }

    fn render_view(
        &self,
        room: &Room,
        lang: pages::Lang,
        view: View<'_>,
        json: bool,
    ) -> Response<ProxyBody> {
        let t = &self.shared.templates;
        let (body, retry) = match view {
            View::Queue {
                gate,
                label,
                state,
                ahead,
                wait,
                opens_at,
                prequeue_random,
                number,
                missed_turn,
                page_url,
            } => {
                let until_open = opens_at.map(|o| {
                    (o.with_timezone(&chrono::Utc) - self.shared.clock.now())
                        .to_std()
                        .unwrap_or_default()
                });
                let advice = room.poll_advice(state, ahead, wait, until_open);
                let refresh = advice.refresh_secs;
                let status_url = format!("{}/status?gate={gate}", pages::OWN_PREFIX);
                let v = pages::QueueView {
                    lang,
                    gate,
                    gate_label: label,
                    state,
                    position: ahead + 1,
                    ahead,
                    estimated_wait: wait,
                    refresh_secs: refresh,
                    long_poll_secs: advice.long_poll_secs,
                    number,
                    missed_turn,
                    opens_at,
                    prequeue_random,
                    status_url: &status_url,
                    page_url,
                };
                (
                    if json {
                        pages::queue_json(&v)
                    } else {
                        t.render_queue(&v)
                    },
                    refresh,
                )
            }
            View::Closed {
                gate,
                label,
                cohort,
                opens_at,
                page_url,
            } => {
                let now = self.shared.clock.now();
                let retry = opens_at
                    .map(|o| {
                        (o.with_timezone(&chrono::Utc) - now)
                            .num_seconds()
                            .clamp(1, 86_400) as u32
                    })
                    .unwrap_or(3600);
                let v = pages::ClosedView {
                    lang,
                    gate,
                    gate_label: label,
                    cohort: &cohort,
                    opens_at,
                    retry_after_secs: retry,
                    page_url,
                };
                (
                    if json {
                        pages::closed_json(&v)
                    } else {
                        t.render_closed(&v)
                    },
                    retry,
                )
            }
        };
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "text/html; charset=utf-8"
            }),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry));
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept, Accept-Language, Cookie"),
        );
        resp
    }
}

/// What a page shows, before rendering.
enum View<'a> {
    Queue {
        gate: &'a str,
        label: &'a str,
        state: pages::QueueState,
        ahead: u64,
        wait: Option<std::time::Duration>,
        opens_at: Option<chrono::DateTime<chrono_tz::Tz>>,
        prequeue_random: bool,
        number: Option<u64>,
        missed_turn: bool,
        page_url: &'a str,
    },
    Closed {
        gate: &'a str,
        label: &'a str,
        cohort: String,
        opens_at: Option<chrono::DateTime<chrono_tz::Tz>>,
        page_url: &'a str,
    },
}

/// A path on this site to send the user back to (never `//host` or `/\\host`, which browsers
/// take for another site).
fn local_path(p: &str) -> Option<&str> {
    (p.starts_with('/') && !p.starts_with("//") && !p.contains('\\')).then_some(p)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// When anticamera answers a request itself without reading its body, the connection must not
/// be reused: the unread body could be taken for the next request.
fn close_if_unread(mut resp: Response<ProxyBody>, has_body: bool) -> Response<ProxyBody> {
    if has_body {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Refuses requests whose framing two HTTP implementations could read differently, on what
/// hyper parsed. HTTP/1.x bytes were already checked by `framing.rs` before parsing; this covers
/// HTTP/2 requests (which can carry these headers too) and the absolute-form target vs `Host`,
/// which the byte-level validator does not interpret.
fn check_framing(parts: &http::request::Parts) -> Result<(), &'static str> {
    let h = &parts.headers;
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if !te.is_empty() && cl > 0 {
        return Err("Content-Length and Transfer-Encoding together are not accepted.");
    }
    if cl > 1 {
        return Err("Content-Length appears more than once.");
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err("Only Transfer-Encoding: chunked is accepted.");
    }
    if let (Some(auth), Some(host)) = (parts.uri.authority(), h.get(header::HOST)) {
        if parts.version <= http::Version::HTTP_11
            && !auth
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
        {
            return Err("The request target and the Host header disagree.");
        }
    }
    Ok(())
}

fn upstream_failure(e: UpstreamError) -> (Synthetic, Outcome) {
    count_error(e.kind());
    tracing::debug!(error = %e, "upstream request failed");
    match e {
        UpstreamError::ClientBody(_) => (
            Synthetic::bad_request("The request body is malformed."),
            Outcome::Refused,
        ),
        UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
            (Synthetic::bad_gateway(), Outcome::UpstreamError)
        }
        UpstreamError::Timeout(_) => (Synthetic::gateway_timeout(), Outcome::UpstreamError),
        UpstreamError::BodyTooLarge => (Synthetic::payload_too_large(), Outcome::Refused),
    }
}

fn count_error(kind: &'static str) {
    metrics::counter!(telemetry::ERRORS_TOTAL, "kind" => kind).increment(1);
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the non-standard
/// ones proxies traditionally drop.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }
}
