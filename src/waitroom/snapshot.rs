//! The serializable gate snapshot used to survive restarts: queue counters, admitted sessions
//! (slots) and outstanding reservations. [`Gate::snapshot`](super::Gate::snapshot) takes one
//! and [`Gate::restore`](super::Gate::restore) loads one; the room writes them to its state
//! file on shutdown and periodically.

use serde::{Deserialize, Serialize};

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

impl GateSnapshot {
    /// Refuses a snapshot that cannot be loaded: unknown format, or counters that cannot be
    /// right.
    pub fn check(&self) -> Result<(), RestoreError> {
        if self.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::Format(self.format));
        }
        if self.serving == 0 || self.serving > self.next_ticket {
            return Err(RestoreError::Inconsistent(
                "serving must be in 1..=next_ticket",
            ));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_refused() {
        let mut s = GateSnapshot {
            format: SNAPSHOT_FORMAT,
            taken_at_ms: 0,
            next_ticket: 5,
            serving: 5,
            slots: Vec::new(),
            reservations: Vec::new(),
            counters: SnapshotCounters::default(),
        };
        assert_eq!(s.check(), Ok(()));
        s.serving = 0;
        assert!(matches!(s.check(), Err(RestoreError::Inconsistent(_))));
        s.serving = 6;
        assert!(matches!(s.check(), Err(RestoreError::Inconsistent(_))));
        s.format = 2;
        assert_eq!(s.check(), Err(RestoreError::Format(2)));
    }
}
