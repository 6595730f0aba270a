//! The refusal map, one row per refusal kind: status, `Retry-After`, `Connection: close`, and
//! HTML/JSON negotiation.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use super::*;
use crate::config::Config;
use crate::guard::ShedReason;
use crate::ratelimit::{LimitKind, Policy};

fn shared() -> Arc<Shared> {
    let cfg = Config::parse(
        "[upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
         [waiting_room]\nkeys = [{ id = 1, secret = \"refusal-test-key-0123456789abcdef0\" }]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 1\n",
    )
    .unwrap();
    Shared::new(Arc::new(cfg)).unwrap()
}

fn queued() -> Refusal {
    Refusal::room(RoomPage {
        answer: Answer::Queue {
            gate: 0,
            ahead: 41,
            wait: Some(Duration::from_secs(300)),
            opens_at: None,
            prequeue_random: false,
            number: Some(42),
            admitted: false,
            missed_turn: false,
        },
        set_cookie: Some(HeaderValue::from_static("ac_t=ticket; Path=/")),
        lang: Lang::En,
        page_url: "/claim".into(),
    })
}

fn closed(sh: &Shared) -> Refusal {
    Refusal::room(RoomPage {
        answer: Answer::Closed {
            gate: 0,
            cohort: "citizens".into(),
            opens_at: Some(sh.clock.now() + chrono::Duration::seconds(3600)),
        },
        set_cookie: None,
        lang: Lang::It,
        page_url: "/claim".into(),
    })
}

/// What one refusal kind must answer.
struct Row {
    name: &'static str,
    make: fn(&Shared) -> Refusal,
    status: u16,
    /// `Retry-After`: `None` = absent; `Some((lo, hi))` = present, within [lo, hi] seconds.
    retry_after: Option<(u32, u32)>,
    /// Closes the connection even when the request's body was read.
    closes: bool,
    /// The stable `error` code in the JSON (plain refusals), or the JSON field a page carries.
    json_marker: &'static str,
    disposition: Disposition,
}

fn limited(_: &Shared) -> Refusal {
    Refusal::Limited(Limited {
        policy: Policy {
            kind: LimitKind::Address,
            limit: 10,
            window: Duration::from_secs(2),
        },
        retry_after: Duration::from_millis(1_200),
    })
}

const TABLE: &[Row] = &[
    Row {
        name: "framing",
        make: |_| Refusal::Framing("Content-Length appears more than once."),
        status: 400,
        retry_after: None,
        closes: true,
        json_marker: "bad_request",
        disposition: Disposition::Refused,
    },
    Row {
        name: "limited",
        make: limited,
        status: 429,
        retry_after: Some((2, 2)),
        closes: false,
        json_marker: "rate_limited",
        disposition: Disposition::Limited,
    },
    Row {
        name: "queued",
        make: |_| queued(),
        status: 503,
        retry_after: Some((1, 60)),
        closes: false,
        json_marker: "\"position\":42",
        disposition: Disposition::Queued,
    },
    Row {
        name: "closed",
        make: closed,
        status: 503,
        retry_after: Some((3590, 3600)),
        closes: false,
        json_marker: "\"state\":\"closed\"",
        disposition: Disposition::Closed,
    },
    Row {
        name: "unnumbered",
        make: |_| {
            Refusal::room(RoomPage {
                answer: Answer::Unnumbered { gate: 0 },
                set_cookie: None,
                lang: Lang::En,
                page_url: "/claim".into(),
            })
        },
        status: 503,
        retry_after: Some((1, 1)),
        closes: false,
        json_marker: "queue_busy",
        disposition: Disposition::Shed,
    },
    Row {
        name: "too large",
        make: |_| Refusal::TooLarge,
        status: 413,
        retry_after: None,
        closes: true,
        json_marker: "body_too_large",
        disposition: Disposition::Refused,
    },
    Row {
        name: "breaker open",
        make: |_| {
            Refusal::BreakerOpen(crate::breaker::Open {
                retry_after: Duration::from_millis(29_500),
            })
        },
        status: 503,
        retry_after: Some((30, 30)),
        closes: false,
        json_marker: "portal_unavailable",
        disposition: Disposition::Shed,
    },
    Row {
        name: "shed",
        make: |_| {
            Refusal::Shed(Shed {
                reason: ShedReason::QueueTimeout,
                retry_after: Duration::from_secs(3),
            })
        },
        status: 503,
        retry_after: Some((3, 3)),
        closes: false,
        json_marker: "overloaded",
        disposition: Disposition::Shed,
    },
    Row {
        name: "upstream connect",
        make: |_| Refusal::Upstream(UpstreamError::Connect("refused".into())),
        status: 502,
        retry_after: Some((5, 5)),
        closes: false,
        json_marker: "upstream_unavailable",
        disposition: Disposition::UpstreamError,
    },
    Row {
        name: "upstream timeout",
        make: |_| Refusal::Upstream(UpstreamError::Timeout(Duration::from_secs(30))),
        status: 504,
        retry_after: Some((5, 5)),
        closes: false,
        json_marker: "upstream_timeout",
        disposition: Disposition::UpstreamError,
    },
    Row {
        name: "client body",
        make: |_| Refusal::Upstream(UpstreamError::ClientBody("bad chunk".into())),
        status: 400,
        retry_after: None,
        closes: true,
        json_marker: "bad_request",
        disposition: Disposition::Refused,
    },
    Row {
        name: "body grew too large",
        make: |_| Refusal::Upstream(UpstreamError::BodyTooLarge),
        status: 413,
        retry_after: None,
        closes: true,
        json_marker: "body_too_large",
        disposition: Disposition::Refused,
    },
    Row {
        name: "leak",
        make: |_| Refusal::Leak,
        status: 502,
        retry_after: Some((5, 5)),
        closes: false,
        json_marker: "leak_blocked",
        disposition: Disposition::UpstreamError,
    },
    Row {
        name: "not found",
        make: |_| Refusal::NotFound("Unknown gate."),
        status: 404,
        retry_after: None,
        closes: false,
        json_marker: "not_found",
        disposition: Disposition::Queued,
    },
];

async fn body_of(r: Response<ProxyBody>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn every_refusal_kind_answers_as_the_table_says() {
    let sh = shared();
    for row in TABLE {
        assert_eq!(
            (row.make)(&sh).disposition(),
            row.disposition,
            "{}",
            row.name
        );
        for json in [false, true] {
            for body_unread in [false, true] {
                let r = (row.make)(&sh).into_response(&sh, json, body_unread);
                let what = format!("{} (json {json}, body unread {body_unread})", row.name);
                assert_eq!(r.status(), row.status, "{what}");
                let h = r.headers();
                match row.retry_after {
                    None => assert!(!h.contains_key("retry-after"), "{what}: {h:?}"),
                    Some((lo, hi)) => {
                        let secs: u32 = h["retry-after"].to_str().unwrap().parse().unwrap();
                        assert!((lo..=hi).contains(&secs), "{what}: retry-after {secs}");
                    }
                }
                let closes = h.get("connection").is_some_and(|v| v == "close");
                assert_eq!(closes, row.closes || body_unread, "{what}: connection");
                assert_eq!(h["cache-control"], "no-store", "{what}");
                let ctype = h["content-type"].to_str().unwrap().to_owned();
                let body = body_of(r).await;
                if json {
                    assert_eq!(ctype, "application/json", "{what}");
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert!(v.is_object(), "{what}");
                    assert!(body.contains(row.json_marker), "{what}: {body}");
                } else {
                    assert_eq!(ctype, "text/html; charset=utf-8", "{what}");
                    assert!(body.starts_with("<!doctype html>"), "{what}: {body}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_room_page_carries_its_cookie_and_varies_on_what_it_negotiates() {
    let sh = shared();
    let r = queued().into_response(&sh, false, false);
    assert_eq!(r.headers()["set-cookie"], "ac_t=ticket; Path=/");
    assert_eq!(r.headers()["vary"], "Accept, Accept-Language, Cookie");
    let r = limited(&sh).into_response(&sh, true, false);
    assert!(r.headers().contains_key("ratelimit-policy"), "{r:?}");
}

#[test]
fn refusals_before_parsing_are_raw_http1_that_close() {
    for (refusal, status) in [
        (Refusal::TooManyConnections, "503"),
        (Refusal::HeadTooLarge, "431"),
        (Refusal::FramingBytes, "400"),
    ] {
        let raw = refusal.raw_http1();
        let text = std::str::from_utf8(&raw).unwrap();
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\ncache-control: no-store\r\n"), "{text}");
    }
    let raw = Refusal::TooManyConnections.raw_http1();
    assert!(std::str::from_utf8(&raw)
        .unwrap()
        .contains("\r\nretry-after: 1\r\n"));
}
