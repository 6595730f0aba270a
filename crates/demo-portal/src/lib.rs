//! A small fake national social-security portal ("INPS-like"), used as the
//! upstream in demos (`anticamera demo`), black-box tests and load tests (`surge`). It uses no
//! anticamera code: it stands for the portal anticamera protects.
//!
//! It is a hyper 1.x HTTP/1.1 server (keep-alive on) with public pages, a login
//! that creates sessions (cookie or `Authorization: Bearer`), a personal
//! account page, a claim form, and test plumbing (`/echo`, `/download`,
//! `/upload`, `GET /__portal/stats`, `POST /__portal/reset`, `POST /__portal/sample` (stats and
//! a new peak window), `POST /__portal/slowdown?factor=F` (the whole portal F times slower, as
//! when its database struggles; 1 = normal)).
//!
//! Behind `anticamera demo` it also sends simulated people through anticamera, so a newcomer's
//! browser meets the waiting room ([`Crowd`], `crowd.rs`): the home page's button
//! (`POST /__portal/crowd`) starts a wave, `GET /__portal/crowd` says what the crowd is doing.
//!
//! # Load model
//!
//! The portal behaves like a real overloaded backend. Every request to a
//! "portal" route (everything except `/__portal/*`, `/echo`, `/download` and
//! `/upload`) is counted in `in_flight` by an RAII guard for its whole
//! handling. With `n` = in-flight requests including this one and
//! `C` = capacity ([`load_plan`] is the pure function):
//!
//! | band             | behaviour                                                                  |
//! |------------------|----------------------------------------------------------------------------|
//! | `n <= C`         | answers after `base_latency` (±[`JITTER`])                                 |
//! | `C < n <= 2C`    | latency `base * OVERLOAD_LATENCY_FACTOR * (n/C)^2` (2x..8x base)           |
//! | `2C < n <= 3C`   | same latency, then fails (503 or 500) with probability `ERROR_MAX * (n-2C)/C` |
//! | `n > 3C`         | hangs for `hang_duration` (30 s) and then answers 504 (`timeouts_started`) |
//!
//! The band boundaries are [`ERROR_BAND_START`] and [`HANG_BAND_START`] (in units of C).
//!
//! # Fault mode (1 April 2020)
//!
//! With `fault_mode`, when `n > C` the account pages (`/account`,
//! `/api/account`) are served from a shared "cache" holding the most recently
//! rendered personal response of *any* user, with `user_header` naming the
//! owner of the data (this is what anticamera's leak guard checks). Each such
//! response to a different user counts in `leaks_served`. Below capacity the
//! page is rendered correctly and refreshes the cache.
//!
//! Sessions live in a `Mutex<HashMap>` and are never expired: fine for a demo.
//!
//! This file holds the settings, the load model, the counters and the fake identities; the
//! server and its routes are in `server.rs`.
#![forbid(unsafe_code)]

mod crowd;
mod server;
#[cfg(test)]
mod tests;

pub use crowd::{Crowd, CrowdError, CrowdStatus, Wave, PERSON_DEADLINE};
pub use server::{spawn, PortalHandle};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Latency multiplier at `n = C + ε` (the overload band starts at 2x base).
pub const OVERLOAD_LATENCY_FACTOR: f64 = 2.0;
/// Relative jitter applied to every latency (±10%).
pub const JITTER: f64 = 0.10;
/// Errors start above `ERROR_BAND_START * C` in-flight requests.
pub const ERROR_BAND_START: usize = 2;
/// Requests hang above `HANG_BAND_START * C` in-flight requests.
pub const HANG_BAND_START: usize = 3;
/// Error probability reached at `n = HANG_BAND_START * C`.
pub const ERROR_MAX: f64 = 0.70;
/// Chunk size of `/download` bodies.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// Largest accepted `/download?bytes=N`.
pub const MAX_DOWNLOAD: u64 = 64 << 30;

