//! The waiting room: signed tickets and passes ([`pass`]), per-gate admission
//! engine ([`engine`]) and the shareable admission state ([`store`]).
//!
//! Pure logic, no HTTP: the proxy decodes cookies with [`pass::Token`], asks
//! the [`engine::Gate`] where a ticket stands or lets a pass through with
//! [`engine::Gate::touch`], and runs [`engine::Gate::tick`] from a background
//! task.

pub mod engine;
pub mod late;
pub mod pass;
pub mod store;

pub use engine::{
    Arrival, ClaimError, Gate, GateSettings, GateStats, Holder, Mode, Position, RestoreError,
    TickReport, TouchError, Turn,
};
pub use pass::{Keyring, Kind, PassError, Token, VisitorId};
pub use store::{AdmissionStore, GateSnapshot, MemoryStore};

/// A configuration error naming the offending key and a reason (shared by every section).
pub use crate::cohort::FieldError;

/// serde helper: durations written as humantime strings ("250ms", "30m").
pub(crate) use crate::ratelimit::duration_str as serde_duration;
