//! The store boundary: admission state that may be shared between proxy nodes.
//!
//! The [`AdmissionStore`] holds the queue counters (next ticket, serving), the room
//! accounting (`occupied` = active sessions + pending reservations) and the late line
//! ([`super::late`]: admitted people back after their held place lapsed, for whom free room is
//! kept before anyone new is admitted). The gate
//! ([`super::Gate`]) reaches them only through this trait, never through a map or an atomic of
//! its own, so a shared store (several nodes behind one queue) plugs in with
//! [`Gate::with_store`](super::Gate::with_store) without touching the request path. The
//! default [`MemoryStore`] is a handful of atomics and the late line under a lock.
//!
//! What stays local to a node, by design:
//! * the slot table ([`super::slots`]): the per-request hot path
//!   ([`Gate::touch`](super::Gate::touch)) never calls the store, so an admitted user's
//!   clicks cost no round trip. A pass names a slot of the node that issued it; the node
//!   counts the slot's place in the shared `occupied`.
//! * the reservation batches (`reservations.rs`), which decide which admitted ticket
//!   may use held room; the held room itself is counted in `occupied`.
//! * the claimed-once bitmap (`claims.rs`).
//! * the pace (`pace.rs`), measured from the store's `serving` and `occupied`: with a
//!   shared store every node measures the whole line's pace.
//!
//! # What a shared implementation must provide
//!
//! * `take_ticket(below)`: a unique, increasing number per call across all nodes (an atomic
//!   increment bounded by `below`, e.g. a Redis script around `INCR`); `next_ticket` reads it
//!   without taking one. The bound is the node's durably reserved ceiling
//!   ([`super::sequence`]): a store that is itself durable may be given `u64::MAX`.
//! * `advance_serving(from, to)`: a compare-and-set, so two controllers never admit the same
//!   tickets twice; a `false` makes the gate undo its reservation and try again next tick.
//!   `serving` never moves backwards and never passes `next_ticket`.
//! * `reserve(n, capacity)` and `unreserve(n)`: atomic read-modify-write of `occupied`
//!   (reserve never lets it exceed `capacity`, unreserve saturates at 0). Every unit reserved
//!   by a node is given back by that node exactly once (a session ends or expires, a
//!   reservation is abandoned), so a node that dies leaves its places counted: a shared store
//!   needs per-node accounting or leases to give them back.
//! * the late line: `late_arrive` keeps each ticket's place in the order it first came back
//!   (a late arrival may come back to another node), `late_len` is read on every arrival and
//!   admission (cache it, as the memory store does), entries not seen for
//!   [`LATE_IDLE_MS`](super::late::LATE_IDLE_MS) leave at `late_expire`, and the line stays
//!   bounded.
//! * `counters` and `restore`: a consistent read for snapshots, and a write used only before
//!   traffic (restore from the state file).
//! * Latency: the gate calls the store on arrivals, claims, releases and ticks, and under its
//!   controller lock during admissions; never on a pass's request.
//!
//! A shared claimed-once bitmap (a ticket cookie replayed on another node) would be the next
//! thing to move behind this trait; with one node it is exact as it is.
//!
//! # Shared mode
//!
//! Per-node reservations and per-node `occupied` units do not survive a fleet without
//! stickiness: a person admitted by the leader's controller arrives at another node, whose
//! reservation batches know nothing of them, and their next request lands on a third. A store
//! shared by several nodes therefore also implements [`SharedAdmission`] (returned by
//! [`AdmissionStore::shared`]), and the gate then lets the store decide, atomically for the
//! whole fleet: admissions (serving moved and a batch of places held, in one step, by the
//! leader only), first claims (a place taken from the ticket's batch, or free room, or the late
//! line), sessions keyed by *ticket* (so it does not matter which node sees their requests),
//! their idle expiry and release, and the abandonment of places held. `reserve`/`unreserve`
//! are then unused. The slot table stays a node-local cache for the lock-free hot path; a
//! pass whose slot is not held on this node is honoured from its signature and recorded in a
//! local table of visits, reported to the store in batches by the controller
//! ([`SharedAdmission::touch`]), which answers which sessions have ended.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::late::LateLine;

