//! Status polls and long polls: the JSON status of a ticket ([`Room::status`]), the long-poll
//! wake-ups sharded by queue position ([`Wakers`]), and the polling policy a waiting page is
//! given ([`poll_advice`], [`PollAdvice`]).

use std::time::Duration;

use http::request::Parts;

use super::{Answer, Room};
use crate::schedule::{PrequeueOrder, WindowState};
use crate::util::cookie::cookie_value;
use crate::waitroom::{Kind, Token};

/// Long-poll wake-ups sharded by queue position: an admission wakes only the status requests
/// of the positions it admitted (and their shard neighbours), not every waiting user. With a
/// single `Notify`, each of hundreds of admissions per second would wake every long poll.
pub(super) struct Wakers(Box<[tokio::sync::Notify]>);

/// Number of shards (a ring: position p waits on shard (p / WAKE_SPAN) % WAKE_SHARDS).
const WAKE_SHARDS: usize = 1024;
/// Consecutive positions per shard.
const WAKE_SPAN: u64 = 8;
/// Shards behind an admission woken too (the first 16 in line see their place move at once).
const WAKE_FOLLOWERS: u64 = 2;

impl Wakers {
    pub(super) fn new() -> Self {
        Wakers(
            (0..WAKE_SHARDS)
                .map(|_| tokio::sync::Notify::new())
                .collect(),
        )
    }

    pub(super) fn shard(&self, position: u64) -> &tokio::sync::Notify {
        &self.0[((position / WAKE_SPAN) % WAKE_SHARDS as u64) as usize]
    }

    /// Wakes the long polls of positions in `[from, to)` (the ones just admitted) and of the
    /// `WAKE_FOLLOWERS` shards behind them (their place moved: the page shows it).
    pub(super) fn wake(&self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let (first, last) = (from / WAKE_SPAN, (to - 1) / WAKE_SPAN + WAKE_FOLLOWERS);
        let shards = (last - first + 1).min(WAKE_SHARDS as u64);
        for i in 0..shards {
            self.0[((first + i) % WAKE_SHARDS as u64) as usize].notify_waiters();
        }
    }

    /// Wakes the long polls of these positions only (late arrivals, when room is free).
    pub(super) fn wake_each(&self, positions: &[u64]) {
        for &p in positions {
            self.shard(p).notify_waiters();
        }
    }

    /// Wakes every long poll (the window opened or closed: positions were redrawn or answers
    /// changed for everyone).
    pub(super) fn wake_all(&self) {
        self.0.iter().for_each(tokio::sync::Notify::notify_waiters);
    }
}

/// How a waiting page polls: after `refresh_secs` (also the `Retry-After` and the no-script
/// page refresh), holding the poll up to `long_poll_secs` (0 = an ordinary poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollAdvice {
    /// Seconds until the next poll.
    pub refresh_secs: u32,
    /// How long the next poll may be held until the ticket is admitted (`wait=` of the status
    /// endpoint).
    pub long_poll_secs: u32,
}

/// Longest long poll the status endpoint holds (seconds).
pub const LONG_POLL_MAX_SECS: u32 = 20;
/// This many people at the front of the line long-poll whatever the estimate says: an estimate
/// can be wrong (a window just opened), and someone polling every few seconds is not there
/// when their turn comes. A held poll costs a parked connection, and is only woken early by
/// admissions near its own position.
const LONG_POLL_AHEAD: u64 = 1000;
/// While the line's pace is not measured yet (a window just opened, the first seconds of a
/// surge) this many long-poll: nobody knows how soon their turn comes, and at an opening the
/// line can move a thousand places in two seconds. Told to come back in 6 s instead, those
/// past the first thousand were let in between two polls, and the places held for them sat
/// empty (BENCHMARKS §9: admissions nearly stopped for 4 s after the opening's first burst,
/// with the machine idle).
const LONG_POLL_AHEAD_BLIND: u64 = 5000;
/// Longest advised pause between polls (seconds).
const POLL_MAX_SECS: f64 = 60.0;

