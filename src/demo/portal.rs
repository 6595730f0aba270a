//! A small fake national social-security portal ("INPS-like"), used as the
//! upstream in demos, black-box tests and load tests.
//!
//! It is a hyper 1.x HTTP/1.1 server (keep-alive on) with public pages, a login
//! that creates sessions (cookie or `Authorization: Bearer`), a personal
//! account page, a claim form, and test plumbing (`/echo`, `/download`,
//! `/upload`, `GET /__portal/stats`, `POST /__portal/reset`, `POST /__portal/sample` (stats and
//! a new peak window), `POST /__portal/slowdown?factor=F` (the whole portal F times slower, as
//! when its database struggles; 1 = normal)).
//!
//! # Load model
//!
//! The portal behaves like a real overloaded backend. Every request to a
//! "portal" route (everything except `/__portal/*`, `/echo`, `/download` and
//! `/upload`) is counted in `in_flight` by an RAII guard for its whole
//! handling. With `n` = in-flight requests including this one and
//! `C` = capacity ([`load_plan`] is the pure function):
//!
//! | band             | behaviour                                                                  |
//! |------------------|----------------------------------------------------------------------------|
//! | `n <= C`         | answers after `base_latency` (±[`JITTER`])                                 |
//! | `C < n <= 2C`    | latency `base * OVERLOAD_LATENCY_FACTOR * (n/C)^2` (2x..8x base)           |
//! | `2C < n <= 3C`   | same latency, then fails (503 or 500) with probability `ERROR_MAX * (n-2C)/C` |
//! | `n > 3C`         | hangs for `hang_duration` (30 s) and then answers 504 (`timeouts_started`) |
//!
//! The band boundaries are [`ERROR_BAND_START`] and [`HANG_BAND_START`] (in units of C).
//!
//! # Fault mode (1 April 2020)
//!
//! With `fault_mode`, when `n > C` the account pages (`/account`,
//! `/api/account`) are served from a shared "cache" holding the most recently
//! rendered personal response of *any* user, with `user_header` naming the
//! owner of the data (this is what anticamera's leak guard checks). Each such
//! response to a different user counts in `leaks_served`. Below capacity the
//! page is rendered correctly and refreshes the cache.
//!
//! Sessions live in a `Mutex<HashMap>` and are never expired: fine for a demo.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Latency multiplier at `n = C + ε` (the overload band starts at 2x base).
pub const OVERLOAD_LATENCY_FACTOR: f64 = 2.0;
/// Relative jitter applied to every latency (±10%).
pub const JITTER: f64 = 0.10;
/// Errors start above `ERROR_BAND_START * C` in-flight requests.
pub const ERROR_BAND_START: usize = 2;
/// Requests hang above `HANG_BAND_START * C` in-flight requests.
pub const HANG_BAND_START: usize = 3;
/// Error probability reached at `n = HANG_BAND_START * C`.
pub const ERROR_MAX: f64 = 0.70;
/// Chunk size of `/download` bodies.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// Largest accepted `/download?bytes=N`.
pub const MAX_DOWNLOAD: u64 = 64 << 30;
/// Largest form / JSON body read by `/login` and `/api/login`.
const MAX_FORM: usize = 64 * 1024;

/// Response body type of the portal.
type Body = BoxBody<Bytes, Infallible>;

/// Settings of the demo portal (`[demo.portal]`-style section if ever loaded from TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// Requests the portal serves at nominal latency (C in the load model).
    pub capacity: usize,
    /// Nominal latency of a portal page.
    #[serde(deserialize_with = "de_duration")]
    pub base_latency: Duration,
    /// How long a collapsed portal (n > 3C) hangs before answering 504.
    #[serde(deserialize_with = "de_duration")]
    pub hang_duration: Duration,
    /// Reproduce the 1 April 2020 cross-user cache leak under load.
    pub fault_mode: bool,
    /// Name of the session cookie.
    pub session_cookie: String,
    /// Response header naming the user a personal response belongs to.
    pub user_header: String,
    /// Response header (value `1`) telling the proxy the user is done (claim confirmed).
    pub release_header: String,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            capacity: 50,
            base_latency: Duration::from_millis(20),
            hang_duration: Duration::from_secs(30),
            fault_mode: false,
            session_cookie: "portal_session".into(),
            user_header: "x-portal-user".into(),
            release_header: "x-anticamera-release".into(),
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A configuration problem: key path relative to the portal section and a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FieldError {
    /// Key path, e.g. `user_header`.
    pub key: String,
    /// Human-readable reason.
    pub reason: String,
}

