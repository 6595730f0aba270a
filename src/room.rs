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

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::header::{HeaderMap, HeaderValue, COOKIE, USER_AGENT};
use http::request::Parts;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::cohort::{cookie_value, CohortId, Cohorts};
use crate::config::Config;
use crate::route::Rules;
use crate::schedule::{KeyedPermutation, PrequeueOrder, Schedule, WindowState};
use crate::waitroom::{
    Arrival, ClaimError, Gate, GateSnapshot, GateStats, Holder, Keyring, Kind, Mode, Token,
    TouchError, VisitorId,
};

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
}

/// An admin-set switch that overrides the configured mode of every lane of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// As configured.
    Configured,
    /// Forced mode.
    Forced(Mode),
}

/// One queue: a gate for one cohort (or for everyone).
pub struct Lane {
    /// Index carried in tokens.
    pub id: u16,
    /// The cohort this lane serves; `None` = everyone (gate without schedule).
    pub cohort: Option<CohortId>,
    /// Cohort name for labels (`all` when shared).
    pub cohort_name: String,
    /// Admission engine.
    pub gate: Gate,
    /// Pre-queue shuffle applied at the last opening: tickets in [start, end) are permuted.
    shuffle: RwLock<Option<Shuffle>>,
    /// The schedule state seen at the last tick (0 closed, 1 prequeue, 2 open).
    last_state: AtomicU8,
    /// `anticamera_schedule_closed_total` for this gate and cohort (a handle: no label
    /// look-up on the request path).
    closed_total: metrics::Counter,
    /// `anticamera_waitroom_wait_seconds` for this gate and cohort.
    wait_seconds: metrics::Histogram,
    /// Long-polling status requests, by queue position.
    wakers: Wakers,
}

/// Long-poll wake-ups sharded by queue position: an admission wakes only the status requests
/// of the positions it admitted (and their shard neighbours), not every waiting user. With a
/// single `Notify`, each of hundreds of admissions per second would wake every long poll.
struct Wakers(Box<[tokio::sync::Notify]>);

/// Number of shards (a ring: position p waits on shard (p / WAKE_SPAN) % WAKE_SHARDS).
const WAKE_SHARDS: usize = 1024;
/// Consecutive positions per shard.
const WAKE_SPAN: u64 = 8;
/// Shards behind an admission woken too (the first 16 in line see their place move at once).
const WAKE_FOLLOWERS: u64 = 2;

impl Wakers {
    fn new() -> Self {
        Wakers(
            (0..WAKE_SHARDS)
                .map(|_| tokio::sync::Notify::new())
                .collect(),
        )
    }

    fn shard(&self, position: u64) -> &tokio::sync::Notify {
        &self.0[((position / WAKE_SPAN) % WAKE_SHARDS as u64) as usize]
    }

    /// Wakes the long polls of positions in `[from, to)` (the ones just admitted) and of the
    /// `WAKE_FOLLOWERS` shards behind them (their place moved: the page shows it).
    fn wake(&self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let (first, last) = (from / WAKE_SPAN, (to - 1) / WAKE_SPAN + WAKE_FOLLOWERS);
        let shards = (last - first + 1).min(WAKE_SHARDS as u64);
        for i in 0..shards {
            self.0[((first + i) % WAKE_SHARDS as u64) as usize].notify_waiters();
        }
    }

    /// Wakes the long polls of these positions only (late arrivals, when room is free).
    fn wake_each(&self, positions: &[u64]) {
        for &p in positions {
            self.shard(p).notify_waiters();
        }
    }

    /// Wakes every long poll (the window opened or closed: positions were redrawn or answers
    /// changed for everyone).
    fn wake_all(&self) {
        self.0.iter().for_each(tokio::sync::Notify::notify_waiters);
    }
}

#[derive(Clone)]
struct Shuffle {
    start: u64,
    end: u64,
    key: [u8; 32],
    perm: KeyedPermutation,
}

impl Lane {
    /// After the controller let people in: wakes the long polls of the positions admitted
    /// since `serving` was `before`, and of the first late arrivals if room is kept for them.
    fn wake_admitted(&self, before: u64) {
        self.wakers.wake(before, self.gate.serving());
        self.wakers.wake_each(&self.gate.late_to_wake());
    }

