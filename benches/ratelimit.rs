//! Cost of one rate-limit check (uncontended), keyed by session and by address.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, Ipv6Addr};

use anticamera::ratelimit::{RateLimiter, RateLimitsConfig, RequestKeys};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn config(toml_src: &str) -> RateLimitsConfig {
    toml::from_str(toml_src).expect("bench config")
}

fn bench(c: &mut Criterion) {
    // One keyed limit only (per_session), on a key that is already tracked: the README target.
    let one = RateLimiter::new(&config(
        "[per_session]\nrate = \"1000000000/s\"\nburst = 1000000\n",
    ));
    let keys = RequestKeys {
        session: Some(0xdead_beef),
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6)),
        cohort: 3,
        gate: Some(1),
    };
    c.bench_function("one keyed check (session)", |b| {
        b.iter(|| black_box(one.check(black_box(&keys))))
    });

    // Address only: includes the IPv6 /64 masking.
    let addr = RateLimiter::new(&config(
        "[per_address]\nrate = \"1000000000/s\"\nburst = 1000000\n",
    ));
    c.bench_function("one keyed check (address /64)", |b| {
        b.iter(|| black_box(addr.check(black_box(&keys))))
    });

    // All four kinds configured: the full per-request cost.
    let all = RateLimiter::new(&config(
        "[per_session]\nrate = \"1000000000/s\"\nburst = 1000000\n\
         [per_address]\nrate = \"1000000000/s\"\nburst = 1000000\n\
         [per_cohort]\nrate = \"1000000000/s\"\nburst = 1000000\n\
         [per_gate]\nrate = \"1000000000/s\"\nburst = 1000000\n",
    ));
    c.bench_function("four checks (session+address+cohort+gate)", |b| {
        b.iter(|| black_box(all.check(black_box(&keys))))
    });

    // A refused check (empty bucket): the 429 path.
    let refused = RateLimiter::new(&config("[per_session]\nrate = \"1/h\"\nburst = 1\n"));
    let _ = refused.check(&keys);
    c.bench_function("refused keyed check", |b| {
        b.iter(|| black_box(refused.check(black_box(&keys))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
