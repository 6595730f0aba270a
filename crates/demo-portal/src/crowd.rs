//! The demo's crowd: simulated people sent through anticamera to the claim form, so that a
//! newcomer's own browser, opened during a wave, lands in the waiting room, watches its place
//! move and gets in. One browser alone never fills a gate.
//!
//! Each person behaves like a real one: its own cookie jar and connection (from its own
//! loopback address, `127.42.x.y`, where the system allows it, so the crowd does not spend the
//! newcomer's per-address rate limit), a login, then the gated pages through anticamera's
//! listen address (never the portal directly). Given the queue page, it waits as the page's
//! script does: it polls `/.anticamera/status?gate=…&wait=…` (the URL from the page's
//! `data-status`), every `retry_after_seconds`, or at once with the poll held when the answer
//! says `long_poll_seconds`; a 404 or `admitted` sends it back to the page. `Retry-After` on a
//! 429 or 503 is honoured. Inside, it reads its account page, opens the claim form, submits it
//! (the portal's release header frees its place at once) and leaves.
//!
//! The crowd only ever targets a loopback address, holds at most `crowd_max` people at once
//! (a second wave adds people only up to that cap), gives each person [`PERSON_DEADLINE`], and
//! stops at once on [`Crowd::stop`] (Ctrl-C in `anticamera demo`, or the portal dropped).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, COOKIE, HOST, RETRY_AFTER, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

/// The longest a simulated person stays, from arrival to leaving, whatever happens.
pub const PERSON_DEADLINE: Duration = Duration::from_secs(600);
/// How long one request may take, on top of the long poll it asks for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer body a person reads.
const MAX_BODY: usize = 256 * 1024;
/// Attempts at one page that answers 429 or 5xx (not the queue) before the person gives up.
const ATTEMPTS: u32 = 6;
/// How often the crowd's progress is logged while people are in the demo.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// The user agent of every simulated person (anticamera binds passes to it).
const AGENT: &str = "anticamera-demo-crowd/1 (simulated person)";
const HTML: &str = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";
const JSON: &str = "application/json";

/// Why a wave cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrowdError {
    /// The portal runs alone: it does not know where anticamera listens.
    #[error(
        "the crowd needs `anticamera demo`: this portal does not know where anticamera listens"
    )]
    NoTarget,
    /// [`Crowd::stop`] was called (the demo is stopping).
    #[error("the crowd is stopped")]
    Stopped,
}

/// A wave that was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Wave {
    /// People sent by this wave (fewer than asked when the cap was reached).
    pub started: usize,
    /// People asked for.
    pub asked: usize,
    /// People in the demo now, this wave included.
    pub active: usize,
    /// Most people at once.
    pub max: usize,
}

/// What the crowd is doing, served as JSON by `GET /__portal/crowd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CrowdStatus {
    /// anticamera's address the people go through; `None` when the portal runs alone.
    pub target: Option<SocketAddr>,
    /// Most people at once.
    pub max: usize,
    /// People sent since start.
    pub sent: u64,
    /// People in the demo now (not yet arrived, waiting, inside).
    pub active: usize,
    /// People in the waiting room now.
    pub waiting: usize,
    /// People inside the gate now (admitted, on their journey).
    pub inside: usize,
    /// People who got a queue page at least once.
    pub queued: u64,
    /// People who submitted their claim and left.
    pub claimed: u64,
    /// People who gave up (deadline, closed service, too many errors).
    pub gave_up: u64,
    /// The crowd was stopped.
    pub stopped: bool,
}

/// The crowd generator. Created by [`crate::spawn`]; its people run on the portal's runtime.
#[derive(Debug)]
pub struct Crowd {
    target: Option<SocketAddr>,
    max: usize,
    think: Duration,
    /// Each person connects from its own `127.42.x.y` (Linux); elsewhere from the default.
    own_addresses: bool,
    rt: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    next_id: AtomicU64,
    active: AtomicUsize,
    waiting: AtomicUsize,
    inside: AtomicUsize,
    queued: AtomicU64,
    claimed: AtomicU64,
    gave_up: AtomicU64,
    reporting: AtomicBool,
}

