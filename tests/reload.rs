//! Hot reload end to end, over real sockets: `POST /admin/reload` and `SIGHUP` re-read the file,
//! apply capacity, hours and keys without touching anyone's place or pass, refuse a bad file
//! whole, and name what needs a restart.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use http::Request;

const KEY1: &str = "reload-test-key-one-0123456789abcdef0123";
const KEY2: &str = "reload-test-key-two-0123456789abcdef0123";
const ADMIN: &str = "admin-token-for-reload-tests";

/// A config with one gate `claims` open to citizens `start`–`end` (Europe/Rome), signed with
/// the keys given (`[(id, secret)]`, the last one current).
fn config(
    upstream: SocketAddr,
    capacity: u32,
    start: &str,
    end: &str,
    keys: &[(u8, &str)],
) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, s)| format!("{{ id = {id}, secret = \"{s}\" }}"))
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n\
         [upstream]\nurls = [\"http://{upstream}\"]\n\
         [waiting_room]\nkeys = [{}]\ntick = \"50ms\"\n\
         [cohorts]\ndefault = \"citizens\"\nnames = [\"citizens\"]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = {capacity}\n\
         admit_per_minute = 0\nsession_duration = \"30m\"\n\
         [gates.schedule]\ntime_zone = \"Europe/Rome\"\ngrace = \"0s\"\n\
         [[gates.schedule.windows]]\ncohorts = [\"citizens\"]\nstart = \"{start}\"\nend = \"{end}\"\n",
        keys.join(", ")
    )
}

/// A browser: a cookie jar and a User-Agent.
struct Browser {
    ua: String,
    jar: Jar,
}

impl Browser {
    fn new(ua: &str) -> Self {
        Browser {
            ua: ua.into(),
            jar: Jar::default(),
        }
    }

    /// GET `path` as JSON; returns the status and the body as JSON (or `null` for a portal page).
    async fn get(&mut self, addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let mut b = Request::get(format!("http://{addr}{path}"))
            .header("user-agent", &self.ua)
            .header("accept", "application/json");
        if let Some(c) = self.jar.header() {
            b = b.header("cookie", c);
        }
        let (s, h, body) = send(b.body(full("")).unwrap()).await;
        self.jar.absorb(&h);
        (
            s,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The key id the gate's cookie (ticket or pass) is signed with.
    fn kid(&self) -> u8 {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.jar.0["anticamera_claims"])
            .unwrap();
        raw[1]
    }
}

async fn admin(p: &Proxy, method: &str, path: &str) -> (u16, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.admin))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(full(""))
        .unwrap();
    let (s, _, body) = send(req).await;
    (s, json(&body))
}

