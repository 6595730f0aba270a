//! The virtual users. Each person is a task with its own cookie jar, `User-Agent: surge-vu-N`,
//! a cohort (header) and a source address (127.16-255.x.1, one /24 each): `GET /` → `POST /login user=vuN` →
//! `GET /account` (HTML) or `GET /api/account` (JSON) → isolation check → `GET /claim` →
//! `POST /claim amount=600` → leaves. Whenever a step meets the waiting room, the user waits as
//! the page does: polls `/.anticamera/status` after `retry_after_seconds`, holding the poll for
//! `long_poll_seconds` when the answer says so; impatient users reload the page instead; some
//! give up. **Plain** clients know nothing of the waiting room: they ask for the gated URL with
//! `Accept: application/json` and, while told to wait, sleep `Retry-After` (at most 5 s) and ask
//! for it again. Bots hammer the personal page without keeping cookies, from a few addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE, SET_COOKIE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use crate::http::{
    check_isolation, classify_result, join_url, send, Class, Isolation, Jar, NetError, Resp,
};
use crate::scenario::Scenario;
use crate::verify::UserLog;

/// Leak examples kept in the report.
const MAX_LEAK_EXAMPLES: usize = 10;
/// The longest `Retry-After` a plain client honours (a script's sensible cap).
const PLAIN_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The shortest pause of a plain client between two requests (a `Retry-After: 0` is not a
/// reason to spin).
const PLAIN_MIN_RETRY_AFTER: Duration = Duration::from_millis(100);
const HTML: &str = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";

/// A journey step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Home,
    Login,
    Account,
    Status,
    ClaimForm,
    ClaimSubmit,
    Bot,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Home => "home",
            Step::Login => "login",
            Step::Account => "account",
            Step::Status => "status_poll",
            Step::ClaimForm => "claim_form",
            Step::ClaimSubmit => "claim_submit",
            Step::Bot => "bot",
        }
    }
}

/// One request as seen by a user.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Completion time, ms since the start of the run.
    pub t_ms: u64,
    pub step: Step,
    /// HTTP status, 0 for timeouts and transport errors.
    pub status: u16,
    pub class: Class,
    pub latency_us: u64,
}

/// A leak seen by a user.
#[derive(Debug, Clone)]
pub struct LeakExample {
    pub vu: usize,
    pub path: &'static str,
    pub header: Option<String>,
    pub body: Vec<String>,
}

/// User states (gauges over time, and the unfinished count when the run is cut).
pub mod vu_state {
    pub const PENDING: u8 = 0;
    pub const ACTIVE: u8 = 1;
    pub const WAITING: u8 = 2;
    pub const DONE: u8 = 3;
    pub const FAILED: u8 = 4;
    pub const GAVE_UP: u8 = 5;
    pub const ABANDONED: u8 = 6;
    pub const BOT: u8 = 7;
}

/// Everything the users report, behind one mutex (a few thousand records per second).
#[derive(Debug, Default)]
pub struct Recorder {
    pub recs: Vec<Rec>,
    /// (completion time ms, journey duration us, time spent waiting in the queue us).
    pub journeys: Vec<(u64, u64, u64)>,
    /// Failed journeys by `step:reason`.
    pub failures: BTreeMap<String, u64>,
    pub iso_checked: u64,
    pub iso_checked_by_path: BTreeMap<&'static str, u64>,
    pub iso_ok: u64,
    pub iso_incomplete: u64,
    pub iso_unverifiable: u64,
    pub leaks: u64,
    pub leaks_by_path: BTreeMap<&'static str, u64>,
    pub leak_examples: Vec<LeakExample>,
    pub leak_journeys: u64,
    pub release_header_seen: u64,
    pub pass_cleared: u64,
    pub queued_users: u64,
    /// Total queue time of users admitted after waiting (us).
    pub queue_waits: Vec<u64>,
    pub poll_errors: u64,
    pub reloads: u64,
    /// Requests of the gated URL again by plain clients after a `Retry-After`.
    pub plain_retries: u64,
    /// People a status poll told "admitted" whose next gated request was answered with the
    /// queue again (with several nodes: a node that had not heard of the admission yet).
    pub sent_back: u64,
    /// From a status poll's "admitted" to the answer of the next gated request that let the
    /// person in (us): how long a place held for them waited, as the client saw it.
    pub admitted_to_in: Vec<u64>,
    /// People by persona (`plain`, `impatient`, `page`, `api`): arrived, completed.
    pub personas: BTreeMap<&'static str, (u64, u64)>,
    /// Bot answers by status (0 = timeout / transport).
    pub bot_statuses: BTreeMap<u16, u64>,
    /// Personal pages a bot (no login) was served.
    pub bot_personal_pages: u64,
    /// What each user saw, for the order and estimate checks.
    pub logs: Vec<UserLog>,
    /// Arrival of each person (ms since the start).
    pub arrivals: Vec<u64>,
}

