//! The waiting room: signed tickets and passes ([`pass`]), and each gate's admission engine,
//! one mechanism per file, composed by the [`Gate`] ([`gate`]).
//!
//! Pure logic, no HTTP and no I/O: the proxy decodes cookies with [`pass::Token`], asks the
//! [`Gate`] where a ticket stands or lets a pass through with [`Gate::touch`], and runs
//! [`Gate::tick`] from a background task.
//!
//! | file | owns |
//! |---|---|
//! | [`settings`] | [`GateSettings`], [`Mode`], validation; the settings in force |
//! | [`slots`] | the slot table: claim, touch, re-claim, release, idle expiry (local to a node) |
//! | `visits` | shared store only: passes honoured on this node whose slot is another node's |
//! | `claims` | the claimed-once bitmap over recently admitted tickets |
//! | `reservations` | room held for admitted tickets until they arrive; abandonment |
//! | `bucket` | the `admit_per_minute` token bucket |
//! | `pace` | the line's pace behind [`Gate::estimate_wait`] |
//! | [`sequence`] | ticket numbers from blocks reserved on disk first (no duplicate after a crash) |
//! | [`late`] | the late line: admitted tickets back after their place lapsed |
//! | [`snapshot`] | [`GateSnapshot`] and [`RestoreError`] (restarts) |
//! | [`store`] | the [`AdmissionStore`] boundary: counters and the late line a shared store may hold |
//! | [`gate`] | the [`Gate`]: arrive, claim, turn, touch, release, tick, admit, stats |
//! | `answers` | what the gate answers: [`Position`], [`Turn`], [`Arrival`], errors, stats |

mod answers;
mod bucket;
mod claims;
pub mod gate;
pub mod late;
mod pace;
pub mod pass;
mod reservations;
pub mod sequence;
pub mod settings;
pub mod slots;
pub mod snapshot;
pub mod store;
mod visits;

pub use answers::{Arrival, ClaimError, GateStats, Position, TickReport, TouchError, Turn};
pub use claims::CLAIM_WINDOW;
pub use gate::Gate;
pub use pass::{Keyring, Kind, PassError, Token, VisitorId};
pub use settings::{GateSettings, Mode};
pub use slots::{Occupant, MAX_CAPACITY};
pub use snapshot::{GateSnapshot, RestoreError};
pub use store::{AdmissionStore, MemoryStore, SharedAdmission, SharedClaim};

/// A configuration error naming the offending key and a reason (shared by every section).
pub use crate::util::field_error::FieldError;

/// serde helper: durations written as humantime strings ("250ms", "30m").
pub(crate) use crate::util::duration::serde_str as serde_duration;
