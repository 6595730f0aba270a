//! The properties the fuzz targets check, in one place: `fuzz/fuzz_targets/*.rs` run them under
//! libFuzzer and `tests/fuzz_smoke.rs` runs them in CI on generated inputs. Each takes arbitrary
//! bytes and panics when a property is broken; none may panic otherwise.

use crate::cohort::CohortId;
use crate::route::{normalize, RuleConfig, Rules};
use crate::schedule::{Calendars, Schedule, ScheduleConfig};
use crate::util::cookie::cookie_in_header;
use crate::waitroom::{Keyring, Token};

/// The `Cookie` lookup: a value found is a slice of the input.
pub fn cookie(data: &[u8]) {
    for name in ["anticamera_claims", "portal_session", "a", ""] {
        if let Some(v) = cookie_in_header(data, name) {
            assert!(v.len() <= data.len());
        }
    }
}

/// Ticket and pass decoding never accepts a token it did not sign.
pub fn pass(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(keys) = Keyring::new(1, [(1u8, b"fuzz-key-0123456789abcdef0123456789".to_vec())]) else {
        return;
    };
    assert!(Token::decode(s, &keys, 1_700_000_000_000).is_err(), "{s:?}");
}

/// The whole config parser and validator.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(s);
    }
}

/// Schedules: parse, compile (with a calendar it may name) and evaluate at an arbitrary instant
/// (the first 8 bytes).
pub fn schedule(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (t, rest) = data.split_at(8);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<ScheduleConfig>(text) else {
        return;
    };
    // A calendar the schedule may name (`calendar = "it"`): yearly, Easter and one-off dates.
    let calendars: std::collections::BTreeMap<String, crate::schedule::CalendarConfig> =
        match toml::from_str(
            "[it]\nholidays = [{ date = \"12-25\" }, { easter_offset = 1 }, \
             { date = \"2027-06-01\" }, { from = \"12-31\", to = \"01-01\" }]\n",
        ) {
            Ok(c) => c,
            Err(e) => panic!("the fuzz calendar is valid: {e}"),
        };
    let (calendars, _) = Calendars::compile(&calendars, std::path::Path::new("."));
    let Ok(s) = Schedule::compile_with(&cfg, &["citizens", "intermediaries"], &calendars) else {
        return;
    };
    let mut secs = [0u8; 8];
    secs.copy_from_slice(t);
    let secs = i64::from_le_bytes(secs) % (200 * 365 * 86_400);
    if let Some(at) = chrono::DateTime::from_timestamp(secs.abs(), 0) {
        for id in (0..2).filter_map(CohortId::from_index) {
            let _ = s.state(id, at);
            let _ = s.next_opening(id, at);
        }
    }
}

/// iCalendar holiday files: the strict reader never panics, every event it accepts is well
/// formed, and every error names a line of the input.
pub fn ics(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count().max(1);
    match crate::schedule::parse_ics(text) {
        Ok(events) => {
            for e in events {
                assert!((1..=366).contains(&e.days), "{text:?}: {e:?}");
                assert!((1..=lines).contains(&e.line), "{text:?}: {e:?}");
            }
        }
        Err(e) => assert!((1..=lines).contains(&e.line), "{text:?}: {e:?}"),
    }
}

/// Request classification: a normalized path is canonical (absolute; no empty, `.` or `..`
/// segments; no `;` parameters), and gate matching never panics.
pub fn route(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalize(s) else {
        return;
    };
    if n != "*" {
        assert!(n.starts_with('/'));
        for seg in n.trim_end_matches('/').split('/').skip(1) {
            assert!(
                !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(';'),
                "{s:?} -> {n:?}"
            );
        }
    }
    let Ok(rules) = Rules::compile(&RuleConfig {
        prefix: vec!["/claim".into(), "/api/".into()],
        glob: vec!["/servizi/*/domanda".into(), "/delega/**".into()],
        methods: vec![],
    }) else {
        return;
    };
    let _ = rules.matches(&http::Method::GET, &n);
}
