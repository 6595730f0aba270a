//! `surge`: the claim-day surge tool. It replays 1 April 2020 against the demo portal, through
//! anticamera, straight at the portal, or through another front (nginx), and measures what the
//! claim day is judged on:
//!
//! * the portal's concurrency never exceeds its capacity (`GET PORTAL/__portal/stats`, reset with
//!   `POST PORTAL/__portal/reset` at start, sampled every 250 ms during the run);
//! * goodput: completed user journeys per second and successful portal page responses per second;
//! * latency of admitted users' requests (every request that reached the portal: not a
//!   waiting-room answer, not a front refusal such as nginx's 503 or a 429);
//! * errors by status;
//! * session isolation: every personal response is checked against its requester (the
//!   `x-portal-user` header and the `data-user="NAME"` / `"user":"NAME"` body marker). A
//!   response naming another user is a LEAK. 502 answers mentioning "leak" (anticamera's leak
//!   guard refusing a cross-user response) are counted separately.
//!
//! Each virtual user (VU) is a task with its own cookie jar and `User-Agent: surge-vu-N`:
//! `GET /` → `POST /login user=vuN` → `GET /account` (even VUs, HTML) or `GET /api/account`
//! (odd VUs, JSON) → isolation check → `GET /claim` → `POST /claim amount=600` → done. Whenever a
//! step meets the waiting room (normally `/account` first), the VU polls
//! `/.anticamera/status?gate=G&wait=N` (a long poll of `retry_after_seconds`) until admitted, then
//! retries the step. 5xx answers, timeouts and transport errors are retried up to
//! `--retries` times with exponential backoff; then the journey fails at that step.
//!
//! ```text
//! surge --target http://127.0.0.1:8080 --portal http://127.0.0.1:9000 --users 1000 \
//!       --ramp 5s --duration 30s --max-wait 60s --capacity 50 --mode proxy --json-out r.json
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE, SET_COOKIE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Largest response body read (the demo portal's pages are a few KiB).
const MAX_BODY: usize = 1 << 20;
/// Interval of the portal stats sampler.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Leak examples kept in the report.
const MAX_LEAK_EXAMPLES: usize = 10;

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

/// What is in front of the portal (a label for the report; only `proxy` expects a waiting room,
/// but every mode understands one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Straight at the portal.
    Direct,
    /// Through anticamera.
    Proxy,
    /// Through nginx (limit_req / limit_conn).
    Nginx,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Proxy => "proxy",
            Mode::Nginx => "nginx",
        }
    }
}

/// Replays a claim-day surge of virtual users against the (demo) portal and reports capacity,
/// goodput, latency, errors and session isolation.
#[derive(Debug, Parser)]
#[command(name = "surge", version)]
struct Args {
    /// Where users connect: anticamera, nginx, or the portal itself.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The demo portal itself, for `/__portal/stats` and `/__portal/reset` (omit to skip).
    #[arg(long)]
    portal: Option<String>,
    /// The portal's capacity C (requests in flight it serves at nominal latency): the report
    /// checks the peak against it.
    #[arg(long)]
    capacity: Option<usize>,
    /// Number of virtual users.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Arrival rate: `200/s`, `6000/m` or `200` (per second).
    #[arg(long, value_parser = parse_rate, conflicts_with = "ramp")]
    arrival_rate: Option<f64>,
    /// All users arrive evenly within this time (`10s`, `500ms`). Default: 5s.
    #[arg(long, value_parser = parse_duration)]
    ramp: Option<Duration>,
    /// Hard limit of the run from the first arrival; users not done then are "unfinished".
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// A user gives up after waiting this long in the waiting room (in total).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_wait: Duration,
    /// Client-side timeout of one request (head and body).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Retries of a step after a 5xx, a timeout or a transport error.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Pause between the steps of a journey (reading time).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    think: Duration,
    /// Waiting-room gate polled at `/.anticamera/status?gate=NAME`.
    #[arg(long, default_value = "services")]
    gate: String,
    /// Prefix of anticamera's cookies (a Set-Cookie with it on a 503 marks a queue answer).
    #[arg(long, default_value = "anticamera_")]
    cookie_prefix: String,
    /// Portal header naming the owner of a personal response.
    #[arg(long, default_value = "x-portal-user")]
    user_header: String,
    /// Portal header ending the session (anticamera should strip it).
    #[arg(long, default_value = "x-anticamera-release")]
    release_header: String,
    /// Label of the run: direct, proxy or nginx.
    #[arg(long, value_enum, default_value_t = Mode::Proxy)]
    mode: Mode,
    /// Write every figure as one JSON object to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Exit 1 if a leak was seen or the portal's peak exceeded `--capacity`.
    #[arg(long)]
    strict: bool,
    /// No human summary (only the JSON file, if any).
    #[arg(long)]
    quiet: bool,
    /// Print a Markdown table comparing these `--json-out` reports side by side, and exit
    /// (no load is sent).
    #[arg(long, num_args = 1.., value_name = "REPORT.json")]
    table: Vec<PathBuf>,
}

/// Parses `200/s`, `6000/m`, `10/ms` or a bare number (per second).
fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, per) = match s.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a rate like 200/s"))?;
    let unit_secs = match per {
        "s" | "sec" | "1s" => 1.0,
        "m" | "min" => 60.0,
        "ms" => 0.001,
        other => return Err(format!("`{other}`: rate unit must be s, m or ms")),
    };
    let rate = n / unit_secs;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("`{s}`: rate must be positive"));
    }
    Ok(rate)
}

/// Parses `250ms`, `10s`, `1.5s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 10s or 250ms"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("`{other}`: duration unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}`: duration must be non-negative"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ------------------------------------------------------------------------------------------------
// Cookie jar, isolation check, classification (pure, unit-tested)
// ------------------------------------------------------------------------------------------------

