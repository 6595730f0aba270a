//! Address spray against `per_address` (issue 16): a sprayer sends from 10⁷ addresses it never
//! repeats, at a sustained 100 000 new addresses per second, while every 1 000 spray requests a
//! newcomer from a prefix nobody has touched sends its first request. The limiter runs
//! in-process on a virtual clock (`governor`'s `FakeRelativeClock`, advanced 10 µs per spray
//! request), so the rate is exact and the run takes seconds; the limiter only sees its clock.
//!
//!   cargo bench --bench spray                      # every scenario, each in its own process
//!   cargo bench --bench spray -- v6-one32          # one scenario
//!   cargo bench --bench spray -- bytes-per-key     # RSS growth over 10⁶ keys / 10⁶
//!
//! Scenarios: `v6-one32` (random /64s inside one /32), `v6-few48` (random /64s inside four
//! /48s), `v6-random` (fully random addresses), `v4-random` (random IPv4 addresses), `v4-few24`
//! (random addresses inside four /24s). Config: `per_address = { rate = "5/s", burst = 10 }`,
//! every other `[rate_limits]` key at its default (`max_keys` = 1 000 000).
//!
//! Prints, every 10⁶ spray requests: virtual and wall time, resident memory, tracked keys, the
//! sprayer's allowed rate and the newcomers' first-request success. (Under `cargo test` it runs a
//! small version, to keep the suite fast.)
// Benches are test code (they may unwrap).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anticamera::ratelimit::{RateLimiter, RateLimitsConfig, RequestKeys};
use governor::clock::FakeRelativeClock;
use rand::{Rng, SeedableRng};

const SCENARIOS: [&str; 5] = ["v6-one32", "v6-few48", "v6-random", "v4-random", "v4-few24"];
/// Virtual time between two spray requests: 100 000 new addresses a second.
const STEP: Duration = Duration::from_micros(10);
/// A newcomer every this many spray requests.
const NEWCOMER_EVERY: u64 = 1_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn keys(addr: IpAddr) -> RequestKeys {
    RequestKeys {
        session: None,
        addr,
        cohort: 0,
        gate: None,
    }
}

/// The sprayer's next address. Never inside the newcomers' ranges (3f00::/8 and 100.64.0.0/10).
fn spray_addr(scenario: &str, rng: &mut impl Rng) -> IpAddr {
    match scenario {
        "v6-one32" => IpAddr::V6(Ipv6Addr::from(
            0x2a01_0db8u128 << 96 | rng.gen::<u128>() >> 32,
        )),
        "v6-few48" => {
            let net = 0x2a01_0db8_0000u128 | rng.gen_range(0..4u128);
            IpAddr::V6(Ipv6Addr::from(net << 80 | rng.gen::<u128>() >> 48))
        }
        "v6-random" => loop {
            let a = Ipv6Addr::from(rng.gen::<u128>());
            if a.octets()[0] != 0x3f && a.to_ipv4_mapped().is_none() {
                return IpAddr::V6(a);
            }
        },
        "v4-random" => loop {
            let a = rng.gen::<u32>();
            if a >> 22 != (100 << 2 | 1) {
                return IpAddr::V4(Ipv4Addr::from(a));
            }
        },
        "v4-few24" => {
            let nets = [[192, 0, 2], [198, 51, 100], [203, 0, 113], [198, 18, 0]];
            let [a, b, c] = nets[rng.gen_range(0..4)];
            IpAddr::V4(Ipv4Addr::new(a, b, c, rng.gen()))
        }
        other => panic!("unknown scenario {other}; one of {SCENARIOS:?} or bytes-per-key"),
    }
}

/// Newcomer `i`, from a prefix no one has used: its own /32 inside 3f00::/8 for IPv6, its own
/// /24 inside 100.64.0.0/10 for IPv4.
fn newcomer_addr(scenario: &str, i: u64, rng: &mut impl Rng) -> IpAddr {
    if scenario.starts_with("v6") {
        let net = 0x3f00_0000u128 | u128::from(i as u32 & 0x00ff_ffff);
        IpAddr::V6(Ipv6Addr::from(net << 96 | rng.gen::<u128>() >> 32))
    } else {
        let net = (100u32 << 24 | 64 << 16) + ((i as u32 & 0x3fff) << 8);
        IpAddr::V4(Ipv4Addr::from(net | rng.gen_range(0..256u32)))
    }
}

fn limiter(clock: &FakeRelativeClock) -> RateLimiter<FakeRelativeClock> {
    let cfg: RateLimitsConfig =
        toml::from_str("per_address = { rate = \"5/s\", burst = 10 }\n").unwrap();
    cfg.validate().unwrap();
    RateLimiter::with_clock(&cfg, clock.clone())
}