/// Settings of the demo portal (`[demo.portal]`-style section if ever loaded from TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// Requests the portal serves at nominal latency (C in the load model).
    pub capacity: usize,
    /// Nominal latency of a portal page.
    #[serde(deserialize_with = "anticamera_util::duration::serde_str::deserialize")]
    pub base_latency: Duration,
    /// How long a collapsed portal (n > 3C) hangs before answering 504.
    #[serde(deserialize_with = "anticamera_util::duration::serde_str::deserialize")]
    pub hang_duration: Duration,
    /// Reproduce the 1 April 2020 cross-user cache leak under load.
    pub fault_mode: bool,
    /// Name of the session cookie.
    pub session_cookie: String,
    /// Response header naming the user a personal response belongs to.
    pub user_header: String,
    /// Response header (value `1`) telling the proxy the user is done (claim confirmed).
    /// Empty: the portal never sends one (a portal nobody changed for a waiting room).
    pub release_header: String,
    /// anticamera's listen address in front of this portal (set by `anticamera demo`): where
    /// the home page's button sends its simulated people (`POST /__portal/crowd`). Loopback
    /// only. `None` (the portal alone): the button explains it needs `anticamera demo`.
    pub anticamera: Option<std::net::SocketAddr>,
    /// People one press of the crowd button sends.
    pub crowd_people: usize,
    /// Over how long they arrive.
    #[serde(deserialize_with = "anticamera_util::duration::serde_str::deserialize")]
    pub crowd_over: Duration,
    /// How long a simulated person looks at a page before the next (±50%).
    #[serde(deserialize_with = "anticamera_util::duration::serde_str::deserialize")]
    pub crowd_think: Duration,
    /// Most simulated people in the demo at once, whatever the presses.
    pub crowd_max: usize,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            capacity: 50,
            base_latency: Duration::from_millis(20),
            hang_duration: Duration::from_secs(30),
            fault_mode: false,
            session_cookie: "portal_session".into(),
            user_header: "x-portal-user".into(),
            release_header: "x-anticamera-release".into(),
            anticamera: None,
            crowd_people: 300,
            crowd_over: Duration::from_secs(10),
            crowd_think: Duration::from_millis(1500),
            crowd_max: 2000,
        }
    }
}

/// A configuration problem: key path relative to the portal section and a reason.
pub use anticamera_util::field_error::FieldError;

