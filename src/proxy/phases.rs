//! The request-side phases, before anything is sent to the portal.

use http::header::{self, HeaderValue};
use http::request::Parts;

use super::context::GateRoute;
use super::hygiene::{check_framing, content_length, local_path};
use super::{Proxy, RequestCtx};
use crate::pages;
use crate::ratelimit::RequestKeys;
use crate::refusal::{Refusal, RoomPage};
use crate::room::{strip_own_cookies, Answer};
use crate::route;

impl Proxy {
    /// Phase 1: refuse framing two HTTP parsers could read differently; learn who the client
    /// is (trusted forwarders only), which session its credentials name, and the normalized
    /// path when routing or the micro-cache needs it.
    pub(super) fn request_filter(&self, head: &Parts, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        check_framing(head).map_err(Refusal::Framing)?;
        let sh = &*self.shared;
        ctx.client = sh.forwarders.client_addr(ctx.conn.peer.ip(), &head.headers);
        ctx.session = sh.isolation.session_key(&head.headers);
        if sh.room.is_some() || sh.microcache.is_some() {
            let path = route::normalize(head.uri.path())
                .map_err(|_| Refusal::Framing("The request path is not valid."))?;
            ctx.path = Some(path);
        }
        Ok(())
    }

    /// Phase 3: which gate the request belongs to, and the requester's cohort.
    pub(super) fn route(&self, head: &Parts, ctx: &mut RequestCtx) {
        let (Some(room), Some(path)) = (&self.shared.room, &ctx.path) else {
            return;
        };
        let cohort = room.classify(head, ctx.client, ctx.conn.peer.ip());
        ctx.cohort = cohort.index() as u16;
        // HTTP/2's `:authority` and an absolute-form target (checked against `Host` in phase
        // 1) are in the URI; otherwise the `Host` header.
        let host = head
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| head.headers.get(header::HOST).and_then(|v| v.to_str().ok()));
        ctx.gate = room
            .route(&head.method, host, path, head.uri.path())
            .map(|gate| GateRoute { gate, cohort });
    }

    /// Phase 4: token buckets per session, address, cohort and gate.
    pub(super) fn rate_limit(&self, ctx: &RequestCtx) -> Result<(), Refusal> {
        let limiter = self.shared.limiter.load();
        let Some(limiter) = limiter.as_deref() else {
            return Ok(());
        };
        let keys = RequestKeys {
            session: ctx.session,
            addr: ctx.client,
            cohort: ctx.cohort,
            gate: ctx.gate.map(|g| g.gate as u16),
        };
        limiter.check(&keys).map(drop).map_err(|limited| {
            metrics::counter!(super::LIMITED, "kind" => limited.kind().as_str()).increment(1);
            Refusal::Limited(limited)
        })
    }

    /// Phase 5: the gate's waiting room and opening hours. A valid pass goes on (its slot is
    /// remembered so a release header can free it); otherwise the queue or closed page.
    /// anticamera's own cookies never reach the portal.
    pub(super) async fn waiting_room(
        &self,
        head: &mut Parts,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let Some(room) = &self.shared.room else {
            return Ok(());
        };
        if let Some(GateRoute { gate, cohort }) = ctx.gate {
            let mut d = room.decide(gate, cohort, head);
            if let Some(hold) = self.may_hold(&d) {
                // A new arrival at the front is held too: the ticket it was just given goes
                // into the request for the hold (own cookies are stripped below, before
                // forwarding), and onto the answer if it still has to wait.
                let ticket = d.set_cookie.clone();
                if let Some(c) = &ticket {
                    super::hold::carry_cookie(&mut head.headers, c);
                }
                if let Some(mut later) = self.hold(room, gate, cohort, head, ctx, hold).await {
                    if later.answer.is_some() && later.set_cookie.is_none() {
                        later.set_cookie = ticket;
                    }
                    d = later;
                }
            }
            if let Some(answer) = d.answer {
                return Err(Refusal::room(room_page(answer, d.set_cookie, head)));
            }
            ctx.seat = d.seat;
            ctx.set_cookie = d.set_cookie;
            if ctx.seat.is_some() {
                if let Some(path) = &ctx.path {
                    ctx.release_rule = room.gates[gate].policy().release_rule(&head.method, path);
                }
            }
        }
        strip_own_cookies(&mut head.headers, |n| room.is_own_cookie(n));
        Ok(())
    }

    /// Phase 6: identity headers the portal must not trust are removed, a declared body over
    /// the limit is refused before it is read, and HTTP/2's `:authority` becomes `Host`.
    pub(super) fn upstream_request_filter(&self, head: &mut Parts) -> Result<(), Refusal> {
        self.shared.isolation.strip_request(&mut head.headers);
        if content_length(&head.headers).is_some_and(|len| len > self.max_body) {
            return Err(Refusal::TooLarge);
        }
        if !head.headers.contains_key(header::HOST) {
            if let Some(host) = head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                head.headers.insert(header::HOST, host);
            }
        }
        Ok(())
    }
}

/// A waiting-room answer with what its page needs from the request: the language and the
/// local path to send the user back to.
pub(super) fn room_page(answer: Answer, set_cookie: Option<HeaderValue>, head: &Parts) -> RoomPage {
    RoomPage {
        answer,
        set_cookie,
        lang: pages::negotiate_lang(&head.headers),
        page_url: head
            .uri
            .path_and_query()
            .and_then(|p| local_path(p.as_str()))
            .unwrap_or("/")
            .to_owned(),
    }
}
