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
/// While the line's pace is not measured yet (its first seconds), people with fewer than this
/// many ahead are held: told to come back after `Retry-After` instead, a plain client slept
/// through its turn when the line moved faster than the advice assumed, and its place sat idle
/// (`plain-clients.toml`: 11–16 places held for sleepers 3 s into the run, the portal at 13
/// of 20). [`MAX_HELD`] still bounds them.
pub const HOLD_AHEAD_BLIND: u64 = 1000;
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

/// Whether a "wait" answer is for someone at the front of the line, whose request is held for
/// up to `hold` rather than answered: fewer than [`HOLD_AHEAD`] ahead or expected within
/// `hold`; while the pace is not measured, fewer than [`HOLD_AHEAD_BLIND`] ahead. Never in a
/// pre-queue (`opens_at`) nor once admitted (the request goes through).
fn at_the_front(answer: &Answer, hold: std::time::Duration) -> bool {
    match answer {
        Answer::Queue {
            ahead,
            wait,
            opens_at: None,
            admitted: false,
            ..
        } => match wait {
            Some(w) => *ahead < HOLD_AHEAD || *w <= hold,
            None => *ahead < HOLD_AHEAD_BLIND,
        },
        _ => false,
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
        d.answer
            .as_ref()
            .is_some_and(|a| at_the_front(a, hold))
            .then_some(hold)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(ahead: u64, wait: Option<u64>, opens_at: bool) -> Answer {
        Answer::Queue {
            gate: 0,
            ahead,
            wait: wait.map(Duration::from_secs),
            opens_at: opens_at.then(chrono::Utc::now),
            prequeue_random: false,
            number: Some(ahead + 1),
            admitted: false,
            missed_turn: false,
        }
    }

    #[test]
    fn who_is_held_at_the_front() {
        let hold = Duration::from_secs(10);
        // The pace measured: the first 64, or anyone expected within the hold.
        assert!(at_the_front(&wait(63, Some(60), false), hold));
        assert!(!at_the_front(&wait(64, Some(11), false), hold));
        assert!(at_the_front(&wait(900, Some(10), false), hold));
        // Not measured yet: the first thousand, whatever their advice would have been.
        assert!(at_the_front(&wait(999, None, false), hold));
        assert!(!at_the_front(&wait(HOLD_AHEAD_BLIND, None, false), hold));
        // Never in a pre-queue.
        assert!(!at_the_front(&wait(0, Some(1), true), hold));
    }
}
