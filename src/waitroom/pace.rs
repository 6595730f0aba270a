//! The line's pace, behind the wait estimate ([`Gate::estimate_wait`](super::Gate::estimate_wait)).
//!
//! Measured by the controller at each tick as places given up (`serving − occupied` grows by
//! one for each session that ends, expires, or reservation abandoned) per second of time with
//! people waiting, over the last [`RATE_WINDOW_MS`] of it. Admissions are not used: a fill of
//! empty room is a burst, not a pace. The window starts at the last tick before the first
//! departure (after an opening, the first people let in are still inside for a while), and
//! nothing is published before [`RATE_MIN_DEPARTED`] departures (or a full window).
//!
//! Its inputs are the store's `serving` and `occupied`, so with a shared store the pace is the
//! whole line's, whichever node measures it. [`Pace`] is kept under the controller lock;
//! [`PaceGauge`] publishes its readings for the lock-free paths.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The queue's pace is measured over this much of the most recent time people waited.
const RATE_WINDOW_MS: u64 = 20_000;
/// The pace is not published before this much waiting time has been seen.
const RATE_MIN_SPAN_MS: u64 = 500;
/// Places given up needed in the window before the pace is published (unless the window is
/// full): one or two departures say little about a line's pace.
const RATE_MIN_DEPARTED: u64 = 10;

/// What one [`Pace::update`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PaceReading {
    /// Places given up per second of waiting, when there is enough to publish.
    pub(super) rate: Option<f64>,
    /// Tickets admitted during the last minute (approximate, per tick).
    pub(super) admitted_last_minute: u64,
}

/// The pace measurement of one gate.
#[derive(Debug)]
pub(super) struct Pace {
    last_tick_ms: Option<u64>,
    /// Places given up so far (`serving - occupied` at the last tick).
    last_departed: u64,
    /// Total time with people waiting, and places given up during that time.
    queue_ms: u64,
    queue_departed: u64,
    /// (queue_ms, queue_departed) samples about one per second of waiting time, over the
    /// last [`RATE_WINDOW_MS`]: the queue's pace.
    samples: VecDeque<(u64, u64)>,
    /// (time, serving) samples at most one per second, ~the last minute.
    history: VecDeque<(u64, u64)>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            last_tick_ms: None,
            last_departed: 0,
            queue_ms: 0,
            queue_departed: 0,
            samples: VecDeque::with_capacity(32),
            history: VecDeque::with_capacity(128),
        }
    }
}

impl Pace {
    /// Measures the queue's pace: places given up (sessions ended, expired, reservations
    /// abandoned) per second of time with people waiting, over the last [`RATE_WINDOW_MS`].
    /// Places given up, not admissions: filling empty room is a one-off burst, not a pace
    /// the next in line can count on (admitted = given up + newly occupied).
    pub(super) fn update(
        &mut self,
        serving: u64,
        occupied: u32,
        had_waiters: bool,
        now_ms: u64,
    ) -> PaceReading {
        let departed = serving.saturating_sub(u64::from(occupied));
        let mut rate = None;
        if let Some(last) = self.last_tick_ms {
            if had_waiters && now_ms > last {
                self.queue_ms += now_ms - last;
                self.queue_departed += departed.saturating_sub(self.last_departed);
                let sample = (self.queue_ms, self.queue_departed);
                if self.queue_departed == 0 {
                    // Nobody has left yet (the first people let in are still inside): the
                    // pace is measured from the last moment before the first departure, not
                    // from the queue's start, or a window opening would count the first
                    // people's whole stay as a slow pace.
                    self.samples.clear();
                    self.samples.push_back(sample);
                } else if self
                    .samples
                    .back()
                    .is_none_or(|&(q, _)| sample.0 >= q + 1000)
                {
                    self.samples.push_back(sample);
                }
                while self.samples.len() > 1
                    && self
                        .samples
                        .front()
                        .is_some_and(|&(q, _)| q + RATE_WINDOW_MS < sample.0)
                {
                    self.samples.pop_front();
                }
                // The oldest sample (or the queue's start) to now.
                let (q0, d0) = match self.samples.front() {
                    Some(&f) if f.0 < sample.0 => f,
                    _ => (0, 0),
                };
                let span = sample.0 - q0;
                // A few departures are noise: wait for RATE_MIN_DEPARTED of them, or for a
                // whole window of waiting (a slow line).
                if span >= RATE_MIN_SPAN_MS
                    && (sample.1 - d0 >= RATE_MIN_DEPARTED || span >= RATE_WINDOW_MS)
                {
                    rate = Some((sample.1 - d0) as f64 * 1000.0 / span as f64);
                }
            }
        }
        self.last_tick_ms = Some(now_ms);
        self.last_departed = departed;
        if self.history.back().is_none_or(|&(t, _)| now_ms >= t + 1000) {
            if self.history.len() >= 120 {
                self.history.pop_front();
            }
            self.history.push_back((now_ms, serving));
        }
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| t + 60_000 < now_ms && self.history.len() > 1)
        {
            self.history.pop_front();
        }
        let base = self.history.front().map_or(serving, |&(_, s)| s);
        PaceReading {
            rate,
            admitted_last_minute: serving.saturating_sub(base),
        }
    }

    /// Starts the measurement over (a restored snapshot: the time in between is not a pace).
    pub(super) fn restart(&mut self) {
        self.last_tick_ms = None;
        self.samples.clear();
        self.history.clear();
    }
}

