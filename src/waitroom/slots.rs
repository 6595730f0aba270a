//! The slot table: one 24-byte slot per admitted person, the admitted person's hot path.
//!
//! An admitted ticket claims a slot on its first request (`SlotTable::grab`); every later
//! request checks the slot its pass names (`SlotTable::touch`): lock-free and
//! allocation-free, a few atomic loads and at most one store. Slots live in fixed-size segments
//! allocated on demand, so capacity can grow at runtime while passes keep their slot index.
//!
//! Slots are local to a node by design, even with a shared
//! [`AdmissionStore`](super::store::AdmissionStore): a pass is checked on every request, and a
//! round trip to a shared store there would cost every admitted user on every click. What the
//! nodes share is the room accounting (`occupied`), not who sits where.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use super::pass::Token;
use super::snapshot::SlotState;

/// Slots per lazily allocated segment.
pub const SEGMENT_SLOTS: u32 = 1024;
/// Maximum number of segments per gate.
pub const MAX_SEGMENTS: u32 = 1024;
/// Largest accepted `capacity` (active users per gate).
pub const MAX_CAPACITY: u32 = SEGMENT_SLOTS * MAX_SEGMENTS;
/// Slot ticket marker while a claim is filling the slot.
pub(super) const CLAIMING: u64 = 1 << 63;
/// Slot times are seconds since this instant. The UNIX epoch: u32 seconds last until 2106, and
/// a clock set to any date (tests, rehearsals) keeps idle expiry right.
const EPOCH_MS: u64 = 0;

/// Seconds since the slot epoch (what a slot's last-seen time holds).
#[inline]
pub(super) fn secs(now_ms: u64) -> u32 {
    u32::try_from(now_ms.saturating_sub(EPOCH_MS) / 1000).unwrap_or(u32::MAX)
}

/// Who occupies (or wants) a slot: the signed facts from the ticket or pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    /// Ticket number.
    pub ticket: u64,
    /// Low 64 bits of the visitor id.
    pub visitor: u64,
    /// Client binding hash computed by the proxy for this request.
    pub binding: u32,
}

impl Occupant {
    /// The occupant described by a verified token, with the binding of the
    /// current request (not the token's: a pass's binding is compared by the
    /// slot, which remembers the binding seen at claim time).
    pub fn from_token(tok: &Token, binding: u32) -> Self {
        Self {
            ticket: tok.ticket,
            visitor: tok.visitor.low64(),
            binding,
        }
    }
}

/// One active-user slot (24 bytes).
#[derive(Default)]
pub(super) struct Slot {
    /// Ticket holding the slot; 0 = free; `CLAIMING | t` while being filled.
    ticket: AtomicU64,
    visitor: AtomicU64,
    binding: AtomicU32,
    /// Seconds since the slot epoch.
    last_seen: AtomicU32,
}

impl Slot {
    /// The ticket holding the slot (0 = free, `CLAIMING | t` while being filled).
    #[inline]
    pub(super) fn ticket(&self) -> u64 {
        self.ticket.load(Ordering::Acquire)
    }

    /// Takes the slot if it is free: marks it as being filled, writes the occupant, then
    /// publishes the ticket (a reader never sees a ticket with another occupant's facts).
    fn take(&self, who: Occupant, now_s: u32) -> bool {
        if self
            .ticket
            .compare_exchange(
                0,
                CLAIMING | who.ticket,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        self.fill(who, now_s);
        true
    }

    fn fill(&self, who: Occupant, now_s: u32) {
        self.visitor.store(who.visitor, Ordering::Relaxed);
        self.binding.store(who.binding, Ordering::Relaxed);
        self.last_seen.store(now_s, Ordering::Relaxed);
        self.ticket.store(who.ticket, Ordering::Release);
    }

    fn same_client(&self, who: Occupant) -> bool {
        self.visitor.load(Ordering::Relaxed) == who.visitor
            && self.binding.load(Ordering::Relaxed) == who.binding
    }
}

/// What [`SlotTable::touch`] found in the slot a pass names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touched {
    /// Held by this occupant: activity recorded.
    Held,
    /// Held by this ticket for another visitor or binding (a copied pass).
    BoundElsewhere,
    /// Free (the session ended, or the process restarted since the pass was issued).
    Free,
    /// No such slot, or held by someone else.
    Gone,
}