/// A minimal cookie jar: every cookie is sent to every path of the one target host.
#[derive(Debug, Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    /// Applies one `Set-Cookie` value: `name=value` is stored, `Max-Age<=0` deletes.
    fn apply(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let delete = parts.any(|a| {
            let a = a.trim();
            a.len() > 8
                && a[..8].eq_ignore_ascii_case("max-age=")
                && a[8..].trim().parse::<i64>().is_ok_and(|n| n <= 0)
        });
        self.0.retain(|(n, _)| n != name);
        if !delete {
            self.0.push((name.to_string(), value.trim().to_string()));
        }
    }

    /// Applies every `Set-Cookie` of a response.
    fn apply_all(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            if let Ok(s) = v.to_str() {
                self.apply(s);
            }
        }
    }

    /// The `Cookie` header value, if any cookie is held.
    fn header(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        Some(
            self.0
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The outcome of the isolation check of one personal response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Isolation {
    /// Header and body name the requester.
    Ok,
    /// The owner header names the requester, but the body marker is missing.
    Incomplete,
    /// Names nobody: cannot be checked.
    Unverifiable,
    /// Names someone else (header or body): another user's data.
    Leak {
        header: Option<String>,
        body: Vec<String>,
    },
}

/// Every `data-user="..."` value in an HTML body.
fn html_users(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("data-user=\"") {
        rest = &rest[i + "data-user=\"".len()..];
        match rest.find('"') {
            Some(j) => {
                out.push(rest[..j].to_string());
                rest = &rest[j..];
            }
            None => break,
        }
    }
    out
}

/// The `"user"` of a JSON body (top level).
fn json_user(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("user")?
        .as_str()
        .map(str::to_string)
}

/// Checks that a personal response belongs to `expected`.
fn check_isolation(expected: &str, owner_header: Option<&str>, body: &[u8]) -> Isolation {
    let mut body_users = html_users(&String::from_utf8_lossy(body));
    if let Some(u) = json_user(body) {
        body_users.push(u);
    }
    let header_bad = owner_header.is_some_and(|h| h != expected);
    let body_bad = body_users.iter().any(|u| u != expected);
    if header_bad || body_bad {
        return Isolation::Leak {
            header: owner_header.map(str::to_string),
            body: body_users,
        };
    }
    match (owner_header.is_some(), !body_users.is_empty()) {
        // The body names the requester (and nobody else): through anticamera the owner header
        // is stripped by the leak guard, so the body is what counts.
        (_, true) => Isolation::Ok,
        (false, false) => Isolation::Unverifiable,
        (true, false) => Isolation::Incomplete,
    }
}

/// What a response was, from the point of view of the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Answered by the portal (any status), or a gateway error after reaching it (502/504).
    Portal,
    /// A waiting-room answer (503 queue/closed page or JSON).
    Queue,
    /// A waiting-room status poll.
    Poll,
    /// Refused by the front without reaching the portal (429, nginx 503...).
    Refused,
    /// A 502 from the leak guard (a cross-user response refused by the proxy).
    LeakGuard,
    /// Client-side timeout.
    Timeout,
    /// Connection refused/reset or protocol error.
    Transport,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Portal => "portal",
            Class::Queue => "queue",
            Class::Poll => "poll",
            Class::Refused => "refused",
            Class::LeakGuard => "leak_guard",
            Class::Timeout => "timeout",
            Class::Transport => "transport",
        }
    }
}

/// Whether a response is anticamera's waiting room (queue or closed answer).
fn is_waiting_room(status: u16, headers: &HeaderMap, body: &[u8], cookie_prefix: &str) -> bool {
    if status != 503 {
        return false;
    }
    let sets_own_cookie = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim_start().starts_with(cookie_prefix));
    if sets_own_cookie {
        return true;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if v.get("anticamera").is_some()
            && matches!(
                v.get("state").and_then(Value::as_str),
                Some("waiting" | "prequeue" | "closed" | "admitted")
            )
        {
            return true;
        }
    }
    let text = String::from_utf8_lossy(body);
    text.contains("data-anticamera")
}

/// Whether a body mentions the leak guard.
fn mentions_leak(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .to_ascii_lowercase()
        .contains("leak")
}

/// Classifies a (non-poll) response.
fn classify(status: u16, headers: &HeaderMap, body: &[u8], cookie_prefix: &str) -> Class {
    if is_waiting_room(status, headers, body, cookie_prefix) {
        return Class::Queue;
    }
    if status == 502 && mentions_leak(body) {
        return Class::LeakGuard;
    }
    if status == 429 {
        return Class::Refused;
    }
    if status == 503 {
        // The portal's own 503 page is rendered in its layout; any other 503 (nginx's
        // limit_req/limit_conn page, a proxy's shedding answer) never reached the portal.
        let text = String::from_utf8_lossy(body);
        if !text.contains("Portale Previdenza") {
            return Class::Refused;
        }
    }
    Class::Portal
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `{count, p50, p90, p99, max}` in milliseconds of microsecond samples.
fn summary_ms(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    let ms = |v: Option<u64>| v.map(|v| (v as f64 / 1000.0 * 100.0).round() / 100.0);
    json!({
        "count": us.len(),
        "p50": ms(percentile(&us, 50.0)),
        "p90": ms(percentile(&us, 90.0)),
        "p99": ms(percentile(&us, 99.0)),
        "max": ms(us.last().copied()),
    })
}

// ------------------------------------------------------------------------------------------------
// Recording
// ------------------------------------------------------------------------------------------------

/// A journey step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Home,
    Login,
    Account,
    Status,
    ClaimForm,
    ClaimSubmit,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Home => "home",
            Step::Login => "login",
            Step::Account => "account",
            Step::Status => "status_poll",
            Step::ClaimForm => "claim_form",
            Step::ClaimSubmit => "claim_submit",
        }
    }
}

/// One request as seen by a VU.
#[derive(Debug, Clone, Copy)]
struct Rec {
    /// Completion time, ms since the start of the run.
    t_ms: u64,
    step: Step,
    /// HTTP status, 0 for timeouts and transport errors.
    status: u16,
    class: Class,
    latency_us: u64,
}

/// A leak seen by a VU.
#[derive(Debug, Clone)]
struct LeakExample {
    vu: usize,
    path: &'static str,
    header: Option<String>,
    body: Vec<String>,
}

/// VU states (for the unfinished count when the run is cut at `--duration`).
mod vu_state {
    pub const PENDING: u8 = 0;
    pub const ACTIVE: u8 = 1;
    pub const WAITING: u8 = 2;
    pub const DONE: u8 = 3;
    pub const FAILED: u8 = 4;
    pub const GAVE_UP: u8 = 5;
}

/// Everything the VUs report, behind one mutex (a few thousand records per second at most).
#[derive(Debug, Default)]
struct Recorder {
    recs: Vec<Rec>,
    /// (completion time ms, journey duration us, time spent waiting in the queue us).
    journeys: Vec<(u64, u64, u64)>,
    /// Failed journeys by `step:reason`.
    failures: BTreeMap<String, u64>,
    iso_checked: u64,
    iso_checked_by_path: BTreeMap<&'static str, u64>,
    iso_ok: u64,
    iso_incomplete: u64,
    iso_unverifiable: u64,
    leaks: u64,
    leaks_by_path: BTreeMap<&'static str, u64>,
    leak_examples: Vec<LeakExample>,
    leak_journeys: u64,
    release_header_seen: u64,
    pass_cleared: u64,
    queued_users: u64,
    /// Total queue time of users admitted after waiting (us).
    queue_waits: Vec<u64>,
    poll_errors: u64,
}

