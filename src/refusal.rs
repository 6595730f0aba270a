//! Every way anticamera can refuse to forward a request, and the one place each becomes an answer.
//!
//! A request stage that does not let a request through returns a [`Refusal`]: what happened,
//! with what the answer needs (the rate limit that refused, the waiting-room page to show, the
//! portal error). [`Refusal::into_response`] is the refusal map: it decides status,
//! `Retry-After`, `Connection: close` and HTML/JSON negotiation for every kind, in one `match`,
//! through [`Synthetic`] for plain errors and [`page`] for the waiting room's queue and closed
//! pages. Refusals that happen before hyper has parsed a request (too many connections, bad
//! framing bytes, an oversized head) are rendered once as raw HTTP/1.1 bytes by
//! [`Refusal::raw_http1`], from the same map.
//!
//! The shape follows linkerd2-proxy's `errors/respond.rs`: decide *what* went wrong where it
//! happens, decide *how to say it* here.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;

use crate::body::ProxyBody;
use crate::breaker::Open;
use crate::guard::Shed;
use crate::pages::Lang;
use crate::proxy::{Disposition, Shared};
use crate::ratelimit::Limited;
use crate::respond::Synthetic;
use crate::room::Answer;
use crate::telemetry;
use crate::upstream::UpstreamError;

pub mod page;

