//! Each admitted ticket claims a slot once: a bitmap over the last [`CLAIM_WINDOW`] admitted
//! tickets (128 KiB per gate, fixed), so a replayed ticket cookie cannot take several slots.
//!
//! A ticket's bit is cleared when it is admitted and set when it claims (or when a restored
//! slot or a re-claimed pass holds it); a set bit on a ticket that is not admitted yet means
//! nothing, since a claim checks admission first.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many recently admitted tickets are remembered as claimed (one bit each).
/// A ticket admitted more than this many admissions ago can no longer claim.
pub const CLAIM_WINDOW: u64 = 1 << 20;

#[inline]
fn bit_of(t: u64) -> (usize, u64) {
    let i = t % CLAIM_WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

/// The claimed bits of the last [`CLAIM_WINDOW`] tickets.
pub(super) struct ClaimBits(Box<[AtomicU64]>);

impl ClaimBits {
    /// All ones: nothing is claimable until admitted.
    pub(super) fn new() -> Self {
        ClaimBits(
            (0..CLAIM_WINDOW / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
        )
    }

    /// Marks `t` as claimed; returns whether it was already.
    #[inline]
    pub(super) fn mark(&self, t: u64) -> bool {
        let (w, m) = bit_of(t);
        self.0[w].fetch_or(m, Ordering::AcqRel) & m != 0
    }

    /// Makes `t` claimable again (its claim failed, or it was just admitted).
    #[inline]
    pub(super) fn unmark(&self, t: u64) {
        let (w, m) = bit_of(t);
        self.0[w].fetch_and(!m, Ordering::AcqRel);
    }

    /// Whether `t` is marked as claimed.
    #[inline]
    pub(super) fn is_marked(&self, t: u64) -> bool {
        let (w, m) = bit_of(t);
        self.0[w].load(Ordering::Acquire) & m != 0
    }

    /// Tickets `[a, b)` were admitted: each may claim once.
    pub(super) fn open(&self, a: u64, b: u64) {
        if b.saturating_sub(a) >= CLAIM_WINDOW {
            for w in self.0.iter() {
                w.store(0, Ordering::Release);
            }
        } else {
            for t in a..b {
                self.unmark(t);
            }
        }
    }

    /// Back to all ones (a restored snapshot replaces the gate's state).
    pub(super) fn reset(&self) {
        for w in self.0.iter() {
            w.store(u64::MAX, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_claims_once_after_admission() {
        let c = ClaimBits::new();
        assert!(c.is_marked(5), "not admitted: not claimable");
        c.open(3, 8);
        assert!(!c.is_marked(5) && c.is_marked(8));
        assert!(!c.mark(5), "first claim");
        assert!(c.mark(5), "second claim sees the first");
        c.unmark(5);
        assert!(!c.mark(5), "a failed claim gave it back");
        // The window wraps: ticket t and t + CLAIM_WINDOW share a bit.
        assert!(c.is_marked(5 + CLAIM_WINDOW));
        c.open(0, CLAIM_WINDOW);
        assert!(!c.is_marked(5));
        c.reset();
        assert!(c.is_marked(5));
    }
}