/// Shared state of a run.
struct Ctx {
    args: Args,
    target: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    start: Instant,
    deadline: Instant,
    rec: Mutex<Recorder>,
    states: Vec<AtomicU8>,
}

impl Ctx {
    fn record(&self, r: Rec) {
        lock(&self.rec).recs.push(r);
    }
    fn ms_now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

/// A response, fully read.
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// Why a request produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetError {
    Timeout,
    Transport,
}

fn join_url(base: &Uri, path: &str) -> anyhow::Result<Uri> {
    let s = format!("{}{path}", base.to_string().trim_end_matches('/'));
    s.parse().with_context(|| format!("bad URL {s}"))
}

/// Sends one request with a deadline on head and body.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Resp, NetError> {
    let fut = async {
        let resp = client.request(req).await.map_err(|_| NetError::Transport)?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| NetError::Transport)?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout),
    }
}

// ------------------------------------------------------------------------------------------------
// The virtual user
// ------------------------------------------------------------------------------------------------

/// Why a journey ended early.
#[derive(Debug)]
enum Stop {
    /// Failed at a step (after retries), with a reason.
    Failed(Step, String),
    /// Waited longer than `--max-wait` in the queue.
    GaveUp,
}

struct Vu<'a> {
    ctx: &'a Ctx,
    id: usize,
    user: String,
    ua: HeaderValue,
    jar: Jar,
    /// HTML (`/account`) or JSON (`/api/account`) flavour.
    json: bool,
    /// Time spent in the waiting room so far.
    waited: Duration,
    was_queued: bool,
    leaked: bool,
}

impl<'a> Vu<'a> {
    fn new(ctx: &'a Ctx, id: usize) -> Self {
        Vu {
            ctx,
            id,
            user: format!("vu{id}"),
            ua: HeaderValue::from_str(&format!("surge-vu-{id}"))
                .unwrap_or(HeaderValue::from_static("surge-vu")),
            jar: Jar::default(),
            json: id % 2 == 1,
            waited: Duration::ZERO,
            was_queued: false,
            leaked: false,
        }
    }

    fn set_state(&self, s: u8) {
        if let Some(a) = self.ctx.states.get(self.id) {
            a.store(s, Ordering::Relaxed);
        }
    }

