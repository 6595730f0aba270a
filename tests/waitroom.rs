//! The waiting room end to end, over real sockets: capacity, order, passes that cannot be
//! forged or copied, release, abandonment, restart, the JSON answer and the admin API.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::Request;

const KEY: &str = "test-signing-key-0123456789abcdef0123456789";

fn room_config(upstream: std::net::SocketAddr, gate: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"admin-token-for-tests-only\"\n\
         [upstream]\nurls = [\"http://{upstream}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\ntick = \"50ms\"\n{extra}\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\n{gate}\n"
    )
}

/// A browser: a cookie jar and a User-Agent.
#[derive(Clone)]
struct Browser {
    ua: String,
    jar: HashMap<String, String>,
}

impl Browser {
    fn new(ua: &str) -> Self {
        Browser {
            ua: ua.into(),
            jar: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A browser that asks for the gated page `/claim` (HTML, or JSON) and expects `status`:
    /// 200 let in, 503 queued.
    async fn at_gate(addr: std::net::SocketAddr, ua: &str, json: bool, status: u16) -> Self {
        let mut b = Browser::new(ua);
        assert_eq!(b.get(addr, "/claim", json).await.0, status, "{ua}");
        b
    }

    async fn get(
        &mut self,
        addr: std::net::SocketAddr,
        path: &str,
        json: bool,
    ) -> (u16, http::HeaderMap, String) {
        let mut b = Request::get(format!("http://{addr}{path}")).header("user-agent", &self.ua);
        if !self.jar.is_empty() {
            b = b.header("cookie", self.cookie_header());
        }
        if json {
            b = b.header("accept", "application/json");
        }
        let (s, h, body) = send(b.body(full("")).unwrap()).await;
        for c in h.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), v.to_string());
            }
        }
        (s, h, body)
    }
}

/// A portal that says who it served, and ends the session on /claim/submit.
async fn portal() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let cookies = req
            .headers()
            .get("cookie")
            .map(|c| c.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut b = http::Response::builder();
        if req.uri().path() == "/claim/submit" {
            b = b.header("x-anticamera-release", "1");
        }
        b.body(full(format!(
            "portal:{}|cookies:{cookies}",
            req.uri().path()
        )))
        .unwrap()
    })
    .await
}

async fn admin_gate(p: &Proxy) -> serde_json::Value {
    let req = Request::get(format!("http://{}/admin/gates/claims", p.admin))
        .header("authorization", "Bearer admin-token-for-tests-only")
        .body(full(""))
        .unwrap();
    let (s, _, body) = send(req).await;
    assert_eq!(s, 200, "{body}");
    json(&body)
}

async fn wait_for<F: Fn(&serde_json::Value) -> bool>(p: &Proxy, f: F) -> serde_json::Value {
    for _ in 0..100 {
        let g = admin_gate(p).await;
        if f(&g) {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("condition not reached: {}", admin_gate(p).await);
}

/// Starts a long poll of the status (held up to 10 s) for this browser; resolves to how long it
/// was held and the answer.
fn long_poll(
    mut b: Browser,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<(Duration, serde_json::Value)> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (_, _, body) = b
            .get(addr, "/.anticamera/status?gate=claims&wait=10", true)
            .await;
        (started.elapsed(), json(&body))
    })
}

#[tokio::test]
async fn open_paths_are_never_queued_and_own_cookies_never_reach_the_portal() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let mut a = Browser::at_gate(p.addr, "A", false, 200).await;
    let mut b = Browser::new("B");
    // The gate is full, but informational pages are not gated.
    let (s, _, body) = b.get(p.addr, "/info/bonus", false).await;
    assert_eq!((s, body.starts_with("portal:/info/bonus")), (200, true));
    // A's pass cookie is not forwarded.
    a.jar.insert("portal_session".into(), "xyz".into());
    let (_, _, body) = a.get(p.addr, "/claim/step", false).await;
    assert!(body.ends_with("cookies:portal_session=xyz"), "{body}");
}

