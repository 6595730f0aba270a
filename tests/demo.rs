//! `anticamera demo` as a newcomer runs it: the binary starts the demo portal and anticamera,
//! prints where to go, and a login through the proxy shows the user's own page; with `--crowd`,
//! simulated people fill the waiting room, so the newcomer's own client waits in line, sees
//! its place move, gets in, and the crowd leaves by itself.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::Request;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `anticamera demo`.
struct Demo {
    child: std::process::Child,
    /// What it printed up to "Ctrl-C".
    banner: String,
    proxy: std::net::SocketAddr,
    portal: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts `anticamera demo` with the config `extra_toml` added to `[server]`, `[upstream]` and
/// `[admin]` sections on free loopback ports, and these extra arguments. A port taken between
/// the probe and the start (another test, another process) means a new try on other ports.
async fn start_demo(extra_toml: &str, args: &[&str]) -> Demo {
    let mut errors = String::new();
    for _ in 0..3 {
        let (proxy_port, portal_port, admin_port) = (free_port(), free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("demo.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nworkers = 1\n\
                 [upstream]\nurls = [\"http://127.0.0.1:{portal_port}\"]\n\
                 [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{extra_toml}"
            ),
        )
        .unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_anticamera"))
            .args(["demo", "--config"])
            .arg(&cfg)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let banner = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut text = String::new();
            for line in lines.by_ref() {
                let line = line.unwrap();
                text.push_str(&line);
                text.push('\n');
                if line.contains("Ctrl-C") {
                    break;
                }
            }
            text
        });
        let banner = tokio::time::timeout(Duration::from_secs(20), banner)
            .await
            .unwrap()
            .unwrap();
        if banner.contains("Ctrl-C") {
            return Demo {
                child,
                banner,
                proxy: format!("127.0.0.1:{proxy_port}").parse().unwrap(),
                portal: format!("127.0.0.1:{portal_port}").parse().unwrap(),
                _dir: dir,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
        errors.push_str(&std::fs::read_to_string(dir.path().join("stderr")).unwrap());
    }
    panic!("anticamera demo did not start:\n{errors}");
}

/// SIGTERM drains and exits cleanly.
async fn stop(child: std::process::Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn demo_starts_portal_and_proxy_and_serves_a_login() {
    let Demo {
        child,
        banner,
        proxy,
        ..
    } = start_demo("", &[]).await;
    assert!(
        banner.contains(&format!("http://{proxy}/login")),
        "{banner}"
    );

    // No crowd asked for: the banner and the home page point to the button.
    assert!(
        banner.contains("Send 300 people to the claim form"),
        "{banner}"
    );
    let (status, _, body) = get(proxy, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("action=\"/__portal/crowd\""), "{body}");
    let req = Request::post(format!("http://{proxy}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("user=maria.rossi"))
        .unwrap();
    let (status, h, _) = send(req).await;
    assert_eq!(status, 303);
    let cookie = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let req = Request::get(format!("http://{proxy}/account"))
        .header("cookie", cookie)
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, 200);
    assert!(body.contains("data-user=\"maria.rossi\""), "{body}");

    stop(child).await;
}

/// The `name=value` pairs of the `Set-Cookie` headers, for a `Cookie` header.
fn cookies(h: &http::HeaderMap) -> Vec<String> {
    h.get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect()
}

/// The crowd's state, from the portal.
async fn crowd(portal: std::net::SocketAddr) -> serde_json::Value {
    let (status, _, body) = get(portal, "/__portal/crowd").await;
    assert_eq!(status, 200, "{body}");
    json(&body)
}

#[tokio::test]
async fn demo_crowd_puts_a_newcomer_in_line_lets_them_in_and_leaves() {
    // A small gate with no admission cap: the crowd goes through in a few seconds.
    let gate = "[waiting_room]\n\
        keys = [{ id = 1, secret = \"NOT-A-SECRET-demo-signing-key-0123456789abcdef\" }]\n\
        poll_interval = \"1s\"\n\
        [[gates]]\nname = \"services\"\nprefix = [\"/account\", \"/claim\"]\n\
        capacity = 5\nsession_duration = \"1m\"\n\
        [isolation]\nsession_cookies = [\"portal_session\"]\nleak_guard_header = \"x-portal-user\"\n";
    let people = 40;
    let Demo {
        child,
        banner,
        proxy,
        portal,
        ..
    } = start_demo(
        gate,
        &[
            "--crowd",
            &people.to_string(),
            "--crowd-over",
            "1s",
            "--crowd-think",
            "300ms",
        ],
    )
    .await;
    assert!(
        banner.contains(&format!(
            "Open http://{proxy}/claim in your browser now: {people} simulated people are ahead of you"
        )),
        "{banner}"
    );

    // The newcomer logs in (outside the gate), once the crowd fills the line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = crowd(portal).await;
        if c["waiting"].as_u64().unwrap() >= 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the crowd never queued: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = Request::post(format!("http://{proxy}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("user=newcomer"))
        .unwrap();
    let (status, h, _) = send(req).await;
    assert_eq!(status, 303);
    let mut jar = cookies(&h);

    // (1) The claim form: the queue page, with people ahead.
    let claim = |jar: &[String]| {
        Request::get(format!("http://{proxy}/claim"))
            .header("accept", "text/html")
            .header("cookie", jar.join("; "))
            .body(full(""))
            .unwrap()
    };
    let (status, h, body) = send(claim(&jar)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("data-anticamera=\"queue\""), "{body}");
    let first: u64 = body
        .split("id=\"position\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(first > 1, "position {first}");
    jar.extend(cookies(&h));

    // (2) Its place moves, (3) it is let in and gets the portal's page.
    let mut positions = vec![first];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted: {positions:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let req = Request::get(format!(
            "http://{proxy}/.anticamera/status?gate=services&wait=0"
        ))
        .header("accept", "application/json")
        .header("cookie", jar.join("; "))
        .body(full(""))
        .unwrap();
        let (status, _, body) = send(req).await;
        let v = json(&body);
        match v["state"].as_str().unwrap() {
            "admitted" => break,
            "waiting" => {
                assert_eq!(status, 503, "{body}");
                positions.push(v["position"].as_u64().unwrap());
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        positions.windows(2).all(|w| w[1] <= w[0]) && positions.last() < positions.first(),
        "{positions:?}"
    );
    let (status, _, body) = send(claim(&jar)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data-user=\"newcomer\""), "{body}");

    // (4) The crowd finishes by itself: every person claimed and left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let c = loop {
        let c = crowd(portal).await;
        if c["active"].as_u64().unwrap() == 0 {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the crowd never left: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            c["sent"].as_u64(),
            c["claimed"].as_u64(),
            c["gave_up"].as_u64()
        ),
        (Some(people), Some(people), Some(0)),
        "{c}"
    );
    assert!(c["queued"].as_u64().unwrap() >= 10, "{c}");

    stop(child).await;
}
