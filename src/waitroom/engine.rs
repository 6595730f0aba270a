//! Per-gate admission state: ticket queue, slot table, controller.
//!
//! * A waiting visitor costs nothing here: they hold a signed ticket number;
//!   their position is `ticket - serving`.
//! * The controller ([`Gate::tick`], called every 100–250 ms) expires idle
//!   sessions and stale reservations, then advances `serving` by as many
//!   tickets as there is room for (capacity − active − pending), limited by a
//!   token bucket refilled at `admit_per_minute`.
//! * An admitted ticket claims a slot on its first request ([`Gate::claim`]);
//!   every later request calls [`Gate::touch`], which is lock-free and
//!   allocation-free: a few atomic loads and at most one store.
//! * Admitted tickets that never arrive are found without per-user memory:
//!   each advance of `serving` is recorded as a batch `[a, b)` with a pending
//!   count; claims decrement it, and batches older than `arrival_timeout` give
//!   their remaining pending room back (counted as abandoned).
//! * An admitted ticket that comes back after that to a full room joins the
//!   late line ([`super::late`]): free room is kept for the late line before
//!   anyone new is admitted, and [`Gate::turn`] tells it the truth meanwhile
//!   (the status says "admitted" only when a claim would succeed).
//! * A bitmap over the last [`CLAIM_WINDOW`] admitted tickets (128 KiB per
//!   gate, fixed) makes each ticket claimable once, so a replayed ticket
//!   cookie cannot take several slots.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use super::late::LateLine;
use super::pass::Token;
use super::store::{
    AdmissionStore, GateSnapshot, MemoryStore, ReservationState, SlotState, SnapshotCounters,
    StoreCounters, SNAPSHOT_FORMAT,
};
use super::{serde_duration, FieldError};

/// Slots per lazily allocated segment.
pub const SEGMENT_SLOTS: u32 = 1024;
/// Maximum number of segments per gate.
pub const MAX_SEGMENTS: u32 = 1024;
/// Largest accepted `capacity` (active users per gate).
pub const MAX_CAPACITY: u32 = SEGMENT_SLOTS * MAX_SEGMENTS;
/// How many recently admitted tickets are remembered as claimed (one bit each).
/// A ticket admitted more than this many admissions ago can no longer claim.
pub const CLAIM_WINDOW: u64 = 1 << 20;
/// Number of reservation batches kept.
const BATCH_RING: usize = 128;
/// Slot ticket marker while a claim is filling the slot.
const CLAIMING: u64 = 1 << 63;
/// The queue's pace is measured over this much of the most recent time people waited.
const RATE_WINDOW_MS: u64 = 20_000;
/// The pace is not published before this much waiting time has been seen.
const RATE_MIN_SPAN_MS: u64 = 500;
/// Places given up needed in the window before the pace is published (unless the window is
/// full): one or two departures say little about a line's pace.
const RATE_MIN_DEPARTED: u64 = 10;

/// How a gate admits people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Admit directly when there is room and nobody waits; queue otherwise.
    #[default]
    Open,
    /// Everybody takes a ticket, even when there is room (the controller
    /// admits them on its next tick).
    QueueAll,
    /// Nobody new is admitted; admitted sessions continue.
    Paused,
}

impl Mode {
    fn to_u8(self) -> u8 {
        match self {
            Mode::Open => 0,
            Mode::QueueAll => 1,
            Mode::Paused => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Mode::QueueAll,
            2 => Mode::Paused,
            _ => Mode::Open,
        }
    }

    /// Stable lower-case name (config spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::QueueAll => "queue_all",
            Mode::Paused => "paused",
        }
    }
}

/// Admission settings of a gate (the gate's config keys); can be changed at
/// runtime with [`Gate::apply`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Maximum active users (sessions holding a slot) plus pending arrivals.
    pub capacity: u32,
    /// Maximum new users admitted per minute; 0 = unlimited.
    pub admit_per_minute: u32,
    /// How long a session lasts after the user's last request.
    #[serde(with = "serde_duration")]
    pub session_duration: Duration,
    /// How long an admitted ticket has to show up before its reserved room is
    /// given to others.
    #[serde(with = "serde_duration")]
    pub arrival_timeout: Duration,
    /// `open`, `queue_all` or `paused`.
    pub mode: Mode,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            capacity: 1000,
            admit_per_minute: 0,
            session_duration: Duration::from_secs(30 * 60),
            arrival_timeout: Duration::from_secs(60),
            mode: Mode::Open,
        }
    }
}

impl GateSettings {
    /// Checks ranges; errors name the key relative to the gate section.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            errs.push(FieldError::new(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}"),
            ));
        }
        if self.session_duration < Duration::from_secs(1)
            || self.session_duration > Duration::from_secs(24 * 3600)
        {
            errs.push(FieldError::new(
                "session_duration",
                "must be between 1s and 24h",
            ));
        }
        if self.arrival_timeout < Duration::from_secs(1)
            || self.arrival_timeout > Duration::from_secs(3600)
        {
            errs.push(FieldError::new(
                "arrival_timeout",
                "must be between 1s and 1h",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// Who holds (or wants) a slot: the signed facts from the ticket or pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Ticket number.
    pub ticket: u64,
    /// Low 64 bits of the visitor id.
    pub visitor: u64,
    /// Client binding hash computed by the proxy for this request.
    pub binding: u32,
}

impl Holder {
    /// The holder described by a verified token, with the binding of the
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

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// People ahead in the queue (0 when admitted or next).
    pub ahead: u64,
    /// The ticket has been admitted and may claim a slot.
    pub admitted: bool,
}

/// Whether an admitted ticket can take its place now ([`Gate::turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A claim would find a place (its reservation, free room), or
    /// the ticket has claimed already: let it through to the gate.
    Ready,
    /// It came back after its reserved place lapsed and the room is full: it waits in the
    /// late line, behind `ahead` other late arrivals, for the next free place.
    Late {
        /// Late arrivals ahead.
        ahead: u64,
    },
}

impl Turn {
    /// Late arrivals ahead, when in the late line.
    pub fn late_ahead(self) -> Option<u64> {
        match self {
            Turn::Ready => None,
            Turn::Late { ahead } => Some(ahead),
        }
    }
}

/// Result of [`Gate::arrive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Admitted straight away and holding `slot` (issue a pass).
    Admitted {
        /// The ticket taken.
        ticket: u64,
        /// The slot claimed.
        slot: u32,
    },
    /// Must wait with this ticket (issue a ticket cookie).
    Queued {
        /// The ticket taken.
        ticket: u64,
    },
}

/// Why a claim failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The ticket has not been admitted yet (keep waiting).
    #[error("ticket not admitted yet")]
    NotAdmitted,
    /// No room right now for a claim that should have had one (a concurrent
    /// claim took it): retry.
    #[error("no room right now")]
    Full,
    /// Admitted, but its reservation lapsed and the room is full: it waits in
    /// the late line behind `ahead` other late arrivals (see [`Gate::turn`]).
    #[error("came back after the held place lapsed; the room is full")]
    Late {
        /// Late arrivals ahead.
        ahead: u64,
    },
    /// The ticket already had a session that has ended (take a new ticket).
    #[error("ticket already used")]
    AlreadyUsed,
    /// The ticket holds a slot for another client binding (copied cookie).
    #[error("ticket bound to another client")]
    BoundElsewhere,
    /// Admitted too long ago to be remembered (take a new ticket).
    #[error("ticket too old")]
    TooOld,
    /// A concurrent claim of the same ticket is in progress (retry).
    #[error("claim in progress")]
    Busy,
}

impl ClaimError {
    /// Stable short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimError::NotAdmitted => "not_admitted",
            ClaimError::Full => "full",
            ClaimError::Late { .. } => "late",
            ClaimError::AlreadyUsed => "already_used",
            ClaimError::BoundElsewhere => "bound_elsewhere",
            ClaimError::TooOld => "too_old",
            ClaimError::Busy => "busy",
        }
    }
}

/// Why a request with a pass was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TouchError {
    /// The session ended (idle, released, or slot reused): queue again.
    #[error("session expired")]
    Expired,
    /// The pass is used by another client than the one that claimed it.
    #[error("pass bound to another client")]
    BoundElsewhere,
}

impl TouchError {
    /// Stable short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TouchError::Expired => "expired",
            TouchError::BoundElsewhere => "bound_elsewhere",
        }
    }
}

/// What one controller tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Tickets admitted (serving advanced by this much).
    pub admitted: u64,
    /// Idle sessions expired.
    pub expired: u64,
    /// Reservations abandoned (admitted tickets that never came).
    pub abandoned: u64,
}