#[tokio::test]
async fn capacity_holds_under_a_concurrent_surge() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 5", ""));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let mut b = Browser::new(&format!("ua-{i}"));
            let (s, h, body) = b.get(addr, "/claim", true).await;
            (s, h, body)
        }));
    }
    let mut served = 0;
    let mut positions = Vec::new();
    for t in tasks {
        let (s, h, body) = t.await.unwrap();
        match s {
            200 => served += 1,
            503 => {
                assert_eq!(h["cache-control"], "no-store");
                assert!(h.contains_key("retry-after"));
                let v = json(&body);
                assert_eq!(v["state"], "waiting");
                positions.push(v["position"].as_u64().unwrap());
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(served, 5, "exactly the capacity is let in");
    positions.sort();
    let expected: Vec<u64> = (1..=55).collect();
    assert_eq!(
        positions, expected,
        "every waiting user has a distinct place"
    );
    let g = admin_gate(&p).await;
    assert_eq!(g["active"], 5);
    assert_eq!(g["waiting"], 55);
}

#[tokio::test]
async fn fifo_order_release_header_and_rate() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let first = Browser::at_gate(p.addr, "first", false, 200).await;
    let mut waiting: Vec<Browser> = Vec::new();
    for i in 0..4 {
        let mut b = Browser::new(&format!("w{i}"));
        let (s, _, body) = b.get(p.addr, "/claim", true).await;
        assert_eq!(s, 503);
        assert_eq!(json(&body)["position"], i + 1);
        waiting.push(b);
    }
    // Each user in turn submits their claim: the portal's release header frees the slot at
    // once and the next in line — and only them — gets in.
    let mut current = first;
    for i in 0..waiting.len() {
        let (s, h, _) = current.get(p.addr, "/claim/submit", false).await;
        assert_eq!(s, 200);
        assert!(
            !h.contains_key("x-anticamera-release"),
            "release header must be stripped"
        );
        assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
        wait_for(&p, |g| {
            g["admitted_last_minute"].as_u64().unwrap() >= i as u64 + 2
        })
        .await;
        let (s, _, _) = waiting[i].get(p.addr, "/claim", false).await;
        assert_eq!(s, 200, "user {i} should be next");
        for (j, later) in waiting.iter_mut().enumerate().skip(i + 1) {
            let (s, _, body) = later.get(p.addr, "/claim", true).await;
            assert_eq!(s, 503, "user {j} jumped the queue");
            assert_eq!(json(&body)["position"], (j - i) as u64);
        }
        current = waiting[i].clone();
    }
}

#[tokio::test]
async fn forged_tampered_expired_wrong_gate_and_wrong_key_tokens_are_refused_and_counted() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let holder = Browser::at_gate(p.addr, "holder", false, 200).await;
    let pass = holder.jar["anticamera_claims"].clone();

    // Tampered: flip one character of the real pass.
    let mut chars: Vec<char> = pass.chars().collect();
    chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    // Signed with another key: a second proxy with its own key issues one.
    let other = proxy_from(
        &room_config(up.addr, "capacity = 5", "")
            .replace(KEY, "another-key-0123456789abcdef0123456789abcd"),
    );
    let mut o = Browser::new("holder");
    assert_eq!(o.get(other.addr, "/claim", false).await.0, 200);
    let wrong_key = o.jar["anticamera_claims"].clone();
    for (name, value) in [
        ("garbage", "not-a-token".to_string()),
        ("tampered", tampered),
        ("wrong key", wrong_key),
        ("empty", String::new()),
    ] {
        let mut b = Browser::new("holder");
        b.jar.insert("anticamera_claims".into(), value);
        let (s, h, _) = b.get(p.addr, "/claim", true).await;
        assert_eq!(s, 503, "{name}: admitted with a bad token");
        assert!(
            h["set-cookie"]
                .to_str()
                .unwrap()
                .starts_with("anticamera_claims="),
            "{name}: no new ticket"
        );
    }
    let (_, _, metrics) = get(p.admin, "/metrics").await;
    for reason in ["malformed", "bad_signature"] {
        assert!(
            metrics.contains(&format!(
                "anticamera_waitroom_refused_total{{gate=\"claims\",reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_copied_pass_does_not_admit_another_browser() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let mut firefox = Browser::new("Mozilla/5.0 Firefox/130");
    assert_eq!(firefox.get(p.addr, "/claim", false).await.0, 200);
    let mut chrome = Browser::new("Mozilla/5.0 Chrome/128");
    chrome.jar = firefox.jar.clone();
    let (s, _, body) = chrome.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503, "copied pass admitted: {body}");
    // The owner is not disturbed.
    assert_eq!(firefox.get(p.addr, "/claim", false).await.0, 200);
    let (_, _, metrics) = get(p.admin, "/metrics").await;
    assert!(metrics.contains("reason=\"copied_pass\""), "{metrics}");
}

#[tokio::test]
async fn a_restart_keeps_places_and_passes() {
    let up = portal().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let cfg = room_config(
        up.addr,
        "capacity = 1",
        &format!("state_file = {:?}", state.to_str().unwrap()),
    );
    let p = proxy_from(&cfg);
    let mut inside = Browser::at_gate(p.addr, "inside", false, 200).await;
    let mut waiting = Vec::new();
    for i in 0..3 {
        let mut b = Browser::new(&format!("w{i}"));
        b.get(p.addr, "/claim", false).await;
        waiting.push(b);
    }
    p.stop().await;
    assert!(state.exists());

    let p = proxy_from(&cfg);
    for (i, b) in waiting.iter_mut().enumerate() {
        let (s, _, body) = b.get(p.addr, "/claim", true).await;
        assert_eq!(s, 503);
        assert_eq!(
            json(&body)["position"],
            i as u64 + 1,
            "place lost across restart"
        );
    }
    assert_eq!(
        inside.get(p.addr, "/claim", false).await.0,
        200,
        "pass lost across restart"
    );
}

#[tokio::test]
async fn json_answer_follows_the_documented_schema() {
    let up = portal().await;
    let p = proxy_from(&room_config(
        up.addr,
        "capacity = 1\nadmit_per_minute = 60",
        "",
    ));
    Browser::new("a").get(p.addr, "/claim", false).await;
    let mut b = Browser::new("b");
    let (s, h, body) = b.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503);
    assert_eq!(h["content-type"], "application/json");
    let v = json(&body);
    let schema = json(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/queue-status.schema.json"
        ))
        .unwrap(),
    );
    validate(&schema, &v, "$");
    // The status endpoint answers the same shape without taking a new ticket.
    let (s, _, body) = b.get(p.addr, "/.anticamera/status?gate=claims", true).await;
    assert_eq!(s, 503);
    let w = json(&body);
    validate(&schema, &w, "$");
    assert_eq!(w["position"], v["position"]);
    let g = admin_gate(&p).await;
    assert_eq!(g["waiting"], 1);
}