impl Crowd {
    /// A crowd that sends people through `target` (which must be a loopback address; any other
    /// is ignored), at most `max` at once, thinking about `think` between two pages. Must be
    /// called inside a tokio runtime: the people run on it.
    pub fn new(target: Option<SocketAddr>, max: usize, think: Duration) -> Arc<Crowd> {
        let own_addresses =
            std::net::TcpListener::bind(SocketAddr::new(source_address(0), 0)).is_ok();
        Arc::new(Crowd {
            target: target.filter(|t| t.ip().is_loopback()),
            max: max.max(1),
            think,
            own_addresses,
            rt: tokio::runtime::Handle::current(),
            stop: watch::channel(false).0,
            next_id: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            reporting: AtomicBool::new(false),
        })
    }

    /// Sends `people` simulated people, arriving evenly over `over`, up to the cap. Returns at
    /// once; the people run on the portal's runtime.
    pub fn wave(self: &Arc<Self>, people: usize, over: Duration) -> Result<Wave, CrowdError> {
        let target = self.target.ok_or(CrowdError::NoTarget)?;
        if *self.stop.borrow() {
            return Err(CrowdError::Stopped);
        }
        let mut started = 0;
        let _ = self.active.fetch_update(Relaxed, Relaxed, |active| {
            started = people.min(self.max.saturating_sub(active));
            Some(active + started)
        });
        let first = self.next_id.fetch_add(started as u64, Relaxed);
        for k in 0..started {
            let at = over.mul_f64(k as f64 / started as f64);
            let crowd = self.clone();
            let mut stop = self.stop.subscribe();
            self.rt.spawn(async move {
                let id = first + k as u64;
                let person = Person::new(&crowd, target, id);
                let outcome = tokio::select! {
                    _ = stop.wait_for(|s| *s) => None,
                    o = tokio::time::timeout(PERSON_DEADLINE, person.live(at)) => Some(o),
                };
                match outcome {
                    Some(Ok(Ok(()))) => {
                        crowd.claimed.fetch_add(1, Relaxed);
                    }
                    Some(Ok(Err(why))) => {
                        tracing::debug!(person = id, %why, "simulated person gave up");
                        crowd.gave_up.fetch_add(1, Relaxed);
                    }
                    Some(Err(_)) => {
                        crowd.gave_up.fetch_add(1, Relaxed);
                    }
                    None => {}
                }
                crowd.active.fetch_sub(1, Relaxed);
            });
        }
        if started > 0 {
            tracing::info!(
                people = started,
                asked = people,
                over = ?over,
                through = %target,
                "crowd: simulated people on their way to the claim form"
            );
            self.report();
        }
        Ok(Wave {
            started,
            asked: people,
            active: self.active.load(Relaxed),
            max: self.max,
        })
    }

    /// Stops every person now (their connections close) and refuses new waves.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// What the crowd is doing.
    pub fn status(&self) -> CrowdStatus {
        CrowdStatus {
            target: self.target,
            max: self.max,
            sent: self.next_id.load(Relaxed),
            active: self.active.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            inside: self.inside.load(Relaxed),
            queued: self.queued.load(Relaxed),
            claimed: self.claimed.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            stopped: *self.stop.borrow(),
        }
    }

    /// Where people are sent; `None` when the portal runs alone.
    pub fn target(&self) -> Option<SocketAddr> {
        self.target
    }

    /// Most people at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Logs the progress every few seconds while people are in the demo (one reporter at a
    /// time), and once more when the last one has left.
    fn report(self: &Arc<Self>) {
        if self.reporting.swap(true, Relaxed) {
            return;
        }
        let crowd = self.clone();
        let mut stop = self.stop.subscribe();
        self.rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(REPORT_EVERY) => {}
                }
                let s = crowd.status();
                if s.active == 0 {
                    tracing::info!(
                        claimed = s.claimed,
                        gave_up = s.gave_up,
                        "crowd: everyone has left; send another wave from the home page's button"
                    );
                    break;
                }
                tracing::info!(
                    waiting = s.waiting,
                    inside = s.inside,
                    claimed = s.claimed,
                    gave_up = s.gave_up,
                    "crowd"
                );
            }
            crowd.reporting.store(false, Relaxed);
            // A wave that started while this reporter was ending gets its own.
            if crowd.active.load(Relaxed) > 0 && !*crowd.stop.borrow() {
                crowd.report();
            }
        });
    }
}

/// The source address of person `id`: `127.42.x.y`, y in 1..=254.
fn source_address(id: u64) -> IpAddr {
    let n = id % (256 * 254);
    IpAddr::V4(Ipv4Addr::new(127, 42, (n / 254) as u8, (n % 254 + 1) as u8))
}