    /// Queue position of a ticket (arrival order, shuffled for those who pre-queued).
    pub fn position(&self, ticket: u64) -> u64 {
        if let Ok(guard) = self.shuffle.read() {
            if let Some(s) = guard.as_ref() {
                if ticket >= s.start && ticket < s.end {
                    return s.start + s.perm.apply(ticket - s.start);
                }
            }
        }
        ticket
    }
}

/// One gate: path rules, schedule, lanes.
pub struct GateRuntime {
    /// Config name.
    pub name: String,
    /// Title on pages.
    pub label: String,
    rules: Rules,
    /// Cookie holding this gate's ticket or pass.
    pub cookie: String,
    /// Opening hours, if any.
    pub schedule: Option<Schedule>,
    /// Lanes: one per cohort with a schedule, else one.
    pub lanes: Vec<Lane>,
    /// Configured total capacity (changeable at runtime).
    pub capacity: std::sync::atomic::AtomicU32,
    /// Configured new users per minute (per gate, split across open lanes).
    pub admit_per_minute: std::sync::atomic::AtomicU32,
    shares: Vec<f64>,
    configured_mode: Mode,
    switch: RwLock<Switch>,
    settings: crate::waitroom::GateSettings,
}

impl GateRuntime {
    fn lane_for(&self, cohort: CohortId) -> &Lane {
        if self.lanes.len() == 1 {
            return &self.lanes[0];
        }
        self.lanes
            .iter()
            .find(|l| l.cohort == Some(cohort))
            .unwrap_or(&self.lanes[0])
    }

    /// The admin switch.
    pub fn switch(&self) -> Switch {
        self.switch.read().map(|s| *s).unwrap_or(Switch::Configured)
    }

    /// Sets the admin switch (applied at the next tick).
    pub fn set_switch(&self, s: Switch) {
        if let Ok(mut g) = self.switch.write() {
            *g = s;
        }
    }
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

/// A slot held by an admitted person's pass: which lane, which slot, which ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The lane (gate and cohort share) of the ticket.
    pub lane: u16,
    /// The slot index in the lane's table.
    pub slot: u32,
    /// The ticket number holding it.
    pub ticket: u64,
}

/// The outcome of the waiting-room stage for one request.
#[derive(Debug)]
pub struct Decision {
    /// Forward (None) or answer.
    pub answer: Option<Answer>,
    /// Cookie to set on the response (a new ticket or pass).
    pub set_cookie: Option<HeaderValue>,
    /// The slot the request's pass holds, so a release header from the portal can free it.
    pub seat: Option<Seat>,
    /// Metric outcome label.
    pub outcome: &'static str,
}

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
}

/// How a waiting page polls: after `refresh_secs` (also the `Retry-After` and the no-script
/// page refresh), holding the poll up to `long_poll_secs` (0 = an ordinary poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollAdvice {
    /// Seconds until the next poll.
    pub refresh_secs: u32,
    /// How long the next poll may be held until the ticket is admitted (`wait=` of the status
    /// endpoint).
    pub long_poll_secs: u32,
}

/// Longest long poll the status endpoint holds (seconds).
pub const LONG_POLL_MAX_SECS: u32 = 20;
/// This many people at the front of the line long-poll whatever the estimate says: an estimate
/// can be wrong (a window just opened), and someone polling every few seconds is not there
/// when their turn comes. A held poll costs a parked connection, and is only woken early by
/// admissions near its own position.
const LONG_POLL_AHEAD: u64 = 1000;
/// Longest advised pause between polls (seconds).
const POLL_MAX_SECS: f64 = 60.0;