impl PortalConfig {
    /// Checks the values [`spawn`] relies on.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |key: &str, reason: &str| {
            errs.push(FieldError {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.capacity == 0 {
            err("capacity", "must be at least 1");
        }
        if self.anticamera.is_some_and(|a| !a.ip().is_loopback()) {
            err(
                "anticamera",
                "the crowd only goes to a loopback address (the demo's own)",
            );
        }
        if self.crowd_max == 0 {
            err("crowd_max", "must be at least 1");
        }
        for (key, v) in [
            ("user_header", &self.user_header),
            ("release_header", &self.release_header),
        ] {
            if key == "release_header" && v.is_empty() {
                continue;
            }
            if HeaderName::from_bytes(v.as_bytes()).is_err() {
                err(key, "not a valid HTTP header name");
            }
        }
        if self.session_cookie.is_empty() || !self.session_cookie.bytes().all(is_name_char) {
            err(
                "session_cookie",
                "must be a non-empty token of [A-Za-z0-9._-]",
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// What the load model says to do with a request (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPlan {
    /// Latency before answering (before jitter).
    pub latency: Duration,
    /// Probability of failing with 503/500 after the latency.
    pub error_probability: f64,
    /// Collapsed: hang for `hang_duration`, then 504.
    pub hang: bool,
}

/// The load model: plan for a request that sees `n` in-flight requests (itself
/// included) on a portal of capacity `capacity`.
pub fn load_plan(n: usize, capacity: usize, base: Duration) -> LoadPlan {
    let c = capacity.max(1);
    if n > HANG_BAND_START * c {
        return LoadPlan {
            latency: Duration::ZERO,
            error_probability: 1.0,
            hang: true,
        };
    }
    if n <= c {
        return LoadPlan {
            latency: base,
            error_probability: 0.0,
            hang: false,
        };
    }
    let ratio = n as f64 / c as f64;
    let latency = base.mul_f64(OVERLOAD_LATENCY_FACTOR * ratio * ratio);
    let error_probability = if n > ERROR_BAND_START * c {
        ERROR_MAX * (n - ERROR_BAND_START * c) as f64 / c as f64
    } else {
        0.0
    };
    LoadPlan {
        latency,
        error_probability: error_probability.min(ERROR_MAX),
        hang: false,
    }
}

/// Atomic counters of the portal, shared with the handle.
#[derive(Debug)]
pub struct PortalStats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    window_peak_in_flight: AtomicUsize,
    /// Latency multiplier in percent (100 = normal), set by `POST /__portal/slowdown`.
    slowdown_pct: AtomicU64,
    requests_total: AtomicU64,
    responses_2xx: AtomicU64,
    responses_3xx: AtomicU64,
    responses_4xx: AtomicU64,
    responses_5xx: AtomicU64,
    timeouts_started: AtomicU64,
    errors_injected: AtomicU64,
    work_us: AtomicU64,
    busy_us: AtomicU64,
    leaks_served: AtomicU64,
    claims_submitted: AtomicU64,
}

/// Point-in-time copy of [`PortalStats`], served as JSON by `/__portal/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Portal-route requests being handled now.
    pub in_flight: usize,
    /// Highest `in_flight` seen since start or the last reset.
    pub peak_in_flight: usize,
    /// Highest `in_flight` seen since the last `POST /__portal/sample` (a load tool's
    /// per-interval peak).
    pub window_peak_in_flight: usize,
    /// The portal's latency in percent of normal (100 = normal; `POST /__portal/slowdown`).
    pub slowdown_pct: u64,
    /// Requests received (all routes except `/__portal/*`).
    pub requests_total: u64,
    /// Responses with a 2xx status.
    pub responses_2xx: u64,
    /// Responses with a 3xx status.
    pub responses_3xx: u64,
    /// Responses with a 4xx status.
    pub responses_4xx: u64,
    /// Responses with a 5xx status.
    pub responses_5xx: u64,
    /// Requests the collapsed portal started to hang.
    pub timeouts_started: u64,
    /// 503/500 answers injected by the load model.
    pub errors_injected: u64,
    /// Useful work done, in microseconds: the time spent on every request answered without a
    /// 5xx, counting a request that came in above capacity only for its normal-load latency
    /// (base latency, slowdown and jitter; the overload's extra is waste). Its growth over an
    /// interval, divided by the interval and the capacity, is how much of the portal's
    /// capacity served users (a load tool's goodput).
    #[serde(default)]
    pub work_us: u64,
    /// Time requests spent in the portal, in microseconds, summed over every request (its
    /// in-flight count integrated over time). Above `work_us` when requests took longer than
    /// their normal latency: overload, or a machine too busy to wake the portal on time.
    #[serde(default)]
    pub busy_us: u64,
    /// Personal pages served to a user other than their owner (fault mode).
    pub leaks_served: u64,
    /// Claims recorded by `POST /claim`.
    pub claims_submitted: u64,
}

impl Default for PortalStats {
    fn default() -> Self {
        Self::new()
    }
}

impl PortalStats {
    /// Zeroed counters, normal latency.
    pub fn new() -> Self {
        PortalStats {
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            window_peak_in_flight: AtomicUsize::new(0),
            slowdown_pct: AtomicU64::new(100),
            requests_total: AtomicU64::new(0),
            responses_2xx: AtomicU64::new(0),
            responses_3xx: AtomicU64::new(0),
            responses_4xx: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            timeouts_started: AtomicU64::new(0),
            errors_injected: AtomicU64::new(0),
            work_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            leaks_served: AtomicU64::new(0),
            claims_submitted: AtomicU64::new(0),
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            window_peak_in_flight: self.window_peak_in_flight.load(Relaxed),
            slowdown_pct: self.slowdown_pct.load(Relaxed),
            requests_total: self.requests_total.load(Relaxed),
            responses_2xx: self.responses_2xx.load(Relaxed),
            responses_3xx: self.responses_3xx.load(Relaxed),
            responses_4xx: self.responses_4xx.load(Relaxed),
            responses_5xx: self.responses_5xx.load(Relaxed),
            timeouts_started: self.timeouts_started.load(Relaxed),
            errors_injected: self.errors_injected.load(Relaxed),
            work_us: self.work_us.load(Relaxed),
            busy_us: self.busy_us.load(Relaxed),
            leaks_served: self.leaks_served.load(Relaxed),
            claims_submitted: self.claims_submitted.load(Relaxed),
        }
    }

    /// Copies the counters and starts a new peak window (`window_peak_in_flight`).
    pub fn sample(&self) -> StatsSnapshot {
        let mut s = self.snapshot();
        s.window_peak_in_flight = self
            .window_peak_in_flight
            .swap(self.in_flight.load(Relaxed), Relaxed)
            .max(s.in_flight);
        s
    }

    /// The latency multiplier.
    fn slowdown(&self) -> f64 {
        self.slowdown_pct.load(Relaxed) as f64 / 100.0
    }

    /// Zeroes the counters, sets the peaks to the current in-flight count and the latency back
    /// to normal.
    pub fn reset(&self) {
        self.peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.window_peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.slowdown_pct.store(100, Relaxed);
        for c in [
            &self.requests_total,
            &self.responses_2xx,
            &self.responses_3xx,
            &self.responses_4xx,
            &self.responses_5xx,
            &self.timeouts_started,
            &self.errors_injected,
            &self.work_us,
            &self.busy_us,
            &self.leaks_served,
            &self.claims_submitted,
        ] {
            c.store(0, Relaxed);
        }
    }

    fn count_status(&self, s: StatusCode) {
        let c = match s.as_u16() {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            500..=599 => &self.responses_5xx,
            _ => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// RAII in-flight counter for portal routes.
struct InFlight<'a>(&'a PortalStats, std::time::Instant);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a PortalStats) -> (Self, usize) {
        let n = stats.in_flight.fetch_add(1, Relaxed) + 1;
        stats.peak_in_flight.fetch_max(n, Relaxed);
        stats.window_peak_in_flight.fetch_max(n, Relaxed);
        (Self(stats, std::time::Instant::now()), n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0
            .busy_us
            .fetch_add(self.1.elapsed().as_micros() as u64, Relaxed);
    }
}

/// Fake but deterministic personal data of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeIdentity {
    /// 16-character fiscal code (municipality `Z999`: does not exist).
    pub fiscal_code: String,
    /// Italian IBAN with a valid check, on the non-existent bank ABI `99999`.
    pub iban: String,
}

/// Derives the fake fiscal code and IBAN of `user` (what `/account` shows).
pub fn fake_identity(user: &str) -> FakeIdentity {
    let h = Sha256::digest(format!("anticamera-demo:{user}").as_bytes());
    let letter = |b: u8| char::from(b'A' + b % 26);
    let mut fc: String = h[..6].iter().map(|&b| letter(b)).collect();
    let day = 1 + h[8] % 28 + if h[9] % 2 == 1 { 40 } else { 0 };
    let month = char::from(b"ABCDEHLMPRST"[usize::from(h[7] % 12)]);
    fc.push_str(&format!(
        "{:02}{month}{day:02}Z999{}",
        h[6] % 100,
        letter(h[10])
    ));
    let num = |bytes: &[u8], digits: usize| -> String {
        let v = bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        format!("{:0digits$}", v % 10u64.pow(digits as u32))
    };
    let bban = format!(
        "{}99999{}{}",
        letter(h[11]),
        num(&h[12..16], 5),
        num(&h[16..24], 12)
    );
    // ISO 13616 check digits: move "IT00" to the end, letters -> 10..35, mod 97.
    let rem = format!("{bban}IT00")
        .chars()
        .fold(0u32, |acc, ch| match ch.to_digit(36) {
            Some(d) if d >= 10 => (acc * 100 + d) % 97,
            Some(d) => (acc * 10 + d) % 97,
            None => acc,
        });
    FakeIdentity {
        fiscal_code: fc,
        iban: format!("IT{:02}{bban}", 98 - rem),
    }
}

pub(crate) fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}
