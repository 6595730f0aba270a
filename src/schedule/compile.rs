//! Compiling a [`ScheduleConfig`] into a [`Schedule`]: weekdays, `HH:MM` times, dates,
//! durations and cohort lists parsed and checked, windows and exceptions built, every problem
//! reported with its key path (`windows[1].start`, `exceptions[0].date`, …).

use super::*;
use crate::cohort::MAX_COHORTS;
use crate::util::duration;
use crate::util::field_error::FieldError;

const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn parse_day(s: &str) -> Option<u8> {
    let s = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|(short, long)| s == *short || s == *long)
        .map(|i| i as u8)
}

pub(super) fn parse_days(list: &[String], key: &str, errors: &mut Vec<FieldError>) -> u8 {
    if list.is_empty() {
        errors.push(FieldError::new(
            key,
            "empty list: the window would never open (omit days for every day)",
        ));
    }
    let mut mask = 0u8;
    for (i, item) in list.iter().enumerate() {
        let parsed = match item.split_once('-') {
            Some((a, b)) => parse_day(a).zip(parse_day(b)).map(|(a, b)| {
                let mut m = 0u8;
                let mut d = a;
                loop {
                    m |= 1 << d;
                    if d == b {
                        break m;
                    }
                    d = (d + 1) % 7;
                }
            }),
            None => parse_day(item).map(|d| 1u8 << d),
        };
        match parsed {
            Some(m) => mask |= m,
            None => errors.push(FieldError::new(
                format!("{key}[{i}]"),
                format!("{item:?} is not a day (mon, tue, wed, thu, fri, sat, sun) or a range like mon-fri"),
            )),
        }
    }
    mask
}

/// Parses `HH:MM` (24-hour, two digits each) into minutes after midnight; `24:00` only when
/// `allow_24`.
pub(super) fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let b = s.as_bytes();
    let bad = || {
        format!(
            "{s:?} is not a time HH:MM (24-hour, e.g. \"08:00\"){}",
            if allow_24 { " or \"24:00\"" } else { "" }
        )
    };
    if b.len() != 5 || b[2] != b':' || ![b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let h = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let m = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    if s.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn parse_delta(s: &str) -> Option<TimeDelta> {
    duration::parse(s)
        .ok()
        .and_then(|d| TimeDelta::from_std(d).ok())
}

fn fmt_hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

struct Compiler<'a> {
    known: Vec<&'a str>,
    all: u64,
    errors: Vec<FieldError>,
}

impl Compiler<'_> {
    fn cohorts(&mut self, list: Option<&Vec<String>>, default: u64, key: &str) -> u64 {
        let Some(list) = list else {
            return default;
        };
        if list.is_empty() {
            self.errors.push(FieldError::new(
                key,
                "empty list applies to nobody (omit it for every cohort)",
            ));
        }
        let mut mask = 0u64;
        for (i, name) in list.iter().enumerate() {
            match self.known.iter().position(|k| k == name) {
                Some(p) if p < MAX_COHORTS => mask |= 1 << p,
                Some(_) => {}
                None => self.errors.push(FieldError::new(
                    format!("{key}[{i}]"),
                    format!("unknown cohort {name:?}; known: {}", self.known.join(", ")),
                )),
            }
        }
        mask
    }

    fn window(
        &mut self,
        start: &str,
        end: &str,
        days: u8,
        cohorts: u64,
        key: &str,
    ) -> Option<Window> {
        let s = parse_hhmm(start, false);
        let e = parse_hhmm(end, true);
        if let Err(r) = &s {
            self.errors
                .push(FieldError::new(format!("{key}.start"), r.clone()));
        }
        if let Err(r) = &e {
            self.errors
                .push(FieldError::new(format!("{key}.end"), r.clone()));
        }
        let (s, e) = (s.ok()?, e.ok()?);
        if s == e {
            self.errors.push(FieldError::new(
                format!("{key}.end"),
                format!(
                    "start and end are both {}: use \"00:00\"-\"24:00\" for a whole day",
                    fmt_hhmm(s)
                ),
            ));
            return None;
        }
        Some(Window {
            days,
            start: s,
            end: e,
            cohorts,
        })
    }

    fn name_of(&self, mask: u64) -> &str {
        self.known
            .get(mask.trailing_zeros() as usize)
            .copied()
            .unwrap_or("?")
    }
}

