//! The waiting-room stage of the request path: gates, cohorts, opening hours and admission.
//!
//! A gate has one *lane* per cohort when it has a schedule (each cohort has its own hours and
//! its own queue), or a single lane shared by everyone when it has none. A lane is a
//! [`waitroom::Gate`](crate::waitroom::Gate): a ticket counter, a serving counter and a slot
//! table. Tokens carry the lane's index, so a ticket taken in one lane never admits into another.
//!
//! For one gated request, [`Room::decide`] reads top to bottom:
//! 1. a valid pass for this lane → the schedule still allows the user (open, or within grace
//!    after close) → record activity on its slot (lock-free) → forward;
//! 2. the schedule is closed for the user's cohort → the "closed, opens at …" answer;
//! 3. a valid ticket → admitted? claim a slot, issue a pass, forward : the queue page;
//! 4. anything else (no cookie, forged, expired, another lane, a copied pass) → a new arrival:
//!    straight in when there is room and nobody waits, otherwise a ticket and the queue page.
//!
//! The controller ([`Room::tick`]) runs on its own task: it aligns each lane's mode and capacity
//! with the schedule and the capacity shares, advances the serving counters, shuffles the
//! pre-queue at opening, and publishes metrics.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Room`], building it, classify/route, the request stage [`Room::decide`], [`Room::release`] |
//! | `lanes.rs` | [`GateRuntime`], [`Lane`], the admin [`Switch`], the pre-queue shuffle |
//! | `status.rs` | status and long polls ([`Room::status`]), the wake-up shards, [`poll_advice`] |
//! | `controller.rs` | [`Room::tick`], the admission factor ([`Room::set_health`]), the gauges |
//! | `persist.rs` | the state file ([`Room::save`], restore at start) and the ticket file (numbers reserved before use, [`Room::reserve_numbers_now`]) |
//! | `cookies.rs` | ticket and pass cookies, [`binding_of`], [`strip_own_cookies`] |

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::{ArcSwap, Guard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::header::HeaderValue;
use http::request::Parts;
use http::Method;

use crate::clock::Clock;
use crate::cohort::CohortId;
use crate::config::Config;
use crate::schedule::{PrequeueOrder, WindowState};
use crate::util::cookie::cookie_value;
use crate::waitroom::{Arrival, ClaimError, Gate, Kind, Occupant, Token, TouchError, VisitorId};

mod controller;
mod cookies;
mod lanes;
mod persist;
mod policy;
mod status;

pub use cookies::{binding_of, strip_own_cookies};
pub use lanes::{GateRuntime, Lane, Switch};
pub use policy::RoomPolicy;

/// Metric names of the waiting room (labels: `gate`, `cohort`).
pub mod metric {
    /// People waiting (tickets not yet admitted).
    pub const WAITING: &str = "anticamera_waitroom_waiting";
    /// Active users (holding a slot).
    pub const ACTIVE: &str = "anticamera_waitroom_active";
    /// Admitted people whose place is held until they arrive (reservations).
    pub const PENDING: &str = "anticamera_waitroom_pending";
    /// Admitted people who came back after their held place lapsed, waiting in the late line.
    pub const LATE: &str = "anticamera_waitroom_late";
    /// Capacity currently given to the lane.
    pub const CAPACITY: &str = "anticamera_waitroom_capacity";
    /// Tickets issued.
    pub const ISSUED: &str = "anticamera_waitroom_tickets_issued_total";
    /// Tickets admitted.
    pub const ADMITTED: &str = "anticamera_waitroom_admitted_total";
    /// Sessions ended by the portal (release header).
    pub const RELEASED: &str = "anticamera_waitroom_released_total";
    /// Admitted tickets that never arrived.
    pub const ABANDONED: &str = "anticamera_waitroom_abandoned_total";
    /// Sessions ended by inactivity.
    pub const EXPIRED: &str = "anticamera_waitroom_expired_total";
    /// Time from ticket to admission (seconds).
    pub const WAIT: &str = "anticamera_waitroom_wait_seconds";
    /// Tokens refused, by `reason` (forged, tampered, expired, wrong gate, copied...).
    pub const REFUSED: &str = "anticamera_waitroom_refused_total";
    /// Requests refused because the cohort's window is closed.
    pub const CLOSED: &str = "anticamera_schedule_closed_total";
    /// Share of the configured admission given now (1 = all; lower while the portal struggles).
    pub const ADMISSION_FACTOR: &str = "anticamera_waitroom_admission_factor";
    /// Estimated wait for a new arrival (seconds; absent when unknown).
    pub const ESTIMATED_WAIT: &str = "anticamera_waitroom_estimated_wait_seconds";
    /// Arrivals that got no number (the numbers reserved in the state file were used up).
    pub const UNNUMBERED: &str = "anticamera_waitroom_unnumbered_total";
    /// Blocks of ticket numbers reserved in the ticket file, by `result` (`ok`, `error`).
    pub const NUMBER_BLOCKS: &str = "anticamera_waitroom_number_blocks_total";
}

/// Why the room answers instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The queue page: waiting, or pre-queued before opening.
    Queue {
        /// Gate index.
        gate: usize,
        /// People ahead.
        ahead: u64,
        /// Estimated wait.
        wait: Option<Duration>,
        /// Before opening: when it opens.
        opens_at: Option<DateTime<Utc>>,
        /// Random order at opening.
        prequeue_random: bool,
        /// The place in the admission order ("your number"), fixed while waiting; `None` in a
        /// pre-queue whose order is drawn at opening.
        number: Option<u64>,
        /// It is this user's turn (status poll only): request the page again.
        admitted: bool,
        /// Their turn came while they were away (the held place lapsed): they wait in the
        /// late line for the next free place, `ahead` counting other late arrivals.
        missed_turn: bool,
    },
    /// No number can be handed out this second (the numbers reserved in the state file are
    /// used up by a surge faster than the reserver): come back in a second.
    Unnumbered {
        /// Gate index.
        gate: usize,
    },
    /// Closed for this cohort now.
    Closed {
        /// Gate index.
        gate: usize,
        /// Cohort name.
        cohort: String,
        /// Next opening, if any.
        opens_at: Option<DateTime<Utc>>,
    },
}

