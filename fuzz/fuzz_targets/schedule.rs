#![no_main]
//! Schedule parsing and evaluation at arbitrary instants: never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (t, rest) = data.split_at(8);
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(cfg) = toml::from_str::<anticamera::schedule::ScheduleConfig>(text) else { return };
    let names = ["citizens", "intermediaries"];
    let Ok(s) = anticamera::schedule::Schedule::compile(&cfg, &names) else { return };
    let secs = i64::from_le_bytes(t.try_into().unwrap()) % (200 * 365 * 86_400);
    if let Some(at) = chrono::DateTime::from_timestamp(secs.abs(), 0) {
        for c in 0..2 {
            if let Some(id) = anticamera::cohort::CohortId::from_index(c) {
                let _ = s.state(id, at);
                let _ = s.next_opening(id, at);
            }
        }
    }
});
