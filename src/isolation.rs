//! Session isolation: no user is ever served another user's data.
//!
//! Three mechanisms, all on the request path in `proxy.rs`:
//! - **Identity headers from clients are never believed.** Headers the portal or a gateway uses
//!   to name the user (the leak-guard header, `isolation.strip_request_headers`) and
//!   anticamera's own `x-anticamera-*` headers are removed from every request.
//! - **Personal responses are marked uncacheable.** A response to a request that carried
//!   credentials (a session cookie named in `isolation.session_cookies`, or `Authorization`),
//!   or that sets a cookie, or that went through a gate with a pass, leaves with
//!   `Cache-Control: private, no-store` unless the portal explicitly said `public`. A CDN in
//!   front of anticamera then cannot repeat the 2020 accident.
//! - **Leak guard** (defence in depth). If the portal stamps each personal response with the
//!   user it belongs to (`isolation.leak_guard_header`), anticamera binds each session to the
//!   first user it sees for it, and refuses (502) any later response for that session stamped
//!   for someone else, or any stamped response to a request with no session at all. Pages
//!   stamped with one of `isolation.anonymous_stamps` belong to nobody: delivered to anyone,
//!   they never bind a session. The header is stripped. Bindings are kept in a bounded table
//!   (hashes only: no personal data in memory or logs).
//! - **Response ownership** (`isolation.request_id_header`, `isolation.request_id_echo`). Each
//!   forwarded request carries a fresh request id (kept only when a trusted forwarder set it);
//!   when the portal echoes it, a response whose echo is missing or different is refused: it
//!   answers another request, even one of the same user.
//!
//! A refused response (leak guard or request id) also retires the portal connection it came
//! on (`proxy/forward.rs` poisons it in the pool): what that connection carries afterwards may
//! be shifted by one, so it never reaches anyone.

use std::collections::HashMap;
use std::sync::Mutex;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, SET_COOKIE};
use serde::Deserialize;

use crate::config::Dur;
use crate::util::cookie::cookie_value;

/// `[isolation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// Cookies that carry the portal's session (credentials).
    pub session_cookies: Vec<String>,
    /// Response header by which the portal names the user a personal response belongs to.
    pub leak_guard_header: Option<String>,
    /// Request headers that name a user or carry identity, removed from every client request.
    pub strip_request_headers: Vec<String>,
    /// Sessions remembered by the leak guard (hard cap; the oldest quarter is dropped when full).
    pub leak_guard_sessions: usize,
    /// A session binding not seen for this long is forgotten.
    pub leak_guard_idle: Dur,
    /// Stamps (values of the leak-guard header) by which the portal marks a page that belongs
    /// to nobody: delivered to anyone, never binding a session.
    pub anonymous_stamps: Vec<String>,
    /// Request header carrying a fresh id for every forwarded request (`x-request-id` by
    /// convention); an id set by a trusted forwarder is kept. `None`: no id is added.
    pub request_id_header: Option<String>,
    /// The portal echoes the request id in the same response header: a response whose echo is
    /// missing or different is refused and its connection retired.
    pub request_id_echo: bool,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            session_cookies: Vec::new(),
            leak_guard_header: None,
            strip_request_headers: vec![
                "x-remote-user".into(),
                "x-authenticated-user".into(),
                "x-user".into(),
                "x-user-id".into(),
                "remote-user".into(),
            ],
            leak_guard_sessions: 1_000_000,
            leak_guard_idle: Dur(std::time::Duration::from_secs(4 * 3600)),
            anonymous_stamps: Vec::new(),
            request_id_header: None,
            request_id_echo: false,
        }
    }
}

