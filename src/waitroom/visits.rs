//! Shared store only: passes this node honours although their slot is not held here (issued by
//! another node of the fleet, or this node's slot cache let it go).
//!
//! A pass is signed with the fleet's keys, so its signature, lane, expiry and binding prove it
//! was issued to this client for an admitted ticket; whether the session is still on is the
//! store's to say. The first request of such a pass on this node is let through and recorded
//! here (visitor, binding, last seen); the controller reports the tickets seen to the store in
//! one batch per tick ([`SharedAdmission::touch`](super::SharedAdmission::touch)), which keeps
//! the session alive fleet-wide and answers which sessions have ended (released, or idle past
//! `session_duration` on every node): those are marked gone and refused from then on. So a pass
//! whose session ended elsewhere is honoured here for at most one controller tick.
//!
//! 64 shards, each a short lock around a map (the only lock on an admitted person's path, and
//! only for passes whose slot is another node's); at most [`VISITS_MAX`] entries per gate,
//! entries not seen for a session's length are dropped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::answers::TouchError;
use super::slots::Occupant;

/// Most passes of other nodes remembered per gate at once; past it a new one is let through
/// unrecorded (its session is kept alive by the node that holds its slot or by the next node
/// with room in its table).
pub const VISITS_MAX: usize = 1 << 20;
const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Visit {
    visitor: u64,
    binding: u32,
    last_seen_ms: u64,
    /// Seen since the last report to the store.
    dirty: bool,
    /// The store said the session ended.
    gone: bool,
}

/// The passes of other nodes seen here.
pub(super) struct Visits {
    shards: Box<[Mutex<HashMap<u64, Visit>>]>,
}

impl Visits {
    pub(super) fn new() -> Self {
        Visits {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, t: u64) -> MutexGuard<'_, HashMap<u64, Visit>> {
        let i = (t.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        // A map left by a panicking holder is still a valid map.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request with `who`'s pass: let through unless the store said the session ended, or
    /// another client already used this ticket's pass here.
    pub(super) fn see(&self, who: Occupant, now_ms: u64) -> Result<(), TouchError> {
        let mut m = self.shard(who.ticket);
        if let Some(v) = m.get_mut(&who.ticket) {
            if v.gone {
                return Err(TouchError::Expired);
            }
            if v.visitor != who.visitor || v.binding != who.binding {
                return Err(TouchError::BoundElsewhere);
            }
            v.last_seen_ms = now_ms;
            v.dirty = true;
            return Ok(());
        }
        if m.len() < VISITS_MAX / SHARDS {
            m.insert(
                who.ticket,
                Visit {
                    visitor: who.visitor,
                    binding: who.binding,
                    last_seen_ms: now_ms,
                    dirty: true,
                    gone: false,
                },
            );
        }
        Ok(())
    }

    /// Tickets seen since the last call (their flag is cleared), and entries not seen for
    /// `idle_ms` dropped.
    pub(super) fn take_seen(&self, now_ms: u64, idle_ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let mut m = s.lock().unwrap_or_else(|e| e.into_inner());
            m.retain(|&t, v| {
                if v.dirty {
                    v.dirty = false;
                    out.push(t);
                }
                now_ms.saturating_sub(v.last_seen_ms) < idle_ms
            });
        }
        out
    }

    /// Every pass remembered and not gone, with its owner (re-reported after the store lost
    /// its data).
    pub(super) fn all_live_owners(&self) -> Vec<Occupant> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let m = s.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(m.iter().filter(|(_, v)| !v.gone).map(|(t, v)| Occupant {
                ticket: *t,
                visitor: v.visitor,
                binding: v.binding,
            }));
        }
        out
    }

    /// Every ticket remembered and not gone (re-reported after the store lost its data).
    pub(super) fn all_live(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let m = s.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(m.iter().filter(|(_, v)| !v.gone).map(|(t, _)| *t));
        }
        out
    }

    /// A report to the store did not go through: these are reported again next time.
    pub(super) fn seen_again(&self, tickets: &[u64]) {
        for &t in tickets {
            if let Some(v) = self.shard(t).get_mut(&t) {
                v.dirty = true;
            }
        }
    }

    /// The store said `t`'s session ended: its pass is refused here from now on.
    pub(super) fn gone(&self, t: u64) {
        if let Some(v) = self.shard(t).get_mut(&t) {
            v.gone = true;
        }
    }

    /// Passes remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(t: u64, visitor: u64) -> Occupant {
        Occupant {
            ticket: t,
            visitor,
            binding: 7,
        }
    }

    #[test]
    fn a_foreign_pass_is_honoured_reported_and_refused_once_gone() {
        let v = Visits::new();
        assert_eq!(v.see(who(5, 1), 1_000), Ok(()));
        assert_eq!(v.see(who(5, 2), 1_000), Err(TouchError::BoundElsewhere));
        assert_eq!(v.take_seen(1_100, 60_000), vec![5]);
        assert!(v.take_seen(1_200, 60_000).is_empty(), "reported once");
        v.gone(5);
        assert_eq!(v.see(who(5, 1), 1_300), Err(TouchError::Expired));
        assert!(v.all_live().is_empty());
        // Idle entries are dropped.
        v.see(who(6, 1), 2_000).unwrap();
        v.take_seen(100_000, 60_000);
        assert_eq!(v.len(), 0);
    }
}
