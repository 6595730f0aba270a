//! The fuzz targets' properties (fuzz/fuzz_targets/*.rs), exercised in CI without cargo-fuzz:
//! deterministic random and mutated inputs seeded from fuzz/corpus. Every decoder of bytes from
//! the network or from an operator must never panic.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anticamera::fuzz_props;
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
    inputs("cookie", 20_000)
        .iter()
        .for_each(|d| fuzz_props::cookie(d));
}

#[test]
fn ticket_and_pass_decoder_never_accepts_unsigned_tokens() {
    inputs("pass", 20_000)
        .iter()
        .for_each(|d| fuzz_props::pass(d));
}

#[test]
fn config_parser() {
    inputs("config", 3_000)
        .iter()
        .for_each(|d| fuzz_props::config(d));
}

#[test]
fn schedule_parser_and_evaluation() {
    inputs("schedule", 3_000)
        .iter()
        .for_each(|d| fuzz_props::schedule(d));
}

#[test]
fn request_classification() {
    inputs("route", 20_000)
        .iter()
        .for_each(|d| fuzz_props::route(d));
}

#[test]
fn ics_holiday_calendar_reader() {
    inputs("ics", 3_000).iter().for_each(|d| fuzz_props::ics(d));
}