/// Counts a person in a gauge for as long as the guard lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(g: &'a AtomicUsize) -> Self {
        g.fetch_add(1, Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A cookie jar: `name=value` per cookie (one host, every path).
#[derive(Debug, Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn apply_all(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(s) = v.to_str() else { continue };
            let mut parts = s.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let name = name.trim();
            let delete = parts.any(|a| {
                let a = a.trim().to_ascii_lowercase();
                a.strip_prefix("max-age=")
                    .is_some_and(|n| n.trim().parse::<i64>().is_ok_and(|n| n <= 0))
            });
            self.0.retain(|(n, _)| n != name);
            if !delete && !name.is_empty() {
                self.0.push((name.to_owned(), value.trim().to_owned()));
            }
        }
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// `Retry-After` in seconds, if any.
    fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// The waiting room's page (queue or closed), by the marker its script reads.
    fn room_page(&self) -> Option<&'static str> {
        let t = self.text();
        if t.contains("data-anticamera=\"queue\"") {
            Some("queue")
        } else if t.contains("data-anticamera=\"closed\"") {
            Some("closed")
        } else {
            None
        }
    }

    /// A `data-NAME="…"` attribute of the page, `&amp;` decoded.
    fn attr(&self, name: &str) -> Option<String> {
        let t = self.text();
        let key = format!("data-{name}=\"");
        let i = t.find(&key)? + key.len();
        let j = t[i..].find('"')?;
        Some(t[i..i + j].replace("&amp;", "&"))
    }
}

