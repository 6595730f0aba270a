//! The waiting room: signed tickets and passes ([`pass`]), per-gate admission
//! engine ([`engine`]) and the shareable admission state ([`store`]).
//!
//! Pure logic, no HTTP: the proxy decodes cookies with [`pass::Token`], asks
//! the [`engine::Gate`] where a ticket stands or lets a pass through with
//! [`engine::Gate::touch`], and runs [`engine::Gate::tick`] from a background
//! task.

pub mod engine;
pub mod pass;
pub mod store;

pub use engine::{
    Arrival, ClaimError, Gate, GateSettings, GateStats, Holder, Mode, Position, RestoreError,
    TickReport, TouchError,
};
pub use pass::{Keyring, Kind, PassError, Token, VisitorId};
pub use store::{AdmissionStore, GateSnapshot, MemoryStore};

/// A configuration error naming the offending key (relative to the gate
/// section) and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Key path, e.g. `capacity`.
    pub key: String,
    /// Why the value is refused.
    pub reason: String,
}

impl FieldError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// serde helper: durations written as humantime strings ("250ms", "30m").
pub(crate) mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e} (e.g. \"30s\", \"5m\")"
            ))
        })
    }
}
