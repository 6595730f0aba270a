//! Gate matching end to end, over real sockets: every spelling of a gated path meets its gate
//! (case-insensitive or not), host-scoped gates over HTTP/1.1 and HTTP/2, and a reload that
//! changes `[routing]`. The portal says which path it served; a gate that is full answers with
//! its queue page (503), so a request that meets the gate never reaches the portal.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

const KEY: &str = "test-signing-key-0123456789abcdef0123456789";

/// A portal that answers every request with the path it served.
async fn portal() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        http::Response::new(full(format!("served {}", req.uri().path())))
    })
    .await
}

const ADMIN: &str = "admin-token-for-routing-tests";

/// A config with `routing` in `[routing]` and the given gates (TOML after `[[gates]]` headers),
/// each with capacity 1.
fn config_text(up: SocketAddr, routing: &str, gates: &[&str]) -> String {
    let gates: String = gates
        .iter()
        .map(|g| format!("[[gates]]\ncapacity = 1\n{g}\n"))
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n\
         [upstream]\nurls = [\"http://{up}\"]\n\
         [routing]\n{routing}\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\ntick = \"50ms\"\n\
         {gates}"
    )
}

/// anticamera with [`config_text`].
fn proxy_with(up: SocketAddr, routing: &str, gates: &[&str]) -> Proxy {
    proxy_from(&config_text(up, routing, gates))
}

