//! Ticket numbers that survive a crash: a sequence with a high-water mark, the way databases
//! persist sequences.
//!
//! Without a state file the gate's numbers are unbounded (memory only; a restart loses the
//! queue). With one, numbers are handed out only below a *ceiling* that was first written to
//! disk (the room's ticket file, `room/persist.rs`): the controller reserves the next block
//! ahead of need and raises the ceiling only once the reservation is durable. After a crash
//! the next number is the reserved ceiling, so a number already in someone's cookie is never
//! handed out again; the cost is a gap (the unused rest of the block), never a duplicate.
//!
//! The hot path never waits for I/O: [`Gate::take_ticket`](super::Gate::take_ticket) is one
//! bounded atomic increment. It reports when the numbers left fall under the low-water mark
//! (`due`), so the room can wake its reserver at once rather than at the next tick; if a surge
//! ever uses the whole block before the next reservation is durable, the arrival gets no number
//! (and is told to come back in a second) rather than a duplicate.
//!
//! Sizing follows the measured arrival rate (rising at once, falling slowly): a reservation is
//! made when fewer than [`LEAD_MS`] of arrivals' worth of numbers are left (at least
//! [`MIN_BLOCK`]` / 2`), and it adds [`BLOCK_MS`] of arrivals' worth (at least [`MIN_BLOCK`],
//! at most [`MAX_BLOCK`]). A crash thus costs at most `LEAD_MS + BLOCK_MS` of arrivals' numbers.
//!
//! After a crash, the numbers between the last known next ticket (the snapshot's, or the one
//! written with the last reservation) and the reserved ceiling are *unsure* (`Unsure`): some
//! are in people's cookies, the rest were never handed out. People waiting poll, so an unsure
//! number that polls after the restart is marked seen. For [`UNSURE_GRACE_MS`] after the
//! restart (longer than the longest poll interval the pages advise) the controller treats every
//! unsure number as held; after that it holds a place only for those seen, and passes the
//! others without holding room or spending the rate (a person among them who comes later takes
//! free room, as a late arrival does). So a gap costs no admissions after the grace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The smallest block of numbers reserved at once (and the first block after a start).
pub const MIN_BLOCK: u64 = 1024;
/// The largest block reserved at once.
pub const MAX_BLOCK: u64 = 1 << 20;
/// A reservation is due when fewer numbers are left than this long of arrivals at the
/// measured rate (covers a controller tick and a slow `fsync`).
pub const LEAD_MS: u64 = 1_000;
/// A reservation adds this long of arrivals at the measured rate.
pub const BLOCK_MS: u64 = 2_000;

/// "No ceiling": numbers are not reserved (no state file).
const UNBOUNDED: u64 = u64::MAX;

/// The ceiling, the low-water mark and the arrival rate of one gate's numbers.
#[derive(Debug)]
pub(super) struct Sequence {
    /// One past the last number that may be handed out ([`UNBOUNDED`] without a state file).
    ceiling: AtomicU64,
    /// Once the next number reaches this, a reservation is due.
    due_at: AtomicU64,
    /// Arrivals that got no number because the block was used up.
    refused: AtomicU64,
    /// The arrival rate, measured by the reserver (one caller: never contended).
    rate: Mutex<Rate>,
}

#[derive(Debug, Default)]
struct Rate {
    last_next: u64,
    last_ms: u64,
    /// Arrivals per second: rises to a new sample at once, decays slowly.
    per_sec: f64,
}

impl Default for Sequence {
    fn default() -> Self {
        Self {
            ceiling: AtomicU64::new(UNBOUNDED),
            due_at: AtomicU64::new(UNBOUNDED),
            refused: AtomicU64::new(0),
            rate: Mutex::new(Rate::default()),
        }
    }
}

/// Numbers that should be left when a reservation is made, at `per_sec` arrivals per second.
fn low_water(per_sec: f64) -> u64 {
    ((per_sec * LEAD_MS as f64 / 1000.0).ceil() as u64).max(MIN_BLOCK / 2)
}

/// Numbers one reservation adds, at `per_sec` arrivals per second.
fn block(per_sec: f64) -> u64 {
    ((per_sec * BLOCK_MS as f64 / 1000.0).ceil() as u64).clamp(MIN_BLOCK, MAX_BLOCK)
}

