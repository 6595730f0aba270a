use super::compile::{parse_days, parse_hhmm};
use super::*;
use crate::util::field_error::FieldError;
use chrono::TimeZone;

const COHORTS: [&str; 3] = ["citizens", "intermediaries", "desk"];

fn cfg(src: &str) -> ScheduleConfig {
    toml::from_str(src).unwrap()
}

fn compile(src: &str) -> Schedule {
    Schedule::compile(&cfg(src), &COHORTS).unwrap()
}

fn errors(src: &str) -> Vec<FieldError> {
    Schedule::compile(&cfg(src), &COHORTS).unwrap_err()
}

fn keys(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.key.as_str()).collect()
}

/// An unambiguous Rome wall-clock time as a UTC instant.
fn rome(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Tz::Europe__Rome
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn id(s: &Schedule, name: &str) -> CohortId {
    s.cohort_id(name).unwrap()
}

/// The April 2020 INPS bands (see the report for the config/inps.toml snippet).
const INPS_BANDS: &str = r#"
time_zone = "Europe/Rome"
grace = "30m"
prequeue = "15m"
prequeue_order = "random"

[[windows]]
cohorts = ["intermediaries"]
start = "08:00"
end = "16:00"

[[windows]]
cohorts = ["citizens"]
start = "16:00"
end = "08:00"
"#;

const HOLIDAYS_2026: &str = r#"
[[exceptions]]
date = "2026-01-01"
closed = true
[[exceptions]]
date = "2026-01-06"
closed = true
[[exceptions]]
date = "2026-04-05"
closed = true
[[exceptions]]
date = "2026-04-06"
closed = true
[[exceptions]]
date = "2026-04-25"
closed = true
[[exceptions]]
date = "2026-05-01"
closed = true
[[exceptions]]
date = "2026-06-02"
closed = true
[[exceptions]]
date = "2026-08-15"
closed = true
[[exceptions]]
date = "2026-10-04"
closed = true
[[exceptions]]
date = "2026-11-01"
closed = true
[[exceptions]]
date = "2026-12-08"
closed = true
[[exceptions]]
from = "2026-12-25"
to = "2026-12-26"
closed = true
"#;

#[test]
fn inps_bands_switch_at_8_and_16() {
    let s = compile(INPS_BANDS);
    let (cit, int) = (id(&s, "citizens"), id(&s, "intermediaries"));
    // Tuesday 10 March 2026 (CET, UTC+1)
    let t = rome(2026, 3, 10, 10, 0);
    assert!(s.is_open(int, t) && !s.is_open(cit, t));
    assert_eq!(
        s.state(int, t),
        WindowState::Open {
            closes_at: Some(utc(2026, 3, 10, 15, 0))
        }
    );
    assert_eq!(
        s.state(cit, t),
        WindowState::Closed {
            opens_at: Some(utc(2026, 3, 10, 15, 0))
        }
    );
    // boundaries: 16:00 belongs to the next band, 07:59 to the night band
    let t16 = rome(2026, 3, 10, 16, 0);
    assert!(!s.is_open(int, t16) && s.is_open(cit, t16));
    assert!(s.is_open(int, t16 - TimeDelta::seconds(1)));
    assert!(s.is_open(cit, rome(2026, 3, 11, 7, 59)));
    assert!(!s.is_open(cit, rome(2026, 3, 11, 8, 0)));
    // pre-queue 15 minutes before 16:00 for citizens, closed before that
    assert_eq!(
        s.state(cit, rome(2026, 3, 10, 15, 45)),
        WindowState::PreQueue {
            opens_at: utc(2026, 3, 10, 15, 0)
        }
    );
    assert!(matches!(
        s.state(cit, rome(2026, 3, 10, 15, 44)),
        WindowState::Closed { .. }
    ));
    // citizens' night band closes at 08:00 next morning
    assert_eq!(
        s.state(cit, rome(2026, 3, 10, 23, 0)),
        WindowState::Open {
            closes_at: Some(utc(2026, 3, 11, 7, 0))
        }
    );
    // unknown cohort id never opens
    let desk = id(&s, "desk");
    assert!(!s.is_open(desk, t));
    assert_eq!(s.state(desk, t), WindowState::Closed { opens_at: None });
    assert_eq!(s.prequeue_order(), PrequeueOrder::Random);
    assert_eq!(s.grace(), std::time::Duration::from_secs(1800));
}

#[test]
fn overnight_weekdays_belong_to_the_start_day() {
    let s = compile(
        r#"
[[windows]]
cohorts = ["citizens"]
days = ["mon-fri"]
start = "16:00"
end = "08:00"
"#,
    );
    let c = id(&s, "citizens");
    // Fri 13 March 2026 16:00 -> Sat 14 08:00
    assert!(s.is_open(c, rome(2026, 3, 13, 20, 0)));
    assert!(s.is_open(c, rome(2026, 3, 14, 7, 59)));
    assert!(!s.is_open(c, rome(2026, 3, 14, 8, 0)));
    assert!(!s.is_open(c, rome(2026, 3, 14, 20, 0))); // Sat evening
    assert!(!s.is_open(c, rome(2026, 3, 15, 20, 0))); // Sun evening
    assert!(!s.is_open(c, rome(2026, 3, 16, 7, 0))); // Mon morning: Sun window does not exist
    assert!(s.is_open(c, rome(2026, 3, 16, 16, 0))); // Mon 16:00
    assert!(s.is_open(c, rome(2026, 3, 17, 7, 0))); // Tue morning
    assert_eq!(
        s.next_opening(c, rome(2026, 3, 14, 9, 0)),
        Some(rome(2026, 3, 16, 16, 0))
    );
    assert_eq!(
        s.next_opening(c, rome(2026, 3, 16, 17, 0)),
        Some(rome(2026, 3, 16, 17, 0)),
        "open now -> now"
    );
}

#[test]
fn delegation_desk_tue_thu() {
    let s = compile(
        r#"
time_zone = "Europe/Rome"
grace = "10m"
[[windows]]
days = ["tue", "thu"]
start = "09:00"
end = "12:00"
"#,
    );
    let d = id(&s, "desk");
    assert!(s.is_open(d, rome(2026, 3, 10, 9, 0))); // Tuesday
    assert!(s.is_open(id(&s, "citizens"), rome(2026, 3, 12, 11, 59))); // Thursday, all cohorts
    assert!(!s.is_open(d, rome(2026, 3, 11, 10, 0))); // Wednesday
    assert_eq!(
        s.next_opening(d, rome(2026, 3, 10, 12, 0)),
        Some(rome(2026, 3, 12, 9, 0))
    );
    assert_eq!(
        s.next_opening(d, rome(2026, 3, 13, 12, 0)),
        Some(rome(2026, 3, 17, 9, 0))
    );
}

#[test]
fn spring_forward_2026_03_29() {
    // Europe/Rome: 2026-03-29 02:00 CET -> 03:00 CEST at 01:00 UTC.
    let s = compile(
        r#"
[[windows]]
cohorts = ["citizens"]
start = "02:30"
end = "04:00"
[[windows]]
cohorts = ["intermediaries"]
start = "01:00"
end = "02:30"
[[windows]]
cohorts = ["desk"]
start = "02:10"
end = "02:40"
"#,
    );
    let (c, i, d) = (id(&s, "citizens"), id(&s, "intermediaries"), id(&s, "desk"));
    // The day before: ordinary CET, 02:30 = 01:30 UTC.
    assert_eq!(
        s.next_opening(c, utc(2026, 3, 28, 0, 0)),
        Some(utc(2026, 3, 28, 1, 30))
    );
    // The night itself: 02:30 does not exist; opens at the transition, 03:00 CEST = 01:00 UTC.
    assert_eq!(
        s.next_opening(c, utc(2026, 3, 28, 12, 0)),
        Some(utc(2026, 3, 29, 1, 0))
    );
    assert!(!s.is_open(c, utc(2026, 3, 29, 0, 59)));
    assert!(s.is_open(c, utc(2026, 3, 29, 1, 0)));
    assert_eq!(
        s.state(c, utc(2026, 3, 29, 1, 0)),
        WindowState::Open {
            closes_at: Some(utc(2026, 3, 29, 2, 0)) // 04:00 CEST
        }
    );
    // A window ending at 02:30 ends at 03:00 CEST = 01:00 UTC (open 00:00-01:00 UTC).
    assert_eq!(
        s.state(i, utc(2026, 3, 29, 0, 30)),
        WindowState::Open {
            closes_at: Some(utc(2026, 3, 29, 1, 0))
        }
    );
    assert!(s.is_open(i, utc(2026, 3, 29, 0, 59)));
    assert!(!s.is_open(i, utc(2026, 3, 29, 1, 0)));
    // A window entirely inside the gap does not happen that night.
    assert_eq!(
        s.next_opening(d, utc(2026, 3, 28, 12, 0)),
        Some(utc(2026, 3, 30, 0, 10)) // Monday 02:10 CEST
    );
}

#[test]
fn fall_back_2026_10_25() {
    // Europe/Rome: 2026-10-25 03:00 CEST -> 02:00 CET at 01:00 UTC; 02:xx happens twice.
    let s = compile(
        r#"
[[windows]]
cohorts = ["citizens"]
start = "02:30"
end = "05:00"
[[windows]]
cohorts = ["intermediaries"]
start = "00:00"
end = "02:30"
[[windows]]
cohorts = ["desk"]
start = "22:00"
end = "06:00"
"#,
    );
    let (c, i, d) = (id(&s, "citizens"), id(&s, "intermediaries"), id(&s, "desk"));
    // Start in the repeated hour: the earlier 02:30 (CEST, 00:30 UTC).
    assert_eq!(
        s.next_opening(c, utc(2026, 10, 24, 12, 0)),
        Some(utc(2026, 10, 25, 0, 30))
    );
    assert!(!s.is_open(c, utc(2026, 10, 25, 0, 29)));
    assert!(s.is_open(c, utc(2026, 10, 25, 0, 30)));
    // End in the repeated hour: the later 02:30 (CET, 01:30 UTC). Never shortened.
    assert_eq!(
        s.state(i, utc(2026, 10, 24, 23, 0)),
        WindowState::Open {
            closes_at: Some(utc(2026, 10, 25, 1, 30))
        }
    );
    assert!(s.is_open(i, utc(2026, 10, 25, 1, 29)));
    assert!(!s.is_open(i, utc(2026, 10, 25, 1, 30)));
    // The overnight window of Saturday 24 lasts 9 real hours: 20:00 UTC -> 05:00 UTC.
    assert_eq!(
        s.state(d, utc(2026, 10, 24, 20, 0)),
        WindowState::Open {
            closes_at: Some(utc(2026, 10, 25, 5, 0))
        }
    );
    assert!(!s.is_open(d, utc(2026, 10, 24, 19, 59)));
    // And the one of the spring-forward night lasts 7 hours.
    assert_eq!(
        s.state(d, rome(2026, 3, 28, 22, 0)),
        WindowState::Open {
            closes_at: Some(utc(2026, 3, 29, 4, 0))
        }
    );
    assert_eq!(
        utc(2026, 3, 29, 4, 0) - rome(2026, 3, 28, 22, 0),
        TimeDelta::hours(7)
    );
}

#[test]
fn holidays_and_special_openings() {
    let src = format!("{INPS_BANDS}{HOLIDAYS_2026}");
    let s = compile(&src);
    let (cit, int) = (id(&s, "citizens"), id(&s, "intermediaries"));
    // Christmas 2026 is a Friday. The citizens' Dec 24 night band runs to Dec 25 08:00.
    assert!(s.is_open(cit, rome(2026, 12, 25, 7, 0)));
    assert!(!s.is_open(cit, rome(2026, 12, 25, 8, 0)));
    assert!(!s.is_open(int, rome(2026, 12, 25, 10, 0)));
    assert!(!s.is_open(cit, rome(2026, 12, 25, 20, 0)));
    assert!(!s.is_open(int, rome(2026, 12, 26, 10, 0)));
    // Next opening after Christmas: Sunday 27 08:00 for intermediaries, 16:00 for citizens.
    assert_eq!(
        s.state(int, rome(2026, 12, 25, 10, 0)),
        WindowState::Closed {
            opens_at: Some(rome(2026, 12, 27, 8, 0))
        }
    );
    assert_eq!(
        s.next_opening(cit, rome(2026, 12, 25, 10, 0)),
        Some(rome(2026, 12, 27, 16, 0))
    );
    // Easter Monday 6 April 2026 closed; Tuesday 7 normal.
    assert!(!s.is_open(int, rome(2026, 4, 6, 10, 0)));
    assert!(s.is_open(int, rome(2026, 4, 7, 10, 0)));

    // Closed for one cohort only, and a special opening on a date.
    let s = compile(
        r#"
[[windows]]
cohorts = ["intermediaries", "citizens"]
days = ["mon-fri"]
start = "08:00"
end = "16:00"
[[exceptions]]
date = "2026-06-01"
cohorts = ["intermediaries"]
closed = true
[[exceptions]]
date = "2026-06-02"
windows = [{ start = "09:00", end = "12:00", cohorts = ["citizens"] }]
[[exceptions]]
from = "2026-08-10"
to = "2026-08-21"
closed = true
"#,
    );
    let (cit, int) = (id(&s, "citizens"), id(&s, "intermediaries"));
    assert!(!s.is_open(int, rome(2026, 6, 1, 10, 0)));
    assert!(s.is_open(cit, rome(2026, 6, 1, 10, 0)));
    // June 2: citizens only 09-12 (replaces 08-16), intermediaries keep 08-16.
    assert!(!s.is_open(cit, rome(2026, 6, 2, 8, 30)));
    assert!(s.is_open(cit, rome(2026, 6, 2, 9, 0)));
    assert!(!s.is_open(cit, rome(2026, 6, 2, 12, 0)));
    assert!(s.is_open(int, rome(2026, 6, 2, 15, 0)));
    // Two closed weeks in August, inclusive range.
    assert!(!s.is_open(cit, rome(2026, 8, 21, 10, 0)));
    assert!(s.is_open(cit, rome(2026, 8, 24, 10, 0)));
    assert_eq!(
        s.next_opening(cit, rome(2026, 8, 7, 17, 0)),
        Some(rome(2026, 8, 24, 8, 0))
    );
}

#[test]
fn search_across_months_and_horizon() {
    let s = compile(
        r#"
[[exceptions]]
date = "2026-09-15"
windows = [{ start = "09:00", end = "12:00" }]
"#,
    );
    let c = id(&s, "citizens");
    assert_eq!(
        s.state(c, rome(2026, 1, 10, 9, 0)),
        WindowState::Closed {
            opens_at: Some(rome(2026, 9, 15, 9, 0))
        }
    );
    assert!(s.is_open(c, rome(2026, 9, 15, 11, 0)));
    assert_eq!(s.next_opening(c, rome(2026, 9, 15, 12, 0)), None);
    assert_eq!(
        s.state(c, rome(2026, 9, 15, 12, 0)),
        WindowState::Closed { opens_at: None }
    );
    // Extreme instants do not panic.
    assert_eq!(s.next_opening(c, DateTime::<Utc>::MAX_UTC), None);
    assert!(!s.in_grace(c, DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC));
    assert!(matches!(
        s.state(c, DateTime::<Utc>::MIN_UTC),
        WindowState::Closed { .. }
    ));
    // Beyond the 400-day horizon.
    assert_eq!(s.next_opening(c, rome(2025, 6, 1, 0, 0)), None);
}

#[test]
fn merged_windows_and_always_open() {
    let s = compile(
        r#"
[[windows]]
start = "08:00"
end = "12:00"
[[windows]]
start = "11:00"
end = "16:00"
[[windows]]
cohorts = ["desk"]
start = "00:00"
end = "24:00"
"#,
    );
    let c = id(&s, "citizens");
    assert_eq!(
        s.state(c, rome(2026, 5, 5, 9, 0)),
        WindowState::Open {
            closes_at: Some(rome(2026, 5, 5, 16, 0))
        }
    );
    assert_eq!(
        s.state(id(&s, "desk"), rome(2026, 5, 5, 9, 0)),
        WindowState::Open { closes_at: None }
    );
}

#[test]
fn grace_after_close() {
    let s = compile(INPS_BANDS);
    let int = id(&s, "intermediaries");
    let admitted = rome(2026, 3, 10, 15, 50);
    assert!(!s.in_grace(int, admitted, rome(2026, 3, 10, 15, 55))); // still open
    assert!(s.may_stay(int, admitted, rome(2026, 3, 10, 15, 55)));
    assert!(s.in_grace(int, admitted, rome(2026, 3, 10, 16, 0)));
    assert!(s.in_grace(int, admitted, rome(2026, 3, 10, 16, 29)));
    assert!(!s.in_grace(int, admitted, rome(2026, 3, 10, 16, 30)));
    assert!(!s.may_stay(int, admitted, rome(2026, 3, 10, 16, 31)));
    // admitted after the close (should not happen, but must not grant grace)
    assert!(!s.in_grace(int, rome(2026, 3, 10, 16, 5), rome(2026, 3, 10, 16, 10)));
    // grace across the DST night: citizens' band ends 08:00 CEST on 29 March
    let cit = id(&s, "citizens");
    assert!(s.in_grace(cit, utc(2026, 3, 28, 20, 0), utc(2026, 3, 29, 6, 20)));
    assert!(!s.in_grace(cit, utc(2026, 3, 28, 20, 0), utc(2026, 3, 29, 6, 30)));
    // no grace configured
    let s0 = compile(&INPS_BANDS.replace("\"30m\"", "\"0s\""));
    assert!(!s0.in_grace(int, admitted, rome(2026, 3, 10, 16, 0)));
}

#[test]
fn compile_errors_name_the_key() {
    let errs = errors(
        r#"
time_zone = "Europe/Roma"
grace = "soon"
prequeue = "48h"
prequeue_order = "random"
[[windows]]
cohorts = ["citizens", "aliens"]
days = ["mon", "fry", "sat-sun"]
start = "25:00"
end = "8am"
[[windows]]
start = "08:00"
end = "08:00"
[[windows]]
start = "8:00"
end = "24:00"
days = []
cohorts = []
[[exceptions]]
date = "2026-02-30"
closed = true
[[exceptions]]
from = "2026-12-31"
to = "2026-12-01"
closed = true
[[exceptions]]
date = "2026-12-25"
[[exceptions]]
date = "2026-12-24"
closed = true
windows = [{ start = "09:00", end = "12:00" }]
[[exceptions]]
date = "2026-12-24"
from = "2026-12-24"
to = "2026-12-24"
closed = true
"#,
    );
    let k = keys(&errs);
    for expected in [
        "time_zone",
        "grace",
        "prequeue",
        "windows[0].cohorts[1]",
        "windows[0].days[1]",
        "windows[0].start",
        "windows[0].end",
        "windows[1].end",
        "windows[2].start",
        "windows[2].days",
        "windows[2].cohorts",
        "exceptions[0].date",
        "exceptions[1].to",
        "exceptions[2]",
        "exceptions[3].windows",
        "exceptions[4]",
    ] {
        assert!(k.contains(&expected), "missing {expected} in {errs:#?}");
    }
    let unknown = errs
        .iter()
        .find(|e| e.key == "windows[0].cohorts[1]")
        .unwrap();
    assert!(unknown.reason.contains("aliens"));
    // "24:00" is accepted as an end, not as a start
    assert!(!k.contains(&"windows[2].end"));
    // unknown key rejected by serde
    assert!(toml::from_str::<ScheduleConfig>("timezone = \"UTC\"").is_err());
    assert!(toml::from_str::<ScheduleConfig>("prequeue_order = \"lottery\"").is_err());
}

#[test]
fn contradictory_exceptions() {
    let errs = errors(
        r#"
[[windows]]
start = "08:00"
end = "16:00"
[[exceptions]]
from = "2026-12-20"
to = "2026-12-31"
cohorts = ["citizens"]
closed = true
[[exceptions]]
date = "2026-12-28"
windows = [{ start = "09:00", end = "12:00", cohorts = ["intermediaries"] }]
[[exceptions]]
date = "2026-12-29"
windows = [{ start = "09:00", end = "12:00", cohorts = ["citizens", "desk"] }]
"#,
    );
    assert_eq!(keys(&errs), ["exceptions[2]"], "{errs:#?}");
    assert!(errs[0].reason.contains("exceptions[0]"));
    assert!(errs[0].reason.contains("citizens"));
    assert!(errs[0].reason.contains("2026-12-29"));
    // no windows at all
    assert_eq!(keys(&errors("grace = \"5m\"")), ["windows"]);
    // bad zone only
    let e = Schedule::compile(
        &cfg("time_zone = \"Mars/Olympus\"\n[[windows]]\nstart=\"08:00\"\nend=\"09:00\""),
        &COHORTS,
    )
    .unwrap_err();
    assert_eq!(keys(&e), ["time_zone"]);
}

#[test]
fn many_cohorts_do_not_overflow() {
    let names: Vec<String> = (0..70).map(|i| format!("c{i}")).collect();
    let c = cfg("[[windows]]\ncohorts = [\"c69\"]\nstart = \"08:00\"\nend = \"09:00\"");
    let errs = Schedule::compile(&c, &names).unwrap_err();
    assert_eq!(keys(&errs), ["cohorts"]);
}

#[test]
fn day_parsing() {
    let mut errs = Vec::new();
    assert_eq!(parse_days(&["mon-fri".into()], "d", &mut errs), 0b001_1111);
    assert_eq!(parse_days(&["fri-mon".into()], "d", &mut errs), 0b111_0001);
    assert_eq!(
        parse_days(&["Tuesday".into(), "THU".into()], "d", &mut errs),
        0b000_1010
    );
    assert!(errs.is_empty());
    assert_eq!(parse_hhmm("00:00", false), Ok(0));
    assert_eq!(parse_hhmm("23:59", false), Ok(1439));
    assert_eq!(parse_hhmm("24:00", true), Ok(1440));
    for bad in [
        "24:00", "24:01", "12:60", "1200", "12:0", " 12:00", "１2:00", "ab:cd", "",
    ] {
        assert!(parse_hhmm(bad, false).is_err(), "{bad}");
    }
}

#[test]
fn display_and_report() {
    let t = rome(2026, 3, 10, 16, 0);
    assert_eq!(
        format_local(t, Tz::Europe__Rome, Lang::It),
        "martedì 10 marzo 2026, 16:00"
    );
    assert_eq!(
        format_local(t, Tz::Europe__Rome, Lang::En),
        "Tuesday 10 March 2026, 16:00"
    );
    let bands = compile(INPS_BANDS);
    let at = rome(2026, 3, 10, 15, 50);
    let out = report(
        &[("claims", Some(&bands)), ("info", None)],
        &["intermediaries", "citizens", "nobody"],
        at,
        Tz::Europe__Rome,
    );
    assert!(
        out.contains("OPEN      closes Tuesday 10 March 2026, 16:00 CET (in 10m)"),
        "{out}"
    );
    assert!(
        out.contains("PREQUEUE  opens Tuesday 10 March 2026, 16:00 CET (in 10m)"),
        "{out}"
    );
    assert!(out.contains("nobody          unknown cohort"), "{out}");
    assert!(
        out.contains("grace 30m, prequeue 15m, order random)"),
        "{out}"
    );
    assert!(
        out.contains("gate \"info\"\n  always open (no schedule)"),
        "{out}"
    );
    let it = report_in(
        &[("claims", Some(&bands))],
        &["citizens"],
        rome(2026, 3, 10, 10, 0),
        Tz::Europe__Rome,
        Lang::It,
    );
    // extreme instants render without panicking
    let _ = report(
        &[("claims", Some(&bands))],
        &["citizens"],
        DateTime::<Utc>::MAX_UTC,
        Tz::Europe__Rome,
    );
    let _ = format_local(DateTime::<Utc>::MIN_UTC, Tz::Pacific__Kiritimati, Lang::It);
    assert!(
        it.contains("CHIUSO    apre martedì 10 marzo 2026, 16:00 CET (tra 6h 0m)"),
        "{it}"
    );
}

#[test]
fn is_open_is_cheap() {
    // Not a benchmark: a guard against accidental per-minute scanning on the hot path.
    let s = compile(&format!("{INPS_BANDS}{HOLIDAYS_2026}"));
    let c = id(&s, "citizens");
    let start = std::time::Instant::now();
    let mut n = 0;
    for k in 0..20_000 {
        n += usize::from(s.is_open(c, utc(2026, 3, 1, 0, 0) + TimeDelta::minutes(k * 7)));
    }
    assert!(n > 0);
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}