impl PortalConfig {
    /// Checks the values [`spawn`] relies on.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |key: &str, reason: &str| {
            errs.push(FieldError {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.capacity == 0 {
            err("capacity", "must be at least 1");
        }
        for (key, v) in [
            ("user_header", &self.user_header),
            ("release_header", &self.release_header),
        ] {
            if HeaderName::from_bytes(v.as_bytes()).is_err() {
                err(key, "not a valid HTTP header name");
            }
        }
        if self.session_cookie.is_empty() || !self.session_cookie.bytes().all(is_name_char) {
            err(
                "session_cookie",
                "must be a non-empty token of [A-Za-z0-9._-]",
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// What the load model says to do with a request (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPlan {
    /// Latency before answering (before jitter).
    pub latency: Duration,
    /// Probability of failing with 503/500 after the latency.
    pub error_probability: f64,
    /// Collapsed: hang for `hang_duration`, then 504.
    pub hang: bool,
}

/// The load model: plan for a request that sees `n` in-flight requests (itself
/// included) on a portal of capacity `capacity`.
pub fn load_plan(n: usize, capacity: usize, base: Duration) -> LoadPlan {
    let c = capacity.max(1);
    if n > HANG_BAND_START * c {
        return LoadPlan {
            latency: Duration::ZERO,
            error_probability: 1.0,
            hang: true,
        };
    }
    if n <= c {
        return LoadPlan {
            latency: base,
            error_probability: 0.0,
            hang: false,
        };
    }
    let ratio = n as f64 / c as f64;
    let latency = base.mul_f64(OVERLOAD_LATENCY_FACTOR * ratio * ratio);
    let error_probability = if n > ERROR_BAND_START * c {
        ERROR_MAX * (n - ERROR_BAND_START * c) as f64 / c as f64
    } else {
        0.0
    };
    LoadPlan {
        latency,
        error_probability: error_probability.min(ERROR_MAX),
        hang: false,
    }
}

/// Atomic counters of the portal, shared with the handle.
#[derive(Debug)]
pub struct PortalStats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    window_peak_in_flight: AtomicUsize,
    /// Latency multiplier in percent (100 = normal), set by `POST /__portal/slowdown`.
    slowdown_pct: AtomicU64,
    requests_total: AtomicU64,
    responses_2xx: AtomicU64,
    responses_3xx: AtomicU64,
    responses_4xx: AtomicU64,
    responses_5xx: AtomicU64,
    timeouts_started: AtomicU64,
    errors_injected: AtomicU64,
    work_us: AtomicU64,
    busy_us: AtomicU64,
    leaks_served: AtomicU64,
    claims_submitted: AtomicU64,
}

/// Point-in-time copy of [`PortalStats`], served as JSON by `/__portal/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Portal-route requests being handled now.
    pub in_flight: usize,
    /// Highest `in_flight` seen since start or the last reset.
    pub peak_in_flight: usize,
    /// Highest `in_flight` seen since the last `POST /__portal/sample` (a load tool's
    /// per-interval peak).
    pub window_peak_in_flight: usize,
    /// The portal's latency in percent of normal (100 = normal; `POST /__portal/slowdown`).
    pub slowdown_pct: u64,
    /// Requests received (all routes except `/__portal/*`).
    pub requests_total: u64,
    /// Responses with a 2xx status.
    pub responses_2xx: u64,
    /// Responses with a 3xx status.
    pub responses_3xx: u64,
    /// Responses with a 4xx status.
    pub responses_4xx: u64,
    /// Responses with a 5xx status.
    pub responses_5xx: u64,
    /// Requests the collapsed portal started to hang.
    pub timeouts_started: u64,
    /// 503/500 answers injected by the load model.
    pub errors_injected: u64,
    /// Useful work done, in microseconds: the time spent on every request answered without a
    /// 5xx, counting a request that came in above capacity only for its normal-load latency
    /// (base latency, slowdown and jitter; the overload's extra is waste). Its growth over an
    /// interval, divided by the interval and the capacity, is how much of the portal's
    /// capacity served users (a load tool's goodput).
    #[serde(default)]
    pub work_us: u64,
    /// Time requests spent in the portal, in microseconds, summed over every request (its
    /// in-flight count integrated over time). Above `work_us` when requests took longer than
    /// their normal latency: overload, or a machine too busy to wake the portal on time.
    #[serde(default)]
    pub busy_us: u64,
    /// Personal pages served to a user other than their owner (fault mode).
    pub leaks_served: u64,
    /// Claims recorded by `POST /claim`.
    pub claims_submitted: u64,
}

impl Default for PortalStats {
    fn default() -> Self {
        Self::new()
    }
}

impl PortalStats {
    /// Zeroed counters, normal latency.
    pub fn new() -> Self {
        PortalStats {
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            window_peak_in_flight: AtomicUsize::new(0),
            slowdown_pct: AtomicU64::new(100),
            requests_total: AtomicU64::new(0),
            responses_2xx: AtomicU64::new(0),
            responses_3xx: AtomicU64::new(0),
            responses_4xx: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            timeouts_started: AtomicU64::new(0),
            errors_injected: AtomicU64::new(0),
            work_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            leaks_served: AtomicU64::new(0),
            claims_submitted: AtomicU64::new(0),
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            window_peak_in_flight: self.window_peak_in_flight.load(Relaxed),
            slowdown_pct: self.slowdown_pct.load(Relaxed),
            requests_total: self.requests_total.load(Relaxed),
            responses_2xx: self.responses_2xx.load(Relaxed),
            responses_3xx: self.responses_3xx.load(Relaxed),
            responses_4xx: self.responses_4xx.load(Relaxed),
            responses_5xx: self.responses_5xx.load(Relaxed),
            timeouts_started: self.timeouts_started.load(Relaxed),
            errors_injected: self.errors_injected.load(Relaxed),
            work_us: self.work_us.load(Relaxed),
            busy_us: self.busy_us.load(Relaxed),
            leaks_served: self.leaks_served.load(Relaxed),
            claims_submitted: self.claims_submitted.load(Relaxed),
        }
    }

    /// Copies the counters and starts a new peak window (`window_peak_in_flight`).
    pub fn sample(&self) -> StatsSnapshot {
        let mut s = self.snapshot();
        s.window_peak_in_flight = self
            .window_peak_in_flight
            .swap(self.in_flight.load(Relaxed), Relaxed)
            .max(s.in_flight);
        s
    }

    /// The latency multiplier.
    fn slowdown(&self) -> f64 {
        self.slowdown_pct.load(Relaxed) as f64 / 100.0
    }

    /// Zeroes the counters, sets the peaks to the current in-flight count and the latency back
    /// to normal.
    pub fn reset(&self) {
        self.peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.window_peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.slowdown_pct.store(100, Relaxed);
        for c in [
            &self.requests_total,
            &self.responses_2xx,
            &self.responses_3xx,
            &self.responses_4xx,
            &self.responses_5xx,
            &self.timeouts_started,
            &self.errors_injected,
            &self.work_us,
            &self.busy_us,
            &self.leaks_served,
            &self.claims_submitted,
        ] {
            c.store(0, Relaxed);
        }
    }

    fn count_status(&self, s: StatusCode) {
        let c = match s.as_u16() {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            500..=599 => &self.responses_5xx,
            _ => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// RAII in-flight counter for portal routes.
struct InFlight<'a>(&'a PortalStats, std::time::Instant);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a PortalStats) -> (Self, usize) {
        let n = stats.in_flight.fetch_add(1, Relaxed) + 1;
        stats.peak_in_flight.fetch_max(n, Relaxed);
        stats.window_peak_in_flight.fetch_max(n, Relaxed);
        (Self(stats, std::time::Instant::now()), n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0
            .busy_us
            .fetch_add(self.1.elapsed().as_micros() as u64, Relaxed);
    }
}

/// Fake but deterministic personal data of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeIdentity {
    /// 16-character fiscal code (municipality `Z999`: does not exist).
    pub fiscal_code: String,
    /// Italian IBAN with a valid check, on the non-existent bank ABI `99999`.
    pub iban: String,
}

/// Derives the fake fiscal code and IBAN of `user` (what `/account` shows).
pub fn fake_identity(user: &str) -> FakeIdentity {
    let h = Sha256::digest(format!("anticamera-demo:{user}").as_bytes());
    let letter = |b: u8| char::from(b'A' + b % 26);
    let mut fc: String = h[..6].iter().map(|&b| letter(b)).collect();
    let day = 1 + h[8] % 28 + if h[9] % 2 == 1 { 40 } else { 0 };
    let month = char::from(b"ABCDEHLMPRST"[usize::from(h[7] % 12)]);
    fc.push_str(&format!(
        "{:02}{month}{day:02}Z999{}",
        h[6] % 100,
        letter(h[10])
    ));
    let num = |bytes: &[u8], digits: usize| -> String {
        let v = bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        format!("{:0digits$}", v % 10u64.pow(digits as u32))
    };
    let bban = format!(
        "{}99999{}{}",
        letter(h[11]),
        num(&h[12..16], 5),
        num(&h[16..24], 12)
    );
    // ISO 13616 check digits: move "IT00" to the end, letters -> 10..35, mod 97.
    let rem = format!("{bban}IT00")
        .chars()
        .fold(0u32, |acc, ch| match ch.to_digit(36) {
            Some(d) if d >= 10 => (acc * 100 + d) % 97,
            Some(d) => (acc * 10 + d) % 97,
            None => acc,
        });
    FakeIdentity {
        fiscal_code: fc,
        iban: format!("IT{:02}{bban}", 98 - rem),
    }
}

/// A running portal. Dropping it (or [`PortalHandle::shutdown`]) stops it.
#[derive(Debug)]
pub struct PortalHandle {
    /// Address the portal listens on.
    pub addr: SocketAddr,
    /// Live counters.
    pub stats: Arc<PortalStats>,
    task: tokio::task::JoinHandle<()>,
}

impl PortalHandle {
    /// Stops accepting and aborts every open connection.
    pub fn shutdown(self) {}

    /// Current counters.
    pub fn stats_snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for PortalHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    cfg: PortalConfig,
    user_header: HeaderName,
    release_header: HeaderName,
    stats: Arc<PortalStats>,
    sessions: Mutex<HashMap<String, String>>,
    /// Fault-mode caches of the last rendered personal response: (owner, body).
    html_cache: Mutex<Option<(String, Bytes)>>,
    json_cache: Mutex<Option<(String, Bytes)>>,
}

/// Starts serving the portal on `listener` in a tokio task.
pub async fn spawn(
    listener: tokio::net::TcpListener,
    cfg: PortalConfig,
) -> std::io::Result<PortalHandle> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    cfg.validate().map_err(|errs| {
        invalid(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let user_header =
        HeaderName::from_bytes(cfg.user_header.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let release_header = HeaderName::from_bytes(cfg.release_header.as_bytes())
        .map_err(|e| invalid(e.to_string()))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(PortalStats::new());
    let shared = Arc::new(Shared {
        cfg,
        user_header,
        release_header,
        stats: stats.clone(),
        sessions: Mutex::new(HashMap::new()),
        html_cache: Mutex::new(None),
        json_cache: Mutex::new(None),
    });
    let task = tokio::spawn(accept_loop(listener, shared));
    tracing::info!(%addr, "demo portal listening");
    Ok(PortalHandle { addr, stats, task })
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Connections live in the JoinSet: aborting this task aborts them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                        let res = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "portal connection ended with error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "portal accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if path.starts_with("/__portal/") {
        return Ok(admin(&sh, req.method(), path, req.uri().query()));
    }
    sh.stats.requests_total.fetch_add(1, Relaxed);
    let resp = match (req.method().clone(), path) {
        (_, "/echo") => echo(req).await,
        (Method::GET, "/download") => download(req.uri().query()),
        (Method::POST, "/upload") => upload(req.into_body()).await,
        _ => modelled(&sh, req).await,
    };
    sh.stats.count_status(resp.status());
    Ok(resp)
}

fn admin(sh: &Shared, method: &Method, path: &str, query: Option<&str>) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/__portal/stats") => json(StatusCode::OK, &sh.stats.snapshot()),
        (&Method::POST, "/__portal/sample") => json(StatusCode::OK, &sh.stats.sample()),
        (&Method::POST, "/__portal/reset") => {
            sh.stats.reset();
            json(StatusCode::OK, &sh.stats.snapshot())
        }
        (&Method::POST, "/__portal/slowdown") => {
            let factor = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("factor=")))
                .and_then(|f| f.parse::<f64>().ok())
                .filter(|f| (0.1..=100.0).contains(f));
            match factor {
                Some(f) => {
                    sh.stats
                        .slowdown_pct
                        .store((f * 100.0).round() as u64, Relaxed);
                    tracing::info!(factor = f, "portal latency multiplied");
                    json(StatusCode::OK, &sh.stats.snapshot())
                }
                None => text(
                    StatusCode::BAD_REQUEST,
                    "factor=F required, 0.1 <= F <= 100 (1 = normal latency)",
                ),
            }
        }
        (_, "/__portal/stats" | "/__portal/reset" | "/__portal/sample" | "/__portal/slowdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "405")
        }
        _ => text(StatusCode::NOT_FOUND, "404"),
    }
}

/// Applies the load model, then routes.
async fn modelled(sh: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (_guard, n) = InFlight::enter(&sh.stats);
    let started = std::time::Instant::now();
    let normal = sh.cfg.base_latency.mul_f64(sh.stats.slowdown());
    let plan = load_plan(n, sh.cfg.capacity, normal);
    if plan.hang {
        sh.stats.timeouts_started.fetch_add(1, Relaxed);
        tracing::debug!(n, "portal collapsed: hanging request");
        tokio::time::sleep(sh.cfg.hang_duration).await;
        return page(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            "<p>Il servizio non ha risposto in tempo.</p>",
        );
    }
    let (latency, work, fail) = {
        let mut rng = rand::thread_rng();
        let jitter = rng.gen_range(1.0 - JITTER..=1.0 + JITTER);
        let fail = (plan.error_probability > 0.0 && rng.gen_bool(plan.error_probability))
            .then(|| rng.gen_bool(2.0 / 3.0));
        (plan.latency.mul_f64(jitter), normal.mul_f64(jitter), fail)
    };
    tokio::time::sleep(latency).await;
    match fail {
        Some(unavailable) => {
            sh.stats.errors_injected.fetch_add(1, Relaxed);
            if unavailable {
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Servizio non disponibile",
                    "<p>Troppe richieste. Riprovare più tardi.</p>",
                )
            } else {
                page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Errore",
                    "<p>Internal error</p>",
                )
            }
        }
        None => {
            let resp = route(sh, req, n).await;
            if !resp.status().is_server_error() {
                let useful = if n <= sh.cfg.capacity {
                    started.elapsed()
                } else {
                    work
                };
                sh.stats
                    .work_us
                    .fetch_add(useful.as_micros() as u64, Relaxed);
            }
            resp
        }
    }
}

