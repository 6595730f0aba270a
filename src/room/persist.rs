//! The state file: each lane's gate snapshot (counters, active slots, reservations) and its
//! pre-queue shuffle, written atomically (a temporary file renamed over the old one) and read
//! back when the room is built, so waiting users keep their place and admitted users their
//! pass across a restart.

use serde::{Deserialize, Serialize};

use super::{Room, RoomError};
use crate::waitroom::GateSnapshot;

/// Persisted state of one lane.
#[derive(Debug, Serialize, Deserialize)]
struct LaneState {
    snapshot: GateSnapshot,
    shuffle: Option<(u64, u64, String)>,
}

/// Persisted state file.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    lanes: std::collections::BTreeMap<String, LaneState>,
}

impl Room {
    /// Saves queue counters, active slots and shuffles to the state file (if configured).
    pub fn save(&self) -> Result<(), RoomError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let mut lanes = std::collections::BTreeMap::new();
        for g in &self.gates {
            for l in &g.lanes {
                let shuffle = l
                    .shuffle
                    .read()
                    .ok()
                    .and_then(|s| s.as_ref().map(|s| (s.start, s.end, hex(&s.key))));
                lanes.insert(
                    format!("{}/{}", g.name, l.cohort_name),
                    LaneState {
                        snapshot: l.gate.snapshot(now),
                        shuffle,
                    },
                );
            }
        }
        let file = StateFile { format: 1, lanes };
        let err = |reason: String| RoomError::State {
            path: path.clone(),
            reason,
        };
        let text = serde_json::to_vec(&file).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    pub(super) fn restore(&self) -> Result<(), RoomError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(RoomError::State {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let err = |reason: String| RoomError::State {
            path: path.clone(),
            reason,
        };
        let file: StateFile = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        let now = self.clock.now_ms();
        for g in &self.gates {
            for l in &g.lanes {
                if let Some(st) = file.lanes.get(&format!("{}/{}", g.name, l.cohort_name)) {
                    l.gate
                        .restore(&st.snapshot, now)
                        .map_err(|e| err(format!("{}/{}: {e}", g.name, l.cohort_name)))?;
                    if let Some((start, end, key)) = &st.shuffle {
                        if let Some(key) = unhex32(key) {
                            l.set_shuffle(*start, *end, key);
                        }
                    }
                }
            }
        }
        tracing::info!(path = %path.display(), "waiting-room state restored");
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k: [u8; 32] = rand::random();
        assert_eq!(unhex32(&hex(&k)), Some(k));
        assert_eq!(unhex32("zz"), None);
    }
}
