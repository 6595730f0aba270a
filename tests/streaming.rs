//! Large bodies stream through anticamera in both directions without being held in memory.
//! In its own test binary so the process's peak memory belongs to this test alone.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const CHUNK: usize = 256 * 1024;
const TOTAL: u64 = 512 * 1024 * 1024;

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn generated_body(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let n = total / CHUNK as u64;
    let s = stream::iter((0..n).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.clone()))
    }));
    StreamBody::new(s).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_gigabyte_each_way_without_memory_growth() {
    // The portal counts what it receives, and streams back as much as it is asked for.
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/upload" {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    n += d.len() as u64;
                }
            }
            http::Response::new(full(n.to_string()))
        } else {
            http::Response::builder()
                .header("content-length", TOTAL.to_string())
                .body(generated_body(TOTAL))
                .unwrap()
        }
    })
    .await;
    let p = proxy(
        up.addr,
        "max_body_bytes = \"1GiB\"",
        "response_timeout = \"60s\"",
    );
    let before = peak_rss_kib();

    let req = Request::post(format!("http://{}/upload", p.addr))
        .header("content-length", TOTAL.to_string())
        .body(generated_body(TOTAL))
        .unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(120), send(req))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, TOTAL.to_string());

    let resp = client(false)
        .request(
            Request::get(format!("http://{}/download", p.addr))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, TOTAL);

    let growth_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    // 1 GiB moved through the proxy; the peak grew by buffers only.
    assert!(
        growth_mib < 64,
        "peak memory grew by {growth_mib} MiB while streaming 1 GiB"
    );
}
