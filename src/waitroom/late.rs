//! The late line: admitted tickets that came back after their reserved place lapsed.
//!
//! A ticket is admitted with a place held for it for `arrival_timeout`; someone who comes after
//! that (a page between two polls, a phone that slept) finds the place given to the line. They
//! were admitted, so they must not queue again from the back, and the status must not tell them
//! "admitted" while the gate has no place for them (that sends a page into a loop between the
//! status and the gate). They join this line instead, in the order they came back, and take
//! the next places that free up before anyone new is admitted; meanwhile the status tells them
//! how many late arrivals are ahead of them.
//!
//! The line only holds people who are still there: an entry not seen (a poll or a request)
//! for [`LateLine::idle_ms`] leaves it, and a place granted and not taken within
//! `arrival_timeout` is given back like any other lapsed reservation. Memory is bounded by
//! [`LATE_MAX`] entries (about 40 bytes each); it is the engine's only per-person state
//! outside the slot table, and only for people who were admitted and came back late.

use std::collections::{HashMap, VecDeque};

/// Most late arrivals remembered at once.
pub const LATE_MAX: usize = 1 << 16;
/// An ungranted entry not seen for this long leaves the line: longer than the longest held
/// status poll, so a page holding one is not dropped.
pub const LATE_IDLE_MS: u64 = 30_000;
/// A place granted to a late arrival is held at least this long (else `arrival_timeout`):
/// someone who missed their first place was not watching closely (a page between polls,
/// a person reloading by hand every few seconds), and a grant shorter than their cycle
/// lapses again and again, each time holding a place nobody uses.
pub const LATE_GRANT_MIN_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    seen_ms: u64,
    granted_ms: Option<u64>,
}

/// Where a late arrival stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateTurn {
    /// A place is held for this ticket: it can claim now.
    Granted,
    /// Waiting for a place behind `ahead` other late arrivals.
    Waiting {
        /// Late arrivals ahead.
        ahead: u64,
    },
}

/// The late line of one gate (kept under the gate's controller lock).
#[derive(Debug, Default)]
pub struct LateLine {
    entries: HashMap<u64, Entry>,
    /// Ungranted tickets in the order they came back, with their sequence numbers.
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
    /// Tickets granted a place since [`LateLine::take_granted`] was last called.
    granted: Vec<u64>,
}

/// What [`LateLine::expire`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Granted places not taken in time (to give back).
    pub lapsed_grants: u32,
    /// Ungranted entries not seen for [`LATE_IDLE_MS`].
    pub gone: u32,
}

impl LateLine {
    /// How long an ungranted entry stays without being seen, for a gate's `arrival_timeout`.
    pub fn idle_ms(arrival_timeout_ms: u64) -> u64 {
        LATE_IDLE_MS.max(arrival_timeout_ms)
    }

    /// How long a granted place is held, for a gate's `arrival_timeout`.
    pub fn grant_hold_ms(arrival_timeout_ms: u64) -> u64 {
        LATE_GRANT_MIN_MS.max(arrival_timeout_ms)
    }

    /// Late arrivals waiting for a place.
    pub fn waiting(&self) -> u32 {
        u32::try_from(self.order.len()).unwrap_or(u32::MAX)
    }

    /// Records that `ticket` is here now: joins the back of the line if new (unless the line
    /// is full), else refreshes it. Returns where it stands, before any grant.
    pub fn arrive(&mut self, ticket: u64, now_ms: u64) -> LateTurn {
        if let Some(e) = self.entries.get_mut(&ticket) {
            e.seen_ms = now_ms;
            let (seq, granted) = (e.seq, e.granted_ms.is_some());
            return if granted {
                LateTurn::Granted
            } else {
                LateTurn::Waiting {
                    ahead: self.ahead_of(seq),
                }
            };
        }
        let ahead = self.order.len() as u64;
        if self.entries.len() < LATE_MAX {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.entries.insert(
                ticket,
                Entry {
                    seq,
                    seen_ms: now_ms,
                    granted_ms: None,
                },
            );
            self.order.push_back((seq, ticket));
        }
        LateTurn::Waiting { ahead }
    }

    /// Where `ticket` stands, if it is in the line.
    pub fn turn(&self, ticket: u64) -> Option<LateTurn> {
        self.entries.get(&ticket).map(|e| match e.granted_ms {
            Some(_) => LateTurn::Granted,
            None => LateTurn::Waiting {
                ahead: self.ahead_of(e.seq),
            },
        })
    }

    fn ahead_of(&self, seq: u64) -> u64 {
        self.order.partition_point(|&(s, _)| s < seq) as u64
    }

    /// Grants places to the first `n` waiting entries (the caller has reserved `n` places,
    /// at most [`LateLine::waiting`]). Returns how many were granted.
    pub fn grant(&mut self, n: u32, now_ms: u64) -> u32 {
        let mut done = 0;
        while done < n {
            let Some((_, t)) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.get_mut(&t) {
                e.granted_ms = Some(now_ms);
                self.granted.push(t);
                done += 1;
            }
        }
        done
    }

