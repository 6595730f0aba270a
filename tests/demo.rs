//! `anticamera demo` as a newcomer runs it: the binary starts the demo portal and anticamera,
//! prints where to go, and a login through the proxy shows the user's own page.
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

#[tokio::test]
async fn demo_starts_portal_and_proxy_and_serves_a_login() {
    let (proxy_port, portal_port, admin_port) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("demo.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nworkers = 1\n\
             [upstream]\nurls = [\"http://127.0.0.1:{portal_port}\"]\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_anticamera"))
        .args(["demo", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    assert!(
        banner.contains(&format!("http://127.0.0.1:{proxy_port}/login")),
        "{banner}"
    );

    let proxy: std::net::SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    let (status, _, body) = get(proxy, "/").await;
    assert_eq!(status, 200, "{body}");
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

    // SIGTERM drains and exits cleanly.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