async fn route(sh: &Shared, req: Request<Incoming>, n: usize) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => public(page(StatusCode::OK, "Portale Previdenza Demo", HOME)),
        (Method::GET, p) if p.starts_with("/info/") => {
            let topic = html_escape(&p["/info/".len()..]);
            public(page(StatusCode::OK, "Informazioni", &format!("<h2>{topic}</h2><p>Le domande per l'indennità si presentano online dal 1° aprile. Tenere a portata di mano codice fiscale e IBAN.</p>")))
        }
        (Method::GET, "/static/style.css") => {
            let mut r = respond(StatusCode::OK, "text/css; charset=utf-8", CSS);
            r.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            r
        }
        (Method::GET, "/login") => page(StatusCode::OK, "Accesso", LOGIN_FORM),
        (Method::POST, "/login") => login(sh, req, false).await,
        (Method::POST, "/api/login") => login(sh, req, true).await,
        (Method::GET, "/account") => account(sh, req.headers(), n, false),
        (Method::GET, "/api/account") => account(sh, req.headers(), n, true),
        (Method::GET, "/claim") => match sh.session_user(req.headers()) {
            Some(user) => personal(
                sh,
                &user,
                page(
                    StatusCode::OK,
                    "Domanda",
                    &format!(
                        "<p data-user=\"{}\">Richiedente: {0}</p>{CLAIM_FORM}",
                        html_escape(&user)
                    ),
                ),
            ),
            None => unauthenticated(req.headers(), false),
        },
        (Method::POST, "/claim") => claim(sh, req).await,
        (
            _,
            "/" | "/static/style.css" | "/login" | "/api/login" | "/account" | "/api/account"
            | "/claim",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "Metodo non consentito"),
        _ => page(
            StatusCode::NOT_FOUND,
            "Pagina non trovata",
            "<p>La pagina richiesta non esiste.</p>",
        ),
    }
}