/// Shared state of a run.
pub struct Ctx {
    pub sc: Scenario,
    /// Where people connect: one front, or the nodes of a fleet, spread over round-robin by
    /// each person ([`Spread`]).
    pub targets: Vec<Uri>,
    /// Requests sent to each target.
    pub sent: Vec<AtomicU64>,
    /// People's clients, one per source address.
    clients: Vec<Client<HttpConnector, Full<Bytes>>>,
    bot_clients: Vec<Client<HttpConnector, Full<Bytes>>>,
    /// Requests in flight from the tool (each holds a connection).
    conns: tokio::sync::Semaphore,
    pub start: Instant,
    pub deadline: Instant,
    pub rec: Mutex<Recorder>,
    pub states: Vec<AtomicU8>,
}

fn client(local: IpAddr, max_idle: usize) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

/// The loopback address person-address `i` connects from: each in its own /24
/// (127.16.0.1, 127.16.1.1, … 127.255.255.1, then 127.16.0.2, …), as people across a country
/// come from many networks. Packing them into a few /24s would have the proxy's /24 rate-limit
/// level (`ipv4_aggregates`) see a whole crowd as one network behind a NAT.
pub fn person_address(i: usize) -> Ipv4Addr {
    const NETS: usize = 240 * 256;
    let net = i % NETS;
    Ipv4Addr::new(
        127,
        (16 + net / 256) as u8,
        (net % 256) as u8,
        (1 + (i / NETS) % 250) as u8,
    )
}

impl Ctx {
    pub fn new(sc: Scenario, targets: Vec<Uri>, start: Instant) -> anyhow::Result<Ctx> {
        anyhow::ensure!(!targets.is_empty(), "no target to send people to");
        let n = usize::from(sc.run.client_addresses);
        // Idle connections are kept per host: with N nodes a client keeps up to N times as many,
        // so the per-host pool is divided by the targets (the tool stays within its open-file
        // limit: 3 nodes with the one-node pool ran out of descriptors on claim day).
        let idle = ((sc.run.max_connections / n).max(4) / targets.len()).max(1);
        let clients = (0..n)
            .map(|i| client(IpAddr::V4(person_address(i)), idle))
            .collect();
        let bot_clients = (0..sc.run.bot_addresses)
            .map(|i| {
                client(
                    IpAddr::V4(Ipv4Addr::new(127, 2, 0, (i % 250 + 1) as u8)),
                    64,
                )
            })
            .collect();
        let deadline = start + sc.run.duration;
        Ok(Ctx {
            conns: tokio::sync::Semaphore::new(sc.run.max_connections),
            states: (0..sc.users.count)
                .map(|_| AtomicU8::new(vu_state::PENDING))
                .collect(),
            sc,
            sent: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            targets,
            clients,
            bot_clients,
            start,
            deadline,
            rec: Mutex::new(Recorder::default()),
        })
    }

    /// The target of a request that `spread` sends next (counted as sent there).
    fn next_target(&self, spread: &mut Spread) -> &Uri {
        let i = spread.next(self.targets.len());
        if let Some(c) = self.sent.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // `Spread::next` stays below the length, and `Ctx::new` refuses no target.
        &self.targets[i.min(self.targets.len() - 1)]
    }

