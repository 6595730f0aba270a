#![no_main]
//! Request classification: path normalization and gate matching never panic, and a normalized
//! path is canonical: absolute, no empty, `.` or `..` segments, no `;` parameters.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = anticamera::route::normalize(s) {
        if n != "*" {
            assert!(n.starts_with('/'));
            let inner = n.trim_end_matches('/');
            for seg in inner.split('/').skip(1) {
                assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.contains(';'), "{s:?} -> {n:?}");
            }
        }
        let rules = anticamera::route::Rules::compile(&anticamera::route::RuleConfig {
            prefix: vec!["/claim".into(), "/api/".into()],
            glob: vec!["/servizi/*/domanda".into(), "/delega/**".into()],
            methods: vec![],
        })
        .unwrap();
        let _ = rules.matches(&http::Method::GET, &n);
    }
});