impl Shared {
    fn session_user(&self, headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.cfg.session_cookie)
            .map(|(_, v)| v);
        let token = cookie.or(bearer)?;
        lock(&self.sessions).get(token).cloned()
    }
}

async fn login(sh: &Shared, req: Request<Incoming>, api: bool) -> Response<Body> {
    let is_json = header_contains(req.headers(), CONTENT_TYPE, "json");
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "corpo della richiesta non valido"),
    };
    let user = if is_json {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_owned))
    } else {
        form_value(&body, "user")
    };
    let user = match user {
        Some(u)
            if !u.is_empty()
                && u.len() <= 64
                && u.bytes().all(|b| is_name_char(b) || b == b'@') =>
        {
            u
        }
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "campo 'user' mancante o non valido",
            )
        }
    };
    let token = format!("{:032x}", rand::random::<u128>());
    lock(&sh.sessions).insert(token.clone(), user.clone());
    // The login response names its user too, so a leak guard can bind the new session (the
    // cookie it sets) at once.
    let stamp = HeaderValue::from_str(&user).ok();
    if api {
        // The token travels in the body, not in a cookie: there is no session for a leak
        // guard to bind here, so this answer carries no user stamp.
        return json(StatusCode::OK, &serde_json::json!({ "token": token }));
    }
    let mut r = text(StatusCode::SEE_OTHER, "");
    if let Some(v) = stamp {
        r.headers_mut().insert(sh.user_header.clone(), v);
    }
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax",
        sh.cfg.session_cookie
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static("/account"));
    r
}

fn account(sh: &Shared, headers: &HeaderMap, n: usize, api: bool) -> Response<Body> {
    let Some(user) = sh.session_user(headers) else {
        return unauthenticated(headers, api);
    };
    let (cache, ctype) = if api {
        (&sh.json_cache, "application/json")
    } else {
        (&sh.html_cache, "text/html; charset=utf-8")
    };
    if sh.cfg.fault_mode && n > sh.cfg.capacity {
        if let Some((owner, body)) = lock(cache).clone() {
            if owner != user {
                sh.stats.leaks_served.fetch_add(1, Relaxed);
                tracing::warn!(requester = %user, %owner, "fault mode: serving another user's page");
            }
            return personal(sh, &owner, respond(StatusCode::OK, ctype, body));
        }
    }
    let id = fake_identity(&user);
    let body = if api {
        let v = serde_json::json!({ "user": user, "fiscal_code": id.fiscal_code, "iban": id.iban });
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    } else {
        let u = html_escape(&user);
        Bytes::from(render(
            "La mia area",
            &format!(
                "<section class=\"account\"><p>Utente: <strong data-user=\"{u}\">{u}</strong></p>\
             <p>Codice fiscale: <code>{}</code></p><p>IBAN di accredito: <code>{}</code></p>\
             <p><a href=\"/claim\">Presenta domanda</a></p></section>",
                id.fiscal_code, id.iban
            ),
        ))
    };
    if sh.cfg.fault_mode {
        *lock(cache) = Some((user.clone(), body.clone()));
    }
    personal(sh, &user, respond(StatusCode::OK, ctype, body))
}

