//! A strict reader for the part of iCalendar (RFC 5545) a holiday calendar uses: `VEVENT`s with
//! an all-day `DTSTART;VALUE=DATE`, an optional `DTEND;VALUE=DATE` (exclusive) and an optional
//! `RRULE:FREQ=YEARLY` (with `BYMONTH`/`BYMONTHDAY` matching `DTSTART`, `UNTIL`, `COUNT`).
//!
//! Anything else that could change which dates are holidays (timed events, `DURATION`,
//! `EXDATE`, `RDATE`, `RECURRENCE-ID`, other frequencies, `STATUS:CANCELLED`, time-zone
//! components, alarms) is an error naming the line and the reason, never silently ignored:
//! an operator must not believe a date is closed when it is not. Descriptive properties
//! (`UID`, `SUMMARY`, `DESCRIPTION`, `DTSTAMP`, …) and `X-` extensions are accepted and only
//! `SUMMARY` is kept.
//!
//! Why not a crate: `icalendar` and `ical` parse leniently and report no line numbers, and we
//! need only this subset with an error for everything outside it; this reader is small and its
//! property (never panics, every accepted event is well formed) runs under the fuzz smoke test.

use chrono::{Datelike, NaiveDate};

/// Longest event accepted, in days.
const MAX_EVENT_DAYS: i64 = 366;

/// An `RRULE:FREQ=YEARLY` and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YearlyRule {
    /// Last date an occurrence may start on (`UNTIL`), inclusive.
    pub until: Option<NaiveDate>,
    /// Number of occurrences (`COUNT`), counted from `DTSTART`.
    pub count: Option<u32>,
}

/// One all-day event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// Line of its `BEGIN:VEVENT`.
    pub line: usize,
    /// `DTSTART`.
    pub start: NaiveDate,
    /// Days covered (`DTEND` − `DTSTART`, 1 without `DTEND`).
    pub days: i64,
    /// `SUMMARY`, unescaped.
    pub summary: Option<String>,
    /// The yearly recurrence, if any.
    pub yearly: Option<YearlyRule>,
}

/// Why a file was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IcsError {
    /// 1-based line (of the start of the folded content line).
    pub line: usize,
    /// What is wrong or unsupported.
    pub reason: String,
}

fn err<T>(line: usize, reason: impl Into<String>) -> Result<T, IcsError> {
    Err(IcsError {
        line,
        reason: reason.into(),
    })
}

/// Content lines, unfolded (a line starting with a space or tab continues the previous one),
/// each with the 1-based line it starts on. Empty lines are skipped.
fn unfold(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        match raw.strip_prefix([' ', '\t']) {
            Some(rest) if !out.is_empty() => {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(rest);
                }
            }
            _ if raw.trim().is_empty() => {}
            _ => out.push((i + 1, raw.to_owned())),
        }
    }
    out
}

/// A content line: `NAME;PARAM=V;…:VALUE`.
struct Prop<'a> {
    name: String,
    params: Vec<(String, &'a str)>,
    value: &'a str,
}

fn split_prop(line: usize, s: &str) -> Result<Prop<'_>, IcsError> {
    // The value starts at the first ':' outside a quoted parameter value.
    let mut quoted = false;
    let mut colon = None;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(colon) = colon else {
        return err(line, format!("{s:?} is not NAME:VALUE"));
    };
    let (head, value) = (&s[..colon], &s[colon + 1..]);
    let mut parts = head.split(';');
    let name = parts.next().unwrap_or("").trim().to_ascii_uppercase();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return err(line, format!("{head:?} is not a property name"));
    }
    let mut params = Vec::new();
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            return err(line, format!("parameter {p:?} of {name} is not NAME=VALUE"));
        };
        params.push((k.trim().to_ascii_uppercase(), v));
    }
    Ok(Prop {
        name,
        params,
        value,
    })
}

fn parse_date(line: usize, what: &str, s: &str) -> Result<NaiveDate, IcsError> {
    let s = s.trim();
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y%m%d") {
            return Ok(d);
        }
    }
    err(line, format!("{what} {s:?} is not a date YYYYMMDD"))
}

