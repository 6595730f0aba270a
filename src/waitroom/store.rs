//! The store boundary: admission state that may be shared between proxy nodes.
//!
//! The [`AdmissionStore`] holds the queue counters (next ticket, serving) and the room
//! accounting (`occupied` = active sessions + pending reservations). The gate
//! ([`super::Gate`]) reaches them only through this trait, never through a map or an atomic of
//! its own, so a shared store (several nodes behind one queue) plugs in with
//! [`Gate::with_store`](super::Gate::with_store) without touching the request path. The
//! default [`MemoryStore`] is a handful of atomics.
//!
//! What stays local to a node, by design:
//! * the slot table ([`super::slots`]): the per-request hot path
//!   ([`Gate::touch`](super::Gate::touch)) never calls the store, so an admitted user's
//!   clicks cost no round trip. A pass names a slot of the node that issued it; the node
//!   counts the slot's place in the shared `occupied`.
//! * the reservation batches ([`super::reservations`]), which decide which admitted ticket
//!   may use held room; the held room itself is counted in `occupied`.
//! * the claimed-once bitmap ([`super::claims`]) and the late line ([`super::late`]), kept
//!   under the gate's controller lock.
//! * the pace ([`super::pace`]), measured from the store's `serving` and `occupied`: with a
//!   shared store every node measures the whole line's pace.
//!
//! # What a shared implementation must provide
//!
//! * `take_ticket`: a unique, increasing number per call across all nodes (an atomic
//!   increment, e.g. Redis `INCR`); `next_ticket` reads it without taking one.
//! * `advance_serving(from, to)`: a compare-and-set, so two controllers never admit the same
//!   tickets twice; a `false` makes the gate undo its reservation and try again next tick.
//!   `serving` never moves backwards and never passes `next_ticket`.
//! * `reserve(n, capacity)` and `unreserve(n)`: atomic read-modify-write of `occupied`
//!   (reserve never lets it exceed `capacity`, unreserve saturates at 0). Every unit reserved
//!   by a node is given back by that node exactly once (a session ends or expires, a
//!   reservation is abandoned), so a node that dies leaves its places counted: a shared store
//!   needs per-node accounting or leases to give them back.
//! * `counters` and `restore`: a consistent read for snapshots, and a write used only before
//!   traffic (restore from the state file).
//! * Latency: the gate calls the store on arrivals, claims, releases and ticks, and under its
//!   controller lock during admissions; never on a pass's request.
//!
//! A shared late line (admitted people who come back late to another node) and a shared
//! claimed-once bitmap (a ticket cookie replayed on another node) would be the next things to
//! move behind this trait; with one node they are exact as they are.

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
