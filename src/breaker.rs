//! Circuit breaker in front of the upstream.
//!
//! - **Closed**: everything passes. After `failures` consecutive failures, or (if
//!   `failure_ratio` is set) a failure ratio at or above it over a tumbling `window` with at least
//!   `min_requests` requests, the breaker opens.
//! - **Open**: [`Breaker::allow`] answers at once with [`Open`] and a `retry_after` until
//!   `open_for` has passed.
//! - **HalfOpen**: up to `probes` requests are let through. When `probes` of them succeed the
//!   breaker closes; any probe failure re-opens it for twice the previous open time (capped at
//!   `max_open_for`). A probe that never reports (its request was cancelled) does not wedge the
//!   breaker: after another `open_for` without a verdict a new round of probes is let through.
//!
//! The fast path (`allow` while closed, `record` of a success while closed) is a couple of atomic
//! loads; transitions take a small mutex. Time is passed in (`now`), never read.
//!
//! Failures to record: connect errors, timeouts and 5xx answers that mean overload (502/503/504).
//! Each [`Permission`] carries the breaker's generation: outcomes of requests let through before a
//! transition are ignored after it (a late failure cannot re-open a freshly closed breaker, a late
//! success of a pre-open request cannot close it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::util::duration::serde_str as duration_str;
use crate::util::field_error::FieldError;

/// `[upstream_guard.breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    pub failures: u32,
    /// How long the breaker stays open before probing (default "5s").
    #[serde(with = "duration_str")]
    pub open_for: Duration,
    /// Probes let through when half-open; this many successes close it (default 1).
    pub probes: u32,
    /// Cap for the doubling open time after failed probes (default "60s").
    #[serde(with = "duration_str")]
    pub max_open_for: Duration,
    /// Optional: open when the failure ratio over `window` reaches this (0 < r <= 1). Absent: off.
    pub failure_ratio: Option<f64>,
    /// Window for `failure_ratio` (default "10s").
    #[serde(with = "duration_str")]
    pub window: Duration,
    /// Minimum requests in the window before `failure_ratio` applies (default 20).
    pub min_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(5),
            probes: 1,
            max_open_for: Duration::from_secs(60),
            failure_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 20,
        }
    }
}

