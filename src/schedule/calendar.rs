//! Calendars: holidays and closures defined once (`[calendars.NAME]`) and shared by the gates
//! whose schedule says `calendar = "NAME"`.
//!
//! A calendar is a set of local dates. Its entries are yearly dates (`date = "12-25"`, every
//! year), yearly ranges (`from = "12-24"`, `to = "12-26"`), dates that move with Easter
//! (`easter_offset = 1`: Easter Monday, Easter Sunday computed for any Gregorian year by
//! [`easter_sunday`]), one-off dates (`date = "2027-06-01"`) and ranges (`from`/`to` with
//! years), and the all-day events of an iCalendar file (`ics = "calendars/it.ics"`, relative to
//! the config's directory, read by `ics.rs`).
//!
//! A gate's schedule treats a holiday like a dated exception with `closed = true` for every
//! cohort: the windows that **start** on that date are gone, so an overnight band that started
//! the evening before runs to its normal end. The gate's own dated exceptions that give special
//! windows still apply on a holiday (the gate's own, more specific, word wins).
//!
//! Entries are checked when the TOML is read ([`HolidayConfig`] deserializes only valid
//! entries), so their errors carry the key path and the line; what needs the file system or the
//! whole calendar (`ics`, `time_zone`, the name) is checked by [`Calendars::compile`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, TimeDelta};
use chrono_tz::Tz;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::ics;
use crate::util::field_error::FieldError;

/// Largest `easter_offset` either way (Corpus Domini is +60, Septuagesima −63).
pub const MAX_EASTER_OFFSET: i64 = 120;

/// Longest range of dates one entry may cover.
const MAX_RANGE_DAYS: i64 = 366;

/// Easter Sunday of a Gregorian `year` (the anonymous Gregorian algorithm, Meeus/Jones/Butcher).
/// `None` before 1583 (the Gregorian reform) and for years chrono cannot represent.
pub fn easter_sunday(year: i32) -> Option<NaiveDate> {
    if year < 1583 {
        return None;
    }
    let y = i64::from(year);
    let a = y % 19;
    let (b, c) = (y / 100, y % 100);
    let (d, e) = (b / 4, b % 4);
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let (i, k) = (c / 4, c % 4);
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let n = h + l - 7 * m + 114;
    NaiveDate::from_ymd_opt(
        year,
        u32::try_from(n / 31).ok()?,
        u32::try_from(n % 31 + 1).ok()?,
    )
}

/// A date in a calendar entry: `MM-DD` (every year) or `YYYY-MM-DD` (once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolidayDate {
    /// Every year on this month (1–12) and day (1–31); `02-29` only in leap years.
    Yearly {
        /// Month, 1–12.
        month: u32,
        /// Day of the month, 1–31.
        day: u32,
    },
    /// One date.
    Once(NaiveDate),
}

impl HolidayDate {
    /// Parses `MM-DD` or `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<HolidayDate, String> {
        let bad = || {
            format!(
                "{s:?} is not a date: write \"MM-DD\" (every year, e.g. \"12-25\") or \
                 \"YYYY-MM-DD\" (once, e.g. \"2027-06-01\")"
            )
        };
        let t = s.trim();
        let b = t.as_bytes();
        if b.len() == 5 && b[2] == b'-' {
            let num = |x: &str| {
                x.bytes()
                    .all(|c| c.is_ascii_digit())
                    .then(|| x.parse::<u32>().ok())
                    .flatten()
            };
            let (month, day) = (num(&t[..2]).ok_or_else(bad)?, num(&t[3..]).ok_or_else(bad)?);
            // 2000 is a leap year: every month-day that ever exists exists in it.
            NaiveDate::from_ymd_opt(2000, month, day).ok_or_else(bad)?;
            return Ok(HolidayDate::Yearly { month, day });
        }
        if b.len() == 10 {
            if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                return Ok(HolidayDate::Once(d));
            }
        }
        Err(bad())
    }
}

impl<'de> Deserialize<'de> for HolidayDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HolidayDate::parse(&s).map_err(de::Error::custom)
    }
}