/// Point-in-time counters of a gate (for the admin API and metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateStats {
    /// Current mode.
    pub mode: Mode,
    /// Configured capacity.
    pub capacity: u32,
    /// Tickets issued but not yet admitted (`next_ticket - serving`).
    pub waiting: u64,
    /// Sessions holding a slot.
    pub active: u32,
    /// Admitted tickets that have not arrived yet (reserved room).
    pub pending: u32,
    /// Admitted tickets that came back late and wait for a free place (as much free room is
    /// kept for them before anyone new is admitted).
    pub late: u32,
    /// Tickets issued since the gate started (`next_ticket - 1`).
    pub issued: u64,
    /// Tickets admitted since the gate started (`serving - 1`).
    pub admitted: u64,
    /// Sessions ended by the portal.
    pub released: u64,
    /// Admitted tickets that never arrived.
    pub abandoned: u64,
    /// Sessions ended by inactivity.
    pub expired: u64,
    /// Tickets admitted during the last minute (approximate, per tick).
    pub admitted_last_minute: u64,
    /// The line's pace while people wait: places given up per second over the last 20 s of
    /// waiting (in a steady state, the admission rate). The admin API's
    /// `admission_rate_per_second`.
    pub admission_rate: f64,
    /// Estimated wait for a new arrival (None when unknown, e.g. paused).
    pub estimated_wait: Option<Duration>,
    /// Next ticket number.
    pub next_ticket: u64,
    /// First ticket not yet admitted.
    pub serving: u64,
}

/// One active-user slot (24 bytes).
#[derive(Default)]
struct Slot {
    /// Ticket holding the slot; 0 = free; `CLAIMING | t` while being filled.
    ticket: AtomicU64,
    visitor: AtomicU64,
    binding: AtomicU32,
    /// Seconds since the gate epoch.
    last_seen: AtomicU32,
}

/// Fixed-size segments allocated on demand: slots never move, so capacity can
/// grow at runtime while passes keep their slot index.
struct SlotTable {
    segs: Box<[OnceLock<Box<[Slot]>>]>,
    /// Slots allocated (multiple of `SEGMENT_SLOTS`).
    len: AtomicU32,
}

impl SlotTable {
    fn new() -> Self {
        Self {
            segs: (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
        }
    }

    /// Makes sure at least `n` slots exist (up to `MAX_CAPACITY`).
    fn ensure(&self, n: u32) {
        let need = n.min(MAX_CAPACITY).div_ceil(SEGMENT_SLOTS);
        for seg in self.segs.iter().take(need as usize) {
            seg.get_or_init(|| (0..SEGMENT_SLOTS).map(|_| Slot::default()).collect());
        }
        self.len.fetch_max(need * SEGMENT_SLOTS, Ordering::AcqRel);
    }

    #[inline]
    fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    #[inline]
    fn get(&self, i: u32) -> Option<&Slot> {
        let seg = self.segs.get((i / SEGMENT_SLOTS) as usize)?.get()?;
        seg.get((i % SEGMENT_SLOTS) as usize)
    }
}

/// A batch of tickets `[start, end)` admitted together, with pending arrivals.
#[derive(Default)]
struct Batch {
    start: AtomicU64,
    end: AtomicU64,
    /// Last extension time, ms since the UNIX epoch.
    at_ms: AtomicU64,
    pending: AtomicU32,
}

/// Controller state (only touched by `tick`, `arrive` when idle, snapshot).
struct Controller {
    bucket_units: u64,
    last_refill_ms: u64,
    last_tick_ms: Option<u64>,
    /// Places given up so far (`serving - occupied` at the last tick).
    last_departed: u64,
    /// Total time with people waiting, and places given up during that time.
    queue_ms: u64,
    queue_departed: u64,
    /// (queue_ms, queue_departed) samples about one per second of waiting time, over the
    /// last [`RATE_WINDOW_MS`]: the queue's pace.
    pace: std::collections::VecDeque<(u64, u64)>,
    /// Index of the most recent batch in the ring.
    head: usize,
    head_first_ms: u64,
    /// (time, serving) samples at most one per second, ~the last minute.
    history: std::collections::VecDeque<(u64, u64)>,
    /// Admitted tickets that came back after their reservation lapsed.
    late: LateLine,
}

/// One gate: queue counters, slot table and controller.
pub struct Gate {
    store: Box<dyn AdmissionStore>,
    capacity: AtomicU32,
    admit_per_minute: AtomicU32,
    session_ms: AtomicU64,
    arrival_timeout_ms: AtomicU64,
    mode: AtomicU8,
    epoch_ms: u64,
    slots: SlotTable,
    claimed: Box<[AtomicU64]>,
    batches: Box<[Batch]>,
    active: AtomicU32,
    pending: AtomicU32,
    /// `ctl.late.len()`, readable without the lock: this much free room is kept for late
    /// arrivals (0 on the fast paths).
    late_waiting: AtomicU32,
    released: AtomicU64,
    expired: AtomicU64,
    abandoned: AtomicU64,
    rate_bits: AtomicU64,
    admitted_last_minute: AtomicU64,
    reclaim_from_ms: AtomicU64,
    reclaim_until_ms: AtomicU64,
    ctl: Mutex<Controller>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("store", &self.store)
            .field("capacity", &self.capacity)
            .field("active", &self.active)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

#[inline]
fn spread(t: u64) -> u64 {
    // Fibonacci hashing: spreads consecutive tickets over the table.
    (t.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32
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
            capacity: AtomicU32::new(0),
            admit_per_minute: AtomicU32::new(0),
            session_ms: AtomicU64::new(0),
            arrival_timeout_ms: AtomicU64::new(0),
            mode: AtomicU8::new(0),
            // The UNIX epoch: u32 seconds last until 2106, and a clock set to any date (tests,
            // rehearsals) keeps idle expiry right.
            epoch_ms: 0,
            slots: SlotTable::new(),
            // All ones: a ticket's bit is cleared when it is admitted.
            claimed: (0..CLAIM_WINDOW / 64)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            batches: (0..BATCH_RING).map(|_| Batch::default()).collect(),
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            late_waiting: AtomicU32::new(0),
            released: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0f64.to_bits()),
            admitted_last_minute: AtomicU64::new(0),
            reclaim_from_ms: AtomicU64::new(0),
            reclaim_until_ms: AtomicU64::new(0),
            ctl: Mutex::new(Controller {
                bucket_units: TOKEN,
                last_refill_ms: now_ms,
                last_tick_ms: None,
                last_departed: 0,
                queue_ms: 0,
                queue_departed: 0,
                pace: std::collections::VecDeque::with_capacity(32),
                head: 0,
                head_first_ms: 0,
                history: std::collections::VecDeque::with_capacity(128),
                late: LateLine::default(),
            }),
        };
        gate.apply(settings);
        gate
    }