async fn claim(sh: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Some(user) = sh.session_user(req.headers()) else {
        return unauthenticated(req.headers(), true);
    };
    if drain_hash(req.into_body()).await.is_err() {
        return text(StatusCode::BAD_REQUEST, "corpo della richiesta non valido");
    }
    let id = sh.stats.claims_submitted.fetch_add(1, Relaxed) + 1;
    let body = format!(
        "<p data-user=\"{}\">Domanda ricevuta.</p><p>Numero di protocollo: <strong class=\"claim-id\">INPS-DEMO-2020-{id:07}</strong></p>",
        html_escape(&user)
    );
    let mut r = personal(sh, &user, page(StatusCode::OK, "Domanda inviata", &body));
    r.headers_mut()
        .insert(sh.release_header.clone(), HeaderValue::from_static("1"));
    r
}

fn unauthenticated(headers: &HeaderMap, api: bool) -> Response<Body> {
    if api || header_contains(headers, http::header::ACCEPT, "application/json") {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "login required" }),
        );
    }
    let mut r = text(StatusCode::SEE_OTHER, "");
    r.headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static("/login"));
    r
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok((len, digest)) = drain_hash(body).await else {
        return text(StatusCode::BAD_REQUEST, "body read failed");
    };
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            [
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": len,
            "body_sha256": digest,
        }),
    )
}

async fn upload(body: Incoming) -> Response<Body> {
    match drain_hash(body).await {
        Ok((bytes, sha256)) => json(
            StatusCode::OK,
            &serde_json::json!({ "bytes": bytes, "sha256": sha256 }),
        ),
        Err(_) => text(StatusCode::BAD_REQUEST, "body read failed"),
    }
}

/// Consumes a body frame by frame: (length, hex SHA-256).
async fn drain_hash(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok((len, hex(&hasher.finalize())))
}

fn download(query: Option<&str>) -> Response<Body> {
    let n = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("bytes="))
        .and_then(|v| v.parse::<u64>().ok());
    match n {
        Some(n) if n <= MAX_DOWNLOAD => {
            let mut r = Response::new(PatternBody { remaining: n }.boxed());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        _ => text(StatusCode::BAD_REQUEST, "use /download?bytes=N"),
    }
}

/// The bytes `/download` repeats: byte `i` of the stream is `PATTERN[i % DOWNLOAD_CHUNK]`.
static PATTERN: [u8; DOWNLOAD_CHUNK] = {
    let mut p = [0u8; DOWNLOAD_CHUNK];
    let mut i = 0;
    while i < DOWNLOAD_CHUNK {
        p[i] = (i % 251) as u8;
        i += 1;
    }
    p
};

/// Streams `remaining` pattern bytes in chunks without allocating.
struct PatternBody {
    remaining: u64,
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(DOWNLOAD_CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PATTERN[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---- small helpers ----

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn header_contains(h: &HeaderMap, name: HeaderName, needle: &str) -> bool {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(needle))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let decode = |s: &[u8]| -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    match std::str::from_utf8(&s[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split(|&b| b == b'&').find_map(|kv| {
        let mut it = kv.splitn(2, |&b| b == b'=');
        let k = decode(it.next()?);
        (k == key).then(|| decode(it.next().unwrap_or(b"")))
    })
}

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn render(title: &str, content: &str) -> String {
    format!(
        "<!doctype html><html lang=\"it\"><head><meta charset=\"utf-8\"><title>{title} - Portale Previdenza (demo)</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><header><h1>Portale Previdenza</h1>\
         <p class=\"demo\">Dati di fantasia, portale dimostrativo</p></header><main>{content}</main></body></html>"
    )
}

fn page(status: StatusCode, title: &str, content: &str) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", render(title, content))
}

fn public(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

fn personal(sh: &Shared, owner: &str, mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    if let Ok(v) = HeaderValue::from_str(owner) {
        r.headers_mut().insert(sh.user_header.clone(), v);
    }
    r
}

const HOME: &str = "<h2>Indennità 600 euro</h2><p>Dal 1° aprile è possibile presentare la domanda online.</p>\
<ul><li><a href=\"/info/requisiti\">Requisiti</a></li><li><a href=\"/info/scadenze\">Scadenze</a></li>\
<li><a href=\"/login\">Accedi al servizio</a></li></ul>";
const LOGIN_FORM: &str = "<form method=\"post\" action=\"/login\"><label>Codice utente <input name=\"user\" required></label>\
<button type=\"submit\">Entra</button></form>";
const CLAIM_FORM: &str = "<form method=\"post\" action=\"/claim\"><input type=\"hidden\" name=\"tipo\" value=\"indennita-600\">\
<label><input type=\"checkbox\" name=\"dichiarazione\" required> Dichiaro di avere i requisiti</label>\
<button type=\"submit\">Invia domanda</button></form>";
const CSS: &str = "body{font-family:sans-serif;margin:0;color:#222}header{background:#0066cc;color:#fff;padding:1em}\
main{padding:1em;max-width:48em}.demo{font-size:.8em;opacity:.8}code{background:#eee;padding:0 .2em}\n";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    async fn start(cfg: PortalConfig) -> PortalHandle {
        spawn(TcpListener::bind("127.0.0.1:0").await.unwrap(), cfg)
            .await
            .unwrap()
    }

    fn quick() -> PortalConfig {
        PortalConfig {
            base_latency: Duration::from_millis(1),
            ..PortalConfig::default()
        }
    }

    /// One request on a fresh connection (`Connection: close`), raw bytes in, parsed response out.
    async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| l.split_once(": ").unwrap())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let r = Resp {
            status,
            headers,
            body: buf[end + 4..].to_vec(),
        };
        assert!(
            r.header("transfer-encoding").is_none(),
            "test client reads only content-length bodies"
        );
        r
    }

    async fn get(addr: SocketAddr, path: &str, extra: &str) -> Resp {
        raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n{extra}\r\n"),
            b"",
        )
        .await
    }