impl Schedule {
    /// Validates and compiles `cfg`. `known_cohorts` is the cohort list of the configuration
    /// ([`crate::cohort::Cohorts::names`]); a [`CohortId`] is an index into it. Returns every
    /// problem found, each naming its key (`windows[1].start`, `exceptions[0].date`, …).
    ///
    /// A schedule that names a `calendar` needs [`Schedule::compile_with`]: here no calendar
    /// is known.
    pub fn compile<S: AsRef<str>>(
        cfg: &ScheduleConfig,
        known_cohorts: &[S],
    ) -> Result<Schedule, Vec<FieldError>> {
        Self::compile_with(cfg, known_cohorts, &Calendars::default())
    }

    /// [`Schedule::compile`] with the config's calendars, which `calendar = "NAME"` may name
    /// (an unknown name, or a calendar in another time zone, is an error at `calendar`).
    pub fn compile_with<S: AsRef<str>>(
        cfg: &ScheduleConfig,
        known_cohorts: &[S],
        calendars: &Calendars,
    ) -> Result<Schedule, Vec<FieldError>> {
        let known: Vec<&str> = known_cohorts.iter().map(AsRef::as_ref).collect();
        let mut c = Compiler {
            all: if known.len() >= 64 {
                u64::MAX
            } else {
                (1u64 << known.len()) - 1
            },
            known,
            errors: Vec::new(),
        };
        if c.known.len() > MAX_COHORTS {
            c.errors.push(FieldError::new(
                "cohorts",
                format!("{} cohorts, at most {MAX_COHORTS}", c.known.len()),
            ));
        }
        let tz = match cfg.time_zone.trim().parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                c.errors.push(FieldError::new(
                    "time_zone",
                    format!(
                        "{:?} is not an IANA time zone (like \"Europe/Rome\")",
                        cfg.time_zone
                    ),
                ));
                Tz::Europe__Rome
            }
        };
        let calendar = match &cfg.calendar {
            None => None,
            Some(name) => match calendars.get(name) {
                None => {
                    let names = calendars.names();
                    c.errors.push(FieldError::new(
                        "calendar",
                        format!(
                            "unknown calendar {name:?}; declared: {}",
                            if names.is_empty() {
                                "none (define it in [calendars.NAME])".to_owned()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                    None
                }
                Some(cal) => {
                    if let Some(ctz) = cal.time_zone().filter(|ctz| *ctz != tz) {
                        c.errors.push(FieldError::new(
                            "calendar",
                            format!(
                                "calendar {name:?} is in {}, this schedule in {}: a holiday is a \
                                 local date, so they must agree",
                                ctz.name(),
                                tz.name()
                            ),
                        ));
                    }
                    Some(std::sync::Arc::clone(cal))
                }
            },
        };
        let mut delta = |s: &str, key: &str| match parse_delta(s) {
            Some(d) if d <= MAX_GRACE_OR_PREQUEUE => d,
            Some(_) => {
                c.errors
                    .push(FieldError::new(key, format!("{s:?} is longer than 24h")));
                TimeDelta::zero()
            }
            None => {
                c.errors.push(FieldError::new(
                    key,
                    format!("{s:?} is not a duration like \"30m\" or \"0s\""),
                ));
                TimeDelta::zero()
            }
        };
        let grace = delta(&cfg.grace, "grace");
        let prequeue = delta(&cfg.prequeue, "prequeue");

        let mut windows = Vec::new();
        for (i, w) in cfg.windows.iter().enumerate() {
            let key = format!("windows[{i}]");
            let days = match &w.days {
                Some(list) => parse_days(list, &format!("{key}.days"), &mut c.errors),
                None => 0x7f,
            };
            let cohorts = c.cohorts(w.cohorts.as_ref(), c.all, &format!("{key}.cohorts"));
            if let Some(win) = c.window(&w.start, &w.end, days, cohorts, &key) {
                windows.push(win);
            }
        }

        let mut exceptions = Vec::new();
        for (i, e) in cfg.exceptions.iter().enumerate() {
            let key = format!("exceptions[{i}]");
            let mut date = |field: &str, s: &str| {
                let d = parse_date(s);
                if d.is_none() {
                    c.errors.push(FieldError::new(
                        format!("{key}.{field}"),
                        format!("{s:?} is not a date YYYY-MM-DD"),
                    ));
                }
                d
            };
            let range = match (&e.date, &e.from, &e.to) {
                (Some(d), None, None) => date("date", d).map(|d| (d, d)),
                (None, Some(f), Some(t)) => {
                    let (f, t) = (date("from", f), date("to", t));
                    match (f, t) {
                        (Some(f), Some(t)) if f > t => {
                            c.errors.push(FieldError::new(
                                format!("{key}.to"),
                                format!("range ends ({t}) before it starts ({f})"),
                            ));
                            None
                        }
                        (Some(f), Some(t)) => Some((f, t)),
                        _ => None,
                    }
                }
                _ => {
                    c.errors.push(FieldError::new(
                        key.clone(),
                        "give either date = \"YYYY-MM-DD\" or both from and to",
                    ));
                    None
                }
            };
            let cohorts = c.cohorts(e.cohorts.as_ref(), c.all, &format!("{key}.cohorts"));
            if e.closed && !e.windows.is_empty() {
                c.errors.push(FieldError::new(
                    format!("{key}.windows"),
                    "closed = true and windows contradict each other (use two exceptions for different cohorts)",
                ));
            }
            if !e.closed && e.windows.is_empty() {
                c.errors.push(FieldError::new(
                    key.clone(),
                    "the exception does nothing: set closed = true or give windows",
                ));
            }
            let mut ws = Vec::new();
            for (j, w) in e.windows.iter().enumerate() {
                let wkey = format!("{key}.windows[{j}]");
                let wc = c.cohorts(w.cohorts.as_ref(), cohorts, &format!("{wkey}.cohorts"));
                if let Some(win) = c.window(&w.start, &w.end, 0x7f, wc, &wkey) {
                    ws.push(win);
                }
            }
            if let Some((from, to)) = range {
                let open_cohorts = ws.iter().fold(0, |m, w| m | w.cohorts);
                exceptions.push((
                    i,
                    Exception {
                        from,
                        to,
                        closed: e.closed,
                        cohorts,
                        windows: ws,
                        open_cohorts,
                    },
                ));
            }
        }
        // Same date both closed and specially opened for the same cohort.
        for (a, (ia, ea)) in exceptions.iter().enumerate() {
            for (ib, eb) in exceptions.iter().skip(a + 1) {
                if ea.to < eb.from || eb.to < ea.from {
                    continue;
                }
                let clash = (if ea.closed { ea.cohorts } else { 0 } & eb.open_cohorts)
                    | (if eb.closed { eb.cohorts } else { 0 } & ea.open_cohorts);
                if clash != 0 {
                    let day = ea.from.max(eb.from);
                    c.errors.push(FieldError::new(
                        format!("exceptions[{ib}]"),
                        format!(
                            "contradicts exceptions[{ia}]: cohort {:?} is both closed and specially opened on {day}",
                            c.name_of(clash)
                        ),
                    ));
                }
            }
        }
        let exceptions: Vec<Exception> = exceptions.into_iter().map(|(_, e)| e).collect();
        if cfg.windows.is_empty() && exceptions.iter().all(|e| e.windows.is_empty()) {
            c.errors.push(FieldError::new(
                "windows",
                "no windows: the gate would never open (remove the schedule for always open)",
            ));
        }
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        let ever_open = windows
            .iter()
            .map(|w| w.cohorts)
            .chain(exceptions.iter().map(|e| e.open_cohorts))
            .fold(0, |a, b| a | b);
        Ok(Schedule {
            tz,
            grace,
            prequeue,
            prequeue_order: cfg.prequeue_order,
            windows,
            exceptions,
            cohorts: c.known.iter().map(|s| (*s).to_owned()).collect(),
            ever_open,
            calendar,
        })
    }
}