/// The last published pace, readable without the controller lock.
#[derive(Debug)]
pub(super) struct PaceGauge {
    rate_bits: AtomicU64,
    admitted_last_minute: AtomicU64,
}

impl Default for PaceGauge {
    fn default() -> Self {
        Self {
            rate_bits: AtomicU64::new(0f64.to_bits()),
            admitted_last_minute: AtomicU64::new(0),
        }
    }
}

impl PaceGauge {
    /// Publishes a reading (a rate only when there was one to publish).
    pub(super) fn publish(&self, r: PaceReading) {
        if let Some(rate) = r.rate {
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        }
        self.admitted_last_minute
            .store(r.admitted_last_minute, Ordering::Relaxed);
    }

    /// Places given up per second while people wait (0 before anything was published).
    pub(super) fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Tickets admitted during the last minute.
    pub(super) fn admitted_last_minute(&self) -> u64 {
        self.admitted_last_minute.load(Ordering::Relaxed)
    }

    /// The wait for someone with `ahead` people in front of them: at the measured pace, or
    /// at the configured cap `apm` before any measurement. None when neither is known.
    pub(super) fn wait_for(&self, ahead: u64, apm: u32) -> Option<Duration> {
        let measured = self.rate();
        let rate = if measured > 0.01 {
            measured
        } else if apm > 0 {
            f64::from(apm) / 60.0
        } else {
            return None;
        };
        let secs = (ahead as f64 + 1.0) / rate;
        Some(Duration::from_secs_f64(secs.min(86_400.0 * 7.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departures_per_second_of_waiting_after_enough_of_them() {
        let mut p = Pace::default();
        let g = PaceGauge::default();
        assert_eq!(g.wait_for(9, 0), None, "nothing known");
        assert_eq!(g.wait_for(9, 60), Some(Duration::from_secs(10)), "the cap");
        // 10 inside from the start; then 2 leave (and 2 enter) every 100 ms.
        let (mut serving, occupied) = (11u64, 10u32);
        g.publish(p.update(serving, occupied, true, 0));
        for step in 1..=10u64 {
            serving += 2;
            let r = p.update(serving, occupied, true, step * 100);
            g.publish(r);
            if step < 5 {
                assert_eq!(r.rate, None, "under half a second");
            }
        }
        assert!((g.rate() - 20.0).abs() < 0.5, "{}", g.rate());
        assert_eq!(g.admitted_last_minute(), 20);
        // Time without anyone waiting is not counted.
        let r = p.update(serving, occupied, false, 60_000);
        assert_eq!(r.rate, None);
        g.publish(r);
        assert!((g.rate() - 20.0).abs() < 0.5, "kept");
        let w = g.wait_for(99, 60).unwrap().as_secs_f64();
        assert!((4.5..=5.5).contains(&w), "{w}");
    }

    #[test]
    fn the_first_stay_is_not_counted() {
        let mut p = Pace::default();
        // Ten inside for 30 s, nobody leaves: nothing, or (a full window) a pace of 0.
        for s in 0..=300u64 {
            assert_eq!(p.update(11, 10, true, s * 100).rate.unwrap_or(0.0), 0.0);
        }
        // Then ten leave within a second: ten a second, not ten in 31 s.
        let r = p.update(21, 10, true, 31_000);
        let rate = r.rate.unwrap();
        assert!((rate - 10.0).abs() < 0.5, "{rate}");
        p.restart();
        assert_eq!(p.update(21, 10, true, 40_000).rate, None);
    }
}
