//! Stray responses under load, black-box over raw TCP: a portal that sometimes writes a late,
//! unsolicited extra response on a connection, so that what the connection carries afterwards
//! is shifted by one. Every answer is checked against its requester (user AND request), over
//! more than 10 000 responses from 32 concurrent clients through a small, busy portal pool.
//!
//! Run with `--nocapture` to see the figures (BENCHMARKS.md §5).
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLIENTS: usize = 32;
const PER_CLIENT: usize = 320;
const USERS: usize = 4;
/// Out of 1000 answers on `/p/`: how many leave the connection one behind (the stray is written
/// when the next request arrives, and every later answer on it is the previous request's)...
const LAG_PER_MILLE: u64 = 15;
/// ...and how many are followed at once by a duplicate in the same write (surplus bytes).
const DUP_PER_MILLE: u64 = 5;

/// What the portal did, for the checks.
#[derive(Default)]
struct PortalLog {
    /// Per request token: the portal connection it was read on and its index there.
    reads: HashMap<u64, (usize, usize)>,
    /// Strays written while a request was in flight on the connection (the shift).
    strays_lagged: usize,
    /// Duplicates written right after an answer (surplus bytes on an idle connection).
    strays_dup: usize,
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn answer(user: &str, tok: u64, conn: usize, idx: usize, rid: Option<&str>) -> Vec<u8> {
    let body = format!("u={user} t={tok} c={conn} i={idx}");
    let echo = rid
        .map(|r| format!("x-request-id: {r}\r\n"))
        .unwrap_or_default();
    if tok != 0 && tok % 3 == 0 {
        // Bodiless: hyper hands such a connection back to the pool as soon as the head is read,
        // before anticamera has looked at the answer.
        return format!(
            "HTTP/1.1 204 No Content\r\nx-owner: {body}\r\nx-portal-user: {user}\r\n{echo}\r\n"
        )
        .into_bytes();
    }
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-portal-user: {user}\r\n{echo}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The programmable portal: HTTP/1.1 by hand, one task per connection.
async fn stray_portal(log: Arc<Mutex<PortalLog>>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let conn = conns.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ (conn as u64 + 1).wrapping_mul(0x2545);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % 1000
                };
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let mut held: Option<Vec<u8>> = None;
                let mut stray_pending = false;
                for idx in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let user = header(&head, "cookie")
                        .and_then(|c| c.strip_prefix("portal_session="))
                        .unwrap_or("nobody")
                        .to_string();
                    let tok: u64 = path
                        .strip_prefix("/p/")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    if tok != 0 {
                        log.lock().unwrap().reads.insert(tok, (conn, idx));
                    }
                    let mine = answer(&user, tok, conn, idx, header(&head, "x-request-id"));
                    let out = match held.take() {
                        // One behind: this request reads the previous answer (the first time,
                        // the stray: a late duplicate of the answer already delivered).
                        Some(prev) => {
                            if stray_pending {
                                stray_pending = false;
                                log.lock().unwrap().strays_lagged += 1;
                            }
                            held = Some(mine);
                            prev
                        }
                        None => {
                            let r = if tok == 0 { 1000 } else { next() };
                            if r < LAG_PER_MILLE {
                                held = Some(mine.clone());
                                stray_pending = true;
                                mine
                            } else if r < LAG_PER_MILLE + DUP_PER_MILLE {
                                log.lock().unwrap().strays_dup += 1;
                                let mut two = mine.clone();
                                two.extend_from_slice(&mine);
                                two
                            } else {
                                mine
                            }
                        }
                    };
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// What one client saw for one request.
struct Seen {
    tok: u64,
    user: usize,
    status: u16,
    body: String,
}

struct Figures {
    responses: usize,
    delivered: usize,
    refused_by_guard: usize,
    other_errors: usize,
    wrong_user: usize,
    wrong_request_same_user: usize,
    strays_lagged: usize,
    strays_dup: usize,
    /// Requests read on a portal connection after one whose answer was refused.
    reused_after_refusal: usize,
    /// Of those, answered 200.
    delivered_after_refusal: usize,
    /// `/metrics` isolation lines before and after the load (the recorder is per process).
    metrics_before: String,
    metrics: String,
}

impl Figures {
    /// How much a series grew during the load.
    fn grew(&self, series: &str) -> usize {
        metric(&self.metrics, series) - metric(&self.metrics_before, series)
    }
}

async fn run(isolation: &str) -> Figures {
    let log = Arc::new(Mutex::new(PortalLog::default()));
    let up = stray_portal(log.clone()).await;
    let p = proxy(
        up,
        "",
        &format!(
            "pool_max_idle = 8\n\
             [upstream_guard]\nmax_in_flight = 8\nqueue_size = 256\nqueue_timeout = \"10s\"\n\
             reserve_for_inside = 0.0\n\
             [upstream_guard.breaker]\nfailures = 1000000\n\
             [isolation]\nsession_cookies = [\"portal_session\"]\n\
             leak_guard_header = \"x-portal-user\"\n{isolation}"
        ),
    );
    // Each user logs in first (binds their session to them), before any stray.
    for u in 0..USERS {
        let req = Request::get(format!("http://{}/login", p.addr))
            .header("cookie", format!("portal_session=user{u}"))
            .body(full(""))
            .unwrap();
        assert_eq!(send(req).await.0, 200);
    }
    let (_, _, metrics_before) = get(p.admin, "/metrics").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let client = client(false);
            let user = c % USERS;
            let mut seen = Vec::with_capacity(PER_CLIENT);
            for k in 0..PER_CLIENT {
                let tok = ((c as u64 + 1) << 20) | k as u64;
                let req = Request::get(format!("http://{addr}/p/{tok}"))
                    .header("cookie", format!("portal_session=user{user}"))
                    .body(full(""))
                    .unwrap();
                let resp = client.request(req).await.expect("request failed");
                let status = resp.status().as_u16();
                let owner = resp
                    .headers()
                    .get("x-owner")
                    .map(|v| v.to_str().unwrap().to_string());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                seen.push(Seen {
                    tok,
                    user,
                    status,
                    // A 204 says whose it is in a header.
                    body: if status == 204 { owner.unwrap() } else { body },
                });
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (_, _, metrics) = get(p.admin, "/metrics").await;

    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut f = Figures {
        responses: all.len(),
        delivered: 0,
        refused_by_guard: 0,
        other_errors: 0,
        wrong_user: 0,
        wrong_request_same_user: 0,
        strays_lagged: log.strays_lagged,
        strays_dup: log.strays_dup,
        reused_after_refusal: 0,
        delivered_after_refusal: 0,
        metrics_before: isolation_lines(&metrics_before),
        metrics: isolation_lines(&metrics),
    };
    // The first refused request index on each portal connection.
    let mut first_refused: HashMap<usize, usize> = HashMap::new();
    for s in &all {
        match s.status {
            200 | 204 => {
                f.delivered += 1;
                let field = |k: &str| {
                    s.body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or_else(|| panic!("no {k} in {:?}", s.body))
                        .to_string()
                };
                if field("u=") != format!("user{}", s.user) {
                    f.wrong_user += 1;
                } else if field("t=") != s.tok.to_string() {
                    f.wrong_request_same_user += 1;
                }
            }
            502 if s.body.contains("does not belong to you") => {
                assert!(!s.body.contains("u=user"), "{}", s.body);
                f.refused_by_guard += 1;
                if let Some(&(conn, idx)) = log.reads.get(&s.tok) {
                    let e = first_refused.entry(conn).or_insert(idx);
                    *e = (*e).min(idx);
                }
            }
            _ => f.other_errors += 1,
        }
    }
    for s in &all {
        if let Some(&(conn, idx)) = log.reads.get(&s.tok) {
            if first_refused.get(&conn).is_some_and(|&r| idx > r) {
                f.reused_after_refusal += 1;
                if matches!(s.status, 200 | 204) {
                    f.delivered_after_refusal += 1;
                }
            }
        }
    }
    println!(
        "strays [{}]: {} responses checked in {:.1} s: {} delivered, {} refused by isolation, \
         {} other errors; strays sent: {} shifting + {} surplus; delivered to another user: {}, \
         to another request of the same user: {}; requests on a connection after its refused \
         answer: {} ({} delivered)\n{}",
        isolation.replace('\n', " "),
        f.responses,
        elapsed.as_secs_f64(),
        f.delivered,
        f.refused_by_guard,
        f.other_errors,
        f.strays_lagged,
        f.strays_dup,
        f.wrong_user,
        f.wrong_request_same_user,
        f.reused_after_refusal,
        f.delivered_after_refusal,
        f.metrics
    );
    p.stop().await;
    f
}

fn isolation_lines(m: &str) -> String {
    m.lines()
        .filter(|l| l.starts_with("anticamera_isolation_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn metric(m: &str, series: &str) -> usize {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

/// Both modes in one test: the metrics recorder is global to the process, and each mode wants
/// the machine to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_answers_never_reach_the_wrong_requester() {
    with_the_request_id_echo_no_answer_reaches_the_wrong_request().await;
    with_only_the_user_stamp_nothing_after_a_refusal_reaches_anyone().await;
}

/// With the request id echoed, no answer reaches the wrong request, not even a stray of the
/// same user; each stray costs one refused answer at most (its connection is retired at once).
async fn with_the_request_id_echo_no_answer_reaches_the_wrong_request() {
    let f = run("request_id_header = \"x-request-id\"\nrequest_id_echo = true\n").await;
    assert_eq!(f.wrong_user, 0, "an answer went to another user");
    assert_eq!(
        f.wrong_request_same_user, 0,
        "an answer went to another request of the same user"
    );
    assert!(f.refused_by_guard >= 1);
    assert!(
        f.refused_by_guard <= f.strays_lagged + f.strays_dup,
        "more refusals ({}) than strays ({} + {}): a connection kept carrying shifted answers",
        f.refused_by_guard,
        f.strays_lagged,
        f.strays_dup
    );
    assert_eq!(
        f.reused_after_refusal, 0,
        "a portal connection was used again after a refused answer"
    );
    assert_eq!(
        f.grew("anticamera_isolation_refused_total{reason=\"request_id_mismatch\"}")
            + f.grew("anticamera_isolation_refused_total{reason=\"request_id_missing\"}")
            + f.grew("anticamera_isolation_refused_total{reason=\"leak\"}"),
        f.refused_by_guard
    );
    assert!(
        f.grew("anticamera_isolation_connections_retired_total{reason=\"request_id_mismatch\"}")
            >= 1
    );
    assert!(f.responses >= 10_000);
    assert!(f.strays_lagged >= 30, "too few strays to prove anything");
    assert!(f.delivered * 10 >= f.responses * 9, "too many failures");
}

/// With only the user stamp, no answer reaches another user, and nothing a connection carries
/// after a refused answer reaches anyone. (Strays of the same user can reach another request of
/// that user: the stamp cannot tell them apart; that is what the echo is for.)
async fn with_only_the_user_stamp_nothing_after_a_refusal_reaches_anyone() {
    let f = run("").await;
    assert_eq!(f.wrong_user, 0, "an answer went to another user");
    assert!(f.refused_by_guard >= 1);
    assert_eq!(
        f.delivered_after_refusal, 0,
        "an answer read on a connection after its refused answer was delivered"
    );
    assert_eq!(
        f.reused_after_refusal, 0,
        "a portal connection was used again after a refused answer"
    );
    assert_eq!(
        f.grew("anticamera_isolation_refused_total{reason=\"leak\"}"),
        f.refused_by_guard
    );
    assert_eq!(
        f.grew("anticamera_isolation_leaks_blocked_total"),
        f.refused_by_guard
    );
    assert!(f.responses >= 10_000);
    assert!(f.strays_lagged >= 30, "too few strays to prove anything");
    assert!(f.delivered * 10 >= f.responses * 9, "too many failures");
}