impl BreakerConfig {
    /// Checks ranges; keys are relative to `[upstream_guard.breaker]`.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.failures == 0 {
            errs.push(FieldError::new("failures", "must be at least 1"));
        }
        if self.open_for < Duration::from_millis(1) {
            errs.push(FieldError::new("open_for", "must be at least 1ms"));
        }
        if self.probes == 0 {
            errs.push(FieldError::new("probes", "must be at least 1"));
        }
        if self.max_open_for < self.open_for {
            errs.push(FieldError::new("max_open_for", "must be at least open_for"));
        }
        if let Some(r) = self.failure_ratio {
            if !(r > 0.0 && r <= 1.0) {
                errs.push(FieldError::new(
                    "failure_ratio",
                    "must be above 0 and at most 1",
                ));
            }
            if self.window.is_zero() {
                errs.push(FieldError::new("window", "must be positive"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests pass.
    Closed,
    /// Requests are refused at once.
    Open,
    /// A few probes pass.
    HalfOpen,
}

impl BreakerState {
    /// Metric value/label: closed 0, open 1, half_open 2.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn code(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_code(c: u64) -> Self {
        match c & 3 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// Refusal: the breaker is open. Answer 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream circuit open, retry after {retry_after:?}")]
pub struct Open {
    /// Time until the breaker will let a probe through.
    pub retry_after: Duration,
}

impl Open {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        crate::util::duration::ceil_secs(self.retry_after).max(1)
    }
}

/// Permission to send one request; hand it back to [`Breaker::record`] with the outcome.
/// Dropping it without recording is fine (a probe slot frees itself after `open_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "record the outcome with Breaker::record"]
pub struct Permission {
    generation: u64,
    probe: bool,
}

impl Permission {
    /// True if this request is a half-open probe.
    #[cfg(test)]
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    base: Instant,
    /// `generation << 2 | state code`.
    sg: AtomicU64,
    consecutive: AtomicU32,
    open_until_ms: AtomicU64,
    open_ms: AtomicU64,
    probes_issued: AtomicU32,
    probes_ok: AtomicU32,
    half_open_since_ms: AtomicU64,
    window_start_ms: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
    transition: Mutex<()>,
}

impl Breaker {
    /// A closed breaker. `now` is the reference point for its internal millisecond clock.
    pub fn new(cfg: &BreakerConfig, now: Instant) -> Self {
        Breaker {
            cfg: cfg.clone(),
            base: now,
            sg: AtomicU64::new(BreakerState::Closed.code()),
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            open_ms: AtomicU64::new(ms(cfg.open_for)),
            probes_issued: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            half_open_since_ms: AtomicU64::new(0),
            window_start_ms: AtomicU64::new(0),
            window_total: AtomicU32::new(0),
            window_failed: AtomicU32::new(0),
            transition: Mutex::new(()),
        }
    }

    fn at(&self, now: Instant) -> u64 {
        ms(now.saturating_duration_since(self.base))
    }

    fn load(&self) -> (u64, BreakerState) {
        let v = self.sg.load(Ordering::Acquire);
        (v >> 2, BreakerState::from_code(v))
    }

    /// The current state (an expired Open turns HalfOpen at the next `allow`).
    pub fn state(&self) -> BreakerState {
        self.load().1
    }

    /// May a request go to the upstream now?
    pub fn allow(&self, now: Instant) -> Result<Permission, Open> {
        let (generation, state) = self.load();
        match state {
            BreakerState::Closed => Ok(Permission {
                generation,
                probe: false,
            }),
            BreakerState::Open => {
                let t = self.at(now);
                let until = self.open_until_ms.load(Ordering::Acquire);
                if t < until {
                    return Err(Open {
                        retry_after: Duration::from_millis(until - t),
                    });
                }
                {
                    let _g = self.lock();
                    if self.load() == (generation, BreakerState::Open) {
                        self.probes_issued.store(0, Ordering::Relaxed);
                        self.probes_ok.store(0, Ordering::Relaxed);
                        self.half_open_since_ms.store(t, Ordering::Relaxed);
                        self.set(generation + 1, BreakerState::HalfOpen);
                    }
                }
                self.allow(now)
            }
            BreakerState::HalfOpen => {
                let t = self.at(now);
                if self.probes_issued.fetch_add(1, Ordering::AcqRel) < self.cfg.probes {
                    return Ok(Permission {
                        generation,
                        probe: true,
                    });
                }
                self.probes_issued.fetch_sub(1, Ordering::AcqRel);
                // All probes out. If none reported for `open_for`, start a new round.
                let since = self.half_open_since_ms.load(Ordering::Relaxed);
                let stale_at = since.saturating_add(ms(self.cfg.open_for));
                if t >= stale_at {
                    let _g = self.lock();
                    if self.load() == (generation, BreakerState::HalfOpen) {
                        self.probes_issued.store(0, Ordering::Relaxed);
                        self.probes_ok.store(0, Ordering::Relaxed);
                        self.half_open_since_ms.store(t, Ordering::Relaxed);
                        self.set(generation + 1, BreakerState::HalfOpen);
                    }
                    drop(_g);
                    return self.allow(now);
                }
                Err(Open {
                    retry_after: Duration::from_millis(stale_at - t),
                })
            }
        }
    }

    /// Reports the outcome of a request let through by `ticket`.
    pub fn record(&self, ticket: Permission, success: bool, now: Instant) {
        let (generation, state) = self.load();
        if ticket.generation != generation {
            return; // from before the last transition
        }
        match state {
            BreakerState::Open => {}
            BreakerState::Closed => {
                if success {
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                } else if self.consecutive.fetch_add(1, Ordering::AcqRel) + 1 >= self.cfg.failures {
                    self.trip(generation, now);
                    return;
                }
                if let Some(ratio) = self.cfg.failure_ratio {
                    self.count_window(generation, success, ratio, now);
                }
            }
            BreakerState::HalfOpen => {
                if !ticket.probe {
                    return;
                }
                if !success {
                    self.trip(generation, now);
                } else if self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1 >= self.cfg.probes {
                    let _g = self.lock();
                    if self.load() == (generation, BreakerState::HalfOpen) {
                        self.consecutive.store(0, Ordering::Relaxed);
                        self.reset_window(self.at(now));
                        self.open_ms.store(ms(self.cfg.open_for), Ordering::Relaxed);
                        self.set(generation + 1, BreakerState::Closed);
                        tracing::info!("upstream circuit breaker closed");
                    }
                }
            }
        }
    }

    fn count_window(&self, generation: u64, success: bool, ratio: f64, now: Instant) {
        let t = self.at(now);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if t.saturating_sub(start) >= ms(self.cfg.window) {
            self.reset_window(t);
        }
        let total = self.window_total.fetch_add(1, Ordering::AcqRel) + 1;
        let failed = if success {
            self.window_failed.load(Ordering::Acquire)
        } else {
            self.window_failed.fetch_add(1, Ordering::AcqRel) + 1
        };
        if total >= self.cfg.min_requests && f64::from(failed) >= ratio * f64::from(total) {
            self.trip(generation, now);
        }
    }

    fn reset_window(&self, t: u64) {
        self.window_start_ms.store(t, Ordering::Relaxed);
        self.window_total.store(0, Ordering::Relaxed);
        self.window_failed.store(0, Ordering::Relaxed);
    }

    /// Closed or HalfOpen → Open. From HalfOpen the open time doubles (capped).
    fn trip(&self, generation: u64, now: Instant) {
        let _g = self.lock();
        let (g, state) = self.load();
        if g != generation || state == BreakerState::Open {
            return;
        }
        let open = if state == BreakerState::HalfOpen {
            let doubled = self.open_ms.load(Ordering::Relaxed).saturating_mul(2);
            doubled.min(ms(self.cfg.max_open_for))
        } else {
            ms(self.cfg.open_for)
        };
        self.open_ms.store(open, Ordering::Relaxed);
        self.open_until_ms
            .store(self.at(now).saturating_add(open), Ordering::Release);
        self.consecutive.store(0, Ordering::Relaxed);
        self.set(generation + 1, BreakerState::Open);
        tracing::warn!(
            open_ms = open,
            from = state.as_str(),
            "upstream circuit breaker opened"
        );
    }

    fn set(&self, generation: u64, state: BreakerState) {
        self.sg
            .store(generation << 2 | state.code(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transition.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(src: &str) -> BreakerConfig {
        let c: BreakerConfig = toml::from_str(src).unwrap();
        c.validate().unwrap();
        c
    }

    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn fail(b: &Breaker, now: Instant) {
        let t = b.allow(now).unwrap();
        b.record(t, false, now);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: BreakerConfig = toml::from_str("").unwrap();
        assert_eq!((c.failures, c.probes), (5, 1));
        assert_eq!(c.open_for, Duration::from_secs(5));
        assert_eq!(c.failure_ratio, None);
        let c: BreakerConfig = toml::from_str(
            "failures = 0\nopen_for = \"10s\"\nmax_open_for = \"1s\"\nfailure_ratio = 1.5",
        )
        .unwrap();
        let keys: Vec<_> = c
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["failures", "max_open_for", "failure_ratio"]);
    }

    #[test]
    fn opens_after_consecutive_failures_and_answers_at_once() {
        let c = Clock(Instant::now());
        let b = Breaker::new(&cfg("failures = 3\nopen_for = \"5s\""), c.at(0));
        fail(&b, c.at(0));
        fail(&b, c.at(1));
        // A success resets the streak.
        let t = b.allow(c.at(2)).unwrap();
        b.record(t, true, c.at(2));
        fail(&b, c.at(3));
        fail(&b, c.at(4));
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, c.at(5));
        assert_eq!(b.state(), BreakerState::Open);
        let open = b.allow(c.at(1005)).unwrap_err();
        assert_eq!(open.retry_after, Duration::from_millis(4000));
        assert_eq!(open.retry_after_secs(), 4);
        let open = b.allow(c.at(4904)).unwrap_err();
        assert_eq!(open.retry_after_secs(), 1);
    }

    #[test]
    fn half_open_probe_success_closes() {
        let c = Clock(Instant::now());
        let b = Breaker::new(&cfg("failures = 1\nopen_for = \"5s\""), c.at(0));
        fail(&b, c.at(0));
        assert!(b.allow(c.at(4999)).is_err());
        let probe = b.allow(c.at(5000)).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert!(b.allow(c.at(5001)).is_err());
        b.record(probe, true, c.at(5100));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.allow(c.at(5101)).unwrap().is_probe());
    }

    #[test]
    fn half_open_probe_failure_reopens_with_backoff() {
        let c = Clock(Instant::now());
        let b = Breaker::new(
            &cfg("failures = 1\nopen_for = \"5s\"\nmax_open_for = \"12s\""),
            c.at(0),
        );
        fail(&b, c.at(0));
        let probe = b.allow(c.at(5000)).unwrap();
        b.record(probe, false, c.at(5000));
        assert_eq!(b.state(), BreakerState::Open);
        // 10 s this time, then capped at 12 s.
        assert_eq!(
            b.allow(c.at(5000)).unwrap_err().retry_after,
            Duration::from_secs(10)
        );
        let probe = b.allow(c.at(15_000)).unwrap();
        b.record(probe, false, c.at(15_000));
        assert_eq!(
            b.allow(c.at(15_000)).unwrap_err().retry_after,
            Duration::from_secs(12)
        );
        // Recovery resets the open time.
        let probe = b.allow(c.at(27_000)).unwrap();
        b.record(probe, true, c.at(27_000));
        fail(&b, c.at(28_000));
        assert_eq!(
            b.allow(c.at(28_000)).unwrap_err().retry_after,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn several_probes_must_all_succeed() {
        let c = Clock(Instant::now());
        let b = Breaker::new(&cfg("failures = 1\nprobes = 2"), c.at(0));
        fail(&b, c.at(0));
        let p1 = b.allow(c.at(5000)).unwrap();
        let p2 = b.allow(c.at(5000)).unwrap();
        assert!(b.allow(c.at(5000)).is_err());
        b.record(p1, true, c.at(5001));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(p2, true, c.at(5002));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn stale_tickets_are_ignored() {
        let c = Clock(Instant::now());
        let b = Breaker::new(&cfg("failures = 2"), c.at(0));
        let early = b.allow(c.at(0)).unwrap();
        let early2 = b.allow(c.at(0)).unwrap();
        fail(&b, c.at(1));
        fail(&b, c.at(2));
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.allow(c.at(5002)).unwrap();
        // A request let through before the breaker opened cannot close it.
        b.record(early, true, c.at(5003));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(probe, true, c.at(5004));
        assert_eq!(b.state(), BreakerState::Closed);
        // ...nor count towards opening it again.
        b.record(early2, false, c.at(5005));
        fail(&b, c.at(5006));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn abandoned_probe_does_not_wedge() {
        let c = Clock(Instant::now());
        let b = Breaker::new(&cfg("failures = 1\nopen_for = \"5s\""), c.at(0));
        fail(&b, c.at(0));
        let _lost = b.allow(c.at(5000)).unwrap();
        let open = b.allow(c.at(6000)).unwrap_err();
        assert_eq!(open.retry_after, Duration::from_secs(4));
        let probe = b.allow(c.at(10_000)).unwrap();
        assert!(probe.is_probe());
        b.record(probe, true, c.at(10_001));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failure_ratio_over_window() {
        let c = Clock(Instant::now());
        let b = Breaker::new(
            &cfg("failures = 100\nfailure_ratio = 0.5\nwindow = \"10s\"\nmin_requests = 10"),
            c.at(0),
        );
        // 30% failures, spread out: stays closed.
        for i in 0..50u64 {
            let t = b.allow(c.at(i)).unwrap();
            b.record(t, ![0, 4, 7].contains(&(i % 10)), c.at(i));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // New window, 50% failures: opens once min_requests is reached.
        for i in 0..10u64 {
            let now = c.at(20_000 + i);
            let t = b.allow(now).unwrap();
            b.record(t, i % 2 == 0, now);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
