//! One gate's admission: the [`Gate`] that composes the mechanisms of this directory.
//!
//! * A waiting visitor costs nothing here: they hold a signed ticket number;
//!   their position is `ticket - serving` (the counters live in the
//!   [`AdmissionStore`], which a shared store can implement for several nodes).
//! * The controller ([`Gate::tick`], called every 100–250 ms) expires idle
//!   sessions ([`super::slots`]) and stale reservations (`reservations.rs`),
//!   then advances `serving` by as many tickets as there is room for
//!   (capacity − active − pending), limited by a token bucket refilled at
//!   `admit_per_minute` (`bucket.rs`), and measures the line's pace
//!   (`pace.rs`).
//! * An admitted ticket claims a slot on its first request ([`Gate::claim`]);
//!   every later request calls [`Gate::touch`], which is lock-free and
//!   allocation-free: a few atomic loads and at most one store.
//! * An admitted ticket that comes back after its reservation lapsed to a full room joins the
//!   late line ([`super::late`], kept by the store): free room is kept for the late line before
//!   anyone new is admitted, and [`Gate::turn`] tells it the truth meanwhile
//!   (the status says "admitted" only when a claim would succeed).
//! * Each ticket claims once (`claims.rs`), so a replayed ticket cookie cannot take
//!   several slots.
//!
//! * With a state file, numbers come from blocks reserved on disk first
//!   ([`super::sequence`]): a crash leaves a gap in the numbers, never a duplicate.
//!
//! Pure logic, no I/O: the room drives it with the clock's `now_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::answers::{Arrival, ClaimError, GateStats, Position, TickReport, TouchError, Turn};
use super::bucket::TokenBucket;
use super::claims::{ClaimBits, CLAIM_WINDOW};
use super::pace::{Pace, PaceGauge};
use super::reservations::{Cursor, Reservations};
use super::sequence::{Sequence, Unsure};
use super::settings::{GateSettings, LiveSettings, Mode};
use super::slots::{Found, Occupant, SlotTable, Touched, CLAIMING, MAX_CAPACITY};
use super::snapshot::{GateSnapshot, RestoreError, SnapshotCounters, SNAPSHOT_FORMAT};
use super::store::{AdmissionStore, MemoryStore, SharedAdmission, SharedClaim, StoreCounters};
use super::visits::Visits;

/// Controller state, under one lock: touched by `tick`, `admit`, a direct admission, and
/// snapshots.
struct Controller {
    bucket: TokenBucket,
    pace: Pace,
    /// The reservation ring's write position.
    cursor: Cursor,
}

/// One gate: queue counters (in the store), slot table and controller.
pub struct Gate {
    store: Box<dyn AdmissionStore>,
    settings: LiveSettings,
    slots: SlotTable,
    claims: ClaimBits,
    reservations: Reservations,
    released: AtomicU64,
    expired: AtomicU64,
    pace: PaceGauge,
    /// Passes issued in `[from, until)` (between the restored snapshot and the restart) may
    /// re-claim an empty slot.
    reclaim_from_ms: AtomicU64,
    reclaim_until_ms: AtomicU64,
    /// The ceiling of the numbers reserved durably, and the arrival rate that sizes blocks.
    seq: Sequence,
    /// After a crash: the numbers that may never have been handed out (set before traffic).
    unsure: std::sync::OnceLock<Unsure>,
    ctl: Mutex<Controller>,
    /// Shared store only: passes honoured here whose slot is not held here.
    visits: Visits,
    /// Shared store only: the second of the last activity report (`Gate::tick`).
    reported_s: std::sync::atomic::AtomicU32,
    /// Shared store only: ticks, to check the cache every `CHECK_EVERY`.
    checks: AtomicU64,
}

/// Shared store only: every this many ticks (2 s at the default 200 ms), the sessions in this
/// node's cache are checked against the store.
const CHECK_EVERY: u64 = 10;

/// The owner of a session in a shared store: visitor and client binding together.
fn owner_of(who: Occupant) -> u64 {
    who.visitor ^ u64::from(who.binding).rotate_left(32)
}