/// `DTSTART`/`DTEND`: only `VALUE=DATE` all-day dates.
fn all_day(line: usize, p: &Prop<'_>) -> Result<NaiveDate, IcsError> {
    let mut is_date = false;
    for (k, v) in &p.params {
        match (k.as_str(), v.trim().to_ascii_uppercase().as_str()) {
            ("VALUE", "DATE") => is_date = true,
            _ => {
                return err(
                    line,
                    format!(
                        "{};{k}={v}: only all-day dates are supported ({}; VALUE=DATE:YYYYMMDD)",
                        p.name, p.name
                    ),
                )
            }
        }
    }
    if !is_date {
        return err(
            line,
            format!(
                "{}:{}: only all-day events are supported, written {};VALUE=DATE:YYYYMMDD",
                p.name, p.value, p.name
            ),
        );
    }
    parse_date(line, &p.name, p.value)
}

fn single_number(line: usize, key: &str, v: &str, max: u32) -> Result<u32, IcsError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => err(
            line,
            format!("RRULE {key}={v}: only one value 1..{max} is supported"),
        ),
    }
}

/// `RRULE:FREQ=YEARLY[;BYMONTH=m][;BYMONTHDAY=d][;UNTIL=…][;COUNT=n][;INTERVAL=1]`.
fn parse_rrule(line: usize, v: &str, start: NaiveDate) -> Result<YearlyRule, IcsError> {
    let mut freq = None;
    let mut rule = YearlyRule {
        until: None,
        count: None,
    };
    for part in v.trim().split(';') {
        let Some((k, val)) = part.split_once('=') else {
            return err(line, format!("RRULE part {part:?} is not NAME=VALUE"));
        };
        let k = k.trim().to_ascii_uppercase();
        let val = val.trim();
        match k.as_str() {
            "FREQ" => {
                if !val.eq_ignore_ascii_case("YEARLY") {
                    return err(
                        line,
                        format!("RRULE FREQ={val} is not supported (only FREQ=YEARLY)"),
                    );
                }
                freq = Some(());
            }
            "INTERVAL" if val == "1" => {}
            "BYMONTH" => {
                let m = single_number(line, "BYMONTH", val, 12)?;
                if m != start.month() {
                    return err(
                        line,
                        format!(
                            "RRULE BYMONTH={m} differs from DTSTART's month ({}): the rule must \
                             repeat DTSTART's date",
                            start.month()
                        ),
                    );
                }
            }
            "BYMONTHDAY" => {
                let d = single_number(line, "BYMONTHDAY", val, 31)?;
                if d != start.day() {
                    return err(
                        line,
                        format!(
                            "RRULE BYMONTHDAY={d} differs from DTSTART's day ({}): the rule must \
                             repeat DTSTART's date",
                            start.day()
                        ),
                    );
                }
            }
            "UNTIL" => {
                let date = val.split('T').next().unwrap_or(val);
                rule.until = Some(parse_date(line, "RRULE UNTIL", date)?);
            }
            "COUNT" => match val.parse::<u32>() {
                Ok(n) if n >= 1 => {
                    if start.month() == 2 && start.day() == 29 {
                        return err(line, "RRULE COUNT on 29 February is not supported");
                    }
                    rule.count = Some(n);
                }
                _ => return err(line, format!("RRULE COUNT={val} is not a positive number")),
            },
            "WKST" => {}
            other => {
                return err(
                    line,
                    format!(
                        "RRULE {other}={val} is not supported (only FREQ=YEARLY with BYMONTH, \
                         BYMONTHDAY, UNTIL, COUNT)"
                    ),
                )
            }
        }
    }
    if freq.is_none() {
        return err(line, "RRULE without FREQ");
    }
    Ok(rule)
}

/// Properties that describe an event without changing its dates.
const DESCRIPTIVE: &[&str] = &[
    "UID",
    "DTSTAMP",
    "SUMMARY",
    "DESCRIPTION",
    "CATEGORIES",
    "CLASS",
    "COMMENT",
    "CREATED",
    "LAST-MODIFIED",
    "LOCATION",
    "SEQUENCE",
    "TRANSP",
    "URL",
    "PRIORITY",
    "ORGANIZER",
    "CONTACT",
];

/// Calendar-level properties accepted (and not used).
const CALENDAR_PROPS: &[&str] = &["VERSION", "PRODID", "CALSCALE", "METHOD"];

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Default)]
struct Draft {
    line: usize,
    start: Option<(usize, NaiveDate)>,
    end: Option<(usize, NaiveDate)>,
    rrule: Option<(usize, String)>,
    summary: Option<String>,
}