#[inline]
fn spread(t: u64) -> u64 {
    // Fibonacci hashing: spreads consecutive tickets over the table.
    (t.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32
}

/// Fixed-size segments allocated on demand: slots never move, so capacity can
/// grow at runtime while passes keep their slot index.
pub(super) struct SlotTable {
    segs: Box<[OnceLock<Box<[Slot]>>]>,
    /// Slots allocated (multiple of `SEGMENT_SLOTS`).
    len: AtomicU32,
    /// Slots held.
    active: AtomicU32,
}

impl SlotTable {
    pub(super) fn new() -> Self {
        Self {
            segs: (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
            active: AtomicU32::new(0),
        }
    }

    /// Makes sure at least `n` slots exist (up to `MAX_CAPACITY`).
    pub(super) fn ensure(&self, n: u32) {
        let need = n.min(MAX_CAPACITY).div_ceil(SEGMENT_SLOTS);
        for seg in self.segs.iter().take(need as usize) {
            seg.get_or_init(|| (0..SEGMENT_SLOTS).map(|_| Slot::default()).collect());
        }
        self.len.fetch_max(need * SEGMENT_SLOTS, Ordering::AcqRel);
    }

    /// Slots allocated.
    #[inline]
    pub(super) fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn get(&self, i: u32) -> Option<&Slot> {
        let seg = self.segs.get((i / SEGMENT_SLOTS) as usize)?.get()?;
        seg.get((i % SEGMENT_SLOTS) as usize)
    }

    /// Slots held.
    #[inline]
    pub(super) fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Takes a free slot for `who`, probing from a spot spread by ticket number. The caller
    /// holds one unit of room for it.
    pub(super) fn grab(&self, who: Occupant, now_ms: u64) -> Option<u32> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let start = (spread(who.ticket) % u64::from(n)) as u32;
        let now_s = secs(now_ms);
        for _pass in 0..3 {
            for k in 0..n {
                let i = (start + k) % n;
                let Some(s) = self.get(i) else { continue };
                if s.ticket.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                if s.take(who, now_s) {
                    self.active.fetch_add(1, Ordering::AcqRel);
                    return Some(i);
                }
            }
        }
        None
    }

    /// One scan for the slot held by `who.ticket`: `None` if not found, `Some(Err(Busy))` if
    /// a concurrent claim is still filling it after a short wait, `Some(Err(BoundElsewhere))`
    /// if it is held for another visitor or binding.
    pub(super) fn find(&self, who: Occupant) -> Option<Result<u32, Found>> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let start = (spread(who.ticket) % u64::from(n)) as u32;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(s) = self.get(i) else { continue };
            let mut tk = s.ticket();
            if tk == CLAIMING | who.ticket {
                // A concurrent claim is filling this slot: wait briefly.
                let mut spins = 0u32;
                while tk == CLAIMING | who.ticket {
                    spins += 1;
                    if spins > 2000 {
                        return Some(Err(Found::Busy));
                    }
                    if spins > 100 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                    tk = s.ticket();
                }
            }
            if tk == who.ticket {
                if !s.same_client(who) {
                    return Some(Err(Found::BoundElsewhere));
                }
                return Some(Ok(i));
            }
        }
        None
    }

    /// Hot path, every request with a pass: whether `slot` is still held by this ticket,
    /// visitor and binding; if so records activity (at most one store a second).
    #[inline]
    pub(super) fn touch(&self, slot: u32, who: Occupant, now_ms: u64) -> Touched {
        let Some(s) = self.get(slot) else {
            return Touched::Gone;
        };
        let tk = s.ticket();
        if tk == who.ticket {
            if !s.same_client(who) {
                return Touched::BoundElsewhere;
            }
            let now_s = secs(now_ms);
            if s.last_seen.load(Ordering::Relaxed) != now_s {
                s.last_seen.store(now_s, Ordering::Relaxed);
            }
            return Touched::Held;
        }
        if tk == 0 {
            return Touched::Free;
        }
        Touched::Gone
    }

    /// Takes slot `slot` for `who` if it is free (a pass re-claiming its slot after a restart).
    pub(super) fn take_at(&self, slot: u32, who: Occupant, now_ms: u64) -> bool {
        let Some(s) = self.get(slot) else {
            return false;
        };
        if !s.take(who, secs(now_ms)) {
            return false;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Frees `slot` if `ticket` holds it.
    pub(super) fn release(&self, slot: u32, ticket: u64) -> bool {
        let Some(s) = self.get(slot) else {
            return false;
        };
        if ticket == 0
            || s.ticket
                .compare_exchange(ticket, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// The tickets of the slots seen at or after second `since` (all held slots for 0).
    pub(super) fn tickets_seen_since(&self, since: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            let Some(s) = self.get(i) else { continue };
            let tk = s.ticket();
            if tk != 0 && tk & CLAIMING == 0 && s.last_seen.load(Ordering::Relaxed) >= since {
                out.push(tk);
            }
        }
        out
    }

    /// Every occupant held here (re-reported with their owner after the store lost its data).
    pub(super) fn occupants(&self) -> Vec<Occupant> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            let Some(s) = self.get(i) else { continue };
            let tk = s.ticket();
            if tk != 0 && tk & CLAIMING == 0 {
                let who = Occupant {
                    ticket: tk,
                    visitor: s.visitor.load(Ordering::Acquire),
                    binding: s.binding.load(Ordering::Acquire),
                };
                // Released or taken by another meanwhile: not this occupant's facts.
                if s.ticket() == tk {
                    out.push(who);
                }
            }
        }
        out
    }

    /// Frees the slot `ticket` holds, wherever it is (a shared store said its session ended).
    pub(super) fn release_ticket(&self, ticket: u64) -> bool {
        (0..self.len()).any(|i| self.release(i, ticket))
    }

    /// Frees every slot not seen for `session_ms`, calling `freed` once for each. Returns how
    /// many were freed.
    pub(super) fn expire_idle(&self, now_ms: u64, session_ms: u64, mut freed: impl FnMut()) -> u64 {
        let session_s = u32::try_from(session_ms / 1000).unwrap_or(u32::MAX);
        let now_s = secs(now_ms);
        let mut n = 0u64;
        for i in 0..self.len() {
            let Some(s) = self.get(i) else { continue };
            let tk = s.ticket();
            if tk == 0 || tk & CLAIMING != 0 {
                continue;
            }
            let seen = s.last_seen.load(Ordering::Relaxed);
            if now_s.saturating_sub(seen) >= session_s
                && s.ticket
                    .compare_exchange(tk, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.active.fetch_sub(1, Ordering::AcqRel);
                freed();
                n += 1;
            }
        }
        n
    }

    /// The slots held, for a snapshot.
    pub(super) fn snapshot(&self) -> Vec<SlotState> {
        let mut slots = Vec::with_capacity(self.active() as usize);
        for i in 0..self.len() {
            let Some(s) = self.get(i) else { continue };
            let tk = s.ticket();
            if tk == 0 || tk & CLAIMING != 0 {
                continue;
            }
            slots.push(SlotState {
                index: i,
                ticket: tk,
                visitor: s.visitor.load(Ordering::Relaxed),
                binding: s.binding.load(Ordering::Relaxed),
                last_seen_ms: EPOCH_MS + u64::from(s.last_seen.load(Ordering::Relaxed)) * 1000,
            });
        }
        slots
    }

    /// Frees every slot (a restored snapshot replaces them); the count is set by
    /// [`SlotTable::set_active`].
    pub(super) fn clear(&self) {
        for i in 0..self.len() {
            if let Some(s) = self.get(i) {
                s.ticket.store(0, Ordering::Release);
            }
        }
    }

    /// Puts a saved slot back (allocating up to its index); false if its index is out of
    /// range or the slot is taken already. Does not count it.
    pub(super) fn restore(&self, st: &SlotState) -> bool {
        if st.index >= MAX_CAPACITY {
            return false;
        }
        if st.index >= self.len() {
            self.ensure(st.index + 1);
        }
        let Some(s) = self.get(st.index) else {
            return false;
        };
        if s.ticket() != 0 {
            return false;
        }
        s.fill(
            Occupant {
                ticket: st.ticket,
                visitor: st.visitor,
                binding: st.binding,
            },
            secs(st.last_seen_ms),
        );
        true
    }

    /// Sets the number of slots held (after [`SlotTable::restore`]).
    pub(super) fn set_active(&self, n: u32) {
        self.active.store(n, Ordering::Release);
    }
}