    async fn post(addr: SocketAddr, path: &str, extra: &str, body: &[u8]) -> Resp {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: portal\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        raw(addr, &head, body).await
    }

    /// Logs `user` in through the browser form; returns the `Cookie:` header line.
    async fn login(addr: SocketAddr, user: &str) -> String {
        let r = post(
            addr,
            "/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            format!("user={user}").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), Some("/account"));
        let cookie = r.header("set-cookie").unwrap();
        let (pair, attrs) = cookie.split_once(';').unwrap();
        assert_eq!(attrs, " Path=/; HttpOnly; SameSite=Lax");
        let token = pair.strip_prefix("portal_session=").unwrap();
        assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        format!("Cookie: theme=dark; {pair}\r\n")
    }

    /// A request that stays in flight: headers sent, body (100 bytes announced) never completed.
    async fn hold(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = "POST /login HTTP/1.1\r\nHost: portal\r\nContent-Length: 100\r\n\r\nuser=";
        s.write_all(head.as_bytes()).await.unwrap();
        s
    }

    async fn wait_in_flight(p: &PortalHandle, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while p.stats_snapshot().in_flight != n {
            assert!(
                Instant::now() < deadline,
                "in_flight never reached {n}: {:?}",
                p.stats_snapshot()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn assert_shows(r: &Resp, user: &str) {
        let id = fake_identity(user);
        let body = r.text();
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(r.header("x-portal-user"), Some(user));
        assert_eq!(r.header("cache-control"), Some("private"));
        assert!(body.contains(&format!("data-user=\"{user}\"")), "{body}");
        assert!(
            body.contains(&id.fiscal_code) && body.contains(&id.iban),
            "{body}"
        );
    }

    #[tokio::test]
    async fn login_sets_cookie_and_account_shows_that_user() {
        let p = start(quick()).await;
        let cookie = login(p.addr, "mario.rossi").await;
        assert_shows(&get(p.addr, "/account", &cookie).await, "mario.rossi");
    }

    #[tokio::test]
    async fn two_users_see_their_own_data_via_cookie_and_bearer() {
        let p = start(quick()).await;
        let (ca, cb) = tokio::join!(login(p.addr, "alice"), login(p.addr, "bob"));
        let (ra, rb) = tokio::join!(get(p.addr, "/account", &ca), get(p.addr, "/account", &cb));
        assert_shows(&ra, "alice");
        assert_shows(&rb, "bob");
        assert_ne!(fake_identity("alice"), fake_identity("bob"));

        let r = post(
            p.addr,
            "/api/login",
            "Content-Type: application/json\r\n",
            br#"{"user":"carla"}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        let token = r.json()["token"].as_str().unwrap().to_owned();
        let r = get(
            p.addr,
            "/api/account",
            &format!("Authorization: Bearer {token}\r\n"),
        )
        .await;
        assert_eq!(r.header("x-portal-user"), Some("carla"));
        let id = fake_identity("carla");
        assert_eq!(
            r.json(),
            serde_json::json!({"user": "carla", "fiscal_code": id.fiscal_code, "iban": id.iban})
        );
        assert_eq!(p.stats_snapshot().leaks_served, 0);
    }

    #[tokio::test]
    async fn public_pages_errors_and_missing_sessions() {
        let p = start(quick()).await;
        let a = p.addr;
        let r = get(a, "/", "").await;
        assert_eq!(
            (r.status, r.header("cache-control")),
            (200, Some("public, max-age=60"))
        );
        assert!(r.header("set-cookie").is_none() && r.text().contains("Portale Previdenza"));
        assert_eq!(
            get(a, "/info/requisiti", "").await.header("cache-control"),
            Some("public, max-age=60")
        );
        let css = get(a, "/static/style.css", "").await;
        assert_eq!(
            (css.status, css.header("content-type")),
            (200, Some("text/css; charset=utf-8"))
        );
        assert!(get(a, "/login", "").await.text().contains("name=\"user\""));
        assert_eq!(get(a, "/nope", "").await.status, 404);
        assert_eq!(post(a, "/login", "", b"user=").await.status, 400);
        assert_eq!(post(a, "/login", "", b"other=x").await.status, 400);
        assert_eq!(
            post(a, "/login", "", b"user=%3Cscript%3E").await.status,
            400
        );
        assert_eq!(
            get(a, "/account", "Accept: application/json\r\n")
                .await
                .status,
            401
        );
        let r = get(a, "/account", "Cookie: portal_session=deadbeef\r\n").await;
        assert_eq!((r.status, r.header("location")), (303, Some("/login")));
        assert_eq!(
            get(a, "/api/account", "Authorization: Bearer nope\r\n")
                .await
                .status,
            401
        );
        assert_eq!(post(a, "/claim", "", b"x").await.status, 401);
        assert_eq!(get(a, "/download?bytes=lots", "").await.status, 400);
        assert_eq!(post(a, "/account", "", b"").await.status, 405);
        let s = p.stats_snapshot();
        assert_eq!(s.requests_total, 14);
        assert_eq!(
            (
                s.responses_2xx,
                s.responses_3xx,
                s.responses_4xx,
                s.responses_5xx
            ),
            (4, 1, 9, 0)
        );
    }

    #[tokio::test]
    async fn fault_mode_under_overload_serves_another_users_page() {
        let cfg = PortalConfig {
            capacity: 1,
            base_latency: Duration::from_millis(20),
            fault_mode: true,
            ..PortalConfig::default()
        };
        let p = start(cfg).await;
        let (ca, cb) = (login(p.addr, "alice").await, login(p.addr, "bob").await);
        assert_shows(&get(p.addr, "/account", &ca).await, "alice"); // below capacity: correct, fills the cache
        let holder = hold(p.addr).await;
        wait_in_flight(&p, 1).await;
        // bob arrives with n = 2 > C: gets alice's cached page, labelled as alice's.
        let r = get(p.addr, "/account", &cb).await;
        assert_shows(&r, "alice");
        assert!(!r.text().contains("bob"));
        assert_eq!(p.stats_snapshot().leaks_served, 1);
        // Same for the JSON API: bob fills its (empty) cache, alice then gets bob's data.
        assert_eq!(
            get(p.addr, "/api/account", &cb)
                .await
                .header("x-portal-user"),
            Some("bob")
        );
        let r = get(p.addr, "/api/account", &ca).await;
        assert_eq!(
            (r.header("x-portal-user"), r.json()["user"].as_str()),
            (Some("bob"), Some("bob"))
        );
        assert_eq!(p.stats_snapshot().leaks_served, 2);
        drop(holder);
        wait_in_flight(&p, 0).await;
        assert_shows(&get(p.addr, "/account", &cb).await, "bob");
        let s = p.stats_snapshot();
        assert_eq!((s.leaks_served, s.peak_in_flight), (2, 2));
    }

    #[tokio::test]
    async fn without_fault_mode_overload_never_leaks() {
        let cfg = PortalConfig {
            capacity: 1,
            base_latency: Duration::from_millis(20),
            ..PortalConfig::default()
        };
        let p = start(cfg).await;
        let (ca, cb) = (login(p.addr, "alice").await, login(p.addr, "bob").await);
        assert_shows(&get(p.addr, "/account", &ca).await, "alice");
        let _holder = hold(p.addr).await;
        wait_in_flight(&p, 1).await;
        assert_shows(&get(p.addr, "/account", &cb).await, "bob");
        assert_eq!(p.stats_snapshot().leaks_served, 0);
    }

    #[tokio::test]
    async fn degradation_slows_down_then_collapses() {
        let cfg = PortalConfig {
            capacity: 2,
            base_latency: Duration::from_millis(20),
            hang_duration: Duration::from_millis(300),
            ..PortalConfig::default()
        };
        let p = start(cfg).await;
        let t = Instant::now();
        assert_eq!(get(p.addr, "/", "").await.status, 200);
        let unloaded = t.elapsed();
        // n = 4 (2C): no errors, latency 20ms * 2 * (4/2)^2 = 160ms.
        let mut holders = vec![hold(p.addr).await, hold(p.addr).await, hold(p.addr).await];
        wait_in_flight(&p, 3).await;
        let t = Instant::now();
        assert_eq!(get(p.addr, "/", "").await.status, 200);
        let loaded = t.elapsed();
        assert!(
            loaded >= Duration::from_millis(140) && loaded > unloaded,
            "{loaded:?} vs {unloaded:?}"
        );
        // n = 7 > 3C: the portal hangs, then 504.
        for _ in 0..3 {
            holders.push(hold(p.addr).await);
        }
        wait_in_flight(&p, 6).await;
        let t = Instant::now();
        assert_eq!(get(p.addr, "/", "").await.status, 504);
        assert!(t.elapsed() >= Duration::from_millis(300));
        let s = p.stats_snapshot();
        assert_eq!(s.timeouts_started, 1);
        assert!(s.peak_in_flight >= 7 && s.responses_5xx >= 1, "{s:?}");
    }

    #[tokio::test]
    async fn error_band_injects_503_or_500() {
        let cfg = PortalConfig {
            capacity: 1,
            base_latency: Duration::from_millis(1),
            ..PortalConfig::default()
        };
        let p = start(cfg).await;
        let _holders = (hold(p.addr).await, hold(p.addr).await);
        wait_in_flight(&p, 2).await;
        // Each probe sees n = 3 = 3C: fails with probability ERROR_MAX (0.3^40 chance of no failure).
        let mut failures = 0;
        for _ in 0..40 {
            let r = get(p.addr, "/", "").await;
            assert!(matches!(r.status, 200 | 500 | 503), "{}", r.status);
            if r.status != 200 {
                failures += 1;
                break;
            }
        }
        assert_eq!(failures, 1);
        assert_eq!(p.stats_snapshot().errors_injected, 1);
    }

    #[tokio::test]
    async fn echo_reports_request_and_streaming_digest() {
        let p = start(quick()).await;
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let r = post(p.addr, "/echo?x=1&y=2", "X-Test: 42\r\n", &body).await;
        let v = r.json();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/echo?x=1&y=2");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["body_bytes"], 100_000);
        assert_eq!(v["body_sha256"], hex(&Sha256::digest(&body)));
        assert!(v["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-test", "42"])));
        // chunked request body
        let head = "PUT /echo HTTP/1.1\r\nHost: portal\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = raw(p.addr, head, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            .await
            .json();
        assert_eq!(
            (r["method"].as_str(), r["body_bytes"].as_u64()),
            (Some("PUT"), Some(11))
        );
        assert_eq!(r["body_sha256"], hex(&Sha256::digest(b"hello world")));
    }

    #[tokio::test]
    async fn download_streams_pattern_and_upload_hashes() {
        let p = start(quick()).await;
        let n = 3 * DOWNLOAD_CHUNK + 12_345;
        let r = get(p.addr, &format!("/download?bytes={n}"), "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(r.body.len(), n);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % DOWNLOAD_CHUNK % 251) as u8));
        assert_eq!(get(p.addr, "/download?bytes=0", "").await.body.len(), 0);
        let data = vec![0xA5u8; 150_000];
        let v = post(p.addr, "/upload", "", &data).await.json();
        assert_eq!(
            v,
            serde_json::json!({"bytes": 150_000, "sha256": hex(&Sha256::digest(&data))})
        );
    }

    #[tokio::test]
    async fn claim_releases_and_stats_over_keep_alive() {
        use hyper::client::conn::http1;
        let p = start(quick()).await;
        let stream = TcpStream::connect(p.addr).await.unwrap();
        let (mut tx, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut send = |method: Method, path: &str, cookie: Option<&str>, body: &'static str| {
            let mut b = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "portal");
            if let Some(c) = cookie {
                b = b.header("cookie", c);
            }
            let req = b
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let fut = tx.send_request(req);
            async move {
                let r = fut.await.unwrap();
                let (parts, body) = r.into_parts();
                (parts, body.collect().await.unwrap().to_bytes())
            }
        };
        let (login, _) = send(Method::POST, "/login", None, "user=giulia").await;
        let cookie = login.headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let (form, body) = send(Method::GET, "/claim", Some(&cookie), "").await;
        assert_eq!(form.headers["x-portal-user"], "giulia");
        assert!(String::from_utf8_lossy(&body).contains("action=\"/claim\""));
        let (done, body) = send(
            Method::POST,
            "/claim",
            Some(&cookie),
            "tipo=indennita-600&dichiarazione=on",
        )
        .await;
        assert_eq!(done.status, 200);
        assert_eq!(done.headers["x-anticamera-release"], "1");
        assert_eq!(done.headers["x-portal-user"], "giulia");
        assert!(String::from_utf8_lossy(&body).contains("INPS-DEMO-2020-0000001"));
        let (_, body) = send(Method::GET, "/__portal/stats", None, "").await;
        let s: StatsSnapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (
                s.claims_submitted,
                s.requests_total,
                s.responses_2xx,
                s.peak_in_flight
            ),
            (1, 3, 2, 1)
        );
        // Three answers without error at 1 ms (± 10%) each, within capacity: about 3 ms of
        // useful work (the time they took).
        assert!((2_700..=30_000).contains(&s.work_us), "{}", s.work_us);
        assert!(s.busy_us >= s.work_us, "{s:?}");
        let (_, body) = send(Method::POST, "/__portal/reset", None, "").await;
        let s: StatsSnapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s.claims_submitted, s.requests_total, s.peak_in_flight),
            (0, 0, 0)
        );
        // The load tool's per-second peak, and the slowdown event.
        let (_, body) = send(Method::POST, "/__portal/sample", None, "").await;
        let s: StatsSnapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!((s.window_peak_in_flight, s.slowdown_pct), (0, 100));
        let (bad, _) = send(Method::POST, "/__portal/slowdown?factor=0", None, "").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let (ok, body) = send(Method::POST, "/__portal/slowdown?factor=4", None, "").await;
        assert_eq!(ok.status, StatusCode::OK);
        let s: StatsSnapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!(s.slowdown_pct, 400);
    }

