//! HTTP plumbing of the load tool: the cookie jar, sending with a deadline, and the
//! classification of answers (portal, waiting room, refusal, leak guard) and of personal pages
//! (the isolation canary). Pure parts are unit-tested.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, SET_COOKIE};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

/// Largest response body read (the demo portal's pages are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// A minimal cookie jar: every cookie is sent to every path of the one target host.
#[derive(Debug, Default, Clone)]
pub struct Jar(Vec<(String, String)>);

impl Jar {
    /// Applies one `Set-Cookie` value: `name=value` is stored, `Max-Age<=0` deletes.
    pub fn apply(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let delete = parts.any(|a| {
            let a = a.trim();
            a.len() > 8
                && a[..8].eq_ignore_ascii_case("max-age=")
                && a[8..].trim().parse::<i64>().is_ok_and(|n| n <= 0)
        });
        self.0.retain(|(n, _)| n != name);
        if !delete {
            self.0.push((name.to_string(), value.trim().to_string()));
        }
    }

    /// Applies every `Set-Cookie` of a response.
    pub fn apply_all(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            if let Ok(s) = v.to_str() {
                self.apply(s);
            }
        }
    }

    /// The `Cookie` header value, if any cookie is held.
    pub fn header(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        Some(
            self.0
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The outcome of the isolation check of one personal response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Header and body name the requester.
    Ok,
    /// The owner header names the requester, but the body marker is missing.
    Incomplete,
    /// Names nobody: cannot be checked.
    Unverifiable,
    /// Names someone else (header or body): another user's data.
    Leak {
        header: Option<String>,
        body: Vec<String>,
    },
}

/// Every `data-user="..."` value in an HTML body.
pub fn html_users(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("data-user=\"") {
        rest = &rest[i + "data-user=\"".len()..];
        match rest.find('"') {
            Some(j) => {
                out.push(rest[..j].to_string());
                rest = &rest[j..];
            }
            None => break,
        }
    }
    out
}

/// The `"user"` of a JSON body (top level).
pub fn json_user(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("user")?
        .as_str()
        .map(str::to_string)
}

/// Checks that a personal response belongs to `expected`.
pub fn check_isolation(expected: &str, owner_header: Option<&str>, body: &[u8]) -> Isolation {
    let mut body_users = html_users(&String::from_utf8_lossy(body));
    if let Some(u) = json_user(body) {
        body_users.push(u);
    }
    let header_bad = owner_header.is_some_and(|h| h != expected);
    let body_bad = body_users.iter().any(|u| u != expected);
    if header_bad || body_bad {
        return Isolation::Leak {
            header: owner_header.map(str::to_string),
            body: body_users,
        };
    }
    match (owner_header.is_some(), !body_users.is_empty()) {
        // The body names the requester (and nobody else): through anticamera the owner header
        // is stripped by the leak guard, so the body is what counts.
        (_, true) => Isolation::Ok,
        (false, false) => Isolation::Unverifiable,
        (true, false) => Isolation::Incomplete,
    }
}

/// What a response was, from the point of view of the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Answered by the portal (any status), or a gateway error after reaching it (502/504).
    Portal,
    /// A waiting-room answer (503 queue/closed page or JSON).
    Queue,
    /// A waiting-room status poll.
    Poll,
    /// Refused by the front without reaching the portal (429, nginx 503...).
    Refused,
    /// A 502 from the leak guard (a cross-user response refused by the proxy).
    LeakGuard,
    /// Client-side timeout.
    Timeout,
    /// Connection refused/reset or protocol error.
    Transport,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Portal => "portal",
            Class::Queue => "queue",
            Class::Poll => "poll",
            Class::Refused => "refused",
            Class::LeakGuard => "leak_guard",
            Class::Timeout => "timeout",
            Class::Transport => "transport",
        }
    }
}

/// Whether a response is anticamera's waiting room (queue or closed answer).
pub fn is_waiting_room(status: u16, headers: &HeaderMap, body: &[u8], cookie_prefix: &str) -> bool {
    if status != 503 {
        return false;
    }
    let sets_own_cookie = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim_start().starts_with(cookie_prefix));
    if sets_own_cookie {
        return true;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if v.get("anticamera").is_some()
            && matches!(
                v.get("state").and_then(Value::as_str),
                Some("waiting" | "prequeue" | "closed" | "admitted")
            )
        {
            return true;
        }
    }
    let text = String::from_utf8_lossy(body);
    text.contains("data-anticamera")
}

/// Whether a body mentions the leak guard.
pub fn mentions_leak(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .to_ascii_lowercase()
        .contains("leak")
}

/// Classifies a (non-poll) response.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], cookie_prefix: &str) -> Class {
    if is_waiting_room(status, headers, body, cookie_prefix) {
        return Class::Queue;
    }
    if status == 502 && mentions_leak(body) {
        return Class::LeakGuard;
    }
    if status == 429 {
        return Class::Refused;
    }
    if status == 503 {
        // The portal's own 503 page is rendered in its layout; any other 503 (nginx's
        // limit_req/limit_conn page, a proxy's shedding answer) never reached the portal.
        let text = String::from_utf8_lossy(body);
        if !text.contains("Portale Previdenza") {
            return Class::Refused;
        }
    }
    Class::Portal
}