impl IsolationConfig {
    /// Checks the section; errors are `(key, reason)` with keys under `isolation.`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for (i, c) in self.session_cookies.iter().enumerate() {
            if c.is_empty() || c.contains([';', '=', ' ', ',']) {
                v.push((
                    format!("isolation.session_cookies[{i}]"),
                    format!("{c:?} is not a cookie name"),
                ));
            }
        }
        if let Some(h) = &self.leak_guard_header {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                v.push((
                    "isolation.leak_guard_header".into(),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        for (i, h) in self.strip_request_headers.iter().enumerate() {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                v.push((
                    format!("isolation.strip_request_headers[{i}]"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        if self.leak_guard_sessions == 0 {
            v.push((
                "isolation.leak_guard_sessions".into(),
                "must be at least 1".into(),
            ));
        }
        for (i, a) in self.anonymous_stamps.iter().enumerate() {
            if a.is_empty() || HeaderValue::from_str(a).is_err() {
                v.push((
                    format!("isolation.anonymous_stamps[{i}]"),
                    format!("{a:?} is not a header value"),
                ));
            }
        }
        if !self.anonymous_stamps.is_empty() && self.leak_guard_header.is_none() {
            v.push((
                "isolation.anonymous_stamps".into(),
                "needs isolation.leak_guard_header (the header that carries the stamps)".into(),
            ));
        }
        if let Some(h) = &self.request_id_header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Err(_) => v.push((
                    "isolation.request_id_header".into(),
                    format!("{h:?} is not a header name"),
                )),
                Ok(n)
                    if RESERVED.contains(&n.as_str())
                        || self
                            .strip_request_headers
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(h))
                        || self
                            .leak_guard_header
                            .as_ref()
                            .is_some_and(|l| l.eq_ignore_ascii_case(h))
                        || n.as_str().starts_with("x-anticamera-") =>
                {
                    v.push((
                        "isolation.request_id_header".into(),
                        format!("{h:?} is a header anticamera removes or owns"),
                    ))
                }
                Ok(_) => {}
            }
        } else if self.request_id_echo {
            v.push((
                "isolation.request_id_echo".into(),
                "needs isolation.request_id_header (the header the portal echoes)".into(),
            ));
        }
        v
    }
}

/// Request headers the request id may not use: framing, hop-by-hop, credentials, forwarding.
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Metric: responses refused because they were stamped for another user.
pub const LEAKS_BLOCKED: &str = "anticamera_isolation_leaks_blocked_total";
/// Metric: personal responses whose caching headers anticamera tightened.
pub const MARKED_PRIVATE: &str = "anticamera_isolation_marked_private_total";
/// Metric: portal responses refused by isolation, by `reason` ([`Verdict::reason`]: `leak`,
/// `request_id_missing`, `request_id_mismatch`). `leak` also counts in [`LEAKS_BLOCKED`].
pub const REFUSED: &str = "anticamera_isolation_refused_total";
/// Metric: portal connections retired (poisoned in the pool, closed once free) after a refused
/// or broken answer, by `reason` (a [`Verdict::reason`], `upstream_timeout`,
/// `upstream_protocol`).
pub const CONNECTIONS_RETIRED: &str = "anticamera_isolation_connections_retired_total";
/// Every `reason` of [`REFUSED`] (exported at 0 from start-up).
pub const REFUSED_REASONS: &[&str] = &["leak", "request_id_missing", "request_id_mismatch"];

/// With a shared store: binds a session to a user fleet-wide on a node's first sight of it
/// (`Some(false)`: another node bound it to someone else; `None`: the store did not answer).
pub type FleetBinder = Box<dyn Fn(u64, u64, u64) -> Option<bool> + Send + Sync>;

/// With a shared store: queues a binding (session, user, idle ms) to be written to the fleet
/// in the store's next batch (no round trip on the request path): the refresh of a binding
/// in use, so that it does not lapse in Redis while this node serves it from its own table,
/// and a binding made while the store did not answer.
pub type FleetRefresher = Box<dyn Fn(u64, u64, u64) + Send + Sync>;

/// A binding in a node's table: (user, last seen ms, last told to the fleet ms).
type Binding = (u64, u64, u64);

/// The isolation stage.
pub struct Isolation {
    /// With a shared store: the fleet's bindings, asked on this node's first sight of a
    /// session (a round trip on that response only).
    fleet_binder: std::sync::OnceLock<(FleetBinder, FleetRefresher)>,
    session_cookies: Vec<String>,
    leak_header: Option<HeaderName>,
    strip: Vec<HeaderName>,
    bindings: Vec<Mutex<HashMap<u64, Binding>>>,
    cap_per_shard: usize,
    idle_ms: u64,
    anonymous: Vec<HeaderValue>,
    request_id: Option<HeaderName>,
    echo: bool,
}

/// What the leak guard decided about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Deliver,
    /// Stamped for a user other than the one bound to this session (or the request had none).
    Leak,
    /// The portal was to echo the request id and this response carries none.
    RequestIdMissing,
    /// The response echoes another request's id: it answers another request.
    RequestIdMismatch,
}

impl Verdict {
    /// The metric label of a refusal (`deliver` for [`Verdict::Deliver`]).
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Deliver => "deliver",
            Verdict::Leak => "leak",
            Verdict::RequestIdMissing => "request_id_missing",
            Verdict::RequestIdMismatch => "request_id_mismatch",
        }
    }
}