    /// Takes the place granted to `ticket` (it is claiming): true if it had one.
    pub fn take(&mut self, ticket: u64) -> bool {
        match self.entries.get(&ticket) {
            Some(e) if e.granted_ms.is_some() => {
                self.entries.remove(&ticket);
                true
            }
            _ => false,
        }
    }

    /// Drops grants older than [`LateLine::grant_hold_ms`] and ungranted entries not seen for
    /// [`LateLine::idle_ms`].
    pub fn expire(&mut self, arrival_timeout_ms: u64, now_ms: u64) -> Expired {
        let mut out = Expired::default();
        if self.entries.is_empty() {
            return out;
        }
        let idle = Self::idle_ms(arrival_timeout_ms);
        let hold = Self::grant_hold_ms(arrival_timeout_ms);
        self.entries.retain(|_, e| match e.granted_ms {
            Some(g) if g.saturating_add(hold) <= now_ms => {
                out.lapsed_grants += 1;
                false
            }
            Some(_) => true,
            None if e.seen_ms.saturating_add(idle) <= now_ms => {
                out.gone += 1;
                false
            }
            None => true,
        });
        if out.gone > 0 {
            let entries = &self.entries;
            self.order.retain(|(_, t)| entries.contains_key(t));
        }
        out
    }

    /// Tickets granted a place since the last call (their held polls are to be woken).
    pub fn take_granted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.granted)
    }

    /// Places granted and not yet taken.
    pub fn granted_unclaimed(&self) -> u32 {
        let n = self.entries.len() - self.order.len();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Forgets everyone (a restored snapshot replaces the gate's state).
    pub fn clear(&mut self) {
        *self = LateLine::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_back_first_granted_and_ahead_counts_down() {
        let mut l = LateLine::default();
        assert_eq!(l.arrive(30, 0), LateTurn::Waiting { ahead: 0 });
        assert_eq!(l.arrive(10, 1), LateTurn::Waiting { ahead: 1 });
        assert_eq!(l.arrive(20, 2), LateTurn::Waiting { ahead: 2 });
        // Coming back again keeps the place in the late line.
        assert_eq!(l.arrive(10, 3), LateTurn::Waiting { ahead: 1 });
        assert_eq!(l.grant(1, 4), 1);
        assert_eq!(l.take_granted(), vec![30]);
        assert_eq!(l.turn(30), Some(LateTurn::Granted));
        assert_eq!(l.turn(10), Some(LateTurn::Waiting { ahead: 0 }));
        assert_eq!(l.turn(20), Some(LateTurn::Waiting { ahead: 1 }));
        assert_eq!((l.waiting(), l.granted_unclaimed()), (2, 1));
        assert!(!l.take(10), "not granted yet");
        assert!(l.take(30));
        assert!(!l.take(30), "a grant is taken once");
        assert_eq!((l.waiting(), l.granted_unclaimed()), (2, 0));
    }

    #[test]
    fn lapsed_grants_and_people_gone_leave_the_line() {
        let mut l = LateLine::default();
        l.arrive(1, 0);
        l.arrive(2, 0);
        l.arrive(3, 0);
        assert_eq!(l.grant(1, 1_000), 1);
        // Ticket 3 keeps polling; 2 is gone.
        l.arrive(3, 20_000);
        // A grant is held at least LATE_GRANT_MIN_MS, more than a 2 s arrival_timeout.
        assert_eq!(l.expire(2_000, 5_999), Expired::default());
        assert_eq!(l.turn(1), Some(LateTurn::Granted));
        let e = l.expire(2_000, 29_999);
        assert_eq!(
            e,
            Expired {
                lapsed_grants: 1,
                gone: 0
            }
        );
        let e = l.expire(2_000, 30_000);
        assert_eq!(
            e,
            Expired {
                lapsed_grants: 0,
                gone: 1
            }
        );
        assert_eq!(l.turn(1), None);
        assert_eq!(l.turn(2), None);
        assert_eq!(l.turn(3), Some(LateTurn::Waiting { ahead: 0 }));
        assert_eq!(l.waiting(), 1);
    }

    #[test]
    fn the_line_is_bounded() {
        let mut l = LateLine::default();
        for t in 0..LATE_MAX as u64 + 10 {
            l.arrive(t, 0);
        }
        assert_eq!(l.waiting() as usize, LATE_MAX);
        // Someone who could not join is told how many are ahead, and joins once there is room.
        let t = LATE_MAX as u64 + 5;
        assert_eq!(l.turn(t), None);
        assert_eq!(
            l.arrive(t, 1),
            LateTurn::Waiting {
                ahead: LATE_MAX as u64
            }
        );
    }

    #[test]
    fn idle_time_outlasts_a_held_poll_and_a_grant_a_reload() {
        assert_eq!(LateLine::idle_ms(2_000), LATE_IDLE_MS);
        assert_eq!(LateLine::idle_ms(120_000), 120_000);
        assert_eq!(LateLine::grant_hold_ms(2_000), LATE_GRANT_MIN_MS);
        assert_eq!(LateLine::grant_hold_ms(60_000), 60_000);
    }
}