    /// Requests sent to each target so far.
    pub fn sent(&self) -> Vec<u64> {
        self.sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    fn record(&self, r: Rec) {
        lock(&self.rec).recs.push(r);
    }

    pub fn ms_now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// One request through the connection budget.
    async fn send(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Resp, NetError> {
        let _permit = self
            .conns
            .acquire()
            .await
            .map_err(|_| NetError::Transport)?;
        send(client, req, timeout).await
    }

    /// Counts users by state: (waiting, active).
    pub fn gauges(&self) -> (u64, u64) {
        let (mut w, mut a) = (0, 0);
        for s in &self.states {
            match s.load(Ordering::Relaxed) {
                vu_state::WAITING => w += 1,
                vu_state::ACTIVE => a += 1,
                _ => {}
            }
        }
        (w, a)
    }
}

/// How one client spreads its requests over the nodes of a fleet, as a balancer without
/// stickiness would: its k-th request goes to node (start + k) mod N. The cookie jar is the
/// client's, whichever node set a cookie: on 127.0.0.1 the nodes differ only by port, and
/// cookies are not port-scoped (RFC 6265, 8.5), so a browser sends every node the same cookies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    start: usize,
    k: usize,
}

impl Spread {
    pub fn new(start: usize) -> Spread {
        Spread { start, k: 0 }
    }

    /// The node of the next request, of `n`.
    pub fn next(&mut self, n: usize) -> usize {
        let i = self.start.wrapping_add(self.k) % n.max(1);
        self.k = self.k.wrapping_add(1);
        i
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a journey ended early.
#[derive(Debug)]
enum Stop {
    /// Failed at a step (after retries), with a reason.
    Failed(Step, String),
    /// Waited longer than `max_wait` in the queue.
    GaveUp,
    /// Left the queue on purpose (an abandoning user).
    Abandoned,
}

/// How the last waiting-room answer said to poll.
#[derive(Debug, Clone, Copy)]
struct Advice {
    refresh: Duration,
    long_poll: u64,
}

struct Vu<'a> {
    ctx: &'a Ctx,
    id: usize,
    user: String,
    ua: HeaderValue,
    cohort: Option<HeaderValue>,
    jar: Jar,
    /// HTML (`/account`) or JSON (`/api/account`) flavour.
    json: bool,
    impatient: bool,
    /// A plain HTTP client: follows only `Retry-After` on the gated URL.
    plain: bool,
    abandon_after: Option<Duration>,
    /// Time spent in the waiting room so far.
    waited: Duration,
    was_queued: bool,
    leaked: bool,
    log: UserLog,
    /// The last position seen in an open queue.
    last_position: Option<u64>,
    /// Which node each request goes to.
    spread: Spread,
    /// When a status poll said "admitted" and no gated request was answered since.
    poll_admitted: Option<Instant>,
}

impl<'a> Vu<'a> {
    fn new(ctx: &'a Ctx, id: usize, rng: &mut impl Rng) -> Self {
        let b = &ctx.sc.behaviour;
        let (cohort_idx, cohort) = match ctx.sc.cohort_of(rng.gen()) {
            Some(name) => (
                ctx.sc.cohorts.keys().position(|k| k == name).unwrap_or(0) as u8,
                HeaderValue::from_str(name).ok(),
            ),
            None => (0, None),
        };
        let r: f64 = rng.gen();
        let impatient = r < b.impatient;
        let abandon_after = (!impatient && r < b.impatient + b.abandon)
            .then(|| b.max_wait.mul_f64(rng.gen_range(0.05..0.9)));
        let json = rng.gen::<f64>() < b.json;
        // Drawn last (only when asked for), so the other draws stay those of earlier versions.
        let plain = b.plain > 0.0 && rng.gen::<f64>() < b.plain;
        // Drawn only with several nodes, for the same reason.
        let nodes = ctx.targets.len();
        let start = if nodes > 1 {
            rng.gen_range(0..nodes)
        } else {
            0
        };
        Vu {
            ctx,
            id,
            user: format!("vu{id}"),
            ua: HeaderValue::from_str(&format!("surge-vu-{id}"))
                .unwrap_or(HeaderValue::from_static("surge-vu")),
            cohort,
            jar: Jar::default(),
            // A plain client asks for JSON; it knows no page and no status endpoint.
            json: json || plain,
            impatient: impatient && !plain,
            plain,
            abandon_after,
            waited: Duration::ZERO,
            was_queued: false,
            leaked: false,
            log: UserLog {
                cohort: cohort_idx,
                ..UserLog::default()
            },
            last_position: None,
            spread: Spread::new(start),
            poll_admitted: None,
        }
    }

