//! Gates and their lanes: a gate has one lane per cohort when it has a schedule (each cohort
//! has its own hours and its own queue), or one lane shared by everyone. A lane is a
//! [`Gate`]; it also holds the pre-queue shuffle drawn at the last opening, its long-poll
//! wake-ups and its metric handles. The admin switch overrides the configured mode.

use std::sync::atomic::{AtomicU32, AtomicU8};
use std::sync::{Arc, RwLock};

use arc_swap::{ArcSwap, Guard};

use super::metric;
use super::policy::GatePolicy;
use super::status::Wakers;
use crate::cohort::CohortId;
use crate::schedule::KeyedPermutation;
use crate::waitroom::{Gate, Mode};

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
    pub(super) shuffle: RwLock<Option<Shuffle>>,
    /// The schedule state seen at the last tick (0 closed, 1 prequeue, 2 open).
    pub(super) last_state: AtomicU8,
    /// `anticamera_schedule_closed_total` for this gate and cohort (a handle: no label
    /// look-up on the request path).
    pub(super) closed_total: metrics::Counter,
    /// `anticamera_waitroom_wait_seconds` for this gate and cohort.
    pub(super) wait_seconds: metrics::Histogram,
    /// Long-polling status requests, by queue position.
    pub(super) wakers: Arc<Wakers>,
    /// The serving counter up to which long polls were woken (0: none yet). With a shared
    /// store serving also moves between ticks (another node's admissions, seen by the mirror).
    pub(super) woken: std::sync::atomic::AtomicU64,
    /// While pre-queued: the opening (Unix seconds) it waits for, naming the draw a shared
    /// store agrees on at that opening.
    pub(super) opens_at_s: std::sync::atomic::AtomicI64,
}

/// The pre-queue order drawn at an opening: tickets in [start, end) are permuted by a keyed
/// permutation (the key is saved in the state file).
#[derive(Clone)]
pub(super) struct Shuffle {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) key: [u8; 32],
    perm: KeyedPermutation,
}

impl Lane {
    /// A lane of gate `gate_name` over `gate`, with its metric handles (labels `gate`,
    /// `cohort`).
    pub(super) fn new(
        id: u16,
        cohort: Option<CohortId>,
        cohort_name: String,
        gate_name: &str,
        gate: Gate,
    ) -> Lane {
        let labels = [
            ("gate", gate_name.to_string()),
            ("cohort", cohort_name.clone()),
        ];
        Lane {
            id,
            closed_total: metrics::counter!(metric::CLOSED, &labels),
            wait_seconds: metrics::histogram!(metric::WAIT, &labels),
            cohort_name,
            cohort,
            gate,
            shuffle: RwLock::new(None),
            last_state: AtomicU8::new(u8::MAX),
            wakers: Arc::new(Wakers::new()),
            woken: std::sync::atomic::AtomicU64::new(0),
            opens_at_s: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Lets in whom the room allows now (a place just freed up) and wakes their long polls,
    /// and the late arrivals' if room is left (their head comes from the store's mirror: no
    /// round trip with a shared store).
    pub(super) fn admit_and_wake(&self, now_ms: u64) {
        let before = self.gate.serving();
        self.gate.admit(now_ms);
        self.wake_admitted(before);
    }

    /// After the controller let people in: wakes the long polls of the positions admitted
    /// since `serving` was `before`, and of the first late arrivals if room is kept for them.
    pub(super) fn wake_admitted(&self, before: u64) {
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

    /// Sets the pre-queue shuffle: tickets in [start, end) permuted by `key` (nothing if the
    /// range is empty).
    pub(super) fn set_shuffle(&self, start: u64, end: u64, key: [u8; 32]) {
        if end <= start {
            return;
        }
        if let Ok(mut s) = self.shuffle.write() {
            *s = Some(Shuffle {
                start,
                end,
                key,
                perm: KeyedPermutation::new(&key, end - start),
            });
        }
    }
}

/// One gate: its lanes (state that lives as long as the process) and its policy (path rules,
/// schedule, shares, settings: replaced whole by a reload).
pub struct GateRuntime {
    /// Config name.
    pub name: String,
    /// Cookie holding this gate's ticket or pass.
    pub cookie: String,
    /// Lanes: one per cohort with a schedule, else one.
    pub lanes: Vec<Lane>,
    /// Configured total capacity (changeable at runtime).
    pub capacity: AtomicU32,
    /// Configured new users per minute (per gate, split across open lanes).
    pub admit_per_minute: AtomicU32,
    pub(super) switch: RwLock<Switch>,
    pub(super) policy: ArcSwap<GatePolicy>,
    /// With `admission = "portal"`: how many people inside the portal can serve now, learned
    /// from its room ([`super::Room::follow_portal`]); 0 until first learned.
    pub steering: AtomicU32,
}

impl GateRuntime {
    /// The gate's policy now (one lock-free load; a reload may replace it).
    #[inline]
    pub fn policy(&self) -> Guard<Arc<GatePolicy>> {
        self.policy.load()
    }

    pub(super) fn lane_for(&self, cohort: CohortId) -> &Lane {
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
