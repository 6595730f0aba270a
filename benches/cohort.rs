//! Cohort classification on the request path (`Cohorts::classify`, which the proxy calls for
//! every request once a waiting room is configured).
//!
//! The configuration mirrors config/inps.toml with a HS256 key instead of the SSO's RSA key:
//! a signed SSO cookie, then a header set by a trusted gateway, then the intermediaries' office
//! networks; everyone else is a citizen. Matchers are tried in order, so the later a request
//! matches the more matchers it pays for.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anticamera::cohort::{CohortConfig, Cohorts};
use criterion::{criterion_group, criterion_main, Criterion};

/// Clearly fake HMAC secret (the matcher requires at least 32 bytes).
const KEY: &[u8] = b"NOT-A-SECRET-bench-key-0123456789abcdef";

const COHORTS: &str = r#"
default = "citizens"
names = ["citizens", "intermediaries"]
trusted_header_from = ["10.0.0.0/8"]

[[matchers]]
cohort = "intermediaries"
jwt = { cookie = "inps_sso", claim = "role", values = ["intermediary", "caf", "patronato", "professional"], algorithm = "HS256", key_file = "sso.key" }

[[matchers]]
cohort = "intermediaries"
header = { name = "x-portal-cohort", values = ["intermediary"] }

[[matchers]]
cohort = "intermediaries"
network = ["192.0.2.0/24", "2001:db8:caf::/48"]
"#;

/// A browser-like request for a claim page, with the given extra cookie and headers.
fn request(cookie: &str, extra: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder()
        .uri("/claim/step2?lang=it")
        .header("host", "servizi.example.invalid")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .header("accept-language", "it-IT,it;q=0.9,en;q=0.5")
        .header(
            "cookie",
            format!("JSESSIONID=0A1B2C3D4E5F60718293A4B5C6D7E8F9; anticamera_lang=it{cookie}"),
        );
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).expect("bench request").into_parts().0
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("bench address")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("sso.key"), KEY).expect("key file");
    let cfg: CohortConfig = toml::from_str(COHORTS).expect("bench config");
    let cohorts = Cohorts::compile(&cfg, dir.path()).expect("bench cohorts compile");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "sub": "bench-user-42",
        "role": "caf",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY),
    )
    .expect("bench token");

    let client = ip("198.51.100.7");
    let direct_peer = ip("203.0.113.9");
    let gateway = ip("10.0.0.5");
    let office = ip("192.0.2.44");

    let anonymous = request("", &[]);
    let with_jwt = request(&format!("; inps_sso={token}"), &[]);
    let from_gateway = request("", &[("x-portal-cohort", "intermediary")]);

    // Each case must land where its name says, or the bench measures the wrong path.
    let name = |parts: &http::request::Parts, client: IpAddr, peer: IpAddr| {
        cohorts
            .name(cohorts.classify(parts, client, peer))
            .to_owned()
    };
    assert_eq!(name(&anonymous, client, direct_peer), "citizens");
    assert_eq!(name(&with_jwt, client, direct_peer), "intermediaries");
    assert_eq!(name(&from_gateway, client, gateway), "intermediaries");
    assert_eq!(name(&from_gateway, client, direct_peer), "citizens");
    assert_eq!(name(&anonymous, office, office), "intermediaries");

    c.bench_function("classify: no identity (default cohort)", |b| {
        b.iter(|| cohorts.classify(black_box(&anonymous), black_box(client), direct_peer))
    });
    c.bench_function("classify: valid HS256 JWT cookie", |b| {
        b.iter(|| cohorts.classify(black_box(&with_jwt), black_box(client), direct_peer))
    });
    c.bench_function("classify: trusted gateway header", |b| {
        b.iter(|| cohorts.classify(black_box(&from_gateway), black_box(client), gateway))
    });
    c.bench_function("classify: office network (CIDR)", |b| {
        b.iter(|| cohorts.classify(black_box(&anonymous), black_box(office), office))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