/// The polling policy, from where the user stands (`jitter` in [0.8, 1.2] spreads people who
/// arrived together). Near the front (fewer than 1 000 ahead, or admission expected within a
/// long poll) the page long-polls, so a place is taken up the moment it is offered, even when
/// the estimate is wrong. Further back it polls at a quarter of the estimated wait (between the
/// configured interval and 60 s), so a hundred thousand waiting users neither each hold a
/// connection nor poll every few seconds, and the estimate they see is refreshed as it shrinks.
/// Without an estimate (the queue's pace not measured yet, or a paused gate) they poll at a
/// pause that grows with the line (1 s more per 1000 ahead).
/// Before opening, the page comes back at half the time left, and holds its poll in the last
/// 20 s, so it is there at opening.
pub fn poll_advice(
    base: Duration,
    state: crate::pages::QueueState,
    ahead: u64,
    wait: Option<Duration>,
    until_open: Option<Duration>,
    jitter: f64,
) -> PollAdvice {
    use crate::pages::QueueState;
    let base = base.as_secs_f64().max(1.0);
    let poll = |secs: f64, long: u32| PollAdvice {
        refresh_secs: (secs.clamp(1.0, POLL_MAX_SECS) * jitter).round().max(1.0) as u32,
        long_poll_secs: long,
    };
    let horizon = f64::from(LONG_POLL_MAX_SECS);
    match state {
        QueueState::Admitted => poll(1.0, 0),
        // In the last seconds before opening, hold the poll: the opening answers every held
        // poll at once, so the first people let in are there at once (and the line's pace is
        // measured from people who came, not from people between two polls).
        QueueState::PreQueue if until_open.is_some_and(|u| u.as_secs_f64() <= horizon) => {
            poll(1.0, LONG_POLL_MAX_SECS)
        }
        QueueState::PreQueue => poll(
            until_open.map_or(base, |u| (u.as_secs_f64() / 2.0).min(POLL_MAX_SECS)),
            0,
        ),
        QueueState::Waiting => match wait.map(|w| w.as_secs_f64()) {
            _ if ahead < LONG_POLL_AHEAD => poll(base / 3.0, LONG_POLL_MAX_SECS),
            Some(w) if w <= horizon => poll(base / 3.0, LONG_POLL_MAX_SECS),
            Some(w) => poll((w / 4.0).max(base), 0),
            None => poll(base + ahead as f64 / 1000.0, 0),
        },
    }
}

/// The waiting room of all gates.
pub struct Room {
    /// Gates in config order (first match wins).
    pub gates: Vec<GateRuntime>,
    /// Cohort recognition.
    pub cohorts: Cohorts,
    keys: Keyring,
    /// The clock decisions use.
    pub clock: Arc<Clock>,
    cookie_secure: bool,
    ticket_ttl_ms: u64,
    pass_refresh_ms: u64,
    /// Advised poll interval.
    pub poll_interval: Duration,
    state_file: Option<PathBuf>,
    /// Release header name.
    pub release_header: http::HeaderName,
    cookie_prefix: String,
    health_bits: std::sync::atomic::AtomicU64,
}

