//! The portal over real sockets: sessions, isolation, the load model, fault mode, plumbing.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::*;
use crate::server::{form_value, hex};
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

/// A portal nobody changed for a waiting room: an empty `release_header` means the claim's
/// answer carries none (the load test's `release = false`), and the config is still valid.
#[tokio::test]
async fn an_empty_release_header_is_never_sent() {
    let cfg = PortalConfig {
        release_header: String::new(),
        ..quick()
    };
    assert!(cfg.validate().is_ok());
    let p = start(cfg).await;
    let cookie = login(p.addr, "marco").await;
    let extra = format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n");
    let r = post(p.addr, "/claim", &extra, b"amount=600").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-portal-user"), Some("marco"));
    assert_eq!(r.header("x-anticamera-release"), None);
    assert!(r.text().contains("INPS-DEMO-2020-"));
    // The default still sends it.
    let p = start(quick()).await;
    let cookie = login(p.addr, "marco").await;
    let extra = format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n");
    let r = post(p.addr, "/claim", &extra, b"amount=600").await;
    assert_eq!(r.header("x-anticamera-release"), Some("1"));
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
            !p.hang && p.latency >= prev.latency && p.error_probability >= prev.error_probability
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

// ---- the demo's crowd ----

#[tokio::test]
async fn alone_the_home_page_says_the_crowd_needs_anticamera_demo() {
    let p = start(quick()).await;
    let home = get(p.addr, "/", "").await.text();
    assert!(home.contains("anticamera demo"), "{home}");
    assert!(!home.contains("<button"), "{home}");
    let r = post(p.addr, "/__portal/crowd", "", b"").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("anticamera demo"));
    assert_eq!(p.crowd.status().sent, 0);
}

#[tokio::test]
async fn the_crowd_button_is_capped_refuses_other_sites_and_stops() {
    // A stand-in for anticamera that accepts connections and never answers: the people wait
    // on their login until they are stopped.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = mute.local_addr().unwrap();
    let p = start(PortalConfig {
        anticamera: Some(target),
        crowd_people: 5,
        crowd_over: Duration::ZERO,
        crowd_max: 8,
        ..quick()
    })
    .await;
    let home = get(p.addr, "/", "").await.text();
    assert!(home.contains("Send 5 people to the claim form"), "{home}");
    assert!(
        home.contains("At most 8 simulated people at once"),
        "{home}"
    );

    // Another site's form cannot start a wave.
    let r = post(
        p.addr,
        "/__portal/crowd",
        "Origin: http://elsewhere.example\r\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(p.crowd.status().sent, 0);

    // Same origin (the Host seen through anticamera): a wave of 5.
    let r = post(p.addr, "/__portal/crowd", "Origin: http://portal\r\n", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.text().contains("5 simulated people are on their way"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("href=\"/claim\""));
    // A second press adds only up to the cap, a third none.
    let r = post(p.addr, "/__portal/crowd", "", b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Only 3 of 5 were sent"), "{}", r.text());
    let r = post(p.addr, "/__portal/crowd", "", b"").await;
    assert_eq!(r.status, 429, "{}", r.text());
    let s = get(p.addr, "/__portal/crowd", "").await.json();
    assert_eq!(
        (s["sent"].as_u64(), s["active"].as_u64(), s["max"].as_u64()),
        (Some(8), Some(8), Some(8))
    );
    assert_eq!(s["target"].as_str(), Some(target.to_string().as_str()));

    // Stop: everyone leaves at once, and no new wave starts.
    p.crowd.stop();
    let t0 = Instant::now();
    while p.crowd.status().active > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            p.crowd.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.crowd.status().stopped);
    assert_eq!(p.crowd.wave(1, Duration::ZERO), Err(CrowdError::Stopped));
    let r = post(p.addr, "/__portal/crowd", "", b"").await;
    assert_eq!(r.status, 503);
}

#[test]
fn the_crowd_only_targets_loopback() {
    let cfg = PortalConfig {
        anticamera: Some("192.0.2.1:8080".parse().unwrap()),
        crowd_max: 0,
        ..PortalConfig::default()
    };
    let keys: Vec<String> = cfg
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["anticamera", "crowd_max"]);
}
