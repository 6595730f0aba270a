//! Human-readable times and the `anticamera schedule` report.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::{OffsetName, Tz};

use super::{Schedule, WindowState};

/// Language of user-facing dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// Italiano: "martedì 10 marzo 2026, 16:00".
    #[default]
    It,
    /// English: "Tuesday 10 March 2026, 16:00".
    En,
}

const WEEKDAYS_IT: [&str; 7] = [
    "lunedì",
    "martedì",
    "mercoledì",
    "giovedì",
    "venerdì",
    "sabato",
    "domenica",
];
const WEEKDAYS_EN: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS_IT: [&str; 12] = [
    "gennaio",
    "febbraio",
    "marzo",
    "aprile",
    "maggio",
    "giugno",
    "luglio",
    "agosto",
    "settembre",
    "ottobre",
    "novembre",
    "dicembre",
];
const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `instant` as local time in `tz` for people: "martedì 10 marzo 2026, 16:00" (It) or
/// "Tuesday 10 March 2026, 16:00" (En).
pub fn format_local(instant: DateTime<Utc>, tz: Tz, lang: Lang) -> String {
    let t = super::local_naive(instant, tz);
    let wd = t.weekday().num_days_from_monday() as usize;
    let mo = t.month0() as usize;
    let (wd, mo) = match lang {
        Lang::It => (WEEKDAYS_IT[wd % 7], MONTHS_IT[mo % 12]),
        Lang::En => (WEEKDAYS_EN[wd % 7], MONTHS_EN[mo % 12]),
    };
    format!(
        "{wd} {} {mo} {}, {:02}:{:02}",
        t.day(),
        t.year(),
        t.hour(),
        t.minute()
    )
}

fn with_zone(instant: DateTime<Utc>, tz: Tz, lang: Lang) -> String {
    let offset = tz.offset_from_utc_datetime(&instant.naive_utc());
    format!(
        "{} {}",
        format_local(instant, tz, lang),
        offset.abbreviation().unwrap_or("")
    )
}

fn fmt_span(d: TimeDelta) -> String {
    let mins = d.num_minutes().max(0);
    let (days, hours, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    let mut s = String::new();
    if days > 0 {
        let _ = write!(s, "{days}d ");
    }
    if days > 0 || hours > 0 {
        let _ = write!(s, "{hours}h ");
    }
    let _ = write!(s, "{m}m");
    s
}

/// [`report_in`] in English.
pub fn report(
    gates: &[(&str, Option<&Schedule>)],
    cohorts: &[&str],
    at: DateTime<Utc>,
    display_tz: Tz,
) -> String {
    report_in(gates, cohorts, at, display_tz, Lang::En)
}

/// Text for `anticamera schedule [--at TIME] [--cohort NAME]`: for each gate and cohort, open /
/// closed / pre-queue at `at`, when it closes or next opens, in `display_tz` local time.
pub fn report_in(
    gates: &[(&str, Option<&Schedule>)],
    cohorts: &[&str],
    at: DateTime<Utc>,
    display_tz: Tz,
    lang: Lang,
) -> String {
    let it = lang == Lang::It;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} ({}), {} {}",
        if it { "Orari al" } else { "Schedule at" },
        with_zone(at, display_tz, lang),
        at.naive_utc().format("%Y-%m-%dT%H:%M:%SZ"),
        if it { "fuso" } else { "times in" },
        display_tz.name()
    );
    let width = cohorts.iter().map(|c| c.len()).max().unwrap_or(0).max(8);
    for (gate, schedule) in gates {
        let _ = writeln!(out, "\ngate {gate:?}");
        let Some(s) = schedule else {
            let _ = writeln!(
                out,
                "  {}",
                if it {
                    "sempre aperto (nessun orario)"
                } else {
                    "always open (no schedule)"
                }
            );
            continue;
        };
        let _ = writeln!(
            out,
            "  ({} {}, grace {}, prequeue {}, {} {})",
            if it { "orari in" } else { "windows in" },
            s.time_zone().name(),
            fmt_span(s.grace),
            fmt_span(s.prequeue),
            if it { "ordine" } else { "order" },
            s.prequeue_order().as_str()
        );
        if let Some(cal) = s.calendar() {
            let day = super::local_naive(at, s.time_zone()).date();
            let _ = match cal.holiday(day) {
                Some(name) => writeln!(
                    out,
                    "  {} {:?}: {} {day}{}",
                    if it { "calendario" } else { "calendar" },
                    cal.name(),
                    if it { "festivo il" } else { "holiday on" },
                    if name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({name})")
                    }
                ),
                None => writeln!(
                    out,
                    "  {} {:?}",
                    if it { "calendario" } else { "calendar" },
                    cal.name()
                ),
            };
        }
        for cohort in cohorts {
            let line = match s.cohort_id(cohort) {
                None => (if it {
                    "coorte sconosciuta"
                } else {
                    "unknown cohort"
                })
                .to_owned(),
                Some(id) => match s.state(id, at) {
                    WindowState::Open { closes_at } => match closes_at {
                        Some(c) => format!(
                            "{:<9} {} {} ({} {})",
                            if it { "APERTO" } else { "OPEN" },
                            if it { "chiude" } else { "closes" },
                            with_zone(c, display_tz, lang),
                            if it { "tra" } else { "in" },
                            fmt_span(c - at)
                        ),
                        None => format!(
                            "{:<9} {}",
                            if it { "APERTO" } else { "OPEN" },
                            if it {
                                "nessuna chiusura prevista"
                            } else {
                                "no closing within the horizon"
                            }
                        ),
                    },
                    WindowState::PreQueue { opens_at } => format!(
                        "{:<9} {} {} ({} {})",
                        if it { "PRE-CODA" } else { "PREQUEUE" },
                        if it { "apre" } else { "opens" },
                        with_zone(opens_at, display_tz, lang),
                        if it { "tra" } else { "in" },
                        fmt_span(opens_at - at)
                    ),
                    WindowState::Closed { opens_at } => match opens_at {
                        Some(o) => format!(
                            "{:<9} {} {} ({} {})",
                            if it { "CHIUSO" } else { "CLOSED" },
                            if it { "apre" } else { "opens" },
                            with_zone(o, display_tz, lang),
                            if it { "tra" } else { "in" },
                            fmt_span(o - at)
                        ),
                        None => format!(
                            "{:<9} {}",
                            if it { "CHIUSO" } else { "CLOSED" },
                            if it {
                                "nessuna apertura prevista"
                            } else {
                                "no opening within the horizon"
                            }
                        ),
                    },
                },
            };
            let _ = writeln!(out, "  {cohort:<width$}  {line}");
        }
    }
    out
}
