//! Calendars: Easter, yearly / one-off / range / iCalendar dates, holidays in a schedule (the
//! overnight band of the eve, across a DST change), and the errors.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::TimeZone;

use super::ics;
use super::*;

const COHORTS: [&str; 2] = ["citizens", "intermediaries"];

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn rome(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Tz::Europe__Rome
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// `[calendars]` from TOML, compiled against `base` (for `ics`).
fn calendars_in(src: &str, base: &Path) -> (Calendars, Vec<FieldErrorKey>) {
    let cfg: BTreeMap<String, CalendarConfig> = toml::from_str(src).unwrap();
    let (c, errs) = Calendars::compile(&cfg, base);
    (c, errs.into_iter().map(|e| (e.key, e.reason)).collect())
}

type FieldErrorKey = (String, String);

fn calendars(src: &str) -> Calendars {
    let (c, errs) = calendars_in(src, Path::new("."));
    assert!(errs.is_empty(), "{errs:?}");
    c
}

fn config_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
}

/// Easter Sunday 2000–2040, from published tables.
const EASTER: [(i32, u32, u32); 41] = [
    (2000, 4, 23),
    (2001, 4, 15),
    (2002, 3, 31),
    (2003, 4, 20),
    (2004, 4, 11),
    (2005, 3, 27),
    (2006, 4, 16),
    (2007, 4, 8),
    (2008, 3, 23),
    (2009, 4, 12),
    (2010, 4, 4),
    (2011, 4, 24),
    (2012, 4, 8),
    (2013, 3, 31),
    (2014, 4, 20),
    (2015, 4, 5),
    (2016, 3, 27),
    (2017, 4, 16),
    (2018, 4, 1),
    (2019, 4, 21),
    (2020, 4, 12),
    (2021, 4, 4),
    (2022, 4, 17),
    (2023, 4, 9),
    (2024, 3, 31),
    (2025, 4, 20),
    (2026, 4, 5),
    (2027, 3, 28),
    (2028, 4, 16),
    (2029, 4, 1),
    (2030, 4, 21),
    (2031, 4, 13),
    (2032, 3, 28),
    (2033, 4, 17),
    (2034, 4, 9),
    (2035, 3, 25),
    (2036, 4, 13),
    (2037, 4, 5),
    (2038, 4, 25),
    (2039, 4, 10),
    (2040, 4, 1),
];

#[test]
fn easter_sunday_matches_the_tables() {
    for (y, m, d) in EASTER {
        assert_eq!(easter_sunday(y), Some(date(y, m, d)), "{y}");
    }
    // The extremes of the Gregorian range: 22 March (1818, 2285) and 25 April (1943, 2038).
    assert_eq!(easter_sunday(1818), Some(date(1818, 3, 22)));
    assert_eq!(easter_sunday(2285), Some(date(2285, 3, 22)));
    assert_eq!(easter_sunday(1943), Some(date(1943, 4, 25)));
    for y in 1583..=4099 {
        let e = easter_sunday(y).unwrap();
        assert_eq!(e.weekday(), chrono::Weekday::Sun, "{y}");
        assert!(e >= date(y, 3, 22) && e <= date(y, 4, 25), "{y}: {e}");
    }
    assert_eq!(easter_sunday(1582), None);
    assert_eq!(easter_sunday(-5), None);
}

const IT: &str = r#"
[it]
time_zone = "Europe/Rome"
holidays = [
  { date = "01-01", name = "Capodanno" },
  { easter_offset = 1, name = "Pasquetta" },
  { date = "12-25", name = "Natale" },
  { date = "2027-06-01" },
  { from = "2028-08-10", to = "2028-08-12", name = "Chiusura estiva" },
  { from = "12-31", to = "01-02", name = "A cavallo" },
  { date = "02-29", name = "Bisestile" },
  { from = "02-28", to = "03-01", name = "Fine febbraio" },
]
"#;

