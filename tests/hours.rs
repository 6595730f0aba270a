//! Opening hours by cohort, end to end: `config/inps.toml` in front of the demo portal, with the
//! proxy's clock set by the test (no sleeping until 16:00).
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::*;
use http::Request;

fn rome(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    chrono_tz::Europe::Rome
        .with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// config/inps.toml with loopback addresses, test secrets and a temporary state file.
fn inps_config(portal: std::net::SocketAddr, state: &Path) -> String {
    std::env::set_var(
        "ANTICAMERA_KEY_1",
        "hours-test-signing-key-0123456789abcdef0123",
    );
    std::env::set_var("ANTICAMERA_ADMIN_TOKEN", "hours-test-admin-token");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/inps.toml")).unwrap();
    let text = text
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("workers = 0", "workers = 1")
        .replace(
            "urls = [\"http://10.0.0.21:8080\", \"http://10.0.0.22:8080\"]",
            &format!("urls = [\"http://{portal}\"]"),
        )
        .replace("listen = \"127.0.0.1:9901\"", "listen = \"127.0.0.1:0\"")
        .replace("/var/lib/anticamera/state.json", state.to_str().unwrap())
        // Every simulated user comes from 127.0.0.1 here.
        .replace(
            "per_address = { rate = \"30/s\", burst = 60 }",
            "per_address = { rate = \"10000/s\", burst = 10000 }",
        );
    assert!(text.contains("10000/s"), "inps.toml layout changed");
    assert!(
        text.contains(&portal.to_string()),
        "inps.toml layout changed"
    );
    text
}

fn sso_token(role: &str) -> String {
    let key = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/jwt/inps-sso-demo.pem"
    ))
    .unwrap();
    let exp = (Utc::now() + chrono::TimeDelta::hours(1)).timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({ "sub": "x", "role": role, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap()
}

struct User {
    cookies: Vec<(String, String)>,
}

impl User {
    async fn login(proxy: std::net::SocketAddr, name: &str, sso_role: Option<&str>) -> User {
        let req = Request::post(format!("http://{proxy}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(format!("user={name}")))
            .unwrap();
        let (s, h, _) = send(req).await;
        assert_eq!(s, 303, "login through the proxy is an open path");
        let session = h["set-cookie"].to_str().unwrap().split(';').next().unwrap();
        let (k, v) = session.split_once('=').unwrap();
        let mut cookies = vec![(k.to_string(), v.to_string())];
        if let Some(role) = sso_role {
            cookies.push(("inps_sso".into(), sso_token(role)));
        }
        User { cookies }
    }

    async fn get(&mut self, proxy: std::net::SocketAddr, path: &str, json: bool) -> (u16, String) {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut b = Request::get(format!("http://{proxy}{path}"))
            .header("cookie", cookie)
            .header("user-agent", "test");
        if json {
            b = b.header("accept", "application/json");
        }
        let (s, h, body) = send(b.body(full("")).unwrap()).await;
        for c in h.get_all("set-cookie") {
            let kv = c.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            self.cookies.push((k.to_string(), v.to_string()));
        }
        (s, body)
    }
}

async fn start() -> (
    anticamera_demo_portal::PortalHandle,
    Proxy,
    tempfile::TempDir,
) {
    start_with(|t| t).await
}

async fn start_with(
    edit: impl FnOnce(String) -> String,
) -> (
    anticamera_demo_portal::PortalHandle,
    Proxy,
    tempfile::TempDir,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = anticamera_demo_portal::spawn(
        l,
        anticamera_demo_portal::PortalConfig {
            base_latency: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = edit(inps_config(portal.addr, &dir.path().join("state.json")));
    let p = proxy_from_in(
        &text,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")),
    );
    (portal, p, dir)
}

#[tokio::test]
async fn the_april_2020_bands_with_the_demo_portal() {
    let (_portal, p, _dir) = start().await;
    let clock = p.clock();
    // Thursday 2 April 2020 pattern, in 2026: a working Thursday.
    clock.freeze_at(rome(2026, 4, 2, 10, 0));
    p.tick();
    let mut caf = User::login(p.addr, "caf.roma", Some("caf")).await;
    let mut citizen = User::login(p.addr, "mario.rossi", None).await;

    // 10:00: the intermediary is served, the citizen is told when the band opens.
    let (s, body) = caf.get(p.addr, "/claim", false).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("caf.roma"), "{body}");
    let (s, body) = citizen.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503);
    let v = json(&body);
    assert_eq!(v["state"], "closed");
    assert_eq!(v["cohort"], "citizens");
    assert!(
        v["opens_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-04-02T16:00:00+02:00"),
        "{v}"
    );
    let (s, html) = citizen.get(p.addr, "/claim", false).await;
    assert_eq!(s, 503);
    assert!(html.contains("16:00"), "{html}");

    // Informational pages answer both, at any hour.
    for u in [&mut caf, &mut citizen] {
        assert_eq!(u.get(p.addr, "/", false).await.0, 200);
        assert_eq!(u.get(p.addr, "/info/bonus", false).await.0, 200);
    }

    // 15:55: the intermediary is filling in a claim (their earlier session expired by
    // inactivity since 10:00; they are let in again at once: there is room).
    clock.freeze_at(rome(2026, 4, 2, 15, 55));
    p.tick();
    let (s, body) = caf.get(p.addr, "/claim", true).await;
    assert_eq!(s, 200, "{body}");

    // 16:10: the intermediary admitted before 16:00 keeps working (grace 30 min), but a new
    // intermediary is not admitted; the citizen is served.
    clock.freeze_at(rome(2026, 4, 2, 16, 10));
    p.tick();
    assert_eq!(
        caf.get(p.addr, "/claim", false).await.0,
        200,
        "grace period"
    );
    let mut late_caf = User::login(p.addr, "caf.milano", Some("caf")).await;
    let (s, body) = late_caf.get(p.addr, "/claim", true).await;
    assert_eq!((s, json(&body)["state"].as_str()), (503, Some("closed")));
    let (s, body) = citizen.get(p.addr, "/claim", false).await;
    assert_eq!(s, 200, "{body}");

    // 17:00: grace over. The intermediary is told when the intermediaries' band opens again
    // (08:00 the next morning); the citizen is still served; info pages answer both.
    clock.freeze_at(rome(2026, 4, 2, 17, 0));
    p.tick();
    let (s, body) = caf.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503);
    let v = json(&body);
    assert_eq!(v["state"], "closed");
    assert!(
        v["opens_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-04-03T08:00:00+02:00"),
        "{v}"
    );
    assert_eq!(citizen.get(p.addr, "/claim", false).await.0, 200);
    for u in [&mut caf, &mut citizen] {
        assert_eq!(u.get(p.addr, "/info/orari", false).await.0, 200);
    }
    let (_, metrics) = citizen.get(p.admin, "/metrics", false).await;
    assert!(
        metrics.contains(
            "anticamera_schedule_closed_total{gate=\"claims\",cohort=\"intermediaries\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn holidays_and_the_delegation_desk() {
    let (_portal, p, _dir) = start().await;
    let clock = p.clock();
    let mut u = User::login(p.addr, "anna.bianchi", None).await;
    // Saturday 25 April 2026 (Liberation Day), 18:00: claims closed for citizens, opens
    // again on the 26th at 16:00.
    clock.freeze_at(rome(2026, 4, 25, 18, 0));
    let (s, body) = u.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503);
    assert!(
        json(&body)["opens_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-04-26T16:00:00+02:00"),
        "{body}"
    );
    // The delegation desk: Tuesday 09:00-12:00. Monday: opens Tuesday 09:00.
    clock.freeze_at(rome(2026, 4, 27, 10, 0));
    let (s, body) = u.get(p.addr, "/delega/prenota", true).await;
    assert_eq!(s, 503);
    assert!(
        json(&body)["opens_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-04-28T09:00:00+02:00"),
        "{body}"
    );
    // Tuesday 10:00: open (the demo portal has no /delega page: 404 from the portal itself).
    clock.freeze_at(rome(2026, 4, 28, 10, 0));
    p.tick();
    let (s, _) = u.get(p.addr, "/delega/prenota", false).await;
    assert_eq!(s, 404, "forwarded to the portal");
    // Tuesday 8 December 2026 (Immacolata, in the shared calendar): the desk is closed and
    // opens again on Thursday the 10th.
    clock.freeze_at(rome(2026, 12, 8, 10, 0));
    p.tick();
    let (s, body) = u.get(p.addr, "/delega/prenota", true).await;
    assert_eq!(s, 503, "{body}");
    assert!(
        json(&body)["opens_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-12-10T09:00:00+01:00"),
        "{body}"
    );
}

#[tokio::test]
async fn prequeue_is_shuffled_at_opening_and_nobody_is_lost() {
    // A small gate, so that most of the pre-queue still waits after the opening.
    let (_portal, p, _dir) = start_with(|t| t.replace("capacity = 5000", "capacity = 10")).await;
    let clock = p.clock();
    // 15:50: citizens' band opens at 16:00, pre-queue opened at 15:45.
    clock.freeze_at(rome(2026, 4, 2, 15, 50));
    p.tick();
    let mut users = Vec::new();
    for i in 0..40 {
        let mut u = User::login(p.addr, &format!("citizen{i}"), None).await;
        let (s, body) = u.get(p.addr, "/claim", true).await;
        assert_eq!(s, 503);
        let v = json(&body);
        assert_eq!(v["state"], "prequeue", "{v}");
        assert_eq!(v["order_at_opening"], "random");
        users.push(u);
    }
    // Opening: the controller shuffles. Positions are a permutation of 1..=40 minus those
    // admitted straight away, and not arrival order.
    clock.freeze_at(rome(2026, 4, 2, 16, 0));
    p.tick();
    let mut positions = Vec::new();
    for u in users.iter_mut() {
        let (s, body) = u.get(p.addr, "/.anticamera/status?gate=claims", true).await;
        assert_eq!(s, 503, "{body}");
        let v = json(&body);
        positions.push(if v["state"] == "admitted" {
            0
        } else {
            v["position"].as_u64().unwrap()
        });
    }
    let mut sorted = positions.clone();
    sorted.sort();
    let admitted = sorted.iter().filter(|&&p| p == 0).count();
    let rest: Vec<u64> = sorted[admitted..].to_vec();
    assert_eq!(
        rest,
        (1..=(40 - admitted as u64)).collect::<Vec<_>>(),
        "{positions:?}"
    );
    let in_arrival_order = positions.windows(2).all(|w| w[0] <= w[1] || w[0] == 0);
    assert!(
        !in_arrival_order,
        "pre-queue kept arrival order: {positions:?}"
    );
}
