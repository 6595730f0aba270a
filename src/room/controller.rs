//! The controller ([`Room::tick`], run by the admin thread): aligns each lane's mode and
//! capacity with the schedule, the capacity shares and the portal's health (the admission
//! factor, [`Room::set_health`]), advances the queues, shuffles the pre-queue at opening, wakes
//! the long polls of the people it let in, and publishes the gauges.

use std::sync::atomic::Ordering;

use super::lanes::{GateRuntime, Lane, Switch};
use super::{metric, Room};
use crate::guard::{Load, LoadAverages};
use crate::schedule::{PrequeueOrder, WindowState};
use crate::waitroom::{GateStats, Mode};

impl Room {
    /// The controller: aligns modes and capacities with schedules and shares, advances the
    /// queues, shuffles pre-queues at opening, publishes metrics.
    pub fn tick(&self) {
        self.follow_fleet_admin();
        let now = self.clock.now_ms();
        let now_dt = self.clock.now();
        let health = self.health();
        metrics::gauge!(metric::ADMISSION_FACTOR).set(health);
        for g in &self.gates {
            let gp = g.policy();
            let active_total: u32 = g.lanes.iter().map(|l| l.gate.active()).sum();
            let bound = g.capacity.load(Ordering::Relaxed);
            let steering = g.steering.load(Ordering::Relaxed);
            // Following the portal: the room it can serve now, never past the safety bound.
            let configured = if gp.follow_portal && steering > 0 {
                steering.min(bound)
            } else {
                bound
            };
            let apm = g.admit_per_minute.load(Ordering::Relaxed);
            // The loop closed with the portal: a struggling portal means fewer new admissions
            // (a lower rate when one is set, else less room); users inside keep their slot.
            // A gate that follows the portal already shrinks with it (`follow_portal`): the
            // admission factor, fed by the same guard, must not shrink it a second time.
            let health = if gp.follow_portal && steering > 0 {
                1.0
            } else {
                health
            };
            let (total, apm) = if health >= 1.0 {
                (configured, apm)
            } else if apm > 0 {
                (configured, ((apm as f64 * health).ceil() as u32).max(1))
            } else {
                (
                    ((configured as f64 * health) as u32)
                        .max(active_total)
                        .min(configured)
                        .max(1),
                    0,
                )
            };
            // Which lanes admit now.
            let states: Vec<u8> = g
                .lanes
                .iter()
                .map(|l| match (&gp.schedule, l.cohort) {
                    (Some(s), Some(c)) => match s.state(c, now_dt) {
                        WindowState::Open { .. } => 2,
                        WindowState::PreQueue { opens_at } => {
                            l.opens_at_s.store(opens_at.timestamp(), Ordering::Relaxed);
                            1
                        }
                        WindowState::Closed { .. } => 0,
                    },
                    _ => 2,
                })
                .collect();
            let share_sum: f64 = g
                .lanes
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s == 2)
                .map(|(l, _)| l.cohort.map(|c| gp.shares[c.index()]).unwrap_or(1.0))
                .sum();
            // Users of closed lanes still inside (grace) keep their room.
            let held_by_closed: u32 = g
                .lanes
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s != 2)
                .map(|(l, _)| l.gate.active())
                .sum();
            let open_total = total.saturating_sub(held_by_closed);
            for (l, &st) in g.lanes.iter().zip(&states) {
                let share = l.cohort.map(|c| gp.shares[c.index()]).unwrap_or(1.0);
                let (cap, rate) = if st == 2 && share_sum > 0.0 {
                    let f = share / share_sum;
                    (
                        ((open_total as f64 * f).floor() as u32).max(1),
                        if apm == 0 {
                            0
                        } else {
                            ((apm as f64 * f).ceil() as u32).max(1)
                        },
                    )
                } else {
                    (l.gate.active().max(1), apm)
                };
                let mode = match (st, g.switch()) {
                    (2, Switch::Configured) => gp.configured_mode,
                    (2, Switch::Forced(m)) => m,
                    _ => Mode::Paused,
                };
                let mut s = gp.settings.clone();
                s.capacity = cap;
                s.admit_per_minute = rate;
                s.mode = mode;
                if l.gate.settings() != s {
                    l.gate.apply(&s);
                }
                // Opening after a pre-queue: shuffle everyone already waiting and let the
                // first in, then wake every held poll, so each learns its drawn place (or
                // that it is in) from its first answer. Until then requests see the pre-queue
                // (`Room::window_state`).
                let prev = l.last_state.load(Ordering::Relaxed);
                if prev == 1 && st == 2 {
                    if let Some(sched) = &gp.schedule {
                        if sched.prequeue_order() == PrequeueOrder::Random {
                            let stats = l.gate.stats();
                            // With a shared store every node applies the first node's draw.
                            let (start, end, key) = l.gate.agree_shuffle(
                                l.opens_at_s.load(Ordering::Relaxed),
                                stats.serving,
                                stats.next_ticket,
                                rand::random(),
                            );
                            l.set_shuffle(start, end, key);
                            tracing::info!(gate = %g.name, cohort = %l.cohort_name,
                                waiting = stats.next_ticket - stats.serving,
                                "window opened: pre-queue shuffled");
                        }
                    }
                }
                // From the last counter woken up to (a shared store moves it between ticks).
                let before = match l.woken.load(Ordering::Relaxed) {
                    0 => l.gate.serving(),
                    w => w.min(l.gate.serving()),
                };
                l.gate.tick(now);
                l.last_state.store(st, Ordering::Relaxed);
                if prev != st && prev != u8::MAX {
                    // Opened or closed: every long poll has a new answer.
                    l.wakers.wake_all();
                }
                l.wake_admitted(before);
                l.woken.store(l.gate.serving(), Ordering::Relaxed);
                publish(g, l, &l.gate.stats());
            }
        }
    }

    /// Admission that follows the portal (`admission = "portal"`), run by the controller each
    /// tick with a reading of the portal guard ([`Load`]).
    ///
    /// The signal is the portal's own use over the last tick, measured exactly (time
    /// integrals, not samples): the slots it left idle while people waited are room for more
    /// people. Each tick a full room grows by the slots left idle (less the requests of people
    /// inside that waited for a slot, and the people let in within [`COMING_WITHIN_MS`] and
    /// not yet here: each brings a request), times the people one slot serves (the inverse of the average use of
    /// the portal per person inside, at most [`PER_IDLE_SLOT`]: people just let in ask at
    /// once). People inside read, type or have left: however they use the portal between
    /// pages, it is kept busy, and a short line of their requests (served first by the guard)
    /// takes each slot the moment it frees. The room shrinks by [`SHRINK`] a tick while
    /// requests wait for a slot, on average over the last second, more than [`QUEUE_MOST`] of
    /// the portal's limit: a portal that slows down, or a learned limit that drops, is followed
    /// within a second, and a burst of newcomers' open pages (served after people inside) gets
    /// its share of the portal instead of being shed. `capacity` stays the bound; several following
    /// gates share the idle slots in proportion to the people each has waiting.
    pub fn follow_portal(&self, load: Load) {
        let limit = load.limit.max(1) as f64;
        let Some((avg, queue)) = self
            .follow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(load)
        else {
            return;
        };
        let (busy, waited) = (avg.busy, avg.waiting_inside);
        let following: Vec<&GateRuntime> = self
            .gates
            .iter()
            .filter(|g| {
                let on = g.policy().follow_portal;
                if !on {
                    // Not (or no longer) following: nothing learned to resume from later.
                    g.steering.store(0, Ordering::Relaxed);
                }
                on
            })
            .collect();
        let rooms: Vec<(u32, u32, u64)> = following
            .iter()
            .map(|g| {
                g.lanes.iter().fold((0, 0, 0), |(a, p, w), l| {
                    let s = l.gate.stats();
                    (a + s.active, p + s.pending, w + s.waiting)
                })
            })
            .collect();
        // People let in who will bring a request within the tick: those let in lately. A place
        // held longer is mostly someone who does not poll (a reload every few seconds) or who
        // left; counting it for its whole `arrival_timeout` kept the portal idle while people
        // waited (claim day: a third of the places are held for people who never come).
        let now = self.clock.now_ms();
        let coming: u32 = following
            .iter()
            .flat_map(|g| g.lanes.iter())
            .map(|l| l.gate.pending_recent(now, COMING_WITHIN_MS))
            .sum();
        let inside_all: u32 = rooms.iter().map(|r| r.0 + r.1).sum();
        let waiting_all: u64 = rooms.iter().map(|r| r.2).sum();
        let idle = limit - busy - waited - f64::from(coming);
        // A line that stood for the last second and still stands: the smoothed queue alone
        // lags the line by a second, and shrank the room for that long after the line was
        // gone (`plain-clients.toml` arrivals: a room of 125 shrunk to 64, the portal at 12 of 20).
        let line_now = avg.waiting_inside + avg.waiting_new;
        let crowded = queue > QUEUE_MOST * limit && line_now > QUEUE_MOST * limit;
        for (g, &(active, pending, waiting)) in following.iter().zip(&rooms) {
            let bound = g.capacity.load(Ordering::Relaxed).max(1);
            let cur = match g.steering.load(Ordering::Relaxed) {
                0 => (limit as u32).min(bound),
                n => n.min(bound),
            };
            let occupied = active + pending;
            let next = if crowded {
                // Shrink from the people inside, not from a room that was never filled, nor
                // from one already shrunk below them: people leave a room at the pace of
                // their journeys, so a room cut tick after tick while the line drains ends
                // far below what the portal needed once it has drained.
                cur.min((f64::from(occupied.max(1)) * (1.0 - SHRINK)) as u32)
            } else if waiting > 0 && occupied + 1 >= cur && idle >= 1.0 {
                // People inside use the portal part of the time: an idle slot is room for
                // more than one of them (as many as one slot's worth of their average use),
                // but at most [`PER_IDLE_SLOT`], since people just let in ask at once.
                let share = waiting as f64 / waiting_all.max(1) as f64;
                let per_person = (busy + waited) / f64::from(inside_all.max(1));
                let people = (1.0 / per_person.max(1e-3)).clamp(1.0, PER_IDLE_SLOT);
                cur.saturating_add((idle * share * people).floor() as u32)
            } else {
                cur
            };
            tracing::trace!(gate = %g.name, busy, waited, queue, active, pending, waiting, cur, next,
                "following the portal");
            g.steering.store(next.clamp(1, bound), Ordering::Relaxed);
        }
    }

    /// How much of the configured admission the portal can take now, in (0, 1]: set by the
    /// controller from the portal guard and the circuit breaker.
    pub fn health(&self) -> f64 {
        f64::from_bits(self.health_bits.load(Ordering::Relaxed))
    }

    /// Sets the admission factor (clamped to [0.01, 1]).
    pub fn set_health(&self, f: f64) {
        self.health_bits
            .store(f.clamp(0.01, 1.0).to_bits(), Ordering::Relaxed);
    }
}