#[test]
fn yearly_easter_one_off_and_range_dates() {
    let c = calendars(IT);
    let it = c.get("it").unwrap();
    for y in [1999, 2026, 2027, 2031, 2100] {
        assert_eq!(it.holiday(date(y, 12, 25)), Some("Natale"), "{y}");
        assert_eq!(it.holiday(date(y, 1, 1)), Some("Capodanno"), "{y}");
        assert!(!it.is_holiday(date(y, 12, 24)), "{y}");
    }
    for (y, m, d) in EASTER {
        let monday = date(y, m, d).succ_opt().unwrap();
        assert_eq!(it.holiday(monday), Some("Pasquetta"), "{y}");
        assert!(
            !it.is_holiday(date(y, m, d)),
            "Easter Sunday itself is not listed"
        );
    }
    assert!(it.is_holiday(date(2027, 3, 29)));
    // Offsets reaching into the year before Easter's, and the largest after.
    let far = calendars("[x]\nholidays = [{ easter_offset = -120 }, { easter_offset = 120 }]\n");
    let far = far.get("x").unwrap();
    for (y, m, d) in EASTER {
        let e = date(y, m, d);
        assert!(far.is_holiday(e - TimeDelta::days(120)), "{y}");
        assert!(far.is_holiday(e + TimeDelta::days(120)), "{y}");
        assert!(!far.is_holiday(e - TimeDelta::days(119)), "{y}");
    }
    // One-off: only that year; unnamed.
    assert_eq!(it.holiday(date(2027, 6, 1)), Some(""));
    assert!(!it.is_holiday(date(2028, 6, 1)));
    // One-off range, inclusive.
    assert!(!it.is_holiday(date(2028, 8, 9)));
    for d in 10..=12 {
        assert_eq!(it.holiday(date(2028, 8, d)), Some("Chiusura estiva"));
    }
    assert!(!it.is_holiday(date(2028, 8, 13)));
    assert!(!it.is_holiday(date(2027, 8, 11)));
    // Yearly range across the new year: 31 Dec, 1 Jan (named by its own entry), 2 Jan.
    assert_eq!(it.holiday(date(2030, 12, 31)), Some("A cavallo"));
    assert_eq!(it.holiday(date(2031, 1, 2)), Some("A cavallo"));
    assert!(!it.is_holiday(date(2031, 1, 3)));
    assert!(!it.is_holiday(date(2030, 12, 30)));
    // 29 February: leap years only (named by its own entry, listed first).
    assert_eq!(it.holiday(date(2028, 2, 29)), Some("Bisestile"));
    // A yearly range over the end of February: the same dates in every year, 29th or not.
    for y in [2027, 2028] {
        assert_eq!(it.holiday(date(y, 2, 28)), Some("Fine febbraio"));
        assert_eq!(it.holiday(date(y, 3, 1)), Some("Fine febbraio"));
        assert!(!it.is_holiday(date(y, 3, 2)) && !it.is_holiday(date(y, 2, 27)));
    }
    assert_eq!(it.time_zone(), Some(Tz::Europe__Rome));
    assert_eq!(c.names(), vec!["it"]);
}

