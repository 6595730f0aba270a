//! The fuzz targets' properties (fuzz/fuzz_targets/*.rs), exercised in CI without cargo-fuzz:
//! deterministic random and mutated inputs seeded from fuzz/corpus. Every decoder of bytes from
//! the network or from an operator must never panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = format!("{}/fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

/// Inputs: the corpus, then mutations of it (flips, inserts, deletes, splices), then noise.
fn inputs(target: &str, n: usize) -> Vec<Vec<u8>> {
    let seeds = corpus(target);
    let mut rng = StdRng::seed_from_u64(0x0a17_ca3e_2a00 ^ target.len() as u64);
    let mut out = seeds.clone();
    const INTERESTING: &[&[u8]] = &[
        b"%",
        b"%2f",
        b"%00",
        b"..",
        b";",
        b"=",
        b"\r\n",
        b"\n",
        b"\"",
        b"[",
        b"]",
        b"{",
        b"}",
        b"99999999999999999999",
        b"-",
        b":",
        b"*",
        b"**",
    ];
    while out.len() < n {
        let mut v = if rng.gen_bool(0.85) && !seeds.is_empty() {
            seeds[rng.gen_range(0..seeds.len())].clone()
        } else {
            (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect()
        };
        for _ in 0..rng.gen_range(1..6) {
            let len = v.len();
            match rng.gen_range(0..5) {
                0 if len > 0 => {
                    let i = rng.gen_range(0..len);
                    v[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => {
                    let i = rng.gen_range(0..=len);
                    let ins = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                    v.splice(i..i, ins.iter().copied());
                }
                2 if len > 0 => {
                    let i = rng.gen_range(0..len);
                    let j = rng.gen_range(i..=len.min(i + 8));
                    v.drain(i..j);
                }
                3 => {
                    let i = rng.gen_range(0..=len);
                    v.insert(i, rng.gen());
                }
                _ => {
                    if let Some(other) = seeds.get(rng.gen_range(0..seeds.len().max(1))) {
                        let i = rng.gen_range(0..=len);
                        let k = rng.gen_range(0..=other.len());
                        v.splice(i..i, other[..k].iter().copied());
                    }
                }
            }
        }
        out.push(v);
    }
    out
}

#[test]
fn cookie_decoder() {
    for data in inputs("cookie", 20_000) {
        for name in ["anticamera_claims", "portal_session", "a", ""] {
            if let Some(v) = anticamera::cohort::cookie_in_header(&data, name) {
                assert!(v.len() <= data.len());
            }
        }
    }
}

#[test]
fn ticket_and_pass_decoder_never_accepts_unsigned_tokens() {
    let keys = anticamera::waitroom::Keyring::new(
        1,
        [(1u8, b"fuzz-key-0123456789abcdef0123456789".to_vec())],
    )
    .unwrap();
    for data in inputs("pass", 20_000) {
        if let Ok(s) = std::str::from_utf8(&data) {
            assert!(
                anticamera::waitroom::Token::decode(s, &keys, 1_700_000_000_000).is_err(),
                "{s:?}"
            );
        }
    }
}

#[test]
fn config_parser() {
    for data in inputs("config", 3_000) {
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = anticamera::config::Config::parse(s);
        }
    }
}

#[test]
fn schedule_parser_and_evaluation() {
    for data in inputs("schedule", 3_000) {
        if data.len() < 8 {
            continue;
        }
        let (t, rest) = data.split_at(8);
        let Ok(text) = std::str::from_utf8(rest) else {
            continue;
        };
        let Ok(cfg) = toml::from_str::<anticamera::schedule::ScheduleConfig>(text) else {
            continue;
        };
        let names = ["citizens", "intermediaries"];
        let Ok(s) = anticamera::schedule::Schedule::compile(&cfg, &names) else {
            continue;
        };
        let secs = i64::from_le_bytes(t.try_into().unwrap()) % (200 * 365 * 86_400);
        if let Some(at) = chrono::DateTime::from_timestamp(secs.abs(), 0) {
            for c in 0..2 {
                if let Some(id) = anticamera::cohort::CohortId::from_index(c) {
                    let _ = s.state(id, at);
                    let _ = s.next_opening(id, at);
                }
            }
        }
    }
}

#[test]
fn request_classification() {
    let rules = anticamera::route::Rules::compile(&anticamera::route::RuleConfig {
        prefix: vec!["/claim".into(), "/api/".into()],
        glob: vec!["/servizi/*/domanda".into(), "/delega/**".into()],
        methods: vec![],
    })
    .unwrap();
    for data in inputs("route", 20_000) {
        let Ok(s) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(n) = anticamera::route::normalize(s) {
            if n != "*" {
                assert!(n.starts_with('/'));
                for seg in n.trim_end_matches('/').split('/').skip(1) {
                    assert!(
                        !seg.is_empty() && seg != "." && seg != ".." && !seg.contains(';'),
                        "{s:?} -> {n:?}"
                    );
                }
            }
            let _ = rules.matches(&http::Method::GET, &n);
        }
    }
}