/// Requests waiting for a slot (of people inside, and newcomers' open pages), on average over
/// about a second, as a share of the portal's limit, past which a following room shrinks:
/// people inside make way for the rest of the portal's traffic.
const QUEUE_MOST: f64 = 0.5;
/// Following the portal: a place held for someone let in counts as a request on its way for
/// this long (people who poll come within milliseconds of their turn; see `follow_portal`).
const COMING_WITHIN_MS: u64 = 250;
/// How much a following room shrinks a tick.
const SHRINK: f64 = 0.05;
/// People let in per idle portal slot and tick, at most.
const PER_IDLE_SLOT: f64 = 2.0;
/// The queue of people inside is averaged over about this long.
const QUEUE_SMOOTHING_US: f64 = 1_000_000.0;

/// The portal's load as the room follows it: the previous reading and the queue's average.
#[derive(Debug, Default)]
pub(crate) struct Follow {
    prev: Option<Load>,
    /// Requests waiting for a slot (of people inside and of newcomers), on average over the
    /// last second or so.
    queue: f64,
}

impl Follow {
    /// Takes a new reading; returns the averages since the previous one and the smoothed
    /// average of all requests waiting for a slot. `None` for the first reading.
    fn update(&mut self, load: Load) -> Option<(LoadAverages, f64)> {
        let prev = self.prev.replace(load)?;
        let avg = load.averages_since(&prev)?;
        let dt = load.at_us.saturating_sub(prev.at_us) as f64;
        let w = (dt / QUEUE_SMOOTHING_US).min(1.0);
        self.queue += w * (avg.waiting_inside + avg.waiting_new - self.queue);
        Some((avg, self.queue))
    }
}