/// Queue counters, room accounting and the late line, possibly shared between nodes.
///
/// Ticket numbers start at 1 (0 means "no ticket"). `serving` is the first
/// ticket *not yet* admitted: tickets `< serving` are admitted, a waiting
/// ticket has `ticket - serving` people ahead of it.
pub trait AdmissionStore: Send + Sync + fmt::Debug {
    /// Hands out the next ticket number if it is below `below` (the ceiling of the numbers
    /// reserved durably, `u64::MAX` when unbounded); `None` (and nothing taken) otherwise.
    fn take_ticket(&self, below: u64) -> Option<u64>;
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
    /// Records that late arrival `ticket` is here now: it joins the back of the late line if
    /// new (unless the line is full), else its visit is refreshed. Returns how many late
    /// arrivals came back before it; a shared store returns [`INSIDE`] for a ticket that holds
    /// a place already (claimed on another node), which is not late.
    fn late_arrive(&self, ticket: u64, now_ms: u64) -> u64;
    /// `ticket` took a place: it leaves the late line. Returns whether it was in it.
    fn late_leave(&self, ticket: u64) -> bool;
    /// The first `n` in the late line (their held polls are woken when room frees up).
    fn late_first(&self, n: usize) -> Vec<u64>;
    /// Drops late arrivals not seen for a while. Returns how many left.
    fn late_expire(&self, now_ms: u64) -> u32;
    /// Late arrivals in the line: as much free room is kept for them. Read on every arrival
    /// and admission, so it must be cheap.
    fn late_len(&self) -> u32;
    /// Empties the late line (restore from a snapshot, before traffic).
    fn late_clear(&self);
    /// A store shared by several nodes: the decisions it takes for the whole fleet (see
    /// "Shared mode" in the module docs). `None` (the default) for a store of one node.
    fn shared(&self) -> Option<&dyn SharedAdmission> {
        None
    }
}

/// What a shared store's `late_arrive` answers for a ticket that holds a place already.
pub const INSIDE: u64 = u64::MAX;

/// Numbers at or above this are those a node hands out on its own while the shared store does
/// not answer (`fail_mode = "open-local"`): far above any number the store hands out, and
/// distinct per node ([`SharedAdmission::outage_ticket`]). The store takes their sessions in
/// when it answers again.
pub const OUTAGE_MIN: u64 = 1 << 62;

/// What a first claim found in a shared store ([`SharedAdmission::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedClaim {
    /// The ticket holds a place now (taken from its batch, from free room, or held already by
    /// the same owner on another node).
    Placed,
    /// Not admitted yet.
    NotAdmitted,
    /// The ticket's place is held by another owner (a copied ticket cookie).
    BoundElsewhere,
    /// The ticket claimed once and its session has ended.
    Used,
    /// Admitted, its held place lapsed and the room is full: in the late line behind `ahead`.
    Late {
        /// Late arrivals ahead.
        ahead: u64,
    },
    /// The store did not answer (the fail mode decides: nobody new admitted).
    Down,
}

