//! Opening hours per gate and cohort.
//!
//! After the 1 April 2020 crash INPS split access into bands: 08:00–16:00 only intermediaries
//! (patronati, CAF, professionals), 16:00–08:00 only citizens. A gate with a [`Schedule`] admits a
//! cohort only inside that cohort's *windows*; a gate without one is always open.
//!
//! # Model
//!
//! * A **window** is a local-time interval `start`–`end` on some weekdays, for some cohorts.
//!   `end < start` crosses midnight, and the window **belongs to the day it starts**:
//!   `16:00–08:00` on `mon-fri` is open Mon 16:00 → Tue 08:00, …, Fri 16:00 → Sat 08:00 (and not
//!   Sun 16:00 → Mon 08:00). `end = "24:00"` means the following midnight. Windows of the same
//!   cohort that overlap or touch merge into one open period (`closes_at` is the end of the
//!   merged period).
//! * An **exception** covers a date or an inclusive `from`–`to` range. It applies to the windows
//!   that **start** on those dates: `closed = true` removes them (for the listed cohorts,
//!   default all), `windows = [...]` replaces them for the cohorts those special windows name.
//!   Consequently an overnight window starting the evening before a holiday runs to its normal
//!   end (Dec 24 16:00 → Dec 25 08:00) and the holiday's own windows are gone. Cohorts not
//!   named by an exception keep their regular windows.
//! * A **calendar** (`calendar = "it"`, defined once in `[calendars.it]`, see `calendar.rs`)
//!   is a set of holidays: on a holiday the regular windows that start that day are gone for
//!   every cohort, exactly as with a `closed = true` exception (the overnight band of the eve
//!   runs to its end). The gate's own exceptions still apply first: a special opening on a
//!   holiday opens, a closed exception closes.
//! * **grace**: a visitor admitted while open keeps the pass this long after the window closes
//!   ([`Schedule::in_grace`]). **prequeue**: the queue opens this long before a window
//!   ([`WindowState::PreQueue`]); `prequeue_order` says how those waiting are ordered when it
//!   opens ([`keyed_permutation`] for `random`).
//!
//! # Daylight-saving time (chosen behaviour)
//!
//! Windows are written in local wall-clock time of `time_zone` and converted per day:
//!
//! * **Spring forward** (Europe/Rome, last Sunday of March, 02:00 → 03:00, the hour 02:xx does not
//!   exist): a `start` or `end` that falls in the gap is moved to the **first valid instant after
//!   the gap**, i.e. the transition itself (03:00 CEST = 01:00 UTC). A window starting at 02:30
//!   opens at 03:00 CEST; a window ending at 02:30 closes at 03:00 CEST (it stays open until the
//!   wall clock shows a time at or after its end). A window lying entirely inside the gap
//!   (02:10–02:40) does not happen that night.
//! * **Fall back** (last Sunday of October, 03:00 → 02:00, the hour 02:xx happens twice): a
//!   `start` in the repeated hour uses the **earlier** of the two instants and an `end` uses the
//!   **later** one. The window is never shortened: we err on the side of keeping the service
//!   open. 02:15–02:45 that night is open from 02:15 CEST to 02:45 CET (1 h 30 min).
//! * All other times are unambiguous. The real length of a window across a transition follows
//!   the wall clock (22:00–06:00 lasts 7 h in March and 9 h in October).
//!
//! All queries take `now` as a parameter; nothing reads the clock. Searches (next opening,
//! merged close) iterate **days**, not minutes, up to [`SEARCH_HORIZON_DAYS`] days ahead.
//!
//! This module owns the model and the queries (state, next opening, grace); `compile.rs` turns
//! the configuration into a [`Schedule`], `report.rs` renders the `schedule` report,
//! `shuffle.rs` draws the pre-queue order.

#![warn(missing_docs)]

mod calendar;
mod compile;
mod ics;
mod report;
mod shuffle;

pub use calendar::{
    easter_sunday, Calendar, CalendarConfig, Calendars, HolidayConfig, HolidayDate, HolidayWhen,
    MAX_EASTER_OFFSET,
};
pub(crate) use ics::parse as parse_ics;
pub use report::{format_local, report, report_in, Lang};
pub use shuffle::{keyed_permutation, keyed_permutation_inverse, KeyedPermutation};

use chrono::Offset;
use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};
use serde::Deserialize;

use crate::cohort::CohortId;

/// How far [`Schedule::next_opening`] and [`Schedule::state`] look ahead.
pub const SEARCH_HORIZON_DAYS: i64 = 400;

/// Longest accepted `grace` and `prequeue`.
const MAX_GRACE_OR_PREQUEUE: TimeDelta = TimeDelta::hours(24);

fn default_time_zone() -> String {
    "Europe/Rome".to_owned()
}

