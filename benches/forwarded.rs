//! The forwarding headers every forwarded request gets (`Forwarders::rewrite`): a browser's
//! request head from an untrusted peer (the common case) and through a trusted balancer that
//! already set `X-Forwarded-For`.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;

use anticamera::forwarded::Forwarders;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};

fn head(extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "www.inps.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "it-IT,it;q=0.8,en-US;q=0.5,en;q=0.3"),
        ("cookie", "portal_session=0123456789abcdef0123456789abcdef"),
    ]
    .iter()
    .chain(extra)
    {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn bench(c: &mut Criterion) {
    let f = Forwarders::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    let plain = head(&[]);
    c.bench_function("forwarded/rewrite, untrusted peer", |b| {
        b.iter(|| {
            let mut h = plain.clone();
            f.rewrite(black_box(peer), peer, "http", &mut h);
            h
        })
    });
    let balancer: IpAddr = "10.1.2.3".parse().unwrap();
    let via = head(&[("x-forwarded-for", "198.51.100.7")]);
    let client = f.client_addr(balancer, &via);
    c.bench_function("forwarded/rewrite, through a trusted balancer", |b| {
        b.iter(|| {
            let mut h = via.clone();
            f.rewrite(black_box(balancer), client, "https", &mut h);
            h
        })
    });
    c.bench_function("forwarded/clone of the head alone (subtract)", |b| {
        b.iter(|| black_box(plain.clone()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
