//! The state one request carries from phase to phase.
//!
//! Each phase of [`super::Proxy::pipeline`] reads the request head and this context, and either
//! adds what it decided here or refuses the request. Nothing a phase decides travels in a local
//! variable of the pipeline.

use std::net::IpAddr;
use std::time::Instant;

use http::HeaderMap;
use http::HeaderValue;
use hyper_util::client::legacy::connect::CaptureConnection;

use super::ConnInfo;
use crate::cohort::CohortId;
use crate::respond::wants_json;
use crate::room::Seat;

/// How a request ended, for `anticamera_requests_total`'s `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The portal answered.
    Forwarded,
    /// The waiting room answered (queue page, status poll, anticamera's own endpoints).
    Queued,
    /// Closed for this cohort at this hour.
    Closed,
    /// Refused by a rate limit.
    Limited,
    /// Shed to protect the portal (breaker open, concurrency limit).
    Shed,
    /// Served from the micro-cache.
    Cached,
    /// anticamera refused the request before the portal (limits, malformed).
    Refused,
    /// The portal could not be reached, broke the exchange or timed out, or the leak guard
    /// refused its answer.
    UpstreamError,
}

impl Disposition {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Disposition::Forwarded => "forwarded",
            Disposition::Queued => "queued",
            Disposition::Closed => "closed",
            Disposition::Limited => "limited",
            Disposition::Shed => "shed",
            Disposition::Cached => "cached",
            Disposition::Refused => "refused",
            Disposition::UpstreamError => "upstream_error",
        }
    }
}

/// A gated request: which gate, and the requester's cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRoute {
    /// Index of the gate in the room.
    pub gate: usize,
    /// The requester's cohort.
    pub cohort: CohortId,
}

/// What anticamera knows and has decided about one request.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request arrived (for the duration histogram).
    pub started: Instant,
    /// The connection it came on.
    pub conn: ConnInfo,
    /// The client prefers JSON to HTML (`Accept`): how refusals are rendered.
    pub json: bool,
    /// The request has a body anticamera has not handed on: an answer made now closes the
    /// connection, so the body is never read as the next request.
    pub body_unread: bool,
    /// The client's address (the peer, or what a trusted forwarder says).
    pub client: IpAddr,
    /// The session the request's credentials name (portal cookies, `Authorization`), hashed.
    pub session: Option<u64>,
    /// The normalized path, when routing or the micro-cache needs it.
    pub path: Option<String>,
    /// The cohort of the requester (0 when no room classifies).
    pub cohort: u16,
    /// The gate the request belongs to, if any.
    pub gate: Option<GateRoute>,
    /// The waiting-room slot the request's pass holds (a release header frees it).
    pub seat: Option<Seat>,
    /// The gate's `release_on` rule this request matches: a matching answer frees the seat.
    pub release_rule: Option<usize>,
    /// A cookie to set on the answer (a new ticket or pass).
    pub set_cookie: Option<HeaderValue>,
    /// The micro-cache key and the request headers it was looked up with, when the answer may
    /// be stored.
    pub cache: Option<(String, HeaderMap)>,
    /// How the request ended (refusals set their own).
    pub disposition: Disposition,
    /// The request id sent to the portal (`isolation.request_id_header`), which its answer
    /// must echo when `isolation.request_id_echo` is on.
    pub request_id: Option<HeaderValue>,
    /// The portal connection the request went out on, captured when responses are checked,
    /// so that a refused answer retires it.
    pub portal_conn: Option<CaptureConnection>,
}

impl RequestCtx {
    /// A fresh context for a request that just arrived.
    pub fn new(headers: &HeaderMap, conn: ConnInfo) -> Self {
        RequestCtx {
            started: Instant::now(),
            conn,
            json: wants_json(headers),
            body_unread: false,
            client: conn.peer.ip(),
            session: None,
            path: None,
            cohort: 0,
            gate: None,
            seat: None,
            release_rule: None,
            set_cookie: None,
            cache: None,
            disposition: Disposition::Forwarded,
            request_id: None,
            portal_conn: None,
        }
    }

    /// The metric route: 0 for open paths, gate index + 1 for a gate.
    pub fn route_index(&self) -> usize {
        self.gate.map_or(0, |g| g.gate + 1)
    }
}