impl Draft {
    fn finish(self) -> Result<Event, IcsError> {
        let Some((_, start)) = self.start else {
            return err(self.line, "VEVENT without DTSTART;VALUE=DATE");
        };
        let days = match self.end {
            None => 1,
            Some((l, end)) => {
                let n = (end - start).num_days();
                if n < 1 {
                    return err(
                        l,
                        format!("DTEND {end} is not after DTSTART {start} (DTEND is exclusive)"),
                    );
                }
                if n > MAX_EVENT_DAYS {
                    return err(l, format!("event of {n} days: at most {MAX_EVENT_DAYS}"));
                }
                n
            }
        };
        let yearly = match self.rrule {
            None => None,
            Some((l, r)) => Some(parse_rrule(l, &r, start)?),
        };
        Ok(Event {
            line: self.line,
            start,
            days,
            summary: self.summary,
            yearly,
        })
    }
}

/// Parses an iCalendar file into its all-day events; the first problem is the error.
pub(crate) fn parse(text: &str) -> Result<Vec<Event>, IcsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = unfold(text);
    let mut events = Vec::new();
    // 0: before VCALENDAR, 1: in VCALENDAR, 2: in VEVENT, 3: after END:VCALENDAR.
    let mut state = 0u8;
    let mut draft = Draft::default();
    let last_line = text.split('\n').count();
    for (line, raw) in &lines {
        let line = *line;
        let p = split_prop(line, raw)?;
        let value_upper = p.value.trim().to_ascii_uppercase();
        match (state, p.name.as_str()) {
            (0, "BEGIN") if value_upper == "VCALENDAR" => state = 1,
            (0, _) => return err(line, "the file must start with BEGIN:VCALENDAR"),
            (3, _) => return err(line, "content after END:VCALENDAR"),
            (1, "BEGIN") if value_upper == "VEVENT" => {
                state = 2;
                draft = Draft {
                    line,
                    ..Draft::default()
                };
            }
            (1, "BEGIN") => {
                return err(
                    line,
                    format!(
                        "BEGIN:{}: only VEVENT components are supported (all-day dates need no \
                         VTIMEZONE)",
                        p.value.trim()
                    ),
                )
            }
            (1, "END") if value_upper == "VCALENDAR" => state = 3,
            (1, "CALSCALE") if value_upper != "GREGORIAN" => {
                return err(line, format!("CALSCALE:{}: only GREGORIAN", p.value.trim()))
            }
            (1, "VERSION") if p.value.trim() != "2.0" => {
                return err(line, format!("VERSION:{}: only 2.0", p.value.trim()))
            }
            (1, n) if CALENDAR_PROPS.contains(&n) || n.starts_with("X-") => {}
            (1, n) => return err(line, format!("calendar property {n} is not supported")),
            (2, "END") if value_upper == "VEVENT" => {
                events.push(std::mem::take(&mut draft).finish()?);
                state = 1;
            }
            (2, "BEGIN") => {
                return err(
                    line,
                    format!("BEGIN:{} inside a VEVENT is not supported", p.value.trim()),
                )
            }
            (2, "END") => {
                return err(
                    line,
                    format!("END:{} while a VEVENT is open", p.value.trim()),
                )
            }
            (2, "DTSTART") => {
                if draft.start.is_some() {
                    return err(line, "a second DTSTART");
                }
                draft.start = Some((line, all_day(line, &p)?));
            }
            (2, "DTEND") => {
                if draft.end.is_some() {
                    return err(line, "a second DTEND");
                }
                draft.end = Some((line, all_day(line, &p)?));
            }
            (2, "RRULE") => {
                if draft.rrule.is_some() {
                    return err(line, "a second RRULE is not supported");
                }
                draft.rrule = Some((line, p.value.to_owned()));
            }
            (2, "STATUS") => {
                if value_upper != "CONFIRMED" && value_upper != "TENTATIVE" {
                    return err(
                        line,
                        format!(
                            "STATUS:{}: only CONFIRMED or TENTATIVE events are holidays; remove \
                             the event instead",
                            p.value.trim()
                        ),
                    );
                }
            }
            (2, "SUMMARY") => draft.summary = Some(unescape(p.value.trim())),
            (2, n) if DESCRIPTIVE.contains(&n) || n.starts_with("X-") => {}
            (2, n) => {
                return err(
                    line,
                    format!(
                        "{n} is not supported in a holiday calendar (supported: DTSTART and DTEND \
                         with VALUE=DATE, RRULE:FREQ=YEARLY, SUMMARY and descriptive properties)"
                    ),
                )
            }
            _ => return err(line, format!("unexpected {}", p.name)),
        }
    }
    match state {
        0 => err(1, "empty file: expected BEGIN:VCALENDAR"),
        1 | 2 => err(last_line, "the file ends before END:VCALENDAR"),
        _ => Ok(events),
    }
}
