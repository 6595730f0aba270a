//! Gate matching on the request path: `route::normalize` and `Rules::matches`, which the proxy
//! runs for every request once a waiting room is configured. The rules mirror a portal with a
//! few gates: prefixes and globs, as in config/inps.toml.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use anticamera::route::{normalize, RuleConfig, Rules, Target};
use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;

fn gates(case_insensitive: bool) -> Vec<Rules> {
    [
        (vec!["/claim", "/api/claim/"], vec![]),
        (vec!["/account"], vec!["/servizi/*/domanda", "/delega/**"]),
        (vec!["/prenota"], vec!["/sedi/*/prenota*"]),
    ]
    .into_iter()
    .map(|(prefix, glob)| {
        Rules::compile(&RuleConfig {
            prefix: prefix.into_iter().map(String::from).collect(),
            glob: glob.into_iter().map(String::from).collect(),
            case_insensitive,
            ..Default::default()
        })
        .unwrap()
    })
    .collect()
}

/// Typical paths: static assets and public pages (no gate: every rule is tried), then gated.
const PATHS: &[&str] = &[
    "/static/js/app.3f9a1c.js",
    "/info/bonus-e-agevolazioni/index.html",
    "/servizi/isee/domanda",
    "/account/profilo",
];

fn bench(c: &mut Criterion) {
    let folding = gates(true);
    let gates = gates(false);
    let normalized: Vec<String> = PATHS.iter().map(|p| normalize(p).unwrap()).collect();
    c.bench_function("route/match 4 paths x 3 gates", |b| {
        b.iter(|| {
            let mut hits = 0;
            for p in &normalized {
                if gates.iter().any(|g| g.matches(&Method::GET, black_box(p))) {
                    hits += 1;
                }
            }
            hits
        })
    });
    // What the proxy runs per request now: the request as a `Target` (host, climbs), then
    // every gate until one catches it.
    let known: Vec<String> = vec!["portal.example.it".into()];
    c.bench_function("route/catches 4 paths x 3 gates", |b| {
        b.iter(|| {
            let mut hits = 0;
            for (raw, p) in PATHS.iter().zip(&normalized) {
                let t = Target::new(
                    &Method::GET,
                    Some("portal.example.it:443"),
                    &known,
                    black_box(p),
                    black_box(raw),
                );
                if gates.iter().any(|g| g.catches(&t)) {
                    hits += 1;
                }
            }
            hits
        })
    });
    c.bench_function("route/catches case-insensitive 4 paths x 3 gates", |b| {
        b.iter(|| {
            let mut hits = 0;
            for (raw, p) in PATHS.iter().zip(&normalized) {
                let t = Target::new(&Method::GET, None, &known, black_box(p), black_box(raw));
                if folding.iter().any(|g| g.catches(&t)) {
                    hits += 1;
                }
            }
            hits
        })
    });
    c.bench_function("route/normalize 4 paths", |b| {
        b.iter(|| {
            PATHS
                .iter()
                .map(|p| normalize(black_box(p)).map(|n| n.len()).unwrap_or(0))
                .sum::<usize>()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
