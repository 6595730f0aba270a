//! The waiting room's pages in the refusal map: the queue page and the closed page (or their
//! JSON twins), always 503 with `Retry-After`, `Cache-Control: no-store` and
//! `Vary: Accept, Accept-Language, Cookie`.

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::RoomPage;
use crate::body::ProxyBody;
use crate::pages::{self, ClosedView, QueueState, QueueView};
use crate::proxy::Shared;
use crate::room::Answer;

/// Renders a waiting-room answer. `Retry-After` is the poll advice on the queue page and the
/// time until opening (at most a day, an hour when unknown) on the closed page.
pub fn render(shared: &Shared, page: RoomPage, json: bool) -> Response<ProxyBody> {
    let RoomPage {
        answer,
        set_cookie,
        lang,
        page_url,
    } = page;
    let (body, retry) = match &shared.room {
        Some(room) => body(shared, room, &answer, lang, &page_url, json),
        // Unreachable in practice (room answers come from a room); an honest fallback.
        None => (String::new(), 5),
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/html; charset=utf-8"
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Language, Cookie"),
    );
    if let Some(c) = set_cookie {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

fn body(
    shared: &Shared,
    room: &crate::room::Room,
    answer: &Answer,
    lang: pages::Lang,
    page_url: &str,
    json: bool,
) -> (String, u32) {
    let t = shared.templates.load();
    let now = shared.clock.now();
    match answer {
        Answer::Queue {
            gate,
            ahead,
            wait,
            opens_at,
            prequeue_random,
            admitted,
            number,
            missed_turn,
        } => {
            let g = &room.gates[*gate];
            let gp = g.policy();
            let state = if *admitted {
                QueueState::Admitted
            } else if opens_at.is_some() {
                QueueState::PreQueue
            } else {
                QueueState::Waiting
            };
            let until_open = opens_at.map(|o| (o - now).to_std().unwrap_or_default());
            let advice = room.poll_advice(state, *ahead, *wait, until_open);
            let status_url = format!("{}/status?gate={}", pages::OWN_PREFIX, g.name);
            let v = QueueView {
                lang,
                gate: &g.name,
                gate_label: &gp.label,
                state,
                position: ahead + 1,
                ahead: *ahead,
                estimated_wait: *wait,
                refresh_secs: advice.refresh_secs,
                long_poll_secs: advice.long_poll_secs,
                number: *number,
                missed_turn: *missed_turn,
                opens_at: opens_at.map(|t| t.with_timezone(&time_zone(room, *gate))),
                prequeue_random: *prequeue_random,
                status_url: &status_url,
                page_url,
            };
            let body = if json {
                pages::queue_json(&v)
            } else {
                t.render_queue(&v)
            };
            (body, advice.refresh_secs)
        }
        Answer::Closed {
            gate,
            cohort,
            opens_at,
        } => {
            let g = &room.gates[*gate];
            let gp = g.policy();
            let retry = opens_at
                .map(|o| (o.with_timezone(&Utc) - now).num_seconds().clamp(1, 86_400) as u32)
                .unwrap_or(3600);
            let v = ClosedView {
                lang,
                gate: &g.name,
                gate_label: &gp.label,
                cohort,
                opens_at: opens_at.map(|t| t.with_timezone(&time_zone(room, *gate))),
                retry_after_secs: retry,
                page_url,
            };
            let body = if json {
                pages::closed_json(&v)
            } else {
                t.render_closed(&v)
            };
            (body, retry)
        }
        // Never a page: `Refusal::room` makes it `Refusal::Unnumbered`. An honest fallback.
        Answer::Unnumbered { .. } => (String::new(), 1),
    }
}

/// The gate's local time zone (Europe/Rome for a gate without hours).
fn time_zone(room: &crate::room::Room, gate: usize) -> chrono_tz::Tz {
    room.gates[gate]
        .policy()
        .schedule
        .as_ref()
        .map(|s| s.time_zone())
        .unwrap_or(chrono_tz::Europe::Rome)
}
