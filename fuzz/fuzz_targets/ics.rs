#![no_main]
//! See `anticamera::fuzz_props::ics` for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anticamera::fuzz_props::ics(data));
