//! The properties the fuzz targets check, in one place: `fuzz/fuzz_targets/*.rs` run them under
//! libFuzzer and `tests/fuzz_smoke.rs` runs them in CI on generated inputs. Each takes arbitrary
//! bytes and panics when a property is broken; none may panic otherwise.

use http::Method;

use crate::cohort::CohortId;
use crate::route::{self, normalize, RuleConfig, Rules, Target};
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

/// Request classification:
/// - a normalized path is canonical (absolute; no empty, `.` or `..` segments; no `;`
///   parameters) and normalizing it again changes nothing (when it holds no `%`);
/// - the spellings of a path (`//`, `/./`, `/x/..`, `;params`, percent-encoding) normalize to
///   the same path and meet the same gates; one that climbs out of a gated path with `..`
///   (however spelled) still meets its gate;
/// - a case-insensitive gate catches a path exactly when it catches the path with the case of
///   any ASCII letters changed (differential: variant against original);
/// - host names: gates scoped to a host catch its spellings (case, trailing dot, port) alike;
/// - nothing panics.
pub fn route(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = route::host_of(s);
    let _ = route::canonical_host(s);
    let (sensitive, folding) = match (route_rules(false), route_rules(true)) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("the fuzz rules compile"),
    };
    let other = ["other.example.it".to_string()];
    let known = route::known_hosts([sensitive.hosts(), &other[..]]);
    // What a GET of the raw path `raw` on `host` meets: the normalized path, or None if refused.
    let catches = |r: &Rules, host: Option<&str>, raw: &str| -> Option<bool> {
        let n = normalize(raw).ok()?;
        Some(r.catches(&Target::new(&Method::GET, host, &known, &n, raw)))
    };
    // A few deterministic choices drawn from the input.
    let mut seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut pick = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    let host = [
        "portal.example.it",
        "PORTAL.Example.it.",
        "portal.example.it:443",
        "other.example.it",
        "x.test",
    ][pick(5)];
    // Any input: ASCII case changes never change what a case-insensitive gate catches.
    let flipped = flip_case(s, &mut pick);
    assert_eq!(
        catches(&folding, Some(host), s),
        catches(&folding, Some(host), &flipped),
        "{s:?} vs {flipped:?}"
    );
    let Ok(n) = normalize(s) else {
        return;
    };
    if n == "*" {
        return;
    }
    assert!(n.starts_with('/'));
    for seg in n.trim_end_matches('/').split('/').skip(1) {
        assert!(
            !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(';'),
            "{s:?} -> {n:?}"
        );
    }
    for r in [&sensitive, &folding] {
        let _ = r.matches(&Method::GET, &n);
        // Host spellings: the gate is scoped to portal.example.it, and the config also names
        // other.example.it (never caught); a host named nowhere meets the gate.
        let on = |h| catches(r, Some(h), s);
        assert_eq!(
            on("portal.example.it"),
            on("PORTAL.example.IT.:8443"),
            "{s:?}"
        );
        assert_eq!(on("portal.example.it"), on("unnamed.example"), "{s:?}");
        assert_eq!(on("other.example.it"), Some(false), "{s:?}");
        assert_eq!(on("Other.Example.IT.:80"), Some(false), "{s:?}");
    }
    if n.contains('%') {
        return; // `%25` decoded to `%`: the normalized path is not a spelling of itself
    }
    assert_eq!(normalize(&n).as_deref(), Ok(n.as_str()), "{s:?}");
    let slashes: Vec<usize> = n.match_indices('/').map(|(i, _)| i).collect();
    let at = slashes[pick(slashes.len())];
    let (head, tail) = n.split_at(at);
    let mut variants = vec![format!("{head}/{tail}"), format!("{head}/.{tail}")];
    if at > 0 {
        variants.push(format!("{head};jsessionid=1{tail}"));
        variants.push(format!("{head}/zz/..{tail}"));
    }
    if n.len() > 1 {
        // Not the leading `/`: `%2F…` is no longer an absolute path.
        variants.push(percent_encode_one(&n, 1 + pick(n.len() - 1)));
    }
    if !n.ends_with('/') && n != "/" {
        variants.push(format!("{n};p=1"));
    }
    let base_host = Some("portal.example.it");
    for r in [&sensitive, &folding] {
        let caught = catches(r, base_host, &n);
        for v in &variants {
            assert_eq!(normalize(v).as_deref(), Ok(n.as_str()), "{n:?} as {v:?}");
            let got = catches(r, base_host, v);
            if v.contains("..") {
                // Climbing through a segment may add a gate, never remove one.
                assert!(got >= caught, "{n:?} as {v:?}");
            } else {
                assert_eq!(got, caught, "{n:?} as {v:?}");
            }
        }
        if caught == Some(true) && n != "/" {
            let out = n.trim_end_matches('/');
            for climb in [
                "/../elsewhere",
                "/..;/elsewhere",
                "/%2e%2e/elsewhere",
                "/..%2Felsewhere",
            ] {
                let v = format!("{out}{climb}");
                assert_eq!(catches(r, base_host, &v), Some(true), "{n:?} as {v:?}");
            }
        }
    }
    // The same path in another case: what a case-insensitive gate catches does not change.
    let upper = flip_case(&n, &mut pick);
    assert_eq!(
        catches(&folding, base_host, &n),
        catches(&folding, base_host, &upper),
        "{n:?} vs {upper:?}"
    );
}

/// The fuzz gates: prefixes and globs with letters to fold, scoped to one host.
fn route_rules(case_insensitive: bool) -> Option<Rules> {
    Rules::compile(&RuleConfig {
        prefix: vec!["/claim".into(), "/api/".into(), "/Account".into()],
        glob: vec![
            "/servizi/*/domanda".into(),
            "/delega/**".into(),
            "/s*/x*".into(),
        ],
        methods: vec![],
        hosts: vec!["portal.example.it".into()],
        case_insensitive,
    })
    .ok()
}

/// `s` with the case of some ASCII letters changed (chosen by `pick`).
fn flip_case(s: &str, pick: &mut impl FnMut(usize) -> usize) -> String {
    s.chars()
        .map(|c| match (c.is_ascii_alphabetic(), pick(2)) {
            (true, 0) if c.is_ascii_lowercase() => c.to_ascii_uppercase(),
            (true, 0) => c.to_ascii_lowercase(),
            _ => c,
        })
        .collect()
}

/// `s` with the character holding its byte `i` percent-encoded (`%XX` per UTF-8 byte).
fn percent_encode_one(s: &str, i: usize) -> String {
    let mut out = String::with_capacity(s.len() + 12);
    for (j, c) in s.char_indices() {
        if (j..j + c.len_utf8()).contains(&i) {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}