    /// Applies new settings at runtime (capacity may grow or shrink; existing
    /// sessions are kept; slots are allocated for the new capacity).
    pub fn apply(&self, s: &GateSettings) {
        let cap = s.capacity.min(MAX_CAPACITY);
        self.slots.ensure(cap);
        self.capacity.store(cap, Ordering::Release);
        self.admit_per_minute
            .store(s.admit_per_minute, Ordering::Release);
        self.session_ms.store(
            u64::try_from(s.session_duration.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.arrival_timeout_ms.store(
            u64::try_from(s.arrival_timeout.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.mode.store(s.mode.to_u8(), Ordering::Release);
    }

    /// The settings in force.
    pub fn settings(&self) -> GateSettings {
        GateSettings {
            capacity: self.capacity.load(Ordering::Acquire),
            admit_per_minute: self.admit_per_minute.load(Ordering::Acquire),
            session_duration: Duration::from_millis(self.session_ms.load(Ordering::Acquire)),
            arrival_timeout: Duration::from_millis(self.arrival_timeout_ms.load(Ordering::Acquire)),
            mode: self.mode(),
        }
    }

    /// The current mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Switches the mode at runtime.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode.to_u8(), Ordering::Release);
    }

    #[inline]
    fn secs(&self, now_ms: u64) -> u32 {
        u32::try_from(now_ms.saturating_sub(self.epoch_ms) / 1000).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        // The controller state stays consistent even if a holder panicked.
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ------------------------------------------------------------------
    // Waiting side
    // ------------------------------------------------------------------

    /// Takes a ticket (lock-free; the visitor waits).
    #[inline]
    pub fn take_ticket(&self) -> u64 {
        self.store.take_ticket()
    }

    /// A new arrival: in `open` mode with room, within the rate cap and nobody
    /// waiting, the visitor is admitted at once and claims a slot; otherwise
    /// they get a ticket and wait.
    pub fn arrive(&self, visitor: u64, binding: u32, now_ms: u64) -> Arrival {
        if let Some(a) = self.try_admit_now(visitor, binding, now_ms) {
            return a;
        }
        Arrival::Queued {
            ticket: self.take_ticket(),
        }
    }

    /// The direct-admission half of [`Gate::arrive`]: `None` when the visitor
    /// must queue (no ticket taken in that case).
    pub fn try_admit_now(&self, visitor: u64, binding: u32, now_ms: u64) -> Option<Arrival> {
        if self.mode() != Mode::Open
            || self.store.serving() != self.store.next_ticket()
            || self.store.occupied() >= self.room_for_new()
        {
            return None;
        }
        let mut ctl = self.lock();
        let apm = self.admit_per_minute.load(Ordering::Acquire);
        refill(&mut ctl, apm, now_ms);
        if apm > 0 && ctl.bucket_units < TOKEN {
            return None;
        }
        let serving = self.store.serving();
        if serving != self.store.next_ticket() {
            return None;
        }
        if self.store.reserve(1, self.room_for_new()) == 0 {
            return None;
        }
        let t = self.store.take_ticket();
        if t != serving || !self.advance_locked(&mut ctl, t, 1, now_ms) {
            // Someone took a ticket in between: they are ahead of us.
            self.store.unreserve(1);
            return Some(Arrival::Queued { ticket: t });
        }
        if apm > 0 {
            ctl.bucket_units = ctl.bucket_units.saturating_sub(TOKEN);
        }
        drop(ctl);
        let who = Holder {
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

    /// The capacity new admissions may fill: late arrivals were admitted once, so as much
    /// room as there are of them is kept for them (taken by whichever comes first).
    fn room_for_new(&self) -> u32 {
        self.capacity
            .load(Ordering::Acquire)
            .saturating_sub(self.late_waiting.load(Ordering::Acquire))
    }

    /// The serving counter: every position below it has been admitted.
    #[inline]
    pub fn serving(&self) -> u64 {
        self.store.serving()
    }

    /// Where a ticket stands (lock-free).
    #[inline]
    pub fn status(&self, ticket: u64) -> Position {
        let serving = self.store.serving();
        Position {
            ahead: ticket.saturating_sub(serving),
            admitted: ticket != 0 && ticket < serving,
        }
    }

    /// Estimated wait for someone with `ahead` people in front of them, from
    /// the measured admission rate (or the configured rate cap before any
    /// measurement). None when unknown (paused, no data, unlimited rate).
    pub fn estimate_wait(&self, ahead: u64) -> Option<Duration> {
        if self.mode() == Mode::Paused {
            return None;
        }
        let measured = f64::from_bits(self.rate_bits.load(Ordering::Relaxed));
        let apm = self.admit_per_minute.load(Ordering::Relaxed);
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

    // ------------------------------------------------------------------
    // Admitted side
    // ------------------------------------------------------------------

    /// First arrival of an admitted ticket: takes a slot. Idempotent for the
    /// same visitor and binding (returns the slot already held). A ticket can
    /// hold at most one slot, ever.
    pub fn claim(&self, who: Holder, now_ms: u64) -> Result<u32, ClaimError> {
        let t = who.ticket;
        let serving = self.store.serving();
        if t == 0 || t >= serving || t >= CLAIMING {
            return Err(ClaimError::NotAdmitted);
        }
        if serving - t > CLAIM_WINDOW {
            return Err(ClaimError::TooOld);
        }
        let (word, mask) = bit_of(t);
        let prev = self.claimed[word].fetch_or(mask, Ordering::AcqRel);
        if prev & mask != 0 {
            return self.find_claimed(who);
        }
        if !self.take_reservation(t) {
            if let Err(ahead) = self.take_late_place(t, now_ms) {
                self.claimed[word].fetch_and(!mask, Ordering::AcqRel);
                return Err(ClaimError::Late { ahead });
            }
        }
        // One unit of room is ours (moved from pending, or reserved now).
        match self.grab_slot(who, now_ms) {
            Some(i) => {
                self.active.fetch_add(1, Ordering::AcqRel);
                Ok(i)
            }
            None => {
                self.store.unreserve(1);
                self.claimed[word].fetch_and(!mask, Ordering::AcqRel);
                tracing::warn!(ticket = t, "waitroom: no free slot despite room");
                Err(ClaimError::Full)
            }
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
        let (w, m) = bit_of(t);
        if self.claimed[w].load(Ordering::Acquire) & m != 0
            || self.holds_reservation(t)
            || self.store.occupied() < self.capacity.load(Ordering::Acquire)
        {
            return Turn::Ready;
        }
        Turn::Late {
            ahead: self.join_late(t, now_ms),
        }
    }

    /// Whether `t`'s admission batch still holds a reservation for it (not yet lapsed).
    fn holds_reservation(&self, t: u64) -> bool {
        self.batches.iter().any(|b| {
            b.start.load(Ordering::Acquire) <= t
                && t < b.end.load(Ordering::Acquire)
                && b.pending.load(Ordering::Acquire) > 0
        })
    }

    /// A place for a ticket whose reservation lapsed: any free room (including the room kept
    /// for late arrivals: the first of them to come takes it). Without room it joins the late
    /// line: `Err(late arrivals ahead)`.
    fn take_late_place(&self, t: u64, now_ms: u64) -> Result<(), u64> {
        if self.store.reserve(1, self.capacity.load(Ordering::Acquire)) == 1 {
            if self.late_waiting.load(Ordering::Acquire) > 0 {
                let mut ctl = self.lock();
                if ctl.late.leave(t) {
                    self.publish_late(&ctl);
                }
            }
            return Ok(());
        }
        Err(self.join_late(t, now_ms))
    }

    /// `t` came back to a full room: joins (or stays in) the late line. Returns the late
    /// arrivals ahead of it.
    fn join_late(&self, t: u64, now_ms: u64) -> u64 {
        let mut ctl = self.lock();
        let ahead = ctl.late.arrive(t, now_ms);
        self.publish_late(&ctl);
        ahead
    }

    /// Mirrors the late line's length for the lock-free paths.
    fn publish_late(&self, ctl: &Controller) {
        self.late_waiting.store(ctl.late.len(), Ordering::Release);
    }

    /// When room is free and late arrivals wait: the first of them, one per free place, whose
    /// held status polls are to be woken (the positions, as passed to [`Gate::claim`]).
    pub fn late_to_wake(&self) -> Vec<u64> {
        let late = self.late_waiting.load(Ordering::Acquire);
        let free = self
            .capacity
            .load(Ordering::Acquire)
            .saturating_sub(self.store.occupied());
        if late == 0 || free == 0 {
            return Vec::new();
        }
        let ctl = self.lock();
        ctl.late.first(free.min(late) as usize)
    }

    /// Moves one pending reservation of `t`'s batch to active; false if the
    /// batch is gone or already abandoned (late arrival).
    fn take_reservation(&self, t: u64) -> bool {
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
                    let _ = self
                        .pending
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                            Some(p.saturating_sub(1))
                        });
                }
                return ok;
            }
        }
        false
    }

    fn grab_slot(&self, who: Holder, now_ms: u64) -> Option<u32> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = (spread(who.ticket) % u64::from(n)) as u32;
        let now_s = self.secs(now_ms);
        for _pass in 0..3 {
            for k in 0..n {
                let i = (start + k) % n;
                let Some(s) = self.slots.get(i) else { continue };
                if s.ticket.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                if s.ticket
                    .compare_exchange(
                        0,
                        CLAIMING | who.ticket,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    s.visitor.store(who.visitor, Ordering::Relaxed);
                    s.binding.store(who.binding, Ordering::Relaxed);
                    s.last_seen.store(now_s, Ordering::Relaxed);
                    s.ticket.store(who.ticket, Ordering::Release);
                    return Some(i);
                }
            }
        }
        None
    }

    /// The slot held by an already-claimed ticket. A concurrent first claim
    /// of the same ticket (parallel requests) may not have published its slot
    /// yet: rescan a few times before concluding the session has ended.
    fn find_claimed(&self, who: Holder) -> Result<u32, ClaimError> {
        for attempt in 0..4 {
            if let Some(r) = self.scan_claimed(who) {
                return r;
            }
            let (w, m) = bit_of(who.ticket);
            if self.claimed[w].load(Ordering::Acquire) & m == 0 {
                // The concurrent claim failed for lack of room.
                return Err(ClaimError::Full);
            }
            if attempt < 3 {
                std::thread::yield_now();
            }
        }
        Err(ClaimError::AlreadyUsed)
    }

    /// One scan for the slot held by `who.ticket`; `None` if not found.
    fn scan_claimed(&self, who: Holder) -> Option<Result<u32, ClaimError>> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = (spread(who.ticket) % u64::from(n)) as u32;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(s) = self.slots.get(i) else { continue };
            let mut tk = s.ticket.load(Ordering::Acquire);
            if tk == CLAIMING | who.ticket {
                // A concurrent claim is filling this slot: wait briefly.
                let mut spins = 0u32;
                while tk == CLAIMING | who.ticket {
                    spins += 1;
                    if spins > 2000 {
                        return Some(Err(ClaimError::Busy));
                    }
                    if spins > 100 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                    tk = s.ticket.load(Ordering::Acquire);
                }
            }
            if tk == who.ticket {
                if s.visitor.load(Ordering::Relaxed) != who.visitor
                    || s.binding.load(Ordering::Relaxed) != who.binding
                {
                    return Some(Err(ClaimError::BoundElsewhere));
                }
                return Some(Ok(i));
            }
        }
        None
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
        who: Holder,
        pass_issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), TouchError> {
        let Some(s) = self.slots.get(slot) else {
            return Err(TouchError::Expired);
        };
        let tk = s.ticket.load(Ordering::Acquire);
        if tk == who.ticket {
            if s.visitor.load(Ordering::Relaxed) != who.visitor
                || s.binding.load(Ordering::Relaxed) != who.binding
            {
                return Err(TouchError::BoundElsewhere);
            }
            let now_s = self.secs(now_ms);
            if s.last_seen.load(Ordering::Relaxed) != now_s {
                s.last_seen.store(now_s, Ordering::Relaxed);
            }
            return Ok(());
        }
        if tk == 0 {
            return self.reclaim(s, who, pass_issued_ms, now_ms);
        }
        Err(TouchError::Expired)
    }

