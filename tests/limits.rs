//! Rate limits, load shedding and the circuit breaker, over real sockets.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;

async fn get_with(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: Option<&str>,
    json: bool,
) -> (u16, http::HeaderMap, String) {
    let mut b = Request::get(format!("http://{addr}{path}"));
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    if json {
        b = b.header("accept", "application/json");
    }
    send(b.body(full("")).unwrap()).await
}

#[tokio::test]
async fn address_limit_burst_rate_headers_and_an_honest_retry_after() {
    let up = echo_upstream().await;
    let p = proxy(
        up.addr,
        "",
        "[rate_limits]\nper_address = { rate = \"2/s\", burst = 4 }\n",
    );
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..10 {
        let (s, h, body) = get_with(p.addr, "/", None, true).await;
        match s {
            200 => ok += 1,
            429 => limited = Some((h, body)),
            other => panic!("{other}"),
        }
    }
    assert!(
        (4..=5).contains(&ok),
        "burst of 4 (+1 refilled at most): {ok}"
    );
    let (h, body) = limited.expect("no 429");
    let v = json(&body);
    assert_eq!(v["error"], "rate_limited");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=1).contains(&retry),
        "2/s: one token within 1 s, got {retry}"
    );
    assert!(h.contains_key("ratelimit-policy"), "{h:?}");
    assert!(h.contains_key("ratelimit"), "{h:?}");
    assert_eq!(h["cache-control"], "no-store");
    // Waiting exactly Retry-After is enough.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get_with(p.addr, "/", None, false).await.0, 200);
    // Sustained: over 2 s at most ~2/s more get through.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if get_with(p.addr, "/", None, false).await.0 == 200 {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        (3..=6).contains(&served),
        "2/s over 2 s (+ refill): {served}"
    );
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(
        m.contains("anticamera_ratelimit_limited_total{kind=\"address\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn sessions_have_their_own_buckets() {
    let up = echo_upstream().await;
    let p = proxy(
        up.addr,
        "",
        "[isolation]\nsession_cookies = [\"portal_session\"]\n[rate_limits]\nper_session = { rate = \"1/s\", burst = 3 }\n",
    );
    let a = Some("portal_session=alice");
    let b = Some("portal_session=bob");
    for _ in 0..3 {
        assert_eq!(get_with(p.addr, "/", a, false).await.0, 200);
    }
    let (s, _, html) = get_with(p.addr, "/", a, false).await;
    assert_eq!(s, 429);
    assert!(
        html.contains("<h1>Too Many Requests</h1>"),
        "HTML for browsers: {html}"
    );
    // Bob is not affected by Alice.
    assert_eq!(get_with(p.addr, "/", b, false).await.0, 200);
}

#[tokio::test]
async fn users_inside_are_shed_last_and_new_arrivals_first() {
    let up = slow_upstream(Duration::from_millis(400), "done").await;
    let p = proxy(
        up.addr,
        "",
        "[isolation]\nsession_cookies = [\"portal_session\"]\n\
         [upstream_guard]\nmax_in_flight = 4\nreserve_for_inside = 0.5\nqueue_size = 4\nqueue_timeout = \"3s\"\n",
    );
    let mut tasks = Vec::new();
    for i in 0..12 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let cookie = (i % 3 == 0).then(|| format!("portal_session=u{i}"));
            let (s, h, _) = get_with(addr, "/claim", cookie.as_deref(), false).await;
            (cookie.is_some(), s, h)
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut inside = (0, 0);
    let mut new = (0, 0);
    for t in tasks {
        let (is_inside, s, h) = t.await.unwrap();
        if s == 503 {
            assert!(h.contains_key("retry-after"));
        }
        let c = if is_inside { &mut inside } else { &mut new };
        if s == 200 {
            c.0 += 1
        } else {
            c.1 += 1
        }
    }
    assert_eq!(
        inside.1, 0,
        "a user inside was shed: inside {inside:?}, new {new:?}"
    );
    assert!(new.1 > 0, "nothing shed: new {new:?}");
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(m.contains("anticamera_shed_total{reason="), "{m}");
    assert!(m.contains("priority=\"new\""), "{m}");
    assert!(!m.contains("priority=\"inside\""), "{m}");
}

/// A portal whose every answer takes `ms`, counting the requests it works on now and the most
/// it ever worked on at once.
async fn counting_portal(ms: u64) -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    let up = upstream(move |_req| {
        let (n, p) = (n2.clone(), p2.clone());
        async move {
            let c = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(c, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("ok"))
        }
    })
    .await;
    (up, now, peak)
}

