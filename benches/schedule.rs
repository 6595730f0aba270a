//! Hot-path costs of the schedule and cohort modules.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::net::IpAddr;

use anticamera::cohort::{CohortConfig, Cohorts};
use anticamera::schedule::{KeyedPermutation, Schedule, ScheduleConfig};
use anticamera::util::cookie::cookie_value;
use chrono::{TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const BANDS: &str = r#"
[[windows]]
cohorts = ["intermediaries"]
start = "08:00"
end = "16:00"
[[windows]]
cohorts = ["citizens"]
start = "16:00"
end = "08:00"
[[exceptions]]
date = "2026-12-25"
closed = true
[[exceptions]]
date = "2026-04-06"
closed = true
"#;

fn bench(c: &mut Criterion) {
    let cfg: ScheduleConfig = toml::from_str(BANDS).unwrap();
    let s = Schedule::compile(&cfg, &["citizens", "intermediaries"]).unwrap();
    let cit = s.cohort_id("citizens").unwrap();
    let now = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
    c.bench_function("schedule_is_open", |b| {
        b.iter(|| s.is_open(black_box(cit), black_box(now)))
    });
    c.bench_function("schedule_state", |b| {
        b.iter(|| s.state(black_box(cit), black_box(now)))
    });

    let p = KeyedPermutation::new(&[9; 32], 1_000_000);
    c.bench_function("keyed_permutation_apply_1e6", |b| {
        b.iter(|| p.apply(black_box(123_456)))
    });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), [b'k'; 32]).unwrap();
    let ccfg: CohortConfig = toml::from_str(
        r#"
default = "citizens"
[[matchers]]
cohort = "intermediaries"
network = ["192.0.2.0/24"]
[[matchers]]
cohort = "intermediaries"
jwt = { cookie = "jwt", claim = "role", values = ["caf"], algorithm = "HS256", key_file = "k" }
"#,
    )
    .unwrap();
    let cohorts = Cohorts::compile(&ccfg, dir.path()).unwrap();
    let claims = serde_json::json!({"role": "caf", "exp": 4_000_000_000u64});
    let tok = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&[b'k'; 32]),
    )
    .unwrap();
    let cookie = format!("a=1; b=2; jwt={tok}; c=3");
    let req = http::Request::builder()
        .uri("/x")
        .header("cookie", cookie.as_str())
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let ip: IpAddr = "198.51.100.1".parse().unwrap();
    c.bench_function("cookie_value", |b| {
        b.iter(|| cookie_value(black_box(&req.headers), "jwt"))
    });
    c.bench_function("classify_hs256_jwt", |b| {
        b.iter(|| cohorts.classify(black_box(&req), ip, ip))
    });
    let plain = http::Request::builder()
        .uri("/x")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    c.bench_function("classify_no_token", |b| {
        b.iter(|| cohorts.classify(black_box(&plain), ip, ip))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
