//! The portal's capacity shared by a fleet: each node holds a part of `upstream_guard`'s
//! `max_in_flight` and lets its guard use no more ([`Guard::set_share`]).
//!
//! The parts live in Redis (the `PORTAL` script, `lua.rs`), which grants them so that they never
//! add up to more than the capacity; this module is the node's side, without I/O: what it
//! reports (the part it keeps, what it would use) and what it lets its guard use after an
//! answer or without one.
//!
//! - **What a node would use** is the time average, over the last step, of its requests at the
//!   portal and of those waiting for a slot (or their number now, if more), rounded, plus one: it rises at once and falls by
//!   [`FALL`] a step, so a node whose load dips for a moment does not give away a part it will
//!   need again. The fleet splits the capacity max-min fairly over these wants.
//! - **Growing** comes only from Redis's grant. **Shrinking** starts at once (the guard's share
//!   drops to the target), but the part is reported smaller only as the node's requests leave
//!   the portal: a node never has more requests at the portal than the part Redis counts for it.
//! - **Without Redis** a node keeps the part it holds and never grows (nobody else can take it
//!   either: a part is taken back only from a node silent while the taker was connected). A
//!   node that has never had an answer uses nothing in fail mode `closed` and
//!   `capacity / nodes seen` in `open-local` (only once a report failed: with Redis up, a new
//!   node starts from nothing and grows by Redis's grant).
//! - **Growing** also waits until the node has reported without a gap for the parts' time to
//!   live (2 s): a node that joins, or comes back after an outage, cannot take what a node
//!   that has not re-reported yet still uses.

use crate::guard::{Guard, Load};

use super::FailMode;

/// How fast a node's want falls when its load drops (share of the gap per step).
pub const FALL: f64 = 0.2;

/// A node's part of the portal, as this node knows it.
pub struct PortalShare {
    guard: Guard,
    capacity: usize,
    /// The part Redis granted (this node never has more at the portal).
    granted: usize,
    /// The fleet's target for this node at the last answer.
    target: usize,
    /// What this node would use, smoothed.
    want: f64,
    last: Load,
    /// Redis has answered at least once.
    answered: bool,
}

/// What a node reports in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The part it keeps: at most what it was granted, at least what is at the portal now.
    pub keep: usize,
    /// What it would use.
    pub want: usize,
    /// The fleet's capacity.
    pub capacity: usize,
}

impl PortalShare {
    /// A node's share of `capacity`, before any answer: nothing (its first report keeps
    /// nothing; a failed one applies the fail mode, [`PortalShare::no_answer`]).
    pub fn new(guard: Guard, capacity: usize) -> PortalShare {
        let last = guard.load();
        guard.set_share(0);
        PortalShare {
            guard,
            capacity,
            granted: 0,
            target: 0,
            want: 0.0,
            last,
            answered: false,
        }
    }

    /// What to report now.
    pub fn report(&mut self) -> Report {
        let load = self.guard.load();
        let in_flight = self.guard.in_flight();
        // The step's average, or what is there now if more (a burst that just came).
        let now = (in_flight + self.guard.queued()) as f64;
        let used = load
            .averages_since(&self.last)
            .map(|a| a.busy + a.waiting_inside + a.waiting_new)
            .unwrap_or(self.want)
            .max(now);
        self.last = load;
        self.want = if used >= self.want {
            used
        } else {
            self.want + FALL * (used - self.want)
        };
        // Rounded (a want falling toward nothing never reaches it), plus one: a slot at hand
        // for the next request on a quiet node.
        let want = (self.want.round() as usize)
            .saturating_add(1)
            .min(self.capacity);
        Report {
            keep: self.granted.min(self.target.max(in_flight)),
            want,
            capacity: self.capacity,
        }
    }

