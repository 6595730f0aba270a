//! Upstream protection: a cap on requests in flight to the upstream, a short priority queue with a
//! deadline, and (optionally) an adaptive limit that finds the upstream's capacity.
//!
//! # Admission
//!
//! [`Guard::acquire`] grants a [`Permit`] while fewer than the current limit are in flight. The
//! fast path is one atomic compare-and-swap; only when the upstream is saturated does a caller take
//! a small mutex and wait in a queue (a `oneshot` channel per waiter) until a permit is released,
//! the deadline (`queue_timeout` after arrival) passes, or a more important caller displaces it.
//!
//! Two priorities, shed in this order:
//! - [`Priority::New`] (new arrivals, anonymous traffic) may only use
//!   `floor(limit × (1 − reserve_for_inside))` slots (at least 1), may only queue while the queue
//!   is less than half full, and is the one displaced when the queue is full.
//! - [`Priority::Inside`] (users already admitted, e.g. a claim being submitted) may use every
//!   slot, may fill the whole queue, and when the queue is full displaces the youngest queued
//!   `New` waiter. Queued `Inside` waiters are served before queued `New` ones, except that a
//!   `New` waiter that has waited a quarter of `queue_timeout` goes first, and so do `New`
//!   waiters while a quarter of `queue_size` of them wait (half the queue they may fill): a standing line
//!   of requests from inside (admission that follows the portal keeps a short one) must not
//!   starve the open pages until their deadline, nor leave a spike of them to be shed.
//!
//! # Adaptive limit (`mode = "adaptive"`): AIMD with a latency threshold
//!
//! Each completed permit reports its latency and [`Signal`]. The guard keeps an EWMA of latency
//! (weight 0.1 per sample).
//! - Additive increase: on a success while the EWMA is at or under `latency_threshold`, and the
//!   request was sent while the limit was actually being used (in flight ≥ half the limit), the
//!   limit grows by `1 / limit` (≈ +1 per round of `limit` requests).
//! - Multiplicative decrease: on a [`Signal::Overload`] (5xx meaning overload, timeout, connect
//!   error), or a success while the EWMA is above `latency_threshold`, the limit is multiplied by
//!   `backoff`. At most once per "round": only requests that were started after the previous
//!   decrease can trigger the next one, so a burst of failures from one round does not collapse
//!   the limit in one go.
//! - The limit stays within `[min_limit, max_limit]`, starting at `max_in_flight`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::breaker::BreakerConfig;
use crate::util::duration::serde_str as duration_str;
use crate::util::field_error::FieldError;

/// How the in-flight limit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// The limit is `max_in_flight`, always.
    #[default]
    Fixed,
    /// The limit starts at `max_in_flight` and follows the upstream's health (AIMD).
    Adaptive,
}

/// `[upstream_guard]`: upstream concurrency limit, queue and circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// `"fixed"` or `"adaptive"` (default `"fixed"`).
    pub mode: GuardMode,
    /// The fixed limit, or the starting limit in adaptive mode (default 64).
    pub max_in_flight: usize,
    /// Adaptive lower bound (default 4).
    pub min_limit: usize,
    /// Adaptive upper bound (default 512).
    pub max_limit: usize,
    /// Maximum queued requests; 0 disables queueing (default 128).
    pub queue_size: usize,
    /// How long a request may wait in the queue (default "2s").
    #[serde(with = "duration_str")]
    pub queue_timeout: Duration,
    /// Share of the limit that `New` requests cannot use, kept for `Inside` ones (default 0.2).
    pub reserve_for_inside: f64,
    /// Adaptive: latency EWMA above this counts as overload (default "500ms").
    #[serde(with = "duration_str")]
    pub latency_threshold: Duration,
    /// Adaptive: multiplicative decrease factor, in (0, 1) (default 0.9).
    pub backoff: f64,
    /// `[upstream_guard.breaker]`: the circuit breaker.
    pub breaker: BreakerConfig,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            mode: GuardMode::Fixed,
            max_in_flight: 64,
            min_limit: 4,
            max_limit: 512,
            queue_size: 128,
            queue_timeout: Duration::from_secs(2),
            reserve_for_inside: 0.2,
            latency_threshold: Duration::from_millis(500),
            backoff: 0.9,
            breaker: BreakerConfig::default(),
        }
    }
}

impl GuardConfig {
    /// Checks ranges and cross-field rules; keys are relative to `[upstream_guard]`.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.max_in_flight == 0 {
            errs.push(FieldError::new("max_in_flight", "must be at least 1"));
        }
        if self.min_limit == 0 {
            errs.push(FieldError::new("min_limit", "must be at least 1"));
        }
        if self.min_limit > self.max_limit {
            errs.push(FieldError::new(
                "min_limit",
                format!("must not exceed max_limit ({})", self.max_limit),
            ));
        }
        if self.mode == GuardMode::Adaptive
            && (self.max_in_flight < self.min_limit || self.max_in_flight > self.max_limit)
        {
            errs.push(FieldError::new(
                "max_in_flight",
                format!(
                    "in adaptive mode the starting limit must lie within min_limit..=max_limit ({}..={})",
                    self.min_limit, self.max_limit
                ),
            ));
        }
        if self.queue_size > 0 && self.queue_timeout.is_zero() {
            errs.push(FieldError::new(
                "queue_timeout",
                "must be positive when queue_size > 0",
            ));
        }
        if !(0.0..1.0).contains(&self.reserve_for_inside) {
            errs.push(FieldError::new(
                "reserve_for_inside",
                "must be at least 0 and below 1",
            ));
        }
        if self.latency_threshold.is_zero() {
            errs.push(FieldError::new("latency_threshold", "must be positive"));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            errs.push(FieldError::new("backoff", "must be above 0 and below 1"));
        }
        if let Err(b) = self.breaker.validate() {
            errs.extend(b.into_iter().map(|e| FieldError {
                key: format!("breaker.{}", e.key),
                reason: e.reason,
            }));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// Who is asking: decides who is shed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A user already admitted (e.g. submitting a claim): shed last.
    Inside,
    /// A new arrival or anonymous request: shed first.
    New,
}