    #[test]
    fn load_plan_is_monotonic_and_banded() {
        let base = Duration::from_millis(20);
        let c = 10;
        assert_eq!(
            load_plan(1, c, base),
            LoadPlan {
                latency: base,
                error_probability: 0.0,
                hang: false
            }
        );
        assert_eq!(load_plan(c, c, base).latency, base);
        let mut prev = load_plan(1, c, base);
        for n in 2..=3 * c {
            let p = load_plan(n, c, base);
            assert!(
                !p.hang
                    && p.latency >= prev.latency
                    && p.error_probability >= prev.error_probability
            );
            assert!(p.error_probability <= ERROR_MAX);
            assert_eq!(p.error_probability == 0.0, n <= 2 * c, "n={n}");
            prev = p;
        }
        assert!(load_plan(c + 1, c, base).latency >= base * 2);
        assert_eq!(load_plan(2 * c, c, base).latency, base * 8);
        assert!((load_plan(3 * c, c, base).error_probability - ERROR_MAX).abs() < 1e-9);
        assert!(load_plan(3 * c + 1, c, base).hang);
        assert!(load_plan(5, 0, base).hang, "capacity 0 is treated as 1");
    }

    #[test]
    fn fake_identity_is_deterministic_and_iban_checks() {
        let a = fake_identity("alice");
        assert_eq!(a, fake_identity("alice"));
        assert_ne!(a.fiscal_code, fake_identity("alice2").fiscal_code);
        assert_eq!(a.fiscal_code.len(), 16);
        assert!(a.fiscal_code.contains("Z999"));
        assert!(a.iban.starts_with("IT") && a.iban.len() == 27 && a.iban[5..].contains("99999"));
        let rearranged = format!("{}{}", &a.iban[4..], &a.iban[..4]);
        let digits: String = rearranged
            .chars()
            .map(|c| c.to_digit(36).unwrap().to_string())
            .collect();
        let rem = digits
            .bytes()
            .fold(0u32, |acc, d| (acc * 10 + u32::from(d - b'0')) % 97);
        assert_eq!(rem, 1, "IBAN check digits of {}", a.iban);
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_value(b"a=1&user=mario+rossi%21", "user").as_deref(),
            Some("mario rossi!")
        );
        assert_eq!(form_value(b"user", "user").as_deref(), Some(""));
        assert_eq!(form_value(b"user=%2", "user").as_deref(), Some("%2"));
        assert_eq!(form_value(b"users=x", "user"), None);
    }

    #[test]
    fn config_from_toml_and_validation() {
        let cfg: PortalConfig =
            toml::from_str("capacity = 5\nbase_latency = \"250ms\"\nfault_mode = true").unwrap();
        assert_eq!(
            (cfg.capacity, cfg.base_latency, cfg.fault_mode),
            (5, Duration::from_millis(250), true)
        );
        assert_eq!(cfg.hang_duration, Duration::from_secs(30));
        assert!(toml::from_str::<PortalConfig>("capacityy = 5").is_err());
        assert!(cfg.validate().is_ok());
        let bad = PortalConfig {
            capacity: 0,
            user_header: "bad header".into(),
            session_cookie: "a=b".into(),
            ..cfg
        };
        let keys: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["capacity", "user_header", "session_cookie"]);
    }
}