fn spray(scenario: &str, total: u64) {
    let report_every = (total / 10).max(1);
    let base = rss_kib();
    let clock = FakeRelativeClock::default();
    let rl = limiter(&clock);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    println!("## {scenario}: {total} spray requests at 100 000/s (virtual), a newcomer every {NEWCOMER_EVERY}");
    println!("| spray requests | virtual s | wall s | RSS MiB (Δ) | address keys | sprayer allowed /s | newcomers served | ns/check |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut newcomers, mut newcomers_ok) = (0u64, 0u64);
    let (mut win_ok, mut win_new, mut win_new_ok, mut all_ok) = (0u64, 0u64, 0u64, 0u64);
    let mut rss_after_first = None::<(u64, u64)>;
    let started = Instant::now();
    let mut win_started = Instant::now();
    let mut win_checks = 0u64;
    for i in 1..=total {
        clock.advance(STEP);
        let ok = rl.check(&keys(spray_addr(scenario, &mut rng))).is_ok();
        win_ok += u64::from(ok);
        all_ok += u64::from(ok);
        win_checks += 1;
        if i % NEWCOMER_EVERY == 0 {
            let ok = rl
                .check(&keys(newcomer_addr(scenario, newcomers, &mut rng)))
                .is_ok();
            newcomers += 1;
            newcomers_ok += u64::from(ok);
            win_new += 1;
            win_new_ok += u64::from(ok);
            win_checks += 1;
        }
        if i % report_every == 0 {
            let rss = rss_kib();
            let win_wall = win_started.elapsed();
            let virt = STEP * u32::try_from(i).unwrap_or(u32::MAX);
            let win_virt = STEP * u32::try_from(report_every).unwrap_or(u32::MAX);
            println!(
                "| {i} | {:.0} | {:.1} | {:.1} (+{:.1}) | {} | {:.0} | {win_new_ok}/{win_new} | {:.0} |",
                virt.as_secs_f64(),
                started.elapsed().as_secs_f64(),
                rss as f64 / 1024.0,
                rss.saturating_sub(base) as f64 / 1024.0,
                rl.len_by_kind().address,
                win_ok as f64 / win_virt.as_secs_f64(),
                win_wall.as_nanos() as f64 / win_checks as f64,
            );
            if i > report_every {
                let (lo, hi) = rss_after_first.unwrap_or((rss, rss));
                rss_after_first = Some((lo.min(rss), hi.max(rss)));
            }
            (win_ok, win_new, win_new_ok, win_checks) = (0, 0, 0, 0);
            win_started = Instant::now();
        }
    }
    let (lo, hi) = rss_after_first.unwrap_or((0, 0));
    println!(
        "\n{scenario}: newcomers served on their first request {newcomers_ok}/{newcomers} ({:.2}%); \
         sprayer allowed {all_ok}/{total} ({:.1}%); RSS after the first report {:.1}–{:.1} MiB; \
         {:.0} ns per check overall\n",
        100.0 * newcomers_ok as f64 / newcomers.max(1) as f64,
        100.0 * all_ok as f64 / total as f64,
        lo as f64 / 1024.0,
        hi as f64 / 1024.0,
        started.elapsed().as_nanos() as f64 / (total + newcomers) as f64,
    );
}

/// RSS growth over `n` distinct keys / `n`: the bytes one tracked key costs. Sessions are the
/// plainest keyed limit (one key per session, nothing else tracked).
fn bytes_per_key(n: u64) {
    let clock = FakeRelativeClock::default();
    let cfg: RateLimitsConfig =
        toml::from_str("per_session = { rate = \"5/s\", burst = 10 }\n").unwrap();
    let before = rss_kib();
    let rl = RateLimiter::with_clock(&cfg, clock.clone());
    for s in 0..n {
        let _ = rl.check(&RequestKeys {
            session: Some(s.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ..keys(IpAddr::V4(Ipv4Addr::LOCALHOST))
        });
    }
    let after = rss_kib();
    let tracked = rl.len_by_kind().session;
    println!(
        "bytes-per-key: {tracked} session keys tracked, RSS +{} KiB = {:.1} bytes per key",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 * 1024.0 / tracked.max(1) as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let total: u64 = if full { 10_000_000 } else { 20_000 };
    let chosen: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match chosen.as_slice() {
        [] if full => {
            // Each scenario in its own process, so that its RSS is its own.
            let exe = std::env::current_exe().unwrap();
            for s in std::iter::once("bytes-per-key").chain(SCENARIOS) {
                let st = std::process::Command::new(&exe)
                    .args([s, "--bench"])
                    .status()
                    .unwrap();
                assert!(st.success(), "{s}: {st}");
            }
        }
        [] => {
            bytes_per_key(total);
            for s in SCENARIOS {
                spray(s, total);
            }
        }
        [s] if *s == "bytes-per-key" => bytes_per_key(if full { 1_000_000 } else { total }),
        [s] => spray(s, total),
        more => panic!("one scenario at a time, got {more:?}"),
    }
}