impl Priority {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Inside => "inside",
            Priority::New => "new",
        }
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// The queue (or this priority's share of it) was full.
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    QueueTimeout,
    /// A queued `New` request was pushed out by an `Inside` one.
    Displaced,
}

impl ShedReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Displaced => "displaced",
        }
    }
}

/// A refusal: answer 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream busy ({}), retry after {retry_after:?}", reason.as_str())]
pub struct Shed {
    /// Why.
    pub reason: ShedReason,
    /// A hint for `Retry-After`: how long the queue needs to drain at the measured latency,
    /// between one second and the queue timeout.
    pub retry_after: Duration,
}

impl Shed {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        crate::util::duration::ceil_secs(self.retry_after).max(1)
    }
}

/// How an upstream request ended, for the adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A normal answer (including 4xx and non-overload 5xx).
    Success,
    /// The upstream showed overload: 502/503/504, timeout, connect error.
    Overload,
}

type Grant = Result<(), ShedReason>;

struct Waiter {
    id: u64,
    /// When it joined the queue (a new arrival that waited a quarter of `queue_timeout` goes first).
    since: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct Waiters {
    inside: VecDeque<Waiter>,
    new: VecDeque<Waiter>,
    next_id: u64,
}

impl Waiters {
    fn len(&self) -> usize {
        self.inside.len() + self.new.len()
    }