/// The slot an admitted request holds, so a release header from the portal can free it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The lane (index carried in tokens).
    pub lane: u16,
    /// The slot in the lane's gate.
    pub slot: u32,
    /// The ticket holding the slot.
    pub ticket: u64,
}

/// The outcome of the waiting-room stage for one request.
#[derive(Debug)]
pub struct Decision {
    /// Forward (None) or answer.
    pub answer: Option<Answer>,
    /// Cookie to set on the response (a new ticket or pass).
    pub set_cookie: Option<HeaderValue>,
    /// The slot held, so a release header from the portal can free it.
    pub seat: Option<Seat>,
    /// Metric outcome label.
    pub outcome: &'static str,
}

/// Why the room could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// A config problem (validated before, so this is unexpected).
    #[error("{0}: {1}")]
    Config(String, String),
    /// The state file exists but cannot be used.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A reload changes what the lanes are built from: it needs a restart (nothing applied).
    #[error("needs a restart (nothing was applied): {}", .0.join("; "))]
    NeedsRestart(Vec<String>),
}

/// The waiting room of all gates.
pub struct Room {
    /// Gates in config order (first match wins).
    pub gates: Vec<GateRuntime>,
    /// Cohorts, keys, cookie lifetimes, poll interval: replaced whole by a reload.
    policy: ArcSwap<RoomPolicy>,
    /// The clock decisions use.
    pub clock: Arc<Clock>,
    cookie_secure: bool,
    state_file: Option<PathBuf>,
    /// Wakes the reserver of ticket numbers when an arrival finds a reservation due.
    numbers_wanted: tokio::sync::Notify,
    /// One reservation of numbers at a time (start-up and the reserver).
    numbers_lock: std::sync::Mutex<()>,
    /// With a shared store, on the leader: a session ended on another node (the controller
    /// lets the next in at once, [`Room::admit_released`]).
    released_elsewhere: Arc<tokio::sync::Notify>,
    /// Release header name.
    pub release_header: http::HeaderName,
    cookie_prefix: String,
    health_bits: AtomicU64,
    /// The portal's load as following gates see it (only the controller takes this lock).
    follow: std::sync::Mutex<controller::Follow>,
    /// With `[store] kind = "redis"`: this node's membership of the fleet (mirror, leader
    /// lease); stopped when the room is dropped.
    fleet: Option<Arc<crate::store::redis::Fleet>>,
}