impl Room {
    /// Builds the room from a validated config, restoring saved state if there is any.
    pub fn new(cfg: &Config, clock: Arc<Clock>) -> Result<Room, RoomError> {
        let keys = cfg.keyring().map_err(|(k, r)| RoomError::Config(k, r))?;
        let cohorts = Cohorts::compile(&cfg.cohorts, &cfg.base_dir).map_err(|e| {
            let e = e.into_iter().next();
            RoomError::Config(
                e.as_ref()
                    .map(|e| format!("cohorts.{}", e.key))
                    .unwrap_or_default(),
                e.map(|e| e.reason).unwrap_or_default(),
            )
        })?;
        let now = clock.now_ms();
        let mut gates = Vec::new();
        let mut next_lane: u16 = 0;
        for (i, g) in cfg.gates.iter().enumerate() {
            let rules = Rules::compile(&g.rules())
                .map_err(|e| RoomError::Config(format!("gates[{i}]"), format!("{e:?}")))?;
            let schedule = match &g.schedule {
                Some(s) => Some(
                    Schedule::compile_with(s, cohorts.names(), cfg.calendar_set()).map_err(
                        |e| RoomError::Config(format!("gates[{i}].schedule"), format!("{e:?}")),
                    )?,
                ),
                None => None,
            };
            let settings = g.settings();
            let mut lanes = Vec::new();
            let lane_cohorts: Vec<Option<CohortId>> = if schedule.is_some() {
                (0..cohorts.names().len())
                    .map(CohortId::from_index)
                    .collect()
            } else {
                vec![None]
            };
            for c in lane_cohorts {
                let cohort_name = c
                    .map(|c| cohorts.name(c).to_string())
                    .unwrap_or_else(|| "all".into());
                let labels = [("gate", g.name.clone()), ("cohort", cohort_name.clone())];
                lanes.push(Lane {
                    id: next_lane,
                    closed_total: metrics::counter!(metric::CLOSED, &labels),
                    wait_seconds: metrics::histogram!(metric::WAIT, &labels),
                    cohort_name,
                    cohort: c,
                    gate: Gate::new(&settings, now),
                    shuffle: RwLock::new(None),
                    last_state: AtomicU8::new(u8::MAX),
                    wakers: Wakers::new(),
                });
                next_lane = next_lane.checked_add(1).ok_or_else(|| {
                    RoomError::Config("gates".into(), "too many gates × cohorts".into())
                })?;
            }
            let shares = (0..cohorts.names().len())
                .map(|c| {
                    g.shares
                        .get(
                            CohortId::from_index(c)
                                .map(|id| cohorts.name(id))
                                .unwrap_or_default(),
                        )
                        .copied()
                        .unwrap_or(1.0)
                })
                .collect();
            gates.push(GateRuntime {
                label: g.label.clone().unwrap_or_else(|| g.name.clone()),
                cookie: format!("{}{}", cfg.waiting_room.cookie_prefix, g.name),
                name: g.name.clone(),
                rules,
                schedule,
                lanes,
                capacity: std::sync::atomic::AtomicU32::new(g.capacity),
                admit_per_minute: std::sync::atomic::AtomicU32::new(g.admit_per_minute),
                shares,
                configured_mode: g.mode,
                switch: RwLock::new(Switch::Configured),
                settings,
            });
        }
        let w = &cfg.waiting_room;
        let room = Room {
            gates,
            cohorts,
            keys,
            clock,
            cookie_secure: w.cookie_secure,
            ticket_ttl_ms: w.ticket_ttl.0.as_millis() as u64,
            pass_refresh_ms: w.pass_refresh.0.as_millis() as u64,
            poll_interval: w.poll_interval.0,
            state_file: w.state_file.as_ref().map(|p| cfg.base_dir.join(p)),
            release_header: http::HeaderName::from_bytes(w.release_header.as_bytes()).map_err(
                |e| RoomError::Config("waiting_room.release_header".into(), e.to_string()),
            )?,
            cookie_prefix: w.cookie_prefix.clone(),
            health_bits: std::sync::atomic::AtomicU64::new(1.0f64.to_bits()),
        };
        room.restore()?;
        room.tick();
        Ok(room)
    }