    fn accept(&self) -> &'static str {
        if self.json {
            "application/json"
        } else {
            "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
        }
    }

    /// One request; the jar is updated from the answer. Records nothing.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        form: Option<&'static str>,
    ) -> anyhow::Result<(Result<Resp, NetError>, Duration)> {
        let uri = join_url(&self.ctx.target, path)?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(USER_AGENT, self.ua.clone())
            .header(ACCEPT, accept);
        if let Some(c) = self.jar.header() {
            b = b.header(COOKIE, c);
        }
        let body = match form {
            Some(f) => {
                b = b.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(f.replace("{user}", &self.user)))
            }
            None => Full::new(Bytes::new()),
        };
        let req = b.body(body)?;
        let t0 = Instant::now();
        let r = send(&self.ctx.client, req, self.ctx.args.request_timeout).await;
        let lat = t0.elapsed();
        if let Ok(resp) = &r {
            self.jar.apply_all(&resp.headers);
        }
        Ok((r, lat))
    }

    /// A step with retries: returns a portal answer (< 500, or a queue answer), or fails after
    /// `--retries` retries of 5xx / refusals / timeouts / transport errors.
    async fn step(
        &mut self,
        step: Step,
        method: Method,
        path: &'static str,
        accept: &str,
        form: Option<&'static str>,
    ) -> anyhow::Result<Result<(Resp, Class), Stop>> {
        let mut attempt = 0u32;
        loop {
            let (r, lat) = self.request(method.clone(), path, accept, form).await?;
            let (status, class) = match &r {
                Ok(resp) => (
                    resp.status,
                    classify(
                        resp.status,
                        &resp.headers,
                        &resp.body,
                        &self.ctx.args.cookie_prefix,
                    ),
                ),
                Err(NetError::Timeout) => (0, Class::Timeout),
                Err(NetError::Transport) => (0, Class::Transport),
            };
            self.ctx.record(Rec {
                t_ms: self.ctx.ms_now(),
                step,
                status,
                class,
                latency_us: lat.as_micros() as u64,
            });
            let retry_after = r.as_ref().ok().and_then(|resp| {
                resp.headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if let Ok(resp) = r {
                if class == Class::Queue || (status < 500 && class == Class::Portal) {
                    return Ok(Ok((resp, class)));
                }
            }
            if attempt >= self.ctx.args.retries {
                let why = match class {
                    Class::Timeout => "timeout".to_string(),
                    Class::Transport => "transport".to_string(),
                    Class::LeakGuard => "leak_guard_502".to_string(),
                    _ => status.to_string(),
                };
                return Ok(Err(Stop::Failed(step, why)));
            }
            // Exponential backoff from 500 ms, at least a short Retry-After, ±20% jitter.
            let base = Duration::from_millis(500 * (1u64 << attempt.min(6)));
            let base = match retry_after {
                Some(s) if s <= 10 => base.max(Duration::from_secs(s)),
                _ => base,
            };
            let j = rand::thread_rng().gen_range(0.8..1.2);
            tokio::time::sleep(base.mul_f64(j)).await;
            attempt += 1;
        }
    }

    /// A gated step: waits in the waiting room whenever the answer is a queue page, then
    /// retries, until the portal answers or the user gives up.
    async fn gated(
        &mut self,
        step: Step,
        method: Method,
        path: &'static str,
        accept: &str,
        form: Option<&'static str>,
    ) -> anyhow::Result<Result<Resp, Stop>> {
        loop {
            let (resp, class) = match self.step(step, method.clone(), path, accept, form).await? {
                Ok(r) => r,
                Err(stop) => return Ok(Err(stop)),
            };
            if class != Class::Queue {
                return Ok(Ok(resp));
            }
            if !self.was_queued {
                self.was_queued = true;
                lock(&self.ctx.rec).queued_users += 1;
            }
            if let Err(stop) = self.wait_in_queue(&resp).await? {
                return Ok(Err(stop));
            }
        }
    }

    /// Polls the status endpoint, honouring `retry_after_seconds` (plus jitter), until the
    /// ticket is admitted (or the status says there is no ticket: the page is retried).
    async fn wait_in_queue(&mut self, first: &Resp) -> anyhow::Result<Result<(), Stop>> {
        self.set_state(vu_state::WAITING);
        let mut retry = retry_after_of(first).unwrap_or(1.0);
        let outcome = loop {
            if self.waited >= self.ctx.args.max_wait {
                break Err(Stop::GaveUp);
            }
            let left = self.ctx.args.max_wait - self.waited;
            // Long poll: the proxy holds the answer up to `wait` seconds and answers as soon as
            // the ticket is admitted; a short jittered pause between polls.
            let wait = retry.max(1.0).ceil().min(20.0) as u64;
            let path = format!(
                "/.anticamera/status?gate={}&wait={wait}",
                self.ctx.args.gate
            );
            let pause = Duration::from_secs_f64(rand::thread_rng().gen_range(0.05..0.2)).min(left);
            tokio::time::sleep(pause).await;
            self.waited += pause;
            let (r, lat) = self
                .request(Method::GET, &path, "application/json", None)
                .await?;
            self.waited += Duration::from_secs_f64(lat.as_secs_f64());
            let status = r.as_ref().map(|r| r.status).unwrap_or(0);
            let class = match &r {
                Ok(_) => Class::Poll,
                Err(NetError::Timeout) => Class::Timeout,
                Err(NetError::Transport) => Class::Transport,
            };
            self.ctx.record(Rec {
                t_ms: self.ctx.ms_now(),
                step: Step::Status,
                status,
                class,
                latency_us: lat.as_micros() as u64,
            });
            self.waited += lat;
            match r {
                Ok(resp) if resp.status == 404 => break Ok(()),
                Ok(resp) => {
                    let v: Option<Value> = serde_json::from_slice(&resp.body).ok();
                    match v
                        .as_ref()
                        .and_then(|v| v.get("state"))
                        .and_then(Value::as_str)
                    {
                        Some("admitted") => break Ok(()),
                        Some(_) => {
                            retry = v
                                .as_ref()
                                .and_then(|v| v.get("retry_after_seconds"))
                                .and_then(Value::as_f64)
                                .or_else(|| retry_after_of(&resp))
                                .unwrap_or(1.0);
                        }
                        None => {
                            lock(&self.ctx.rec).poll_errors += 1;
                            retry = 2.0;
                        }
                    }
                }
                Err(_) => {
                    lock(&self.ctx.rec).poll_errors += 1;
                    retry = 2.0;
                }
            }
        };
        self.set_state(vu_state::ACTIVE);
        Ok(outcome)
    }

    /// Checks a personal response and records the result.
    fn check(&mut self, path: &'static str, resp: &Resp) {
        let owner = resp
            .headers
            .get(self.ctx.args.user_header.as_str())
            .and_then(|v| v.to_str().ok());
        let iso = check_isolation(&self.user, owner, &resp.body);
        let mut rec = lock(&self.ctx.rec);
        rec.iso_checked += 1;
        *rec.iso_checked_by_path.entry(path).or_default() += 1;
        match iso {
            Isolation::Ok => rec.iso_ok += 1,
            Isolation::Incomplete => rec.iso_incomplete += 1,
            Isolation::Unverifiable => rec.iso_unverifiable += 1,
            Isolation::Leak { header, body } => {
                rec.leaks += 1;
                *rec.leaks_by_path.entry(path).or_default() += 1;
                if rec.leak_examples.len() < MAX_LEAK_EXAMPLES {
                    rec.leak_examples.push(LeakExample {
                        vu: self.id,
                        path,
                        header,
                        body,
                    });
                }
                if !self.leaked {
                    self.leaked = true;
                    rec.leak_journeys += 1;
                }
            }
        }
    }

    async fn pause(&self) {
        if !self.ctx.args.think.is_zero() {
            tokio::time::sleep(self.ctx.args.think).await;
        }
    }

    /// The whole journey.
    async fn journey(&mut self) -> anyhow::Result<Result<(), Stop>> {
        let html = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";
        let ok = |r: &Resp| (200..400).contains(&r.status);
        let fail = |step: Step, r: &Resp| Stop::Failed(step, r.status.to_string());

        // 1. The information page (open path; any step may meet a waiting room if the
        //    operator gates it, so every step goes through `gated`).
        match self.gated(Step::Home, Method::GET, "/", html, None).await? {
            Ok(r) if ok(&r) => {}
            Ok(r) => return Ok(Err(fail(Step::Home, &r))),
            Err(s) => return Ok(Err(s)),
        }
        self.pause().await;

        // 2. Login: the portal sets its session cookie.
        match self
            .gated(
                Step::Login,
                Method::POST,
                "/login",
                html,
                Some("user={user}"),
            )
            .await?
        {
            Ok(r) if ok(&r) && self.jar.get("portal_session").is_some() => {}
            Ok(r) => return Ok(Err(fail(Step::Login, &r))),
            Err(s) => return Ok(Err(s)),
        }
        self.pause().await;

        // 3. The personal page, through the waiting room.
        let (path, accept) = if self.json {
            ("/api/account", "application/json")
        } else {
            ("/account", self.accept())
        };
        let r = match self
            .gated(Step::Account, Method::GET, path, accept, None)
            .await?
        {
            Ok(r) => r,
            Err(s) => return Ok(Err(s)),
        };
        if r.status != 200 {
            return Ok(Err(fail(Step::Account, &r)));
        }
        self.check(path, &r);
        self.pause().await;

        // 4. The claim form.
        let accept = self.accept();
        let r = match self
            .gated(Step::ClaimForm, Method::GET, "/claim", accept, None)
            .await?
        {
            Ok(r) => r,
            Err(s) => return Ok(Err(s)),
        };
        if r.status != 200 {
            return Ok(Err(fail(Step::ClaimForm, &r)));
        }
        self.check("/claim", &r);
        self.pause().await;

        // 5. Submit: the portal answers with the release header (anticamera consumes it).
        let r = match self
            .gated(
                Step::ClaimSubmit,
                Method::POST,
                "/claim",
                accept,
                Some("amount=600"),
            )
            .await?
        {
            Ok(r) => r,
            Err(s) => return Ok(Err(s)),
        };
        if r.status != 200 {
            return Ok(Err(fail(Step::ClaimSubmit, &r)));
        }
        self.check("/claim (POST)", &r);
        let released_header = r
            .headers
            .contains_key(self.ctx.args.release_header.as_str());
        let cleared = r
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.starts_with(&self.ctx.args.cookie_prefix)
                    && v.to_ascii_lowercase().contains("max-age=0")
            });
        let mut rec = lock(&self.ctx.rec);
        rec.release_header_seen += u64::from(released_header);
        rec.pass_cleared += u64::from(cleared);
        Ok(Ok(()))
    }
}

