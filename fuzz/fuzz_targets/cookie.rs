#![no_main]
//! The Cookie-header lookup used for passes, sessions and cohorts: never panics, and a value it
//! returns is a substring of the input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in ["anticamera_claims", "portal_session", "a", ""] {
        if let Some(v) = anticamera::cohort::cookie_in_header(data, name) {
            assert!(v.len() <= data.len());
        }
    }
});