/// A pass issued without a slot on this node (shared store: the slot table was full here):
/// honoured through the visits table on every node.
pub const NO_SLOT: u32 = u32::MAX;

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("store", &self.store)
            .field("capacity", &self.settings.capacity())
            .field("active", &self.slots.active())
            .field("pending", &self.reservations.pending())
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate with the in-memory store. `now_ms` is ms since the UNIX epoch.
    pub fn new(settings: &GateSettings, now_ms: u64) -> Self {
        Self::with_store(settings, Box::new(MemoryStore::default()), now_ms)
    }

    /// A gate over a custom [`AdmissionStore`].
    pub fn with_store(
        settings: &GateSettings,
        store: Box<dyn AdmissionStore>,
        now_ms: u64,
    ) -> Self {
        let gate = Self {
            store,
            settings: LiveSettings::default(),
            slots: SlotTable::new(),
            claims: ClaimBits::new(),
            reservations: Reservations::new(),
            released: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            pace: PaceGauge::default(),
            reclaim_from_ms: AtomicU64::new(0),
            reclaim_until_ms: AtomicU64::new(0),
            seq: Sequence::default(),
            unsure: std::sync::OnceLock::new(),
            ctl: Mutex::new(Controller {
                bucket: TokenBucket::new(now_ms),
                pace: Pace::default(),
                cursor: Cursor::default(),
            }),
            visits: Visits::new(),
            reported_s: std::sync::atomic::AtomicU32::new(0),
            checks: AtomicU64::new(0),
        };
        gate.apply(settings);
        gate
    }

    /// Applies new settings at runtime (capacity may grow or shrink; existing
    /// sessions are kept; slots are allocated for the new capacity).
    pub fn apply(&self, s: &GateSettings) {
        self.slots.ensure(s.capacity.min(MAX_CAPACITY));
        self.settings.apply(s);
    }

    /// The settings in force.
    pub fn settings(&self) -> GateSettings {
        self.settings.get()
    }

    /// The current mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        self.settings.mode()
    }

    /// Switches the mode at runtime.
    pub fn set_mode(&self, mode: Mode) {
        self.settings.set_mode(mode);
    }

    /// The store's fleet-wide decisions, when it is shared by several nodes.
    #[inline]
    fn shared(&self) -> Option<&dyn SharedAdmission> {
        self.store.shared()
    }

    /// Whether this gate's store is shared by several nodes.
    pub fn is_shared(&self) -> bool {
        self.shared().is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        // The controller state stays consistent even if a holder panicked.
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ------------------------------------------------------------------
    // Waiting side
    // ------------------------------------------------------------------

    /// Takes a ticket (lock-free; the visitor waits). `None` when the numbers reserved
    /// durably are all handed out ([`Gate::reserve_numbers`]): the arrival must come back
    /// rather than get a number that a crash could hand out again.
    #[inline]
    pub fn take_ticket(&self) -> Option<u64> {
        let t = self.store.take_ticket(self.seq.ceiling());
        if t.is_none() {
            self.seq.refuse();
        }
        t
    }

    /// A new arrival: in `open` mode with room, within the rate cap and nobody
    /// waiting, the visitor is admitted at once and claims a slot; otherwise
    /// they get a ticket and wait ([`Arrival::Unnumbered`] if no number can be handed out).
    pub fn arrive(&self, visitor: u64, binding: u32, now_ms: u64) -> Arrival {
        if let Some(a) = self.try_admit_now(visitor, binding, now_ms) {
            return a;
        }
        match self.take_ticket() {
            Some(ticket) => Arrival::Queued { ticket },
            None => Arrival::Unnumbered,
        }
    }

    /// The direct-admission half of [`Gate::arrive`]: `None` when the visitor
    /// must queue (no ticket taken in that case).
    pub fn try_admit_now(&self, visitor: u64, binding: u32, now_ms: u64) -> Option<Arrival> {
        if let Some(sh) = self.shared().filter(|sh| !sh.is_up()) {
            return self.admit_local(sh, visitor, binding, now_ms);
        }
        if self.mode() != Mode::Open || self.store.occupied() >= self.room_for_new() {
            return None;
        }
        if let Some(sh) = self.shared() {
            if self.store.serving() != self.store.next_ticket() {
                return None;
            }
            return self.admit_now_shared(sh, visitor, binding, now_ms);
        }
        // Someone waits when a number was taken and not served, except the one number a direct
        // admission holds between taking it and serving it (under the lock below): an arrival
        // that looks then must wait for the lock and see, not be queued behind nobody.
        if self
            .store
            .next_ticket()
            .saturating_sub(self.store.serving())
            > 1
        {
            return None;
        }
        let mut ctl = self.lock();
        let apm = self.settings.admit_per_minute();
        ctl.bucket.refill(apm, now_ms);
        if apm > 0 && ctl.bucket.allowance(apm) == 0 {
            return None;
        }
        let serving = self.store.serving();
        if serving != self.store.next_ticket() {
            return None;
        }
        if self.store.reserve(1, self.room_for_new()) == 0 {
            return None;
        }
        let Some(t) = self.take_ticket() else {
            self.store.unreserve(1);
            return Some(Arrival::Unnumbered);
        };
        if t != serving || !self.advance_locked(&mut ctl, t, 1, 1, now_ms) {
            // Someone took a ticket in between: they are ahead of us.
            self.store.unreserve(1);
            return Some(Arrival::Queued { ticket: t });
        }
        ctl.bucket.spend(apm, 1);
        drop(ctl);
        let who = Occupant {
            ticket: t,
            visitor,
            binding,
        };
        Some(match self.claim(who, now_ms) {
            Ok(slot) => Arrival::Admitted { ticket: t, slot },
            // Admitted but no slot (should not happen): the ticket can claim
            // on its next request.
            Err(_) => Arrival::Queued { ticket: t },
        })
    }

    /// Direct admission through a shared store: one round trip takes the next ticket, admits it
    /// and opens its session if nobody waits and there is room fleet-wide. With a rate cap only
    /// the leader lets people in directly, from the bucket it paces every admission with (a
    /// bucket per node would let each node spend the whole rate); elsewhere they take a number
    /// and the leader lets them in at its next tick.
    fn admit_now_shared(
        &self,
        sh: &dyn SharedAdmission,
        visitor: u64,
        binding: u32,
        now_ms: u64,
    ) -> Option<Arrival> {
        let who = Occupant {
            ticket: 0,
            visitor,
            binding,
        };
        let apm = self.settings.admit_per_minute();
        let t = if apm > 0 {
            if !sh.is_leader() {
                return None;
            }
            let mut ctl = self.lock();
            ctl.bucket.refill(apm, now_ms);
            if ctl.bucket.allowance(apm) == 0 {
                return None;
            }
            let t = sh.admit_now(self.room_for_new(), owner_of(who), now_ms)?;
            ctl.bucket.spend(apm, 1);
            t
        } else {
            sh.admit_now(self.room_for_new(), owner_of(who), now_ms)?
        };
        let who = Occupant { ticket: t, ..who };
        let slot = self.slots.grab(who, now_ms).unwrap_or(NO_SLOT);
        Some(Arrival::Admitted { ticket: t, slot })
    }

    /// The shared store does not answer: with `fail_mode = "open-local"` this node lets new
    /// arrivals in on its own while the people it holds slots for stay within its share of the
    /// capacity, with numbers of its own ([`SharedAdmission::outage_ticket`]); the store takes
    /// their sessions in when it answers again. People already waiting keep their number (the
    /// line moves again with the store). With `closed`, nobody.
    fn admit_local(
        &self,
        sh: &dyn SharedAdmission,
        visitor: u64,
        binding: u32,
        now_ms: u64,
    ) -> Option<Arrival> {
        let share = sh.local_share(self.settings.capacity())?;
        if self.mode() != Mode::Open || self.slots.active() >= share {
            return None;
        }
        let who = Occupant {
            ticket: sh.outage_ticket(),
            visitor,
            binding,
        };
        let slot = self.slots.grab(who, now_ms)?;
        Some(Arrival::Admitted {
            ticket: who.ticket,
            slot,
        })
    }

    /// The capacity new admissions may fill: late arrivals were admitted once, so as much
    /// room as there are of them is kept for them (taken by whichever comes first).
    fn room_for_new(&self) -> u32 {
        self.settings
            .capacity()
            .saturating_sub(self.store.late_len())
    }

    /// The serving counter: every position below it has been admitted.
    #[inline]
    pub fn serving(&self) -> u64 {
        self.store.serving()
    }

    /// Where a ticket stands (lock-free). Asking it marks an unsure number (after a crash) as
    /// held by someone.
    #[inline]
    pub fn status(&self, ticket: u64) -> Position {
        if let Some(u) = self.unsure.get() {
            u.see(ticket);
        }
        let serving = self.store.serving();
        Position {
            ahead: ticket.saturating_sub(serving),
            admitted: ticket != 0 && ticket < serving,
        }
    }

    /// [`Gate::status`] for a page request with a ticket: with a shared store, someone near
    /// the front whom this node's mirror does not show admitted yet is checked against the
    /// store (one round trip), so a person told "admitted" by another node's fresher mirror
    /// is not sent back to the queue by this one. Status polls use [`Gate::status`] (no
    /// round trip).
    pub fn status_checked(&self, ticket: u64) -> Position {
        let st = self.status(ticket);
        if st.admitted {
            return st;
        }
        match self.shared() {
            Some(sh) if st.ahead <= 2 * u64::from(self.settings.capacity()) + 16 => {
                sh.refresh();
                self.status(ticket)
            }
            _ => st,
        }
    }

    /// Estimated wait for someone with `ahead` people in front of them, from
    /// the measured admission rate (or the configured rate cap before any
    /// measurement). None when unknown (paused, no data, unlimited rate).
    pub fn estimate_wait(&self, ahead: u64) -> Option<Duration> {
        if self.mode() == Mode::Paused {
            return None;
        }
        self.pace.wait_for(ahead, self.settings.admit_per_minute())
    }

    // ------------------------------------------------------------------
    // Admitted side
    // ------------------------------------------------------------------

    /// First arrival of an admitted ticket: takes a slot. Idempotent for the
    /// same visitor and binding (returns the slot already held). A ticket can
    /// hold at most one slot, ever.
    pub fn claim(&self, who: Occupant, now_ms: u64) -> Result<u32, ClaimError> {
        let t = who.ticket;
        let serving = self.store.serving();
        if t == 0 || t >= serving || t >= CLAIMING {
            return Err(ClaimError::NotAdmitted);
        }
        if serving - t > CLAIM_WINDOW {
            return Err(ClaimError::TooOld);
        }
        if let Some(sh) = self.shared() {
            return self.claim_shared(sh, who, now_ms);
        }
        if self.claims.mark(t) {
            return self.find_claimed(who);
        }
        if !self.reservations.take(t) {
            if let Err(ahead) = self.take_late_place(t, now_ms) {
                self.claims.unmark(t);
                return Err(ClaimError::Late { ahead });
            }
        }
        // One unit of room is ours (moved from pending, or reserved now).
        match self.slots.grab(who, now_ms) {
            Some(i) => Ok(i),
            None => {
                self.store.unreserve(1);
                self.claims.unmark(t);
                tracing::warn!(ticket = t, "waitroom: no free slot despite room");
                Err(ClaimError::Full)
            }
        }
    }

    /// A first claim through a shared store (any node: the place was held fleet-wide by the
    /// leader's admission). This node's slot is only a cache for its hot path: without a free
    /// one the pass names [`NO_SLOT`] and is honoured through the visits table.
    fn claim_shared(
        &self,
        sh: &dyn SharedAdmission,
        who: Occupant,
        now_ms: u64,
    ) -> Result<u32, ClaimError> {
        match sh.claim(who.ticket, owner_of(who), self.settings.capacity(), now_ms) {
            SharedClaim::Placed => Ok(self.slots.grab(who, now_ms).unwrap_or(NO_SLOT)),
            SharedClaim::NotAdmitted => Err(ClaimError::NotAdmitted),
            SharedClaim::BoundElsewhere => Err(ClaimError::BoundElsewhere),
            SharedClaim::Used => Err(ClaimError::AlreadyUsed),
            SharedClaim::Late { ahead } => Err(ClaimError::Late { ahead }),
            // Nobody new is let in while the store does not answer (fail mode `closed`).
            SharedClaim::Down => Err(ClaimError::Busy),
        }
    }

    /// Whether admitted ticket `t` can take its place now. `Ready` when a claim would find
    /// one: its batch still holds its reservation, there is free room (room is kept free for
    /// late arrivals ahead of anyone new), or it has claimed already. Otherwise it has come
    /// back after its reservation lapsed to a full room: it joins (or stays in) the late line,
    /// `ahead` counting the late arrivals who came back before it. Call it for tickets below
    /// `serving` only; it records the visit (a late arrival not seen for a while leaves the
    /// late line).
    pub fn turn(&self, t: u64, now_ms: u64) -> Turn {
        let serving = self.store.serving();
        if t == 0 || t >= serving || serving - t > CLAIM_WINDOW {
            // Not admitted, or too old to claim: the claim gives the answer.
            return Turn::Ready;
        }
        let held = match self.shared() {
            Some(sh) => sh.holds(t),
            None => self.claims.is_marked(t) || self.reservations.holds(t),
        };
        if held || self.store.occupied() < self.settings.capacity() {
            return Turn::Ready;
        }
        match self.join_late(t, now_ms) {
            // A shared store: it claimed on another node.
            super::store::INSIDE => Turn::Ready,
            ahead => Turn::Late { ahead },
        }
    }

    /// A place for a ticket whose reservation lapsed: any free room (including the room kept
    /// for late arrivals: the first of them to come takes it). Without room it joins the late
    /// line: `Err(late arrivals ahead)`.
    fn take_late_place(&self, t: u64, now_ms: u64) -> Result<(), u64> {
        if self.store.reserve(1, self.settings.capacity()) == 1 {
            if self.store.late_len() > 0 {
                self.store.late_leave(t);
            }
            return Ok(());
        }
        Err(self.join_late(t, now_ms))
    }

    /// `t` came back to a full room: joins (or stays in) the late line. Returns the late
    /// arrivals ahead of it.
    fn join_late(&self, t: u64, now_ms: u64) -> u64 {
        self.store.late_arrive(t, now_ms)
    }

    /// When room is free and late arrivals wait: the first of them, one per free place, whose
    /// held status polls are to be woken (the positions, as passed to [`Gate::claim`]).
    pub fn late_to_wake(&self) -> Vec<u64> {
        let late = self.store.late_len();
        let free = self
            .settings
            .capacity()
            .saturating_sub(self.store.occupied());
        if late == 0 || free == 0 {
            return Vec::new();
        }
        self.store.late_first(free.min(late) as usize)
    }

    /// The slot held by an already-claimed ticket. A concurrent first claim
    /// of the same ticket (parallel requests) may not have published its slot
    /// yet: rescan a few times before concluding the session has ended.
    fn find_claimed(&self, who: Occupant) -> Result<u32, ClaimError> {
        for attempt in 0..4 {
            match self.slots.find(who) {
                Some(Ok(i)) => return Ok(i),
                Some(Err(Found::Busy)) => return Err(ClaimError::Busy),
                Some(Err(Found::BoundElsewhere)) => return Err(ClaimError::BoundElsewhere),
                None => {}
            }
            if !self.claims.is_marked(who.ticket) {
                // The concurrent claim failed for lack of room.
                return Err(ClaimError::Full);
            }
            if attempt < 3 {
                std::thread::yield_now();
            }
        }
        Err(ClaimError::AlreadyUsed)
    }

    /// Hot path, every request with a pass: checks that `slot` is still held
    /// by this ticket, visitor and binding, and records activity. Lock-free,
    /// no allocation.
    ///
    /// After a restart, a pass issued between the restored snapshot and the
    /// restart (`pass_issued_ms`) whose slot is empty re-claims it if there
    /// is room, so admitted users keep their session.
    #[inline]
    pub fn touch(
        &self,
        slot: u32,
        who: Occupant,
        pass_issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), TouchError> {
        match self.slots.touch(slot, who, now_ms) {
            Touched::Held => Ok(()),
            Touched::BoundElsewhere => Err(TouchError::BoundElsewhere),
            // Shared store: the slot is another node's (or this node's cache let it go); the
            // signed pass is honoured, its activity reported to the store at the next tick.
            Touched::Free | Touched::Gone if self.is_shared() => self.visits.see(who, now_ms),
            Touched::Free => self.reclaim(slot, who, pass_issued_ms, now_ms),
            Touched::Gone => Err(TouchError::Expired),
        }
    }

    #[cold]
    fn reclaim(
        &self,
        slot: u32,
        who: Occupant,
        pass_issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), TouchError> {
        let from = self.reclaim_from_ms.load(Ordering::Acquire);
        let until = self.reclaim_until_ms.load(Ordering::Acquire);
        let t = who.ticket;
        if !(from <= pass_issued_ms && pass_issued_ms < until)
            || t == 0
            || t >= CLAIMING
            || t >= self.store.next_ticket()
        {
            return Err(TouchError::Expired);
        }
        if self.store.reserve(1, self.settings.capacity()) == 0 {
            return Err(TouchError::Expired);
        }
        if t >= self.store.serving() {
            self.catch_up_serving(t + 1);
        }
        if !self.slots.take_at(slot, who, now_ms) {
            self.store.unreserve(1);
            return Err(TouchError::Expired);
        }
        if self.store.serving() - t <= CLAIM_WINDOW {
            self.claims.mark(t);
        }
        tracing::debug!(
            ticket = t,
            "waitroom: pass re-claimed its slot after restart"
        );
        Ok(())
    }

    /// A valid pass for ticket `t` proves that every ticket up to `t` was admitted before the
    /// restart, even if the snapshot restored predates it: `serving` moves up to `to` (never
    /// back), and the tickets in between may claim (with free room, as late arrivals do: no
    /// place was held for them).
    #[cold]
    fn catch_up_serving(&self, to: u64) {
        let _ctl = self.lock();
        loop {
            let from = self.store.serving();
            if from >= to {
                return;
            }
            if self.store.advance_serving(from, to) {
                if to - from <= CLAIM_WINDOW {
                    self.claims.open(from, to);
                }
                tracing::info!(
                    from,
                    to,
                    "waitroom: serving caught up with a pass after restart"
                );
                return;
            }
        }
    }

    /// Ends a session now (the portal's release header). Returns false if the
    /// slot was not held by `ticket`.
    pub fn release(&self, slot: u32, ticket: u64) -> bool {
        if let Some(sh) = self.shared() {
            // The session is the fleet's (keyed by ticket); this node's slot is a cache.
            self.slots.release(slot, ticket);
            self.visits.gone(ticket);
            if !sh.release(ticket) {
                return false;
            }
            self.released.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if !self.slots.release(slot, ticket) {
            return false;
        }
        self.store.unreserve(1);
        self.released.fetch_add(1, Ordering::Relaxed);
        true
    }

    // ------------------------------------------------------------------
    // Controller
    // ------------------------------------------------------------------

    /// The controller step (call every 100–250 ms from one background task):
    /// expire idle sessions and stale reservations, then admit as many
    /// waiting tickets as room and the rate cap allow.
    pub fn tick(&self, now_ms: u64) -> TickReport {
        if let Some(sh) = self.shared() {
            return self.tick_shared(sh, now_ms);
        }
        let expired = self
            .slots
            .expire_idle(now_ms, self.settings.session_ms(), || {
                self.store.unreserve(1)
            });
        self.expired.fetch_add(expired, Ordering::Relaxed);
        let abandoned = self
            .reservations
            .expire(now_ms, self.settings.arrival_timeout_ms(), |n| {
                self.store.unreserve(n)
            });
        let mut ctl = self.lock();
        if self.store.late_len() > 0 {
            self.store.late_expire(now_ms);
        }
        let waiting = self.store.next_ticket() > self.store.serving();
        let admitted = self.admit_locked(&mut ctl, now_ms);
        let reading = ctl
            .pace
            .update(self.store.serving(), self.store.occupied(), waiting, now_ms);
        self.pace.publish(reading);
        TickReport {
            admitted,
            expired,
            abandoned,
        }
    }

    /// The controller step with a shared store: reports this node's activity (its slots and
    /// the passes of other nodes seen since the last tick) and stops honouring sessions that
    /// ended; the leader also ends idle sessions and lapsed places fleet-wide, and admits.
    fn tick_shared(&self, sh: &dyn SharedAdmission, now_ms: u64) -> TickReport {
        let session_ms = self.settings.session_ms();
        // This node's slot cache: a slot idle here may be busy on another node, so nothing is
        // given back to the store (the store's own expiry decides).
        self.slots.expire_idle(now_ms, session_ms, || {});
        let now_s = super::slots::secs(now_ms);
        let since = self.reported_s.swap(now_s, Ordering::AcqRel);
        // Not reported (the store did not answer): again at the next tick, so a session active
        // during an outage is not taken for idle after it.
        let unreported = || {
            let _ =
                self.reported_s
                    .compare_exchange(now_s, since, Ordering::AcqRel, Ordering::Acquire);
        };
        if sh.wants_all_sessions() {
            sh.restore_held(now_ms + self.settings.arrival_timeout_ms());
            // Every session known, with its owner: the store takes them back in as they were.
            let mut all: Vec<(u64, u64)> = self
                .slots
                .occupants()
                .into_iter()
                .chain(self.visits.all_live_owners())
                .map(|w| (w.ticket, owner_of(w)))
                .collect();
            all.sort_unstable();
            all.dedup_by_key(|p| p.0);
            let _ = self.visits.take_seen(now_ms, session_ms.max(1_000));
            match sh.touch_all(&all, now_ms) {
                Some(gone) => self.forget(&gone),
                None => unreported(),
            }
        } else {
            let mut seen = self.slots.tickets_seen_since(since);
            seen.extend(self.visits.take_seen(now_ms, session_ms.max(1_000)));
            if !seen.is_empty() {
                match sh.touch(&seen, now_ms) {
                    Some(gone) => self.forget(&gone),
                    None => {
                        unreported();
                        self.visits.seen_again(&seen);
                    }
                }
            }
        }
        // Every CHECK_EVERY ticks: which sessions of this node's cache have ended elsewhere
        // (released on another node): forgotten here, so they are not reported back in if the
        // store loses its data.
        if self.checks.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == 0 {
            let known = self.known_sessions();
            if !known.is_empty() {
                if let Some(gone) = sh.check(&known) {
                    self.forget(&gone);
                }
            }
        }
        let (expired, abandoned) = if sh.is_leader() {
            sh.expire(now_ms, session_ms)
        } else {
            (0, 0)
        };
        self.expired.fetch_add(expired, Ordering::Relaxed);
        self.reservations.count_abandoned(abandoned);
        let mut ctl = self.lock();
        let waiting = self.store.next_ticket() > self.store.serving();
        let admitted = self.admit_locked(&mut ctl, now_ms);
        let reading = ctl
            .pace
            .update(self.store.serving(), self.store.occupied(), waiting, now_ms);
        self.pace.publish(reading);
        TickReport {
            admitted,
            expired,
            abandoned,
        }
    }

    /// The pre-queue draw at an opening: with a shared store every node applies the one the
    /// first of them proposed (`opening_s` names the opening); otherwise, or when the store
    /// does not answer, this node's own proposal.
    pub fn agree_shuffle(
        &self,
        opening_s: i64,
        start: u64,
        end: u64,
        key: [u8; 32],
    ) -> (u64, u64, [u8; 32]) {
        match self.shared() {
            Some(sh) => sh
                .agree_shuffle(opening_s, start, end, key)
                .unwrap_or_else(|| {
                    tracing::warn!(
                        "waitroom: the shared store did not answer at the opening: this node \
                         draws the pre-queue order on its own"
                    );
                    (start, end, key)
                }),
            None => (start, end, key),
        }
    }

    /// With a shared store: `f(from, to)` is called whenever serving moves up in the mirror
    /// (another node's admission seen by a sync). Nothing without one (serving moves only in
    /// this node's own calls).
    pub fn on_serving_moved(&self, f: Box<dyn Fn(u64, u64) + Send + Sync>) {
        if let Some(sh) = self.shared() {
            sh.on_serving_moved(f);
        }
    }

    /// With a shared store: `f()` is called on the leader whenever a session of this gate
    /// ended on another node (pushed by the store). Nothing without one.
    pub fn on_released(&self, f: Box<dyn Fn() + Send + Sync>) {
        if let Some(sh) = self.shared() {
            sh.on_released(f);
        }
    }

    /// With a shared store: the last pre-queue draw the fleet agreed on (a node starting after
    /// an opening applies it).
    pub fn last_shared_shuffle(&self) -> Option<(u64, u64, [u8; 32])> {
        self.shared()?.last_shuffle()
    }

    /// The store said these sessions ended: this node's cache forgets them and stops
    /// honouring their passes.
    fn forget(&self, gone: &[u64]) {
        for &t in gone {
            self.slots.release_ticket(t);
            self.visits.gone(t);
        }
    }

    /// Every session this node knows to be on (its slots and the other nodes' passes it
    /// honours): re-reported when the shared store lost its data.
    pub fn known_sessions(&self) -> Vec<u64> {
        let mut v = self.slots.tickets_seen_since(0);
        v.extend(self.visits.all_live());
        v
    }

    /// Only the admission half of [`Gate::tick`]: admits as many waiting tickets as room and
    /// the rate cap allow, right now. Called when a place frees up (the portal's release
    /// header), so the next in line does not wait for the next tick.
    pub fn admit(&self, now_ms: u64) -> u64 {
        let mut ctl = self.lock();
        self.admit_locked(&mut ctl, now_ms)
    }

    fn admit_locked(&self, ctl: &mut Controller, now_ms: u64) -> u64 {
        let apm = self.settings.admit_per_minute();
        ctl.bucket.refill(apm, now_ms);
        let serving = self.store.serving();
        let waiting = self.store.next_ticket().saturating_sub(serving);
        if self.mode() == Mode::Paused || waiting == 0 {
            return 0;
        }
        let allowance = ctl.bucket.allowance(apm);
        if let Some(sh) = self.shared() {
            // Only the leader admits; the store moves serving and holds the places in one
            // step, fleet-wide (a compare-and-set: nobody is admitted twice).
            if !sh.is_leader() {
                return 0;
            }
            let deadline = now_ms + self.settings.arrival_timeout_ms();
            let n = sh.admit(
                serving,
                waiting.min(allowance),
                self.room_for_new(),
                now_ms,
                deadline,
            );
            ctl.bucket.spend(apm, n);
            return n;
        }
        let want = u32::try_from(waiting.min(allowance)).unwrap_or(u32::MAX);
        let mut n = self.store.reserve(want, self.room_for_new());
        // After a crash, unsure numbers nobody has asked about pass without a place.
        let span = match self.unsure.get().filter(|u| now_ms >= u.free_after_ms) {
            Some(u) => {
                let (span, real) = u.span(serving, serving + waiting, u64::from(n));
                let real = u32::try_from(real).unwrap_or(n);
                self.store.unreserve(n - real);
                n = real;
                span
            }
            None => u64::from(n),
        };
        if span == 0 {
            return 0;
        }
        if self.advance_locked(ctl, serving, span, n, now_ms) {
            ctl.bucket.spend(apm, u64::from(n));
            span
        } else {
            self.store.unreserve(n);
            0
        }
    }

    /// Admits tickets `[a, a+span)`: makes them claimable, records the
    /// reservation batch of `n` places and moves `serving`. Caller holds the controller
    /// lock and has reserved `n` places (`n < span` only for unsure numbers after a crash).
    fn advance_locked(&self, ctl: &mut Controller, a: u64, span: u64, n: u32, now_ms: u64) -> bool {
        let b = a + span;
        if n == 0 {
            // Only unsure numbers nobody asked about: no place held, no batch.
            self.claims.open(a, b);
            return self.store.advance_serving(a, b);
        }
        self.claims.open(a, b);
        let (batch, recycled) = self.reservations.admit(
            &mut ctl.cursor,
            a,
            b,
            n,
            now_ms,
            self.settings.arrival_timeout_ms(),
        );
        if recycled > 0 {
            self.store.unreserve(recycled);
        }
        if self.store.advance_serving(a, b) {
            return true;
        }
        // Another writer moved serving (shared store): undo the reservation.
        self.reservations.undo(batch, n);
        tracing::warn!(from = a, to = b, "waitroom: serving moved concurrently");
        false
    }

    // ------------------------------------------------------------------
    // Numbers reserved durably (a state file)
    // ------------------------------------------------------------------

    /// The next number to hand out.
    #[inline]
    pub fn next_ticket(&self) -> u64 {
        self.store.next_ticket()
    }

    /// Whether a reservation of numbers is due now (cheap: the request path asks it after an
    /// arrival to wake the reserver early). Always false without a reserved ceiling.
    #[inline]
    pub fn numbers_due(&self) -> bool {
        self.seq.due(self.store.next_ticket())
    }

    /// Starts handing out numbers from reserved blocks (with a state file; before traffic):
    /// numbers resume at `from` (the highest ceiling reserved before the restart, or later)
    /// and stay below `ceiling`, which the caller has made durable. Returns the number the
    /// next arrival gets.
    ///
    /// The numbers between `known` (the highest next number known to have been handed out:
    /// the snapshot's or the one written with the last reservation) and `from` are unsure:
    /// admissions hold a place only for those someone asks about ([`Gate::status`]), once
    /// [`UNSURE_GRACE_MS`](super::sequence::UNSURE_GRACE_MS) after `now_ms` have passed.
    pub fn start_numbers(&self, known: u64, from: u64, ceiling: u64, now_ms: u64) -> u64 {
        let _ctl = self.lock();
        let c = self.store.counters();
        if let Some(u) = Unsure::new(known.max(c.next_ticket), from, now_ms) {
            let _ = self.unsure.set(u);
        }
        if from > c.next_ticket {
            self.store.restore(StoreCounters {
                next_ticket: from,
                ..c
            });
        }
        self.seq.raise(ceiling);
        self.store.next_ticket()
    }

    /// The first ceiling to reserve after a start, numbers resuming at `from`.
    pub fn first_ceiling(from: u64) -> u64 {
        Sequence::first(from)
    }

    /// The reserver's step (every tick, and when [`Gate::numbers_due`]): measures the arrival
    /// rate and, when numbers are reserved and few are left, the ceiling to make durable next
    /// (then [`Gate::reserve_numbers`]). `None` when nothing is due or nothing is reserved.
    pub fn plan_numbers(&self, now_ms: u64) -> Option<u64> {
        self.seq.plan(self.store.next_ticket(), now_ms)
    }

    /// Numbers below `ceiling` are reserved durably: they may be handed out (a ceiling only
    /// rises).
    pub fn reserve_numbers(&self, ceiling: u64) {
        self.seq.raise(ceiling);
    }

    /// A clean shutdown, once nothing hands out numbers any more (the workers have stopped):
    /// no number is handed out from here on, and the ceiling comes down to the next number, so
    /// that the next start resumes exactly there (no gap). Returns that ceiling, `None` when
    /// numbers are not reserved (no state file).
    pub fn close_numbers(&self) -> Option<u64> {
        let _ctl = self.lock();
        self.seq.close(self.store.next_ticket());
        self.numbers_ceiling()
    }

    /// The ceiling of the numbers reserved durably; `None` without a state file (unbounded).
    pub fn numbers_ceiling(&self) -> Option<u64> {
        self.seq.bounded().then(|| self.seq.ceiling())
    }

    /// Arrivals that got no number because the reserved block was used up.
    pub fn unnumbered(&self) -> u64 {
        self.seq.refused()
    }

    // ------------------------------------------------------------------
    // Observability and persistence
    // ------------------------------------------------------------------

    /// Sessions holding a slot.
    pub fn active(&self) -> u32 {
        match self.shared() {
            // Everyone inside, fleet-wide (this node's slots are only a cache).
            Some(sh) => sh.active(),
            None => self.slots.active(),
        }
    }

    /// Point-in-time counters.
    pub fn stats(&self) -> GateStats {
        let c = self.store.counters();
        let waiting = c.next_ticket.saturating_sub(c.serving);
        GateStats {
            mode: self.mode(),
            capacity: self.settings.capacity(),
            waiting,
            active: self.active(),
            pending: match self.shared() {
                Some(sh) => sh.pending(),
                None => self.reservations.pending(),
            },
            late: self.store.late_len(),
            issued: c.next_ticket.saturating_sub(1),
            admitted: c.serving.saturating_sub(1),
            released: self.released.load(Ordering::Relaxed),
            abandoned: self.reservations.abandoned(),
            expired: self.expired.load(Ordering::Relaxed),
            admitted_last_minute: self.pace.admitted_last_minute(),
            admission_rate: self.pace.rate(),
            estimated_wait: self.estimate_wait(waiting),
            next_ticket: c.next_ticket,
            serving: c.serving,
        }
    }

    /// Admitted people not here yet whose places were held within the last `within_ms` (with
    /// a shared store: all of them, the store keeps no times).
    pub fn pending_recent(&self, now_ms: u64, within_ms: u64) -> u32 {
        match self.shared() {
            Some(sh) => sh.pending(),
            None => self
                .reservations
                .pending_since(now_ms.saturating_sub(within_ms)),
        }
    }

    /// A serializable snapshot of queue counters, slots and reservations.
    pub fn snapshot(&self, now_ms: u64) -> GateSnapshot {
        let _ctl = self.lock();
        let c = self.store.counters();
        GateSnapshot {
            format: SNAPSHOT_FORMAT,
            taken_at_ms: now_ms,
            next_ticket: c.next_ticket,
            serving: c.serving,
            slots: self.slots.snapshot(),
            reservations: self.reservations.snapshot(),
            counters: SnapshotCounters {
                released: self.released.load(Ordering::Relaxed),
                abandoned: self.reservations.abandoned(),
                expired: self.expired.load(Ordering::Relaxed),
            },
        }
    }

    /// Loads a snapshot into this gate (call before serving traffic).
    /// Existing slots and reservations are discarded. Passes issued after the
    /// snapshot was taken and before `now_ms` may re-claim their slot (see
    /// [`Gate::touch`]).
    pub fn restore(&self, snap: &GateSnapshot, now_ms: u64) -> Result<(), RestoreError> {
        snap.check()?;
        let mut ctl = self.lock();
        // Clear current state.
        self.store.late_clear();
        self.slots.clear();
        self.claims.reset();
        // Reservations (most recent BATCH_RING - 1 kept): claimable again.
        let pending = self.reservations.restore(
            &mut ctl.cursor,
            &snap.reservations,
            snap.serving,
            snap.counters.abandoned,
            |start, end| {
                if snap.serving - start <= CLAIM_WINDOW {
                    self.claims.open(start, end);
                }
            },
        );
        // Slots.
        let mut active = 0u32;
        for st in &snap.slots {
            if st.ticket == 0 || st.ticket >= snap.serving || !self.slots.restore(st) {
                continue;
            }
            active += 1;
            if snap.serving - st.ticket <= CLAIM_WINDOW {
                self.claims.mark(st.ticket);
            }
        }
        self.store.restore(StoreCounters {
            next_ticket: snap.next_ticket,
            serving: snap.serving,
            occupied: active.saturating_add(pending),
        });
        self.slots.set_active(active);
        self.released
            .store(snap.counters.released, Ordering::Relaxed);
        self.expired.store(snap.counters.expired, Ordering::Relaxed);
        self.reclaim_from_ms
            .store(snap.taken_at_ms, Ordering::Release);
        self.reclaim_until_ms.store(now_ms, Ordering::Release);
        ctl.pace.restart();
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