    /// Redis granted `held` with `target` as this node's fair part, after the report `sent`.
    pub fn answer(&mut self, sent: Report, held: usize, target: usize) {
        self.answered = true;
        // Redis never grants less than what was kept; a smaller answer would be a bug there,
        // and the node keeps counting what it reported.
        self.granted = held.max(sent.keep).min(self.capacity.max(sent.keep));
        self.target = target;
        self.guard.set_share(self.granted.min(target));
    }

    /// Redis did not answer: keep what is held (never grow). A node that never had an answer
    /// uses nothing (`closed`) or `capacity / nodes` (`open-local`).
    pub fn no_answer(&mut self, fail_mode: FailMode, nodes: u32) {
        if self.answered {
            return;
        }
        let share = match fail_mode {
            FailMode::Closed => 0,
            FailMode::OpenLocal => self.capacity / (nodes.max(1) as usize),
        };
        self.granted = share;
        self.target = share;
        self.guard.set_share(share);
    }

    /// The part this node may give back at a clean stop: all of it, once nothing is at the
    /// portal (otherwise it lapses in Redis within the parts' time to live).
    pub fn idle(&self) -> bool {
        self.guard.in_flight() == 0
    }

    /// The part granted (for metrics).
    pub fn granted(&self) -> usize {
        self.granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{GuardConfig, Priority};

    fn guard(limit: usize) -> Guard {
        Guard::new(&GuardConfig {
            max_in_flight: limit,
            queue_timeout: std::time::Duration::from_millis(20),
            ..GuardConfig::default()
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closed_uses_nothing_before_an_answer_and_open_local_its_even_part() {
        let g = guard(20);
        let mut p = PortalShare::new(g.clone(), 20);
        assert_eq!(g.current_limit(), 0);
        p.no_answer(FailMode::Closed, 3);
        assert_eq!(g.current_limit(), 0);
        assert!(
            g.acquire(Priority::Inside, tokio::time::Instant::now())
                .await
                .is_err(),
            "no slot without a part"
        );
        let g = guard(20);
        let mut p = PortalShare::new(g.clone(), 20);
        assert_eq!(
            p.report().keep,
            0,
            "nothing claimed before Redis granted it"
        );
        p.no_answer(FailMode::OpenLocal, 3);
        assert_eq!(g.current_limit(), 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn keeps_what_is_at_the_portal_and_shrinks_as_it_leaves() {
        let g = guard(20);
        let mut p = PortalShare::new(g.clone(), 20);
        let r = p.report();
        assert_eq!(r.keep, 0);
        p.answer(r, 10, 10);
        assert_eq!(g.current_limit(), 10);
        let now = tokio::time::Instant::now();
        let mut permits = Vec::new();
        for _ in 0..8 {
            permits.push(g.acquire(Priority::Inside, now).await.unwrap());
        }
        // The fleet wants this node at 3: the guard drops to 3 at once, but the node keeps 8
        // counted while 8 are at the portal.
        let r = p.report();
        assert!(r.want >= 9, "{r:?}");
        p.answer(r, 10, 3);
        assert_eq!(g.current_limit(), 3);
        assert_eq!(p.report().keep, 8);
        permits.truncate(2);
        let r = p.report();
        assert_eq!(r.keep, 3, "back to the target once the requests left");
        p.answer(r, 3, 3);
        // Without an answer it keeps what it has, and never grows.
        p.no_answer(FailMode::OpenLocal, 1);
        assert_eq!(g.current_limit(), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn want_rises_at_once_and_falls_slowly() {
        let g = guard(50);
        let mut p = PortalShare::new(g.clone(), 50);
        let r = p.report();
        p.answer(r, 50, 50);
        let now = tokio::time::Instant::now();
        let permits: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(g.acquire(Priority::Inside, now).await.unwrap());
            }
            v
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let high = p.report().want;
        assert!(high >= 20, "{high}");
        drop(permits);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let after = p.report().want;
        assert!(
            after < high && after > 5,
            "falls by a fifth a step: {high} → {after}"
        );
    }
}