const SHARDS: usize = 16;

impl Isolation {
    /// Builds the stage from a validated config.
    pub fn new(cfg: &IsolationConfig) -> Self {
        let mut strip: Vec<HeaderName> = cfg
            .strip_request_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let leak_header = cfg
            .leak_guard_header
            .as_ref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        if let Some(h) = &leak_header {
            strip.push(h.clone());
        }
        Isolation {
            fleet_binder: std::sync::OnceLock::new(),
            session_cookies: cfg.session_cookies.clone(),
            leak_header,
            strip,
            bindings: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cap_per_shard: cfg.leak_guard_sessions.div_ceil(SHARDS).max(1),
            idle_ms: cfg.leak_guard_idle.0.as_millis() as u64,
            anonymous: cfg
                .anonymous_stamps
                .iter()
                .filter_map(|a| HeaderValue::from_str(a).ok())
                .collect(),
            request_id: cfg
                .request_id_header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            echo: cfg.request_id_echo,
        }
    }

    /// Whether responses are checked for their owner (leak guard or request id echo): only
    /// then is the portal connection of each request captured, so that a refused answer can
    /// retire it (the capture costs one small allocation per request).
    pub fn checks_responses(&self) -> bool {
        self.leak_header.is_some() || (self.echo && self.request_id.is_some())
    }