fn default_grace() -> String {
    "30m".to_owned()
}

fn default_prequeue() -> String {
    "0s".to_owned()
}

/// `[gates.schedule]`: opening hours of one gate. An absent schedule means always open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// IANA zone of the window times (default `"Europe/Rome"`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// How long admitted visitors keep their pass after a window closes (default `"30m"`,
    /// at most 24h).
    #[serde(default = "default_grace")]
    pub grace: String,
    /// How long before a window the queue opens (default `"0s"`: no pre-queue; at most 24h).
    #[serde(default = "default_prequeue")]
    pub prequeue: String,
    /// Order of pre-queue visitors when the window opens (default `random`).
    #[serde(default)]
    pub prequeue_order: PrequeueOrder,
    /// Weekly windows.
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    /// Dated exceptions (holidays, special openings).
    #[serde(default)]
    pub exceptions: Vec<ExceptionConfig>,
    /// Name of a calendar of `[calendars]` whose holidays close this gate.
    #[serde(default)]
    pub calendar: Option<String>,
}

/// Order of those who waited in the pre-queue when the window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrequeueOrder {
    /// Shuffled with [`keyed_permutation`]: arriving first in the pre-queue gives no advantage.
    #[default]
    Random,
    /// First come, first served.
    Arrival,
}

impl PrequeueOrder {
    /// The configuration spelling: `"random"` or `"arrival"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrequeueOrder::Random => "random",
            PrequeueOrder::Arrival => "arrival",
        }
    }
}

/// `[[gates.schedule.windows]]`: a weekly window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Cohorts admitted in this window (default: every cohort).
    #[serde(default)]
    pub cohorts: Option<Vec<String>>,
    /// Days the window *starts* on: `mon`…`sun` (or full English names), ranges `mon-fri`,
    /// wrapping ranges `fri-mon` (default: every day).
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local start time `HH:MM` (24-hour).
    pub start: String,
    /// Local end time `HH:MM`; `24:00` = midnight at the end of the day; earlier than `start` =
    /// the next day.
    pub end: String,
}

/// `[[gates.schedule.exceptions]]`: a date (or range) that is closed or has special windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// A single date `YYYY-MM-DD` (exclusive with `from`/`to`).
    #[serde(default)]
    pub date: Option<String>,
    /// First date of an inclusive range.
    #[serde(default)]
    pub from: Option<String>,
    /// Last date of an inclusive range.
    #[serde(default)]
    pub to: Option<String>,
    /// Closed for `cohorts` on these dates (exclusive with `windows`).
    #[serde(default)]
    pub closed: bool,
    /// Cohorts this exception applies to (default: every cohort); also the default of each
    /// special window's `cohorts`.
    #[serde(default)]
    pub cohorts: Option<Vec<String>>,
    /// Special windows replacing the regular ones on these dates, for the cohorts they name.
    #[serde(default)]
    pub windows: Vec<SpecialWindowConfig>,
}

/// A window of an exception (no `days`: it applies to the exception's dates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialWindowConfig {
    /// Cohorts admitted (default: the exception's `cohorts`, else every cohort).
    #[serde(default)]
    pub cohorts: Option<Vec<String>>,
    /// Local start time `HH:MM`.
    pub start: String,
    /// Local end time `HH:MM` (`24:00`, or earlier than `start` to cross midnight).
    pub end: String,
}

/// State of a cohort at a gate at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Admitting. `closes_at`: end of the current (merged) open period; `None` = not within the
    /// search horizon.
    Open {
        /// When the open period ends.
        closes_at: Option<DateTime<Utc>>,
    },
    /// Not admitting and the queue is closed. `opens_at`: next opening; `None` = never within
    /// the search horizon.
    Closed {
        /// When the next window opens.
        opens_at: Option<DateTime<Utc>>,
    },
    /// Not admitting yet, but within `prequeue` of the next opening: visitors may take a ticket.
    PreQueue {
        /// When the window opens.
        opens_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
struct Window {
    /// Bit 0 = Monday … bit 6 = Sunday.
    days: u8,
    /// Minutes after local midnight.
    start: u16,
    /// Minutes after local midnight, 1..=1440; `<= start` means the next day.
    end: u16,
    cohorts: u64,
}

#[derive(Debug, Clone)]
struct Exception {
    from: NaiveDate,
    to: NaiveDate,
    closed: bool,
    /// Cohorts closed (when `closed`).
    cohorts: u64,
    windows: Vec<Window>,
    /// Union of the special windows' cohorts.
    open_cohorts: u64,
}

impl Exception {
    fn covers(&self, d: NaiveDate) -> bool {
        self.from <= d && d <= self.to
    }
}

#[derive(Clone, Copy)]
enum Edge {
    Start,
    End,
}

/// Compiled opening hours of one gate. Cheap to query, immutable, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: Tz,
    grace: TimeDelta,
    prequeue: TimeDelta,
    prequeue_order: PrequeueOrder,
    windows: Vec<Window>,
    exceptions: Vec<Exception>,
    cohorts: Vec<String>,
    /// Cohorts that have at least one window somewhere (regular or special).
    ever_open: u64,
    /// Holidays: no regular window starts on them.
    calendar: Option<std::sync::Arc<Calendar>>,
}

