//! The waiting-room page in a real headless browser (Debian's Chromium, installed by
//! `scripts/setup-browser`): the position updates without a reload and the user gets through
//! when admitted.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use http::Request;

fn admin(p: &Proxy, path: &str, body: &str) -> Request<Body> {
    Request::post(format!("http://{}{path}", p.admin))
        .header("authorization", "Bearer browser-test-admin-token")
        .body(full(body.to_string()))
        .unwrap()
}

async fn take_place(addr: std::net::SocketAddr, ua: &str) -> Option<String> {
    let req = Request::get(format!("http://{addr}/claim"))
        .header("user-agent", ua)
        .body(full(""))
        .unwrap();
    let (_, h, _) = send(req).await;
    h.get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_waits_sees_its_place_move_and_gets_in() {
    let root = env!("CARGO_MANIFEST_DIR");
    let setup = Command::new(format!("{root}/scripts/setup-browser"))
        .status()
        .unwrap();
    assert!(setup.success(), "scripts/setup-browser failed");

    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        http::Response::builder()
            .header("content-type", "text/html")
            .body(full(format!(
                "<!doctype html><main id=portal>Portal page {}</main>",
                req.uri().path()
            )))
            .unwrap()
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"browser-test-admin-token\"\n\
         [upstream]\nurls = [\"http://{}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"browser-test-key-0123456789abcdef0123\" }}]\n\
         tick = \"50ms\"\npoll_interval = \"2s\"\n\
         [[gates]]\nname = \"claims\"\nlabel = \"Domanda bonus 600 euro\"\nprefix = [\"/claim\"]\ncapacity = 1\n",
        up.addr
    );
    let p = proxy_from(&text);
    // One user inside, two waiting ahead of the browser.
    take_place(p.addr, "inside").await.unwrap();
    take_place(p.addr, "ahead-1").await.unwrap();
    take_place(p.addr, "ahead-2").await.unwrap();

    let url = format!("http://{}/claim", p.addr);
    let shot = std::env::temp_dir().join("anticamera-queue.png");
    let node = std::thread::spawn({
        let shot = shot.clone();
        move || {
            Command::new("node")
                .arg(format!("{root}/tests/browser/queue.mjs"))
                .args(["--url", &url, "--timeout", "40", "--screenshot"])
                .arg(&shot)
                .output()
                .unwrap()
        }
    });
    // Wait until the browser holds its ticket (third in line), then let people in step by step.
    for _ in 0..200 {
        let (_, _, body) = send(
            Request::get(format!("http://{}/admin/gates/claims", p.admin))
                .header("authorization", "Bearer browser-test-admin-token")
                .body(full(""))
                .unwrap(),
        )
        .await;
        if json(&body)["waiting"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        send(admin(&p, "/admin/gates/claims/limits", "{\"capacity\": 2}"))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        send(admin(
            &p,
            "/admin/gates/claims/limits",
            "{\"capacity\": 10}"
        ))
        .await
        .0,
        200
    );

    let out = tokio::task::spawn_blocking(move || node.join().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    let v = json(stdout.lines().last().unwrap());
    assert_eq!(v["ok"], true);
    assert_eq!(v["first"], "3", "{v}");
    assert_eq!(v["second"], "2", "{v}");
    assert!(
        v["body"].as_str().unwrap().contains("Portal page /claim"),
        "{v}"
    );
    assert!(shot.exists());
}
