//! Pages the portal stamps as nobody's (`isolation.anonymous_stamps`), black-box over raw TCP.
//! Its own test binary: the refusals it provokes count in the process-wide leak counter that
//! tests/isolation.rs reads exactly.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw TCP portal that answers every request with the page `/as/{owner}` names, stamped for
/// that owner.
async fn stamping_portal() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let owner = path.trim_start_matches("/as/");
                    let body = format!("page of {owner}");
                    let out = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-portal-user: {owner}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
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

const ISO: &str =
    "[isolation]\nsession_cookies = [\"portal_session\"]\nleak_guard_header = \"x-portal-user\"\n";

#[tokio::test]
async fn pages_stamped_anonymous_reach_anonymous_visitors_and_bind_nobody() {
    // The portal stamps every page: its user's name, or "anon" for a page that is nobody's.
    let up = stamping_portal().await;
    let p = proxy(
        up,
        "",
        &format!("{ISO}anonymous_stamps = [\"anon\", \"-\"]\n"),
    );
    // An anonymous visitor gets the anonymous page (the stamp does not reach the client).
    let (s, h, body) = get_as(p.addr, "/as/anon", None).await;
    assert_eq!((s, body.as_str()), (200, "page of anon"));
    assert!(h.get("x-portal-user").is_none());
    assert_eq!(get_as(p.addr, "/as/-", None).await.0, 200);
    // A request without credentials is still refused a page stamped for a user.
    let (s, _, body) = get_as(p.addr, "/as/alice", None).await;
    assert_eq!(s, 502);
    assert!(!body.contains("page of alice"), "{body}");
    // An anonymous page seen first by a session binds it to nobody: its own page still passes,
    // and then another user's is refused.
    assert_eq!(get_as(p.addr, "/as/anon", Some("carol")).await.0, 200);
    let (s, _, body) = get_as(p.addr, "/as/carol", Some("carol")).await;
    assert_eq!((s, body.as_str()), (200, "page of carol"));
    assert_eq!(get_as(p.addr, "/as/dave", Some("carol")).await.0, 502);
    // An anonymous page still reaches a signed-in user.
    assert_eq!(get_as(p.addr, "/as/anon", Some("carol")).await.0, 200);
    let (_, _, m) = get(p.admin, "/metrics").await;
    assert!(
        m.contains("anticamera_isolation_refused_total{reason=\"leak\"} 2"),
        "{m}"
    );
}