/// The fleet-wide decisions of a store shared by several nodes (module docs, "Shared mode").
/// Every call may be a round trip; the reads (`pending`, `active`, `holds`, `is_leader`,
/// `is_up`) come from the node's mirror and cost none.
pub trait SharedAdmission: Send + Sync + fmt::Debug {
    /// Whether this node holds the leader lease: only the leader advances admissions.
    fn is_leader(&self) -> bool;
    /// Whether the store answered its last call.
    fn is_up(&self) -> bool;
    /// Admits up to `want` waiting tickets from `from` (the serving counter this node saw), as
    /// long as everyone inside and every place held stay within `room`; their places are held
    /// until `deadline_ms`. Atomic: serving moves only if it was `from`, and only for the
    /// leader. Returns how many tickets were admitted (0 when none could be).
    fn admit(&self, from: u64, want: u64, room: u32, now_ms: u64, deadline_ms: u64) -> u64;
    /// A new arrival when nobody waits: the next ticket taken, admitted and given a session
    /// for `owner` in one step, if everyone inside stays within `room`. `None`: it must queue.
    fn admit_now(&self, room: u32, owner: u64, now_ms: u64) -> Option<u64>;
    /// The first claim of admitted ticket `t` by `owner` (visitor and client binding).
    fn claim(&self, t: u64, owner: u64, capacity: u32, now_ms: u64) -> SharedClaim;
    /// Whether `t`'s admission batch still holds places (from the mirror).
    fn holds(&self, t: u64) -> bool;
    /// Ends `t`'s session now (the portal's release header). Whether it was inside.
    fn release(&self, t: u64) -> bool;
    /// Ends sessions not seen for `session_ms` and gives back places held past their deadline
    /// and late arrivals gone idle. Returns (sessions ended, places abandoned).
    fn expire(&self, now_ms: u64, session_ms: u64) -> (u64, u64);
    /// These tickets' sessions were active on this node since the last call. Returns those
    /// whose session has ended (this node must stop honouring their passes); `None` when the
    /// store did not answer (report them again).
    fn touch(&self, tickets: &[u64], now_ms: u64) -> Option<Vec<u64>>;
    /// After the store lost its data ([`SharedAdmission::wants_all_sessions`]): every session
    /// this node knows, as (ticket, owner), taken back in with their owner (so a copied ticket
    /// is still refused as bound elsewhere), unless released lately. Returns the sessions that
    /// have ended; `None` when the store did not answer (report them again).
    fn touch_all(&self, sessions: &[(u64, u64)], now_ms: u64) -> Option<Vec<u64>>;
    /// Which of these sessions have ended (nothing written): the sessions this node keeps in
    /// its cache though nobody asked for a while (released on another node, say), so that
    /// it forgets them rather than report them back after the store lost its data.
    fn check(&self, tickets: &[u64]) -> Option<Vec<u64>>;
    /// Whether the store lost its sessions (restarted empty) since this node last reported:
    /// then the next [`SharedAdmission::touch`] should carry every session this node knows,
    /// which the store takes back in (people inside keep their place).
    fn wants_all_sessions(&self) -> bool;
    /// Redis lost its data: takes back in the batches of places held for admitted people this
    /// node's mirror knew (at most as many places as it knew held), held until `deadline_ms`,
    /// so people admitted before the loss still find their place. Returns the places held again.
    fn restore_held(&self, deadline_ms: u64) -> u32;
    /// Refreshes the mirror now (one round trip): a page request of someone near the front
    /// whom this node's mirror does not show admitted yet, while another node's may.
    fn refresh(&self);
    /// While the store does not answer and the fail mode is `open-local`: how many people this
    /// node may have inside (its share of `capacity`: capacity over the nodes seen alive);
    /// `None` when the store answers, or the fail mode is `closed`.
    fn local_share(&self, capacity: u32) -> Option<u32>;
    /// A number for someone this node lets in on its own during an outage (`open-local`): at
    /// or above [`OUTAGE_MIN`], never handed out by another node or by the store.
    fn outage_ticket(&self) -> u64;
    /// The pre-queue draw at the opening that began at `opening_s` (Unix seconds): the first
    /// node to ask fixes it (`start`, `end`, `key` as it proposes), every other node gets that
    /// one. `None` when the store does not answer.
    fn agree_shuffle(
        &self,
        opening_s: i64,
        start: u64,
        end: u64,
        key: [u8; 32],
    ) -> Option<(u64, u64, [u8; 32])>;
    /// The last pre-queue draw agreed (for a node that starts after an opening).
    fn last_shuffle(&self) -> Option<(u64, u64, [u8; 32])>;
    /// Calls `f(from, to)` whenever the mirror's serving counter moves up (from the store's
    /// thread or a write), so held long polls wake within a sync of another node's admission.
    fn on_serving_moved(&self, f: Box<dyn Fn(u64, u64) + Send + Sync>);
    /// Calls `f()` on the leader whenever a session of this lane ended on another node, so
    /// the next in line is let in at once rather than at the leader's next tick.
    fn on_released(&self, f: Box<dyn Fn() + Send + Sync>);
    /// Places held for admitted people not yet arrived, fleet-wide (from the mirror).
    fn pending(&self) -> u32;
    /// People inside, fleet-wide (from the mirror).
    fn active(&self) -> u32;
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

/// Default in-process store: three atomics, and the late line under a lock with its length
/// mirrored in a fourth atomic for the lock-free paths.
pub struct MemoryStore {
    next_ticket: AtomicU64,
    serving: AtomicU64,
    occupied: AtomicU32,
    late: Mutex<LateLine>,
    /// `late.len()`, readable without the lock (0 on the fast paths).
    late_len: AtomicU32,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            next_ticket: AtomicU64::new(1),
            serving: AtomicU64::new(1),
            occupied: AtomicU32::new(0),
            late: Mutex::new(LateLine::default()),
            late_len: AtomicU32::new(0),
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("next_ticket", &self.next_ticket)
            .field("serving", &self.serving)
            .field("occupied", &self.occupied)
            .field("late", &self.late_len)
            .finish()
    }
}