#[test]
fn holiday_entries_are_checked_when_read() {
    for (src, expect) in [
        (r#"holidays = [{ date = "13-01" }]"#, "is not a date"),
        (r#"holidays = [{ date = "02-30" }]"#, "is not a date"),
        (r#"holidays = [{ date = "2027-02-29" }]"#, "is not a date"),
        (r#"holidays = [{ date = "25/12" }]"#, "is not a date"),
        (
            r#"holidays = [{ date = "12-25", easter_offset = 1 }]"#,
            "exactly one of",
        ),
        (r#"holidays = [{ name = "x" }]"#, "exactly one of"),
        (r#"holidays = [{ from = "12-24" }]"#, "exactly one of"),
        (
            r#"holidays = [{ from = "2027-12-24", to = "12-26" }]"#,
            "both",
        ),
        (
            r#"holidays = [{ from = "2027-12-26", to = "2027-12-24" }]"#,
            "before it starts",
        ),
        (
            r#"holidays = [{ from = "2027-01-01", to = "2029-01-01" }]"#,
            "longer than",
        ),
        (r#"holidays = [{ easter_offset = 400 }]"#, "at most 120"),
        (r#"holidays = [{ dates = "12-25" }]"#, "unknown field"),
    ] {
        let err = toml::from_str::<CalendarConfig>(src)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{src}: {err}");
    }
}

#[test]
fn calendar_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.ics"),
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nRRULE:FREQ=MONTHLY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .unwrap();
    let (c, errs) = calendars_in(
        r#"
[a]
time_zone = "Mars/Olympus"
holidays = [{ date = "12-25" }]
[b]
ics = "missing.ics"
[c]
ics = "bad.ics"
[empty]
["bad name"]
holidays = [{ date = "12-25" }]
"#,
        dir.path(),
    );
    let find = |k: &str| {
        errs.iter()
            .find(|(key, _)| key == k)
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("{k} not in {errs:?}"))
    };
    assert!(find("a.time_zone").contains("IANA"));
    assert!(find("b.ics").contains("missing.ics") && find("b.ics").contains("cannot read"));
    let c_err = find("c.ics");
    assert!(
        c_err.contains("bad.ics:5:") && c_err.contains("FREQ=MONTHLY"),
        "{c_err}"
    );
    assert!(find("empty").contains("empty calendar"));
    assert!(find("bad name").contains("letters"));
    // The good part of a broken calendar is still there.
    assert!(c.get("a").unwrap().is_holiday(date(2027, 12, 25)));
}

/// The claims bands with the Italian calendar (Easter Sunday and Monday).
const BANDS: &str = r#"
time_zone = "Europe/Rome"
grace = "0s"
calendar = "it"

[[windows]]
cohorts = ["intermediaries"]
start = "08:00"
end = "16:00"

[[windows]]
cohorts = ["citizens"]
start = "16:00"
end = "08:00"
"#;

fn bands_with(calendar_src: &str, extra: &str) -> Schedule {
    let cals = calendars(calendar_src);
    let cfg: ScheduleConfig = toml::from_str(&format!("{BANDS}{extra}")).unwrap();
    Schedule::compile_with(&cfg, &COHORTS, &cals).unwrap()
}

#[test]
fn a_holiday_closes_every_cohort_but_the_eves_band_runs_to_its_end() {
    let s = bands_with(IT, "");
    let (cit, int) = (
        s.cohort_id("citizens").unwrap(),
        s.cohort_id("intermediaries").unwrap(),
    );
    // Christmas Eve 2031 (a Wednesday): citizens from 16:00 to 08:00 on the 25th.
    assert_eq!(
        s.state(cit, rome(2031, 12, 24, 20, 0)),
        WindowState::Open {
            closes_at: Some(rome(2031, 12, 25, 8, 0))
        }
    );
    assert!(s.is_open(cit, rome(2031, 12, 25, 7, 59)));
    // Christmas Day: nobody, until the 26th.
    for h in [8, 10, 15, 16, 20, 23] {
        assert!(!s.is_open(cit, rome(2031, 12, 25, h, 0)), "{h}");
        assert!(!s.is_open(int, rome(2031, 12, 25, h, 0)), "{h}");
    }
    assert_eq!(
        s.next_opening(int, rome(2031, 12, 25, 10, 0)),
        Some(rome(2031, 12, 26, 8, 0))
    );
    assert_eq!(
        s.next_opening(cit, rome(2031, 12, 25, 10, 0)),
        Some(rome(2031, 12, 26, 16, 0))
    );
    // The day after is an ordinary day.
    assert!(s.is_open(int, rome(2031, 12, 26, 10, 0)));
    assert!(s.calendar().is_some_and(|c| c.name() == "it"));
}

#[test]
fn holiday_after_the_spring_forward_night() {
    // 2027: Easter Sunday is 28 March, the night clocks go 02:00 -> 03:00; Easter Monday 29
    // March is a holiday. Calendar with both Easter days.
    let cal = r#"
[it]
holidays = [{ easter_offset = 0 }, { easter_offset = 1 }]
"#;
    let s = bands_with(cal, "");
    let (cit, int) = (
        s.cohort_id("citizens").unwrap(),
        s.cohort_id("intermediaries").unwrap(),
    );
    // Saturday 27 March 16:00 CET -> Sunday 28 March 08:00 CEST: the band of the eve, 15 real
    // hours across the gap, runs to its end on the holiday.
    let sat = rome(2027, 3, 27, 16, 0);
    let sun_8 = rome(2027, 3, 28, 8, 0);
    assert_eq!((sun_8 - sat).num_hours(), 15);
    assert_eq!(
        s.state(cit, rome(2027, 3, 28, 1, 30)),
        WindowState::Open {
            closes_at: Some(sun_8)
        }
    );
    assert!(s.is_open(cit, rome(2027, 3, 28, 7, 59)));
    assert!(!s.is_open(cit, sun_8));
    // Sunday and Monday bands are gone for both cohorts; Tuesday is ordinary.
    assert_eq!(s.next_opening(cit, sun_8), Some(rome(2027, 3, 30, 16, 0)));
    assert_eq!(s.next_opening(int, sun_8), Some(rome(2027, 3, 30, 8, 0)));
    assert!(!s.is_open(int, rome(2027, 3, 29, 10, 0)));
}

#[test]
fn gate_exceptions_keep_their_meaning_beside_the_calendar() {
    // A special opening on a holiday (the gate's own, more specific word) opens; a closed
    // exception on an ordinary day closes.
    let s = bands_with(
        IT,
        r#"
[[exceptions]]
date = "2031-12-25"
windows = [{ cohorts = ["intermediaries"], start = "10:00", end = "12:00" }]

[[exceptions]]
date = "2031-12-29"
closed = true
"#,
    );
    let (cit, int) = (
        s.cohort_id("citizens").unwrap(),
        s.cohort_id("intermediaries").unwrap(),
    );
    assert!(s.is_open(int, rome(2031, 12, 25, 11, 0)));
    assert!(
        !s.is_open(cit, rome(2031, 12, 25, 17, 0)),
        "still a holiday"
    );
    assert!(!s.is_open(int, rome(2031, 12, 29, 11, 0)));
}

#[test]
fn unknown_calendar_and_zone_mismatch_are_errors() {
    let cfg: ScheduleConfig = toml::from_str(BANDS).unwrap();
    let errs = Schedule::compile(&cfg, &COHORTS).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key == "calendar" && e.reason.contains("unknown calendar \"it\"")),
        "{errs:?}"
    );
    let other = calendars("[uk]\nholidays = [{ date = \"12-25\" }]\n");
    let errs = Schedule::compile_with(&cfg, &COHORTS, &other).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key == "calendar" && e.reason.contains("declared: uk")),
        "{errs:?}"
    );
    let london =
        calendars("[it]\ntime_zone = \"Europe/London\"\nholidays = [{ date = \"12-25\" }]\n");
    let errs = Schedule::compile_with(&cfg, &COHORTS, &london).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key == "calendar" && e.reason.contains("Europe/London")),
        "{errs:?}"
    );
    // No zone in the calendar: the schedule's zone.
    let any = calendars("[it]\nholidays = [{ date = \"12-25\" }]\n");
    assert!(Schedule::compile_with(&cfg, &COHORTS, &any).is_ok());
}

