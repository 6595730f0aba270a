//! What the gate answers: where a ticket stands ([`Position`], [`Turn`]), what an arrival got
//! ([`Arrival`]), why a claim or a pass was refused ([`ClaimError`], [`TouchError`]), and what
//! the controller did and counts ([`TickReport`], [`GateStats`]).

use std::time::Duration;

use super::settings::Mode;

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// People ahead in the queue (0 when admitted or next).
    pub ahead: u64,
    /// The ticket has been admitted and may claim a slot.
    pub admitted: bool,
}

/// Whether an admitted ticket can take its place now ([`Gate::turn`](super::Gate::turn)).
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

/// Result of [`Gate::arrive`](super::Gate::arrive).
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
    /// No number can be handed out right now: the numbers reserved durably are used up and
    /// the next block is not on disk yet (a surge faster than the reserver). Come back in a
    /// second; nothing was taken.
    Unnumbered,
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
    /// the late line behind `ahead` other late arrivals (see
    /// [`Gate::turn`](super::Gate::turn)).
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