    /// Whether a path is behind the scenario's gate (the first such step takes the ticket).
    fn behind_gate(&self, path: &str) -> bool {
        self.ctx
            .sc
            .anticamera
            .gate_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    fn set_state(&self, s: u8) {
        if let Some(a) = self.ctx.states.get(self.id) {
            a.store(s, Ordering::Relaxed);
        }
    }

    /// The persona, as counted in the report.
    fn persona(&self) -> &'static str {
        if self.plain {
            "plain"
        } else if self.impatient {
            "impatient"
        } else if self.json {
            "api"
        } else {
            "page"
        }
    }

    fn accept(&self) -> &'static str {
        if self.json {
            "application/json"
        } else {
            HTML
        }
    }

    /// One request; the jar is updated from the answer. Returns the answer, its latency and
    /// when it was sent (ms since the start).
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        form: Option<&'static str>,
        timeout: Duration,
    ) -> anyhow::Result<(Result<Resp, NetError>, Duration, u64)> {
        let uri = join_url(self.ctx.next_target(&mut self.spread), path)?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(USER_AGENT, self.ua.clone())
            .header(ACCEPT, accept);
        if let Some(c) = &self.cohort {
            b = b.header(self.ctx.sc.run.cohort_header.as_str(), c.clone());
        }
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
        let sent = self.ctx.ms_now();
        let t0 = Instant::now();
        let client = &self.ctx.clients[self.id % self.ctx.clients.len()];
        let r = self.ctx.send(client, req, timeout).await;
        let lat = t0.elapsed();
        if let Ok(resp) = &r {
            self.jar.apply_all(&resp.headers);
        }
        Ok((r, lat, sent))
    }