    /// Stamps a request about to go to the portal with its request id, if configured, and
    /// returns the id the portal should echo. `keep_incoming` (asked only when ids are
    /// configured): the peer is a trusted forwarder, whose single, well-formed id (at most 128
    /// visible characters) is kept; otherwise any incoming value is replaced by 128 random bits
    /// in hex.
    pub fn stamp_request_id(
        &self,
        h: &mut HeaderMap,
        keep_incoming: impl FnOnce() -> bool,
    ) -> Option<HeaderValue> {
        let name = self.request_id.as_ref()?;
        if keep_incoming() {
            let mut incoming = h.get_all(name).iter();
            if let (Some(v), None) = (incoming.next(), incoming.next()) {
                let b = v.as_bytes();
                if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
                    return Some(v.clone());
                }
            }
        }
        let id = fresh_request_id();
        h.insert(name.clone(), id.clone());
        Some(id)
    }

    /// Response ownership: the echo of the request id `sent` (when the portal is said to
    /// echo it): missing, or any value other than `sent`, refuses the answer. Leaves the
    /// header in place (the client may quote it).
    pub fn check_echo(&self, sent: Option<&HeaderValue>, h: &HeaderMap) -> Verdict {
        let (true, Some(name), Some(sent)) = (self.echo, &self.request_id, sent) else {
            return Verdict::Deliver;
        };
        let mut echoed = h.get_all(name).iter().peekable();
        if echoed.peek().is_none() {
            return Verdict::RequestIdMissing;
        }
        // Two layers of the portal may each echo it: equal copies are one echo.
        if echoed.all(|v| v == sent) {
            Verdict::Deliver
        } else {
            Verdict::RequestIdMismatch
        }
    }

    /// A stable hash of the request's credentials (session cookies and `Authorization`), or
    /// `None` for an anonymous request.
    pub fn session_key(&self, h: &HeaderMap) -> Option<u64> {
        let mut found = false;
        let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for &b in bytes {
                acc ^= u64::from(b);
                acc = acc.wrapping_mul(0x0100_0000_01b3);
            }
            acc ^= 0xff;
            acc = acc.wrapping_mul(0x0100_0000_01b3);
        };
        for name in &self.session_cookies {
            if let Some(v) = cookie_value(h, name) {
                mix(name.as_bytes());
                mix(v.as_bytes());
                found = true;
            }
        }
        if let Some(a) = h.get(AUTHORIZATION) {
            mix(a.as_bytes());
            found = true;
        }
        found.then(|| crate::util::hash::hash_bytes(&acc.to_le_bytes()))
    }

    /// Removes identity headers a client may not set (and anticamera's own).
    pub fn strip_request(&self, h: &mut HeaderMap) {
        for n in &self.strip {
            h.remove(n);
        }
        let own: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("x-anticamera-"))
            .cloned()
            .collect();
        for n in own {
            h.remove(n);
        }
    }

    /// The leak guard: checks (and strips) the user stamp of a response for `session`.
    pub fn check_response(&self, session: Option<u64>, h: &mut HeaderMap, now_ms: u64) -> Verdict {
        let Some(name) = &self.leak_header else {
            return Verdict::Deliver;
        };
        let stamps: Vec<HeaderValue> = h.get_all(name).iter().cloned().collect();
        if stamps.is_empty() {
            return Verdict::Deliver;
        }
        h.remove(name);
        if stamps.len() > 1 && stamps.windows(2).any(|w| w[0] != w[1]) {
            return Verdict::Leak;
        }
        // A page that belongs to nobody: anyone may see it, and it says nothing about whose a
        // session is.
        if self.anonymous.contains(&stamps[0]) {
            return Verdict::Deliver;
        }
        let user = crate::util::hash::hash_bytes(stamps[0].as_bytes());
        // A response that starts a session (login) binds the new session at once, so that the
        // very first page of that session is already checked.
        if let Some(new_session) = self.session_from_set_cookie(h) {
            // Binds (or refreshes) the new session once; a request of another session may start
            // one only if it is not bound to someone else already.
            let fresh = session.is_none() || session == Some(new_session);
            if self.bind(new_session, user, now_ms) || fresh {
                return Verdict::Deliver;
            }
        }
        let Some(session) = session else {
            // A personal response to a request without credentials: someone else's page.
            return Verdict::Leak;
        };
        if self.bind(session, user, now_ms) {
            Verdict::Deliver
        } else {
            Verdict::Leak
        }
    }

    /// With a shared store: the fleet's bindings decide a session this node sees first, and
    /// the bindings this node serves are refreshed in the fleet (set once, when the room joins
    /// its fleet).
    pub fn set_fleet_binder(&self, b: FleetBinder, refresh: FleetRefresher) {
        let _ = self.fleet_binder.set((b, refresh));
    }

    /// Queues a refresh of the fleet's binding when it was last told more than a quarter of
    /// the idle time ago (so it never lapses in Redis while in use here).
    fn refresh_fleet(&self, session: u64, b: &mut Binding, now_ms: u64) {
        if let Some((_, refresh)) = self.fleet_binder.get() {
            if now_ms.saturating_sub(b.2) > self.idle_ms / 4 {
                refresh(session, b.0, self.idle_ms);
                b.2 = now_ms;
            }
        }
    }

    /// Binds `session` to `user` on first sight; false if it is bound to someone else.
    fn bind(&self, session: u64, user: u64, now_ms: u64) -> bool {
        let shard = &self.bindings[(session as usize) % SHARDS];
        {
            let Ok(mut map) = shard.lock() else {
                return false;
            };
            if let Some(b) = map.get_mut(&session) {
                if now_ms.saturating_sub(b.1) <= self.idle_ms {
                    if b.0 != user {
                        return false;
                    }
                    b.1 = now_ms;
                    self.refresh_fleet(session, b, now_ms);
                    return true;
                }
            }
        }
        // First sight on this node: with a shared store another node may have bound it (asked
        // without holding the shard's lock). The store silent: this node's binding alone,
        // queued for the fleet (written when the store answers).
        if let Some((bind, refresh)) = self.fleet_binder.get() {
            match bind(session, user, self.idle_ms) {
                Some(false) => return false,
                Some(true) => {}
                None => refresh(session, user, self.idle_ms),
            }
        }
        let Ok(mut map) = shard.lock() else {
            return false;
        };
        match map.get_mut(&session) {
            // Bound meanwhile by a concurrent response of the same session.
            Some(b) if now_ms.saturating_sub(b.1) <= self.idle_ms => {
                if b.0 != user {
                    return false;
                }
                b.1 = now_ms;
            }
            _ => {
                if map.len() >= self.cap_per_shard {
                    evict_oldest_quarter(&mut map);
                }
                map.insert(session, (user, now_ms, now_ms));
            }
        }
        true
    }

    /// The session a response starts, if it sets one of the session cookies.
    fn session_from_set_cookie(&self, h: &HeaderMap) -> Option<u64> {
        let mut pairs = Vec::new();
        for v in h.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let kv = v.split(';').next().unwrap_or("").trim();
            if let Some((k, val)) = kv.split_once('=') {
                if self.session_cookies.iter().any(|c| c == k.trim()) && !val.is_empty() {
                    pairs.push(format!("{}={}", k.trim(), val.trim()));
                }
            }
        }
        if pairs.is_empty() {
            return None;
        }
        let mut fake = HeaderMap::new();
        fake.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&pairs.join("; ")).ok()?,
        );
        self.session_key(&fake)
    }

    /// Marks a personal response uncacheable by shared caches (unless the portal said `public`).
    /// `personal_request`: the request carried credentials or a pass.
    pub fn mark_private(&self, personal_request: bool, h: &mut HeaderMap) {
        let sets_cookie = h.contains_key(SET_COOKIE);
        if !(personal_request || sets_cookie) {
            return;
        }
        let explicit_public = h
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("public"));
        if explicit_public && !sets_cookie {
            return;
        }
        metrics::counter!(MARKED_PRIVATE).increment(1);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    }

    /// Sessions currently bound (for tests and metrics).
    #[cfg(test)]
    pub fn bound_sessions(&self) -> usize {
        self.bindings
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// 128 random bits in hex (32 characters): unique per request, and not guessable from another.
fn fresh_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((bits >> (4 * (31 - i))) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn evict_oldest_quarter(map: &mut HashMap<u64, Binding>) {
    let mut seen: Vec<u64> = map.values().map(|b| b.1).collect();
    seen.sort_unstable();
    let cut = seen.get(seen.len() / 4).copied().unwrap_or(0);
    map.retain(|_, b| b.1 > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso() -> Isolation {
        Isolation::new(&IsolationConfig {
            session_cookies: vec!["portal_session".into()],
            leak_guard_header: Some("x-portal-user".into()),
            leak_guard_sessions: 64,
            ..Default::default()
        })
    }

    fn with_cookie(c: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, c.parse().unwrap());
        h
    }

    fn stamped(user: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-portal-user", user.parse().unwrap());
        h
    }

    #[test]
    fn sessions_are_told_apart_and_anonymous_has_none() {
        let i = iso();
        let a = i
            .session_key(&with_cookie("portal_session=A; other=1"))
            .unwrap();
        let b = i.session_key(&with_cookie("portal_session=B")).unwrap();
        assert_ne!(a, b);
        assert_eq!(i.session_key(&with_cookie("other=1")), None);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(i.session_key(&h).is_some());
    }

    #[test]
    fn a_session_bound_to_one_user_never_receives_another_users_page() {
        let i = iso();
        let s = Some(42);
        let mut h = stamped("alice");
        assert_eq!(i.check_response(s, &mut h, 1), Verdict::Deliver);
        assert!(h.get("x-portal-user").is_none(), "stamp must be stripped");
        assert_eq!(
            i.check_response(s, &mut stamped("alice"), 2),
            Verdict::Deliver
        );
        assert_eq!(i.check_response(s, &mut stamped("bob"), 3), Verdict::Leak);
        // Anonymous request receiving a stamped page: a leak.
        assert_eq!(
            i.check_response(None, &mut stamped("bob"), 4),
            Verdict::Leak
        );
        // Unstamped responses pass.
        assert_eq!(
            i.check_response(s, &mut HeaderMap::new(), 5),
            Verdict::Deliver
        );
        // Two different stamps on one response: a leak.
        let mut h = stamped("alice");
        h.append("x-portal-user", "bob".parse().unwrap());
        assert_eq!(i.check_response(s, &mut h, 6), Verdict::Leak);
    }

    #[test]
    fn a_fleet_binding_in_use_is_refreshed_and_one_made_while_the_store_is_silent_is_queued() {
        use std::sync::Arc;
        let i = iso_with(|c| {
            c.leak_guard_idle = crate::config::Dur(std::time::Duration::from_millis(400))
        });
        let queued = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Some(true)));
        let (q, a) = (queued.clone(), answer.clone());
        i.set_fleet_binder(
            Box::new(move |_, _, _| *a.lock().unwrap()),
            Box::new(move |s, u, idle| q.lock().unwrap().push((s, u, idle))),
        );
        // First sight, the store answers: nothing queued. Hits within a quarter of the idle
        // time neither.
        for t in [0, 50, 100] {
            assert_eq!(
                i.check_response(Some(1), &mut stamped("alice"), t),
                Verdict::Deliver
            );
        }
        assert!(queued.lock().unwrap().is_empty());
        // Later hits refresh the fleet's binding once per quarter of the idle time.
        for t in [150, 160, 270, 360] {
            assert_eq!(
                i.check_response(Some(1), &mut stamped("alice"), t),
                Verdict::Deliver
            );
        }
        let alice = crate::util::hash::hash_bytes(b"alice");
        assert_eq!(
            *queued.lock().unwrap(),
            vec![(1, alice, 400), (1, alice, 400)]
        );
        // The store silent at first sight: the binding is queued for when it answers.
        *answer.lock().unwrap() = None;
        queued.lock().unwrap().clear();
        assert_eq!(
            i.check_response(Some(2), &mut stamped("bob"), 500),
            Verdict::Deliver
        );
        let bob = crate::util::hash::hash_bytes(b"bob");
        assert_eq!(*queued.lock().unwrap(), vec![(2, bob, 400)]);
    }

    #[test]
    fn a_login_response_binds_the_new_session() {
        let i = iso();
        let mut login = stamped("alice");
        login.insert(SET_COOKIE, "portal_session=NEW; HttpOnly".parse().unwrap());
        assert_eq!(i.check_response(None, &mut login, 1), Verdict::Deliver);
        let s = i.session_key(&with_cookie("portal_session=NEW"));
        // The first page of that session stamped for someone else is caught.
        assert_eq!(i.check_response(s, &mut stamped("bob"), 2), Verdict::Leak);
        assert_eq!(
            i.check_response(s, &mut stamped("alice"), 3),
            Verdict::Deliver
        );
    }

    #[test]
    fn the_binding_table_is_bounded() {
        let i = iso();
        for s in 0..10_000u64 {
            i.check_response(Some(s), &mut stamped("u"), s);
        }
        assert!(i.bound_sessions() <= 64, "{}", i.bound_sessions());
    }

    #[test]
    fn personal_responses_are_marked_private_unless_explicitly_public() {
        let i = iso();
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, "max-age=600".parse().unwrap());
        i.mark_private(true, &mut h);
        assert_eq!(h[CACHE_CONTROL], "private, no-store");
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, "public, max-age=60".parse().unwrap());
        i.mark_private(true, &mut h);
        assert_eq!(h[CACHE_CONTROL], "public, max-age=60");
        // Setting a cookie is personal even if "public".
        h.insert(SET_COOKIE, "s=1".parse().unwrap());
        i.mark_private(false, &mut h);
        assert_eq!(h[CACHE_CONTROL], "private, no-store");
        // Anonymous, no cookie: untouched.
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, "max-age=60".parse().unwrap());
        i.mark_private(false, &mut h);
        assert_eq!(h[CACHE_CONTROL], "max-age=60");
    }

    #[test]
    fn identity_and_own_headers_are_stripped_from_requests() {
        let i = iso();
        let mut h = HeaderMap::new();
        for n in [
            "x-portal-user",
            "x-remote-user",
            "x-anticamera-release",
            "x-anticamera-anything",
            "x-kept",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        i.strip_request(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    fn iso_with(f: impl FnOnce(&mut IsolationConfig)) -> Isolation {
        let mut cfg = IsolationConfig {
            session_cookies: vec!["portal_session".into()],
            leak_guard_header: Some("x-portal-user".into()),
            leak_guard_sessions: 64,
            ..Default::default()
        };
        f(&mut cfg);
        assert_eq!(cfg.validate(), vec![]);
        Isolation::new(&cfg)
    }

    #[test]
    fn anonymous_stamps_are_delivered_to_anyone_and_never_bind() {
        let i = iso_with(|c| c.anonymous_stamps = vec!["anon".into(), "-".into()]);
        // An anonymous visitor gets the anon page; the stamp is stripped.
        let mut h = stamped("anon");
        assert_eq!(i.check_response(None, &mut h, 1), Verdict::Deliver);
        assert!(h.get("x-portal-user").is_none());
        assert_eq!(
            i.check_response(None, &mut stamped("-"), 1),
            Verdict::Deliver
        );
        // Still refused: a user's page to a request without credentials.
        assert_eq!(
            i.check_response(None, &mut stamped("bob"), 2),
            Verdict::Leak
        );
        // A session's first page stamped anon binds nothing: its user's page still passes...
        let s = Some(7);
        assert_eq!(
            i.check_response(s, &mut stamped("anon"), 3),
            Verdict::Deliver
        );
        assert_eq!(i.bound_sessions(), 0);
        assert_eq!(
            i.check_response(s, &mut stamped("alice"), 4),
            Verdict::Deliver
        );
        // ...and once bound, another user's is refused, an anon page is not.
        assert_eq!(i.check_response(s, &mut stamped("bob"), 5), Verdict::Leak);
        assert_eq!(
            i.check_response(s, &mut stamped("anon"), 6),
            Verdict::Deliver
        );
        // A login answer stamped anon binds nothing either.
        let mut login = stamped("anon");
        login.insert(SET_COOKIE, "portal_session=NEW".parse().unwrap());
        assert_eq!(i.check_response(None, &mut login, 7), Verdict::Deliver);
        assert_eq!(i.bound_sessions(), 1);
        // An anon stamp mixed with a user's: refused.
        let mut h = stamped("anon");
        h.append("x-portal-user", "bob".parse().unwrap());
        assert_eq!(i.check_response(None, &mut h, 8), Verdict::Leak);
        // Without the list, "anon" is a user like any other.
        assert_eq!(
            iso().check_response(None, &mut stamped("anon"), 1),
            Verdict::Leak
        );
    }

    #[test]
    fn request_ids_are_fresh_unless_a_trusted_forwarder_set_one() {
        let i = iso_with(|c| c.request_id_header = Some("x-request-id".into()));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut h = HeaderMap::new();
            h.insert("x-request-id", "client-chosen".parse().unwrap());
            let id = i.stamp_request_id(&mut h, || false).unwrap();
            assert_eq!(h["x-request-id"], id, "the client's id must be replaced");
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert!(seen.insert(id), "a request id repeated");
        }
        // Kept from a trusted forwarder...
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "lb-123".parse().unwrap());
        assert_eq!(i.stamp_request_id(&mut h, || true).unwrap(), "lb-123");
        // ...unless it is not one clean value.
        h.append("x-request-id", "lb-456".parse().unwrap());
        let id = i.stamp_request_id(&mut h, || true).unwrap();
        assert_ne!(id, "lb-123");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "a b".parse().unwrap());
        assert_ne!(i.stamp_request_id(&mut h, || true).unwrap(), "a b");
        // Not configured: nothing added.
        let mut h = HeaderMap::new();
        assert_eq!(iso().stamp_request_id(&mut h, || false), None);
        assert!(h.is_empty());
    }

    #[test]
    fn an_answer_must_echo_its_own_request_id() {
        let i = iso_with(|c| {
            c.request_id_header = Some("x-request-id".into());
            c.request_id_echo = true;
        });
        assert!(i.checks_responses());
        let sent = HeaderValue::from_static("abc");
        let echo = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for x in v {
                h.append("x-request-id", x.parse().unwrap());
            }
            i.check_echo(Some(&sent), &h)
        };
        assert_eq!(echo(&["abc"]), Verdict::Deliver);
        assert_eq!(echo(&[]), Verdict::RequestIdMissing);
        assert_eq!(echo(&["abd"]), Verdict::RequestIdMismatch);
        assert_eq!(echo(&["abc", "abc"]), Verdict::Deliver);
        assert_eq!(echo(&["abc", "zzz"]), Verdict::RequestIdMismatch);
        // Without echo, nothing is checked (and nothing captured without a leak guard).
        let j = Isolation::new(&IsolationConfig {
            request_id_header: Some("x-request-id".into()),
            ..Default::default()
        });
        assert!(!j.checks_responses());
        assert_eq!(
            j.check_echo(Some(&sent), &HeaderMap::new()),
            Verdict::Deliver
        );
        assert!(!Isolation::new(&IsolationConfig::default()).checks_responses());
        assert!(iso().checks_responses());
    }

    #[test]
    fn bad_isolation_keys_are_named() {
        let keys = |f: fn(&mut IsolationConfig)| {
            let mut c = IsolationConfig::default();
            f(&mut c);
            c.validate().into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        assert_eq!(
            keys(|c| c.request_id_echo = true),
            ["isolation.request_id_echo"]
        );
        assert_eq!(
            keys(|c| c.request_id_header = Some("bad header".into())),
            ["isolation.request_id_header"]
        );
        assert_eq!(
            keys(|c| c.request_id_header = Some("Cookie".into())),
            ["isolation.request_id_header"]
        );
        assert_eq!(
            keys(|c| c.request_id_header = Some("x-remote-user".into())),
            ["isolation.request_id_header"]
        );
        assert_eq!(
            keys(|c| c.anonymous_stamps = vec!["anon".into()]),
            ["isolation.anonymous_stamps"]
        );
        assert_eq!(
            keys(|c| {
                c.leak_guard_header = Some("x-portal-user".into());
                c.anonymous_stamps = vec!["".into(), "a\nb".into()];
            }),
            [
                "isolation.anonymous_stamps[0]",
                "isolation.anonymous_stamps[1]"
            ]
        );
        assert!(keys(|c| {
            c.leak_guard_header = Some("x-portal-user".into());
            c.anonymous_stamps = vec!["anon".into()];
            c.request_id_header = Some("X-Request-Id".into());
            c.request_id_echo = true;
        })
        .is_empty());
    }
}