#[tokio::test]
async fn the_portal_never_sees_more_than_the_limit() {
    let (up, _, peak) = counting_portal(50).await;
    let p = proxy(
        up.addr,
        "",
        "[upstream_guard]\nmax_in_flight = 5\nqueue_size = 200\nqueue_timeout = \"10s\"\n",
    );
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move { get(addr, "/").await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(
        m.contains("anticamera_upstream_slot_wait_seconds_bucket"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_does_not_free_a_slot_the_portal_still_works_in() {
    let (up, now, peak) = counting_portal(400).await;
    let p = proxy(
        up.addr,
        "",
        "[upstream_guard]\nmax_in_flight = 2\nreserve_for_inside = 0.0\nqueue_size = 50\nqueue_timeout = \"10s\"\n",
    );
    // Two clients send a request and hang up while the portal works on it.
    for _ in 0..2 {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nhost: portal\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(now.load(Ordering::SeqCst), 2, "both at the portal");
    // Others come at once: they wait for the portal to finish the abandoned requests.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move { get(addr, "/").await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "the portal saw {} at once, over the limit of 2",
        peak.load(Ordering::SeqCst)
    );
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(m.contains("anticamera_upstream_abandoned_total 2"), "{m}");
}

#[tokio::test]
async fn the_circuit_breaker_opens_answers_at_once_and_closes_after_recovery() {
    let port_holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let p = proxy(
        addr,
        "",
        "[upstream_guard]\nmax_in_flight = 10\n[upstream_guard.breaker]\nfailures = 3\nopen_for = \"500ms\"\n",
    );
    // The portal is down: connection failures open the breaker after 3.
    for _ in 0..3 {
        assert_eq!(get(p.addr, "/").await.0, 502);
    }
    let started = Instant::now();
    let (s, h, body) = get_with(p.addr, "/", None, true).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(json(&body)["error"], "portal_unavailable");
    assert!(h.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "should answer at once"
    );
    // The portal comes back; after open_for a probe goes through and closes the breaker.
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let back = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_r| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("back")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut ok = false;
    for _ in 0..20 {
        if get(p.addr, "/").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "breaker never closed");
    for _ in 0..5 {
        assert_eq!(get(p.addr, "/").await.0, 200);
    }
    back.abort();
}

#[tokio::test]
async fn a_struggling_portal_slows_admissions_down() {
    // The portal is down: the breaker opens and the waiting room's admission factor drops.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{dead}\"]\n\
         [upstream_guard]\n[upstream_guard.breaker]\nfailures = 2\nopen_for = \"10s\"\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"limits-test-key-0123456789abcdef0123\" }}]\ntick = \"20ms\"\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 100\nadmit_per_minute = 600\n"
    );
    let p = proxy_from(&text);
    for _ in 0..3 {
        get(p.addr, "/info").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let factor = admission_factor(&p).await;
    assert!(
        factor < 0.2,
        "admission factor {factor} with the portal down"
    );
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(m.contains("anticamera_breaker_state 1"), "{m}");
}

/// The waiting room's admission factor, from the metrics.
async fn admission_factor(p: &Proxy) -> f64 {
    let (_, _, m) = get(p.admin, "/metrics").await;
    m.lines()
        .find(|l| l.starts_with("anticamera_waitroom_admission_factor "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no admission factor in {m}"))
}

#[tokio::test]
async fn only_people_let_in_piling_up_at_the_portal_slow_admissions() {
    // 200 ms a request; new arrivals get 1 of the 2 slots (the default reserve for inside):
    // each crowd below takes up to 20 × 200 ms = 4 s, well within the 10 s queue timeout (5 s
    // left too little margin on a loaded machine: one request of the second crowd was shed).
    let up = slow_upstream(Duration::from_millis(200), "ok").await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{}\"]\n\
         [upstream_guard]\nmax_in_flight = 2\nqueue_size = 100\nqueue_timeout = \"10s\"\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"limits-test-key-0123456789abcdef0123\" }}]\ntick = \"20ms\"\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 10000\n",
        up.addr
    );
    // A capacity so large that even the lowest admission factor (0.01) leaves room for all
    // twenty below, however late a slow machine lets the last of them arrive.
    let p = proxy_from(&text);
    // Twenty new arrivals queue for the portal's 2 slots on an open page: a crowd at the door,
    // which admitting fewer would not help. Admission goes on at full speed.
    let crowd: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(p.addr, "/info")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let factor = admission_factor(&p).await;
    assert!(
        factor > 0.99,
        "admission factor {factor} with only new arrivals queued"
    );
    for c in crowd {
        assert_eq!(c.await.unwrap().0, 200);
    }
    // Twenty people let in (the gate has room: each is admitted on the spot) queue the same
    // way: the portal is behind on people already inside, so admission slows down.
    let inside: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(p.addr, "/claim")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let factor = admission_factor(&p).await;
    assert!(
        factor < 0.9,
        "admission factor {factor} with people inside queued"
    );
    for c in inside {
        let (status, h, body) = c.await.unwrap();
        assert_eq!(status, 200, "{h:?}\n{body}");
    }
}

/// A GET from `client` (the address anticamera believes, through a trusted forwarder).
async fn get_from(addr: std::net::SocketAddr, client: std::net::IpAddr) -> (u16, http::HeaderMap) {
    let req = Request::get(format!("http://{addr}/"))
        .header("x-forwarded-for", client.to_string())
        .body(full(""))
        .unwrap();
    let (s, h, _) = send(req).await;
    (s, h)
}

#[tokio::test]
async fn an_address_spray_neither_locks_newcomers_out_nor_mints_budgets_inside_a_prefix() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let up = echo_upstream().await;
    // 1/h per address: a bucket spent during the test stays spent. Default aggregates: a /48
    // shares 16 × (burst 2) = 32, a /32 1024 × 2 = 2048; an IPv4 /24 32 × 2 = 64.
    let p = proxy(
        up.addr,
        "",
        "[forwarding]\ntrusted_forwarders = [\"127.0.0.0/8\"]\n\
         [rate_limits]\nmax_keys = 1000\nper_address = { rate = \"1/h\", burst = 2 }\n",
    );
    // A sprayer rotating /64s inside one /48: each /64 is new, but the /48 shares 32.
    let mut served = 0;
    let mut refused = None;
    for i in 0..60u128 {
        let a = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0048u128 << 80 | i << 64 | 1));
        match get_from(p.addr, a).await {
            (200, _) => served += 1,
            (429, h) => refused = Some(h),
            (s, h) => panic!("{s} {h:?}"),
        }
    }
    assert_eq!(served, 32, "a /48 shares 16 × the per-address burst");
    let h = refused.expect("rotating inside a /48 was never refused");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(
        h["ratelimit-policy"].to_str().unwrap().contains("q=32"),
        "refused by the /48 bucket: {h:?}"
    );
    // A neighbour in another /48 of the same /32 is not affected.
    let (s, _) = get_from(
        p.addr,
        IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0049u128 << 80 | 1)),
    )
    .await;
    assert_eq!(s, 200);
    // The same inside one IPv4 /24: 64 distinct addresses' first requests, then 429.
    let mut served = 0;
    for i in 0..=255u8 {
        if get_from(p.addr, IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
            .await
            .0
            == 200
        {
            served += 1;
        }
    }
    assert_eq!(served, 64, "a /24 shares 32 × the per-address burst");

    // The spray: 3 000 addresses in 3 000 distinct /32s (9 000 keys with their /48s and /32s,
    // nine times the table), 50 at a time.
    let spray: Vec<IpAddr> = (0..3000u128)
        .map(|i| IpAddr::V6(Ipv6Addr::from((0x2400_0000 + i * 7919) << 96 | i << 40 | 1)))
        .collect();
    let mut sprayed_ok = 0;
    for chunk in spray.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&a| tokio::spawn(get_from(p.addr, a)))
            .collect();
        for t in tasks {
            sprayed_ok += usize::from(t.await.unwrap().0 == 200);
        }
    }
    assert_eq!(
        sprayed_ok, 3000,
        "every sprayed address is new: its first request is served"
    );
    // Newcomers from untouched prefixes are served on their first request, IPv6 and IPv4.
    for n in 0..20u128 {
        let v6 = IpAddr::V6(Ipv6Addr::from((0x2a0f_0000 + n) << 96 | 0xabcd << 64 | 7));
        let (s, h) = get_from(p.addr, v6).await;
        assert_eq!(s, 200, "newcomer {v6} refused after the spray: {h:?}");
        let v4 = IpAddr::V4(Ipv4Addr::new(100, 64, n as u8, 9));
        let (s, h) = get_from(p.addr, v4).await;
        assert_eq!(s, 200, "newcomer {v4} refused after the spray: {h:?}");
    }

    // The spray did not evict the spent /48 and /24 buckets (a spent bucket is evicted last):
    // rotating on is still refused.
    for i in 100..110u128 {
        let a = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0048u128 << 80 | i << 64 | 1));
        assert_eq!(get_from(p.addr, a).await.0, 429, "{a}");
    }
    assert_eq!(
        get_from(p.addr, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)))
            .await
            .0,
        429
    );
    // The evictions are counted for the operators (published every second).
    let mut evicted = 0.0;
    for _ in 0..30 {
        let (_, _, m) = get(p.admin, "/metrics").await;
        evicted = m
            .lines()
            .find(|l| l.starts_with("anticamera_ratelimit_evicted_total{kind=\"address\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0);
        if evicted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(evicted >= 2000.0, "evictions counted: {evicted}");
}