    /// A step with retries: returns a portal answer (< 500, or a queue answer) with the time
    /// its request was sent, or fails after `retries` retries of 5xx / refusals / timeouts /
    /// transport errors.
    async fn step(
        &mut self,
        step: Step,
        method: Method,
        path: &'static str,
        accept: &str,
        form: Option<&'static str>,
    ) -> anyhow::Result<Result<(Resp, Class, u64), Stop>> {
        let mut attempt = 0u32;
        loop {
            let timeout = self.ctx.sc.run.request_timeout;
            let (r, lat, sent) = self
                .request(method.clone(), path, accept, form, timeout)
                .await?;
            let (status, class) = classify_result(&r, &self.ctx.sc.run.cookie_prefix);
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
                    return Ok(Ok((resp, class, sent)));
                }
            }
            if attempt >= self.ctx.sc.run.retries {
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
            let t_req = Instant::now();
            let queued_before = self.was_queued;
            let (resp, class, sent) =
                match self.step(step, method.clone(), path, accept, form).await? {
                    Ok(r) => r,
                    Err(stop) => return Ok(Err(stop)),
                };
            let recv = self.ctx.ms_now();
            if let Some(at) = self.poll_admitted.take() {
                let mut rec = lock(&self.ctx.rec);
                if class == Class::Queue {
                    rec.sent_back += 1;
                } else {
                    rec.admitted_to_in.push(at.elapsed().as_micros() as u64);
                }
            }
            if self.plain && queued_before && self.log.admitted_ms.is_none() {
                // A plain client's wait is also spent in its requests (held near the front).
                self.waited += t_req.elapsed();
            }
            let first_gated = self.log.first_gated_sent_ms.is_none() && self.behind_gate(path);
            if first_gated {
                self.log.first_gated_sent_ms = Some(sent);
            }
            if class != Class::Queue {
                self.set_state(vu_state::ACTIVE);
                if self.behind_gate(path) && self.log.admitted_ms.is_none() {
                    // In: after waiting (the poll said so, or this page did), or straight away.
                    self.log.direct = !self.was_queued;
                    self.log.admitted_ms = Some(recv);
                }
                return Ok(Ok(resp));
            }
            if !self.was_queued {
                self.was_queued = true;
                self.log.ticket_sent_ms = Some(sent);
                self.log.ticket_recv_ms = Some(recv);
                lock(&self.ctx.rec).queued_users += 1;
            }
            // What the answer says is noted for the checks (numbers, positions, estimate);
            // a plain client itself reads only its Retry-After.
            let advice = self.observe_answer(&resp, sent, recv);
            let waited = if self.plain {
                self.wait_plain(&resp).await
            } else {
                self.wait_in_queue(advice).await?
            };
            if let Err(stop) = waited {
                return Ok(Err(stop));
            }
        }
    }

    /// Reads a waiting-room answer (JSON, or the HTML page's data attributes) and notes what
    /// the checks need. Returns how to poll next.
    fn observe_answer(&mut self, resp: &Resp, sent: u64, recv: u64) -> Advice {
        let retry_header = resp
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        if let Ok(v) = serde_json::from_slice::<Value>(&resp.body) {
            self.observe(&v, sent, recv);
            return Advice {
                refresh: Duration::from_secs_f64(
                    v.get("retry_after_seconds")
                        .and_then(Value::as_f64)
                        .unwrap_or(retry_header)
                        .max(1.0),
                ),
                long_poll: v
                    .get("long_poll_seconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            };
        }
        // The HTML page: what its script reads.
        let text = String::from_utf8_lossy(&resp.body);
        let attr = |name: &str| -> Option<f64> {
            let key = format!("{name}=\"");
            let i = text.find(&key)? + key.len();
            let j = text[i..].find('"')?;
            text[i..i + j].parse().ok()
        };
        if text.contains("data-order=\"random\"") {
            self.log.drawn = true;
        }
        Advice {
            refresh: Duration::from_secs_f64(attr("data-refresh").unwrap_or(retry_header).max(1.0)),
            long_poll: attr("data-long-poll").unwrap_or(0.0) as u64,
        }
    }

    /// Notes a JSON waiting-room answer.
    fn observe(&mut self, v: &Value, sent: u64, recv: u64) {
        let number = v.get("number").and_then(Value::as_u64);
        if v.get("order_at_opening").and_then(Value::as_str) == Some("random") {
            self.log.drawn = true;
        }
        let missed_turn = v.get("missed_turn").and_then(Value::as_bool) == Some(true);
        if missed_turn && !self.log.missed_turn {
            // From now on the place is in the late line: not comparable with the one before.
            self.log.missed_turn = true;
            self.last_position = None;
        }
        match v.get("state").and_then(Value::as_str) {
            Some("waiting") => {
                if let Some(p) = v.get("position").and_then(Value::as_u64) {
                    if self.last_position.is_some_and(|last| p > last) {
                        self.log.position_regressions += 1;
                    }
                    self.last_position = Some(p);
                }
                // A late arrival's answers are not waits for their turn: it came and went.
                if !missed_turn {
                    if let Some(n) = number {
                        self.log.waits.push((sent, n));
                        self.log.number = Some(n);
                    }
                    if self.log.estimate.is_none() {
                        if let Some(e) = v.get("estimated_wait_seconds").and_then(Value::as_u64) {
                            self.log.estimate = Some((recv, e));
                        }
                    }
                }
            }
            Some("admitted") => {
                if number.is_some() {
                    self.log.number = number;
                }
                if self.log.admitted_ms.is_none() {
                    self.log.admitted_ms = Some(recv);
                }
            }
            // Positions before the opening are not the ones after it (the draw).
            Some("prequeue") | Some("closed") => self.last_position = None,
            _ => {}
        }
    }

    /// A plain client told to wait: sleeps the answer's `Retry-After` (at most 5 s, 1 s when
    /// absent), then the caller asks for the same URL again. Gives up as everyone does.
    async fn wait_plain(&mut self, resp: &Resp) -> Result<(), Stop> {
        self.set_state(vu_state::WAITING);
        let b = &self.ctx.sc.behaviour;
        if self.abandon_after.is_some_and(|a| self.waited >= a) {
            return Err(Stop::Abandoned);
        }
        if self.waited >= b.max_wait {
            return Err(Stop::GaveUp);
        }
        let retry_after = resp
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::from_secs(1), Duration::from_secs_f64);
        let mut pause = retry_after
            .clamp(PLAIN_MIN_RETRY_AFTER, PLAIN_MAX_RETRY_AFTER)
            .min(b.max_wait - self.waited);
        if let Some(a) = self.abandon_after {
            pause = pause.min(a.saturating_sub(self.waited));
        }
        tokio::time::sleep(pause).await;
        self.waited += pause;
        lock(&self.ctx.rec).plain_retries += 1;
        Ok(())
    }

    /// Waits as the page does, until the ticket is admitted (or the status says there is no
    /// ticket, or an impatient user reloads: the page is requested again).
    async fn wait_in_queue(&mut self, mut advice: Advice) -> anyhow::Result<Result<(), Stop>> {
        self.set_state(vu_state::WAITING);
        let b = self.ctx.sc.behaviour.clone();
        let mut last_poll = Duration::ZERO;
        let outcome = loop {
            if self.abandon_after.is_some_and(|a| self.waited >= a) {
                break Err(Stop::Abandoned);
            }
            if self.waited >= b.max_wait {
                break Err(Stop::GaveUp);
            }
            let left = b.max_wait - self.waited;
            if self.impatient {
                let pause = b
                    .reload_every
                    .mul_f64(rand::thread_rng().gen_range(0.7..1.3))
                    .min(left);
                tokio::time::sleep(pause).await;
                self.waited += pause;
                lock(&self.ctx.rec).reloads += 1;
                break Ok(());
            }
            // As the page does: long polls start at least 250 ms apart, so one held for a
            // while is followed at once.
            let pause = if advice.long_poll > 0 {
                Duration::from_millis(250).saturating_sub(last_poll)
            } else {
                advice.refresh
            }
            .min(left);
            let pause = match self.abandon_after {
                Some(a) => pause.min(a.saturating_sub(self.waited)),
                None => pause,
            };
            tokio::time::sleep(pause).await;
            self.waited += pause;
            let path = format!(
                "/.anticamera/status?gate={}&wait={}",
                self.ctx.sc.run.gate, advice.long_poll
            );
            let timeout = self.ctx.sc.run.request_timeout + Duration::from_secs(advice.long_poll);
            let (r, lat, sent) = self
                .request(Method::GET, &path, "application/json", None, timeout)
                .await?;
            let recv = self.ctx.ms_now();
            self.waited += lat;
            last_poll = lat;
            let status = r.as_ref().map(|r| r.status).unwrap_or(0);
            let class = match &r {
                Ok(_) => Class::Poll,
                Err(NetError::Timeout) => Class::Timeout,
                Err(NetError::Transport) => Class::Transport,
            };
            self.ctx.record(Rec {
                t_ms: recv,
                step: Step::Status,
                status,
                class,
                latency_us: lat.as_micros() as u64,
            });
            match r {
                Ok(resp) if resp.status == 404 => break Ok(()),
                Ok(resp) => match serde_json::from_slice::<Value>(&resp.body) {
                    Ok(v) if v.get("state").and_then(Value::as_str) == Some("admitted") => {
                        self.poll_admitted = Some(Instant::now());
                        self.observe(&v, sent, recv);
                        break Ok(());
                    }
                    Ok(v) if v.get("state").is_some() => {
                        advice = self.observe_answer(&resp, sent, recv);
                    }
                    _ => {
                        lock(&self.ctx.rec).poll_errors += 1;
                        advice = Advice {
                            refresh: Duration::from_secs(2),
                            long_poll: 0,
                        };
                    }
                },
                Err(_) => {
                    lock(&self.ctx.rec).poll_errors += 1;
                    advice = Advice {
                        refresh: Duration::from_secs(2),
                        long_poll: 0,
                    };
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
            .get(self.ctx.sc.run.user_header.as_str())
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
        if !self.ctx.sc.behaviour.think.is_zero() {
            tokio::time::sleep(self.ctx.sc.behaviour.think).await;
        }
    }

    /// A personal page through the waiting room: it must be a 200 naming this user (checked
    /// and counted under `label`).
    async fn personal(
        &mut self,
        step: Step,
        method: Method,
        path: &'static str,
        accept: &'static str,
        form: Option<&'static str>,
        label: &'static str,
    ) -> anyhow::Result<Result<Resp, Stop>> {
        let r = match self.gated(step, method, path, accept, form).await? {
            Ok(r) => r,
            Err(s) => return Ok(Err(s)),
        };
        if r.status != 200 {
            return Ok(Err(Stop::Failed(step, r.status.to_string())));
        }
        self.check(label, &r);
        Ok(Ok(r))
    }

    /// The whole journey.
    async fn journey(&mut self) -> anyhow::Result<Result<(), Stop>> {
        let ok = |r: &Resp| (200..400).contains(&r.status);
        let fail = |step: Step, r: &Resp| Stop::Failed(step, r.status.to_string());

        // 1. The information page (open path; any step may meet a waiting room if the
        //    operator gates it, so every step goes through `gated`).
        match self.gated(Step::Home, Method::GET, "/", HTML, None).await? {
            Ok(r) if ok(&r) => {}
            Ok(r) => return Ok(Err(fail(Step::Home, &r))),
            Err(s) => return Ok(Err(s)),
        }
        self.pause().await;

        // 2. Login: the portal sets its session cookie. A plain client asks for JSON here
        //    too: the first gated URL, where it meets the waiting room.
        let accept = if self.plain { "application/json" } else { HTML };
        match self
            .gated(
                Step::Login,
                Method::POST,
                "/login",
                accept,
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
            ("/account", HTML)
        };
        if let Err(s) = self
            .personal(Step::Account, Method::GET, path, accept, None, path)
            .await?
        {
            return Ok(Err(s));
        }
        self.pause().await;

        // 4. The claim form.
        let accept = self.accept();
        if let Err(s) = self
            .personal(
                Step::ClaimForm,
                Method::GET,
                "/claim",
                accept,
                None,
                "/claim",
            )
            .await?
        {
            return Ok(Err(s));
        }
        self.pause().await;

        // 5. Submit: the portal answers with the release header (anticamera consumes it).
        let r = match self
            .personal(
                Step::ClaimSubmit,
                Method::POST,
                "/claim",
                accept,
                Some("amount=600"),
                "/claim (POST)",
            )
            .await?
        {
            Ok(r) => r,
            Err(s) => return Ok(Err(s)),
        };
        let released_header = r
            .headers
            .contains_key(self.ctx.sc.run.release_header.as_str());
        let cleared = r
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.starts_with(&self.ctx.sc.run.cookie_prefix)
                    && v.to_ascii_lowercase().contains("max-age=0")
            });
        let mut rec = lock(&self.ctx.rec);
        rec.release_header_seen += u64::from(released_header);
        rec.pass_cleared += u64::from(cleared);
        Ok(Ok(()))
    }
}

/// One person, from arrival to leaving.
pub async fn run_vu(ctx: Arc<Ctx>, id: usize, at: Duration, seed: u64) {
    tokio::time::sleep_until(ctx.start + at).await;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut vu = Vu::new(&ctx, id, &mut rng);
    vu.set_state(vu_state::ACTIVE);
    let persona = vu.persona();
    {
        let mut rec = lock(&ctx.rec);
        rec.arrivals.push(ctx.ms_now());
        rec.personas.entry(persona).or_default().0 += 1;
    }
    let t0 = Instant::now();
    let outcome = vu.journey().await;
    let failure = |rec: &mut Recorder, key: String| *rec.failures.entry(key).or_default() += 1;
    let state = {
        let mut rec = lock(&ctx.rec);
        let state = match outcome {
            Ok(Ok(())) => {
                let q = if vu.was_queued {
                    vu.waited.as_micros() as u64
                } else {
                    0
                };
                rec.journeys
                    .push((ctx.ms_now(), t0.elapsed().as_micros() as u64, q));
                if vu.was_queued {
                    rec.queue_waits.push(q);
                }
                rec.personas.entry(persona).or_default().1 += 1;
                vu_state::DONE
            }
            Ok(Err(Stop::GaveUp)) => {
                failure(&mut rec, "gave_up_waiting".into());
                vu_state::GAVE_UP
            }
            Ok(Err(Stop::Abandoned)) => vu_state::ABANDONED,
            Ok(Err(Stop::Failed(step, why))) => {
                failure(&mut rec, format!("{}:{why}", step.as_str()));
                vu_state::FAILED
            }
            Err(e) => {
                failure(&mut rec, format!("internal:{e}"));
                vu_state::FAILED
            }
        };
        rec.logs.push(std::mem::take(&mut vu.log));
        state
    };
    vu.set_state(state);
}

/// A bot: asks for the personal page again and again without keeping cookies (so without a
/// ticket or a session), from one of a few addresses.
pub async fn run_bot(ctx: Arc<Ctx>, id: usize, at: Duration) {
    tokio::time::sleep_until(ctx.start + at).await;
    if let Some(s) = ctx.states.get(id) {
        s.store(vu_state::BOT, Ordering::Relaxed);
    }
    let b = &ctx.sc.behaviour;
    let client = &ctx.bot_clients[id % ctx.bot_clients.len()];
    let mut spread = Spread::new(id);
    for _ in 0..b.bot_requests {
        let Ok(uri) = join_url(ctx.next_target(&mut spread), "/account") else {
            return;
        };
        let Ok(req) = Request::builder()
            .uri(uri)
            .header(USER_AGENT, "surge-bot")
            .header(ACCEPT, HTML)
            .body(Full::new(Bytes::new()))
        else {
            return;
        };
        let t0 = Instant::now();
        let r = ctx.send(client, req, ctx.sc.run.request_timeout).await;
        let (status, class) = classify_result(&r, &ctx.sc.run.cookie_prefix);
        ctx.record(Rec {
            t_ms: ctx.ms_now(),
            step: Step::Bot,
            status,
            class,
            latency_us: t0.elapsed().as_micros() as u64,
        });
        {
            let mut rec = lock(&ctx.rec);
            *rec.bot_statuses.entry(status).or_default() += 1;
            // A bot never logged in: any page naming a user is someone else's data.
            if let Ok(resp) = &r {
                let names_someone = !matches!(
                    check_isolation("", None, &resp.body),
                    Isolation::Unverifiable
                );
                if resp.status == 200 && names_someone {
                    rec.bot_personal_pages += 1;
                }
            }
        }
        let pause = b
            .bot_interval
            .mul_f64(rand::thread_rng().gen_range(0.5..1.5));
        tokio::time::sleep(pause).await;
    }
}

/// The demo portal's admin endpoints (stats, reset, per-second sample, slowdown), over one
/// kept-alive connection.
#[derive(Clone)]
pub struct PortalAdmin {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl PortalAdmin {
    pub fn new(uri: Uri) -> Self {
        PortalAdmin {
            uri,
            client: client(IpAddr::V4(Ipv4Addr::LOCALHOST), 2),
        }
    }

    /// One call; the JSON answer.
    pub async fn call(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        let req = Request::builder()
            .method(method)
            .uri(join_url(&self.uri, path)?)
            .body(Full::new(Bytes::new()))?;
        let r = send(&self.client, req, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("portal {path}: {e:?}"))?;
        if r.status != 200 {
            anyhow::bail!("portal {path}: status {}", r.status);
        }
        Ok(serde_json::from_slice(&r.body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{person_address, Spread};
    use crate::http::Jar;

    #[test]
    fn a_person_s_requests_go_round_robin_from_its_own_start() {
        let mut s = Spread::new(2);
        let seq: Vec<usize> = (0..7).map(|_| s.next(3)).collect();
        assert_eq!(seq, vec![2, 0, 1, 2, 0, 1, 2]);
        let mut one = Spread::new(5);
        assert!((0..4).all(|_| one.next(1) == 0));
        // A cookie set by one node goes to the next: the jar knows no ports.
        let mut jar = Jar::default();
        jar.apply("anticamera_services=T1; Path=/; HttpOnly");
        jar.apply("portal_session=s; Path=/; Domain=127.0.0.1");
        assert_eq!(
            jar.header().unwrap(),
            "anticamera_services=T1; portal_session=s"
        );
    }

    #[test]
    fn people_come_from_their_own_24s_on_loopback_apart_from_the_bots() {
        let mut nets = std::collections::HashSet::new();
        for i in 0..61_440 {
            let ip = person_address(i);
            assert!(ip.is_loopback(), "{ip}");
            let o = ip.octets();
            assert!(o[1] >= 16, "never the bots' 127.2.0.x: {ip}");
            assert!(
                nets.insert((o[1], o[2])),
                "one person-address per /24: {ip}"
            );
        }
        // Past 61 440 addresses the /24s are reused, with another host number.
        assert_eq!(person_address(61_440).octets(), [127, 16, 0, 2]);
        assert_eq!(person_address(65_535).octets()[3], 2);
    }
}