    /// The cohort of a request (matchers in config order).
    pub fn classify(
        &self,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> CohortId {
        self.cohorts.classify(parts, client, peer)
    }

    /// Which gate a request belongs to (normalized path), if any.
    pub fn route(&self, method: &Method, path: &str) -> Option<usize> {
        self.gates
            .iter()
            .position(|g| g.rules.matches(method, path))
    }

    /// Whether a cookie name is one of anticamera's own (never forwarded to the portal).
    pub fn is_own_cookie(&self, name: &str) -> bool {
        name.starts_with(&self.cookie_prefix) || name == "anticamera_lang"
    }

    /// The lane's window now, as requests must see it: the schedule's, except that an opening
    /// after a pre-queue is seen only once the controller has drawn the order and let the first
    /// in (within one tick). Before that, a request answered "open" would get a place that the
    /// draw is about to change, and advice to poll that fits the wrong place.
    fn window_state(
        &self,
        g: &GateRuntime,
        lane: &Lane,
        cohort: CohortId,
        now: DateTime<Utc>,
    ) -> WindowState {
        let state = g
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
        let lane = g.lane_for(cohort);
        let binding = binding_of(&parts.headers);

        let token =
            cookie_value(&parts.headers, &g.cookie).map(|c| Token::decode(c, &self.keys, now));
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
            let allowed = g
                .schedule
                .as_ref()
                .map(|s| s.may_stay(cohort, issued, now_dt))
                .unwrap_or(true);
            if allowed {
                match lane
                    .gate
                    .touch(t.slot, Holder::from_token(&t, binding), t.issued_at_ms, now)
                {
                    Ok(()) => {
                        let open_now = g
                            .schedule
                            .as_ref()
                            .map(|s| s.is_open(cohort, now_dt))
                            .unwrap_or(true);
                        let set_cookie = (open_now
                            && now.saturating_sub(t.issued_at_ms) > self.pass_refresh_ms)
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
                        cohort: self.cohorts.name(cohort).to_string(),
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
        let prequeue_random = g
            .schedule
            .as_ref()
            .map(|s| s.prequeue_order() == PrequeueOrder::Random)
            .unwrap_or(false);

        // 3. A waiting user with a valid ticket.
        if let Some(t) = token.filter(|t| t.kind == Kind::Ticket) {
            let pos = lane.position(t.ticket);
            let st = lane.gate.status(pos);
            if st.admitted {
                let who = Holder {
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
            let ticket = lane.gate.take_ticket();
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
        match lane.gate.arrive(visitor.low64(), binding, now) {
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

    /// The status of the ticket a request carries for a gate (the JSON poll), without taking a
    /// ticket: waiting (with `admitted` once it is their turn), pre-queued or closed. `None` if
    /// the request has no valid ticket or pass for this gate.
    pub fn status(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> Option<Answer> {
        self.status_inner(gate_idx, parts, client, peer, false)
            .map(|(a, _)| a)
    }

    /// [`Room::status`] for a long poll: while the ticket is still waiting, also a future that
    /// resolves when its position may have been admitted (or the window opened or closed). It
    /// is registered before the status is read, so no admission falls between the two.
    pub fn status_for_long_poll(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
    ) -> Option<(Answer, Option<tokio::sync::futures::Notified<'_>>)> {
        self.status_inner(gate_idx, parts, client, peer, true)
    }

    fn status_inner(
        &self,
        gate_idx: usize,
        parts: &Parts,
        client: std::net::IpAddr,
        peer: std::net::IpAddr,
        signal: bool,
    ) -> Option<(Answer, Option<tokio::sync::futures::Notified<'_>>)> {
        let now = self.clock.now_ms();
        let g = &self.gates[gate_idx];
        let cohort = self.cohorts.classify(parts, client, peer);
        let lane = g.lane_for(cohort);
        let t = Token::decode(cookie_value(&parts.headers, &g.cookie)?, &self.keys, now).ok()?;
        if t.gate != lane.id {
            return None;
        }
        let prequeue_random = g
            .schedule
            .as_ref()
            .map(|s| s.prequeue_order() == PrequeueOrder::Random)
            .unwrap_or(false);
        if t.kind == Kind::Pass {
            let a = Answer::Queue {
                gate: gate_idx,
                ahead: 0,
                wait: Some(Duration::ZERO),
                opens_at: None,
                prequeue_random,
                admitted: true,
                number: Some(t.ticket),
                missed_turn: false,
            };
            return Some((a, None));
        }
        let pos = lane.position(t.ticket);
        let pending = signal.then(|| lane.wakers.shard(pos).notified());
        let state = self.window_state(g, lane, cohort, self.clock.now());
        let answer = match state {
            WindowState::Closed { opens_at } => Answer::Closed {
                gate: gate_idx,
                cohort: self.cohorts.name(cohort).to_string(),
                opens_at,
            },
            WindowState::PreQueue { opens_at } => Answer::Queue {
                gate: gate_idx,
                ahead: lane.gate.status(t.ticket).ahead,
                wait: None,
                opens_at: Some(opens_at),
                prequeue_random,
                admitted: false,
                // Drawn at opening when the order is random.
                number: (!prequeue_random).then_some(t.ticket),
                missed_turn: false,
            },
            WindowState::Open { .. } => {
                let st = lane.gate.status(pos);
                // Admitted means a claim at the gate would succeed now: someone whose held
                // place lapsed waits in the late line instead (else the page would loop
                // between this answer and the gate's queue page).
                let late = st
                    .admitted
                    .then(|| lane.gate.turn(pos, now).late_ahead())
                    .flatten();
                let admitted = st.admitted && late.is_none();
                let ahead = late.unwrap_or(if admitted { 0 } else { st.ahead });
                Answer::Queue {
                    gate: gate_idx,
                    ahead,
                    wait: if admitted {
                        Some(Duration::ZERO)
                    } else {
                        lane.gate.estimate_wait(ahead)
                    },
                    opens_at: None,
                    prequeue_random,
                    admitted,
                    number: Some(pos),
                    missed_turn: late.is_some(),
                }
            }
        };
        let still_waiting = matches!(
            answer,
            Answer::Queue {
                admitted: false,
                ..
            }
        );
        Some((answer, pending.filter(|_| still_waiting)))
    }

    /// The portal ended a session: free its slot now, and let the next in line in at once.
    /// Returns the cookie that clears the pass.
    pub fn release(&self, seat: Seat) -> Option<HeaderValue> {
        for g in &self.gates {
            if let Some(l) = g.lanes.iter().find(|l| l.id == seat.lane) {
                if l.gate.release(seat.slot, seat.ticket) {
                    let before = l.gate.serving();
                    l.gate.admit(self.clock.now_ms());
                    l.wake_admitted(before);
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

    fn ticket_cookie(&self, lane: &Lane, ticket: u64, visitor: VisitorId, now: u64) -> HeaderValue {
        let g = self.gate_of_lane(lane.id);
        let t = Token::ticket(lane.id, ticket, visitor, now, self.ticket_ttl_ms);
        self.cookie(&g.cookie, &t.encode(&self.keys), self.ticket_ttl_ms / 1000)
    }

    #[allow(clippy::too_many_arguments)]
    fn pass_cookie(
        &self,
        g: &GateRuntime,
        lane: &Lane,
        ticket: u64,
        visitor: VisitorId,
        slot: u32,
        binding: u32,
        now: u64,
    ) -> HeaderValue {
        let ttl = g.settings.session_duration.as_millis() as u64 + self.pass_refresh_ms * 2;
        let t = Token::pass(lane.id, ticket, visitor, slot, binding, now, ttl);
        self.cookie(&g.cookie, &t.encode(&self.keys), ttl / 1000)
    }

    fn cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let s = format!(
            "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            if self.cookie_secure { "; Secure" } else { "" }
        );
        // Names and values are ASCII we generated: this cannot fail; fall back to an empty cookie.
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("anticamera_=; Max-Age=0"))
    }

    fn gate_of_lane(&self, id: u16) -> &GateRuntime {
        self.gates
            .iter()
            .find(|g| g.lanes.iter().any(|l| l.id == id))
            .unwrap_or(&self.gates[0])
    }

    /// The controller: aligns modes and capacities with schedules and shares, advances the
    /// queues, shuffles pre-queues at opening, publishes metrics.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let now_dt = self.clock.now();
        let health = self.health();
        metrics::gauge!(metric::ADMISSION_FACTOR).set(health);
        for g in &self.gates {
            let active_total: u32 = g.lanes.iter().map(|l| l.gate.active()).sum();
            let configured = g.capacity.load(Ordering::Relaxed);
            let apm = g.admit_per_minute.load(Ordering::Relaxed);
            // The loop closed with the portal: a struggling portal means fewer new admissions
            // (a lower rate when one is set, else less room); users inside keep their slot.
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
                .map(|l| match (&g.schedule, l.cohort) {
                    (Some(s), Some(c)) => match s.state(c, now_dt) {
                        WindowState::Open { .. } => 2,
                        WindowState::PreQueue { .. } => 1,
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
                .map(|(l, _)| l.cohort.map(|c| g.shares[c.index()]).unwrap_or(1.0))
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
                let share = l.cohort.map(|c| g.shares[c.index()]).unwrap_or(1.0);
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
                    (2, Switch::Configured) => g.configured_mode,
                    (2, Switch::Forced(m)) => m,
                    _ => Mode::Paused,
                };
                let mut s = g.settings.clone();
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
                    if let Some(sched) = &g.schedule {
                        if sched.prequeue_order() == PrequeueOrder::Random {
                            let stats = l.gate.stats();
                            let key: [u8; 32] = rand::random();
                            self.set_shuffle(l, stats.serving, stats.next_ticket, key);
                            tracing::info!(gate = %g.name, cohort = %l.cohort_name,
                                waiting = stats.next_ticket - stats.serving,
                                "window opened: pre-queue shuffled");
                        }
                    }
                }
                let before = l.gate.serving();
                l.gate.tick(now);
                l.last_state.store(st, Ordering::Relaxed);
                if prev != st && prev != u8::MAX {
                    // Opened or closed: every long poll has a new answer.
                    l.wakers.wake_all();
                }
                l.wake_admitted(before);
                publish(g, l, &l.gate.stats());
            }
        }
    }

    /// When a waiting page should poll again, and whether that poll should be held (see
    /// [`poll_advice`]).
    pub fn poll_advice(
        &self,
        state: crate::pages::QueueState,
        ahead: u64,
        wait: Option<Duration>,
        until_open: Option<Duration>,
    ) -> PollAdvice {
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        poll_advice(self.poll_interval, state, ahead, wait, until_open, jitter)
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

    fn set_shuffle(&self, l: &Lane, start: u64, end: u64, key: [u8; 32]) {
        if end <= start {
            return;
        }
        if let Ok(mut s) = l.shuffle.write() {
            *s = Some(Shuffle {
                start,
                end,
                key,
                perm: KeyedPermutation::new(&key, end - start),
            });
        }
    }

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

    fn restore(&self) -> Result<(), RoomError> {
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
                            self.set_shuffle(l, *start, *end, key);
                        }
                    }
                }
            }
        }
        tracing::info!(path = %path.display(), "waiting-room state restored");
        Ok(())
    }
}

fn publish(g: &GateRuntime, l: &Lane, s: &GateStats) {
    let labels = [("gate", g.name.clone()), ("cohort", l.cohort_name.clone())];
    metrics::gauge!(metric::WAITING, &labels).set(s.waiting as f64);
    metrics::gauge!(metric::ACTIVE, &labels).set(s.active as f64);
    metrics::gauge!(metric::PENDING, &labels).set(s.pending as f64);
    metrics::gauge!(metric::LATE, &labels).set(s.late as f64);
    metrics::gauge!(metric::CAPACITY, &labels).set(s.capacity as f64);
    metrics::counter!(metric::ISSUED, &labels).absolute(s.issued);
    metrics::counter!(metric::ADMITTED, &labels).absolute(s.admitted);
    metrics::counter!(metric::RELEASED, &labels).absolute(s.released);
    metrics::counter!(metric::ABANDONED, &labels).absolute(s.abandoned);
    metrics::counter!(metric::EXPIRED, &labels).absolute(s.expired);
    if let Some(w) = s.estimated_wait {
        metrics::gauge!(metric::ESTIMATED_WAIT, &labels).set(w.as_secs_f64());
    }
}

/// What binds a pass to the browser that claimed it: a hash of its `User-Agent`.
/// A copied cookie in another browser (another UA) is refused; see the README for what this
/// does and does not prevent.
pub fn binding_of(headers: &HeaderMap) -> u32 {
    let ua = headers.get(USER_AGENT).map(|v| v.as_bytes()).unwrap_or(b"");
    // FNV-1a, 32 bit: not a secret (it is signed inside the pass), just a stable fingerprint.
    let mut h: u32 = 0x811c_9dc5;
    for &b in ua {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Removes anticamera's own cookies from the `Cookie` header(s) before forwarding.
pub fn strip_own_cookies(headers: &mut HeaderMap, is_own: impl Fn(&str) -> bool) {
    let mut any_own = false;
    for v in headers.get_all(COOKIE) {
        if let Ok(s) = v.to_str() {
            if s.split(';')
                .any(|p| is_own(p.trim().split('=').next().unwrap_or("")))
            {
                any_own = true;
            }
        }
    }
    if !any_own {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_own(p.split('=').next().unwrap_or("")))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
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
    fn own_cookies_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            "portal_session=abc; anticamera_claims=TOKEN"
                .parse()
                .unwrap(),
        );
        h.append(COOKIE, "anticamera_lang=it; other=1".parse().unwrap());
        strip_own_cookies(&mut h, |n| n.starts_with("anticamera_"));
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "portal_session=abc; other=1");
        let mut h = HeaderMap::new();
        h.append(COOKIE, "anticamera_claims=TOKEN".parse().unwrap());
        strip_own_cookies(&mut h, |n| n.starts_with("anticamera_"));
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn binding_depends_on_the_user_agent_only() {
        let mut a = HeaderMap::new();
        a.insert(USER_AGENT, "Firefox".parse().unwrap());
        let mut b = a.clone();
        b.insert("x-other", "1".parse().unwrap());
        assert_eq!(binding_of(&a), binding_of(&b));
        b.insert(USER_AGENT, "Chrome".parse().unwrap());
        assert_ne!(binding_of(&a), binding_of(&b));
    }

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

    #[test]
    fn hex_round_trip() {
        let k: [u8; 32] = rand::random();
        assert_eq!(unhex32(&hex(&k)), Some(k));
        assert_eq!(unhex32("zz"), None);
    }

    #[test]
    fn poll_advice_long_polls_near_the_front_and_backs_off_far_back() {
        use crate::pages::QueueState::*;
        let base = Duration::from_secs(5);
        let adv = |st, ahead, wait: Option<u64>, open: Option<u64>| {
            poll_advice(
                base,
                st,
                ahead,
                wait.map(Duration::from_secs),
                open.map(Duration::from_secs),
                1.0,
            )
        };
        let near = adv(Waiting, 3, Some(600), None);
        assert_eq!(
            (near.refresh_secs, near.long_poll_secs),
            (2, LONG_POLL_MAX_SECS)
        );
        assert_eq!(
            adv(Waiting, 500, Some(15), None).long_poll_secs,
            LONG_POLL_MAX_SECS
        );
        let far = adv(Waiting, 5_000, Some(100), None);
        assert_eq!((far.refresh_secs, far.long_poll_secs), (25, 0));
        assert_eq!(adv(Waiting, 50_000, Some(3_000), None).refresh_secs, 60);
        assert_eq!(
            adv(Waiting, 1_500, Some(21), None).refresh_secs,
            5,
            "never below the interval"
        );
        assert_eq!(
            adv(Waiting, 999, Some(600), None).long_poll_secs,
            LONG_POLL_MAX_SECS,
            "the first thousand long-poll whatever the estimate says"
        );
        assert_eq!(adv(Waiting, 10_000, None, None).refresh_secs, 15);
        assert_eq!(
            adv(Waiting, 999, None, None).long_poll_secs,
            LONG_POLL_MAX_SECS,
            "pace unknown, near enough to be admitted any moment"
        );
        assert_eq!(adv(Waiting, 1_000, Some(600), None).long_poll_secs, 0);
        assert_eq!(adv(Waiting, 1_000, None, None).long_poll_secs, 0);
        assert_eq!(adv(PreQueue, 10, None, Some(30)).refresh_secs, 15);
        assert_eq!(adv(PreQueue, 10, None, Some(30)).long_poll_secs, 0);
        let last = adv(PreQueue, 10, None, Some(20));
        assert_eq!(
            (last.refresh_secs, last.long_poll_secs),
            (1, LONG_POLL_MAX_SECS),
            "held through the opening"
        );
        assert_eq!(adv(PreQueue, 10, None, Some(3_600)).refresh_secs, 60);
        assert_eq!(adv(Admitted, 0, None, None).refresh_secs, 1);
        let j = poll_advice(
            base,
            Waiting,
            5_000,
            Some(Duration::from_secs(100)),
            None,
            1.2,
        );
        assert_eq!(j.refresh_secs, 30, "jitter applies to the pause");
    }

    #[test]
    fn wakers_cover_the_admitted_range_only() {
        let w = Wakers::new();
        let futs: Vec<_> = (0..64u64).map(|p| (p, w.shard(p).notified())).collect();
        let mut futs: Vec<_> = futs.into_iter().map(|(p, f)| (p, Box::pin(f))).collect();
        w.wake(16, 20);
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for (p, f) in &mut futs {
            let ready = f.as_mut().poll(&mut cx).is_ready();
            // Shards of 8 positions: 16..24 share the woken shard.
            // ... and the two shards behind (24..40) see their place move.
            assert_eq!(ready, (16..40).contains(p), "position {p}");
        }
        // A range wider than the ring wakes every shard once.
        let f = w.shard(123_456).notified();
        w.wake(0, u64::MAX / 2);
        let mut f = Box::pin(f);
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
}
