//! The state file: each lane's gate snapshot (counters, active slots, reservations) and its
//! pre-queue shuffle, written atomically (a temporary file, `fsync`ed, renamed over the old one,
//! then the directory `fsync`ed) and read back when the room is built, so waiting users keep
//! their place and admitted users their pass across a restart.
//!
//! Next to it, the ticket file (the state file's name plus `.tickets`): for each lane, the
//! ceiling of the ticket numbers reserved so far ([`crate::waitroom::sequence`]). It is written
//! the same durable way *before* any number under the new ceiling is handed out, so after a
//! crash (`kill -9`, power loss) between two snapshots numbers resume at the reserved ceiling:
//! the unused rest of the block is a gap, and no number in someone's cookie is handed out
//! again. Written at start-up and by the reserver ([`Room::reserve_numbers_now`], run by the
//! admin thread every tick and when an arrival finds a reservation due).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// The ticket file: for each lane (`gate/cohort`), the ceiling of the numbers reserved, and
/// the next number when it was written (every number below it was handed out).
#[derive(Debug, Default, Serialize, Deserialize)]
struct TicketFile {
    format: u32,
    lanes: BTreeMap<String, u64>,
    #[serde(default)]
    issued: BTreeMap<String, u64>,
}

/// Writes `bytes` to `path` so that a crash at any moment leaves the old content or the new,
/// never a mix: a temporary file next to it, `fsync`, rename over `path`, `fsync` of the
/// directory (so the rename itself is on disk).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