/// A fresh client (no cookies) asks for `target` on `host` over HTTP/1.1, written as is on
/// the wire: the status and the body.
async fn at(p: &Proxy, host: &str, target: &str) -> (u16, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let resp = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    let status = resp
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// Fills the gate (capacity 1) with a first visitor for `path` on `host`.
async fn fill(p: &Proxy, host: &str, path: &str) {
    let (status, body) = at(p, host, path).await;
    assert_eq!(status, 200, "the first visitor of {path} is let in: {body}");
}

/// `path` on `host` meets the (full) gate: the queue page, the portal never asked.
async fn meets_gate(p: &Proxy, host: &str, path: &str) {
    let (status, body) = at(p, host, path).await;
    assert_eq!(status, 503, "{host} {path} must meet the gate: {body}");
    assert!(
        !body.contains("served"),
        "{host} {path} reached the portal: {body}"
    );
}

/// `path` on `host` passes without the gate: the portal served `served`.
async fn passes(p: &Proxy, host: &str, path: &str, served: &str) {
    let (status, body) = at(p, host, path).await;
    assert_eq!(status, 200, "{host} {path} must pass: {body}");
    assert!(body.contains(&format!("served {served}")), "{path}: {body}");
}

const SPELLINGS: &[&str] = &[
    "/account",
    "/account/",
    "//account",
    "/account;jsessionid=x",
    "/%61ccount",
    "/x/../account",
    "/account%2Fsub",
    "/account/./profile",
    // A `..` never climbs out of a gate, however it is spelled.
    "/account/../info",
    "/account/..;/info",
    "/account/%2e%2e/info",
    "/account/..%2Finfo",
];

const CASES: &[&str] = &["/ACCOUNT", "/Account/", "//ACCOUNT/x", "/%41ccount;a=b"];

#[tokio::test]
async fn case_insensitive_gates_catch_every_spelling() {
    let up = portal().await;
    let p = proxy_with(
        up.addr,
        "case_insensitive = true",
        &["name = \"account\"\nprefix = [\"/account\"]"],
    );
    fill(&p, "portal.example.it", "/account").await;
    for path in SPELLINGS.iter().chain(CASES) {
        meets_gate(&p, "portal.example.it", path).await;
    }
    passes(&p, "portal.example.it", "/info", "/info").await;
    passes(&p, "portal.example.it", "/ACCOUNTS", "/ACCOUNTS").await;
}

#[tokio::test]
async fn case_sensitive_gates_catch_every_spelling_in_their_case() {
    let up = portal().await;
    let p = proxy_with(
        up.addr,
        "",
        &["name = \"account\"\nprefix = [\"/account\"]"],
    );
    fill(&p, "portal.example.it", "/account").await;
    for path in SPELLINGS {
        meets_gate(&p, "portal.example.it", path).await;
    }
    // Case-sensitive (the default): another case is another page, served without the gate.
    passes(&p, "portal.example.it", "/ACCOUNT", "/ACCOUNT").await;
    passes(&p, "portal.example.it", "/Account/", "/Account/").await;
}

#[tokio::test]
async fn a_gate_overrides_the_global_case_rule() {
    let up = portal().await;
    // Global case-insensitive; one gate says its portal is case-sensitive.
    let p = proxy_with(
        up.addr,
        "case_insensitive = true",
        &[
            "name = \"exact\"\nprefix = [\"/Exact\"]\ncase_insensitive = false",
            "name = \"account\"\nprefix = [\"/account\"]",
        ],
    );
    fill(&p, "portal.example.it", "/Exact").await;
    fill(&p, "portal.example.it", "/account").await;
    meets_gate(&p, "portal.example.it", "/Exact/x").await;
    passes(&p, "portal.example.it", "/EXACT", "/EXACT").await;
    meets_gate(&p, "portal.example.it", "/ACCOUNT").await;
    drop(p);
    // Global default (case-sensitive); one gate folds case.
    let p = proxy_with(
        up.addr,
        "",
        &["name = \"account\"\nprefix = [\"/account\"]\ncase_insensitive = true"],
    );
    fill(&p, "portal.example.it", "/account").await;
    meets_gate(&p, "portal.example.it", "/ACCOUNT").await;
}

#[tokio::test]
async fn host_scoped_gates() {
    let up = portal().await;
    let p = proxy_with(
        up.addr,
        "hosts = [\"other.example.it\"]",
        &["name = \"account\"\nprefix = [\"/account\"]\n\
           hosts = [\"portal.example.it\", \"www.portal.example.it\"]"],
    );
    fill(&p, "portal.example.it", "/account").await;
    for host in [
        "portal.example.it",
        "PORTAL.Example.it",
        "portal.example.it.",
        "portal.example.it:443",
        "portal.example.it.:8443",
        "www.portal.example.it",
        // Named nowhere: the portal may serve it as its default site.
        "stranger.example",
        "127.0.0.1",
    ] {
        meets_gate(&p, host, "/account").await;
        meets_gate(&p, host, "/ACCOUNT/../account").await;
    }
    // Another host the config names: not this gate's.
    passes(&p, "other.example.it", "/account", "/account").await;
    passes(&p, "Other.Example.IT.:80", "/account/x", "/account/x").await;
    passes(&p, "portal.example.it", "/info", "/info").await;
    // The absolute form's host is the request's host (it must agree with Host).
    let (status, body) = at(&p, "other.example.it", "http://other.example.it/account").await;
    assert_eq!(
        (status, body.contains("served /account")),
        (200, true),
        "{body}"
    );
    let (status, _) = at(&p, "portal.example.it", "http://portal.example.it/account").await;
    assert_eq!(status, 503);

    // HTTP/2: `:authority` is the host.
    assert_eq!(h2_get(p.addr, "other.example.it", "/account").await, 200);
    assert_eq!(
        h2_get(p.addr, "portal.example.it:443", "/account").await,
        503
    );
    assert_eq!(
        h2_get(p.addr, "portal.example.it.", "/Account/../account").await,
        503
    );
}

/// A GET over h2c with the given `:authority` (and no Host header): the status.
async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn a_reload_applies_the_routing_semantics() {
    let up = portal().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anticamera.toml");
    let gate = ["name = \"account\"\nprefix = [\"/account\"]"];
    std::fs::write(&file, config_text(up.addr, "", &gate)).unwrap();
    let p = proxy_from_file(&file);
    fill(&p, "portal.example.it", "/account").await;
    passes(&p, "portal.example.it", "/ACCOUNT", "/ACCOUNT").await;
    std::fs::write(
        &file,
        config_text(up.addr, "case_insensitive = true", &gate),
    )
    .unwrap();
    let req = Request::post(format!("http://{}/admin/reload", p.admin))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let applied = json(&body)["applied"].clone();
    assert!(
        applied.as_array().unwrap().iter().any(|a| a == "routing"),
        "{body}"
    );
    // The admitted visitor kept the slot: the gate is still full, and now catches `/ACCOUNT`.
    meets_gate(&p, "portal.example.it", "/ACCOUNT").await;
}