/// Why anticamera answered a request itself instead of forwarding the portal's answer.
#[derive(Debug)]
pub enum Refusal {
    /// The request's framing could be read two ways (CL/TE, target vs `Host`), or its path is
    /// not valid: 400, connection closed.
    Framing(&'static str),
    /// A rate limit refused: 429 with an honest `Retry-After` and the RateLimit fields.
    Limited(Limited),
    /// The gate is closed for this cohort now: the closed page, 503 until it opens.
    Closed(Box<RoomPage>),
    /// Wait in line: the queue page (or its JSON twin), 503 with the poll advice.
    Queued(Box<RoomPage>),
    /// No ticket number can be handed out this second (the numbers reserved in the state file
    /// are used up by a surge faster than the reserver): 503, retry in a second. Nothing was
    /// taken: better than a number a crash could hand out twice.
    Unnumbered,
    /// The declared request body is larger than allowed: 413, connection closed (unread body).
    TooLarge,
    /// The circuit breaker is open (the portal is failing): 503 until it lets a probe through.
    BreakerOpen(Open),
    /// No slot under the portal's concurrency limit in time: 503, retry when the queue drains.
    Shed(Shed),
    /// The portal could not be reached, broke the exchange or timed out (or the client's own
    /// body was bad while streaming it there).
    Upstream(UpstreamError),
    /// The leak guard refused a response stamped for another user: 502.
    Leak,
    /// anticamera's own endpoints: nothing here (unknown gate, no ticket, unknown path).
    NotFound(&'static str),
    /// Connection level, before parsing: over `server.max_connections` (503, closed).
    TooManyConnections,
    /// Connection level, before parsing: the request head is larger than allowed (431, closed).
    HeadTooLarge,
    /// Connection level, before parsing: the bytes' framing is malformed or ambiguous (400, closed).
    FramingBytes,
}

/// A waiting-room page to show instead of the portal's: what the room decided, and what is
/// needed to render it for this request.
#[derive(Debug)]
pub struct RoomPage {
    /// The room's answer (queue or closed).
    pub answer: Answer,
    /// A ticket or pass cookie to set with the page.
    pub set_cookie: Option<HeaderValue>,
    /// The page's language (from the language cookie or `Accept-Language`).
    pub lang: Lang,
    /// Where the page sends the user back (a local path with its query).
    pub page_url: String,
}

impl Refusal {
    /// The waiting room's answer as a refusal: the queue page or the closed page.
    pub fn room(page: RoomPage) -> Refusal {
        match page.answer {
            Answer::Closed { .. } => Refusal::Closed(Box::new(page)),
            Answer::Queue { .. } => Refusal::Queued(Box::new(page)),
            Answer::Unnumbered { .. } => Refusal::Unnumbered,
        }
    }

    /// How the request is counted in `anticamera_requests_total`'s `outcome` label.
    pub fn disposition(&self) -> Disposition {
        match self {
            Refusal::Framing(_)
            | Refusal::TooLarge
            | Refusal::FramingBytes
            | Refusal::HeadTooLarge
            | Refusal::Upstream(UpstreamError::ClientBody(_) | UpstreamError::BodyTooLarge) => {
                Disposition::Refused
            }
            Refusal::Limited(_) => Disposition::Limited,
            Refusal::Closed(_) => Disposition::Closed,
            // anticamera's own endpoints are counted with the waiting room they serve.
            Refusal::Queued(_) | Refusal::NotFound(_) => Disposition::Queued,
            Refusal::BreakerOpen(_)
            | Refusal::Shed(_)
            | Refusal::TooManyConnections
            | Refusal::Unnumbered => Disposition::Shed,
            Refusal::Upstream(_) | Refusal::Leak => Disposition::UpstreamError,
        }
    }

    /// The refusal map: the answer for this refusal, as JSON when the client asked for it.
    /// When the request's body was not read (`body_unread`), the connection is closed so that
    /// the body can never be read as the next request.
    pub fn into_response(
        self,
        shared: &Shared,
        json: bool,
        body_unread: bool,
    ) -> Response<ProxyBody> {
        let mut resp = match self {
            Refusal::Closed(p) | Refusal::Queued(p) => page::render(shared, *p, json),
            Refusal::Limited(limited) => {
                let mut r = Synthetic::too_many_requests(limited.retry_after_secs() as u32)
                    .into_response(json);
                limited.headers().apply(r.headers_mut());
                r
            }
            other => other.synthetic().into_response(json),
        };
        if body_unread {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// A refusal that happens before hyper parsed a request, as the raw HTTP/1.1 bytes to write
    /// (plain text: no `Accept` header has been read). The connection closes after it.
    pub fn raw_http1(&self) -> Bytes {
        let s = Synthetic {
            close: true,
            ..self.synthetic()
        };
        s.to_http1_bytes()
    }

    /// The plain answer for every refusal that is not a waiting-room page.
    fn synthetic(&self) -> Synthetic {
        match self {
            Refusal::Framing(message) => Synthetic::bad_request(message),
            Refusal::Limited(l) => Synthetic::too_many_requests(l.retry_after_secs() as u32),
            Refusal::Closed(_) | Refusal::Queued(_) => Synthetic::unavailable(
                "waiting_room",
                "Please wait: this service is letting people in one at a time.",
                5,
            ),
            Refusal::Unnumbered => Synthetic::unavailable(
                "queue_busy",
                "Very many people are arriving at this moment. Please try again in a second.",
                1,
            ),
            Refusal::TooLarge => {
                count_error("body_too_large");
                Synthetic::payload_too_large()
            }
            Refusal::BreakerOpen(open) => Synthetic::unavailable(
                "portal_unavailable",
                "The service is temporarily unavailable. Please try again in a few minutes: nothing you submitted has been lost.",
                open.retry_after_secs().clamp(1, 3600) as u32,
            ),
            Refusal::Shed(shed) => Synthetic::unavailable(
                "overloaded",
                "The service is very busy right now. Please try again in a few seconds.",
                shed.retry_after_secs().clamp(1, 60) as u32,
            ),
            Refusal::Upstream(e) => {
                count_error(e.kind());
                tracing::debug!(error = %e, "upstream request failed");
                match e {
                    UpstreamError::ClientBody(_) => {
                        Synthetic::bad_request("The request body is malformed.")
                    }
                    UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
                        Synthetic::bad_gateway()
                    }
                    UpstreamError::Timeout(_) => Synthetic::gateway_timeout(),
                    UpstreamError::BodyTooLarge => Synthetic::payload_too_large(),
                }
            }
            Refusal::Leak => Synthetic::leak_blocked(),
            Refusal::NotFound(message) => Synthetic::not_found(message),
            Refusal::TooManyConnections => Synthetic {
                close: true,
                ..Synthetic::unavailable(
                    "too_many_connections",
                    "Too many connections; retry in a second.",
                    1,
                )
            },
            Refusal::HeadTooLarge => Synthetic::header_too_large(),
            Refusal::FramingBytes => {
                Synthetic::bad_request("Malformed or ambiguous request framing.")
            }
        }
    }
}

fn count_error(kind: &'static str) {
    metrics::counter!(telemetry::ERRORS_TOTAL, "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests;