impl Room {
    /// Builds the room from a validated config, restoring saved state if there is any.
    pub fn new(cfg: &Config, clock: Arc<Clock>) -> Result<Room, RoomError> {
        let (policy, gate_policies) = RoomPolicy::compile(cfg)?;
        let now = clock.now_ms();
        let fleet = match cfg.store.kind {
            crate::store::StoreKind::Memory => None,
            crate::store::StoreKind::Redis => Some(Arc::new(
                crate::store::redis::Fleet::start_ticking(&cfg.store, cfg.waiting_room.tick.0)
                    .map_err(|e| RoomError::Config("store".into(), e.to_string()))?,
            )),
        };
        let mut gates = Vec::new();
        let released_elsewhere = Arc::new(tokio::sync::Notify::new());
        let mut next_lane: u16 = 0;
        for (g, gp) in cfg.gates.iter().zip(gate_policies) {
            let mut lanes = Vec::new();
            let lane_cohorts: Vec<Option<CohortId>> = if gp.schedule.is_some() {
                (0..policy.cohorts.names().len())
                    .map(CohortId::from_index)
                    .collect()
            } else {
                vec![None]
            };
            for c in lane_cohorts {
                let cohort_name = c
                    .map(|c| policy.cohorts.name(c).to_string())
                    .unwrap_or_else(|| "all".into());
                let gate = match &fleet {
                    Some(f) => {
                        Gate::with_store(&gp.settings, Box::new(f.lane(&g.name, &cohort_name)), now)
                    }
                    None => Gate::new(&gp.settings, now),
                };
                let lane = Lane::new(next_lane, c, cohort_name, &g.name, gate);
                // A shared store's mirror moves serving between ticks (another node admitted):
                // the held long polls of the positions admitted wake at once.
                let wakers = lane.wakers.clone();
                lane.gate
                    .on_serving_moved(Box::new(move |from, to| wakers.wake(from, to)));
                // On the leader, a session ended on another node lets the next in at once.
                let released = released_elsewhere.clone();
                lane.gate
                    .on_released(Box::new(move || released.notify_one()));
                lanes.push(lane);
                next_lane = next_lane.checked_add(1).ok_or_else(|| {
                    RoomError::Config("gates".into(), "too many gates × cohorts".into())
                })?;
            }
            gates.push(GateRuntime {
                cookie: format!("{}{}", cfg.waiting_room.cookie_prefix, g.name),
                name: g.name.clone(),
                lanes,
                capacity: AtomicU32::new(g.capacity),
                admit_per_minute: AtomicU32::new(g.admit_per_minute),
                switch: RwLock::new(Switch::Configured),
                policy: ArcSwap::from_pointee(gp),
                steering: AtomicU32::new(0),
            });
        }
        let w = &cfg.waiting_room;
        let room = Room {
            gates,
            policy: ArcSwap::from_pointee(policy),
            clock,
            cookie_secure: w.cookie_secure,
            state_file: w.state_file.as_ref().map(|p| cfg.base_dir.join(p)),
            numbers_wanted: tokio::sync::Notify::new(),
            released_elsewhere,
            numbers_lock: std::sync::Mutex::new(()),
            release_header: http::HeaderName::from_bytes(w.release_header.as_bytes()).map_err(
                |e| RoomError::Config("waiting_room.release_header".into(), e.to_string()),
            )?,
            cookie_prefix: w.cookie_prefix.clone(),
            health_bits: AtomicU64::new(1.0f64.to_bits()),
            follow: std::sync::Mutex::new(controller::Follow::default()),
            fleet,
        };
        room.restore()?;
        room.start_numbers()?;
        // A node joining a shared room after an opening takes the fleet's pre-queue draw.
        for g in &room.gates {
            for l in &g.lanes {
                if let Some((start, end, key)) = l.gate.last_shared_shuffle() {
                    l.set_shuffle(start, end, key);
                }
            }
        }
        room.tick();
        Ok(room)
    }