/// A small structural validator for the subset of JSON Schema the document uses.
fn validate(schema: &serde_json::Value, v: &serde_json::Value, at: &str) {
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            _ => false,
        });
        assert!(ok, "{at}: {v} is not {types:?}");
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array()) {
        assert!(e.contains(v), "{at}: {v} not in {e:?}");
    }
    if let Some(c) = schema.get("const") {
        assert_eq!(c, v, "{at}");
    }
    if let Some(req) = schema.get("required").and_then(|r| r.as_array()) {
        for r in req {
            assert!(v.get(r.as_str().unwrap()).is_some(), "{at}: missing {r}");
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(|p| p.as_object()),
        v.as_object(),
    ) {
        for (k, val) in obj {
            match props.get(k) {
                Some(s) => validate(s, val, &format!("{at}.{k}")),
                None => assert!(
                    schema.get("additionalProperties") != Some(&serde_json::Value::Bool(false)),
                    "{at}: unexpected property {k}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn admin_api_needs_the_token_and_changes_gates_at_runtime() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let (s, h, _) = get(p.admin, "/admin/gates").await;
    assert_eq!(s, 401);
    assert!(h.contains_key("www-authenticate"));
    let post = |path: &str, body: &str| {
        Request::post(format!("http://{}{path}", p.admin))
            .header("authorization", "Bearer admin-token-for-tests-only")
            .body(full(body.to_string()))
            .unwrap()
    };
    // Pause: nobody new gets in even with room.
    assert_eq!(send(post("/admin/gates/claims/pause", "")).await.0, 200);
    assert_eq!(Browser::new("a").get(p.addr, "/claim", false).await.0, 503);
    assert_eq!(admin_gate(&p).await["switch"], "paused");
    // Resume and raise capacity: the waiting user and the next get in.
    assert_eq!(send(post("/admin/gates/claims/resume", "")).await.0, 200);
    let (s, _, body) = send(post("/admin/gates/claims/limits", "{\"capacity\": 3}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["capacity"], 3);
    wait_for(&p, |g| {
        g["active"].as_u64().unwrap() + g["lanes"][0]["pending"].as_u64().unwrap() >= 1
    })
    .await;
    assert_eq!(Browser::new("b").get(p.addr, "/claim", false).await.0, 200);
    // Bad input gets a clear error.
    let (s, _, body) = send(post(
        "/admin/gates/claims/limits",
        "{\"capacity\": \"many\"}",
    ))
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(send(post("/admin/gates/nope/pause", "")).await.0, 404);
    // queue-all: even with room, everyone queues.
    assert_eq!(send(post("/admin/gates/claims/queue-all", "")).await.0, 200);
    assert_eq!(Browser::new("c").get(p.addr, "/claim", false).await.0, 503);
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_the_ticket_is_admitted() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let mut inside = Browser::at_gate(p.addr, "inside", false, 200).await;
    let mut next = Browser::at_gate(p.addr, "next", true, 503).await;
    let poll = long_poll(next.clone(), p.addr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long poll answered before anything changed"
    );
    inside.get(p.addr, "/claim/submit", false).await;
    let (took, v) = poll.await.unwrap();
    assert_eq!(v["state"], "admitted", "{v}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(next.get(p.addr, "/claim", false).await.0, 200);
}

#[tokio::test]
async fn a_long_poll_reports_a_moved_place_after_holding_and_an_admission_at_once() {
    let up = portal().await;
    let p = proxy_from(&room_config(up.addr, "capacity = 1", ""));
    let mut inside = Browser::at_gate(p.addr, "inside", false, 200).await;
    let mut first = Browser::at_gate(p.addr, "first", true, 503).await;
    let mut second = Browser::at_gate(p.addr, "second", true, 503).await;
    // The second in line is held while the first is admitted, and told its new place only
    // after the poll has been held a second (not at once, not at the deadline).
    let poll = long_poll(second.clone(), p.addr);
    tokio::time::sleep(Duration::from_millis(100)).await;
    inside.get(p.addr, "/claim/submit", false).await;
    let (took, v) = poll.await.unwrap();
    assert_eq!(
        (v["state"].as_str(), v["position"].as_u64()),
        (Some("waiting"), Some(1)),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "moved place answered after {took:?}"
    );
    // Now first in line: its own admission is answered at once.
    let poll = long_poll(second.clone(), p.addr);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.get(p.addr, "/claim", false).await.0, 200);
    first.get(p.addr, "/claim/submit", false).await;
    let (took, v) = poll.await.unwrap();
    assert_eq!(v["state"], "admitted", "{v}");
    assert!(
        took < Duration::from_millis(900),
        "admission answered after {took:?}"
    );
    assert_eq!(second.get(p.addr, "/claim", false).await.0, 200);
}

/// An admitted ticket that does not come within `arrival_timeout` is skipped: its place goes
/// to the next in line. When it comes back to a full room it is told it is next (not
/// "admitted", which would send its page into a loop between the status and the gate), and
/// the next free place is its own, before anyone new.
#[tokio::test]
async fn abandoned_tickets_are_skipped_and_a_late_arrival_gets_the_next_free_place() {
    let up = portal().await;
    let p = proxy_from(&room_config(
        up.addr,
        "capacity = 1\narrival_timeout = \"1s\"",
        "",
    ));
    let mut a = Browser::at_gate(p.addr, "a", false, 200).await;
    let mut late = Browser::at_gate(p.addr, "late", true, 503).await;
    let mut c = Browser::new("c");
    let (_, _, body) = c.get(p.addr, "/claim", true).await;
    assert_eq!(json(&body)["position"], 2);
    let mut d = Browser::at_gate(p.addr, "d", true, 503).await;
    // a finishes; "late" is admitted but does not come within 1 s: its place goes to c.
    a.get(p.addr, "/claim/submit", false).await;
    let g = wait_for(&p, |g| g["lanes"][0]["abandoned"].as_u64().unwrap() >= 1).await;
    assert_eq!(g["lanes"][0]["abandoned"], 1);
    wait_for(&p, |g| g["lanes"][0]["pending"].as_u64().unwrap() >= 1).await;
    assert_eq!(c.get(p.addr, "/claim", false).await.0, 200);

    // "late" comes back to a full room: the status and the gate agree, it is next.
    let (_, _, body) = late
        .get(p.addr, "/.anticamera/status?gate=claims", true)
        .await;
    let v = json(&body);
    assert_eq!(
        (&v["state"], &v["missed_turn"], &v["position"]),
        (&"waiting".into(), &true.into(), &1.into()),
        "{v}"
    );
    let (s, _, body) = late.get(p.addr, "/claim", true).await;
    assert_eq!(s, 503);
    let v = json(&body);
    assert_eq!(
        (&v["state"], &v["missed_turn"]),
        (&"waiting".into(), &true.into()),
        "{v}"
    );
    let (_, _, body) = d.get(p.addr, "/claim", true).await;
    assert_eq!(
        json(&body)["missed_turn"],
        false,
        "d is waiting for its turn"
    );
    assert_eq!(admin_gate(&p).await["lanes"][0]["late"], 1);

    // c finishes: the freed place goes to "late", whose held poll is answered at once, not
    // to d, who was waiting in the line.
    let poll = long_poll(late.clone(), p.addr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.get(p.addr, "/claim/submit", false).await;
    let (took, v) = poll.await.unwrap();
    assert_eq!(v["state"], "admitted", "{v}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(d.get(p.addr, "/claim", true).await.0, 503, "d overtook");
    assert_eq!(late.get(p.addr, "/claim", false).await.0, 200);
    assert_eq!(admin_gate(&p).await["lanes"][0]["late"], 0);
}
