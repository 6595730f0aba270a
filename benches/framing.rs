//! Cost of the framing validator on the hot path: a typical GET head and a 64 KiB body under
//! Content-Length, each fed in one call.
// Benches are test code (they may unwrap); criterion_group! declares an undocumented `pub fn`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use anticamera::framing::FramingValidator;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

/// A typical browser GET head of exactly 400 bytes.
fn get_head() -> Vec<u8> {
    let mut h = b"GET /prestazioni/domanda/stato?id=8f14e45fceea167a5a36dedd4bea2543 HTTP/1.1\r\n\
Host: servizi.portale.example\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: it-IT,it;q=0.8,en-US;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\n"
        .to_vec();
    // Pad to exactly 400 bytes with one more field.
    h.extend_from_slice(b"X-Pad: ");
    while h.len() < 396 {
        h.push(b'p');
    }
    h.extend_from_slice(b"\r\n\r\n");
    assert_eq!(h.len(), 400);
    h
}

fn bench(c: &mut Criterion) {
    let head = get_head();
    // Bench the accepting path, not an early rejection.
    assert_eq!(FramingValidator::new(16 << 10).feed(&head), Ok(()));
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(head.len() as u64));
    g.bench_function(format!("get_head_{}B", head.len()), |b| {
        b.iter(|| {
            let mut v = FramingValidator::new(16 << 10);
            v.feed(black_box(&head)).is_ok()
        })
    });

    let mut post = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n".to_vec();
    post.extend(std::iter::repeat_n(b'\n', 65536));
    assert_eq!(FramingValidator::new(16 << 10).feed(&post), Ok(()));
    g.throughput(Throughput::Bytes(post.len() as u64));
    g.bench_function("post_64KiB_cl_body", |b| {
        b.iter(|| {
            let mut v = FramingValidator::new(16 << 10);
            v.feed(black_box(&post)).is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
