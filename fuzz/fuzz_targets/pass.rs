#![no_main]
//! Ticket and pass decoding: never panics, never accepts a token it did not sign.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = anticamera::waitroom::Keyring::new(1, [(1u8, b"fuzz-key-0123456789abcdef0123456789".to_vec())]).unwrap();
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(anticamera::waitroom::Token::decode(s, &keys, 1_700_000_000_000).is_err());
    }
});