/// When a holiday falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolidayWhen {
    /// A date every year, or once.
    Date(HolidayDate),
    /// An inclusive range: both ends yearly (compared as month-day, so it may wrap the new
    /// year, `12-31`…`01-01`) or both with a year.
    Range(HolidayDate, HolidayDate),
    /// Easter Sunday plus this many days (−120…120), every year.
    Easter(i64),
}

/// One entry of `holidays = [...]`: `{ date = "12-25" }`, `{ from = "08-10", to = "08-20" }` or
/// `{ easter_offset = 1 }`, each with an optional `name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHoliday")]
pub struct HolidayConfig {
    /// When it falls.
    pub when: HolidayWhen,
    /// What it is called (shown by `anticamera schedule`).
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoliday {
    #[serde(default)]
    date: Option<HolidayDate>,
    #[serde(default)]
    from: Option<HolidayDate>,
    #[serde(default)]
    to: Option<HolidayDate>,
    #[serde(default)]
    easter_offset: Option<i64>,
    #[serde(default)]
    name: Option<String>,
}

impl TryFrom<RawHoliday> for HolidayConfig {
    type Error = String;

    fn try_from(r: RawHoliday) -> Result<Self, String> {
        let when = match (r.date, r.from, r.to, r.easter_offset) {
            (Some(d), None, None, None) => HolidayWhen::Date(d),
            (None, Some(f), Some(t), None) => {
                match (f, t) {
                    (HolidayDate::Once(a), HolidayDate::Once(b)) => {
                        if b < a {
                            return Err(format!("range ends ({b}) before it starts ({a})"));
                        }
                        if (b - a).num_days() >= MAX_RANGE_DAYS {
                            return Err(format!(
                                "range {a}…{b} is longer than {MAX_RANGE_DAYS} days"
                            ));
                        }
                    }
                    (HolidayDate::Yearly { .. }, HolidayDate::Yearly { .. }) => {}
                    _ => {
                        return Err("from and to must both be \"MM-DD\" (every year) or both \
                                    \"YYYY-MM-DD\" (once)"
                            .into())
                    }
                }
                HolidayWhen::Range(f, t)
            }
            (None, None, None, Some(o)) => {
                if o.abs() > MAX_EASTER_OFFSET {
                    return Err(format!(
                        "easter_offset = {o}: at most {MAX_EASTER_OFFSET} days either way"
                    ));
                }
                HolidayWhen::Easter(o)
            }
            _ => {
                return Err(
                    "give exactly one of date = \"MM-DD\" or \"YYYY-MM-DD\", from and \
                            to, or easter_offset = N (days after Easter Sunday)"
                        .into(),
                )
            }
        };
        Ok(HolidayConfig { when, name: r.name })
    }
}

/// `[calendars.NAME]`: holidays and closures shared by the gates that name this calendar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA zone its dates are local to. When set, every schedule using the calendar must be
    /// in this zone; when absent, the dates are local to each schedule's zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Holidays written in the config.
    #[serde(default)]
    pub holidays: Vec<HolidayConfig>,
    /// An iCalendar file (relative to the config's directory) whose all-day events are
    /// holidays too.
    #[serde(default)]
    pub ics: Option<PathBuf>,
}

/// A yearly entry: `days` days from `month`-`day`, in the years allowed by `first`/`until`/
/// `count`.
#[derive(Debug, Clone)]
struct Yearly {
    month: u32,
    day: u32,
    /// Length in days, at least 1.
    days: i64,
    /// First year it happens (an iCalendar `DTSTART`), if bounded.
    first: Option<i32>,
    /// Last start date (`UNTIL`), inclusive.
    until: Option<NaiveDate>,
    /// Number of occurrences (`COUNT`).
    count: Option<u32>,
    name: Option<String>,
}

