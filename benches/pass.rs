//! Waiting-room hot paths: pass verification, pass issue, slot touch.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use anticamera::waitroom::pass::{Keyring, Kind, Token, VisitorId};
use anticamera::waitroom::{Gate, GateSettings, Occupant};
use criterion::{criterion_group, criterion_main, Criterion};

const NOW: u64 = 1_700_000_000_000;

fn bench_pass(c: &mut Criterion) {
    let keys = Keyring::new(2, [(1u8, [1u8; 32]), (2u8, [2u8; 32])]).unwrap();
    let tok = Token::pass(
        0,
        12345,
        VisitorId::random(),
        17,
        0xdead_beef,
        NOW,
        1_800_000,
    );
    let s = tok.encode(&keys);

    c.bench_function("pass_verify", |b| {
        b.iter(|| Token::decode_as(black_box(&s), &keys, NOW, Kind::Pass, 0).unwrap())
    });
    c.bench_function("pass_issue", |b| {
        b.iter(|| {
            let t = Token::pass(
                0,
                12345,
                VisitorId::random(),
                17,
                1,
                black_box(NOW),
                1_800_000,
            );
            t.encode(&keys)
        })
    });
    let mut buf = String::with_capacity(128);
    c.bench_function("pass_issue_into_buffer", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&tok).encode_into(&keys, &mut buf);
        })
    });

    let gate = Gate::new(
        &GateSettings {
            capacity: 1000,
            ..GateSettings::default()
        },
        NOW,
    );
    let t = gate.take_ticket().unwrap();
    gate.tick(NOW);
    let who = Occupant {
        ticket: t,
        visitor: 42,
        binding: 7,
    };
    let slot = gate.claim(who, NOW).unwrap();
    c.bench_function("gate_touch", |b| {
        b.iter(|| {
            gate.touch(black_box(slot), black_box(who), NOW, NOW)
                .unwrap()
        })
    });
}

criterion_group!(benches, bench_pass);
criterion_main!(benches);