/// Wall-clock time of `t` in `tz` (UTC wall time at the very ends of chrono's range, where the
/// local time is not representable).
pub(crate) fn local_naive(t: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    let utc = t.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
        .unwrap_or(utc)
}

/// `now` + [`SEARCH_HORIZON_DAYS`], saturating.
fn horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_add_signed(TimeDelta::days(SEARCH_HORIZON_DAYS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Schedule {
    /// Id of a cohort by name, in the list given to [`Schedule::compile`].
    pub fn cohort_id(&self, name: &str) -> Option<CohortId> {
        self.cohorts
            .iter()
            .position(|n| n == name)
            .and_then(CohortId::from_index)
    }

    /// The zone windows are written in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// How long admitted visitors keep their pass after a close.
    pub fn grace(&self) -> std::time::Duration {
        self.grace.to_std().unwrap_or_default()
    }

    /// How long before an opening the queue accepts visitors.
    pub fn prequeue(&self) -> std::time::Duration {
        self.prequeue.to_std().unwrap_or_default()
    }

    /// Order of pre-queue visitors at opening.
    pub fn prequeue_order(&self) -> PrequeueOrder {
        self.prequeue_order
    }

    /// The calendar of holidays this schedule follows, if any.
    pub fn calendar(&self) -> Option<&Calendar> {
        self.calendar.as_deref()
    }

    fn bit(&self, cohort: CohortId) -> Option<u64> {
        let i = cohort.index();
        (i < self.cohorts.len() && i < 64)
            .then(|| 1u64 << i)
            .filter(|b| self.ever_open & b != 0)
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        local_naive(t, self.tz).date()
    }

    fn resolve(&self, t: NaiveDateTime, edge: Edge) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&t) {
            LocalResult::Single(x) => Some(x.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                Some(match edge {
                    Edge::Start => a.min(b),
                    Edge::End => a.max(b),
                })
            }
            LocalResult::None => {
                // In a gap: the first instant after it (the transition itself).
                if let Some(end) = GapInfo::new(&t, &self.tz).and_then(|g| g.end) {
                    return Some(end.with_timezone(&Utc));
                }
                // Fallback: the first valid wall-clock minute after the gap.
                let mut probe = t;
                for _ in 0..(26 * 60) {
                    probe = probe.checked_add_signed(TimeDelta::minutes(1))?;
                    if let Some(x) = self.tz.from_local_datetime(&probe).earliest() {
                        return Some(x.with_timezone(&Utc));
                    }
                }
                None
            }
        }
    }

    fn interval(&self, d: NaiveDate, w: &Window) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let midnight = d.and_hms_opt(0, 0, 0)?;
        let end = if w.end > w.start { w.end } else { w.end + 1440 };
        let s = midnight.checked_add_signed(TimeDelta::minutes(i64::from(w.start)))?;
        let e = midnight.checked_add_signed(TimeDelta::minutes(i64::from(end)))?;
        let (s, e) = (self.resolve(s, Edge::Start)?, self.resolve(e, Edge::End)?);
        (s < e).then_some((s, e))
    }

    /// Calls `f(start, end)` for every window of `bit`'s cohort that starts on local date `d`.
    fn for_each_interval(
        &self,
        d: NaiveDate,
        bit: u64,
        mut f: impl FnMut(DateTime<Utc>, DateTime<Utc>),
    ) {
        let mut special = false;
        for ex in &self.exceptions {
            if ex.covers(d) {
                if ex.closed && ex.cohorts & bit != 0 {
                    return;
                }
                special |= ex.open_cohorts & bit != 0;
            }
        }
        if special {
            for ex in self.exceptions.iter().filter(|e| e.covers(d)) {
                for w in ex.windows.iter().filter(|w| w.cohorts & bit != 0) {
                    if let Some((s, e)) = self.interval(d, w) {
                        f(s, e);
                    }
                }
            }
            return;
        }
        // A holiday removes the regular windows, like a closed exception for every cohort.
        if self.calendar.as_ref().is_some_and(|c| c.is_holiday(d)) {
            return;
        }
        let day_bit = 1u8 << d.weekday().num_days_from_monday();
        for w in &self.windows {
            if w.days & day_bit != 0 && w.cohorts & bit != 0 {
                if let Some((s, e)) = self.interval(d, w) {
                    f(s, e);
                }
            }
        }
    }

    /// Latest end among windows covering `t` (start <= t < end).
    fn covering_end(&self, bit: u64, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let d = self.local_date(t);
        let mut best: Option<DateTime<Utc>> = None;
        for back in (0..=2).rev() {
            let Some(day) = d.checked_sub_signed(TimeDelta::days(back)) else {
                continue;
            };
            self.for_each_interval(day, bit, |s, e| {
                if s <= t && t < e && best.is_none_or(|b| e > b) {
                    best = Some(e);
                }
            });
        }
        best
    }

    /// `Some(closes_at)` when open at `now` (`closes_at` None = beyond the horizon).
    fn open_until(&self, bit: u64, now: DateTime<Utc>) -> Option<Option<DateTime<Utc>>> {
        let mut end = self.covering_end(bit, now)?;
        let limit = horizon(now);
        for _ in 0..100_000 {
            if end > limit {
                return Some(None);
            }
            match self.covering_end(bit, end) {
                Some(next) if next > end => end = next,
                _ => return Some(Some(end)),
            }
        }
        Some(None)
    }

    /// First window start strictly after `now`, within the horizon.
    fn next_start_after(&self, bit: u64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let d0 = self.local_date(now);
        let limit = horizon(now);
        let mut best: Option<DateTime<Utc>> = None;
        let mut found_on: Option<i64> = None;
        for k in -2..=SEARCH_HORIZON_DAYS {
            if found_on.is_some_and(|f| k > f + 1) {
                break;
            }
            let Some(d) = d0.checked_add_signed(TimeDelta::days(k)) else {
                break;
            };
            self.for_each_interval(d, bit, |s, _| {
                if s > now && s <= limit && best.is_none_or(|b| s < b) {
                    best = Some(s);
                }
            });
            if best.is_some() && found_on.is_none() {
                found_on = Some(k);
            }
        }
        best
    }

    /// Whether `cohort` is admitted at `now` (inside one of its windows). Allocation-free.
    pub fn is_open(&self, cohort: CohortId, now: DateTime<Utc>) -> bool {
        self.bit(cohort)
            .is_some_and(|bit| self.covering_end(bit, now).is_some())
    }

    /// Open (until when), pre-queue (opening when) or closed (next opening) at `now`.
    pub fn state(&self, cohort: CohortId, now: DateTime<Utc>) -> WindowState {
        let Some(bit) = self.bit(cohort) else {
            return WindowState::Closed { opens_at: None };
        };
        if let Some(closes_at) = self.open_until(bit, now) {
            return WindowState::Open { closes_at };
        }
        match self.next_start_after(bit, now) {
            Some(s) if self.prequeue > TimeDelta::zero() && s - now <= self.prequeue => {
                WindowState::PreQueue { opens_at: s }
            }
            opens_at => WindowState::Closed { opens_at },
        }
    }

    /// When `cohort` is next open: `now` itself if open now, else the start of the next window;
    /// `None` if nothing opens within [`SEARCH_HORIZON_DAYS`].
    pub fn next_opening(&self, cohort: CohortId, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let bit = self.bit(cohort)?;
        if self.covering_end(bit, now).is_some() {
            return Some(now);
        }
        self.next_start_after(bit, now)
    }

    /// Whether a visitor of `cohort` admitted at `admitted_at` is in the grace period at `now`:
    /// the cohort is closed now, but a window that was open at or after `admitted_at` closed
    /// less than `grace` ago. False while open (see [`Schedule::may_stay`]). Pass lifetime is
    /// not checked here.
    pub fn in_grace(
        &self,
        cohort: CohortId,
        admitted_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(bit) = self.bit(cohort) else {
            return false;
        };
        if self.grace <= TimeDelta::zero() || self.covering_end(bit, now).is_some() {
            return false;
        }
        let a = admitted_at.max(
            now.checked_sub_signed(self.grace)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        );
        if a > now {
            return false;
        }
        // Any window intersecting [a, now] closed in (a, now] (now is closed).
        let Some(first) = self.local_date(a).checked_sub_signed(TimeDelta::days(2)) else {
            return false;
        };
        let last = self.local_date(now);
        let mut hit = false;
        let mut d = first;
        while d <= last && !hit {
            self.for_each_interval(d, bit, |s, e| hit |= s <= now && e > a);
            match d.succ_opt() {
                Some(n) => d = n,
                None => break,
            }
        }
        hit
    }

    /// Whether a visitor admitted at `admitted_at` may keep using the gate at `now`: open, or
    /// in grace.
    pub fn may_stay(
        &self,
        cohort: CohortId,
        admitted_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        self.is_open(cohort, now) || self.in_grace(cohort, admitted_at, now)
    }
}

#[cfg(test)]
mod calendar_tests;
#[cfg(test)]
mod tests;