impl Yearly {
    /// The occurrence starting in `year`, if there is one.
    fn start_in(&self, year: i32) -> Option<NaiveDate> {
        if self.first.is_some_and(|f| year < f) {
            return None;
        }
        if let (Some(c), Some(f)) = (self.count, self.first) {
            if i64::from(year) - i64::from(f) >= i64::from(c) {
                return None;
            }
        }
        let d = NaiveDate::from_ymd_opt(year, self.month, self.day)?;
        if self.until.is_some_and(|u| d > u) {
            return None;
        }
        Some(d)
    }

    fn covers(&self, d: NaiveDate) -> bool {
        // An occurrence covering `d` starts this year or (when long enough to wrap) last year.
        [d.year(), d.year() - 1].iter().any(|&y| {
            self.start_in(y)
                .is_some_and(|s| s <= d && (d - s).num_days() < self.days)
        })
    }
}

/// (month, day), ordered as in a year.
type MonthDay = (u32, u32);

fn name(n: &Option<String>) -> &str {
    n.as_deref().unwrap_or("")
}

/// A compiled calendar: answers "is this local date a holiday?" for any date.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    name: String,
    time_zone: Option<Tz>,
    /// Bit `day` of `every_year[month - 1]`: a single-day holiday every year (the fast path).
    every_year: [u32; 12],
    /// Names of the `every_year` dates, for the report.
    every_year_names: Vec<(u32, u32, Option<String>)>,
    /// Yearly ranges and bounded yearly events (iCalendar `RRULE`s).
    yearly: Vec<Yearly>,
    /// Yearly month-day ranges, inclusive; `from > to` wraps the new year. Compared as
    /// (month, day), so 29 February is inside `02-20`…`03-05` in leap years and nothing moves
    /// in the others.
    yearly_ranges: Vec<(MonthDay, MonthDay, Option<String>)>,
    /// Days after Easter Sunday, with names.
    easter: Vec<(i64, Option<String>)>,
    /// One-off dates and ranges, inclusive.
    once: Vec<(NaiveDate, NaiveDate, Option<String>)>,
}

impl Calendar {
    /// The calendar's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone its dates are local to, if it says.
    pub fn time_zone(&self) -> Option<Tz> {
        self.time_zone
    }

    /// Whether local date `d` is a holiday.
    pub fn is_holiday(&self, d: NaiveDate) -> bool {
        self.holiday(d).is_some()
    }

    /// `Some(name)` when local date `d` is a holiday (`name` empty when the entry has none).
    pub fn holiday(&self, d: NaiveDate) -> Option<&str> {
        let (m, day) = (d.month(), d.day());
        if self.every_year[(m - 1) as usize] & (1 << day) != 0 {
            let n = self
                .every_year_names
                .iter()
                .find(|(em, ed, _)| *em == m && *ed == day)
                .map_or("", |(_, _, n)| name(n));
            return Some(n);
        }
        if !self.easter.is_empty() {
            // Easter falls 22 March … 25 April: with |offset| <= 120 a date is in Easter's
            // year, or (22 November at the earliest) in the year before it.
            let next = (m >= 11).then_some(d.year() + 1);
            for y in std::iter::once(d.year()).chain(next) {
                if let Some(e) = easter_sunday(y) {
                    let off = (d - e).num_days();
                    if let Some((_, n)) = self.easter.iter().find(|(o, _)| *o == off) {
                        return Some(name(n));
                    }
                }
            }
        }
        let md = (m, day);
        if let Some((_, _, n)) = self.yearly_ranges.iter().find(|(a, b, _)| {
            if a <= b {
                *a <= md && md <= *b
            } else {
                md >= *a || md <= *b
            }
        }) {
            return Some(name(n));
        }
        if let Some((_, _, n)) = self.once.iter().find(|(a, b, _)| *a <= d && d <= *b) {
            return Some(name(n));
        }
        self.yearly
            .iter()
            .find(|y| y.covers(d))
            .map(|y| name(&y.name))
    }

    fn add_yearly(&mut self, y: Yearly) {
        let simple = y.days == 1 && y.first.is_none() && y.until.is_none() && y.count.is_none();
        if simple && y.month >= 1 && y.month <= 12 {
            self.every_year[(y.month - 1) as usize] |= 1 << y.day;
            self.every_year_names.push((y.month, y.day, y.name));
        } else {
            self.yearly.push(y);
        }
    }