/// `retry_after_seconds` of a JSON queue answer, else the `Retry-After` header.
fn retry_after_of(r: &Resp) -> Option<f64> {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("retry_after_seconds").and_then(Value::as_f64))
        .or_else(|| {
            r.headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
}

async fn run_vu(ctx: Arc<Ctx>, id: usize, at: Duration) {
    tokio::time::sleep_until(ctx.start + at).await;
    let mut vu = Vu::new(&ctx, id);
    vu.set_state(vu_state::ACTIVE);
    let t0 = Instant::now();
    let outcome = vu.journey().await;
    let state = match outcome {
        Ok(Ok(())) => {
            let q = if vu.was_queued {
                vu.waited.as_micros() as u64
            } else {
                0
            };
            let mut rec = lock(&ctx.rec);
            rec.journeys
                .push((ctx.ms_now(), t0.elapsed().as_micros() as u64, q));
            if vu.was_queued {
                rec.queue_waits.push(q);
            }
            vu_state::DONE
        }
        Ok(Err(Stop::GaveUp)) => {
            *lock(&ctx.rec)
                .failures
                .entry("gave_up_waiting".into())
                .or_default() += 1;
            vu_state::GAVE_UP
        }
        Ok(Err(Stop::Failed(step, why))) => {
            *lock(&ctx.rec)
                .failures
                .entry(format!("{}:{why}", step.as_str()))
                .or_default() += 1;
            vu_state::FAILED
        }
        Err(e) => {
            *lock(&ctx.rec)
                .failures
                .entry(format!("internal:{e}"))
                .or_default() += 1;
            vu_state::FAILED
        }
    };
    vu.set_state(state);
}

// ------------------------------------------------------------------------------------------------
// Portal stats
// ------------------------------------------------------------------------------------------------

async fn portal_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    portal: &Uri,
    method: Method,
    path: &str,
) -> anyhow::Result<Value> {
    let req = Request::builder()
        .method(method)
        .uri(join_url(portal, path)?)
        .body(Full::new(Bytes::new()))?;
    let r = send(client, req, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("portal {path}: {e:?}"))?;
    if r.status != 200 {
        bail!("portal {path}: status {}", r.status);
    }
    Ok(serde_json::from_slice(&r.body)?)
}

/// Samples `/__portal/stats` until dropped: (t ms, in_flight, requests_total).
async fn sampler(
    client: Client<HttpConnector, Full<Bytes>>,
    portal: Uri,
    start: Instant,
    out: Arc<Mutex<Vec<(u64, u64, u64)>>>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        if let Ok(v) = portal_call(&client, &portal, Method::GET, "/__portal/stats").await {
            let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            lock(&out).push((
                start.elapsed().as_millis() as u64,
                g("in_flight"),
                g("requests_total"),
            ));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Main
// ------------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.table.is_empty() {
        let mut reports = Vec::new();
        for p in &args.table {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            reports.push(serde_json::from_slice::<Value>(&text)?);
        }
        print!("{}", markdown_table(&reports));
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(run(args))?;
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    let target: Uri = args.target.parse().context("--target")?;
    let portal: Option<Uri> = match &args.portal {
        Some(p) => Some(p.parse().context("--portal")?),
        None => None,
    };
    let interval = match (args.arrival_rate, args.ramp) {
        (Some(rate), _) => Duration::from_secs_f64(1.0 / rate),
        (None, ramp) => ramp.unwrap_or(Duration::from_secs(5)) / args.users as u32,
    };
    let ramp = interval * (args.users as u32).saturating_sub(1);

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);

    // Portal stats before (reset first).
    let before = match &portal {
        Some(p) => {
            portal_call(&client, p, Method::POST, "/__portal/reset")
                .await
                .context("resetting the portal stats (is --portal the demo portal?)")?;
            Some(portal_call(&client, p, Method::GET, "/__portal/stats").await?)
        }
        None => None,
    };

    let start = Instant::now() + Duration::from_millis(50);
    let ctx = Arc::new(Ctx {
        target,
        client: client.clone(),
        start,
        deadline: start + args.duration,
        rec: Mutex::new(Recorder::default()),
        states: (0..args.users)
            .map(|_| AtomicU8::new(vu_state::PENDING))
            .collect(),
        args,
    });
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler_task = portal
        .clone()
        .map(|p| tokio::spawn(sampler(client.clone(), p, start, samples.clone())));

    let mut set = tokio::task::JoinSet::new();
    for id in 0..ctx.args.users {
        set.spawn(run_vu(ctx.clone(), id, interval * id as u32));
    }
    let cut = tokio::select! {
        _ = async { while set.join_next().await.is_some() {} } => false,
        _ = tokio::time::sleep_until(ctx.deadline) => true,
    };
    let elapsed = start.elapsed();
    set.abort_all();
    while set.join_next().await.is_some() {}
    if let Some(t) = sampler_task {
        t.abort();
    }
    let after = match &portal {
        Some(p) => portal_call(&client, p, Method::GET, "/__portal/stats")
            .await
            .ok(),
        None => None,
    };

    let report = build_report(&ctx, elapsed, cut, ramp, before, after, &lock(&samples));
    if !ctx.args.quiet {
        print_summary(&report);
    }
    if let Some(path) = &ctx.args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let leaks = report["isolation"]["leaks"].as_u64().unwrap_or(0)
        + report["portal"]["after"]["leaks_served"]
            .as_u64()
            .unwrap_or(0);
    let over = report["portal"]["within_capacity"] == json!(false);
    Ok(if ctx.args.strict && (leaks > 0 || over) {
        1
    } else {
        0
    })
}

