//! The late line: admitted tickets that came back after their reserved place lapsed.
//!
//! A ticket is admitted with a place held for it for `arrival_timeout`; someone who comes after
//! that (a page between two polls, a person reloading by hand) finds the place given to the
//! line. They were admitted, so they must not queue again from the back, and the status must
//! not tell them "admitted" while the gate has no place for them (that sends a page into a loop
//! between the status and the gate). They join this line instead, and the engine keeps free
//! room for them ahead of anyone new: as many places as there are late arrivals, taken by
//! whichever of them comes first. Room is not granted to one person in advance: most late
//! arrivals do not hold a poll, and a place held for one of them until they come back sits
//! idle for that long; shared, it is taken by the first of them to come.
//!
//! The line only holds people who are still there: an entry not seen (a poll or a request)
//! for [`LATE_IDLE_MS`] leaves it, longer than the longest held status poll. Memory is bounded
//! by [`LATE_MAX`] entries (about 40 bytes each); it is the engine's only per-person state
//! outside the slot table, and only for people who were admitted and came back late.

use std::collections::{HashMap, VecDeque};

/// Most late arrivals remembered at once.
pub const LATE_MAX: usize = 1 << 16;
/// An entry not seen for this long leaves the line: longer than the longest held status poll
/// (20 s) and a pause, so a page holding one is not dropped.
pub const LATE_IDLE_MS: u64 = 25_000;

/// The late line of one gate (kept by its [`AdmissionStore`](super::store::AdmissionStore):
/// the [`MemoryStore`](super::store::MemoryStore) holds it under a lock of its own).
#[derive(Debug, Default)]
pub struct LateLine {
    /// ticket → (sequence number, last seen).
    entries: HashMap<u64, (u64, u64)>,
    /// Tickets in the order they came back, with their sequence numbers.
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
}

impl LateLine {
    /// Late arrivals in the line.
    pub fn len(&self) -> u32 {
        u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
    }

    /// Whether nobody is in the line.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `ticket` is here now: joins the back of the line if new (unless the line
    /// is full), else refreshes it. Returns how many late arrivals came back before it.
    pub fn arrive(&mut self, ticket: u64, now_ms: u64) -> u64 {
        if let Some(e) = self.entries.get_mut(&ticket) {
            e.1 = now_ms;
            let seq = e.0;
            return self.ahead_of(seq);
        }
        let ahead = self.order.len() as u64;
        if self.entries.len() < LATE_MAX {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.entries.insert(ticket, (seq, now_ms));
            self.order.push_back((seq, ticket));
        }
        ahead
    }

    fn ahead_of(&self, seq: u64) -> u64 {
        self.order.partition_point(|&(s, _)| s < seq) as u64
    }

    /// `ticket` took a place: it leaves the line. Returns whether it was in it.
    pub fn leave(&mut self, ticket: u64) -> bool {
        match self.entries.remove(&ticket) {
            Some((seq, _)) => {
                if let Ok(i) = self.order.binary_search_by_key(&seq, |&(s, _)| s) {
                    self.order.remove(i);
                }
                true
            }
            None => false,
        }
    }

    /// The first `n` in the line (to wake their held polls when room frees up).
    pub fn first(&self, n: usize) -> Vec<u64> {
        self.order.iter().take(n).map(|&(_, t)| t).collect()
    }

    /// Drops entries not seen for [`LATE_IDLE_MS`]. Returns how many left.
    pub fn expire(&mut self, now_ms: u64) -> u32 {
        if self.entries.is_empty() {
            return 0;
        }
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.1.saturating_add(LATE_IDLE_MS) > now_ms);
        let gone = before - self.entries.len();
        if gone > 0 {
            let entries = &self.entries;
            self.order.retain(|(_, t)| entries.contains_key(t));
        }
        u32::try_from(gone).unwrap_or(u32::MAX)
    }

    /// Forgets everyone (a restored snapshot replaces the gate's state).
    pub fn clear(&mut self) {
        *self = LateLine::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_the_order_they_came_back() {
        let mut l = LateLine::default();
        assert_eq!(l.arrive(30, 0), 0);
        assert_eq!(l.arrive(10, 1), 1);
        assert_eq!(l.arrive(20, 2), 2);
        // Coming back again keeps the place in the late line.
        assert_eq!(l.arrive(10, 3), 1);
        assert_eq!(l.first(2), vec![30, 10]);
        assert!(l.leave(30));
        assert!(!l.leave(30), "left once");
        assert_eq!(l.arrive(10, 4), 0);
        assert_eq!(l.arrive(20, 4), 1);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn people_gone_leave_the_line() {
        let mut l = LateLine::default();
        l.arrive(1, 0);
        l.arrive(2, 0);
        l.arrive(3, 0);
        // 3 keeps polling; 1 and 2 are gone.
        l.arrive(3, 20_000);
        assert_eq!(l.expire(LATE_IDLE_MS - 1), 0);
        assert_eq!(l.expire(LATE_IDLE_MS), 2);
        assert_eq!(l.first(5), vec![3]);
        assert_eq!(l.arrive(3, LATE_IDLE_MS), 0);
        assert!(!l.is_empty());
    }

    #[test]
    fn the_line_is_bounded() {
        let mut l = LateLine::default();
        for t in 0..LATE_MAX as u64 + 10 {
            l.arrive(t, 0);
        }
        assert_eq!(l.len() as usize, LATE_MAX);
        // Someone who could not join is told how many are ahead.
        assert_eq!(l.arrive(LATE_MAX as u64 + 5, 1), LATE_MAX as u64);
        assert_eq!(l.len() as usize, LATE_MAX);
    }
}