async fn capacity(p: &Proxy) -> u64 {
    admin(p, "GET", "/admin/gates/claims").await.1["capacity"]
        .as_u64()
        .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_during_a_surge_changes_capacity_and_hours_and_nobody_loses_a_place_or_a_pass() {
    let portal = upstream(|_req: Request<hyper::body::Incoming>| async move {
        http::Response::new(full("portal page"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anticamera.toml");
    write(
        &file,
        &config(portal.addr, 2, "09:00", "17:00", &[(1, KEY1)]),
    );
    let p = proxy_from_file(&file);
    p.clock().freeze_at(rome(2027, 3, 2, 10, 0));
    p.tick();

    // Two people in, five waiting.
    let mut inside = Vec::new();
    for i in 0..2 {
        let mut b = Browser::new(&format!("inside-{i}"));
        assert_eq!(b.get(p.addr, "/claim").await.0, 200);
        inside.push(b);
    }
    let mut waiting = Vec::new();
    for i in 0..5 {
        let mut b = Browser::new(&format!("waiting-{i}"));
        let (s, v) = b.get(p.addr, "/claim").await;
        assert_eq!(s, 503, "{v}");
        let number = v["number"].as_u64().unwrap();
        waiting.push((b, number));
    }
    let numbers: Vec<u64> = waiting.iter().map(|(_, n)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");

    // A surge goes on while the file changes: 400 newcomers from 20 connections at once.
    let addr = p.addr;
    let surge: Vec<_> = (0..20)
        .map(|t| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..20 {
                    let mut b = Browser::new(&format!("surge-{t}-{i}"));
                    statuses.push(b.get(addr, "/claim").await.0);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The file changes: one more place, and the band now ends at 12:00.
    write(
        &file,
        &config(portal.addr, 3, "09:00", "12:00", &[(1, KEY1)]),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("claims")),
        "{v}"
    );
    assert_eq!(v["needs_restart"], serde_json::json!([]));
    for t in surge {
        for status in t.await.unwrap() {
            assert_eq!(
                status, 503,
                "every newcomer of the surge queues, before and after"
            );
        }
    }
    p.tick();
    assert_eq!(capacity(&p).await, 3);

    // Everyone inside keeps their pass.
    for b in &mut inside {
        assert_eq!(b.get(p.addr, "/claim").await.0, 200, "{}", b.ua);
    }
    // Everyone waiting keeps their number; the first of them takes the new place.
    let (first, rest) = waiting.split_first_mut().unwrap();
    assert_eq!(
        first.0.get(p.addr, "/claim").await.0,
        200,
        "the first in line gets in"
    );
    for (b, number) in rest.iter_mut() {
        let (s, v) = b.get(p.addr, "/claim").await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(
            v["number"].as_u64(),
            Some(*number),
            "{} kept its number",
            b.ua
        );
    }

    // The new hours hold: at 13:00 a newcomer finds the gate closed (before: open until 17:00).
    p.clock().freeze_at(rome(2027, 3, 2, 13, 0));
    p.tick();
    let mut late = Browser::new("newcomer");
    let (s, v) = late.get(p.addr, "/claim").await;
    assert_eq!((s, v["state"].as_str()), (503, Some("closed")), "{v}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_is_refused_whole_and_nothing_changes() {
    let portal = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anticamera.toml");
    let good = config(portal.addr, 2, "08:00", "20:00", &[(1, KEY1)]);
    write(&file, &good);
    let p = proxy_from_file(&file);
    p.clock().freeze_at(rome(2027, 3, 2, 10, 0));

    // A valid file with a bad value (capacity 0) beside a change that would be fine.
    write(
        &file,
        &good
            .replace("capacity = 2", "capacity = 0")
            .replace("admit_per_minute = 0", "admit_per_minute = 60"),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 400, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("capacity"), "the answer says why: {reason}");
    let line = reason.split_once("anticamera.toml:").map(|(_, rest)| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    assert!(
        line.is_some_and(|l| !l.is_empty()),
        "and on which line: {reason}"
    );
    let gate = admin(&p, "GET", "/admin/gates/claims").await.1;
    assert_eq!(gate["capacity"], 2, "{gate}");

    // Not TOML at all.
    write(&file, "[[gates]\nname = ");
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(capacity(&p).await, 2);

    // Only a restart-only change: refused, and named.
    write(&file, &good.replace("workers = 1", "workers = 2"));
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("server"), "{v}");

    // A restart-only change beside a reloadable one: the reloadable one applies, the other is
    // named as waiting for a restart.
    write(
        &file,
        &good
            .replace("workers = 1", "workers = 2")
            .replace("capacity = 2", "capacity = 7"),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["needs_restart"], serde_json::json!(["server"]));
    p.tick();
    assert_eq!(capacity(&p).await, 7);

    // Following the portal needs the guard this process started with: refused, and named.
    write(
        &file,
        &good
            .replace("capacity = 2", "capacity = 8\nadmission = \"portal\"")
            .replace(
                "[waiting_room]",
                "[upstream_guard]\nmax_in_flight = 4\n[waiting_room]",
            ),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("admission"), "{v}");
    assert_eq!(capacity(&p).await, 7, "nothing applied");

    // Adding a gate changes the lanes: a restart, nothing applied.
    write(
        &file,
        &format!(
            "{}\n[[gates]]\nname = \"other\"\nprefix = [\"/other\"]\ncapacity = 1\n",
            good.replace("capacity = 2", "capacity = 9")
        ),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("restart"), "{v}");
    assert_eq!(capacity(&p).await, 7, "nothing applied");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_by_reload_keeps_old_passes_valid_until_they_expire() {
    let portal = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anticamera.toml");
    write(
        &file,
        &config(portal.addr, 1, "08:00", "20:00", &[(1, KEY1)]),
    );
    let p = proxy_from_file(&file);
    p.clock().freeze_at(rome(2027, 3, 2, 10, 0));
    p.tick();
    let mut inside = Browser::new("inside");
    assert_eq!(inside.get(p.addr, "/claim").await.0, 200);
    assert_eq!(inside.kid(), 1);
    let mut waiting = Browser::new("waiting");
    let (s, v) = waiting.get(p.addr, "/claim").await;
    assert_eq!(s, 503);
    let number = v["number"].as_u64().unwrap();

    // A token signed with key 1 that claims a far longer life than any it issued.
    let keys1 = anticamera::waitroom::Keyring::new(1, [(1u8, KEY1.as_bytes())]).unwrap();
    let now = p.clock().now_ms();
    let forged = anticamera::waitroom::Token::ticket(
        0,
        1,
        anticamera::waitroom::VisitorId([7; 16]),
        now,
        30 * 86_400_000,
    )
    .encode(&keys1);

    // The file drops key 1 for key 2.
    write(
        &file,
        &config(portal.addr, 1, "08:00", "20:00", &[(2, KEY2)]),
    );
    let (s, v) = admin(&p, "POST", "/admin/reload").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["applied"].to_string().contains("waiting_room.keys"),
        "{v}"
    );

    // The old pass still works, and the waiting person keeps their number.
    assert_eq!(inside.get(p.addr, "/claim").await.0, 200);
    let (s, v) = waiting.get(p.addr, "/claim").await;
    assert_eq!((s, v["number"].as_u64()), (503, Some(number)), "{v}");
    // New tokens are signed with key 2.
    let mut newcomer = Browser::new("newcomer");
    assert_eq!(newcomer.get(p.addr, "/claim").await.0, 503);
    assert_eq!(newcomer.kid(), 2);
    // The long-lived token under key 1 is not honoured: it is treated as no ticket at all.
    let mut forger = Browser::new("forger");
    forger.jar.0.insert("anticamera_claims".into(), forged);
    let (s, v) = forger.get(p.addr, "/claim").await;
    assert_eq!(s, 503);
    assert!(
        v["number"].as_u64().unwrap() > number,
        "a new ticket at the back: {v}"
    );

    // When the old pass's life is over, it is over (the session ends after 30 min idle).
    p.clock().advance_ms(31 * 60_000);
    p.tick();
    let (s, _) = inside.get(p.addr, "/claim").await;
    assert_eq!(s, 503, "the old pass expired like any pass");
    p.stop().await;
}

/// `kill -HUP` reloads (it used to terminate anticamera on the spot).
#[test]
fn sighup_reloads_the_file_and_anticamera_keeps_running() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let portal = rt.block_on(echo_upstream());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anticamera.toml");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr, admin_addr) = (free(), free());
    let text = |capacity: u32| {
        config(portal.addr, capacity, "08:00", "20:00", &[(1, KEY1)])
            .replace(
                "listen = \"127.0.0.1:0\"\nworkers",
                &format!("listen = \"{addr}\"\nworkers"),
            )
            .replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"{admin_addr}\""),
            )
    };
    write(&file, &text(2));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anticamera"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gate = |rt: &tokio::runtime::Runtime| -> Option<serde_json::Value> {
        rt.block_on(async {
            let req = Request::get(format!("http://{admin_addr}/admin/gates/claims"))
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(full(""))
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(2), client(false).request(req)).await;
            let r = r.ok()?.ok()?;
            let b = http_body_util::BodyExt::collect(r.into_body()).await.ok()?;
            serde_json::from_slice(&b.to_bytes()).ok()
        })
    };
    let wait_for = |rt: &tokio::runtime::Runtime, want: u64| {
        for _ in 0..100 {
            if gate(rt).is_some_and(|g| g["capacity"] == want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(wait_for(&rt, 2), "anticamera did not start");
    write(&file, &text(5));
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_for(&rt, 5), "SIGHUP applied the new capacity");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    // A second reload with a broken file changes nothing and does not stop it either.
    write(&file, "not = [valid");
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(wait_for(&rt, 5));
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let code = child.wait().unwrap();
    assert!(code.success(), "{code}");
}