    fn remove(&mut self, id: u64, priority: Priority) -> bool {
        let q = match priority {
            Priority::Inside => &mut self.inside,
            Priority::New => &mut self.new,
        };
        match q.iter().position(|w| w.id == id) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

const EWMA_WEIGHT: f64 = 0.1;

struct Inner {
    mode: GuardMode,
    min_limit: usize,
    max_limit: usize,
    queue_size: usize,
    queue_timeout: Duration,
    new_share: f64,
    latency_threshold_ns: f64,
    backoff: f64,

    limit: AtomicUsize,
    /// This node's part of a portal shared by a fleet ([`Guard::set_share`]); `usize::MAX`
    /// alone. The limit in force is the lower of the two.
    share: AtomicUsize,
    in_flight: AtomicUsize,
    /// Waiters in the queue, plus callers about to decide whether to queue (see `acquire`).
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,

    /// The portal's load over time, for admission that follows it: the time integral of the
    /// slots held and of the requests of people inside waiting for one (see [`Area`]).
    origin: Instant,
    busy: Area,
    inside_waiting: Area,
    new_waiting: Area,
    /// Adaptive state: the fractional limit (f64 bits), the decrease epoch, latency EWMA (f64 ns).
    limit_f: AtomicU64,
    epoch: AtomicU64,
    ewma_ns: AtomicU64,
}

/// The upstream guard. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("limit", &self.current_limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// The right to send one request upstream; releases its slot when dropped.
#[must_use = "dropping the permit releases the slot at once"]
pub struct Permit {
    inner: Arc<Inner>,
    /// When the slot was granted: the start of the exchange, and of its time at the portal.
    granted: Instant,
    /// Its time at the portal was counted (by [`Permit::done`]); the drop only frees the slot.
    counted: bool,
    waited: Duration,
    epoch: u64,
    in_flight_at_start: usize,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// Time spent queued before the slot was granted (zero on the fast path).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Reports how the upstream request went (feeds the adaptive limit) and releases the slot.
    /// Dropping a permit without calling this reports nothing (the slot is freed; the request
    /// said nothing about the portal's capacity: the client went away, it was cancelled).
    ///
    /// `latency` is the exchange's time since [`Permit::granted`]: it is also the slot's time at
    /// the portal in the load integrals, so the clock is not read again.
    pub fn done(mut self, latency: Duration, outcome: Signal) {
        self.inner
            .on_outcome(latency, outcome, self.epoch, self.in_flight_at_start);
        let end = self.inner.micros_at(self.granted) + latency.as_micros() as u64;
        self.inner.busy.leave(end);
        self.counted = true;
        // Drop releases the slot.
    }

    /// When the slot was granted.
    pub fn granted(&self) -> Instant {
        self.granted
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.counted {
            self.inner.busy.leave(self.inner.micros());
        }
        self.inner.release();
    }
}

/// Removes a queued waiter if its `acquire` future is dropped or times out.
struct Waiting<'a> {
    inner: &'a Inner,
    id: u64,
    priority: Priority,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Waiting<'_> {
    /// Leaves the queue. Returns the grant if one was sent before we could leave.
    fn leave(&mut self) -> Option<Grant> {
        let mut rx = self.rx.take()?;
        {
            let mut w = self.inner.lock();
            if w.remove(self.id, self.priority) {
                self.inner.queued.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
        }
        // Not in the queue any more: a grant or displacement was sent under the lock.
        rx.try_recv().ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        match self.priority {
            Priority::Inside => self.inner.inside_waiting.leave(self.inner.micros()),
            Priority::New => self.inner.new_waiting.leave(self.inner.micros()),
        }
        if let Some(Ok(())) = self.leave() {
            // Granted but nobody will use it: hand the slot on.
            self.inner.release();
        }
    }
}

impl Guard {
    /// A guard for a validated config.
    pub fn new(cfg: &GuardConfig) -> Self {
        let start = match cfg.mode {
            GuardMode::Fixed => cfg.max_in_flight.max(1),
            GuardMode::Adaptive => cfg.max_in_flight.clamp(
                cfg.min_limit.max(1),
                cfg.max_limit.max(cfg.min_limit.max(1)),
            ),
        };
        Guard {
            inner: Arc::new(Inner {
                mode: cfg.mode,
                min_limit: cfg.min_limit.max(1),
                max_limit: cfg.max_limit.max(cfg.min_limit.max(1)),
                queue_size: cfg.queue_size,
                queue_timeout: cfg.queue_timeout,
                new_share: (1.0 - cfg.reserve_for_inside).clamp(0.0, 1.0),
                latency_threshold_ns: cfg.latency_threshold.as_nanos() as f64,
                backoff: cfg.backoff,
                limit: AtomicUsize::new(start),
                share: AtomicUsize::new(usize::MAX),
                in_flight: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                waiters: Mutex::new(Waiters::default()),
                origin: Instant::now(),
                busy: Area::default(),
                inside_waiting: Area::default(),
                new_waiting: Area::default(),
                limit_f: AtomicU64::new((start as f64).to_bits()),
                epoch: AtomicU64::new(0),
                ewma_ns: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Waits for a slot. `now` is the request's arrival time: the queue deadline is
    /// `now + queue_timeout`, and [`Permit::waited`] is measured from it.
    pub async fn acquire(&self, priority: Priority, now: Instant) -> Result<Permit, Shed> {
        let inner = &*self.inner;
        // Fast path: nobody queued and a slot free.
        if inner.queued.load(Ordering::SeqCst) == 0 && inner.try_slot(inner.cap(priority)) {
            return Ok(self.permit(now, false));
        }
        let mut waiting = {
            let mut w = inner.lock();
            // Announce ourselves before trying for a slot, so that a concurrent release either
            // frees the slot before our try, or sees us and dispatches under the lock.
            inner.queued.fetch_add(1, Ordering::SeqCst);
            let ahead = match priority {
                Priority::Inside => !w.inside.is_empty(),
                Priority::New => w.len() > 0,
            };
            if !ahead && inner.try_slot(inner.cap(priority)) {
                inner.queued.fetch_sub(1, Ordering::SeqCst);
                drop(w);
                return Ok(self.permit(now, false));
            }
            let len = w.len();
            let room = match priority {
                Priority::New => len < inner.queue_size / 2,
                Priority::Inside if len < inner.queue_size => true,
                Priority::Inside => match w.new.pop_back() {
                    Some(victim) => {
                        inner.queued.fetch_sub(1, Ordering::SeqCst);
                        let _ = victim.tx.send(Err(ShedReason::Displaced));
                        true
                    }
                    None => false,
                },
            };
            if !room {
                inner.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(inner.shed(ShedReason::QueueFull));
            }
            let (tx, rx) = oneshot::channel();
            let id = w.next_id;
            w.next_id = w.next_id.wrapping_add(1);
            let waiter = Waiter {
                id,
                since: Instant::now(),
                tx,
            };
            match priority {
                Priority::Inside => {
                    inner.inside_waiting.enter(inner.micros());
                    w.inside.push_back(waiter);
                }
                Priority::New => {
                    inner.new_waiting.enter(inner.micros());
                    w.new.push_back(waiter);
                }
            }
            Waiting {
                inner,
                id,
                priority,
                rx: Some(rx),
            }
        };
        let deadline = now + inner.queue_timeout;
        let grant = match waiting.rx.as_mut() {
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(grant)) => {
                    waiting.rx = None; // consumed: nothing to clean up
                    Some(grant)
                }
                // Sender dropped without a message: cannot happen (senders always send before
                // leaving the queue); treat as a timeout after cleaning up.
                Ok(Err(_)) | Err(_) => waiting.leave(),
            },
            None => None,
        };
        match grant {
            Some(Ok(())) => Ok(self.permit(now, true)),
            Some(Err(reason)) => Err(inner.shed(reason)),
            None => Err(inner.shed(ShedReason::QueueTimeout)),
        }
    }

    fn permit(&self, arrived: Instant, queued: bool) -> Permit {
        let granted = Instant::now();
        self.inner.busy.enter(self.inner.micros_at(granted));
        Permit {
            inner: self.inner.clone(),
            granted,
            counted: false,
            waited: if queued {
                granted.saturating_duration_since(arrived)
            } else {
                Duration::ZERO
            },
            epoch: self.inner.epoch.load(Ordering::Relaxed),
            in_flight_at_start: self.inner.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The in-flight limit in force: the fixed or adaptive one, or this node's part of a
    /// shared portal if that is lower.
    pub fn current_limit(&self) -> usize {
        self.inner.effective_limit()
    }

    /// The limit this guard sets by itself (fixed, or learned in adaptive mode), whatever
    /// part of a shared portal this node holds.
    pub fn own_limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// With several nodes in front of one portal: the part of its capacity this node may use
    /// now (the fleet's lease, `store/redis.rs`). Requests beyond it wait in the queue as
    /// beyond the limit; raising it hands the new slots to waiters at once. Lowering it takes
    /// no slot away from a request already at the portal.
    pub fn set_share(&self, share: usize) {
        let old = self.inner.share.swap(share, Ordering::AcqRel);
        if share > old {
            self.inner.dispatch();
        }
    }

    /// This node's part of a shared portal (`None` alone).
    pub fn share(&self) -> Option<usize> {
        match self.inner.share.load(Ordering::Acquire) {
            usize::MAX => None,
            s => Some(s),
        }
    }

    /// Requests in flight to the upstream.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Requests of users already inside waiting in the queue.
    pub fn queued_inside(&self) -> usize {
        self.inner.inside_waiting.count()
    }

    /// The portal's load so far, for admission that follows it (see [`Load`]).
    pub fn load(&self) -> Load {
        let now = self.inner.micros();
        Load {
            limit: self.current_limit(),
            at_us: now,
            busy_us: self.inner.busy.area(now),
            inside_waiting_us: self.inner.inside_waiting.area(now),
            new_waiting_us: self.inner.new_waiting.area(now),
        }
    }
}

/// A reading of the portal's load: the limit, and time integrals (in request-microseconds, modulo 2⁴⁸: compare two readings with
/// [`Load::averages_since`]) of the requests at the portal and of the requests waiting for a
/// slot, of people inside and of newcomers. Exact at the moment of reading: a request still at
/// the portal counts up to now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// The concurrency limit now (fixed, or learned).
    pub limit: usize,
    /// When this was read, in microseconds since the guard started.
    pub at_us: u64,
    /// Request-microseconds at the portal, in total (modulo 2⁴⁸).
    pub busy_us: u64,
    /// Request-microseconds that requests of people inside waited for a slot (modulo 2⁴⁸).
    pub inside_waiting_us: u64,
    /// Request-microseconds that newcomers' requests (open pages, anonymous traffic) waited
    /// for a slot (modulo 2⁴⁸).
    pub new_waiting_us: u64,
}

/// What [`Load::averages_since`] measures between two readings: average numbers of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverages {
    /// At the portal.
    pub busy: f64,
    /// Of people inside, waiting for a slot.
    pub waiting_inside: f64,
    /// Of newcomers, waiting for a slot.
    pub waiting_new: f64,
}

impl Load {
    /// The average numbers of requests at the portal and waiting for a slot between `earlier`
    /// and this reading; `None` if no time passed.
    pub fn averages_since(&self, earlier: &Load) -> Option<LoadAverages> {
        let dt = self.at_us.checked_sub(earlier.at_us).filter(|d| *d > 0)? as f64;
        let diff = |a: u64, b: u64| (a.wrapping_sub(b) & Area::MASK) as f64 / dt;
        Some(LoadAverages {
            busy: diff(self.busy_us, earlier.busy_us),
            waiting_inside: diff(self.inside_waiting_us, earlier.inside_waiting_us),
            waiting_new: diff(self.new_waiting_us, earlier.new_waiting_us),
        })
    }
}

/// The time integral of a count (requests at the portal, requests waiting), kept lock-free
/// in one word so that a reading is consistent: the count in the low 16 bits and, above it,
/// `A` = (the sum of the exit times of those who left − the sum of the entry times of all who
/// entered) in microseconds modulo 2⁴⁸. The integral up to `t` is `A + count × t`. Entering
/// at `t` adds `−t` to `A` and one to the count, leaving adds `t` and takes one away: a single
/// `fetch_add` each. Counts stay below 2¹⁶ (the guard's limits and queue are far below it; a
/// larger count would carry into `A` and only spoil the averages, never a permit).
#[derive(Debug, Default)]
struct Area(AtomicU64);

impl Area {
    const MASK: u64 = (1 << 48) - 1;

    fn enter(&self, now_us: u64) {
        self.0.fetch_add(
            now_us.wrapping_neg().wrapping_shl(16).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn leave(&self, now_us: u64) {
        self.0
            .fetch_add(now_us.wrapping_shl(16).wrapping_sub(1), Ordering::Relaxed);
    }

    fn count(&self) -> usize {
        (self.0.load(Ordering::Relaxed) & 0xffff) as usize
    }

    /// The integral up to `now_us`, modulo 2⁴⁸.
    fn area(&self, now_us: u64) -> u64 {
        let w = self.0.load(Ordering::Relaxed);
        ((w >> 16).wrapping_add((w & 0xffff).wrapping_mul(now_us))) & Self::MASK
    }
}

impl Inner {
    /// Microseconds since the guard started.
    fn micros(&self) -> u64 {
        self.micros_at(Instant::now())
    }

    fn micros_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A refusal, with `Retry-After` the time the queue needs to drain (its length times the
    /// latency EWMA over the limit), between 1 s and the queue timeout; the queue timeout
    /// before any latency is known.
    fn shed(&self, reason: ShedReason) -> Shed {
        let most = self.queue_timeout.max(Duration::from_secs(1));
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let limit = self.effective_limit().max(1) as f64;
        let queued = self.queued.load(Ordering::Relaxed) as f64 + 1.0;
        let drain = if ewma > 0.0 {
            Duration::from_secs_f64((queued * ewma / limit / 1e9).min(most.as_secs_f64()))
        } else {
            most
        };
        Shed {
            reason,
            retry_after: drain.clamp(Duration::from_secs(1), most),
        }
    }

    /// Slots usable by `priority` under the current limit.
    #[inline]
    fn effective_limit(&self) -> usize {
        self.limit
            .load(Ordering::Relaxed)
            .min(self.share.load(Ordering::Relaxed))
    }

    #[inline]
    fn cap(&self, priority: Priority) -> usize {
        let limit = self.effective_limit();
        match priority {
            Priority::Inside => limit,
            Priority::New => ((limit as f64 * self.new_share) as usize).max(1).min(limit),
        }
    }

    #[inline]
    fn try_slot(&self, cap: usize) -> bool {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= cap {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.dispatch();
    }

    /// Hands free slots to queued waiters: `Inside` first, then `New` within its share.
    fn dispatch(&self) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut w = self.lock();
        let now = Instant::now();
        loop {
            // People inside first, but a new arrival's request that has waited a quarter of the
            // queue timeout goes before them: a standing line of requests from inside (admission
            // that follows the portal keeps one) must not starve the open pages.
            // So does a newcomers' line half as long as the queue they may fill (`queue_size
            // / 2`): past that they are shed at once, and a spike of open pages fills it in a second while
            // people inside keep the portal busy (claim day following the portal: 370 open
            // pages shed in one second).
            let new_first = w.new.len() >= (self.queue_size / 4).max(1)
                || w.new.front().is_some_and(|n| {
                    now.saturating_duration_since(n.since) >= self.queue_timeout / 4
                });
            let (queue, cap) = if new_first {
                (&mut w.new, self.cap(Priority::New))
            } else if !w.inside.is_empty() {
                (&mut w.inside, self.cap(Priority::Inside))
            } else if !w.new.is_empty() {
                (&mut w.new, self.cap(Priority::New))
            } else {
                return;
            };
            if !self.try_slot(cap) {
                return;
            }
            let Some(waiter) = queue.pop_front() else {
                // Unreachable (checked non-empty above); give the slot back.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if waiter.tx.send(Ok(())).is_err() {
                // The waiter is gone (its cleanup will find it removed): undo and go on.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn on_outcome(&self, latency: Duration, outcome: Signal, epoch: u64, in_flight_then: usize) {
        let adaptive = self.mode == GuardMode::Adaptive;
        match outcome {
            Signal::Overload if adaptive => self.decrease(epoch),
            Signal::Overload => {}
            Signal::Success => {
                // The latency EWMA also dates `Retry-After`, in fixed mode too.
                let sample = latency.as_nanos() as f64;
                let ewma = update_f64(&self.ewma_ns, |e| {
                    if e == 0.0 {
                        sample
                    } else {
                        e + EWMA_WEIGHT * (sample - e)
                    }
                });
                if adaptive {
                    if ewma > self.latency_threshold_ns {
                        self.decrease(epoch);
                    } else if in_flight_then.saturating_mul(2) >= self.limit.load(Ordering::Relaxed)
                    {
                        self.increase();
                    }
                }
            }
        }
    }

    fn decrease(&self, epoch: u64) {
        // Once per round: only the first overload signal from requests started after the last
        // decrease moves the limit.
        if self
            .epoch
            .compare_exchange(
                epoch,
                epoch.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return;
        }
        let (min, backoff) = (self.min_limit as f64, self.backoff);
        update_f64(&self.limit_f, |l| (l * backoff).max(min));
        let (old, new) = self.sync_limit();
        if new != old {
            tracing::debug!(old, new, "upstream guard: limit decreased");
        }
    }

    fn increase(&self) {
        let max = self.max_limit as f64;
        update_f64(&self.limit_f, |l| (l + 1.0 / l.max(1.0)).min(max));
        let (old, new) = self.sync_limit();
        if new > old {
            self.dispatch();
        }
    }

    /// Publishes the integer limit from the latest fractional one (the last writer reads the
    /// latest value, so concurrent increases and decreases cannot leave a stale integer behind).
    fn sync_limit(&self) -> (usize, usize) {
        let f = f64::from_bits(self.limit_f.load(Ordering::Acquire));
        let new = (f as usize).clamp(self.min_limit, self.max_limit);
        (self.limit.swap(new, Ordering::AcqRel), new)
    }
}

/// Lock-free read-modify-write of an f64 stored as bits; returns the new value.
fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) -> f64 {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let new = f(f64::from_bits(cur));
        match cell.compare_exchange_weak(cur, new.to_bits(), Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return new,
            Err(c) => cur = c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cfg(src: &str) -> GuardConfig {
        let c: GuardConfig = toml::from_str(src).unwrap();
        c.validate().unwrap();
        c
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Takes a slot at `priority` (queueing if it must), writes `i` in `order` once it has it,
    /// and holds it `hold_ms`; then lets everything queued so far settle in.
    async fn turn(
        g: &Guard,
        order: &Arc<Mutex<Vec<usize>>>,
        i: usize,
        priority: Priority,
        hold_ms: u64,
    ) -> tokio::task::JoinHandle<()> {
        let (g, order) = (g.clone(), order.clone());
        let task = tokio::spawn(async move {
            let p = g.acquire(priority, Instant::now()).await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            drop(p);
        });
        settle().await;
        task
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: GuardConfig = toml::from_str("").unwrap();
        assert_eq!(c.mode, GuardMode::Fixed);
        assert_eq!(
            (c.max_in_flight, c.min_limit, c.max_limit, c.queue_size),
            (64, 4, 512, 128)
        );
        assert_eq!(c.queue_timeout, Duration::from_secs(2));
        assert_eq!(c.latency_threshold, Duration::from_millis(500));
        assert_eq!((c.reserve_for_inside, c.backoff), (0.2, 0.9));
        assert_eq!(c.breaker.failures, 5);
        c.validate().unwrap();

        let c: GuardConfig = toml::from_str(
            "mode = \"adaptive\"\nmax_in_flight = 1000\nmin_limit = 8\nmax_limit = 4\n\
             reserve_for_inside = 1.0\nbackoff = 1.5\nqueue_timeout = \"0s\"\n\
             [breaker]\nprobes = 0\n",
        )
        .unwrap();
        let keys: Vec<_> = c
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "min_limit",
                "max_in_flight",
                "queue_timeout",
                "reserve_for_inside",
                "backoff",
                "breaker.probes"
            ]
        );
        assert!(toml::from_str::<GuardConfig>("mode = \"magic\"").is_err());
        assert!(toml::from_str::<GuardConfig>("max_inflight = 3").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_flight() {
        let g = Guard::new(&cfg(
            "max_in_flight = 4\nqueue_size = 200\nqueue_timeout = \"60s\"\nreserve_for_inside = 0.0",
        ));
        let cur = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let (g, cur, max) = (g.clone(), cur.clone(), max.clone());
                tokio::spawn(async move {
                    let prio = if i % 2 == 0 {
                        Priority::Inside
                    } else {
                        Priority::New
                    };
                    let p = g.acquire(prio, Instant::now()).await.unwrap();
                    let c = cur.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(c, Ordering::SeqCst);
                    assert!(g.in_flight() <= 4);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    cur.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 4);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_stress_respects_limit() {
        let g = Guard::new(&cfg(
            "max_in_flight = 3\nqueue_size = 1000\nqueue_timeout = \"30s\"\nreserve_for_inside = 0.0",
        ));
        let cur = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (g, cur, max) = (g.clone(), cur.clone(), max.clone());
                tokio::spawn(async move {
                    let prio = if i % 3 == 0 {
                        Priority::New
                    } else {
                        Priority::Inside
                    };
                    let p = g.acquire(prio, Instant::now()).await.unwrap();
                    let c = cur.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(c, Ordering::SeqCst);
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    cur.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(max.load(Ordering::SeqCst) <= 3);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_deadline_is_respected() {
        let g = Guard::new(&cfg("max_in_flight = 1\nqueue_timeout = \"2s\""));
        let held = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        assert_eq!(held.waited(), Duration::ZERO);
        let t0 = Instant::now();
        let shed = g.acquire(Priority::Inside, t0).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueTimeout);
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
        assert_eq!(shed.retry_after_secs(), 2);
        assert_eq!(g.queued(), 0);

        // The deadline counts from arrival, not from the call.
        let t1 = Instant::now();
        let arrived = t1 - Duration::from_millis(1500);
        let shed = g.acquire(Priority::Inside, arrived).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueTimeout);
        assert_eq!(Instant::now() - t1, Duration::from_millis(500));

        // A waiter granted before its deadline reports how long it waited.
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            let p = g2.acquire(Priority::New, Instant::now()).await.unwrap();
            p.waited()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(g.queued(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(300));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_time_the_queue_needs() {
        let g = Guard::new(&cfg(
            "max_in_flight = 2\nreserve_for_inside = 0.0\nqueue_size = 200\nqueue_timeout = \"30s\"",
        ));
        // The portal answers in 200 ms, 2 at a time: a queue of n drains in n / 10 seconds.
        for _ in 0..4 {
            let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
            p.done(Duration::from_millis(200), Signal::Success);
        }
        let _held: Vec<_> = futures_util::future::join_all(
            (0..2).map(|_| g.acquire(Priority::Inside, Instant::now())),
        )
        .await;
        let queued: Vec<_> = (0..100)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(
                    async move { g.acquire(Priority::New, Instant::now()).await.map(|_| ()) },
                )
            })
            .collect();
        settle().await;
        assert_eq!(g.queued(), 100);
        // New arrivals may fill half the queue: the next is refused, told the queue's drain.
        let shed = g.acquire(Priority::New, Instant::now()).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueFull);
        assert_eq!(shed.retry_after_secs(), 11, "101 × 0.2 s / 2, rounded up");
        drop(queued);
    }

    #[tokio::test(start_paused = true)]
    async fn new_is_shed_before_inside() {
        let g = Guard::new(&cfg(
            "max_in_flight = 2\nreserve_for_inside = 0.5\nqueue_size = 4\nqueue_timeout = \"10s\"",
        ));
        let spawn = |prio: Priority| {
            let g = g.clone();
            tokio::spawn(async move { g.acquire(prio, Instant::now()).await.map(drop) })
        };
        // New may use only 1 of the 2 slots.
        let n1 = g.acquire(Priority::New, Instant::now()).await.unwrap();
        let tn2 = spawn(Priority::New);
        settle().await;
        assert_eq!((g.in_flight(), g.queued()), (1, 1));
        // Inside still gets the reserved slot at once, though a New is waiting.
        let i1 = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        assert_eq!(g.in_flight(), 2);
        // New may queue only while the queue is under half full (2 of 4).
        let tn3 = spawn(Priority::New);
        settle().await;
        assert_eq!(g.queued(), 2);
        let shed = g.acquire(Priority::New, Instant::now()).await.unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueFull);
        // Inside fills the whole queue...
        let ti2 = spawn(Priority::Inside);
        let ti3 = spawn(Priority::Inside);
        settle().await;
        assert_eq!(g.queued(), 4);
        // ...then displaces the youngest New, then the next one...
        let ti4 = spawn(Priority::Inside);
        settle().await;
        assert_eq!(
            tn3.await.unwrap().unwrap_err().reason,
            ShedReason::Displaced
        );
        let ti5 = spawn(Priority::Inside);
        settle().await;
        assert_eq!(
            tn2.await.unwrap().unwrap_err().reason,
            ShedReason::Displaced
        );
        assert_eq!(g.queued(), 4);
        // ...and only when no New is left is an Inside refused.
        let shed = g
            .acquire(Priority::Inside, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueFull);
        // Released slots go to the queued Inside requests, in order.
        drop(i1);
        drop(n1);
        for t in [ti2, ti3, ti4, ti5] {
            t.await.unwrap().unwrap();
        }
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_inside_served_before_queued_new() {
        // queue_size 20: two newcomers are a short line (they go first only from 5).
        let g = Guard::new(&cfg(
            "max_in_flight = 1\nreserve_for_inside = 0.0\nqueue_size = 20\nqueue_timeout = \"10s\"",
        ));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let mut tasks = Vec::new();
        for (i, prio) in [
            Priority::New,
            Priority::New,
            Priority::Inside,
            Priority::Inside,
        ]
        .into_iter()
        .enumerate()
        {
            tasks.push(turn(&g, &order, i, prio, 1).await);
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [2, 3, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_request_that_waited_a_quarter_of_the_timeout_goes_before_inside() {
        let g = Guard::new(&cfg(
            "max_in_flight = 1\nreserve_for_inside = 0.0\nqueue_size = 10\nqueue_timeout = \"4s\"",
        ));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut held = Some(g.acquire(Priority::Inside, Instant::now()).await.unwrap());
        // A new request queues; for two seconds people inside keep the one slot busy.
        let mut tasks = vec![turn(&g, &order, 0, Priority::New, 400).await];
        for i in 1..=3 {
            tasks.push(turn(&g, &order, i, Priority::Inside, 400).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held.take());
        settle().await;
        for t in tasks {
            t.await.unwrap();
        }
        // Each inside request holds the slot 400 ms: at 0.5 s and 0.9 s the new request had
        // waited less than a quarter of the timeout (1 s) and inside went first; at 1.3 s it
        // went before the inside request still queued.
        assert_eq!(*order.lock().unwrap(), [1, 2, 0, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomers_line_half_way_to_its_bound_goes_before_inside() {
        // queue_size 8: newcomers are shed past 4 queued, and go first from 2.
        let g = Guard::new(&cfg(
            "max_in_flight = 1\nreserve_for_inside = 0.0\nqueue_size = 8\nqueue_timeout = \"40s\"",
        ));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let mut tasks = Vec::new();
        for (i, prio) in [
            (0, Priority::New),
            (1, Priority::Inside),
            (2, Priority::New),
        ] {
            tasks.push(turn(&g, &order, i, prio, 100).await);
        }
        drop(held);
        settle().await;
        for t in tasks {
            t.await.unwrap();
        }
        // Two newcomers queued (a quarter of queue_size): the first goes before the request
        // from inside, though it waited far less than a quarter of the timeout; with one left,
        // inside goes first again.
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_exchange_counts_its_latency_as_time_at_the_portal() {
        let g = Guard::new(&cfg("max_in_flight = 2"));
        let l0 = g.load();
        let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.done(Duration::from_millis(500), Signal::Success);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Half a second at the portal over a second: 0.5 on average, and nothing left inside.
        let a = g.load().averages_since(&l0).unwrap();
        assert!((a.busy - 0.5).abs() < 0.01, "{a:?}");
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_load_reading_integrates_requests_at_the_portal_and_waiting() {
        let g = Guard::new(&cfg(
            "max_in_flight = 2\nqueue_size = 10\nqueue_timeout = \"10s\"",
        ));
        let l0 = g.load();
        let a = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let b = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            let p = g2.acquire(Priority::Inside, Instant::now()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            drop(p);
        });
        let g3 = g.clone();
        let newcomer = tokio::spawn(async move {
            drop(g3.acquire(Priority::New, Instant::now()).await.unwrap());
        });
        settle().await;
        assert_eq!(g.queued_inside(), 1);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // One second: two at the portal, one waiting inside.
        let l1 = g.load();
        let a1 = l1.averages_since(&l0).unwrap();
        assert!((a1.busy - 2.0).abs() < 0.01, "{a1:?}");
        assert!((a1.waiting_inside - 1.0).abs() < 0.01, "{a1:?}");
        assert!((a1.waiting_new - 1.0).abs() < 0.01, "{a1:?}");
        drop(a);
        settle().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        drop(b);
        waiter.await.unwrap();
        newcomer.await.unwrap();
        // The next second: two at the portal (b and the waiter, let in), nobody waiting.
        let l2 = g.load();
        let a2 = l2.averages_since(&l1).unwrap();
        assert!((a2.busy - 2.0).abs() < 0.01, "{a2:?}");
        assert!(a2.waiting_inside.abs() < 0.01, "{a2:?}");
        assert_eq!((g.in_flight(), g.queued_inside()), (0, 0));
        assert_eq!(l2.averages_since(&l2), None, "no time, no average");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_leaves_no_trace() {
        let g = Guard::new(&cfg("max_in_flight = 1\nqueue_size = 4"));
        let held = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let g2 = g.clone();
        let t = tokio::spawn(async move { g2.acquire(Priority::Inside, Instant::now()).await });
        settle().await;
        assert_eq!(g.queued(), 1);
        t.abort();
        settle().await;
        assert_eq!(g.queued(), 0);
        drop(held);
        assert_eq!(g.in_flight(), 0);
        let p = g.acquire(Priority::New, Instant::now()).await.unwrap();
        assert_eq!(g.in_flight(), 1);
        drop(p);

        // No queue at all: shed at once.
        let g = Guard::new(&cfg("max_in_flight = 1\nqueue_size = 0"));
        let _held = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        let shed = g
            .acquire(Priority::Inside, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueFull);
    }

    const ADAPTIVE: &str = "mode = \"adaptive\"\nmax_in_flight = 20\nmin_limit = 4\n\
        max_limit = 40\nbackoff = 0.5\nlatency_threshold = \"100ms\"\nqueue_size = 0\n";

    #[tokio::test(start_paused = true)]
    async fn adaptive_decreases_on_errors_within_bounds() {
        let g = Guard::new(&cfg(ADAPTIVE));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
            p.done(Duration::from_millis(10), Signal::Overload);
            seen.push(g.current_limit());
        }
        assert_eq!(seen, [10, 5, 4, 4, 4, 4]);

        // Many failures from one round count once.
        let g = Guard::new(&cfg(ADAPTIVE));
        let mut round = Vec::new();
        for _ in 0..10 {
            round.push(g.acquire(Priority::Inside, Instant::now()).await.unwrap());
        }
        for p in round {
            p.done(Duration::from_millis(10), Signal::Overload);
        }
        assert_eq!(g.current_limit(), 10);

        // Slow successes count as overload; ignored outcomes and plain drops do nothing.
        let g = Guard::new(&cfg(ADAPTIVE));
        let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        drop(p);
        drop(g.acquire(Priority::Inside, Instant::now()).await.unwrap());
        assert_eq!(g.current_limit(), 20);
        let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
        p.done(Duration::from_secs(1), Signal::Success);
        assert_eq!(g.current_limit(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_recovers_when_healthy_and_stays_bounded() {
        let g = Guard::new(&cfg(ADAPTIVE));
        // Push it down with slow answers.
        for _ in 0..5 {
            let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
            p.done(Duration::from_secs(2), Signal::Success);
        }
        assert_eq!(g.current_limit(), 4);
        // Healthy rounds that use the whole limit: grows by about one per round, to max.
        let mut prev = g.current_limit();
        let mut grew = false;
        for _ in 0..200 {
            let mut round = Vec::new();
            for _ in 0..g.current_limit() {
                round.push(g.acquire(Priority::Inside, Instant::now()).await.unwrap());
            }
            for p in round {
                p.done(Duration::from_millis(5), Signal::Success);
            }
            let now = g.current_limit();
            assert!((4..=40).contains(&now));
            grew |= now > prev;
            prev = now;
        }
        assert!(grew);
        assert_eq!(g.current_limit(), 40);

        // A lightly used upstream does not raise the limit (app-limited).
        let g = Guard::new(&cfg(ADAPTIVE));
        for _ in 0..500 {
            let p = g.acquire(Priority::Inside, Instant::now()).await.unwrap();
            p.done(Duration::from_millis(5), Signal::Success);
        }
        assert_eq!(g.current_limit(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_mode_ignores_outcomes() {
        let g = Guard::new(&cfg("max_in_flight = 8"));
        for _ in 0..10 {
            let p = g.acquire(Priority::New, Instant::now()).await.unwrap();
            p.done(Duration::from_secs(5), Signal::Overload);
        }
        assert_eq!(g.current_limit(), 8);
    }
}