/// The polling policy, from where the user stands (`jitter` in [0.8, 1.2] spreads people who
/// arrived together). Near the front (fewer than 1 000 ahead, or admission expected within a
/// long poll) the page long-polls, so a place is taken up the moment it is offered, even when
/// the estimate is wrong. Further back it polls at a quarter of the estimated wait (between the
/// configured interval and 60 s), so a hundred thousand waiting users neither each hold a
/// connection nor poll every few seconds, and the estimate they see is refreshed as it shrinks.
/// Without an estimate (the queue's pace not measured yet, or a paused gate) the first 5 000
/// long-poll, and those behind poll at a pause that grows with the line (1 s more per 1000
/// ahead).
/// Before opening, the page comes back at half the time left, and holds its poll in the last
/// 20 s, so it is there at opening.
pub fn poll_advice(
    base: Duration,
    state: crate::pages::QueueState,
    ahead: u64,
    wait: Option<Duration>,
    until_open: Option<Duration>,
    jitter: f64,
) -> PollAdvice {
    use crate::pages::QueueState;
    let base = base.as_secs_f64().max(1.0);
    let poll = |secs: f64, long: u32| PollAdvice {
        refresh_secs: (secs.clamp(1.0, POLL_MAX_SECS) * jitter).round().max(1.0) as u32,
        long_poll_secs: long,
    };
    let horizon = f64::from(LONG_POLL_MAX_SECS);
    match state {
        QueueState::Admitted => poll(1.0, 0),
        // In the last seconds before opening, hold the poll: the opening answers every held
        // poll at once, so the first people let in are there at once (and the line's pace is
        // measured from people who came, not from people between two polls).
        QueueState::PreQueue if until_open.is_some_and(|u| u.as_secs_f64() <= horizon) => {
            poll(1.0, LONG_POLL_MAX_SECS)
        }
        QueueState::PreQueue => poll(
            until_open.map_or(base, |u| (u.as_secs_f64() / 2.0).min(POLL_MAX_SECS)),
            0,
        ),
        QueueState::Waiting => match wait.map(|w| w.as_secs_f64()) {
            _ if ahead < LONG_POLL_AHEAD => poll(base / 3.0, LONG_POLL_MAX_SECS),
            Some(w) if w <= horizon => poll(base / 3.0, LONG_POLL_MAX_SECS),
            Some(w) => poll((w / 4.0).max(base), 0),
            None if ahead < LONG_POLL_AHEAD_BLIND => poll(base / 3.0, LONG_POLL_MAX_SECS),
            None => poll(base + ahead as f64 / 1000.0, 0),
        },
    }
}