    /// Applies a reloaded config: compiles the new policy (any error changes nothing), checks
    /// that the lanes stay the same (gates, their order, which have opening hours, the cohort
    /// names; otherwise [`RoomError::NeedsRestart`], nothing applied), then swaps every gate's
    /// policy and the room's. Capacity and admissions per minute are taken from the file only
    /// where the file changed them (`previous` is the config applied before), so a value set
    /// through the admin API survives a reload that does not touch it. Keys the new file drops
    /// keep verifying the tickets and passes already handed out until those expire
    /// ([`Keyring::retaining`](crate::waitroom::Keyring::retaining)). Waiting people keep
    /// their numbers and admitted people their slots: the lanes are not touched. The controller
    /// applies the new settings at its next tick.
    pub fn reload(&self, new: &Config, previous: &Config) -> Result<(), RoomError> {
        let (policy, gate_policies) = RoomPolicy::compile(new)?;
        let old = self.policy();
        let mut restart = Vec::new();
        if policy.cohorts.names() != old.cohorts.names() {
            restart
                .push("cohorts.names (a gate with opening hours has one lane per cohort)".into());
        }
        let names_now: Vec<&str> = self.gates.iter().map(|g| g.name.as_str()).collect();
        let names_new: Vec<&str> = new.gates.iter().map(|g| g.name.as_str()).collect();
        if names_now != names_new {
            restart.push(format!(
                "gates: {names_now:?} would become {names_new:?} (adding, removing, renaming or reordering gates)"
            ));
        } else {
            for (i, (g, gp)) in self.gates.iter().zip(&gate_policies).enumerate() {
                if g.policy().schedule.is_some() != gp.schedule.is_some() {
                    restart.push(format!("gates[{i}].schedule added or removed"));
                }
            }
        }
        if !restart.is_empty() {
            return Err(RoomError::NeedsRestart(restart));
        }
        let longest_ms = self
            .gates
            .iter()
            .map(|g| g.policy().pass_ttl_ms(old.pass_refresh_ms))
            .max()
            .unwrap_or(0)
            .max(old.ticket_ttl_ms);
        let reused = policy.keys.changed_secrets(&old.keys);
        if !reused.is_empty() {
            return Err(RoomError::Config(
                "waiting_room.keys".into(),
                format!(
                    "key id {reused:?} has a new secret: every ticket and pass signed with the old one \
                     would fail at once; give the new secret a new id, make it current, and remove \
                     the old id in a later reload"
                ),
            ));
        }
        let now = self.clock.now_ms();
        let keys = policy
            .keys
            .clone()
            .retaining(&old.keys, now, now + longest_ms);
        let policy = RoomPolicy { keys, ..policy };
        for (((g, gp), now_cfg), before) in self
            .gates
            .iter()
            .zip(gate_policies)
            .zip(&new.gates)
            .zip(&previous.gates)
        {
            if now_cfg.capacity != before.capacity {
                g.capacity.store(now_cfg.capacity, Ordering::Relaxed);
            }
            if now_cfg.admit_per_minute != before.admit_per_minute {
                g.admit_per_minute
                    .store(now_cfg.admit_per_minute, Ordering::Relaxed);
            }
            g.policy.store(Arc::new(gp));
        }
        self.policy.store(Arc::new(policy));
        Ok(())
    }

    /// With a shared store, on the leader: resolves when a session ended on another node
    /// (pushed by Redis; several at once resolve once).
    pub async fn released_elsewhere(&self) {
        self.released_elsewhere.notified().await;
    }

    /// Lets the next people in after sessions ended on other nodes, as [`Room::release`] does
    /// for one ended here: every lane admits what its room allows now (the store decides,
    /// from its own count of people inside and places held).
    pub fn admit_released(&self) {
        let now = self.clock.now_ms();
        for l in self.gates.iter().flat_map(|g| g.lanes.iter()) {
            l.admit_and_wake(now);
        }
    }

    /// With a shared store: stops this node's store thread and gives the leader lease up (a
    /// clean shutdown). Nothing with the in-memory store.
    pub fn leave_fleet(&self) {
        if let Some(f) = &self.fleet {
            f.stop();
            tracing::info!(node = %f.node(), "store: left the fleet");
        }
    }

    /// With a shared store: this node's membership of the fleet.
    pub fn fleet(&self) -> Option<Arc<crate::store::redis::Fleet>> {
        self.fleet.clone()
    }

    /// With a shared store: the nodes seen alive in the fleet (`None` with the in-memory
    /// store).
    pub fn fleet_nodes(&self) -> Option<u32> {
        self.fleet.as_ref().map(|f| f.nodes_alive())
    }

    /// With a shared store: whether it answers, and what this node does while it does not
    /// (for `/readyz`). `None` with the in-memory store.
    pub fn store_state(&self) -> Option<(bool, crate::store::FailMode)> {
        self.fleet.as_ref().map(|f| (f.is_up(), f.fail_mode()))
    }

