//! Memory of the waiting room: 10 million waiting users and 1 million active users.
//!
//!   cargo bench --bench waitroom_memory
//!
//! Prints the process's resident memory before and after. (Under `cargo test` it runs a small
//! version, to keep the suite fast.)
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use anticamera::waitroom::{Gate, GateSettings, Mode, Occupant};

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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (waiting, active) = if full {
        (10_000_000u64, 1_000_000u32)
    } else {
        (100_000, 10_000)
    };
    let now = 1_800_000_000_000u64;
    let settings = GateSettings {
        capacity: active,
        admit_per_minute: 0,
        session_duration: Duration::from_secs(1800),
        arrival_timeout: Duration::from_secs(60),
        mode: Mode::QueueAll,
    };
    let base = rss_kib();
    let gate = Gate::new(&settings, now);
    let empty = rss_kib();

    // Active users: admitted and holding a slot.
    for _ in 0..active {
        gate.take_ticket();
    }
    let mut t = now;
    while gate.stats().serving <= u64::from(active) {
        t += 1000;
        gate.tick(t);
    }
    for ticket in 1..=u64::from(active) {
        gate.claim(
            Occupant {
                ticket,
                visitor: ticket * 7919,
                binding: 1,
            },
            t,
        )
        .expect("claim");
    }
    let with_active = rss_kib();
    assert_eq!(gate.stats().active, active);

    // Waiting users: a ticket number each, in their own cookie.
    for _ in 0..waiting {
        gate.take_ticket();
    }
    let with_waiting = rss_kib();
    let s = gate.stats();
    println!(
        "waiting room memory ({} active, {} waiting)",
        s.active, s.waiting
    );
    println!(
        "  gate sized for {active} active users (slot table allocated up front): {} KiB",
        empty - base
    );
    println!(
        "  with {active} active users: {} KiB in all = {:.1} bytes per active user",
        with_active - base,
        (with_active - base) as f64 * 1024.0 / f64::from(active)
    );
    println!(
        "  + {waiting} waiting users: {:>8} KiB  = {:.3} bytes per waiting user",
        with_waiting.saturating_sub(with_active),
        with_waiting.saturating_sub(with_active) as f64 * 1024.0 / waiting as f64
    );
}
