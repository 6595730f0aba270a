//! Reservations: room held for admitted tickets until they arrive, found without per-person
//! memory.
//!
//! Each advance of `serving` is recorded as a batch `[a, b)` with a pending count (extended
//! while admissions follow each other closely); a claim takes one pending unit of its batch,
//! and a batch older than `arrival_timeout` gives its remaining pending room back: those
//! admitted tickets are counted as abandoned. A fixed ring of [`BATCH_RING`] batches: a batch
//! still pending when its place in the ring is reused is abandoned at once.
//!
//! The batches only decide *which* admitted ticket may still use held room; the room itself is
//! counted in the [`AdmissionStore`](super::store::AdmissionStore)'s `occupied`, so this type
//! returns the places it gives up and the gate hands them back to the store.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::snapshot::ReservationState;

/// Number of reservation batches kept.
pub(super) const BATCH_RING: usize = 128;

/// A batch of tickets `[start, end)` admitted together, with pending arrivals.
#[derive(Default)]
struct Batch {
    start: AtomicU64,
    end: AtomicU64,
    /// Last extension time, ms since the UNIX epoch.
    at_ms: AtomicU64,
    pending: AtomicU32,
}

/// The ring's write position: only the controller moves it (kept under the controller lock).
#[derive(Debug, Default)]
pub(super) struct Cursor {
    /// Index of the most recent batch in the ring.
    head: usize,
    /// When the most recent batch was opened (it is extended for a short while after).
    head_first_ms: u64,
}

/// The reservation ring of one gate, with its pending and abandoned counts.
pub(super) struct Reservations {
    batches: Box<[Batch]>,
    /// Admitted tickets that have not arrived yet (sum of the batches' pending counts).
    pending: AtomicU32,
    /// Admitted tickets that never arrived (lifetime).
    abandoned: AtomicU64,
}