impl MemoryStore {
    /// The late line, locked; `f`'s changes are mirrored in `late_len`.
    fn with_late<R>(&self, f: impl FnOnce(&mut LateLine) -> R) -> R {
        // The line stays consistent even if a holder panicked.
        let mut late: MutexGuard<'_, LateLine> =
            self.late.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut late);
        self.late_len.store(late.len(), Ordering::Release);
        r
    }
}

impl AdmissionStore for MemoryStore {
    #[inline]
    fn take_ticket(&self, below: u64) -> Option<u64> {
        if below == u64::MAX {
            return Some(self.next_ticket.fetch_add(1, Ordering::AcqRel));
        }
        self.next_ticket
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < below).then_some(n + 1)
            })
            .ok()
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

    fn late_arrive(&self, ticket: u64, now_ms: u64) -> u64 {
        self.with_late(|l| l.arrive(ticket, now_ms))
    }

    fn late_leave(&self, ticket: u64) -> bool {
        self.with_late(|l| l.leave(ticket))
    }

    fn late_first(&self, n: usize) -> Vec<u64> {
        self.with_late(|l| l.first(n))
    }

    fn late_expire(&self, now_ms: u64) -> u32 {
        self.with_late(|l| l.expire(now_ms))
    }

    #[inline]
    fn late_len(&self) -> u32 {
        self.late_len.load(Ordering::Acquire)
    }

    fn late_clear(&self) {
        self.with_late(LateLine::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_counters() {
        let s = MemoryStore::default();
        assert_eq!(s.take_ticket(u64::MAX), Some(1));
        assert_eq!(s.take_ticket(u64::MAX), Some(2));
        assert_eq!(s.next_ticket(), 3);
        // Bounded: nothing at or past the ceiling is handed out, and nothing is taken.
        assert_eq!(s.take_ticket(4), Some(3));
        assert_eq!(s.take_ticket(4), None);
        assert_eq!(s.next_ticket(), 4);
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

    #[test]
    fn memory_store_late_line_and_its_length() {
        let s = MemoryStore::default();
        assert_eq!(s.late_len(), 0);
        assert_eq!(s.late_arrive(7, 0), 0);
        assert_eq!(s.late_arrive(3, 1), 1);
        assert_eq!(s.late_len(), 2);
        assert_eq!(s.late_first(5), vec![7, 3]);
        assert!(s.late_leave(7));
        assert_eq!(s.late_len(), 1);
        assert_eq!(s.late_expire(1 + super::super::late::LATE_IDLE_MS), 1);
        assert_eq!(s.late_len(), 0);
        s.late_arrive(9, 0);
        s.late_clear();
        assert_eq!((s.late_len(), s.late_first(1)), (0, vec![]));
    }
}
