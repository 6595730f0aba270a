//! Waiting-room pages: the queue page (Italian, English), its JSON twin for the status poll,
//! and the closed page. These are what every queued request costs besides the ticket.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use anticamera::pages::{self, ClosedView, Lang, QueueState, QueueView, Templates};
use chrono::TimeZone;
use criterion::{criterion_group, criterion_main, Criterion};

fn queue_view(lang: Lang) -> QueueView<'static> {
    QueueView {
        lang,
        gate: "claims",
        gate_label: "Domanda bonus 600 euro",
        state: QueueState::Waiting,
        position: 1842,
        ahead: 1841,
        estimated_wait: Some(Duration::from_secs(9 * 60 + 20)),
        refresh_secs: 5,
        long_poll_secs: 0,
        number: Some(4_120),
        missed_turn: false,
        opens_at: None,
        prequeue_random: false,
        status_url: "/.anticamera/status?gate=claims",
        page_url: "/claim/step2?lang=it&id=42",
    }
}

fn bench(c: &mut Criterion) {
    let t = Templates::builtin();
    let it = queue_view(Lang::It);
    let en = queue_view(Lang::En);

    c.bench_function("render_queue (it)", |b| {
        b.iter(|| t.render_queue(black_box(&it)))
    });
    c.bench_function("render_queue (en)", |b| {
        b.iter(|| t.render_queue(black_box(&en)))
    });
    c.bench_function("queue_json (it)", |b| {
        b.iter(|| pages::queue_json(black_box(&it)))
    });

    let opens_at = chrono_tz::Europe::Rome
        .with_ymd_and_hms(2026, 4, 2, 16, 0, 0)
        .single()
        .expect("a valid local time");
    let closed = ClosedView {
        lang: Lang::It,
        gate: "claims",
        gate_label: "Domanda bonus 600 euro",
        cohort: "citizens",
        opens_at: Some(opens_at),
        retry_after_secs: 3 * 3600,
        page_url: "/claim/step2?lang=it&id=42",
    };
    c.bench_function("render_closed (it, with opening time)", |b| {
        b.iter(|| t.render_closed(black_box(&closed)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
