//! Request framing hygiene (issue: session isolation). Ambiguous or malformed requests from
//! clients are refused with 400 and the connection closed; a smuggled inner request never
//! reaches the portal.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;

/// An upstream that records every request line it receives.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri()));
            let _ = req.into_body().collect().await;
            http::Response::new(full("portal"))
        }
    })
    .await;
    (up, seen)
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn cases() -> Vec<(&'static str, String)> {
    vec![
        (
            "CL and TE together",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE then CL",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obfuscated TE",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE with a space before colon",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "unknown TE coding",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE chunked twice",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two different Content-Lengths",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 39\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two equal Content-Lengths",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "malformed Content-Length",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bad chunk size",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunk size with junk",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1 zz\r\nA\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF line endings",
            format!("POST / HTTP/1.1\nHost: x\nContent-Length: 0\n\n{SMUGGLED}"),
        ),
        (
            "bare CR in a header",
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rContent-Length: 39\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obs-fold",
            format!("POST / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Content-Length: 39\r\n\r\n{SMUGGLED}"),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "empty header name",
            format!("GET / HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n{SMUGGLED}"),
        ),
        (
            "whitespace before colon",
            format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 39\r\n\r\n{SMUGGLED}"),
        ),
        (
            "absolute-form target disagreeing with Host",
            "GET http://other.example/ HTTP/1.1\r\nHost: portal.example\r\n\r\n".to_string(),
        ),
    ]
}

#[tokio::test]
async fn ambiguous_requests_are_refused_and_nothing_smuggled_reaches_the_portal() {
    let (up, seen) = recording_upstream().await;
    let p = proxy(up.addr, "", "");
    let mut failures = Vec::new();
    for (name, bytes) in cases() {
        seen.lock().unwrap().clear();
        let resp = raw(p.addr, bytes.as_bytes(), Duration::from_secs(3)).await;
        let status_ok = resp.starts_with("HTTP/1.1 400");
        let responses = resp.matches("HTTP/1.1 ").count();
        let reached: Vec<String> = seen.lock().unwrap().clone();
        let smuggled = reached.iter().any(|r| r.contains("smuggled"));
        if !status_ok || responses != 1 || smuggled || !reached.is_empty() {
            failures.push(format!(
                "{name}: first line {:?}, {responses} responses, portal saw {reached:?}",
                resp.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_body_anticamera_does_not_read_is_never_taken_for_a_request() {
    let (up, seen) = recording_upstream().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"framing-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\nmode = \"paused\"\n",
        up.addr
    );
    let p = proxy_from(&text);
    // The gate is paused: anticamera answers the POST itself (queue page) without reading its
    // body; the body hides a request that must never be served.
    let req = format!(
        "POST /claim HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let resp = raw(p.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}