    /// With a shared store: publishes an admin change of `gate` to every node (`switch` as
    /// [`Switch`] is spelled: `configured` or a mode). `Ok` without a shared store (nothing to
    /// publish); `Err` when Redis did not take it.
    pub fn publish_admin(
        &self,
        gate: &str,
        switch: Option<Switch>,
        capacity: Option<u32>,
        admit_per_minute: Option<u32>,
    ) -> Result<(), ()> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let sw = switch.map(|s| match s {
            Switch::Configured => "configured",
            Switch::Forced(m) => m.as_str(),
        });
        if f.publish_admin(gate, sw, capacity, admit_per_minute) {
            Ok(())
        } else {
            Err(())
        }
    }

    /// With a shared store: applies the admin changes another node published (at each tick).
    fn follow_fleet_admin(&self) {
        let Some(f) = &self.fleet else { return };
        for g in &self.gates {
            let Some(a) = f.take_admin(&g.name) else {
                continue;
            };
            use crate::waitroom::Mode;
            let sw = match a.switch.as_str() {
                "paused" => Switch::Forced(Mode::Paused),
                "queue_all" => Switch::Forced(Mode::QueueAll),
                "open" => Switch::Forced(Mode::Open),
                _ => Switch::Configured,
            };
            g.set_switch(sw);
            if let Some(c) = a.capacity.filter(|c| *c > 0) {
                g.capacity.store(c, Ordering::Relaxed);
            }
            if let Some(r) = a.admit_per_minute {
                g.admit_per_minute.store(r, Ordering::Relaxed);
            }
            tracing::info!(gate = %g.name, switch = %a.switch, capacity = ?a.capacity,
                admit_per_minute = ?a.admit_per_minute, "admin change from the fleet applied");
        }
    }

    /// The room's policy now (one lock-free load; a reload may replace it).
    #[inline]
    pub fn policy(&self) -> Guard<Arc<RoomPolicy>> {
        self.policy.load()
    }

    /// The cohort of a request (matchers in config order).
    pub fn classify(
        &self,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> CohortId {
        self.policy().cohorts.classify(parts, client, peer)
    }

    /// Which gate a request belongs to, if any: `host` is the `Host` header or the URI's
    /// authority as received, `path` the normalized path, `raw_path` the path as received
    /// (a `..` in it never leaves a gate, [`crate::route`]).
    pub fn route(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        raw_path: &str,
    ) -> Option<usize> {
        let policy = self.policy();
        let target = crate::route::Target::new(method, host, &policy.known_hosts, path, raw_path);
        self.gates
            .iter()
            .position(|g| g.policy().rules.catches(&target))
    }

    /// Whether a cookie name is one of anticamera's own (never forwarded to the portal).
    pub fn is_own_cookie(&self, name: &str) -> bool {
        name.starts_with(&self.cookie_prefix) || name == "anticamera_lang"
    }

    /// The lane's window now, as requests must see it: the schedule's, except that an opening
    /// after a pre-queue is seen only once the controller has drawn the order and let the first
    /// in (within one tick). Before that, a request answered "open" would get a place that the
    /// draw is about to change, and advice to poll that fits the wrong place.
    pub(super) fn window_state(
        &self,
        g: &GateRuntime,
        lane: &Lane,
        cohort: CohortId,
        now: DateTime<Utc>,
    ) -> WindowState {
        let state = g
            .policy()
            .schedule
            .as_ref()
            .map(|s| s.state(cohort, now))
            .unwrap_or(WindowState::Open { closes_at: None });
        match state {
            WindowState::Open { .. } if lane.last_state.load(Ordering::Relaxed) == 1 => {
                WindowState::PreQueue { opens_at: now }
            }
            s => s,
        }
    }

    /// The waiting-room decision for a gated request. See the module docs for the order.
    pub fn decide(&self, gate_idx: usize, cohort: CohortId, parts: &Parts) -> Decision {
        let now = self.clock.now_ms();
        let now_dt = self.clock.now();
        let g = &self.gates[gate_idx];
        let gp = g.policy();
        let rp = self.policy();
        let lane = g.lane_for(cohort);
        let binding = binding_of(&parts.headers);

        let token =
            cookie_value(&parts.headers, &g.cookie).map(|c| Token::decode(c, &rp.keys, now));
        let mut token = match token {
            Some(Ok(t)) if t.gate == lane.id => Some(t),
            Some(Ok(_)) => {
                self.refused(g, "wrong_gate");
                None
            }
            Some(Err(e)) => {
                self.refused(g, e.reason());
                None
            }
            None => None,
        };

        // 1. An admitted user with a valid pass.
        if let Some(t) = token.filter(|t| t.kind == Kind::Pass) {
            let issued = DateTime::from_timestamp_millis(t.issued_at_ms as i64).unwrap_or_default();
            let allowed = gp
                .schedule
                .as_ref()
                .map(|s| s.may_stay(cohort, issued, now_dt))
                .unwrap_or(true);
            if allowed {
                // With a shared store a node may see a pass first from a client other than the
                // one it was issued to (its slot is another node's): the binding signed in the
                // pass is what the slot would have remembered.
                let touched = if lane.gate.is_shared() && t.binding != binding {
                    Err(TouchError::BoundElsewhere)
                } else {
                    lane.gate.touch(
                        t.slot,
                        Occupant::from_token(&t, binding),
                        t.issued_at_ms,
                        now,
                    )
                };
                match touched {
                    Ok(()) => {
                        let open_now = gp
                            .schedule
                            .as_ref()
                            .map(|s| s.is_open(cohort, now_dt))
                            .unwrap_or(true);
                        let set_cookie = (open_now
                            && now.saturating_sub(t.issued_at_ms) > rp.pass_refresh_ms)
                            .then(|| {
                                self.pass_cookie(g, lane, t.ticket, t.visitor, t.slot, binding, now)
                            });
                        return Decision {
                            answer: None,
                            set_cookie,
                            seat: Some(Seat {
                                lane: lane.id,
                                slot: t.slot,
                                ticket: t.ticket,
                            }),
                            outcome: "admitted",
                        };
                    }
                    Err(TouchError::BoundElsewhere) => self.refused(g, "copied_pass"),
                    Err(TouchError::Expired) => self.refused(g, "session_ended"),
                }
            }
            token = None;
        }

        // 2. Opening hours for new admissions.
        let state = self.window_state(g, lane, cohort, now_dt);
        let (opens_at, prequeue) = match state {
            WindowState::Closed { opens_at } => {
                lane.closed_total.increment(1);
                return Decision {
                    answer: Some(Answer::Closed {
                        gate: gate_idx,
                        cohort: rp.cohorts.name(cohort).to_string(),
                        opens_at,
                    }),
                    set_cookie: None,
                    seat: None,
                    outcome: "closed",
                };
            }
            WindowState::PreQueue { opens_at } => (Some(opens_at), true),
            WindowState::Open { .. } => (None, false),
        };
        let prequeue_random = gp
            .schedule
            .as_ref()
            .map(|s| s.prequeue_order() == PrequeueOrder::Random)
            .unwrap_or(false);

        // 3. A waiting user with a valid ticket.
        if let Some(t) = token.filter(|t| t.kind == Kind::Ticket) {
            let pos = lane.position(t.ticket);
            let st = lane.gate.status_checked(pos);
            if st.admitted {
                let who = Occupant {
                    ticket: pos,
                    visitor: t.visitor.low64(),
                    binding,
                };
                match lane.gate.claim(who, now) {
                    Ok(slot) => {
                        lane.wait_seconds
                            .record(now.saturating_sub(t.issued_at_ms) as f64 / 1000.0);
                        return Decision {
                            answer: None,
                            set_cookie: Some(
                                self.pass_cookie(g, lane, pos, t.visitor, slot, binding, now),
                            ),
                            seat: Some(Seat {
                                lane: lane.id,
                                slot,
                                ticket: pos,
                            }),
                            outcome: "admitted",
                        };
                    }
                    Err(
                        e @ (ClaimError::Late { .. }
                        | ClaimError::Full
                        | ClaimError::Busy
                        | ClaimError::NotAdmitted),
                    ) => {
                        // Came back after the held place lapsed: in the late line.
                        let late = match e {
                            ClaimError::Late { ahead } => Some(ahead),
                            _ => None,
                        };
                        let ahead = late.unwrap_or(0);
                        let mut d = self.queue(
                            gate_idx,
                            Some(pos),
                            ahead,
                            lane.gate.estimate_wait(ahead),
                            opens_at,
                            prequeue_random,
                            None,
                        );
                        if let Some(Answer::Queue { missed_turn, .. }) = &mut d.answer {
                            *missed_turn = late.is_some();
                        }
                        return d;
                    }
                    Err(e @ ClaimError::BoundElsewhere) => {
                        self.refused(g, e.reason());
                    }
                    Err(e) => self.refused(g, e.reason()),
                }
            } else {
                let wait = lane.gate.estimate_wait(st.ahead);
                return self.queue(
                    gate_idx,
                    (!(prequeue && prequeue_random)).then_some(pos),
                    st.ahead,
                    wait,
                    opens_at,
                    prequeue_random,
                    None,
                );
            }
        }

        // 4. A new arrival.
        let visitor = VisitorId::random();
        if prequeue {
            let Some(ticket) = lane.gate.take_ticket() else {
                return self.unnumbered(g, gate_idx, lane);
            };
            self.after_number(lane);
            let cookie = self.ticket_cookie(lane, ticket, visitor, now);
            let ahead = lane.gate.status(ticket).ahead;
            return self.queue(
                gate_idx,
                (!prequeue_random).then_some(ticket),
                ahead,
                None,
                opens_at,
                prequeue_random,
                Some(cookie),
            );
        }
        let arrival = lane.gate.arrive(visitor.low64(), binding, now);
        self.after_number(lane);
        match arrival {
            Arrival::Unnumbered => self.unnumbered(g, gate_idx, lane),
            Arrival::Admitted { ticket, slot } => Decision {
                answer: None,
                set_cookie: Some(self.pass_cookie(g, lane, ticket, visitor, slot, binding, now)),
                seat: Some(Seat {
                    lane: lane.id,
                    slot,
                    ticket,
                }),
                outcome: "admitted",
            },
            Arrival::Queued { ticket } => {
                let cookie = self.ticket_cookie(lane, ticket, visitor, now);
                let st = lane.gate.status(ticket);
                let wait = lane.gate.estimate_wait(st.ahead);
                self.queue(
                    gate_idx,
                    Some(lane.position(ticket)),
                    st.ahead,
                    wait,
                    None,
                    prequeue_random,
                    Some(cookie),
                )
            }
        }
    }

    /// After a number was taken: wakes the reserver if the next block is due (cheap when not).
    #[inline]
    fn after_number(&self, lane: &Lane) {
        if lane.gate.numbers_due() {
            self.numbers_wanted.notify_one();
        }
    }

    /// No number for this arrival now: counted, and asked to come back in a second.
    #[cold]
    fn unnumbered(&self, g: &GateRuntime, gate: usize, lane: &Lane) -> Decision {
        self.numbers_wanted.notify_one();
        metrics::counter!(metric::UNNUMBERED, "gate" => g.name.clone(), "cohort" => lane.cohort_name.clone())
            .increment(1);
        let refused = lane.gate.unnumbered();
        if refused.is_power_of_two() {
            // 1, 2, 4, 8…: the log says it without a line per arrival of a surge.
            tracing::warn!(gate = %g.name, refused, "waitroom: reserved ticket numbers used up; arrivals asked to retry");
        }
        Decision {
            answer: Some(Answer::Unnumbered { gate }),
            set_cookie: None,
            seat: None,
            outcome: "unnumbered",
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue(
        &self,
        gate: usize,
        number: Option<u64>,
        ahead: u64,
        wait: Option<Duration>,
        opens_at: Option<DateTime<Utc>>,
        prequeue_random: bool,
        set_cookie: Option<HeaderValue>,
    ) -> Decision {
        Decision {
            answer: Some(Answer::Queue {
                gate,
                ahead,
                wait,
                opens_at,
                prequeue_random,
                admitted: false,
                number,
                missed_turn: false,
            }),
            set_cookie,
            seat: None,
            outcome: "queued",
        }
    }

    /// The portal ended a session: free its slot now, and let the next in line in at once.
    /// Returns the cookie that clears the pass.
    pub fn release(&self, seat: Seat) -> Option<HeaderValue> {
        for g in &self.gates {
            if let Some(l) = g.lanes.iter().find(|l| l.id == seat.lane) {
                if l.gate.release(seat.slot, seat.ticket) {
                    // With a shared store only the leader admits (told by Redis when the
                    // release is another node's); any node wakes its late arrivals.
                    l.admit_and_wake(self.clock.now_ms());
                    return Some(self.cookie(&g.cookie, "", 0));
                }
            }
        }
        None
    }

    fn refused(&self, g: &GateRuntime, reason: &'static str) {
        metrics::counter!(metric::REFUSED, "gate" => g.name.clone(), "reason" => reason)
            .increment(1);
    }
}