fn lane_key(gate: &str, cohort: &str) -> String {
    format!("{gate}/{cohort}")
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
        write_durably(path, &text).map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// The last save, at a clean shutdown once the workers have stopped (nothing hands out
    /// numbers any more): closes every lane's numbers at its next ticket, saves the state, then
    /// brings the ticket file's ceilings down to those next tickets, so a restart after a clean
    /// shutdown resumes numbering exactly (no gap). A crash in between leaves the older, higher
    /// ceilings: a gap, never a duplicate.
    pub fn save_final(&self) -> Result<(), RoomError> {
        let closing: Vec<Option<u64>> = self
            .gates
            .iter()
            .flat_map(|g| g.lanes.iter())
            .map(|l| l.gate.close_numbers())
            .collect();
        self.save()?;
        let Some(path) = self.ticket_file() else {
            return Ok(());
        };
        let _one = self.numbers_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.write_ticket_file(&path, &closing)
    }

    /// The ticket file, next to the state file.
    fn ticket_file(&self) -> Option<PathBuf> {
        let path = self.state_file.as_ref()?;
        let mut name = path.as_os_str().to_owned();
        name.push(".tickets");
        Some(PathBuf::from(name))
    }

    /// The ceilings reserved before this start (empty if there is no ticket file yet).
    fn read_ticket_file(path: &Path) -> Result<TicketFile, RoomError> {
        let err = |reason: String| RoomError::State {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::read(path) {
            Ok(t) => serde_json::from_slice(&t).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TicketFile::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes every lane's ceiling (`planned` where a new one is due, else the one in force).
    fn write_ticket_file(&self, path: &Path, planned: &[Option<u64>]) -> Result<(), RoomError> {
        let mut lanes = BTreeMap::new();
        let mut issued = BTreeMap::new();
        let keyed = self.gates.iter().flat_map(|g| {
            g.lanes
                .iter()
                .map(move |l| (lane_key(&g.name, &l.cohort_name), l))
        });
        for ((key, lane), p) in keyed.zip(planned) {
            if let Some(c) = p.or_else(|| lane.gate.numbers_ceiling()) {
                issued.insert(key.clone(), lane.gate.next_ticket().min(c));
                lanes.insert(key, c);
            }
        }
        let text = serde_json::to_vec(&TicketFile {
            format: 1,
            lanes,
            issued,
        })
        .map_err(|e| RoomError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let started = std::time::Instant::now();
        let r = write_durably(path, &text);
        let result = if r.is_ok() { "ok" } else { "error" };
        metrics::counter!(super::metric::NUMBER_BLOCKS, "result" => result).increment(1);
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            result,
            "ticket numbers reserved"
        );
        r.map_err(|e| RoomError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// At start-up, after the state file: numbers resume at the highest of the snapshot's next
    /// ticket and the ceiling reserved before (the unused rest of that block is a gap), and a
    /// first block is reserved before any traffic. Without a state file, nothing (memory only).
    pub(super) fn start_numbers(&self) -> Result<(), RoomError> {
        let Some(path) = self.ticket_file() else {
            return Ok(());
        };
        let _one = self.numbers_lock.lock().unwrap_or_else(|e| e.into_inner());
        let before = Self::read_ticket_file(&path)?;
        let now = self.clock.now_ms();
        let mut resume = Vec::new();
        let mut planned = Vec::new();
        for g in &self.gates {
            for l in &g.lanes {
                let key = lane_key(&g.name, &l.cohort_name);
                let reserved = before.lanes.get(&key).copied().unwrap_or(0);
                let issued = before.issued.get(&key).copied().unwrap_or(0);
                let from = l.gate.next_ticket().max(reserved);
                resume.push((issued, from));
                planned.push(Some(crate::waitroom::Gate::first_ceiling(from)));
            }
        }
        self.write_ticket_file(&path, &planned)?;
        let lanes = self
            .gates
            .iter()
            .flat_map(|g| g.lanes.iter().map(move |l| (g.name.as_str(), l)));
        for (((gate, l), (issued, from)), ceiling) in lanes.zip(resume).zip(planned) {
            let next = l
                .gate
                .start_numbers(issued, from, ceiling.unwrap_or(from), now);
            tracing::info!(
                gate,
                cohort = %l.cohort_name,
                next,
                ceiling = ceiling.unwrap_or(from),
                "ticket numbers resume"
            );
        }
        Ok(())
    }

    /// The reserver's step: for every lane whose numbers run low, writes the next ceiling to
    /// the ticket file (durably) and only then lets the lane hand out numbers under it.
    /// Returns how many lanes got a new block. Blocking I/O: run it off the async threads.
    pub fn reserve_numbers_now(&self) -> Result<usize, RoomError> {
        let Some(path) = self.ticket_file() else {
            return Ok(0);
        };
        let _one = self.numbers_lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_ms();
        let planned: Vec<Option<u64>> = self
            .gates
            .iter()
            .flat_map(|g| g.lanes.iter())
            .map(|l| l.gate.plan_numbers(now))
            .collect();
        let due = planned.iter().filter(|p| p.is_some()).count();
        if due == 0 {
            return Ok(0);
        }
        self.write_ticket_file(&path, &planned)?;
        let lanes = self.gates.iter().flat_map(|g| g.lanes.iter());
        for (l, p) in lanes.zip(planned) {
            if let Some(ceiling) = p {
                l.gate.reserve_numbers(ceiling);
            }
        }
        Ok(due)
    }

    /// Waits until an arrival finds a reservation of numbers due (the reserver also runs every
    /// tick without it).
    pub async fn numbers_wanted(&self) {
        self.numbers_wanted.notified().await;
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

    fn room(state: &Path) -> Room {
        let cfg = crate::config::Config::parse(&format!(
            "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
             [waiting_room]\nstate_file = {state:?}\n\
             keys = [{{ id = 1, secret = \"room-test-key-0123456789abcdef0123\" }}]\n\
             [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 2\n"
        ))
        .unwrap();
        Room::new(&cfg, std::sync::Arc::new(crate::clock::Clock::system())).unwrap()
    }

    fn gate(r: &Room) -> &crate::waitroom::Gate {
        &r.gates[0].lanes[0].gate
    }

    #[test]
    fn numbers_survive_a_crash_through_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let tickets = dir.path().join("state.json.tickets");
        let mut issued = std::collections::HashSet::new();
        let mut last = 0;
        for life in 0..4 {
            let r = room(&state);
            let on_disk: TicketFile =
                serde_json::from_slice(&std::fs::read(&tickets).unwrap()).unwrap();
            let ceiling = on_disk.lanes["claims/all"];
            assert_eq!(gate(&r).numbers_ceiling(), Some(ceiling));
            assert!(
                gate(&r).next_ticket() > last,
                "life {life}: resumes past the gap"
            );
            for i in 0..1_000 {
                if i % 100 == 0 {
                    r.reserve_numbers_now().unwrap();
                }
                let Some(t) = gate(&r).take_ticket() else {
                    r.reserve_numbers_now().unwrap();
                    continue;
                };
                let on_disk: TicketFile =
                    serde_json::from_slice(&std::fs::read(&tickets).unwrap()).unwrap();
                assert!(
                    t < on_disk.lanes["claims/all"],
                    "handed out under the file's ceiling"
                );
                assert!(issued.insert(t), "life {life}: {t} handed out twice");
                last = last.max(t);
                if i == 500 && life % 2 == 0 {
                    r.save().unwrap();
                }
            }
            // kill -9: no save at the end.
        }
        assert!(issued.len() >= 3_000);
        // Without a state file: memory only, unbounded, no file.
        let cfg = crate::config::Config::parse(
            "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
             [waiting_room]\nkeys = [{ id = 1, secret = \"room-test-key-0123456789abcdef0123\" }]\n\
             [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 2\n",
        )
        .unwrap();
        let r = Room::new(&cfg, std::sync::Arc::new(crate::clock::Clock::system())).unwrap();
        assert_eq!(gate(&r).numbers_ceiling(), None);
        assert_eq!(r.reserve_numbers_now().unwrap(), 0);
    }

    #[test]
    fn a_clean_shutdown_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let r = room(&state);
        let last = (0..10).map(|_| gate(&r).take_ticket().unwrap()).last();
        assert_eq!(last, Some(10));
        r.save_final().unwrap();
        assert_eq!(
            gate(&r).take_ticket(),
            None,
            "closed: nothing handed out after"
        );
        drop(r);
        let r = room(&state);
        assert_eq!(gate(&r).take_ticket(), Some(11), "resumes exactly");
    }

    #[test]
    fn a_torn_ticket_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        std::fs::write(
            dir.path().join("state.json.tickets"),
            b"{\"format\":1,\"lan",
        )
        .unwrap();
        let cfg = crate::config::Config::parse(&format!(
            "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
             [waiting_room]\nstate_file = {state:?}\n\
             keys = [{{ id = 1, secret = \"room-test-key-0123456789abcdef0123\" }}]\n\
             [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 2\n"
        ))
        .unwrap();
        let e = Room::new(&cfg, std::sync::Arc::new(crate::clock::Clock::system()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("state.json.tickets"), "{e}");
    }

    #[test]
    fn hex_round_trip() {
        let k: [u8; 32] = rand::random();
        assert_eq!(unhex32(&hex(&k)), Some(k));
        assert_eq!(unhex32("zz"), None);
    }
}
