//! Shared harness for the black-box tests: a programmable upstream, anticamera started on
//! ephemeral ports, and raw-socket helpers. Everything talks over real loopback sockets.
#![allow(dead_code)]
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A programmable portal stand-in on an ephemeral loopback port.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

/// An upstream that answers every request with `body` after `delay`.
pub async fn slow_upstream(delay: Duration, body: &'static str) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(body))
    })
    .await
}

/// An upstream that answers with a JSON description of what it received (method, uri,
/// headers, body length).
pub async fn echo_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let v = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "len": body.len(),
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(full(v.to_string()))
            .unwrap()
    })
    .await
}

/// anticamera running on ephemeral ports.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    server: Option<anticamera::server::RunningServer>,
}

impl Proxy {
    /// The proxy's clock (tests freeze and move it).
    pub fn clock(&self) -> std::sync::Arc<anticamera::clock::Clock> {
        self.server.as_ref().unwrap().clock()
    }

    /// Runs one controller tick now (instead of waiting for the next).
    pub fn tick(&self) {
        if let Some(r) = self.server.as_ref().unwrap().room() {
            r.tick();
        }
    }

    pub fn shutdown_handle(&self) -> anticamera::server::ShutdownHandle {
        self.server.as_ref().unwrap().shutdown_handle()
    }

    /// Shuts down and waits (on a blocking thread) for the workers to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            tokio::task::spawn_blocking(move || s.join()).await.unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            // Do not join here: tests may drop inside a runtime.
            std::thread::spawn(move || s.join());
        }
    }
}

/// Starts anticamera in front of `upstream` with extra config TOML appended to each section.
/// `extra` is raw TOML placed after the generated `[upstream]` section; sections it opens
/// (e.g. `[server]` keys) are merged by writing them before. Use `server_extra` for [server].
pub fn proxy(upstream: SocketAddr, server_extra: &str, extra: &str) -> Proxy {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{server_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{upstream}\"]\n{extra}\n"
    );
    proxy_from(&text)
}

pub fn proxy_from(text: &str) -> Proxy {
    proxy_from_in(text, std::path::Path::new("."))
}

/// Starts anticamera from config text whose relative paths are relative to `base`.
pub fn proxy_from_in(text: &str, base: &std::path::Path) -> Proxy {
    let cfg = anticamera::config::Config::parse_in(text, base, false)
        .unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{text}"));
    let bound = anticamera::server::BoundServer::bind(cfg).unwrap();
    let (addr, admin) = (bound.local_addr(), bound.admin_addr());
    let server = bound.start().unwrap();
    Proxy {
        addr,
        admin,
        server: Some(server),
    }
}

/// Starts anticamera from a config file (as `anticamera run --config FILE` does: a reload
/// re-reads that file).
pub fn proxy_from_file(path: &std::path::Path) -> Proxy {
    let cfg = anticamera::config::Config::load(path)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let bound = anticamera::server::BoundServer::bind(cfg).unwrap();
    let (addr, admin) = (bound.local_addr(), bound.admin_addr());
    let server = bound.start().unwrap();
    Proxy {
        addr,
        admin,
        server: Some(server),
    }
}

/// A hyper client speaking HTTP/1.1 (or h2c with `h2`).
pub fn client(
    h2: bool,
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    if h2 {
        b.http2_only(true);
    }
    b.build_http()
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(full(Bytes::new()))
        .unwrap();
    send(req).await
}

pub async fn send(req: Request<Body>) -> (u16, http::HeaderMap, String) {
    let resp = client(false).request(req).await.expect("request failed");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Writes raw bytes and reads until the peer closes or `wait` passes; returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, wait).await
}

pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closed the connection within `wait` (EOF or reset on read).
pub async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Header values the echo upstream saw, by name.
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().unwrap() == name)
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

/// A browser's cookie jar: what `Set-Cookie` gave (a `Max-Age=0` removes), sent back as one
/// `Cookie` header.
#[derive(Debug, Clone, Default)]
pub struct Jar(pub std::collections::HashMap<String, String>);

impl Jar {
    /// The `Cookie` header to send, if any cookie is held.
    pub fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Takes in the cookies an answer sets.
    pub fn absorb(&mut self, headers: &http::HeaderMap) {
        for c in headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_string(), v.to_string());
            }
        }
    }

    /// Whether a cookie of this name is held.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// An instant given in Rome's local time.
pub fn rome(y: i32, m: u32, d: u32, h: u32, min: u32) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono_tz::Europe::Rome
        .with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// A redis-server of the tests' own (`scripts/setup-redis` installs it): started in a temp dir
/// on a free loopback port, without persistence unless asked, killed when dropped. It can be
/// killed and started again on the same port mid-test, empty or with what it had saved.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    persist: bool,
}

impl RedisServer {
    /// Starts an empty server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts an empty server; with `persist`, an append-only file in its temp dir (fsync every
    /// write), so a restart brings back what it had.
    pub fn start_with(persist: bool) -> RedisServer {
        let bin = "/usr/bin/redis-server";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run scripts/setup-redis"
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut r = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            persist,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server is running now.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL: nothing saved on the way out).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and wipes what it saved: the next start is empty.
    pub fn wipe(&mut self) {
        self.kill();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// (Re)starts the server on the same port (killing a running one first) and waits until it
    /// answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ];
        if self.persist {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let child = std::process::Command::new("/usr/bin/redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Ours, not another test's server that took the port while this one was down.
            if self.ping() && self.is_ours() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "redis-server could not start again on port {} (taken meanwhile?): {exited:?}",
                self.port
            );
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one inline command and returns the first line of the answer, or a bulk string's
    /// value ("" if none or nil).
    pub fn cmd(&self, line: &str) -> String {
        use std::io::{BufRead, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut r = std::io::BufReader::new(s);
        let mut out = String::new();
        let _ = r.read_line(&mut out);
        // A bulk string: its value is on the next line; nil is "".
        if out.starts_with("$-1") || out.starts_with("*-1") {
            return String::new();
        }
        if out.starts_with('$') {
            out.clear();
            let _ = r.read_line(&mut out);
        }
        out.trim_end().to_string()
    }

    /// Whether the server answering on the port is this one (its `dir` is this one's).
    fn is_ours(&self) -> bool {
        use std::io::{BufRead, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"CONFIG GET dir\r\n").is_err() {
            return false;
        }
        let dir = std::fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().into());
        std::io::BufReader::new(s)
            .lines()
            .take(5)
            .map_while(Result::ok)
            .any(|l| {
                let l = std::path::Path::new(l.trim_end());
                l == dir || l == self.dir.path()
            })
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        self.cmd("PING") == "+PONG"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