fn ics_ok(text: &str) -> Vec<ics::Event> {
    ics::parse(text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn ics_err(text: &str) -> ics::IcsError {
    ics::parse(text).unwrap_err()
}

fn wrap(events: &str) -> String {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{events}END:VCALENDAR\r\n")
}

#[test]
fn ics_all_day_events_ranges_and_yearly_rules() {
    let ev = ics_ok(&wrap(
        "BEGIN:VEVENT\r\nUID:1\r\nDTSTART;VALUE=DATE:20270601\r\nSUMMARY:Festa\\, speciale\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20280810\r\nDTEND;VALUE=DATE:20280813\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261225\r\nDTEND;VALUE=DATE:20261226\r\n\
         RRULE:FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=25\r\nSUMMARY:Nat\r\n ale\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270815\r\nRRULE:FREQ=YEARLY;UNTIL=20290815\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20300101\r\nRRULE:FREQ=YEARLY;COUNT=2\r\nEND:VEVENT\r\n",
    ));
    assert_eq!(ev.len(), 5);
    assert_eq!(ev[0].summary.as_deref(), Some("Festa, speciale"));
    assert_eq!(ev[0].line, 4);
    assert_eq!(ev[1].days, 3);
    assert_eq!(ev[2].summary.as_deref(), Some("Natale"), "folded line");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.ics"), wrap(
        "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270601\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20280810\r\nDTEND;VALUE=DATE:20280813\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261225\r\nRRULE:FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=25\r\nSUMMARY:Natale\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270815\r\nRRULE:FREQ=YEARLY;UNTIL=20290815\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20300301\r\nRRULE:FREQ=YEARLY;COUNT=2\r\nEND:VEVENT\r\n\
         BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261231\r\nDTEND;VALUE=DATE:20270102\r\nRRULE:FREQ=YEARLY\r\nEND:VEVENT\r\n",
    )).unwrap();
    let (c, errs) = calendars_in("[x]\nics = \"c.ics\"\n", dir.path());
    assert!(errs.is_empty(), "{errs:?}");
    let x = c.get("x").unwrap();
    assert!(x.is_holiday(date(2027, 6, 1)) && !x.is_holiday(date(2026, 6, 1)));
    assert!(
        x.is_holiday(date(2028, 8, 12)) && !x.is_holiday(date(2028, 8, 13)),
        "DTEND is exclusive"
    );
    // Yearly from DTSTART on, not before.
    assert_eq!(x.holiday(date(2040, 12, 25)), Some("Natale"));
    assert!(!x.is_holiday(date(2025, 12, 25)));
    // UNTIL and COUNT bound it.
    assert!(x.is_holiday(date(2029, 8, 15)) && !x.is_holiday(date(2030, 8, 15)));
    assert!(!x.is_holiday(date(2026, 8, 15)));
    assert!(x.is_holiday(date(2030, 3, 1)) && x.is_holiday(date(2031, 3, 1)));
    assert!(!x.is_holiday(date(2032, 3, 1)) && !x.is_holiday(date(2029, 3, 1)));
    // A yearly two-day event across the new year.
    assert!(x.is_holiday(date(2035, 12, 31)) && x.is_holiday(date(2036, 1, 1)));
    assert!(!x.is_holiday(date(2036, 1, 2)) && !x.is_holiday(date(2026, 1, 1)));
}

