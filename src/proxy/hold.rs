//! No idle place at the front of the line: a request from someone at the front (an HTTP client
//! that carries its ticket and asks for the gated page again, HTML or JSON, with or without the
//! page's script) is held open and forwarded the moment the place is theirs, instead of being
//! answered "wait" and leaving the place idle until its next try.
//!
//! Bounds: only people with fewer than [`HOLD_AHEAD`] ahead of them, or expected within
//! `waiting_room.hold_front`, are held; at most `waiting_room.hold_front` (off by default) per
//! request; at most [`MAX_HELD`] requests per process at once (a held request costs its
//! connection's memory and one timer, no thread). A new arrival at the front is held too (a
//! plain client would otherwise sleep its first `Retry-After` while its place, offered a tick
//! later, sits idle): the ticket it was just given rides in the held request
//! ([`carry_cookie`]) and on the answer if the hold ends first. Nobody in a pre-queue or a
//! closed window is held. When the hold ends first, the answer is the queue page with the
//! position at that moment.

use std::sync::atomic::Ordering;

use http::request::Parts;

use super::{Proxy, RequestCtx};
use crate::cohort::CohortId;
use crate::room::{Answer, Decision, Room};

/// People with fewer than this many ahead of them are held whatever the estimate says.
pub const HOLD_AHEAD: u64 = 64;
/// Requests held at once, per process.
pub const MAX_HELD: usize = 4096;
/// How soon a held request looks again when its turn came but the claim found no room yet.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Counts a held request in `Shared::held` and the gauge while it lives.
struct Held<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Held<'a> {
    fn try_new(count: &'a std::sync::atomic::AtomicUsize) -> Option<Held<'a>> {
        let n = count.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_HELD {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!(super::HELD).set((n + 1) as f64);
        Some(Held(count))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(super::HELD).set(n.saturating_sub(1) as f64);
    }
}

/// Puts the `name=value` of a `Set-Cookie` the room just gave into the request's cookies, so
/// that a held new arrival is looked up by the ticket it was handed. The room's own cookies are
/// stripped from the request before it is forwarded.
pub(super) fn carry_cookie(headers: &mut http::HeaderMap, set_cookie: &http::HeaderValue) {
    let pair = set_cookie
        .to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .map(str::trim)
        .and_then(|p| http::HeaderValue::from_str(p).ok());
    if let Some(v) = pair {
        headers.append(http::header::COOKIE, v);
    }
}

impl Proxy {
    /// How long to hold this request: the room's answer is "wait" for someone at the front who
    /// already holds a ticket, and holding is on.
    pub(super) fn may_hold(&self, d: &Decision) -> Option<std::time::Duration> {
        let hold = self.shared.config.load().waiting_room.hold_front.0;
        if hold.is_zero() {
            return None;
        }
        let front = match &d.answer {
            Some(Answer::Queue {
                ahead,
                wait,
                opens_at: None,
                admitted: false,
                ..
            }) => *ahead < HOLD_AHEAD || wait.is_some_and(|w| w <= hold),
            _ => false,
        };
        front.then_some(hold)
    }

    /// Holds the request until the place is its own (the decision that lets it in) or the hold
    /// ends (the decision at that moment); `None` when it cannot be held (the bound is reached,
    /// the ticket is gone).
    pub(super) async fn hold(
        &self,
        room: &Room,
        gate: usize,
        cohort: CohortId,
        head: &Parts,
        ctx: &RequestCtx,
        hold: std::time::Duration,
    ) -> Option<Decision> {
        let _held = Held::try_new(&self.shared.held)?;
        let deadline = tokio::time::Instant::now() + hold;
        let peer = ctx.conn.peer.ip();
        loop {
            let (answer, pending) = room.status_for_long_poll(gate, head, ctx.client, peer)?;
            if matches!(answer, Answer::Closed { .. }) {
                return Some(room.decide(gate, cohort, head));
            }
            let turn = matches!(answer, Answer::Queue { admitted: true, .. });
            if turn {
                let d = room.decide(gate, cohort, head);
                if d.answer.is_none() {
                    return Some(d);
                }
                // Our turn by the status, but the claim found no room yet: look again shortly.
            }
            let woken = match pending {
                Some(p) if !turn => tokio::time::timeout_at(deadline, p).await.is_ok(),
                _ => tokio::time::timeout_at(deadline, tokio::time::sleep(RECHECK))
                    .await
                    .is_ok(),
            };
            if !woken {
                return Some(room.decide(gate, cohort, head));
            }
        }
    }
}