/// A response, fully read.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    Timeout,
    Transport,
}

/// Status (0 for no response) and class of a request's outcome.
pub fn classify_result(r: &Result<Resp, NetError>, cookie_prefix: &str) -> (u16, Class) {
    match r {
        Ok(resp) => (
            resp.status,
            classify(resp.status, &resp.headers, &resp.body, cookie_prefix),
        ),
        Err(NetError::Timeout) => (0, Class::Timeout),
        Err(NetError::Transport) => (0, Class::Transport),
    }
}

pub fn join_url(base: &Uri, path: &str) -> anyhow::Result<Uri> {
    let s = format!("{}{path}", base.to_string().trim_end_matches('/'));
    s.parse().with_context(|| format!("bad URL {s}"))
}

/// Sends one request with a deadline on head and body.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Resp, NetError> {
    let fut = async {
        let resp = client.request(req).await.map_err(|_| NetError::Transport)?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| NetError::Transport)?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn jar_stores_replaces_and_deletes() {
        let mut j = Jar::default();
        assert_eq!(j.header(), None);
        j.apply("portal_session=abc; Path=/; HttpOnly; SameSite=Lax");
        j.apply("anticamera_services=T1; Path=/; Max-Age=86400; HttpOnly");
        assert_eq!(
            j.header().unwrap(),
            "portal_session=abc; anticamera_services=T1"
        );
        j.apply("anticamera_services=P2; Path=/; Max-Age=360");
        assert_eq!(j.get("anticamera_services"), Some("P2"));
        j.apply("anticamera_services=; Path=/; Max-Age=0; HttpOnly");
        assert_eq!(j.get("anticamera_services"), None);
        assert_eq!(j.header().unwrap(), "portal_session=abc");
        j.apply("garbage-without-equals");
        j.apply("=novalue");
        assert_eq!(j.0.len(), 1);
    }

    #[test]
    fn isolation_detects_leaks_in_html_json_and_header() {
        let html = br#"<p>Utente: <strong data-user="vu1">vu1</strong></p>"#;
        assert_eq!(check_isolation("vu1", Some("vu1"), html), Isolation::Ok);
        // vu1 is a prefix of vu12: must still be a leak.
        assert!(matches!(
            check_isolation("vu12", Some("vu12"), html),
            Isolation::Leak { .. }
        ));
        assert!(matches!(
            check_isolation("vu1", Some("vu7"), html),
            Isolation::Leak { .. }
        ));
        let js = br#"{"user":"vu3","fiscal_code":"X","iban":"IT00"}"#;
        assert_eq!(check_isolation("vu3", Some("vu3"), js), Isolation::Ok);
        assert!(matches!(
            check_isolation("vu4", Some("vu3"), js),
            Isolation::Leak { .. }
        ));
        assert_eq!(check_isolation("vu3", None, js), Isolation::Ok);
        assert_eq!(
            check_isolation("vu3", Some("vu3"), b"<p>nothing</p>"),
            Isolation::Incomplete
        );
        assert_eq!(
            check_isolation("vu3", None, b"<p>nothing</p>"),
            Isolation::Unverifiable
        );
        // Two markers, one foreign: a leak.
        let two = br#"<p data-user="vu1"></p><p data-user="vu2"></p>"#;
        assert!(matches!(
            check_isolation("vu1", Some("vu1"), two),
            Isolation::Leak { .. }
        ));
    }

    #[test]
    fn classification_separates_queue_refusal_portal_and_leak_guard() {
        let none = HeaderMap::new();
        let q = br#"{"anticamera":1,"state":"waiting","position":3,"retry_after_seconds":2}"#;
        assert_eq!(classify(503, &none, q, "anticamera_"), Class::Queue);
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert(
            SET_COOKIE,
            HeaderValue::from_static("anticamera_services=T; Path=/"),
        );
        assert_eq!(
            classify(503, &with_cookie, b"<html>queue</html>", "anticamera_"),
            Class::Queue
        );
        assert_eq!(
            classify(
                503,
                &none,
                b"<main data-anticamera=\"queue\">4</main>",
                "anticamera_"
            ),
            Class::Queue
        );
        let portal503 = b"<title>Servizio non disponibile - Portale Previdenza (demo)</title>";
        assert_eq!(
            classify(503, &none, portal503, "anticamera_"),
            Class::Portal
        );
        let nginx503 = b"<html><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center>";
        assert_eq!(
            classify(503, &none, nginx503, "anticamera_"),
            Class::Refused
        );
        assert_eq!(classify(429, &none, b"", "anticamera_"), Class::Refused);
        let guard = br#"{"status":502,"error":"session_leak","message":"Blocked a response for another user (leak guard)."}"#;
        assert_eq!(classify(502, &none, guard, "anticamera_"), Class::LeakGuard);
        assert_eq!(
            classify(502, &none, b"upstream_unavailable", "anticamera_"),
            Class::Portal
        );
        assert_eq!(classify(200, &none, b"ok", "anticamera_"), Class::Portal);
    }
}