fn build_report(
    ctx: &Ctx,
    elapsed: Duration,
    cut: bool,
    ramp: Duration,
    before: Option<Value>,
    after: Option<Value>,
    samples: &[(u64, u64, u64)],
) -> Value {
    let a = &ctx.args;
    let rec = lock(&ctx.rec);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let count = |s: u8| {
        ctx.states
            .iter()
            .filter(|x| x.load(Ordering::Relaxed) == s)
            .count()
    };
    let completed = rec.journeys.len();

    // Requests by class, status, step.
    let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_step: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut step_lat: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut admitted = Vec::new();
    let mut admitted_ok = Vec::new();
    let mut portal_ok = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rec.recs {
        *by_class.entry(r.class.as_str()).or_default() += 1;
        let key = match r.class {
            Class::Queue => "503-queue".to_string(),
            Class::Poll => format!("{}-poll", r.status),
            Class::Timeout => "timeout".to_string(),
            Class::Transport => "transport".to_string(),
            Class::LeakGuard => "502-leak-guard".to_string(),
            Class::Refused => format!("{}-refused", r.status),
            Class::Portal => r.status.to_string(),
        };
        *by_status.entry(key.clone()).or_default() += 1;
        *by_step
            .entry(r.step.as_str())
            .or_default()
            .entry(key.clone())
            .or_default() += 1;
        let is_err = match r.class {
            Class::Portal => r.status >= 500,
            Class::Refused | Class::LeakGuard | Class::Timeout | Class::Transport => true,
            Class::Queue | Class::Poll => false,
        };
        if is_err {
            *errors.entry(key).or_default() += 1;
        }
        if matches!(
            r.class,
            Class::Portal | Class::LeakGuard | Class::Timeout | Class::Transport
        ) {
            admitted.push(r.latency_us);
            step_lat
                .entry(r.step.as_str())
                .or_default()
                .push(r.latency_us);
            if r.class == Class::Portal && (200..400).contains(&r.status) {
                admitted_ok.push(r.latency_us);
                portal_ok += 1;
            }
        }
    }
    let polls: Vec<u64> = rec
        .recs
        .iter()
        .filter(|r| r.step == Step::Status)
        .map(|r| r.latency_us)
        .collect();
    let journey_us: Vec<u64> = rec.journeys.iter().map(|j| j.1).collect();

    // Timeline, one bucket per second.
    let n_buckets = (elapsed.as_millis() as u64 / 1000 + 1) as usize;
    let mut tl: Vec<BTreeMap<&str, u64>> = vec![BTreeMap::new(); n_buckets];
    let bucket = |t: u64| ((t / 1000) as usize).min(n_buckets - 1);
    for r in &rec.recs {
        let b = &mut tl[bucket(r.t_ms)];
        let k = match r.class {
            Class::Portal if (200..400).contains(&r.status) => "portal_ok",
            Class::Portal if r.status >= 500 => "errors",
            Class::Portal => "portal_4xx",
            Class::Queue => "queue_answers",
            Class::Poll => "polls",
            _ => "errors",
        };
        *b.entry(k).or_default() += 1;
    }
    for j in &rec.journeys {
        *tl[bucket(j.0)].entry("completed").or_default() += 1;
    }
    for s in samples {
        let e = tl[bucket(s.0)].entry("portal_in_flight_max").or_default();
        *e = (*e).max(s.1);
    }
    let timeline: Vec<Value> = tl
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut v = json!({ "second": i });
            for (k, n) in m {
                v[k] = json!(n);
            }
            v
        })
        .collect();

    let sampled_max = samples.iter().map(|s| s.1).max();
    let peak = after
        .as_ref()
        .and_then(|v| v.get("peak_in_flight"))
        .and_then(Value::as_u64);
    let within = match (peak, a.capacity) {
        (Some(p), Some(c)) => json!(p <= c as u64),
        _ => Value::Null,
    };
    let arrival = match (a.arrival_rate, a.ramp) {
        (Some(r), _) => json!({ "rate_per_s": r, "ramp_s": ramp.as_secs_f64() }),
        _ => json!({ "rate_per_s": if ramp.is_zero() { Value::Null } else {
            json!((a.users.saturating_sub(1)) as f64 / ramp.as_secs_f64()) },
            "ramp_s": ramp.as_secs_f64() }),
    };
    let leak_examples: Vec<Value> = rec
        .leak_examples
        .iter()
        .map(|l| {
            json!({ "vu": l.vu, "user": format!("vu{}", l.vu), "path": l.path,
                    "x_portal_user": l.header, "body_users": l.body })
        })
        .collect();

    json!({
        "tool": "surge",
        "mode": a.mode.as_str(),
        "target": a.target,
        "portal": {
            "url": a.portal,
            "capacity": a.capacity,
            "before": before,
            "after": after,
            "peak_in_flight": peak,
            "sampled_max_in_flight": sampled_max,
            "within_capacity": within,
        },
        "users": a.users,
        "arrival": arrival,
        "duration_limit_s": a.duration.as_secs_f64(),
        "max_wait_s": a.max_wait.as_secs_f64(),
        "request_timeout_s": a.request_timeout.as_secs_f64(),
        "retries": a.retries,
        "elapsed_s": round2(secs),
        "cut_at_duration": cut,
        "journeys": {
            "completed": completed,
            "failed": count(vu_state::FAILED),
            "gave_up_waiting": count(vu_state::GAVE_UP),
            "unfinished": count(vu_state::ACTIVE) + count(vu_state::WAITING) + count(vu_state::PENDING),
            "unfinished_waiting": count(vu_state::WAITING),
            "unfinished_active": count(vu_state::ACTIVE),
            "not_started": count(vu_state::PENDING),
            "failures": rec.failures,
            "with_leak": rec.leak_journeys,
            "duration_ms": summary_ms(journey_us),
        },
        "goodput": {
            "journeys_per_s": round2(completed as f64 / secs),
            "portal_ok_per_s": round2(portal_ok as f64 / secs),
            "portal_ok_responses": portal_ok,
        },
        "latency_ms": {
            "admitted": summary_ms(admitted),
            "admitted_ok": summary_ms(admitted_ok),
            "by_step": step_lat.into_iter().map(|(k, v)| (k.to_string(), summary_ms(v))).collect::<serde_json::Map<_, _>>(),
            "status_poll": summary_ms(polls),
        },
        "requests": {
            "total": rec.recs.len(),
            "by_class": by_class,
            "by_status": by_status,
            "by_step": by_step,
        },
        "errors": {
            "total": errors.values().sum::<u64>(),
            "by_status": errors,
        },
        "queue": {
            "users_queued": rec.queued_users,
            "poll_errors": rec.poll_errors,
            "wait_ms_of_completed": summary_ms(rec.queue_waits.clone()),
        },
        "isolation": {
            "checked": rec.iso_checked,
            "checked_by_path": rec.iso_checked_by_path,
            "ok": rec.iso_ok,
            "leaks": rec.leaks,
            "leaks_by_path": rec.leaks_by_path,
            "leak_guard_502": by_class.get("leak_guard").copied().unwrap_or(0),
            "incomplete_marker": rec.iso_incomplete,
            "unverifiable": rec.iso_unverifiable,
            "leak_examples": leak_examples,
        },
        "release": {
            "release_header_seen_by_client": rec.release_header_seen,
            "pass_cleared_on_submit": rec.pass_cleared,
        },
        "timeline": timeline,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn print_summary(r: &Value) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let lat = |v: &Value| {
        format!(
            "n={} p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            s(&v["count"]),
            s(&v["p50"]),
            s(&v["p90"]),
            s(&v["p99"]),
            s(&v["max"])
        )
    };
    let j = &r["journeys"];
    let p = &r["portal"];
    println!(
        "surge [{}] {} users → {}   (elapsed {} s{})",
        s(&r["mode"]),
        s(&r["users"]),
        s(&r["target"]),
        s(&r["elapsed_s"]),
        if r["cut_at_duration"] == json!(true) {
            ", cut at --duration"
        } else {
            ""
        }
    );
    println!(
        "  arrival      ramp {} s ({} users/s)",
        s(&r["arrival"]["ramp_s"]),
        r["arrival"]["rate_per_s"]
            .as_f64()
            .map(|x| format!("{x:.0}"))
            .unwrap_or("-".into())
    );
    println!(
        "  journeys     completed {}, failed {}, gave up waiting {}, unfinished {} (waiting {}, active {}, not started {})",
        s(&j["completed"]),
        s(&j["failed"]),
        s(&j["gave_up_waiting"]),
        s(&j["unfinished"]),
        s(&j["unfinished_waiting"]),
        s(&j["unfinished_active"]),
        s(&j["not_started"])
    );
    if let Some(f) = j["failures"].as_object().filter(|f| !f.is_empty()) {
        let list: Vec<String> = f.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  failures     {}", list.join(", "));
    }
    println!(
        "  goodput      {} journeys/s, {} portal OK responses/s",
        s(&r["goodput"]["journeys_per_s"]),
        s(&r["goodput"]["portal_ok_per_s"])
    );
    println!("  admitted     {}", lat(&r["latency_ms"]["admitted"]));
    println!("  journey      {}", lat(&j["duration_ms"]));
    println!(
        "  queue        {} users queued, wait of completed: {}",
        s(&r["queue"]["users_queued"]),
        lat(&r["queue"]["wait_ms_of_completed"])
    );
    if p["url"].is_string() {
        let a = &p["after"];
        println!(
            "  portal       peak in flight {} / capacity {} → {}; sampled max {}; 2xx {} 3xx {} 4xx {} 5xx {}; injected errors {}, hangs {}, leaks served {}, claims {}",
            s(&p["peak_in_flight"]),
            s(&p["capacity"]),
            match p["within_capacity"] {
                Value::Bool(true) => "WITHIN",
                Value::Bool(false) => "EXCEEDED",
                _ => "?",
            },
            s(&p["sampled_max_in_flight"]),
            s(&a["responses_2xx"]),
            s(&a["responses_3xx"]),
            s(&a["responses_4xx"]),
            s(&a["responses_5xx"]),
            s(&a["errors_injected"]),
            s(&a["timeouts_started"]),
            s(&a["leaks_served"]),
            s(&a["claims_submitted"])
        );
    }
    let i = &r["isolation"];
    println!(
        "  isolation    {} personal responses checked: {} ok, {} LEAKS, {} leak-guard 502, {} incomplete marker, {} unverifiable",
        s(&i["checked"]),
        s(&i["ok"]),
        s(&i["leaks"]),
        s(&i["leak_guard_502"]),
        s(&i["incomplete_marker"]),
        s(&i["unverifiable"])
    );
    if let Some(ex) = i["leak_examples"].as_array().filter(|e| !e.is_empty()) {
        for e in ex.iter().take(3) {
            println!(
                "    leak: {} asked {} and got x-portal-user={} body users={}",
                s(&e["user"]),
                s(&e["path"]),
                s(&e["x_portal_user"]),
                s(&e["body_users"])
            );
        }
    }
    if let Some(e) = r["errors"]["by_status"].as_object() {
        let list: Vec<String> = e.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "  errors       {} ({})",
            s(&r["errors"]["total"]),
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    println!(
        "  release      header seen by client {}, pass cleared on submit {}",
        s(&r["release"]["release_header_seen_by_client"]),
        s(&r["release"]["pass_cleared_on_submit"])
    );
}

/// A JSON value as a table cell: `-` for null, one decimal for fractional numbers.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A Markdown table of reports side by side (one column per run).
fn markdown_table(reports: &[Value]) -> String {
    let s = cell;
    type Row = (&'static str, fn(&Value) -> Vec<Value>);
    let rows: [Row; 15] = [
        ("users", |r| vec![r["users"].clone()]),
        ("arrival (users/s over s)", |r| {
            vec![
                r["arrival"]["rate_per_s"].clone(),
                r["arrival"]["ramp_s"].clone(),
            ]
        }),
        ("journeys completed", |r| {
            vec![r["journeys"]["completed"].clone()]
        }),
        ("failed / gave up / unfinished", |r| {
            vec![
                r["journeys"]["failed"].clone(),
                r["journeys"]["gave_up_waiting"].clone(),
                r["journeys"]["unfinished"].clone(),
            ]
        }),
        ("goodput (journeys/s)", |r| {
            vec![r["goodput"]["journeys_per_s"].clone()]
        }),
        ("portal OK responses/s", |r| {
            vec![r["goodput"]["portal_ok_per_s"].clone()]
        }),
        ("admitted requests p50 / p99 (ms)", |r| {
            vec![
                r["latency_ms"]["admitted"]["p50"].clone(),
                r["latency_ms"]["admitted"]["p99"].clone(),
            ]
        }),
        ("journey p50 / p99 (ms, incl. queue)", |r| {
            vec![
                r["journeys"]["duration_ms"]["p50"].clone(),
                r["journeys"]["duration_ms"]["p99"].clone(),
            ]
        }),
        ("users queued", |r| vec![r["queue"]["users_queued"].clone()]),
        ("portal peak in flight / capacity", |r| {
            vec![
                r["portal"]["peak_in_flight"].clone(),
                r["portal"]["capacity"].clone(),
            ]
        }),
        ("portal 5xx (injected errors / hangs)", |r| {
            vec![
                r["portal"]["after"]["responses_5xx"].clone(),
                json!(format!(
                    "({} / {})",
                    cell(&r["portal"]["after"]["errors_injected"]),
                    cell(&r["portal"]["after"]["timeouts_started"])
                )),
            ]
        }),
        ("errors seen by users (5xx, refusals, timeouts)", |r| {
            vec![r["errors"]["total"].clone()]
        }),
        ("refused by the front (429/503)", |r| {
            vec![r["requests"]["by_class"]["refused"].clone()]
        }),
        ("LEAKS seen by users / served by portal", |r| {
            vec![
                r["isolation"]["leaks"].clone(),
                r["portal"]["after"]["leaks_served"].clone(),
            ]
        }),
        ("leak-guard 502", |r| {
            vec![r["isolation"]["leak_guard_502"].clone()]
        }),
    ];
    let name = |r: &Value| match r["mode"].as_str() {
        Some("proxy") => "anticamera".to_string(),
        Some(m) => m.to_string(),
        None => "?".to_string(),
    };
    let mut out = String::from("| |");
    for r in reports {
        out.push_str(&format!(" {} |", name(r)));
    }
    out.push_str("\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, f) in rows {
        out.push_str(&format!("| {label} |"));
        for r in reports {
            let cells: Vec<String> = f(r).iter().map(s).collect();
            let cell = if label.starts_with("portal 5xx") {
                cells.join(" ")
            } else {
                cells.join(" / ")
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("200/s").unwrap(), 200.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("5/h").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn jar_stores_replaces_and_deletes() {
        let mut j = Jar::default();
        assert_eq!(j.header(), None);
        j.apply("portal_session=abc; Path=/; HttpOnly; SameSite=Lax");
        j.apply("anticamera_services=T1; Path=/; Max-Age=86400; HttpOnly");
        assert_eq!(
            j.header().unwrap(),
            "portal_session=abc; anticamera_services=T1"
        );
        j.apply("anticamera_services=P2; Path=/; Max-Age=360");
        assert_eq!(j.get("anticamera_services"), Some("P2"));
        j.apply("anticamera_services=; Path=/; Max-Age=0; HttpOnly");
        assert_eq!(j.get("anticamera_services"), None);
        assert_eq!(j.header().unwrap(), "portal_session=abc");
        j.apply("garbage-without-equals");
        j.apply("=novalue");
        assert_eq!(j.0.len(), 1);
    }

    #[test]
    fn isolation_detects_leaks_in_html_json_and_header() {
        let html = br#"<p>Utente: <strong data-user="vu1">vu1</strong></p>"#;
        assert_eq!(check_isolation("vu1", Some("vu1"), html), Isolation::Ok);
        // vu1 is a prefix of vu12: must still be a leak.
        assert!(matches!(
            check_isolation("vu12", Some("vu12"), html),
            Isolation::Leak { .. }
        ));
        assert!(matches!(
            check_isolation("vu1", Some("vu7"), html),
            Isolation::Leak { .. }
        ));
        let js = br#"{"user":"vu3","fiscal_code":"X","iban":"IT00"}"#;
        assert_eq!(check_isolation("vu3", Some("vu3"), js), Isolation::Ok);
        assert!(matches!(
            check_isolation("vu4", Some("vu3"), js),
            Isolation::Leak { .. }
        ));
        assert_eq!(check_isolation("vu3", None, js), Isolation::Ok);
        assert_eq!(
            check_isolation("vu3", Some("vu3"), b"<p>nothing</p>"),
            Isolation::Incomplete
        );
        assert_eq!(
            check_isolation("vu3", None, b"<p>nothing</p>"),
            Isolation::Unverifiable
        );
        // Two markers, one foreign: a leak.
        let two = br#"<p data-user="vu1"></p><p data-user="vu2"></p>"#;
        assert!(matches!(
            check_isolation("vu1", Some("vu1"), two),
            Isolation::Leak { .. }
        ));
    }

    #[test]
    fn classification_separates_queue_refusal_portal_and_leak_guard() {
        let none = HeaderMap::new();
        let q = br#"{"anticamera":1,"state":"waiting","position":3,"retry_after_seconds":2}"#;
        assert_eq!(classify(503, &none, q, "anticamera_"), Class::Queue);
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert(
            SET_COOKIE,
            HeaderValue::from_static("anticamera_services=T; Path=/"),
        );
        assert_eq!(
            classify(503, &with_cookie, b"<html>queue</html>", "anticamera_"),
            Class::Queue
        );
        assert_eq!(
            classify(
                503,
                &none,
                b"<main data-anticamera=\"queue\">4</main>",
                "anticamera_"
            ),
            Class::Queue
        );
        let portal503 = b"<title>Servizio non disponibile - Portale Previdenza (demo)</title>";
        assert_eq!(
            classify(503, &none, portal503, "anticamera_"),
            Class::Portal
        );
        let nginx503 = b"<html><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center>";
        assert_eq!(
            classify(503, &none, nginx503, "anticamera_"),
            Class::Refused
        );
        assert_eq!(classify(429, &none, b"", "anticamera_"), Class::Refused);
        let guard = br#"{"status":502,"error":"session_leak","message":"Blocked a response for another user (leak guard)."}"#;
        assert_eq!(classify(502, &none, guard, "anticamera_"), Class::LeakGuard);
        assert_eq!(
            classify(502, &none, b"upstream_unavailable", "anticamera_"),
            Class::Portal
        );
        assert_eq!(classify(200, &none, b"ok", "anticamera_"), Class::Portal);
    }

    #[test]
    fn table_has_one_column_per_report() {
        let a = json!({"mode": "proxy", "users": 400, "journeys": {"completed": 12},
            "portal": {"peak_in_flight": 17, "capacity": 20, "after": {"responses_5xx": 0}},
            "isolation": {"leaks": 0}});
        let b = json!({"mode": "direct", "users": 400, "journeys": {"completed": 3},
            "isolation": {"leaks": 5}});
        let t = markdown_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| | anticamera | direct |");
        assert_eq!(lines[1], "|---|---:|---:|");
        assert!(t.contains("| journeys completed | 12 | 3 |"), "{t}");
        assert!(
            t.contains("| portal peak in flight / capacity | 17 / 20 | - / - |"),
            "{t}"
        );
        assert!(
            t.contains("| LEAKS seen by users / served by portal | 0 / - | 5 / - |"),
            "{t}"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let s = summary_ms(vec![3000, 1000, 2000]);
        assert_eq!(s["p50"], json!(2.0));
        assert_eq!(s["max"], json!(3.0));
        assert_eq!(s["count"], json!(3));
    }
}