impl Sequence {
    /// The bound for the store's `take_ticket`: numbers below it may be handed out.
    #[inline]
    pub(super) fn ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// Whether numbers are reserved durably (a ceiling was set).
    pub(super) fn bounded(&self) -> bool {
        self.ceiling() != UNBOUNDED
    }

    /// Whether a reservation is due, `next` being the next number to hand out.
    #[inline]
    pub(super) fn due(&self, next: u64) -> bool {
        next >= self.due_at.load(Ordering::Acquire)
    }

    /// Counts an arrival that got no number.
    #[cold]
    pub(super) fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Arrivals that got no number so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Measures the arrival rate (`next` numbers handed out by `now_ms`) and, when numbers are
    /// reserved and fewer than the low-water mark are left, the ceiling the next reservation
    /// should write. The reserver calls it (every tick, and when woken).
    pub(super) fn plan(&self, next: u64, now_ms: u64) -> Option<u64> {
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if r.last_ms != 0 && now_ms > r.last_ms {
            let sample =
                next.saturating_sub(r.last_next) as f64 * 1000.0 / (now_ms - r.last_ms) as f64;
            r.per_sec = sample.max(r.per_sec * 0.9 + sample * 0.1);
        }
        if r.last_ms == 0 || now_ms > r.last_ms {
            r.last_next = next;
            r.last_ms = now_ms;
        }
        let ceiling = self.ceiling();
        if ceiling == UNBOUNDED || ceiling.saturating_sub(next) >= low_water(r.per_sec) {
            return None;
        }
        Some(ceiling.max(next).saturating_add(block(r.per_sec)))
    }

    /// The first ceiling after a start, numbers resuming at `from`.
    pub(super) fn first(from: u64) -> u64 {
        from.saturating_add(MIN_BLOCK)
    }

    /// No number at or past `next` is handed out any more (a clean shutdown, once nothing
    /// takes numbers): the ceiling comes down to `next`, so that writing it leaves no gap.
    pub(super) fn close(&self, next: u64) {
        if self.bounded() {
            self.ceiling.store(next, Ordering::Release);
            self.due_at.store(UNBOUNDED, Ordering::Release);
        }
    }

    /// Numbers below `ceiling` were reserved durably: they may be handed out. A ceiling only
    /// rises.
    pub(super) fn raise(&self, ceiling: u64) {
        let per_sec = self.rate.lock().map(|r| r.per_sec).unwrap_or(0.0);
        let now = self.ceiling();
        let to = if now == UNBOUNDED {
            ceiling
        } else {
            now.max(ceiling)
        };
        self.ceiling.store(to, Ordering::Release);
        self.due_at
            .store(to.saturating_sub(low_water(per_sec)), Ordering::Release);
    }
}

/// After a restart, unsure numbers are treated as held this long (the pages advise polling at
/// least every 60 s), then those not seen pass without a place.
pub const UNSURE_GRACE_MS: u64 = 65_000;

/// The most unsure numbers remembered (one bit each: 512 KiB); older ones count as handed out.
pub const MAX_UNSURE: u64 = 1 << 22;

/// The numbers `[lo, hi)` that may or may not have been handed out before a crash, and which of
/// them have been seen (polled) since.
#[derive(Debug)]
pub(super) struct Unsure {
    lo: u64,
    hi: u64,
    seen: Box<[AtomicU64]>,
    /// Unseen numbers pass without a place only from then on.
    pub(super) free_after_ms: u64,
}