fn publish(g: &GateRuntime, l: &Lane, s: &GateStats) {
    let labels = [("gate", g.name.clone()), ("cohort", l.cohort_name.clone())];
    metrics::gauge!(metric::WAITING, &labels).set(s.waiting as f64);
    metrics::gauge!(metric::ACTIVE, &labels).set(s.active as f64);
    metrics::gauge!(metric::PENDING, &labels).set(s.pending as f64);
    metrics::gauge!(metric::LATE, &labels).set(s.late as f64);
    metrics::gauge!(metric::CAPACITY, &labels).set(s.capacity as f64);
    let admitting = if s.mode == Mode::Paused { 0.0 } else { 1.0 };
    metrics::gauge!(crate::telemetry::WAITROOM_ADMITTING, &labels).set(admitting);
    metrics::counter!(metric::ISSUED, &labels).absolute(s.issued);
    metrics::counter!(metric::ADMITTED, &labels).absolute(s.admitted);
    metrics::counter!(metric::RELEASED, &labels).absolute(s.released);
    metrics::counter!(metric::ABANDONED, &labels).absolute(s.abandoned);
    metrics::counter!(metric::EXPIRED, &labels).absolute(s.expired);
    if let Some(w) = s.estimated_wait {
        metrics::gauge!(metric::ESTIMATED_WAIT, &labels).set(w.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use crate::clock::Clock;
    use crate::config::Config;

    fn room(text: &str, clock: Arc<Clock>) -> Room {
        let cfg = Config::parse(&format!(
            "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
             [waiting_room]\nkeys = [{{ id = 1, secret = \"room-test-key-0123456789abcdef0123\" }}]\n{text}"
        ))
        .unwrap();
        Room::new(&cfg, clock).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const SHARED_GATE: &str = "[cohorts]\ndefault = \"citizens\"\nnames = [\"citizens\", \"intermediaries\"]\n\
        [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 100\n\
        shares = { citizens = 0.75, intermediaries = 0.25 }\n\
        [gates.schedule]\ngrace = \"0s\"\n\
        [[gates.schedule.windows]]\ncohorts = [\"intermediaries\"]\nstart = \"08:00\"\nend = \"16:00\"\n\
        [[gates.schedule.windows]]\ncohorts = [\"citizens\"]\nstart = \"12:00\"\nend = \"08:00\"\n";

    fn caps(r: &Room) -> Vec<(String, u32, Mode)> {
        r.gates[0]
            .lanes
            .iter()
            .map(|l| {
                let s = l.gate.stats();
                (l.cohort_name.clone(), s.capacity, s.mode)
            })
            .collect()
    }

    #[test]
    fn capacity_shares_apply_only_while_windows_overlap() {
        let clock = Arc::new(Clock::system());
        // 10:00 Rome: only intermediaries are open: they get the whole gate.
        clock.freeze_at(at("2026-04-02T10:00:00+02:00"));
        let r = room(SHARED_GATE, clock.clone());
        r.tick();
        let c = caps(&r);
        assert_eq!(c[1], ("intermediaries".into(), 100, Mode::Open), "{c:?}");
        assert_eq!(c[0].2, Mode::Paused, "{c:?}");
        // 13:00: both open: 75 / 25.
        clock.freeze_at(at("2026-04-02T13:00:00+02:00"));
        r.tick();
        let c = caps(&r);
        assert_eq!((c[0].1, c[1].1), (75, 25), "{c:?}");
        assert_eq!((c[0].2, c[1].2), (Mode::Open, Mode::Open));
        // 17:00: only citizens: the whole gate again.
        clock.freeze_at(at("2026-04-02T17:00:00+02:00"));
        r.tick();
        let c = caps(&r);
        assert_eq!(c[0], ("citizens".into(), 100, Mode::Open), "{c:?}");
        assert_eq!(c[1].2, Mode::Paused);
    }

    /// A room whose one gate follows a portal of 10 slots (safety bound 100, `gate_extra` in
    /// its config), with `taken` numbers handed out and `let_in` of them let in, the gate's
    /// capacity set to `let_in` so that exactly they are; the clock frozen.
    fn following(gate_extra: &str, taken: u32, let_in: u32) -> (Room, Arc<Clock>) {
        let clock = Arc::new(Clock::system());
        clock.freeze_at(at("2026-04-02T10:00:00+02:00"));
        let r = room(
            &format!(
                "[upstream_guard]\nmax_in_flight = 10\n\
                 [[gates]]\nname = \"a\"\nprefix = [\"/a\"]\ncapacity = 100\n\
                 admission = \"portal\"\n{gate_extra}"
            ),
            clock.clone(),
        );
        let gate = &r.gates[0].lanes[0].gate;
        let mut s = gate.settings();
        s.capacity = let_in;
        gate.apply(&s);
        for _ in 0..taken {
            assert!(gate.take_ticket().is_some());
        }
        assert_eq!(gate.admit(clock.now_ms()), u64::from(let_in));
        (r, clock)
    }

    /// Places held for people let in who do not come (they reload every few seconds, or left)
    /// stay held for `arrival_timeout`, but the room following the portal counts them as
    /// requests on their way only for `COMING_WITHIN_MS`: after that an idle portal grows it.
    #[test]
    fn places_held_for_people_who_do_not_come_leave_the_followed_room_free_to_grow() {
        use crate::guard::Load;
        // Ten let in, none of whom comes; twenty wait; the portal sits idle.
        let (r, clock) = following("arrival_timeout = \"2s\"\n", 30, 10);
        let g = &r.gates[0];
        let gate = &g.lanes[0].gate;
        g.steering.store(10, Ordering::Relaxed);
        let idle_portal = |at_us| Load {
            limit: 10,
            at_us,
            ..Load::default()
        };
        r.follow_portal(idle_portal(0));
        r.follow_portal(idle_portal(100_000));
        assert_eq!(
            g.steering.load(Ordering::Relaxed),
            10,
            "just let in: their requests are on their way"
        );
        clock.advance_ms(COMING_WITHIN_MS as i64 + 50);
        r.follow_portal(idle_portal(200_000));
        assert_eq!(gate.stats().pending, 10, "their places are still held");
        assert!(
            g.steering.load(Ordering::Relaxed) > 10,
            "held past {COMING_WITHIN_MS} ms without coming: the idle portal grows the room"
        );
    }

    /// A standing line at the portal shrinks a following room to a little under the people
    /// inside, not tick after tick below them while they leave at their journeys' pace; and a
    /// line that is gone stops the shrinking at once, though the second's average still
    /// remembers it.
    #[test]
    fn a_following_room_shrinks_under_the_people_inside_and_stops_with_the_line() {
        use crate::guard::Load;
        // Forty let in and inside, twenty wait; the room was 50.
        let (r, clock) = following("", 60, 40);
        let g = &r.gates[0];
        let gate = &g.lanes[0].gate;
        let slots: Vec<(u32, u64)> = (1..=40u64)
            .map(|ticket| {
                let who = crate::waitroom::Occupant {
                    ticket,
                    visitor: ticket,
                    binding: 1,
                };
                (gate.claim(who, clock.now_ms()).unwrap(), ticket)
            })
            .collect();
        clock.advance_ms(COMING_WITHIN_MS as i64 + 50);
        g.steering.store(50, Ordering::Relaxed);
        // The portal full (10 of 10) and a line of `line` requests, read every 100 ms.
        let (mut t, mut waited) = (0u64, 0u64);
        let mut read = |line: u64| {
            t += 100_000;
            waited += line * 100_000;
            r.follow_portal(Load {
                limit: 10,
                at_us: t,
                busy_us: 10 * t,
                inside_waiting_us: waited,
                new_waiting_us: 0,
            });
            g.steering.load(Ordering::Relaxed)
        };
        read(0);
        // A line of 10 (twice the half-limit it may keep) for a second and a half.
        let shrunk: Vec<u32> = (0..15).map(|_| read(10)).collect();
        let under = (40.0 * (1.0 - SHRINK)) as u32;
        assert_eq!(*shrunk.last().unwrap(), under, "{shrunk:?}");
        assert!(shrunk.iter().all(|&n| n >= under), "{shrunk:?}");
        // The line is gone this tick, and ten people finish their journeys; the second's
        // average still says 5 or more.
        for &(slot, ticket) in &slots[..10] {
            assert!(gate.release(slot, ticket));
        }
        assert_eq!(read(0), under, "no shrinking once the line is gone");
    }

    #[test]
    fn a_struggling_portal_lowers_admissions() {
        let clock = Arc::new(Clock::system());
        let r = room(
            "[[gates]]\nname = \"a\"\nprefix = [\"/a\"]\ncapacity = 100\nadmit_per_minute = 600\n\
             [[gates]]\nname = \"b\"\nprefix = [\"/b\"]\ncapacity = 100\n",
            clock,
        );
        r.set_health(0.1);
        r.tick();
        let a = r.gates[0].lanes[0].gate.settings();
        let b = r.gates[1].lanes[0].gate.settings();
        assert_eq!((a.capacity, a.admit_per_minute), (100, 60), "rate scaled");
        assert_eq!(b.capacity, 10, "no rate set: room scaled");
        r.set_health(1.0);
        r.tick();
        assert_eq!(r.gates[0].lanes[0].gate.settings().admit_per_minute, 600);
        assert_eq!(r.gates[1].lanes[0].gate.settings().capacity, 100);
    }
}