    #[cold]
    fn reclaim(
        &self,
        s: &Slot,
        who: Holder,
        pass_issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), TouchError> {
        let from = self.reclaim_from_ms.load(Ordering::Acquire);
        let until = self.reclaim_until_ms.load(Ordering::Acquire);
        let t = who.ticket;
        if !(from <= pass_issued_ms && pass_issued_ms < until)
            || t == 0
            || t >= CLAIMING
            || t >= self.store.serving()
        {
            return Err(TouchError::Expired);
        }
        if self.store.reserve(1, self.capacity.load(Ordering::Acquire)) == 0 {
            return Err(TouchError::Expired);
        }
        if s.ticket
            .compare_exchange(0, CLAIMING | t, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.store.unreserve(1);
            return Err(TouchError::Expired);
        }
        s.visitor.store(who.visitor, Ordering::Relaxed);
        s.binding.store(who.binding, Ordering::Relaxed);
        s.last_seen.store(self.secs(now_ms), Ordering::Relaxed);
        s.ticket.store(t, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        if self.store.serving() - t <= CLAIM_WINDOW {
            let (w, m) = bit_of(t);
            self.claimed[w].fetch_or(m, Ordering::AcqRel);
        }
        tracing::debug!(
            ticket = t,
            "waitroom: pass re-claimed its slot after restart"
        );
        Ok(())
    }

    /// Ends a session now (the portal's release header). Returns false if the
    /// slot was not held by `ticket`.
    pub fn release(&self, slot: u32, ticket: u64) -> bool {
        let Some(s) = self.slots.get(slot) else {
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
        let expired = self.expire_idle(now_ms);
        let abandoned = self.expire_reservations(now_ms);
        let mut ctl = self.lock();
        if !ctl.late.is_empty() {
            ctl.late.expire(now_ms);
            self.publish_late(&ctl);
        }
        let waiting = self.store.next_ticket() > self.store.serving();
        let admitted = self.admit_locked(&mut ctl, now_ms);
        self.update_rates(&mut ctl, waiting, now_ms);
        TickReport {
            admitted,
            expired,
            abandoned,
        }
    }

    /// Only the admission half of [`Gate::tick`]: admits as many waiting tickets as room and
    /// the rate cap allow, right now. Called when a place frees up (the portal's release
    /// header), so the next in line does not wait for the next tick.
    pub fn admit(&self, now_ms: u64) -> u64 {
        let mut ctl = self.lock();
        self.admit_locked(&mut ctl, now_ms)
    }

    fn admit_locked(&self, ctl: &mut Controller, now_ms: u64) -> u64 {
        let apm = self.admit_per_minute.load(Ordering::Acquire);
        refill(ctl, apm, now_ms);
        let serving = self.store.serving();
        let waiting = self.store.next_ticket().saturating_sub(serving);
        if self.mode() == Mode::Paused || waiting == 0 {
            return 0;
        }
        let allowance = if apm == 0 {
            u64::MAX
        } else {
            ctl.bucket_units / TOKEN
        };
        let want = u32::try_from(waiting.min(allowance)).unwrap_or(u32::MAX);
        let n = self.store.reserve(want, self.room_for_new());
        if n == 0 {
            return 0;
        }
        if self.advance_locked(ctl, serving, n, now_ms) {
            if apm > 0 {
                ctl.bucket_units = ctl.bucket_units.saturating_sub(u64::from(n) * TOKEN);
            }
            u64::from(n)
        } else {
            self.store.unreserve(n);
            0
        }
    }

    /// Admits tickets `[a, a+n)`: clears their claimed bits, records the
    /// reservation batch and moves `serving`. Caller holds the controller
    /// lock and has reserved `n` places.
    fn advance_locked(&self, ctl: &mut Controller, a: u64, n: u32, now_ms: u64) -> bool {
        let b = a + u64::from(n);
        if u64::from(n) >= CLAIM_WINDOW {
            for w in self.claimed.iter() {
                w.store(0, Ordering::Release);
            }
        } else {
            for t in a..b {
                let (w, m) = bit_of(t);
                self.claimed[w].fetch_and(!m, Ordering::AcqRel);
            }
        }
        let batch = self.record_batch(ctl, a, b, n, now_ms);
        self.pending.fetch_add(n, Ordering::AcqRel);
        if self.store.advance_serving(a, b) {
            return true;
        }
        // Another writer moved serving (shared store): undo the reservation.
        let back = batch
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            })
            .map_or(0, |p| p.min(n));
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(back))
            });
        tracing::warn!(from = a, to = b, "waitroom: serving moved concurrently");
        false
    }

    fn record_batch(&self, ctl: &mut Controller, a: u64, b: u64, n: u32, now_ms: u64) -> &Batch {
        let timeout = self.arrival_timeout_ms.load(Ordering::Acquire);
        let granularity = (timeout / 32).max(100);
        let head = &self.batches[ctl.head];
        if head.end.load(Ordering::Acquire) == a
            && head.pending.load(Ordering::Acquire) > 0
            && now_ms < ctl.head_first_ms.saturating_add(granularity)
        {
            head.at_ms.store(now_ms, Ordering::Release);
            head.pending.fetch_add(n, Ordering::AcqRel);
            head.end.store(b, Ordering::Release);
            return head;
        }
        ctl.head = (ctl.head + 1) % BATCH_RING;
        ctl.head_first_ms = now_ms;
        let slot = &self.batches[ctl.head];
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
        slot
    }

    fn abandon(&self, n: u32) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        self.store.unreserve(n);
        self.abandoned.fetch_add(u64::from(n), Ordering::Relaxed);
    }

    fn expire_reservations(&self, now_ms: u64) -> u64 {
        let timeout = self.arrival_timeout_ms.load(Ordering::Acquire);
        let mut total = 0u64;
        for b in self.batches.iter() {
            if b.pending.load(Ordering::Acquire) == 0 {
                continue;
            }
            if b.at_ms.load(Ordering::Acquire).saturating_add(timeout) <= now_ms {
                let n = b.pending.swap(0, Ordering::AcqRel);
                if n > 0 {
                    self.abandon(n);
                    total += u64::from(n);
                }
            }
        }
        total
    }

    fn expire_idle(&self, now_ms: u64) -> u64 {
        let session_s =
            u32::try_from(self.session_ms.load(Ordering::Acquire) / 1000).unwrap_or(u32::MAX);
        let now_s = self.secs(now_ms);
        let mut n = 0u64;
        for i in 0..self.slots.len() {
            let Some(s) = self.slots.get(i) else { continue };
            let tk = s.ticket.load(Ordering::Acquire);
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
                self.store.unreserve(1);
                n += 1;
            }
        }
        self.expired.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Measures the queue's pace: places given up (sessions ended, expired, reservations
    /// abandoned) per second of time with people waiting, over the last [`RATE_WINDOW_MS`].
    /// Places given up, not admissions: filling empty room is a one-off burst, not a pace
    /// the next in line can count on (admitted = given up + newly occupied).
    fn update_rates(&self, ctl: &mut Controller, had_waiters: bool, now_ms: u64) {
        let serving = self.store.serving();
        let departed = serving.saturating_sub(u64::from(self.store.occupied()));
        if let Some(last) = ctl.last_tick_ms {
            if had_waiters && now_ms > last {
                ctl.queue_ms += now_ms - last;
                ctl.queue_departed += departed.saturating_sub(ctl.last_departed);
                let sample = (ctl.queue_ms, ctl.queue_departed);
                if ctl.queue_departed == 0 {
                    // Nobody has left yet (the first people let in are still inside): the
                    // pace is measured from the last moment before the first departure, not
                    // from the queue's start, or a window opening would count the first
                    // people's whole stay as a slow pace.
                    ctl.pace.clear();
                    ctl.pace.push_back(sample);
                } else if ctl.pace.back().is_none_or(|&(q, _)| sample.0 >= q + 1000) {
                    ctl.pace.push_back(sample);
                }
                while ctl.pace.len() > 1
                    && ctl
                        .pace
                        .front()
                        .is_some_and(|&(q, _)| q + RATE_WINDOW_MS < sample.0)
                {
                    ctl.pace.pop_front();
                }
                // The oldest sample (or the queue's start) to now.
                let (q0, d0) = match ctl.pace.front() {
                    Some(&f) if f.0 < sample.0 => f,
                    _ => (0, 0),
                };
                let span = sample.0 - q0;
                // A few departures are noise: wait for RATE_MIN_DEPARTED of them, or for a
                // whole window of waiting (a slow line).
                if span >= RATE_MIN_SPAN_MS
                    && (sample.1 - d0 >= RATE_MIN_DEPARTED || span >= RATE_WINDOW_MS)
                {
                    let rate = (sample.1 - d0) as f64 * 1000.0 / span as f64;
                    self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
                }
            }
        }
        ctl.last_tick_ms = Some(now_ms);
        ctl.last_departed = departed;
        if ctl.history.back().is_none_or(|&(t, _)| now_ms >= t + 1000) {
            if ctl.history.len() >= 120 {
                ctl.history.pop_front();
            }
            ctl.history.push_back((now_ms, serving));
        }
        while ctl
            .history
            .front()
            .is_some_and(|&(t, _)| t + 60_000 < now_ms && ctl.history.len() > 1)
        {
            ctl.history.pop_front();
        }
        let base = ctl.history.front().map_or(serving, |&(_, s)| s);
        self.admitted_last_minute
            .store(serving.saturating_sub(base), Ordering::Relaxed);
    }

    // ------------------------------------------------------------------
    // Observability and persistence
    // ------------------------------------------------------------------

    /// Sessions holding a slot.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Point-in-time counters.
    pub fn stats(&self) -> GateStats {
        let c = self.store.counters();
        let waiting = c.next_ticket.saturating_sub(c.serving);
        GateStats {
            mode: self.mode(),
            capacity: self.capacity.load(Ordering::Acquire),
            waiting,
            active: self.active(),
            pending: self.pending.load(Ordering::Acquire),
            late: self.late_waiting.load(Ordering::Acquire),
            issued: c.next_ticket.saturating_sub(1),
            admitted: c.serving.saturating_sub(1),
            released: self.released.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            admitted_last_minute: self.admitted_last_minute.load(Ordering::Relaxed),
            admission_rate: f64::from_bits(self.rate_bits.load(Ordering::Relaxed)),
            estimated_wait: self.estimate_wait(waiting),
            next_ticket: c.next_ticket,
            serving: c.serving,
        }
    }

    /// A serializable snapshot of queue counters, slots and reservations.
    pub fn snapshot(&self, now_ms: u64) -> GateSnapshot {
        let _ctl = self.lock();
        let c = self.store.counters();
        let mut slots = Vec::with_capacity(self.active() as usize);
        for i in 0..self.slots.len() {
            let Some(s) = self.slots.get(i) else { continue };
            let tk = s.ticket.load(Ordering::Acquire);
            if tk == 0 || tk & CLAIMING != 0 {
                continue;
            }
            slots.push(SlotState {
                index: i,
                ticket: tk,
                visitor: s.visitor.load(Ordering::Relaxed),
                binding: s.binding.load(Ordering::Relaxed),
                last_seen_ms: self.epoch_ms + u64::from(s.last_seen.load(Ordering::Relaxed)) * 1000,
            });
        }
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
        GateSnapshot {
            format: SNAPSHOT_FORMAT,
            taken_at_ms: now_ms,
            next_ticket: c.next_ticket,
            serving: c.serving,
            slots,
            reservations,
            counters: SnapshotCounters {
                released: self.released.load(Ordering::Relaxed),
                abandoned: self.abandoned.load(Ordering::Relaxed),
                expired: self.expired.load(Ordering::Relaxed),
            },
        }
    }

    /// Loads a snapshot into this gate (call before serving traffic).
    /// Existing slots and reservations are discarded. Passes issued after the
    /// snapshot was taken and before `now_ms` may re-claim their slot (see
    /// [`Gate::touch`]).
    pub fn restore(&self, snap: &GateSnapshot, now_ms: u64) -> Result<(), RestoreError> {
        if snap.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::Format(snap.format));
        }
        if snap.serving == 0 || snap.serving > snap.next_ticket {
            return Err(RestoreError::Inconsistent(
                "serving must be in 1..=next_ticket",
            ));
        }
        let mut ctl = self.lock();
        // Clear current state.
        ctl.late.clear();
        self.publish_late(&ctl);
        for i in 0..self.slots.len() {
            if let Some(s) = self.slots.get(i) {
                s.ticket.store(0, Ordering::Release);
            }
        }
        for b in self.batches.iter() {
            b.pending.store(0, Ordering::Release);
            b.end.store(0, Ordering::Release);
            b.start.store(0, Ordering::Release);
        }
        for w in self.claimed.iter() {
            w.store(u64::MAX, Ordering::Release);
        }
        // Reservations (most recent BATCH_RING - 1 kept).
        let keep = snap
            .reservations
            .iter()
            .filter(|r| r.pending > 0 && r.start < r.end && r.end <= snap.serving);
        let keep: Vec<&ReservationState> = keep.collect();
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
            if snap.serving - r.start <= CLAIM_WINDOW {
                for t in r.start..r.end {
                    let (w, m) = bit_of(t);
                    self.claimed[w].fetch_and(!m, Ordering::AcqRel);
                }
            }
        }
        // Slots.
        let mut active = 0u32;
        for st in &snap.slots {
            if st.ticket == 0 || st.ticket >= snap.serving || st.index >= MAX_CAPACITY {
                continue;
            }
            if st.index >= self.slots.len() {
                self.slots.ensure(st.index + 1);
            }
            let Some(s) = self.slots.get(st.index) else {
                continue;
            };
            if s.ticket.load(Ordering::Acquire) != 0 {
                continue;
            }
            s.visitor.store(st.visitor, Ordering::Relaxed);
            s.binding.store(st.binding, Ordering::Relaxed);
            s.last_seen
                .store(self.secs(st.last_seen_ms), Ordering::Relaxed);
            s.ticket.store(st.ticket, Ordering::Release);
            active += 1;
            if snap.serving - st.ticket <= CLAIM_WINDOW {
                let (w, m) = bit_of(st.ticket);
                self.claimed[w].fetch_or(m, Ordering::AcqRel);
            }
        }
        self.store.restore(StoreCounters {
            next_ticket: snap.next_ticket,
            serving: snap.serving,
            occupied: active.saturating_add(pending),
        });
        self.active.store(active, Ordering::Release);
        self.pending.store(pending, Ordering::Release);
        self.released
            .store(snap.counters.released, Ordering::Relaxed);
        self.abandoned
            .store(snap.counters.abandoned, Ordering::Relaxed);
        self.expired.store(snap.counters.expired, Ordering::Relaxed);
        self.reclaim_from_ms
            .store(snap.taken_at_ms, Ordering::Release);
        self.reclaim_until_ms.store(now_ms, Ordering::Release);
        ctl.head = head;
        ctl.head_first_ms = 0;
        ctl.last_tick_ms = None;
        ctl.pace.clear();
        ctl.history.clear();
        Ok(())
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Unknown snapshot format version.
    #[error("unsupported snapshot format {0}")]
    Format(u32),
    /// Counters that cannot be right.
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(&'static str),
}