/// One simulated person.
struct Person<'a> {
    crowd: &'a Crowd,
    target: SocketAddr,
    user: String,
    jar: Jar,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl<'a> Person<'a> {
    fn new(crowd: &'a Crowd, target: SocketAddr, id: u64) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        if crowd.own_addresses {
            connector.set_local_address(Some(source_address(id)));
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Person {
            crowd,
            target,
            user: format!("crowd-{id:05}"),
            jar: Jar::default(),
            client,
        }
    }

    /// Arrives after `at`, logs in, goes through the gate to the claim form and submits it.
    async fn live(mut self, at: Duration) -> Result<(), String> {
        let crowd = self.crowd;
        tokio::time::sleep(at).await;
        let form = format!("user={}", self.user);
        let r = self.page(Method::POST, "/login", Some(form)).await?;
        if !r.status.is_redirection() {
            return Err(format!("login: {}", r.status));
        }
        let mut inside = None;
        for (method, path, form) in [
            (Method::GET, "/account", None),
            (Method::GET, "/claim", None),
            (
                Method::POST,
                "/claim",
                Some("tipo=indennita-600&dichiarazione=on".to_owned()),
            ),
        ] {
            if inside.is_some() {
                self.think().await;
            }
            let r = self.page(method, path, form).await?;
            if r.status != StatusCode::OK {
                return Err(format!("{path}: {}", r.status));
            }
            inside.get_or_insert_with(|| Gauge::enter(&crowd.inside));
        }
        Ok(())
    }

    async fn think(&self) {
        let j = rand::thread_rng().gen_range(0.5..1.5);
        tokio::time::sleep(self.crowd.think.mul_f64(j)).await;
    }

    /// A page through anticamera, as a browser gets it: waits in the waiting room whenever
    /// the answer is the queue page, backs off on 429 and 5xx (honouring `Retry-After`).
    async fn page(
        &mut self,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Answer, String> {
        let mut failures = 0;
        let mut backoff = Duration::from_millis(500);
        let mut queued = false;
        loop {
            let r = self
                .send(method.clone(), path, HTML, form.clone(), Duration::ZERO)
                .await;
            let pause = match r {
                Ok(r) => match r.room_page() {
                    Some("queue") => {
                        if !queued {
                            queued = true;
                            self.crowd.queued.fetch_add(1, Relaxed);
                        }
                        self.wait_in_line(&r).await;
                        continue;
                    }
                    Some(_) => return Err(format!("{path}: closed")),
                    None if r.status == StatusCode::TOO_MANY_REQUESTS
                        || r.status.is_server_error() =>
                    {
                        r.retry_after().unwrap_or(backoff)
                    }
                    None => return Ok(r),
                },
                Err(e) => {
                    tracing::debug!(user = %self.user, path, error = %e, "crowd request failed");
                    backoff
                }
            };
            failures += 1;
            if failures >= ATTEMPTS {
                return Err(format!("{path}: {failures} failures"));
            }
            let j = rand::thread_rng().gen_range(0.8..1.2);
            tokio::time::sleep(pause.max(Duration::from_millis(200)).mul_f64(j)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Waits as the queue page's script does, until the status says `admitted` (or that there
    /// is no ticket): then the page is requested again.
    async fn wait_in_line(&mut self, page: &Answer) {
        let _waiting = Gauge::enter(&self.crowd.waiting);
        let Some(status) = page.attr("status") else {
            // No script data: the page's <noscript> refresh.
            tokio::time::sleep(page.retry_after().unwrap_or(Duration::from_secs(5))).await;
            return;
        };
        let base = page
            .attr("refresh")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5)
            .max(1);
        let mut delay = Duration::from_secs(base);
        let mut hold = page
            .attr("long-poll")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut last = Duration::ZERO;
        loop {
            // Long polls start at least 250 ms apart, so one held for a while is followed at
            // once; otherwise the advised pause.
            let pause = if hold > 0 {
                Duration::from_millis(250).saturating_sub(last)
            } else {
                delay
            };
            tokio::time::sleep(pause).await;
            let t0 = tokio::time::Instant::now();
            let url = format!("{status}&wait={hold}");
            let r = self
                .send(Method::GET, &url, JSON, None, Duration::from_secs(hold))
                .await;
            last = t0.elapsed();
            let v = match r {
                Ok(r) if r.status == StatusCode::NOT_FOUND => return,
                Ok(r) => serde_json::from_slice::<serde_json::Value>(&r.body).ok(),
                Err(_) => None,
            };
            let Some(v) = v.filter(|v| v.get("state").is_some()) else {
                hold = 0;
                delay = (delay * 2).min(Duration::from_secs(60));
                continue;
            };
            match v.get("state").and_then(|s| s.as_str()) {
                Some("admitted" | "closed") => return,
                _ => {
                    let retry = v
                        .get("retry_after_seconds")
                        .and_then(|s| s.as_u64())
                        .unwrap_or(base);
                    delay = Duration::from_secs(retry.max(1));
                    hold = v
                        .get("long_poll_seconds")
                        .and_then(|s| s.as_u64())
                        .unwrap_or(0);
                }
            }
        }
    }

    /// One request to anticamera with the jar's cookies; applies the answer's cookies.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        form: Option<String>,
        long_poll: Duration,
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.target))
            .header(HOST, self.target.to_string())
            .header(ACCEPT, accept)
            .header(USER_AGENT, AGENT);
        if let Some(c) = self.jar.header() {
            req = req.header(COOKIE, c);
        }
        if form.is_some() {
            req = req.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT + long_poll, exchange)
            .await
            .map_err(|_| "timeout".to_owned())??;
        self.jar.apply_all(&answer.headers);
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_loopback_and_distinct() {
        let a: Vec<IpAddr> = (0..2000).map(source_address).collect();
        assert!(a.iter().all(|a| a.is_loopback()));
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), a.len());
        assert_eq!(a[0], IpAddr::V4(Ipv4Addr::new(127, 42, 0, 1)));
    }

    #[test]
    fn the_jar_keeps_replaces_and_deletes_cookies() {
        let mut jar = Jar::default();
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "a=1; Path=/".parse().unwrap());
        h.append(SET_COOKIE, "b=2; HttpOnly".parse().unwrap());
        jar.apply_all(&h);
        assert_eq!(jar.header().as_deref(), Some("a=1; b=2"));
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "a=; Max-Age=0".parse().unwrap());
        h.append(SET_COOKIE, "b=3".parse().unwrap());
        jar.apply_all(&h);
        assert_eq!(jar.header().as_deref(), Some("b=3"));
    }

    #[test]
    fn the_queue_page_is_read_as_its_script_reads_it() {
        let page = Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                b"<main data-anticamera=\"queue\" data-status=\"/.anticamera/status?gate=services&amp;x=1\" data-refresh=\"3\" data-long-poll=\"20\">",
            ),
        };
        assert_eq!(page.room_page(), Some("queue"));
        assert_eq!(
            page.attr("status").as_deref(),
            Some("/.anticamera/status?gate=services&x=1")
        );
        assert_eq!(page.attr("refresh").as_deref(), Some("3"));
        assert_eq!(page.attr("long-poll").as_deref(), Some("20"));
        assert_eq!(page.attr("missing"), None);
    }
}