impl Unsure {
    /// Unsure numbers `[lo, hi)` (the most recent [`MAX_UNSURE`] of them) after a restart at
    /// `now_ms`; `None` if empty.
    pub(super) fn new(lo: u64, hi: u64, now_ms: u64) -> Option<Unsure> {
        let lo = lo.max(hi.saturating_sub(MAX_UNSURE));
        (lo < hi).then(|| Unsure {
            lo,
            hi,
            seen: (0..(hi - lo).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            free_after_ms: now_ms.saturating_add(UNSURE_GRACE_MS),
        })
    }

    /// `t` is in someone's cookie: it asked where it stands.
    #[inline]
    pub(super) fn see(&self, t: u64) {
        if t >= self.lo && t < self.hi {
            let i = t - self.lo;
            let bit = 1u64 << (i % 64);
            let w = &self.seen[(i / 64) as usize];
            if w.load(Ordering::Relaxed) & bit == 0 {
                w.fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// Whether `t` is unsure and was not seen: probably never handed out.
    fn unseen(&self, t: u64) -> bool {
        t >= self.lo
            && t < self.hi
            && self.seen[((t - self.lo) / 64) as usize].load(Ordering::Acquire)
                & (1u64 << ((t - self.lo) % 64))
                == 0
    }

    /// The next admission from `serving` (tickets below `next` wait), with `places` places:
    /// how many tickets it passes (`span`) and how many of them need a place (`real`,
    /// at most `places`). Unseen unsure numbers pass without a place.
    pub(super) fn span(&self, serving: u64, next: u64, places: u64) -> (u64, u64) {
        let (mut t, mut real) = (serving, 0u64);
        while t < next {
            if self.unseen(t) {
                t += 1;
            } else if real == places {
                break;
            } else if t >= self.hi || t < self.lo {
                // Outside the unsure numbers: everyone needs a place, up to the next unsure one.
                let stop = if t < self.lo { self.lo.min(next) } else { next };
                let k = (stop - t).min(places - real);
                t += k;
                real += k;
            } else {
                t += 1;
                real += 1;
            }
        }
        (t - serving, real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_unsure_numbers_pass_without_a_place() {
        assert!(Unsure::new(10, 10, 0).is_none());
        let u = Unsure::new(10, 20, 0).unwrap();
        u.see(12);
        u.see(15);
        u.see(25); // not unsure: nothing
                   // From 5, 3 places, 30 waiting: 5..10 need places (3 of them).
        assert_eq!(u.span(5, 30, 3), (3, 3));
        // From 8: 8, 9 need places; 10, 11 pass; 12 takes the last; 13, 14 pass; 15 waits.
        assert_eq!(u.span(8, 30, 3), (7, 3));
        // From 10 with no place: the unseen 10, 11 pass, 12 waits.
        assert_eq!(u.span(10, 30, 0), (2, 0));
        // From 13, 2 places: 13, 14 pass, 15 takes one, 16..20 pass, 20 takes the other.
        assert_eq!(u.span(13, 30, 2), (8, 2));
        // Nobody waiting past `next`.
        assert_eq!(u.span(16, 18, 5), (2, 0));
        // Only the most recent MAX_UNSURE are remembered.
        let big = Unsure::new(0, MAX_UNSURE + 100, 0).unwrap();
        assert_eq!(
            big.span(0, 100, 100),
            (100, 100),
            "older ones count as handed out"
        );
    }

    #[test]
    fn unbounded_until_a_ceiling_is_set() {
        let s = Sequence::default();
        assert!(!s.bounded());
        assert_eq!(
            s.plan(1_000_000, 1),
            None,
            "nothing to reserve without a file"
        );
        assert!(!s.due(u64::MAX - 1));
        s.raise(3000);
        assert!(s.bounded());
        assert_eq!(s.ceiling(), 3000);
        assert!(!s.due(100) && s.due(3000 - MIN_BLOCK / 2));
        s.raise(2000);
        assert_eq!(s.ceiling(), 3000, "a ceiling never goes down");
    }

    #[test]
    fn plans_ahead_of_need_sized_from_the_rate() {
        let s = Sequence::default();
        s.raise(1 + MIN_BLOCK);
        assert_eq!(s.plan(1, 1_000), None, "plenty left at no rate");
        // Half the block used at no measured rate: extend by the minimum.
        let next = 1 + MIN_BLOCK / 2 + 1;
        assert_eq!(s.plan(next, 1_000), Some(1 + 2 * MIN_BLOCK));
        s.raise(1 + 2 * MIN_BLOCK);
        // A surge: 10 000 arrivals in one second (the ceiling in between taken as reserved).
        let next = 1 + 10_000;
        let want = next + 10_000 * BLOCK_MS / 1000;
        assert_eq!(s.plan(next, 2_000), Some(want));
        s.raise(want);
        // The low-water mark follows the rate: due when under LEAD_MS of arrivals are left.
        assert!(!s.due(want - 10_000 * LEAD_MS / 1000 - 1));
        assert!(s.due(want - 10_000 * LEAD_MS / 1000));
    }
}