#[inline]
fn bit_of(t: u64) -> (usize, u64) {
    let i = t % CLAIM_WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

/// Token-bucket unit: one admission = `TOKEN` units; `admit_per_minute`
/// refills exactly `apm` units per ms (no rounding loss).
const TOKEN: u64 = 60_000;

/// Bucket size: two seconds of allowance, at least one token.
fn burst_units(apm: u32) -> u64 {
    (u64::from(apm) * 2000).max(TOKEN)
}

fn refill(ctl: &mut Controller, apm: u32, now_ms: u64) {
    // A clock set backwards (a rehearsal, an NTP step) restarts the measurement from now
    // instead of stalling the bucket until the old time comes back.
    let dt = now_ms.saturating_sub(ctl.last_refill_ms);
    ctl.last_refill_ms = now_ms;
    if apm == 0 {
        ctl.bucket_units = TOKEN;
        return;
    }
    let add = dt.saturating_mul(u64::from(apm));
    ctl.bucket_units = ctl.bucket_units.saturating_add(add).min(burst_units(apm));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    fn settings(capacity: u32) -> GateSettings {
        GateSettings {
            capacity,
            ..GateSettings::default()
        }
    }

    fn who(ticket: u64) -> Holder {
        Holder {
            ticket,
            visitor: ticket.wrapping_mul(31) ^ 0xabcdef,
            binding: 7,
        }
    }

    fn admitted_up_to(g: &Gate) -> u64 {
        g.store.serving() - 1
    }

    #[test]
    fn admission_order_is_ticket_order() {
        let g = Gate::new(&settings(3), T0);
        let tickets: Vec<u64> = (0..10).map(|_| g.take_ticket()).collect();
        assert_eq!(tickets, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            g.status(5),
            Position {
                ahead: 4,
                admitted: false
            }
        );
        let mut order = Vec::new();
        let mut now = T0;
        let mut held: Vec<(u32, u64)> = Vec::new();
        for _ in 0..20 {
            now += 250;
            g.tick(now);
            // Record newly admitted tickets, claim them.
            for t in 1..=10u64 {
                if g.status(t).admitted && !order.contains(&t) {
                    order.push(t);
                    held.push((g.claim(who(t), now).unwrap(), t));
                }
            }
            assert!(g.active() <= 3);
            // The earliest holder leaves.
            if let Some((slot, t)) = held.first().copied() {
                assert!(g.release(slot, t));
                held.remove(0);
            }
        }
        assert_eq!(order, (1..=10).collect::<Vec<_>>());
        // Nobody is admitted out of order: a later ticket is never admitted
        // while an earlier one waits (status is monotone in ticket number).
        let g2 = Gate::new(&settings(2), T0);
        for _ in 0..5 {
            g2.take_ticket();
        }
        g2.tick(T0 + 1);
        let adm: Vec<bool> = (1..=5).map(|t| g2.status(t).admitted).collect();
        assert_eq!(adm, vec![true, true, false, false, false]);
        assert_eq!(g2.status(5).ahead, 2);
    }

    #[test]
    fn rate_cap_holds_over_ten_minutes() {
        let s = GateSettings {
            capacity: 2000,
            admit_per_minute: 60,
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        for _ in 0..1500 {
            g.take_ticket();
        }
        let mut now = T0;
        let mut per_minute_max = 0;
        while now < T0 + 600_000 {
            now += 250;
            g.tick(now);
            per_minute_max = per_minute_max.max(g.stats().admitted_last_minute);
        }
        let admitted = admitted_up_to(&g);
        assert!((599..=601).contains(&admitted), "admitted {admitted}");
        assert!(per_minute_max <= 62, "per minute max {per_minute_max}");
        let st = g.stats();
        assert!(
            (st.admission_rate - 1.0).abs() < 0.1,
            "{}",
            st.admission_rate
        );
        // ~1/s measured: someone with 59 ahead waits about a minute.
        let w = g.estimate_wait(59).unwrap().as_secs_f64();
        assert!((54.0..=66.0).contains(&w), "wait {w}");
    }

    /// `people` wait from T0; every 100 ms (`steps` times) those whose stay (ms, by ticket)
    /// is over leave through the release header, the controller ticks, and everyone admitted
    /// comes at once. Returns the pace published after each step.
    fn run_line(g: &Gate, people: u64, steps: usize, stay: impl Fn(u64) -> u64) -> Vec<f64> {
        for _ in 0..people {
            g.take_ticket();
        }
        let mut now = T0;
        let mut inside: Vec<(u64, u32, u64)> = Vec::new();
        let mut next = 1u64;
        let mut rates = Vec::new();
        for _ in 0..steps {
            now += 100;
            inside.retain(|&(until, slot, t)| {
                if until <= now {
                    assert!(g.release(slot, t));
                    false
                } else {
                    true
                }
            });
            g.tick(now);
            while g.status(next).admitted {
                inside.push((now + stay(next), g.claim(who(next), now).unwrap(), next));
                next += 1;
            }
            rates.push(g.stats().admission_rate);
        }
        rates
    }

    #[test]
    fn pace_is_places_given_up_not_the_first_fill() {
        // 10 places, each person stays 1 s: the line moves at 10 people a second, although
        // the first tick lets 10 in at once.
        let g = Gate::new(&settings(10), T0);
        let rates = run_line(&g, 1000, 100, |_| 1000);
        // Nothing published before half a second of waiting; never the fill's 100/s.
        assert_eq!(rates[3], 0.0);
        assert!(rates.iter().all(|&r| r <= 20.0), "{rates:?}");
        let last = *rates.last().unwrap();
        assert!((9.0..=11.0).contains(&last), "{rates:?}");
        // 99 ahead: about ten seconds.
        let w = g.estimate_wait(99).unwrap().as_secs_f64();
        assert!((9.0..=11.2).contains(&w), "wait {w}");
    }

    /// A window opening: everyone starts waiting at once, and the first people let in stay a
    /// while before anyone leaves. The pace published must not count that first stay as a
    /// slow line (it once told the line a wait 40 times too long, so people polled too
    /// rarely to be there when their turn came).
    #[test]
    fn the_first_stay_after_an_opening_is_not_a_slow_pace() {
        // 10 places; person i stays 1.0–2.8 s (mean 1.9 s): about 5.3 people a second.
        let g = Gate::new(&settings(10), T0);
        let rates = run_line(&g, 2000, 300, |t| 1000 + (t % 10) * 200);
        let published: Vec<f64> = rates.iter().copied().filter(|&r| r > 0.0).collect();
        assert!(rates[40] > 0.0, "published within 4 s: {rates:?}");
        assert!(
            published.iter().all(|&r| (2.6..=10.6).contains(&r)),
            "{published:?}"
        );
    }

    #[test]
    fn unlimited_rate_fills_capacity_in_one_tick() {
        let g = Gate::new(&settings(50), T0);
        for _ in 0..80 {
            g.take_ticket();
        }
        let r = g.tick(T0 + 100);
        assert_eq!(r.admitted, 50);
        let st = g.stats();
        assert_eq!((st.waiting, st.pending, st.active), (30, 50, 0));
        // Pending reservations count as load: nothing more is admitted.
        assert_eq!(g.tick(T0 + 200).admitted, 0);
    }

    #[test]
    fn capacity_never_exceeded_under_concurrent_claims() {
        let cap = 32u32;
        let s = GateSettings {
            capacity: cap,
            session_duration: Duration::from_secs(1),
            arrival_timeout: Duration::from_secs(1),
            ..GateSettings::default()
        };
        let g = Arc::new(Gate::new(&s, T0));
        for _ in 0..2000 {
            g.take_ticket();
        }
        let clock = Arc::new(AtomicU64::new(T0));
        let done = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for w in 0..4u64 {
            let (g, clock, done, max_seen) =
                (g.clone(), clock.clone(), done.clone(), max_seen.clone());
            handles.push(std::thread::spawn(move || {
                let mut x = w + 1;
                let mut ok = 0u64;
                while !done.load(Ordering::Acquire) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let serving = g.store.serving();
                    let t = 1 + x % serving.max(1);
                    let now = clock.load(Ordering::Acquire);
                    if let Ok(slot) = g.claim(who(t), now) {
                        ok += 1;
                        let _ = g.touch(slot, who(t), 0, now);
                        if x % 3 == 0 {
                            g.release(slot, t);
                        }
                    }
                    let a = g.active();
                    max_seen.fetch_max(a, Ordering::AcqRel);
                    assert!(a <= cap, "active {a} > capacity");
                    assert!(g.store.occupied() <= cap);
                }
                ok
            }));
        }
        for _ in 0..100 {
            let now = clock.fetch_add(150, Ordering::AcqRel) + 150;
            g.tick(now);
            assert!(g.active() <= cap);
            std::thread::yield_now();
        }
        done.store(true, Ordering::Release);
        let claims: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(claims > 0);
        assert!(max_seen.load(Ordering::Acquire) <= cap);
        // Quiescent: counters agree with the slot table, no ticket twice.
        let mut seen = std::collections::HashSet::new();
        let mut used = 0u32;
        for i in 0..g.slots.len() {
            let t = g.slots.get(i).unwrap().ticket.load(Ordering::Acquire);
            if t != 0 {
                used += 1;
                assert!(seen.insert(t), "ticket {t} holds two slots");
            }
        }
        assert_eq!(used, g.active());
        let st = g.stats();
        assert_eq!(g.store.occupied(), st.active + st.pending);
    }

    #[test]
    fn copied_pass_with_other_binding_refused() {
        let g = Gate::new(&settings(5), T0);
        let t = g.take_ticket();
        g.tick(T0);
        let slot = g.claim(who(t), T0).unwrap();
        assert_eq!(g.touch(slot, who(t), T0, T0 + 1000), Ok(()));
        let thief = Holder {
            binding: 8,
            ..who(t)
        };
        assert_eq!(
            g.touch(slot, thief, T0, T0 + 1000),
            Err(TouchError::BoundElsewhere)
        );
        assert_eq!(g.claim(thief, T0), Err(ClaimError::BoundElsewhere));
        // Same visitor and binding: idempotent claim, no second slot.
        assert_eq!(g.claim(who(t), T0 + 5), Ok(slot));
        assert_eq!(g.active(), 1);
        // A pass for a slot held by someone else: expired.
        let t2 = g.take_ticket();
        g.tick(T0 + 10);
        let s2 = g.claim(who(t2), T0 + 10).unwrap();
        assert_ne!(s2, slot);
        assert_eq!(g.touch(s2, who(t), T0, T0 + 10), Err(TouchError::Expired));
        assert_eq!(g.touch(9999999, who(t), T0, T0), Err(TouchError::Expired));
    }

    #[test]
    fn release_frees_slot_and_next_ticket_gets_in() {
        let g = Gate::new(&settings(1), T0);
        let (t1, t2) = (g.take_ticket(), g.take_ticket());
        g.tick(T0);
        let slot = g.claim(who(t1), T0).unwrap();
        g.tick(T0 + 250);
        assert!(!g.status(t2).admitted);
        assert_eq!(g.claim(who(t2), T0 + 250), Err(ClaimError::NotAdmitted));
        assert!(!g.release(slot, t2), "release with wrong ticket");
        assert!(g.release(slot, t1));
        assert!(!g.release(slot, t1), "double release");
        assert_eq!(
            g.touch(slot, who(t1), T0, T0 + 300),
            Err(TouchError::Expired)
        );
        g.tick(T0 + 500);
        assert!(g.status(t2).admitted);
        assert!(g.claim(who(t2), T0 + 500).is_ok());
        // The released ticket cannot come back with its old ticket cookie.
        assert_eq!(g.claim(who(t1), T0 + 600), Err(ClaimError::AlreadyUsed));
        assert_eq!(g.stats().released, 1);
    }

    #[test]
    fn abandoned_tickets_are_skipped_after_arrival_timeout() {
        let g = waiting_gate(2, 60, 4);
        g.tick(T0);
        assert!(g.status(2).admitted && !g.status(3).admitted);
        g.claim(who(1), T0 + 1000).unwrap();
        // Ticket 2 never shows up: its room stays reserved until the timeout.
        g.tick(T0 + 30_000);
        assert!(!g.status(3).admitted);
        assert_eq!(g.stats().pending, 1);
        let r = g.tick(T0 + 60_000);
        assert_eq!(r.abandoned, 1);
        assert_eq!(r.admitted, 1);
        assert!(g.status(3).admitted && !g.status(4).admitted);
        let st = g.stats();
        assert_eq!((st.abandoned, st.pending, st.active), (1, 1, 1));
        // Ticket 2 arrives late: no room (1 active + 1 pending for ticket 3).
        assert_eq!(
            g.claim(who(2), T0 + 61_000),
            Err(ClaimError::Late { ahead: 0 })
        );
        // Ticket 3 claims its reservation.
        assert!(g.claim(who(3), T0 + 61_000).is_ok());
        assert_eq!(g.stats().pending, 0);
        assert_eq!(g.store.occupied(), 2);
    }

    #[test]
    fn late_arrival_gets_in_when_room() {
        let s = GateSettings {
            capacity: 3,
            arrival_timeout: Duration::from_secs(10),
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        let t = g.take_ticket();
        g.tick(T0);
        g.tick(T0 + 11_000);
        assert_eq!(g.stats().abandoned, 1);
        assert!(g.claim(who(t), T0 + 12_000).is_ok());
        assert_eq!(g.store.occupied(), 1);
    }

    /// A gate of `capacity` with `arrival_timeout` of `arrival_s` seconds and `people` waiting
    /// from T0 (tickets 1..=people), before any tick.
    fn waiting_gate(capacity: u32, arrival_s: u64, people: u64) -> Gate {
        let s = GateSettings {
            capacity,
            arrival_timeout: Duration::from_secs(arrival_s),
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        for _ in 0..people {
            g.take_ticket();
        }
        g
    }

    /// A gate of `capacity` with a 2 s `arrival_timeout` and `people` waiting from T0: the
    /// first `capacity` are admitted at T0 and do not come; at T0 + 2 s their places lapse
    /// and go to the next ones.
    fn first_ones_lapsed(capacity: u32, people: u64) -> Gate {
        let g = waiting_gate(capacity, 2, people);
        g.tick(T0);
        g.tick(T0 + 2_000);
        g
    }

    /// The window-opening defect: people admitted at the opening who came back after
    /// `arrival_timeout` were told "admitted" by the status while the claim failed (a loop
    /// between the status and the gate), and every freed place went to a new admission.
    #[test]
    fn late_arrivals_are_told_the_truth_and_free_room_is_theirs_first() {
        // 1 and 2 admitted; neither comes within 2 s: 3 and 4 get their places and claim.
        let g = first_ones_lapsed(2, 6);
        assert_eq!(g.stats().abandoned, 2);
        assert!(g.status(4).admitted);
        g.claim(who(3), T0 + 2_100).unwrap();
        let s4 = g.claim(who(4), T0 + 2_100).unwrap();
        // 2 and then 1 come back: the room is full. The status does not say "admitted"
        // (the claim would fail); they are first and second in the late line.
        assert_eq!(g.turn(2, T0 + 3_000), Turn::Late { ahead: 0 });
        assert_eq!(
            g.claim(who(2), T0 + 3_000),
            Err(ClaimError::Late { ahead: 0 })
        );
        assert_eq!(
            g.claim(who(1), T0 + 3_100),
            Err(ClaimError::Late { ahead: 1 })
        );
        assert_eq!(g.turn(1, T0 + 3_200), Turn::Late { ahead: 1 });
        assert_eq!(g.stats().late, 2);
        // A place frees: it is kept for them, not given to ticket 5, and the first in the
        // late line is woken.
        assert!(g.release(s4, 4));
        assert_eq!(g.admit(T0 + 4_000), 0);
        assert!(!g.status(5).admitted);
        assert_eq!(g.late_to_wake(), vec![2]);
        // Whichever of them comes first takes it: here 1.
        assert_eq!(g.turn(1, T0 + 4_100), Turn::Ready);
        g.claim(who(1), T0 + 4_100).unwrap();
        assert_eq!(g.turn(2, T0 + 4_200), Turn::Late { ahead: 0 });
        let st = g.stats();
        assert_eq!((st.active, st.pending, st.late), (2, 0, 1));
        // The next free place goes to 2; then new admissions resume.
        let s3 = g.claim(who(3), T0 + 4_300).unwrap();
        assert!(g.release(s3, 3));
        assert_eq!(g.admit(T0 + 4_400), 0);
        g.claim(who(2), T0 + 4_500).unwrap();
        assert_eq!((g.stats().late, g.store.occupied()), (0, 2));
        let s1 = g.claim(who(1), T0 + 4_600).unwrap();
        assert!(g.release(s1, 1));
        assert_eq!(g.admit(T0 + 4_700), 1);
        assert!(g.status(5).admitted && !g.status(6).admitted);
        let st = g.stats();
        assert_eq!(g.store.occupied(), st.active + st.pending);
    }

    /// Someone in the late line who stops coming stops holding room.
    #[test]
    fn a_late_arrival_who_left_stops_holding_room() {
        let g = first_ones_lapsed(1, 3);
        let s2 = g.claim(who(2), T0 + 2_100).unwrap();
        assert_eq!(g.turn(1, T0 + 2_200), Turn::Late { ahead: 0 });
        assert!(g.release(s2, 2));
        assert_eq!(g.admit(T0 + 3_000), 0, "kept for 1");
        // 1 never comes back: after LATE_IDLE_MS the place goes to 3.
        assert_eq!(g.tick(T0 + 2_200 + 25_000).admitted, 1);
        assert!(g.status(3).admitted);
        assert_eq!(g.stats().late, 0);
    }

    #[test]
    fn a_late_arrival_with_free_room_and_nobody_late_walks_in() {
        let g = waiting_gate(3, 2, 1);
        let t = 1;
        g.tick(T0);
        g.tick(T0 + 3_000);
        assert_eq!(g.turn(t, T0 + 3_000), Turn::Ready);
        assert_eq!(g.stats().late, 0, "free room: no late line");
        assert!(g.claim(who(t), T0 + 3_000).is_ok());
    }

    #[test]
    fn idle_slots_expire_after_session_duration() {
        let s = GateSettings {
            capacity: 1,
            session_duration: Duration::from_secs(60),
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        let (t1, t2) = (g.take_ticket(), g.take_ticket());
        g.tick(T0);
        let slot = g.claim(who(t1), T0).unwrap();
        g.touch(slot, who(t1), T0, T0 + 30_000).unwrap();
        assert_eq!(g.tick(T0 + 80_000).expired, 0);
        assert_eq!(g.active(), 1);
        assert!(!g.status(t2).admitted);
        let r = g.tick(T0 + 90_000);
        assert_eq!(r.expired, 1);
        assert_eq!(r.admitted, 1);
        assert_eq!(
            g.touch(slot, who(t1), T0, T0 + 90_001),
            Err(TouchError::Expired)
        );
        assert!(g.status(t2).admitted);
        assert_eq!(g.stats().expired, 1);
    }

    #[test]
    fn open_mode_admits_directly_when_idle() {
        let g = Gate::new(&settings(2), T0);
        let a1 = g.arrive(1, 1, T0);
        let a2 = g.arrive(2, 1, T0);
        assert!(matches!(a1, Arrival::Admitted { ticket: 1, .. }), "{a1:?}");
        assert!(matches!(a2, Arrival::Admitted { ticket: 2, .. }), "{a2:?}");
        assert_eq!(g.arrive(3, 1, T0), Arrival::Queued { ticket: 3 });
        // Room frees up but ticket 3 waits: a newcomer must not jump ahead.
        if let Arrival::Admitted { ticket, slot } = a1 {
            assert!(g.release(slot, ticket));
        }
        assert_eq!(g.arrive(4, 1, T0), Arrival::Queued { ticket: 4 });
        g.tick(T0 + 100);
        assert!(g.status(3).admitted && !g.status(4).admitted);
        let st = g.stats();
        assert_eq!((st.active, st.pending, st.waiting), (1, 1, 1));
    }

    #[test]
    fn queue_all_and_paused_modes() {
        let s = GateSettings {
            capacity: 10,
            mode: Mode::QueueAll,
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        assert_eq!(g.arrive(1, 1, T0), Arrival::Queued { ticket: 1 });
        g.set_mode(Mode::Paused);
        assert_eq!(g.arrive(2, 1, T0), Arrival::Queued { ticket: 2 });
        assert_eq!(g.tick(T0 + 100).admitted, 0);
        assert_eq!(g.estimate_wait(3), None);
        g.set_mode(Mode::QueueAll);
        assert_eq!(g.tick(T0 + 200).admitted, 2);
        assert_eq!(g.settings().mode, Mode::QueueAll);
    }

    #[test]
    fn direct_admission_respects_rate_cap() {
        let s = GateSettings {
            capacity: 100,
            admit_per_minute: 60,
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        assert!(matches!(g.arrive(1, 1, T0), Arrival::Admitted { .. }));
        assert!(matches!(g.arrive(2, 1, T0), Arrival::Queued { .. }));
        g.tick(T0 + 1000);
        assert!(g.status(2).admitted);
    }

    #[test]
    fn capacity_can_grow_at_runtime() {
        let g = Gate::new(&settings(1000), T0);
        assert_eq!(g.slots.len(), 1024);
        for _ in 0..1500 {
            g.take_ticket();
        }
        g.tick(T0);
        let s1 = g.claim(who(1), T0).unwrap();
        g.apply(&settings(1500));
        assert_eq!(g.slots.len(), 2048);
        assert_eq!(g.tick(T0 + 100).admitted, 500);
        // Slot indices survive growth.
        assert_eq!(g.touch(s1, who(1), T0, T0 + 200), Ok(()));
        for t in 2..=1500 {
            g.claim(who(t), T0 + 200).unwrap();
        }
        assert_eq!(g.active(), 1500);
        // Shrinking keeps sessions but admits nobody new.
        g.apply(&settings(10));
        g.take_ticket();
        assert_eq!(g.tick(T0 + 300).admitted, 0);
        assert_eq!(g.active(), 1500);
    }

    #[test]
    fn snapshot_restore_keeps_positions_and_slots() {
        let s = GateSettings {
            capacity: 3,
            ..GateSettings::default()
        };
        let g = Gate::new(&s, T0);
        for _ in 0..8 {
            g.take_ticket();
        }
        g.tick(T0);
        let s1 = g.claim(who(1), T0 + 1000).unwrap();
        let s2 = g.claim(who(2), T0 + 1000).unwrap();
        g.touch(s2, who(2), T0, T0 + 5000).unwrap();
        // Ticket 3 admitted but not arrived; 4..8 waiting.
        let snap = g.snapshot(T0 + 6000);
        assert_eq!(snap.slots.len(), 2);
        assert_eq!(snap.reservations.len(), 1);
        let json = serde_json::to_string(&snap).unwrap();
        let back: GateSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);

        let h = Gate::new(&s, T0 + 20_000);
        h.restore(&back, T0 + 20_000).unwrap();
        for t in 1..=8 {
            assert_eq!(h.status(t), g.status(t), "ticket {t}");
        }
        assert_eq!(h.status(6).ahead, 2);
        assert_eq!(h.take_ticket(), 9);
        assert_eq!(h.touch(s1, who(1), T0, T0 + 21_000), Ok(()));
        assert_eq!(h.touch(s2, who(2), T0, T0 + 21_000), Ok(()));
        let st = h.stats();
        assert_eq!((st.active, st.pending, st.waiting), (2, 1, 6));
        // Pending ticket 3 still claims its reservation; used tickets cannot
        // claim twice.
        assert!(h.claim(who(3), T0 + 21_000).is_ok());
        assert_eq!(
            h.claim(
                Holder {
                    binding: 1,
                    ..who(1)
                },
                T0 + 21_000
            ),
            Err(ClaimError::BoundElsewhere)
        );
        assert_eq!(h.tick(T0 + 21_100).admitted, 0);
        // last_seen survived: slot 1 (seen at +1s, refreshed at +21s) lives.
        assert_eq!(h.stats().expired, 0);
    }

    #[test]
    fn pass_issued_after_snapshot_reclaims_its_slot() {
        let g = Gate::new(&settings(4), T0);
        for _ in 0..3 {
            g.take_ticket();
        }
        g.tick(T0);
        let s1 = g.claim(who(1), T0).unwrap();
        let snap = g.snapshot(T0 + 1000);
        // Claimed after the snapshot: unknown to it.
        let s2 = g.claim(who(2), T0 + 2000).unwrap();
        let s3 = g.claim(who(3), T0 + 2000).unwrap();
        assert!(g.release(s1, 1));

        let h = Gate::new(&settings(4), T0 + 5000);
        h.restore(&snap, T0 + 5000).unwrap();
        // Pass issued after the snapshot, before the restart: re-claimed.
        assert_eq!(h.touch(s2, who(2), T0 + 2000, T0 + 6000), Ok(()));
        assert_eq!(h.active(), 2);
        // Again: plain touch now.
        assert_eq!(h.touch(s2, who(2), T0 + 2000, T0 + 6000), Ok(()));
        // A pass issued before the snapshot whose slot is empty: expired.
        assert_eq!(
            h.touch(s3, who(3), T0 + 500, T0 + 6000),
            Err(TouchError::Expired)
        );
        // A pass issued after the restart (this process issued it): no re-claim.
        assert_eq!(
            h.touch(s3, who(3), T0 + 5000, T0 + 6000),
            Err(TouchError::Expired)
        );
        // Restore refuses nonsense.
        let mut bad = snap.clone();
        bad.serving = bad.next_ticket + 1;
        assert!(h.restore(&bad, T0).is_err());
        bad.format = 99;
        assert_eq!(h.restore(&bad, T0), Err(RestoreError::Format(99)));
    }

    #[test]
    fn memory_per_active_user() {
        let per_slot = std::mem::size_of::<Slot>();
        assert!(per_slot <= 48, "slot is {per_slot} bytes");
        // Segment pointer overhead per slot.
        let seg_overhead =
            std::mem::size_of::<OnceLock<Box<[Slot]>>>() as f64 / SEGMENT_SLOTS as f64;
        let per_user = per_slot as f64 + seg_overhead;
        assert!(per_user <= 150.0, "{per_user} bytes per active user");
        assert_eq!(per_slot, 24);
        // A waiting user: a ticket number in a cookie, nothing on the server.
        let g = Gate::new(&settings(1), T0);
        let before = g.slots.len();
        for _ in 0..100_000 {
            g.take_ticket();
        }
        assert_eq!(g.slots.len(), before);
        assert_eq!(g.stats().waiting, 100_000);
    }

    #[test]
    fn settings_from_toml_and_validation() {
        let s: GateSettings = toml::from_str(
            "capacity = 500\nadmit_per_minute = 120\nsession_duration = \"30m\"\narrival_timeout = \"90s\"\nmode = \"queue_all\"\n",
        )
        .unwrap();
        assert_eq!(s.capacity, 500);
        assert_eq!(s.admit_per_minute, 120);
        assert_eq!(s.session_duration, Duration::from_secs(1800));
        assert_eq!(s.arrival_timeout, Duration::from_secs(90));
        assert_eq!(s.mode, Mode::QueueAll);
        assert!(s.validate().is_ok());
        let d: GateSettings = toml::from_str("").unwrap();
        assert_eq!(d, GateSettings::default());
        assert!(toml::from_str::<GateSettings>("capacty = 3").is_err());
        assert!(toml::from_str::<GateSettings>("session_duration = \"soon\"").is_err());
        assert!(toml::from_str::<GateSettings>("mode = \"closed\"").is_err());
        let bad = GateSettings {
            capacity: 0,
            session_duration: Duration::from_millis(10),
            ..GateSettings::default()
        };
        let errs = bad.validate().unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["capacity", "session_duration"]);
    }

    #[test]
    fn parallel_first_requests_share_one_slot() {
        for round in 0..20u64 {
            let g = Arc::new(Gate::new(&settings(10), T0));
            let t = g.take_ticket();
            g.tick(T0);
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let g = g.clone();
                    std::thread::spawn(move || g.claim(who(t), T0 + round))
                })
                .collect();
            let res: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            let slots: std::collections::HashSet<u32> = res.iter().filter_map(|r| r.ok()).collect();
            assert_eq!(slots.len(), 1, "{res:?}");
            assert!(
                res.iter().all(|r| r.is_ok() || *r == Err(ClaimError::Busy)),
                "{res:?}"
            );
            assert_eq!(g.active(), 1);
        }
    }

    #[test]
    fn replayed_ticket_cannot_take_many_slots() {
        let g = Gate::new(&settings(10), T0);
        let t = g.take_ticket();
        g.tick(T0);
        let slot = g.claim(who(t), T0).unwrap();
        for _ in 0..20 {
            assert_eq!(g.claim(who(t), T0), Ok(slot));
        }
        assert_eq!(g.active(), 1);
        assert_eq!(g.claim(who(0), T0), Err(ClaimError::NotAdmitted));
        assert_eq!(g.claim(who(u64::MAX), T0), Err(ClaimError::NotAdmitted));
    }
}