impl Reservations {
    pub(super) fn new() -> Self {
        Self {
            batches: (0..BATCH_RING).map(|_| Batch::default()).collect(),
            pending: AtomicU32::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// Admitted tickets that have not arrived yet.
    pub(super) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Admitted tickets that never arrived.
    pub(super) fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Counts `n` admitted tickets that never arrived, whose places a shared store gave back
    /// (its leader's expiry): the same count as this ring's own.
    pub(super) fn count_abandoned(&self, n: u64) {
        self.abandoned.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_pending(&self, n: u32) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
    }

    fn abandon(&self, n: u32) {
        self.sub_pending(n);
        self.abandoned.fetch_add(u64::from(n), Ordering::Relaxed);
    }

    /// Records the admission of tickets `[a, b)` (`n` of them): extends the most recent batch
    /// if it ends at `a` and was opened less than `timeout_ms / 32` (at least 100 ms) ago, even
    /// when everyone in it has come (else, with claims faster than admissions, each admission
    /// opened a batch, the ring went round in under a second and the places of people not yet
    /// come lapsed long before `timeout_ms`), else opens the next batch of the ring. Returns the batch's index
    /// (for [`Reservations::undo`]) and the places given up by a recycled batch that was still
    /// pending (counted as abandoned; the caller gives them back to the store).
    pub(super) fn admit(
        &self,
        cur: &mut Cursor,
        a: u64,
        b: u64,
        n: u32,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (usize, u32) {
        let granularity = (timeout_ms / 32).max(100);
        let head = &self.batches[cur.head];
        if head.end.load(Ordering::Acquire) == a
            && now_ms < cur.head_first_ms.saturating_add(granularity)
        {
            head.at_ms.store(now_ms, Ordering::Release);
            head.pending.fetch_add(n, Ordering::AcqRel);
            head.end.store(b, Ordering::Release);
            self.pending.fetch_add(n, Ordering::AcqRel);
            return (cur.head, 0);
        }
        cur.head = (cur.head + 1) % BATCH_RING;
        cur.head_first_ms = now_ms;
        let slot = &self.batches[cur.head];
        // Recycling a batch still pending (ring too small for the timeout):
        // its arrivals are given up.
        let left = slot.pending.swap(0, Ordering::AcqRel);
        if left > 0 {
            self.abandon(left);
        }
        slot.end.store(0, Ordering::Release);
        slot.start.store(a, Ordering::Release);
        slot.at_ms.store(now_ms, Ordering::Release);
        slot.pending.store(n, Ordering::Release);
        slot.end.store(b, Ordering::Release);
        self.pending.fetch_add(n, Ordering::AcqRel);
        (cur.head, left)
    }

    /// Takes back `n` reservations just recorded in batch `idx` (the admission did not happen).
    pub(super) fn undo(&self, idx: usize, n: u32) {
        let back = self.batches[idx]
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            })
            .map_or(0, |p| p.min(n));
        self.sub_pending(back);
    }

    /// Moves one pending reservation of `t`'s batch to the caller; false if the
    /// batch is gone or already abandoned (late arrival).
    pub(super) fn take(&self, t: u64) -> bool {
        for b in self.batches.iter() {
            let end = b.end.load(Ordering::Acquire);
            let start = b.start.load(Ordering::Acquire);
            if start <= t && t < end {
                // A batch being recycled concurrently could mislead this
                // lookup; recycled batches are long expired (pending 0), and
                // in the worst case one reservation is accounted to the wrong
                // batch: totals stay exact.
                let ok = b
                    .pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
                    .is_ok();
                if ok {
                    self.sub_pending(1);
                }
                return ok;
            }
        }
        false
    }

    /// Places still held in batches extended at or after `since_ms`: people let in lately.
    pub(super) fn pending_since(&self, since_ms: u64) -> u32 {
        self.batches
            .iter()
            .filter(|b| b.at_ms.load(Ordering::Acquire) >= since_ms)
            .map(|b| b.pending.load(Ordering::Acquire))
            .sum()
    }

    /// Whether `t`'s admission batch still holds a reservation for it (not yet lapsed).
    pub(super) fn holds(&self, t: u64) -> bool {
        self.batches.iter().any(|b| {
            b.start.load(Ordering::Acquire) <= t
                && t < b.end.load(Ordering::Acquire)
                && b.pending.load(Ordering::Acquire) > 0
        })
    }

    /// Gives up the pending room of batches not extended for `timeout_ms`, calling
    /// `gave_up(n)` for each such batch. Returns how many reservations were abandoned.
    pub(super) fn expire(&self, now_ms: u64, timeout_ms: u64, mut gave_up: impl FnMut(u32)) -> u64 {
        let mut total = 0u64;
        for b in self.batches.iter() {
            if b.pending.load(Ordering::Acquire) == 0 {
                continue;
            }
            if b.at_ms.load(Ordering::Acquire).saturating_add(timeout_ms) <= now_ms {
                let n = b.pending.swap(0, Ordering::AcqRel);
                if n > 0 {
                    self.abandon(n);
                    gave_up(n);
                    total += u64::from(n);
                }
            }
        }
        total
    }

    /// The batches still pending, oldest first, for a snapshot.
    pub(super) fn snapshot(&self) -> Vec<ReservationState> {
        let mut reservations: Vec<ReservationState> = self
            .batches
            .iter()
            .filter_map(|b| {
                let pending = b.pending.load(Ordering::Acquire);
                (pending > 0).then(|| ReservationState {
                    start: b.start.load(Ordering::Acquire),
                    end: b.end.load(Ordering::Acquire),
                    admitted_at_ms: b.at_ms.load(Ordering::Acquire),
                    pending,
                })
            })
            .collect();
        reservations.sort_by_key(|r| r.start);
        reservations
    }

    /// Replaces the ring with saved batches (those still pending and admitted before
    /// `serving`; the most recent `BATCH_RING - 1` of them), calling `restored(start, end)` for
    /// each one kept. Sets the pending count and the abandoned total; returns the pending
    /// count.
    pub(super) fn restore(
        &self,
        cur: &mut Cursor,
        saved: &[ReservationState],
        serving: u64,
        abandoned: u64,
        mut restored: impl FnMut(u64, u64),
    ) -> u32 {
        for b in self.batches.iter() {
            b.pending.store(0, Ordering::Release);
            b.end.store(0, Ordering::Release);
            b.start.store(0, Ordering::Release);
        }
        let keep: Vec<&ReservationState> = saved
            .iter()
            .filter(|r| r.pending > 0 && r.start < r.end && r.end <= serving)
            .collect();
        let skip = keep.len().saturating_sub(BATCH_RING - 1);
        let mut pending = 0u32;
        let mut head = 0usize;
        for r in keep.into_iter().skip(skip) {
            head = (head + 1) % BATCH_RING;
            let b = &self.batches[head];
            let n = u32::try_from(r.end - r.start)
                .unwrap_or(u32::MAX)
                .min(r.pending);
            b.start.store(r.start, Ordering::Release);
            b.at_ms.store(r.admitted_at_ms, Ordering::Release);
            b.pending.store(n, Ordering::Release);
            b.end.store(r.end, Ordering::Release);
            pending = pending.saturating_add(n);
            restored(r.start, r.end);
        }
        self.pending.store(pending, Ordering::Release);
        self.abandoned.store(abandoned, Ordering::Relaxed);
        cur.head = head;
        cur.head_first_ms = 0;
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_extend_claim_and_lapse() {
        let r = Reservations::new();
        let mut cur = Cursor::default();
        // Two admissions 50 ms apart extend one batch (granularity 100 ms at a 1 s timeout).
        assert_eq!(r.admit(&mut cur, 1, 3, 2, 0, 1_000), (1, 0));
        assert_eq!(r.admit(&mut cur, 3, 4, 1, 50, 1_000), (1, 0));
        // 200 ms later: a new batch.
        assert_eq!(r.admit(&mut cur, 4, 5, 1, 250, 1_000), (2, 0));
        assert_eq!(r.pending(), 4);
        assert!(r.holds(3) && !r.holds(5));
        assert!(r.take(3));
        assert_eq!(r.pending(), 3);
        // The first batch was extended at 50 ms: it lapses at 1 050 ms.
        let mut given = Vec::new();
        assert_eq!(r.expire(1_049, 1_000, |n| given.push(n)), 0);
        assert_eq!(r.expire(1_050, 1_000, |n| given.push(n)), 2);
        assert_eq!((given, r.pending(), r.abandoned()), (vec![2], 1, 2));
        assert!(!r.take(1), "lapsed");
        assert!(r.take(4));
        assert!(!r.take(4), "one reservation per ticket");
        r.undo(2, 5);
        assert_eq!(r.pending(), 0);
    }

    /// Claim day: hundreds of admissions a second, each claimed within milliseconds but for
    /// the odd one who does not come. Their places are held the whole arrival timeout: a batch
    /// whose people have all come is still extended (opening a batch per admission filled the
    /// ring in under a second, and the place of someone who had not come yet lapsed after
    /// ~0.4 s instead of 2 s).
    #[test]
    fn fast_claims_do_not_cut_anyones_arrival_timeout_short() {
        let r = Reservations::new();
        let mut cur = Cursor::default();
        let timeout = 2_000;
        // One admission every 3 ms for 1.9 s; each claims at once, but ticket 1 never comes.
        for i in 0..634u64 {
            let t = i + 1;
            let (_, recycled) = r.admit(&mut cur, t, t + 1, 1, i * 3, timeout);
            assert_eq!(
                recycled, 0,
                "admission {t}: a batch still pending was recycled"
            );
            if t != 1 {
                assert!(r.take(t));
            }
            assert_eq!(r.expire(i * 3, timeout, |_| {}), 0);
        }
        assert!(r.holds(1), "held within its arrival timeout");
        assert_eq!((r.pending(), r.abandoned()), (1, 0));
        assert!(r.take(1), "comes back after 1.9 s: the place is there");
    }

    #[test]
    fn places_held_lately_are_told_apart() {
        let r = Reservations::new();
        let mut cur = Cursor::default();
        r.admit(&mut cur, 1, 4, 3, 0, 2_000);
        r.admit(&mut cur, 4, 6, 2, 500, 2_000);
        assert!(r.take(5));
        assert_eq!(r.pending(), 4);
        assert_eq!(r.pending_since(400), 1, "only the batch extended at 500 ms");
        assert_eq!(r.pending_since(0), 4);
        assert_eq!(r.pending_since(501), 0);
    }

    #[test]
    fn a_recycled_pending_batch_is_abandoned() {
        let r = Reservations::new();
        let mut cur = Cursor::default();
        // Batches that do not follow each other: one batch each.
        for i in 0..BATCH_RING as u64 {
            r.admit(&mut cur, 2 * i + 1, 2 * i + 2, 1, i * 1_000, 3_600_000);
        }
        // The ring is full: the next batch reuses the oldest, still pending.
        let (_, left) = r.admit(&mut cur, 1000, 1001, 1, 999_999, 3_600_000);
        assert_eq!((left, r.abandoned()), (1, 1));
        assert_eq!(r.pending(), BATCH_RING as u32);
        let snap = r.snapshot();
        assert_eq!(snap.len(), BATCH_RING);
        assert!(snap.windows(2).all(|w| w[0].start < w[1].start));
        let s = Reservations::new();
        let mut c = Cursor::default();
        let mut kept = 0;
        let pending = s.restore(&mut c, &snap, 1001, 1, |_, _| kept += 1);
        // The most recent BATCH_RING - 1 are kept.
        assert_eq!((pending, kept), (BATCH_RING as u32 - 1, BATCH_RING - 1));
        assert!(!s.holds(3) && s.holds(5) && s.holds(1000));
    }
}