    fn add(&mut self, h: &HolidayConfig) {
        let name = h.name.clone();
        match h.when {
            HolidayWhen::Date(HolidayDate::Once(d)) => self.once.push((d, d, name)),
            HolidayWhen::Date(HolidayDate::Yearly { month, day }) => self.add_yearly(Yearly {
                month,
                day,
                days: 1,
                first: None,
                until: None,
                count: None,
                name,
            }),
            HolidayWhen::Range(HolidayDate::Once(a), HolidayDate::Once(b)) => {
                self.once.push((a, b, name))
            }
            HolidayWhen::Range(
                HolidayDate::Yearly { month, day },
                HolidayDate::Yearly { month: m2, day: d2 },
            ) => self.yearly_ranges.push(((month, day), (m2, d2), name)),
            HolidayWhen::Range(..) => {}
            HolidayWhen::Easter(o) => self.easter.push((o, name)),
        }
    }

    fn add_ics(&mut self, events: Vec<ics::Event>) {
        for e in events {
            match e.yearly {
                None => {
                    let last = e
                        .start
                        .checked_add_signed(TimeDelta::days(e.days - 1))
                        .unwrap_or(e.start);
                    self.once.push((e.start, last, e.summary));
                }
                Some(r) => self.yearly.push(Yearly {
                    month: e.start.month(),
                    day: e.start.day(),
                    days: e.days,
                    first: Some(e.start.year()),
                    until: r.until,
                    count: r.count,
                    name: e.summary,
                }),
            }
        }
    }
}

/// Every calendar of a config, compiled, by name.
#[derive(Debug, Clone, Default)]
pub struct Calendars(BTreeMap<String, Arc<Calendar>>);

impl Calendars {
    /// Compiles `[calendars]`, reading `ics` files relative to `base_dir`. Always returns the
    /// calendars (a broken entry left out) together with every problem found, each naming its
    /// key (`it.ics`, `it.time_zone`, …, below `calendars`).
    pub fn compile(
        cfg: &BTreeMap<String, CalendarConfig>,
        base_dir: &Path,
    ) -> (Calendars, Vec<FieldError>) {
        let mut errors = Vec::new();
        let mut out = BTreeMap::new();
        for (name, c) in cfg {
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                errors.push(FieldError::new(
                    name.clone(),
                    "a calendar's name is 1-32 letters, digits, _ or -",
                ));
            }
            let mut cal = Calendar {
                name: name.clone(),
                ..Calendar::default()
            };
            if let Some(tz) = &c.time_zone {
                match tz.trim().parse::<Tz>() {
                    Ok(tz) => cal.time_zone = Some(tz),
                    Err(_) => errors.push(FieldError::new(
                        format!("{name}.time_zone"),
                        format!("{tz:?} is not an IANA time zone (like \"Europe/Rome\")"),
                    )),
                }
            }
            for h in &c.holidays {
                cal.add(h);
            }
            if let Some(file) = &c.ics {
                let path = base_dir.join(file);
                match std::fs::read_to_string(&path) {
                    Err(e) => errors.push(FieldError::new(
                        format!("{name}.ics"),
                        format!("{}: cannot read: {e}", path.display()),
                    )),
                    Ok(text) => match ics::parse(&text) {
                        Ok(events) => cal.add_ics(events),
                        Err(e) => errors.push(FieldError::new(
                            format!("{name}.ics"),
                            format!("{}:{}: {}", path.display(), e.line, e.reason),
                        )),
                    },
                }
            }
            if c.holidays.is_empty() && c.ics.is_none() {
                errors.push(FieldError::new(
                    name.clone(),
                    "an empty calendar: give holidays = [...] or ics = \"file.ics\"",
                ));
            }
            out.insert(name.clone(), Arc::new(cal));
        }
        (Calendars(out), errors)
    }

    /// The calendar called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Calendar>> {
        self.0.get(name)
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
