//! Phase 2: anticamera's own endpoints under `/.anticamera/`.
//!
//! - `/.anticamera/status?gate=NAME[&wait=N]`: the JSON poll of a waiting page, long-polled.
//! - `/.anticamera/lang/{it,en}?return=PATH`: sets the language cookie and sends the user back.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Response;

use super::hygiene::{local_path, query_param};
use super::phases::room_page;
use super::{Disposition, Proxy, RequestCtx};
use crate::body::ProxyBody;
use crate::pages;
use crate::refusal::Refusal;
use crate::room::{Answer, Room};

/// A long poll reports a place that moved only after being held this long (admission is
/// reported at once).
const LONG_POLL_MOVE_HOLD: Duration = Duration::from_secs(1);

impl Proxy {
    /// Answers a request for one of anticamera's own endpoints; `None` for any other path.
    /// The status poll's answers (the queue state, or "no ticket") are always JSON.
    pub(super) async fn own_endpoint(
        &self,
        head: &Parts,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Response<ProxyBody>>, Refusal> {
        let (Some(room), Some(path)) = (&self.shared.room, &ctx.path) else {
            return Ok(None);
        };
        let Some(own) = path.strip_prefix(pages::OWN_PREFIX) else {
            return Ok(None);
        };
        ctx.disposition = Disposition::Queued;
        let query = head.uri.query().unwrap_or("");
        if own == "/status" {
            ctx.json = true;
            let answer = self.status(room, head, ctx, query).await?;
            // The queue state is the poll's answer, rendered by the refusal map like the page.
            let page = Refusal::room(room_page(answer, None, head));
            return Ok(Some(page.into_response(
                &self.shared,
                true,
                ctx.body_unread,
            )));
        }
        if let Some(lang) = own.strip_prefix("/lang/").and_then(pages::Lang::parse) {
            let back = query_param(query, "return")
                .and_then(local_path)
                .unwrap_or("/");
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = http::StatusCode::SEE_OTHER;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(back) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}={}; Path=/; Max-Age=31536000; SameSite=Lax",
                pages::LANG_COOKIE,
                lang.code()
            )) {
                h.insert(header::SET_COOKIE, v);
            }
            if ctx.body_unread {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Ok(Some(resp));
        }
        Err(Refusal::NotFound("Not found."))
    }

    /// The status poll. Long poll: `wait=N` holds the answer up to N seconds (at most 20) until
    /// the ticket is admitted, so an admitted user's place does not sit idle until their next
    /// poll. Only admissions at or just ahead of this position wake it (room). A place that
    /// moved is reported too, but only once the poll has been held for `LONG_POLL_MOVE_HOLD`:
    /// near the front the place moves with every admission, and answering each move would keep
    /// those pollers between two polls, out of reach of their own admission, most of the time.
    async fn status(
        &self,
        room: &Room,
        head: &Parts,
        ctx: &RequestCtx,
        query: &str,
    ) -> Result<Answer, Refusal> {
        let gate = query_param(query, "gate")
            .and_then(|name| room.gates.iter().position(|g| g.name == name))
            .ok_or(Refusal::NotFound("Unknown gate."))?;
        let wait = query_param(query, "wait")
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
            .min(20);
        let (client, peer) = (ctx.client, ctx.conn.peer.ip());
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(wait);
        let moved_deadline = (start + LONG_POLL_MOVE_HOLD).min(deadline);
        let mut seen_ahead = None;
        let answer = loop {
            match room.status_for_long_poll(gate, head, client, peer) {
                Some((answer @ Answer::Queue { ahead, .. }, Some(pending))) if wait > 0 => {
                    let until = if *seen_ahead.get_or_insert(ahead) == ahead {
                        deadline
                    } else {
                        moved_deadline
                    };
                    if tokio::time::Instant::now() >= until {
                        break Some(answer);
                    }
                    if tokio::time::timeout_at(until, pending).await.is_err() {
                        // Held long enough: answer with the latest position.
                        break room.status(gate, head, client, peer);
                    }
                }
                other => break other.map(|(a, _)| a),
            }
        };
        answer.ok_or(Refusal::NotFound(
            "No ticket for this gate: reload the page to take one.",
        ))
    }
}
