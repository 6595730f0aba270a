//! The request path, top to bottom.
//!
//! ```text
//! client ─▶ server (limits, timeouts)          src/server.rs
//!        ─▶ classify: client address            src/forwarded.rs
//!        ─▶ request limits (body size)          here
//!        ─▶ header hygiene (hop-by-hop, forwarded headers)   here + src/forwarded.rs
//!        ─▶ forward (pooled client, deadlines)  src/upstream.rs
//!        ─▶ response hygiene ─▶ client          here
//! ```
//! Every answer is counted by route, outcome and status. Answers anticamera makes itself are
//! [`Synthetic`]s, rendered in one place.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{LimitedBody, ProxyBody};
use crate::config::Config;
use crate::forwarded::Forwarders;
use crate::respond::{wants_json, Synthetic};
use crate::telemetry;
use crate::upstream::{Targets, Upstream, UpstreamError};

/// State shared by every worker: the validated config and what is derived from it.
pub struct Shared {
    /// The configuration this process runs.
    pub config: Arc<Config>,
    /// Trusted forwarders.
    pub forwarders: Forwarders,
    /// Portal addresses and their health.
    pub targets: Arc<Targets>,
    /// Set when shutdown begins; `/readyz` turns 503.
    pub draining: AtomicBool,
}

impl Shared {
    /// Derives the shared state from a validated config.
    pub fn new(config: Arc<Config>) -> Arc<Self> {
        Arc::new(Shared {
            forwarders: Forwarders::new(config.forwarding.trusted_forwarders.clone()),
            targets: Targets::new(&config),
            draining: AtomicBool::new(false),
            config,
        })
    }
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// How the client reached us: `http` (or `https` once TLS terminates here).
    pub scheme: &'static str,
}

/// How a request ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The portal answered.
    Forwarded,
    /// anticamera refused the request before the portal (limits, malformed).
    Refused,
    /// The portal could not be reached, broke the exchange or timed out.
    UpstreamError,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// One worker's proxy: shared state plus this worker's upstream pool.
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Upstream,
    max_body: u64,
}

impl Proxy {
    /// Builds a worker's proxy.
    pub fn new(shared: Arc<Shared>) -> Self {
        let upstream = Upstream::new(&shared.config, shared.targets.clone());
        let max_body = shared.config.server.max_body_bytes.0;
        Proxy {
            shared,
            upstream,
            max_body,
        }
    }

    /// Answers one request. Never fails: every problem becomes a response.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let json = wants_json(req.headers());
        let route = "open";
        let (resp, outcome) = match self.forward(req, conn).await {
            Ok(resp) => (resp, Outcome::Forwarded),
            Err((synthetic, outcome)) => (synthetic.into_response(json), outcome),
        };
        metrics::counter!(telemetry::REQUESTS_TOTAL,
            "route" => route,
            "outcome" => outcome.label(),
            "status" => telemetry::status_label(resp.status().as_u16()))
        .increment(1);
        metrics::histogram!(telemetry::REQUEST_DURATION, "route" => route)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, (Synthetic, Outcome)> {
        let (mut parts, body) = req.into_parts();

        // Request limits.
        if let Some(len) = content_length(&parts.headers) {
            if len > self.max_body {
                count_error("body_too_large");
                return Err((Synthetic::payload_too_large(), Outcome::Refused));
            }
        }

        // Who is the client.
        let fw = &self.shared.forwarders;
        let client = fw.client_addr(conn.peer.ip(), &parts.headers);

        // Header hygiene towards the portal.
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority.
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        fw.rewrite(conn.peer.ip(), client, conn.scheme, &mut parts.headers);

        let req = Request::from_parts(parts, LimitedBody::new(body, self.max_body));
        let resp = match self.upstream.send(req).await {
            Ok(r) => r,
            Err(e) => return Err(upstream_failure(e)),
        };

        // Response hygiene towards the client.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
    }
}

fn upstream_failure(e: UpstreamError) -> (Synthetic, Outcome) {
    count_error(e.kind());
    tracing::debug!(error = %e, "upstream request failed");
    match e {
        UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
            (Synthetic::bad_gateway(), Outcome::UpstreamError)
        }
        UpstreamError::Timeout(_) => (Synthetic::gateway_timeout(), Outcome::UpstreamError),
        UpstreamError::BodyTooLarge => (Synthetic::payload_too_large(), Outcome::Refused),
    }
}

fn count_error(kind: &'static str) {
    metrics::counter!(telemetry::ERRORS_TOTAL, "kind" => kind).increment(1);
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the non-standard
/// ones proxies traditionally drop.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }
}
