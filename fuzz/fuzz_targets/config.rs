#![no_main]
//! The config parser and validator (including gates, cohorts and schedules): never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = anticamera::config::Config::parse(s);
    }
});
