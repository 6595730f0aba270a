//! The portal's server: the accept loop, the load model applied per request, the routes
//! (login, account, claim, plumbing) and the page helpers.

use anticamera_util::escape::html_escape;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
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
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crowd::{Crowd, CrowdError};
use crate::{
    fake_identity, is_name_char, load_plan, InFlight, PortalConfig, PortalStats, StatsSnapshot,
    DOWNLOAD_CHUNK, JITTER, MAX_DOWNLOAD,
};

/// Largest form / JSON body read by `/login` and `/api/login`.
const MAX_FORM: usize = 64 * 1024;

/// Response body type of the portal.
type Body = BoxBody<Bytes, Infallible>;

/// A running portal. Dropping it (or [`PortalHandle::shutdown`]) stops it.
#[derive(Debug)]
pub struct PortalHandle {
    /// Address the portal listens on.
    pub addr: SocketAddr,
    /// Live counters.
    pub stats: Arc<PortalStats>,
    /// The demo's crowd (people sent through anticamera); stopped when the handle is dropped.
    pub crowd: Arc<Crowd>,
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
        self.crowd.stop();
    }
}

struct Shared {
    cfg: PortalConfig,
    user_header: HeaderName,
    /// `None`: the portal never sends a release header.
    release_header: Option<HeaderName>,
    stats: Arc<PortalStats>,
    crowd: Arc<Crowd>,
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
    let release_header = if cfg.release_header.is_empty() {
        None
    } else {
        Some(
            HeaderName::from_bytes(cfg.release_header.as_bytes())
                .map_err(|e| invalid(e.to_string()))?,
        )
    };
    let addr = listener.local_addr()?;
    let stats = Arc::new(PortalStats::new());
    let crowd = Crowd::new(cfg.anticamera, cfg.crowd_max, cfg.crowd_think);
    let shared = Arc::new(Shared {
        cfg,
        user_header,
        release_header,
        stats: stats.clone(),
        crowd: crowd.clone(),
        sessions: Mutex::new(HashMap::new()),
        html_cache: Mutex::new(None),
        json_cache: Mutex::new(None),
    });
    let task = tokio::spawn(accept_loop(listener, shared));
    tracing::info!(%addr, "demo portal listening");
    Ok(PortalHandle {
        addr,
        stats,
        crowd,
        task,
    })
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
    if path == "/__portal/crowd" {
        return Ok(crowd(&sh, req.method(), req.headers()));
    }
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

/// `POST /__portal/crowd`: the home page's button starts a wave of simulated people (a page
/// says how many and what to do now); `GET`: what the crowd is doing (JSON). Outside the load
/// model: it is the demo's control, not the portal.
fn crowd(sh: &Shared, method: &Method, headers: &HeaderMap) -> Response<Body> {
    match *method {
        Method::GET => json(StatusCode::OK, &sh.crowd.status()),
        Method::POST => {
            // A form posted from another site must not start a crowd on someone's demo.
            let host = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok());
            let origin = headers
                .get(http::header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            if let Some(origin) = origin {
                let same = host.is_some_and(|h| {
                    origin
                        .strip_prefix("http://")
                        .or(origin.strip_prefix("https://"))
                        == Some(h)
                });
                if !same {
                    return text(StatusCode::FORBIDDEN, "cross-site request refused");
                }
            }
            let mut r = match sh.crowd.wave(sh.cfg.crowd_people, sh.cfg.crowd_over) {
                Ok(w) if w.started == 0 => page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Demo: crowd",
                    &format!(
                        "<p>{} simulated people are already in the demo: that is the most at once. \
                         No one was added; try again when some have left.</p>\
                         <p><a href=\"/claim\">Open the claim form</a> &middot; <a href=\"/\">Home</a></p>",
                        w.active
                    ),
                ),
                Ok(w) => page(
                    StatusCode::OK,
                    "Demo: crowd",
                    &format!(
                        "<section class=\"demo-box\"><h2>{} simulated people are on their way</h2>\
                         <p>They go through anticamera to the claim form, arriving over {}: they log in, \
                         wait in line, fill in the claim and leave.{}</p>\
                         <p><strong><a href=\"/claim\">Open the claim form now</a></strong>: you will \
                         wait in line behind them, watch your place move, and get in.</p>\
                         <p>{} simulated people in the demo now (at most {} at once).</p></section>",
                        w.started,
                        humantime::format_duration(sh.cfg.crowd_over),
                        if w.started < w.asked {
                            format!(" Only {} of {} were sent: the rest would pass the cap.", w.started, w.asked)
                        } else {
                            String::new()
                        },
                        w.active,
                        w.max
                    ),
                ),
                Err(CrowdError::NoTarget) => page(
                    StatusCode::CONFLICT,
                    "Demo: crowd",
                    "<p>This portal runs alone: it does not know where anticamera listens, so it \
                     cannot send a crowd through it. Start it with <code>anticamera demo</code>.</p>",
                ),
                Err(e @ CrowdError::Stopped) => page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Demo: crowd",
                    &format!("<p>{}.</p>", html_escape(&e.to_string())),
                ),
            };
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "405"),
    }
}

/// The home page; behind `anticamera demo`, with the crowd button.
fn home(sh: &Shared) -> String {
    let control = match sh.crowd.target() {
        Some(_) => format!(
            "<form class=\"demo-box\" method=\"post\" action=\"/__portal/crowd\">\
             <p><strong>Demo:</strong> one browser alone never fills the waiting room. Send a crowd \
             of simulated people through anticamera, then open the claim form yourself: you will \
             queue behind them.</p><button type=\"submit\">Send {} people to the claim form</button>\
             <p class=\"demo\">At most {} simulated people at once: pressing again while a wave \
             runs adds people only up to that.</p></form>",
            sh.cfg.crowd_people, sh.crowd.max()
        ),
        None => "<p class=\"demo-box\"><strong>Demo:</strong> to send a crowd of simulated \
                 people through the waiting room, start the portal with <code>anticamera demo</code> \
                 (this portal runs alone and does not know where anticamera listens).</p>"
            .to_owned(),
    };
    format!("{HOME}{control}")
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
        (Method::GET, "/") => public(page(StatusCode::OK, "Portale Previdenza Demo", &home(sh))),
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
    if let Some(h) = &sh.release_header {
        r.headers_mut()
            .insert(h.clone(), HeaderValue::from_static("1"));
    }
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

fn header_contains(h: &HeaderMap, name: HeaderName, needle: &str) -> bool {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(needle))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Value of `key` in an `application/x-www-form-urlencoded` body.
pub(crate) fn form_value(body: &[u8], key: &str) -> Option<String> {
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
main{padding:1em;max-width:48em}.demo{font-size:.8em;opacity:.8}code{background:#eee;padding:0 .2em}\
.demo-box{border:2px dashed #b35900;padding:.5em 1em;margin:1em 0;background:#fff8f0}\n";