#[test]
fn ics_unsupported_constructs_are_errors_with_their_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "BEGIN:VEVENT\r\nDTSTART:20270101T100000Z\r\nEND:VEVENT\r\n",
            5,
            "only all-day",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;TZID=Europe/Rome:20270101T100000\r\nEND:VEVENT\r\n",
            5,
            "only all-day",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nRRULE:FREQ=MONTHLY\r\nEND:VEVENT\r\n",
            6,
            "only FREQ=YEARLY",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nRRULE:FREQ=YEARLY;BYDAY=MO\r\nEND:VEVENT\r\n",
            6,
            "BYDAY",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nRRULE:FREQ=YEARLY;BYMONTH=2\r\nEND:VEVENT\r\n",
            6,
            "differs from DTSTART",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nRRULE:FREQ=YEARLY;INTERVAL=2\r\nEND:VEVENT\r\n",
            6,
            "INTERVAL",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nEXDATE;VALUE=DATE:20280101\r\nEND:VEVENT\r\n",
            6,
            "EXDATE is not supported",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nDURATION:P1D\r\nEND:VEVENT\r\n",
            6,
            "DURATION is not supported",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n",
            6,
            "CANCELLED",
        ),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270102\r\nDTEND;VALUE=DATE:20270102\r\nEND:VEVENT\r\n",
            6,
            "not after DTSTART",
        ),
        ("BEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\n", 4, "without DTSTART"),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nBEGIN:VALARM\r\n",
            6,
            "VALARM",
        ),
        ("BEGIN:VTODO\r\n", 4, "only VEVENT"),
        ("BEGIN:VTIMEZONE\r\n", 4, "only VEVENT"),
        (
            "BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20271301\r\nEND:VEVENT\r\n",
            5,
            "not a date",
        ),
        ("garbage\r\n", 4, "NAME:VALUE"),
    ];
    for (events, line, expect) in cases {
        let e = ics_err(&wrap(events));
        assert_eq!(e.line, *line, "{events}: {e:?}");
        assert!(e.reason.contains(expect), "{events}: {e:?}");
    }
    assert!(ics_err("").reason.contains("BEGIN:VCALENDAR"));
    assert!(ics_err("BEGIN:VEVENT\r\n")
        .reason
        .contains("start with BEGIN:VCALENDAR"));
    assert!(ics_err("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n")
        .reason
        .contains("ends before END:VCALENDAR"));
    assert!(
        ics_err("BEGIN:VCALENDAR\r\nCALSCALE:JULIAN\r\nEND:VCALENDAR\r\n")
            .reason
            .contains("GREGORIAN")
    );
    assert_eq!(ics_ok("BEGIN:VCALENDAR\nEND:VCALENDAR\n"), vec![]);
}

