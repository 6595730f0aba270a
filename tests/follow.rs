//! Admission that follows the portal (`admission = "portal"`), over real sockets: while the
//! portal has room, more people are let in than it has slots (people inside are mostly between
//! pages), never more than the gate's `capacity`; when requests of people inside pile up at the
//! portal guard, the room shrinks within a second.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Request;

const KEY: &str = "follow-test-key-0123456789abcdef012345678";
const ADMIN: &str = "admin-token-for-follow-tests";

/// A portal whose `/claim/work` takes `x-sleep-ms` milliseconds.
async fn portal() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let ms: u64 = req
            .headers()
            .get("x-sleep-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        http::Response::new(full("portal page"))
    })
    .await
}

#[derive(Clone, Default)]
struct Browser {
    jar: Jar,
}

impl Browser {
    async fn get(&mut self, addr: SocketAddr, path: &str, sleep_ms: u64) -> u16 {
        let mut b = Request::get(format!("http://{addr}{path}"))
            .header("accept", "application/json")
            .header("x-sleep-ms", sleep_ms.to_string());
        if let Some(c) = self.jar.header() {
            b = b.header("cookie", c);
        }
        let (s, h, _) = send(b.body(full("")).unwrap()).await;
        self.jar.absorb(&h);
        s
    }
}

async fn gate(p: &Proxy) -> serde_json::Value {
    let req = Request::get(format!("http://{}/admin/gates/claims", p.admin))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(full(""))
        .unwrap();
    json(&send(req).await.2)
}

fn inside(g: &serde_json::Value) -> u64 {
    g["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["active"].as_u64().unwrap() + l["pending"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_follows_the_portal_within_the_safety_bound() {
    let portal = portal().await;
    let p = proxy_from(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n\
         [upstream]\nurls = [\"http://{}\"]\nresponse_timeout = \"20s\"\n\
         [upstream_guard]\nmode = \"fixed\"\nmax_in_flight = 4\nqueue_size = 200\nqueue_timeout = \"15s\"\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\ntick = \"50ms\"\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 12\n\
         admission = \"portal\"\nmode = \"queue_all\"\nsession_duration = \"30m\"\narrival_timeout = \"30s\"\n",
        portal.addr
    ));
    // 30 people take a ticket.
    let mut people = Vec::new();
    for _ in 0..30 {
        let mut b = Browser::default();
        assert_eq!(b.get(p.addr, "/claim", 0).await, 503);
        people.push(b);
    }
    // The portal is idle while those let in read their pages: the room grows past the
    // portal's 4 slots, up to the bound of 12, and never past it.
    let mut admitted = vec![false; people.len()];
    for _ in 0..60 {
        for (i, b) in people.iter_mut().enumerate() {
            if !admitted[i] && b.get(p.addr, "/claim", 0).await == 200 {
                admitted[i] = true;
            }
        }
        let g = gate(&p).await;
        assert!(inside(&g) <= 12, "never past the safety bound: {g}");
        if admitted.iter().filter(|a| **a).count() >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = admitted.iter().filter(|a| **a).count();
    assert_eq!(n, 12, "people let in while the portal had room (4 slots)");
    assert_eq!(gate(&p).await["steering_capacity"], 12);

    // Everyone inside now asks for slow work at once: 4 at the portal, 8 waiting for a slot.
    // The room shrinks within a second.
    let addr = p.addr;
    let work: Vec<_> = people
        .iter()
        .zip(&admitted)
        .filter(|(_, a)| **a)
        .map(|(b, _)| {
            let mut b = b.clone();
            tokio::spawn(async move { b.get(addr, "/claim/work", 3000).await })
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut shrunk = None;
    while t0.elapsed() < Duration::from_secs(3) {
        let s = gate(&p).await["steering_capacity"].as_u64().unwrap();
        if s < 12 {
            shrunk = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shrunk = shrunk.expect("the room shrank while people inside waited for the portal");
    // The issue's bound: the line's one-second average passes half the limit after ~0.3 s.
    assert!(
        shrunk < Duration::from_secs(1),
        "within a second: {shrunk:?}"
    );
    for w in work {
        assert_eq!(w.await.unwrap(), 200);
    }
    p.stop().await;
}

#[test]
fn following_the_portal_needs_the_guard_that_measures_it() {
    let issues = anticamera::config::Config::parse(&format!(
        "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\nadmission = \"portal\"\n"
    ))
    .unwrap_err();
    assert!(
        issues.iter().any(|i| i.key == "gates[0].admission"),
        "{issues:?}"
    );
}