impl Room {
    /// The status of the ticket a request carries for a gate (the JSON poll), without taking a
    /// ticket: waiting (with `admitted` once it is their turn), pre-queued or closed. `None` if
    /// the request has no valid ticket or pass for this gate.
    pub fn status(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> Option<Answer> {
        self.status_inner(gate_idx, parts, client, peer, false)
            .map(|(a, _)| a)
    }

    /// [`Room::status`] for a long poll: while the ticket is still waiting, also a future that
    /// resolves when its position may have been admitted (or the window opened or closed). It
    /// is registered before the status is read, so no admission falls between the two.
    pub fn status_for_long_poll(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> Option<(Answer, Option<tokio::sync::futures::Notified<'_>>)> {
        self.status_inner(gate_idx, parts, client, peer, true)
    }

    fn status_inner(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
        signal: bool,
    ) -> Option<(Answer, Option<tokio::sync::futures::Notified<'_>>)> {
        let now = self.clock.now_ms();
        let g = &self.gates[gate_idx];
        let rp = self.policy();
        let cohort = rp.cohorts.classify(parts, client, peer);
        let lane = g.lane_for(cohort);
        let t = Token::decode(cookie_value(&parts.headers, &g.cookie)?, &rp.keys, now).ok()?;
        if t.gate != lane.id {
            return None;
        }
        let prequeue_random = g
            .policy()
            .schedule
            .as_ref()
            .map(|s| s.prequeue_order() == PrequeueOrder::Random)
            .unwrap_or(false);
        if t.kind == Kind::Pass {
            let a = Answer::Queue {
                gate: gate_idx,
                ahead: 0,
                wait: Some(Duration::ZERO),
                opens_at: None,
                prequeue_random,
                admitted: true,
                number: Some(t.ticket),
                missed_turn: false,
            };
            return Some((a, None));
        }
        let pos = lane.position(t.ticket);
        let pending = signal.then(|| lane.wakers.shard(pos).notified());
        let state = self.window_state(g, lane, cohort, self.clock.now());
        let answer = match state {
            WindowState::Closed { opens_at } => Answer::Closed {
                gate: gate_idx,
                cohort: rp.cohorts.name(cohort).to_string(),
                opens_at,
            },
            WindowState::PreQueue { opens_at } => Answer::Queue {
                gate: gate_idx,
                ahead: lane.gate.status(t.ticket).ahead,
                wait: None,
                opens_at: Some(opens_at),
                prequeue_random,
                admitted: false,
                // Drawn at opening when the order is random.
                number: (!prequeue_random).then_some(t.ticket),
                missed_turn: false,
            },
            WindowState::Open { .. } => {
                let st = lane.gate.status(pos);
                // Admitted means a claim at the gate would succeed now: someone whose held
                // place lapsed waits in the late line instead (else the page would loop
                // between this answer and the gate's queue page).
                let late = st
                    .admitted
                    .then(|| lane.gate.turn(pos, now).late_ahead())
                    .flatten();
                let admitted = st.admitted && late.is_none();
                let ahead = late.unwrap_or(if admitted { 0 } else { st.ahead });
                Answer::Queue {
                    gate: gate_idx,
                    ahead,
                    wait: if admitted {
                        Some(Duration::ZERO)
                    } else {
                        lane.gate.estimate_wait(ahead)
                    },
                    opens_at: None,
                    prequeue_random,
                    admitted,
                    number: Some(pos),
                    missed_turn: late.is_some(),
                }
            }
        };
        let still_waiting = matches!(
            answer,
            Answer::Queue {
                admitted: false,
                ..
            }
        );
        Some((answer, pending.filter(|_| still_waiting)))
    }

    /// When a waiting page should poll again, and whether that poll should be held (see
    /// [`poll_advice`]).
    pub fn poll_advice(
        &self,
        state: crate::pages::QueueState,
        ahead: u64,
        wait: Option<Duration>,
        until_open: Option<Duration>,
    ) -> PollAdvice {
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        poll_advice(
            self.policy().poll_interval,
            state,
            ahead,
            wait,
            until_open,
            jitter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_advice_long_polls_near_the_front_and_backs_off_far_back() {
        use crate::pages::QueueState::*;
        let base = Duration::from_secs(5);
        let adv = |st, ahead, wait: Option<u64>, open: Option<u64>| {
            poll_advice(
                base,
                st,
                ahead,
                wait.map(Duration::from_secs),
                open.map(Duration::from_secs),
                1.0,
            )
        };
        let near = adv(Waiting, 3, Some(600), None);
        assert_eq!(
            (near.refresh_secs, near.long_poll_secs),
            (2, LONG_POLL_MAX_SECS)
        );
        assert_eq!(
            adv(Waiting, 500, Some(15), None).long_poll_secs,
            LONG_POLL_MAX_SECS
        );
        let far = adv(Waiting, 5_000, Some(100), None);
        assert_eq!((far.refresh_secs, far.long_poll_secs), (25, 0));
        assert_eq!(adv(Waiting, 50_000, Some(3_000), None).refresh_secs, 60);
        assert_eq!(
            adv(Waiting, 1_500, Some(21), None).refresh_secs,
            5,
            "never below the interval"
        );
        assert_eq!(
            adv(Waiting, 999, Some(600), None).long_poll_secs,
            LONG_POLL_MAX_SECS,
            "the first thousand long-poll whatever the estimate says"
        );
        assert_eq!(adv(Waiting, 10_000, None, None).refresh_secs, 15);
        assert_eq!(
            adv(Waiting, 999, None, None).long_poll_secs,
            LONG_POLL_MAX_SECS,
            "pace unknown, near enough to be admitted any moment"
        );
        assert_eq!(adv(Waiting, 1_000, Some(600), None).long_poll_secs, 0);
        assert_eq!(
            adv(Waiting, 4_999, None, None).long_poll_secs,
            LONG_POLL_MAX_SECS,
            "pace unknown (a window just opened): the line may move thousands in seconds"
        );
        assert_eq!(adv(Waiting, 5_000, None, None).long_poll_secs, 0);
        assert_eq!(adv(PreQueue, 10, None, Some(30)).refresh_secs, 15);
        assert_eq!(adv(PreQueue, 10, None, Some(30)).long_poll_secs, 0);
        let last = adv(PreQueue, 10, None, Some(20));
        assert_eq!(
            (last.refresh_secs, last.long_poll_secs),
            (1, LONG_POLL_MAX_SECS),
            "held through the opening"
        );
        assert_eq!(adv(PreQueue, 10, None, Some(3_600)).refresh_secs, 60);
        assert_eq!(adv(Admitted, 0, None, None).refresh_secs, 1);
        let j = poll_advice(
            base,
            Waiting,
            5_000,
            Some(Duration::from_secs(100)),
            None,
            1.2,
        );
        assert_eq!(j.refresh_secs, 30, "jitter applies to the pause");
    }

    #[test]
    fn wakers_cover_the_admitted_range_only() {
        let w = Wakers::new();
        let futs: Vec<_> = (0..64u64).map(|p| (p, w.shard(p).notified())).collect();
        let mut futs: Vec<_> = futs.into_iter().map(|(p, f)| (p, Box::pin(f))).collect();
        w.wake(16, 20);
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for (p, f) in &mut futs {
            let ready = f.as_mut().poll(&mut cx).is_ready();
            // Shards of 8 positions: 16..24 share the woken shard.
            // ... and the two shards behind (24..40) see their place move.
            assert_eq!(ready, (16..40).contains(p), "position {p}");
        }
        // A range wider than the ring wakes every shard once.
        let f = w.shard(123_456).notified();
        w.wake(0, u64::MAX / 2);
        let mut f = Box::pin(f);
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
}
