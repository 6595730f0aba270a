//! anticamera's own cookies: the ticket and pass cookies a decision sets, the binding that
//! ties a pass to the browser that claimed it, and the stripping of anticamera's cookies
//! before a request is forwarded to the portal.

use http::header::{HeaderMap, HeaderValue, COOKIE, USER_AGENT};

use super::lanes::{GateRuntime, Lane};
use super::Room;
use crate::waitroom::{Token, VisitorId};

impl Room {
    pub(super) fn ticket_cookie(
        &self,
        lane: &Lane,
        ticket: u64,
        visitor: VisitorId,
        now: u64,
    ) -> HeaderValue {
        let g = self.gate_of_lane(lane.id);
        let p = self.policy();
        let t = Token::ticket(lane.id, ticket, visitor, now, p.ticket_ttl_ms);
        self.cookie(&g.cookie, &t.encode(&p.keys), p.ticket_ttl_ms / 1000)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn pass_cookie(
        &self,
        g: &GateRuntime,
        lane: &Lane,
        ticket: u64,
        visitor: VisitorId,
        slot: u32,
        binding: u32,
        now: u64,
    ) -> HeaderValue {
        let p = self.policy();
        let ttl = g.policy().pass_ttl_ms(p.pass_refresh_ms);
        let t = Token::pass(lane.id, ticket, visitor, slot, binding, now, ttl);
        self.cookie(&g.cookie, &t.encode(&p.keys), ttl / 1000)
    }

    pub(super) fn cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let s = format!(
            "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            if self.cookie_secure { "; Secure" } else { "" }
        );
        // Names and values are ASCII we generated: this cannot fail; fall back to an empty cookie.
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("anticamera_=; Max-Age=0"))
    }

    fn gate_of_lane(&self, id: u16) -> &GateRuntime {
        self.gates
            .iter()
            .find(|g| g.lanes.iter().any(|l| l.id == id))
            .unwrap_or(&self.gates[0])
    }
}

/// What binds a pass to the browser that claimed it: a hash of its `User-Agent`.
/// A copied cookie in another browser (another UA) is refused; see the README for what this
/// does and does not prevent.
pub fn binding_of(headers: &HeaderMap) -> u32 {
    let ua = headers.get(USER_AGENT).map(|v| v.as_bytes()).unwrap_or(b"");
    // FNV-1a, 32 bit: not a secret (it is signed inside the pass), just a stable fingerprint.
    let mut h: u32 = 0x811c_9dc5;
    for &b in ua {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Removes anticamera's own cookies from the `Cookie` header(s) before forwarding.
pub fn strip_own_cookies(headers: &mut HeaderMap, is_own: impl Fn(&str) -> bool) {
    let mut any_own = false;
    for v in headers.get_all(COOKIE) {
        if let Ok(s) = v.to_str() {
            if s.split(';')
                .any(|p| is_own(p.trim().split('=').next().unwrap_or("")))
            {
                any_own = true;
            }
        }
    }
    if !any_own {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_own(p.split('=').next().unwrap_or("")))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cookies_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            "portal_session=abc; anticamera_claims=TOKEN"
                .parse()
                .unwrap(),
        );
        h.append(COOKIE, "anticamera_lang=it; other=1".parse().unwrap());
        strip_own_cookies(&mut h, |n| n.starts_with("anticamera_"));
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "portal_session=abc; other=1");
        let mut h = HeaderMap::new();
        h.append(COOKIE, "anticamera_claims=TOKEN".parse().unwrap());
        strip_own_cookies(&mut h, |n| n.starts_with("anticamera_"));
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn binding_depends_on_the_user_agent_only() {
        let mut a = HeaderMap::new();
        a.insert(USER_AGENT, "Firefox".parse().unwrap());
        let mut b = a.clone();
        b.insert("x-other", "1".parse().unwrap());
        assert_eq!(binding_of(&a), binding_of(&b));
        b.insert(USER_AGENT, "Chrome".parse().unwrap());
        assert_ne!(binding_of(&a), binding_of(&b));
    }
}
