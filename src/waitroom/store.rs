//! Admission state that may later be shared between proxy nodes, and the
//! serializable gate snapshot used to survive restarts.
//!
//! The [`AdmissionStore`] holds the queue counters (next ticket, serving) and
//! the room accounting (`occupied` = active sessions + pending reservations).
//! The per-request hot path ([`super::engine::Gate::touch`]) never calls it:
//! slots stay local to a node. The default [`MemoryStore`] is a handful of
//! atomics.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Queue counters and room accounting, possibly shared between nodes.
///
/// Ticket numbers start at 1 (0 means "no ticket"). `serving` is the first
/// ticket *not yet* admitted: tickets `< serving` are admitted, a waiting
/// ticket has `ticket - serving` people ahead of it.
pub trait AdmissionStore: Send + Sync + fmt::Debug {
    /// Hands out the next ticket number.
    fn take_ticket(&self) -> u64;
    /// The number the next arrival will get (tickets issued so far + 1).
    fn next_ticket(&self) -> u64;
    /// The first ticket not yet admitted.
    fn serving(&self) -> u64;
    /// Moves `serving` from `from` to `to` if it is still `from`; false if
    /// someone else moved it. Only the gate controller calls this.
    fn advance_serving(&self, from: u64, to: u64) -> bool;
    /// Reserves up to `n` places of room while keeping `occupied <= capacity`;
    /// returns how many were reserved (0..=n).
    fn reserve(&self, n: u32, capacity: u32) -> u32;
    /// Gives back `n` places (a session ended or reservations were abandoned).
    fn unreserve(&self, n: u32);
    /// Places in use: active sessions plus pending reservations.
    fn occupied(&self) -> u32;
    /// The counters, for snapshots.
    fn counters(&self) -> StoreCounters;
    /// Overwrites the counters (restore from a snapshot, before traffic).
    fn restore(&self, counters: StoreCounters);
}

/// The shared counters of an [`AdmissionStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    /// Next ticket number to hand out.
    pub next_ticket: u64,
    /// First ticket not yet admitted.
    pub serving: u64,
    /// Active sessions plus pending reservations.
    pub occupied: u32,
}

/// Default in-process store: three atomics.
#[derive(Debug)]
pub struct MemoryStore {
    next_ticket: AtomicU64,
    serving: AtomicU64,
    occupied: AtomicU32,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            next_ticket: AtomicU64::new(1),
            serving: AtomicU64::new(1),
            occupied: AtomicU32::new(0),
        }
    }
}

impl AdmissionStore for MemoryStore {
    #[inline]
    fn take_ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::AcqRel)
    }

    #[inline]
    fn next_ticket(&self) -> u64 {
        self.next_ticket.load(Ordering::Acquire)
    }

    #[inline]
    fn serving(&self) -> u64 {
        self.serving.load(Ordering::Acquire)
    }

    fn advance_serving(&self, from: u64, to: u64) -> bool {
        self.serving
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn reserve(&self, n: u32, capacity: u32) -> u32 {
        let mut got = 0;
        let _ = self
            .occupied
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                got = capacity.saturating_sub(o).min(n);
                (got > 0).then_some(o + got)
            });
        got
    }

    fn unreserve(&self, n: u32) {
        let _ = self
            .occupied
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_sub(n))
            });
    }

    #[inline]
    fn occupied(&self) -> u32 {
        self.occupied.load(Ordering::Acquire)
    }

    fn counters(&self) -> StoreCounters {
        StoreCounters {
            next_ticket: self.next_ticket(),
            serving: self.serving(),
            occupied: self.occupied(),
        }
    }

    fn restore(&self, c: StoreCounters) {
        self.next_ticket
            .store(c.next_ticket.max(1), Ordering::Release);
        self.serving
            .store(c.serving.clamp(1, c.next_ticket.max(1)), Ordering::Release);
        self.occupied.store(c.occupied, Ordering::Release);
    }
}

/// Current [`GateSnapshot::format`].
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Everything needed to bring a gate back after a restart: queue positions,
/// admitted sessions and outstanding reservations. Written by the proxy to a
/// state file on shutdown and periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSnapshot {
    /// Snapshot format version ([`SNAPSHOT_FORMAT`]).
    pub format: u32,
    /// When the snapshot was taken, ms since the UNIX epoch.
    pub taken_at_ms: u64,
    /// Next ticket number to hand out.
    pub next_ticket: u64,
    /// First ticket not yet admitted.
    pub serving: u64,
    /// Slots in use.
    pub slots: Vec<SlotState>,
    /// Admitted-but-not-yet-arrived reservations still counted as load.
    pub reservations: Vec<ReservationState>,
    /// Lifetime counters.
    pub counters: SnapshotCounters,
}

/// One occupied slot in a [`GateSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// Slot index (passes carry it).
    pub index: u32,
    /// Ticket holding the slot.
    pub ticket: u64,
    /// Low 64 bits of the visitor id.
    pub visitor: u64,
    /// Client binding hash.
    pub binding: u32,
    /// Last request, ms since the UNIX epoch (second resolution).
    pub last_seen_ms: u64,
}

/// One batch of admitted tickets `[start, end)` with arrivals still pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    /// First ticket of the batch.
    pub start: u64,
    /// One past the last ticket of the batch.
    pub end: u64,
    /// When the batch was last extended, ms since the UNIX epoch.
    pub admitted_at_ms: u64,
    /// Tickets of the batch that have not claimed a slot yet.
    pub pending: u32,
}

/// Lifetime event counters kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCounters {
    /// Sessions ended by the portal (release).
    pub released: u64,
    /// Admitted tickets that never arrived within the arrival timeout.
    pub abandoned: u64,
    /// Sessions ended by inactivity.
    pub expired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_counters() {
        let s = MemoryStore::default();
        assert_eq!(s.take_ticket(), 1);
        assert_eq!(s.take_ticket(), 2);
        assert_eq!(s.next_ticket(), 3);
        assert_eq!(s.serving(), 1);
        assert!(s.advance_serving(1, 2));
        assert!(!s.advance_serving(1, 3));
        assert_eq!(s.reserve(5, 3), 3);
        assert_eq!(s.reserve(1, 3), 0);
        s.unreserve(2);
        assert_eq!(s.occupied(), 1);
        s.unreserve(10);
        assert_eq!(s.occupied(), 0);
        s.restore(StoreCounters {
            next_ticket: 10,
            serving: 20,
            occupied: 4,
        });
        // serving never ahead of next_ticket.
        assert_eq!(s.counters().serving, 10);
        assert_eq!(s.counters().occupied, 4);
    }
}
