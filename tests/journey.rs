//! A journey's end without changing the portal: `[[gates.release_on]]` frees the place when the
//! portal answers the named request with one of the named statuses, over real sockets, with a
//! portal that never sends the release header.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use http::Request;

const KEY: &str = "journey-test-key-0123456789abcdef0123456";

/// A portal that answers with the status the request asks for (`x-want-status`), and never
/// sends the release header.
async fn portal() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let status = req
            .headers()
            .get("x-want-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(200u16);
        let mut r = http::Response::new(full(format!("portal:{}", req.uri().path())));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    })
    .await
}

#[derive(Default)]
struct Browser {
    jar: Jar,
}

impl Browser {
    async fn send(&mut self, addr: SocketAddr, method: &str, path: &str, want: u16) -> u16 {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("accept", "application/json")
            .header("x-want-status", want.to_string());
        if let Some(c) = self.jar.header() {
            b = b.header("cookie", c);
        }
        let (s, h, _) = send(b.body(full("")).unwrap()).await;
        self.jar.absorb(&h);
        s
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_request_answered_successfully_frees_the_place_at_once() {
    let portal = portal().await;
    let p = proxy_from(&held_config(portal.addr, "0s"));
    let mut a = Browser::default();
    let mut b = Browser::default();
    assert_eq!(
        a.send(p.addr, "GET", "/claim", 200).await,
        200,
        "A is let in"
    );
    assert_eq!(b.send(p.addr, "GET", "/claim", 200).await, 503, "B waits");

    // Not the end: the submit failed, a GET of the same path, another path.
    assert_eq!(a.send(p.addr, "POST", "/claim/submit", 500).await, 500);
    assert_eq!(a.send(p.addr, "GET", "/claim/submit", 200).await, 200);
    assert_eq!(a.send(p.addr, "POST", "/claim/form", 200).await, 200);
    p.tick();
    assert_eq!(
        b.send(p.addr, "GET", "/claim", 200).await,
        503,
        "B still waits"
    );
    assert!(a.jar.has("anticamera_claims"), "A keeps the pass");

    // The end: the submit succeeded. A's pass is cleared and B gets the place at once, without
    // waiting for A's session (30 minutes) to expire.
    assert_eq!(a.send(p.addr, "POST", "/claim/submit", 201).await, 201);
    assert!(!a.jar.has("anticamera_claims"), "A's pass is cleared");
    assert_eq!(
        b.send(p.addr, "GET", "/claim", 200).await,
        200,
        "B is let in"
    );
    // A, coming back, waits like anyone new.
    assert_eq!(a.send(p.addr, "GET", "/claim", 200).await, 503);
    p.stop().await;
}

#[test]
fn a_release_rule_without_a_path_or_with_a_bad_status_is_refused_with_its_key() {
    let base = format!(
        "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\n"
    );
    let issues = anticamera::config::Config::parse(&format!(
        "{base}[[gates.release_on]]\nmethods = [\"POST\"]\n\
         [[gates.release_on]]\nprefix = [\"/logout\"]\nstatus = [\"2xx\", \"600\", \"ok\"]\n"
    ))
    .unwrap_err();
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"gates[0].release_on[0].prefix"), "{keys:?}");
    assert!(
        keys.contains(&"gates[0].release_on[1].status[1]"),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"gates[0].release_on[1].status[2]"),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"gates[0].release_on[1].status[0]"),
        "{keys:?}"
    );
}

fn held_config(portal: SocketAddr, hold: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{portal}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\ntick = \"50ms\"\n\
         hold_front = \"{hold}\"\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 1\n\
         session_duration = \"30m\"\n\
         [[gates.release_on]]\nprefix = [\"/claim/submit\"]\nmethods = [\"POST\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_request_is_forwarded_the_moment_the_place_is_its_own() {
    let portal = portal().await;
    let p = proxy_from(&held_config(portal.addr, "5s"));
    let mut a = Browser::default();
    let mut b = Browser::default();
    assert_eq!(
        a.send(p.addr, "GET", "/claim", 200).await,
        200,
        "A is let in"
    );
    // B, a newcomer at the front, is held too (its ticket rides in the held request), not
    // answered "wait" and left to sleep a Retry-After while its place sits idle.
    let addr = p.addr;
    let held = tokio::spawn(async move {
        let status = b.send(addr, "GET", "/claim", 200).await;
        (status, std::time::Instant::now(), b)
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "B's request is held while A is inside");
    let released = std::time::Instant::now();
    assert_eq!(a.send(p.addr, "POST", "/claim/submit", 200).await, 200);
    let (status, at, mut b) = held.await.unwrap();
    assert_eq!(status, 200, "B's held request reached the portal");
    assert!(
        at.duration_since(released) < std::time::Duration::from_secs(1),
        "forwarded as soon as the place was free: {:?}",
        at.duration_since(released)
    );
    // B holds a pass now: its next request goes straight through.
    let t0 = std::time::Instant::now();
    assert_eq!(b.send(p.addr, "GET", "/claim/form", 200).await, 200);
    assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_request_whose_hold_ends_first_is_answered_wait() {
    let portal = portal().await;
    let p = proxy_from(&held_config(portal.addr, "1s"));
    let mut a = Browser::default();
    let mut b = Browser::default();
    let mut c = Browser::default();
    assert_eq!(a.send(p.addr, "GET", "/claim", 200).await, 200);
    // B arrives: held for the hold and no longer, then told to wait with the ticket it was
    // given, so it keeps its place.
    let t0 = std::time::Instant::now();
    assert_eq!(
        b.send(p.addr, "GET", "/claim", 200).await,
        503,
        "still waiting"
    );
    let held = t0.elapsed();
    assert!(
        held >= std::time::Duration::from_millis(900) && held < std::time::Duration::from_secs(3),
        "held for the hold and no longer: {held:?}"
    );
    assert!(b.jar.header().is_some(), "the answer carries B's ticket");
    let t0 = std::time::Instant::now();
    assert_eq!(
        b.send(p.addr, "GET", "/claim", 200).await,
        503,
        "still waiting"
    );
    let held = t0.elapsed();
    assert!(
        held >= std::time::Duration::from_millis(900) && held < std::time::Duration::from_secs(3),
        "held again: {held:?}"
    );
    // C comes after B; A leaves: the place is B's, not C's.
    assert_eq!(c.send(p.addr, "GET", "/claim", 200).await, 503);
    assert_eq!(a.send(p.addr, "POST", "/claim/submit", 200).await, 200);
    assert_eq!(
        c.send(p.addr, "GET", "/claim", 200).await,
        503,
        "B is first"
    );
    assert_eq!(
        b.send(p.addr, "GET", "/claim", 200).await,
        200,
        "B kept its place"
    );
    p.stop().await;
}