/// The shipped example `config/calendars/it.ics` and `[calendars.it]` of `config/inps.toml`
/// agree on every day of the years the example lists Easter for.
#[test]
fn shipped_ics_example_agrees_with_inps_toml() {
    let inps = std::fs::read_to_string(config_dir().join("inps.toml")).unwrap();
    let cfg = crate::config::Config::parse_for_check_in(&inps, config_dir(), false).unwrap();
    let toml_it = cfg.calendar_set().get("it").unwrap();
    let (c, errs) = calendars_in("[it]\nics = \"calendars/it.ics\"\n", config_dir());
    assert!(errs.is_empty(), "{errs:?}");
    let ics_it = c.get("it").unwrap();
    let mut d = date(2026, 1, 1);
    let mut holidays = 0;
    while d <= date(2040, 12, 31) {
        assert_eq!(toml_it.is_holiday(d), ics_it.is_holiday(d), "{d}");
        holidays += usize::from(toml_it.is_holiday(d));
        d = d.succ_opt().unwrap();
    }
    // 13 a year, but Easter Sunday 2038 is 25 April.
    assert_eq!(holidays, 13 * 15 - 1);
}

/// The `ics` fuzz property on the shipped example and on mutations of it (the fuzz smoke
/// test's approach, without its corpus).
#[test]
fn ics_reader_never_panics_on_mutations() {
    let seed = std::fs::read(config_dir().join("calendars/it.ics")).unwrap();
    crate::fuzz_props::ics(&seed);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const BITS: &[&[u8]] = &[
        b"\r\n",
        b"\n ",
        b":",
        b";",
        b"=",
        b"\"",
        b"VALUE=DATE",
        b"RRULE:FREQ=YEARLY;COUNT=",
        b"99999999",
        b"0229",
        b"BEGIN:VEVENT",
        b"END:VEVENT",
        b"DTEND;VALUE=DATE:",
    ];
    for _ in 0..3000 {
        let mut v = seed.clone();
        for _ in 0..(1 + next() % 6) {
            let len = v.len().max(1);
            let at = (next() as usize) % len;
            match next() % 4 {
                0 if !v.is_empty() => v[at] ^= 1 << (next() % 8),
                1 => {
                    let bit = BITS[(next() as usize) % BITS.len()];
                    v.splice(at.min(v.len())..at.min(v.len()), bit.iter().copied());
                }
                2 if !v.is_empty() => {
                    let end = (at + (next() as usize) % 40).min(v.len());
                    v.drain(at.min(end)..end);
                }
                _ => v.truncate(at),
            }
        }
        crate::fuzz_props::ics(&v);
    }
}
