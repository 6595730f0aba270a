//! Session isolation, black-box over raw TCP with a programmable upstream: no user is ever
//! served another user's data.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ISO: &str =
    "[isolation]\nsession_cookies = [\"portal_session\"]\nleak_guard_header = \"x-portal-user\"\n";

/// A raw TCP upstream: for each accepted connection and each request read on it, the script
/// decides the raw bytes to write back. Counts connections.
async fn raw_upstream<F>(script: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    // Read one request head (tests send no bodies to this upstream).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let out = script(n, &head);
                    if out.is_empty() {
                        return;
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

fn resp(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn path_of(head: &str) -> String {
    head.split_whitespace().nth(1).unwrap_or("").to_string()
}

fn user_of(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("cookie: portal_session=")
                .or_else(|| l.strip_prefix("Cookie: portal_session="))
        })
        .unwrap_or("anon")
        .trim()
        .to_string()
}

async fn get_as(
    addr: std::net::SocketAddr,
    path: &str,
    user: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut b = Request::get(format!("http://{addr}{path}"));
    if let Some(u) = user {
        b = b.header("cookie", format!("portal_session={u}"));
    }
    send(b.body(full("")).unwrap()).await
}

#[tokio::test]
async fn the_2020_accident_is_caught_by_the_leak_guard() {
    // A faulty portal (or cache) that answers /account with the page of whoever asked first.
    let first: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let f = first.clone();
    let (up, _) = raw_upstream(move |_, head| {
        let me = user_of(head);
        if path_of(head) == "/hello" {
            // Correct, personal, stamped: the session is bound to its user here.
            return resp(&format!("hello {me}"), &format!("x-portal-user: {me}\r\n"));
        }
        let owner = f.lock().unwrap().get_or_insert(me).clone();
        resp(
            &format!("personal data of {owner}"),
            &format!("x-portal-user: {owner}\r\ncache-control: max-age=600\r\n"),
        )
    })
    .await;
    let p = proxy(up, "", ISO);
    let (s, h, body) = get_as(p.addr, "/account", Some("alice")).await;
    assert_eq!((s, body.as_str()), (200, "personal data of alice"));
    assert!(
        h.get("x-portal-user").is_none(),
        "stamp leaked to the client"
    );
    assert_eq!(
        h["cache-control"], "private, no-store",
        "a CDN could cache a personal page"
    );
    // Bob has been using the portal (his session is bound to him)...
    assert_eq!(get_as(p.addr, "/hello", Some("bob")).await.2, "hello bob");
    // ...then asks for his page: the portal sends Alice's. anticamera refuses it.
    let (s, _, body) = get_as(p.addr, "/account", Some("bob")).await;
    assert_eq!(s, 502);
    assert!(!body.contains("alice"), "{body}");
    // An anonymous request receiving a stamped page: refused too.
    let (s, _, body) = get_as(p.addr, "/account", None).await;
    assert_eq!(s, 502);
    assert!(!body.contains("alice"));
    // Alice is still served her own.
    assert_eq!(get_as(p.addr, "/account", Some("alice")).await.0, 200);
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(
        m.contains("anticamera_isolation_leaks_blocked_total 2"),
        "{m}"
    );
}

#[tokio::test]
async fn personal_responses_are_never_cached_even_with_the_microcache_on() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let (up, _) = raw_upstream(move |_, head| {
        h2.fetch_add(1, Ordering::SeqCst);
        let me = user_of(head);
        let p = path_of(head);
        if p.starts_with("/info") {
            resp("public info", "cache-control: public, max-age=60\r\n")
        } else if p.starts_with("/setcookie") {
            resp(
                &format!("hello {me}"),
                "cache-control: public, max-age=60\r\nset-cookie: portal_session=new\r\n",
            )
        } else {
            // The portal forgot to mark it private: classic misconfiguration.
            resp(
                &format!("data of {me}"),
                &format!("cache-control: max-age=60\r\nx-portal-user: {me}\r\n"),
            )
        }
    })
    .await;
    let p = proxy(up, "", &format!("{ISO}[microcache]\nenabled = true\n"));
    // A personal page requested by two users: each gets their own, every time.
    for _ in 0..3 {
        assert_eq!(
            get_as(p.addr, "/account", Some("alice")).await.2,
            "data of alice"
        );
        assert_eq!(
            get_as(p.addr, "/account", Some("bob")).await.2,
            "data of bob"
        );
    }
    // Cache-deception spellings: never served from cache, never stored.
    for path in [
        "/account/x.css",
        "/account;x.css",
        "/account%2Fx.css",
        "/account/..%2Faccount",
    ] {
        assert_eq!(
            get_as(p.addr, path, Some("carol")).await.2,
            "data of carol",
            "{path}"
        );
        let (s, _, body) = get_as(p.addr, path, Some("dave")).await;
        assert_eq!((s, body.as_str()), (200, "data of dave"), "{path}");
    }
    // Set-Cookie replay: a response that sets a cookie is never stored or replayed.
    let (_, h, _) = get_as(p.addr, "/setcookie", None).await;
    assert_eq!(h["cache-control"], "private, no-store");
    let before = hits.load(Ordering::SeqCst);
    let (_, h, _) = get_as(p.addr, "/setcookie", None).await;
    assert!(h.contains_key("set-cookie"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "a Set-Cookie response was replayed"
    );
    // Public anonymous pages are served from the micro-cache.
    get_as(p.addr, "/info/a", None).await;
    let before = hits.load(Ordering::SeqCst);
    let (s, h, body) = get_as(p.addr, "/info/a", None).await;
    assert_eq!((s, body.as_str()), (200, "public info"));
    assert!(h.contains_key("age"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "public page not cached"
    );
    // ...but not for a request with credentials.
    get_as(p.addr, "/info/a", Some("erin")).await;
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_portal() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "", ISO);
    let req = Request::get(format!("http://{}/", p.addr))
        .header("x-portal-user", "admin")
        .header("x-remote-user", "admin")
        .header("x-anticamera-release", "1")
        .header("x-forwarded-for", "10.0.0.1")
        .body(full(""))
        .unwrap();
    let v = json(&send(req).await.2);
    for h in ["x-portal-user", "x-remote-user", "x-anticamera-release"] {
        assert!(seen(&v, h).is_empty(), "{h} reached the portal");
    }
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn an_upstream_short_body_is_never_reused() {
    // Connection 0 promises 100 bytes and sends 10, then closes; every later connection answers
    // properly. The short connection must not go back to the pool.
    let (up, conns) = raw_upstream(|n, head| {
        if n == 0 {
            let mut v = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789".to_vec();
            v.truncate(v.len());
            v
        } else {
            resp(&format!("ok {}", path_of(head)), "")
        }
    })
    .await;
    let p = proxy(up, "", "");
    let r = tokio::time::timeout(Duration::from_secs(3), get_as(p.addr, "/a", None)).await;
    // The client sees a broken body (connection error) — never someone else's bytes.
    if let Ok((s, _, body)) = r {
        assert!(s != 200 || body.len() < 100, "{s} {body}");
    }
    let (s, _, body) = get_as(p.addr, "/b", None).await;
    assert_eq!((s, body.as_str()), (200, "ok /b"));
    assert!(conns.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn an_extra_unsolicited_response_is_never_delivered_to_the_next_request() {
    // The upstream answers each request with TWO responses: the second (poisoned) must never
    // be read as the answer to another request.
    let (up, _) = raw_upstream(|_, head| {
        let mut v = resp(&format!("answer to {}", path_of(head)), "");
        v.extend_from_slice(&resp("POISON", "x-portal-user: someone-else\r\n"));
        v
    })
    .await;
    let p = proxy(up, "", ISO);
    for i in 0..20 {
        let path = format!("/r{i}");
        let (s, _, body) = get_as(p.addr, &path, Some("alice")).await;
        assert_eq!(s, 200);
        assert_eq!(
            body,
            format!("answer to {path}"),
            "response went to the wrong request"
        );
    }
}

#[tokio::test]
async fn a_body_on_a_204_or_head_response_poisons_nothing() {
    let (up, _) = raw_upstream(|_, head| {
        let p = path_of(head);
        if p == "/nocontent" {
            b"HTTP/1.1 204 No Content\r\ncontent-length: 6\r\n\r\nPOISON".to_vec()
        } else {
            resp(&format!("answer to {p}"), "")
        }
    })
    .await;
    let p = proxy(up, "", "");
    for i in 0..5 {
        assert_eq!(get_as(p.addr, "/nocontent", None).await.0, 204);
        let path = format!("/next{i}");
        let (s, _, body) = get_as(p.addr, &path, None).await;
        assert_eq!((s, body), (200, format!("answer to {path}")));
    }
}

#[tokio::test]
async fn a_stalled_upstream_connection_is_not_reused_after_a_timeout() {
    // Connection 0 answers its first request only after 2 s (past the deadline), then would
    // deliver that late answer to whoever reuses it.
    let (up, _) = raw_upstream(|n, head| {
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1500));
            resp("LATE answer for the first request", "")
        } else {
            resp(&format!("answer to {}", path_of(head)), "")
        }
    })
    .await;
    let p = proxy(up, "", "response_timeout = \"300ms\"");
    assert_eq!(get_as(p.addr, "/slow", None).await.0, 504);
    for i in 0..5 {
        let path = format!("/after{i}");
        let (s, _, body) = get_as(p.addr, &path, None).await;
        assert_eq!((s, body), (200, format!("answer to {path}")));
    }
}

#[tokio::test]
async fn a_client_abort_in_flight_leaves_no_half_read_connection() {
    let (up, _) = raw_upstream(|_, head| {
        let p = path_of(head);
        if p == "/big" {
            // Headers now, a large body the client will not wait for.
            let mut v = b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_vec();
            v.extend(std::iter::repeat_n(b'x', 2_000_000));
            v
        } else {
            resp(&format!("answer to {p}"), "")
        }
    })
    .await;
    let p = proxy(up, "", "");
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 1000];
        let _ = s.read(&mut b).await;
        drop(s); // abort mid-body
    }
    for i in 0..5 {
        let path = format!("/small{i}");
        let (st, _, body) = get_as(p.addr, &path, None).await;
        assert_eq!((st, body), (200, format!("answer to {path}")));
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        // Later requests answer faster: order must still hold.
        let n: u64 = req
            .uri()
            .path()
            .trim_start_matches("/p")
            .parse()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(50 * (5 - n.min(5)))).await;
        http::Response::new(full(format!("answer {n}")))
    })
    .await;
    let p = proxy(up.addr, "", "");
    let mut reqs = String::new();
    for i in 0..5 {
        reqs.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    reqs.push_str("GET /p9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let out = raw(p.addr, reqs.as_bytes(), Duration::from_secs(5)).await;
    let answers: Vec<&str> = out.matches("answer ").collect();
    assert_eq!(answers.len(), 6, "{out}");
    let mut last = 0;
    for i in [0, 1, 2, 3, 4, 9] {
        let at = out
            .find(&format!("answer {i}"))
            .unwrap_or_else(|| panic!("missing {i}: {out}"));
        assert!(at >= last, "answer {i} out of order: {out}");
        last = at;
    }
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[tokio::test]
async fn every_request_carries_a_fresh_id_and_an_answer_must_echo_it() {
    // The portal echoes the id it received, except on /wrong (another id) and /none (no echo).
    let (up, _) = raw_upstream(|_, head| {
        let id = header_of(head, "x-request-id").unwrap_or_default();
        let echo = match path_of(head).as_str() {
            "/wrong" => "x-request-id: 0123456789abcdef0123456789abcdef\r\n".to_string(),
            "/none" => String::new(),
            _ => format!("x-request-id: {id}\r\n"),
        };
        resp(&format!("seen id {id}"), &echo)
    })
    .await;
    let iso = "[isolation]\nrequest_id_header = \"x-request-id\"\nrequest_id_echo = true\n";
    let p = proxy(up, "", iso);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        // A client's own id is never believed: replaced by a fresh one.
        let req = Request::get(format!("http://{}/ok", p.addr))
            .header("x-request-id", "chosen-by-client")
            .body(full(""))
            .unwrap();
        let (s, h, body) = send(req).await;
        assert_eq!(s, 200, "{body}");
        let id = body.strip_prefix("seen id ").unwrap().to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(
            h["x-request-id"],
            id.as_str(),
            "the echo reaches the client"
        );
        assert!(ids.insert(id), "a request id repeated");
    }
    // A response echoing another id, or none: refused, never shown.
    for path in ["/wrong", "/none"] {
        let (s, _, body) = get_as(p.addr, path, None).await;
        assert_eq!(s, 502, "{path}");
        assert!(!body.contains("seen id"), "{body}");
    }
    let (_, _, m) = get(p.admin, "/metrics").await;
    for reason in ["request_id_mismatch", "request_id_missing"] {
        assert!(
            m.contains(&format!(
                "anticamera_isolation_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{m}"
        );
    }
    p.stop().await;

    // Behind a trusted forwarder, its id is kept (and must be echoed).
    let p = proxy(
        up,
        "",
        &format!("[forwarding]\ntrusted_forwarders = [\"127.0.0.1/32\"]\n{iso}"),
    );
    let req = Request::get(format!("http://{}/ok", p.addr))
        .header("x-request-id", "lb-42")
        .body(full(""))
        .unwrap();
    let (s, _, body) = send(req).await;
    assert_eq!((s, body.as_str()), (200, "seen id lb-42"));
}
