//! Black-box tests of the forwarding path over real sockets.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn methods_bodies_and_headers_are_forwarded() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "", "");
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}/some/path?q=1&r=%20x", p.addr))
            .header("x-custom", "value")
            .header("cookie", "a=1; b=2")
            .body(full(Bytes::from(format!("body of {method}"))))
            .unwrap();
        let (status, _, body) = send(req).await;
        assert_eq!(status, 200);
        let v = json(&body);
        assert_eq!(v["method"], method);
        assert_eq!(v["uri"], "/some/path?q=1&r=%20x");
        assert_eq!(v["body"], format!("body of {method}"));
        assert_eq!(seen(&v, "x-custom"), vec!["value"]);
        assert_eq!(seen(&v, "cookie"), vec!["a=1; b=2"]);
        assert_eq!(seen(&v, "host"), vec![p.addr.to_string()]);
    }
    // HEAD: no body comes back.
    let req = Request::head(format!("http://{}/", p.addr))
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!((status, body.as_str()), (200, ""));
}

#[tokio::test]
async fn upstream_status_headers_and_body_come_back() {
    let up = upstream(|_req| async {
        http::Response::builder()
            .status(418)
            .header("x-from-portal", "yes")
            .header("set-cookie", "s=1; HttpOnly")
            .body(full("teapot"))
            .unwrap()
    })
    .await;
    let p = proxy(up.addr, "", "");
    let (status, h, body) = get(p.addr, "/").await;
    assert_eq!(status, 418);
    assert_eq!(h["x-from-portal"], "yes");
    assert_eq!(h["set-cookie"], "s=1; HttpOnly");
    assert_eq!(body, "teapot");
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "", "");
    let req = Request::post(format!("http://{}/h2", p.addr))
        .body(full("over h2"))
        .unwrap();
    let resp = client(true).request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = json(std::str::from_utf8(&body).unwrap());
    assert_eq!(v["body"], "over h2");
    // The portal gets HTTP/1.1 with a Host header taken from :authority.
    assert_eq!(seen(&v, "host"), vec![p.addr.to_string()]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        http::Response::builder()
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=99")
            .header("proxy-authenticate", "Basic")
            .header("upgrade", "h2c")
            .body(full(names.join(",")))
            .unwrap()
    })
    .await;
    let p = proxy(up.addr, "", "");
    let resp = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
          TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-End: 1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !body.split(',').any(|n| n == gone),
            "{gone} reached the portal: {body}"
        );
    }
    assert!(body.contains("x-end"), "{body}");
    let head = head.to_ascii_lowercase();
    for gone in ["x-internal", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(
            !head.contains(&format!("\r\n{gone}:")),
            "{gone} reached the client: {head}"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "", "");
    let req = Request::get(format!("http://{}/", p.addr))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "6.6.6.6")
        .body(full(""))
        .unwrap();
    let v = json(&send(req).await.2);
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen(&v, "x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(seen(&v, "x-forwarded-proto"), vec!["http"]);
    let fwd = seen(&v, "forwarded");
    assert_eq!(fwd.len(), 1);
    assert!(fwd[0].starts_with("for=127.0.0.1;"), "{fwd:?}");
    assert!(!fwd[0].contains("6.6.6.6"));
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_peer_are_extended() {
    let up = echo_upstream().await;
    let p = proxy(
        up.addr,
        "",
        "[forwarding]\ntrusted_forwarders = [\"127.0.0.0/8\"]\n",
    );
    let req = Request::get(format!("http://{}/", p.addr))
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-proto", "https")
        .body(full(""))
        .unwrap();
    let v = json(&send(req).await.2);
    assert_eq!(seen(&v, "x-forwarded-for"), vec!["198.51.100.4, 127.0.0.1"]);
    assert_eq!(seen(&v, "x-real-ip"), vec!["198.51.100.4"]);
    assert_eq!(seen(&v, "x-forwarded-proto"), vec!["https"]);
}

#[tokio::test]
async fn oversized_head_and_too_many_headers_get_431() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "max_header_bytes = \"8KiB\"\nmax_headers = 20", "");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let resp = raw(p.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(p.addr, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let h = h.clone();
        async move {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = req.into_body().collect().await;
            http::Response::new(full("ok"))
        }
    })
    .await;
    let p = proxy(up.addr, "max_body_bytes = 1000", "");
    // Declared too large: refused before the portal sees anything.
    let resp = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Chunked, grows past the limit while streaming.
    let chunk = format!("{:x}\r\n{}\r\n", 800, "b".repeat(800));
    let mut body = Vec::new();
    body.extend_from_slice(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    body.extend_from_slice(chunk.as_bytes());
    body.extend_from_slice(chunk.as_bytes());
    body.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(p.addr, &body, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Within the limit it goes through.
    let req = Request::post(format!("http://{}/", p.addr))
        .body(full("x".repeat(999)))
        .unwrap();
    assert_eq!(send(req).await.0, 200);
}

#[tokio::test]
async fn slowloris_head_is_cut_off() {
    let up = echo_upstream().await;
    let p = proxy(
        up.addr,
        "request_head_timeout = \"300ms\"\nidle_timeout = \"10s\"",
        "",
    );
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    // Trickle one header byte now and then: the deadline counts from the first byte.
    let mut closed = false;
    for _ in 0..20 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "connection still open after a trickled head");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_but_a_busy_one_is_not() {
    let up = slow_upstream(Duration::from_millis(700), "slow").await;
    let p = proxy(
        up.addr,
        "idle_timeout = \"300ms\"\nrequest_head_timeout = \"5s\"",
        "",
    );
    // A request slower than the idle timeout completes: it is not idle.
    let (status, _, body) = get(p.addr, "/").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    // A connection that sends nothing is closed after the idle timeout.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn unreachable_upstream_gets_502() {
    // Bind then drop: nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(dead, "", "");
    let req = Request::get(format!("http://{}/", p.addr))
        .header("accept", "application/json")
        .body(full(""))
        .unwrap();
    let (status, h, body) = send(req).await;
    assert_eq!(status, 502);
    assert_eq!(h["retry-after"], "5");
    assert_eq!(json(&body)["error"], "upstream_unavailable");
}

#[tokio::test]
async fn upstream_connect_timeout_gets_502_quickly() {
    // A listener with a backlog of 0 that never accepts: once its queue is full, further SYNs
    // are dropped and connecting hangs — the connect deadline must answer.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let p = proxy(
        addr,
        "",
        "connect_timeout = \"300ms\"\nresponse_timeout = \"10s\"",
    );
    let started = Instant::now();
    let (status, _, _) = get(p.addr, "/").await;
    assert_eq!(status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(sock);
}

#[tokio::test]
async fn slow_upstream_gets_504() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        http::Response::new(full("too late"))
    })
    .await;
    let p = proxy(up.addr, "", "response_timeout = \"300ms\"");
    let started = Instant::now();
    let (status, h, body) = get(p.addr, "/").await;
    assert_eq!(status, 504);
    assert_eq!(h["cache-control"], "no-store");
    assert!(body.contains("too long"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "max_connections = 2", "");
    let mut a = TcpStream::connect(p.addr).await.unwrap();
    let mut b = TcpStream::connect(p.addr).await.unwrap();
    // Make sure both are accepted and counted before the third.
    for s in [&mut a, &mut b] {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    drop(a);
    drop(b);
    // Once they close, new connections are served again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(p.addr, "/").await.0, 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = slow_upstream(Duration::from_millis(800), "finished").await;
    let p = proxy(up.addr, "shutdown_grace = \"5s\"", "");
    let addr = p.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handle = p.shutdown_handle();
    handle.shutdown();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "finished"));
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "still accepting after shutdown"
    );
    p.stop().await;
}

#[tokio::test]
async fn admin_listener_serves_metrics_health_and_readiness() {
    let up = echo_upstream().await;
    let p = proxy(up.addr, "", "");
    assert_eq!(get(p.addr, "/counted").await.0, 200);
    let (status, h, body) = get(p.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "anticamera_requests_total{route=\"open\",outcome=\"forwarded\",status=\"200\"}",
        "anticamera_request_duration_seconds_bucket",
        "anticamera_upstream_duration_seconds_bucket",
        "anticamera_open_connections",
        "anticamera_connections_total",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert_eq!(get(p.admin, "/healthz").await.0, 200);
    assert_eq!(get(p.admin, "/readyz").await.0, 200);
    assert_eq!(get(p.admin, "/nope").await.0, 404);
    p.shutdown_handle().shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(p.admin, "/readyz").await.0, 503);
}