/// Why [`SlotTable::find`] found no usable slot for a ticket that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// A concurrent claim of the same ticket is still filling its slot.
    Busy,
    /// The slot is held for another visitor or binding.
    BoundElsewhere,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ticket: u64) -> Occupant {
        Occupant {
            ticket,
            visitor: ticket * 3,
            binding: 1,
        }
    }

    #[test]
    fn grab_touch_release_and_expire() {
        let t = SlotTable::new();
        assert_eq!(t.grab(who(1), 0), None, "no segment yet");
        t.ensure(1);
        assert_eq!(t.len(), SEGMENT_SLOTS);
        let s = t.grab(who(1), 1_000).unwrap();
        assert_eq!(t.active(), 1);
        assert_eq!(t.find(who(1)), Some(Ok(s)));
        let copy = Occupant {
            binding: 2,
            ..who(1)
        };
        assert_eq!(t.find(copy), Some(Err(Found::BoundElsewhere)));
        assert_eq!(t.touch(s, copy, 1_000), Touched::BoundElsewhere);
        assert_eq!(t.touch(s, who(1), 5_000), Touched::Held);
        assert_eq!(t.touch(s, who(2), 5_000), Touched::Gone);
        assert_eq!(t.touch(u32::MAX, who(1), 5_000), Touched::Gone);
        // Seen at 5 s: still there at 9.9 s with a 5 s session, gone at 10 s.
        let mut freed = 0;
        assert_eq!(t.expire_idle(9_900, 5_000, || freed += 1), 0);
        assert_eq!(t.expire_idle(10_000, 5_000, || freed += 1), 1);
        assert_eq!((freed, t.active()), (1, 0));
        assert_eq!(t.touch(s, who(1), 10_000), Touched::Free);
        assert!(t.take_at(s, who(1), 10_000));
        assert!(!t.take_at(s, who(2), 10_000), "taken");
        assert!(!t.release(s, 2));
        assert!(t.release(s, 1));
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn snapshot_and_restore_keep_index_and_last_seen() {
        let t = SlotTable::new();
        t.ensure(1);
        let s = t.grab(who(7), 42_000).unwrap();
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!((snap[0].index, snap[0].last_seen_ms), (s, 42_000));
        let u = SlotTable::new();
        let far = SlotState {
            index: 5000,
            ..snap[0]
        };
        assert!(u.restore(&far), "allocates up to the index");
        assert!(!u.restore(&far), "taken");
        assert!(u.len() > 5000);
        assert_eq!(u.touch(5000, who(7), 50_000), Touched::Held);
        u.clear();
        assert_eq!(u.touch(5000, who(7), 50_000), Touched::Free);
    }
}
