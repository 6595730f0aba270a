//! The portal-side phases: the micro-cache, forwarding under the breaker and the guard, and
//! the response's hygiene on its way back.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;

use super::hygiene::{content_length, strip_hop_by_hop};
use super::{Disposition, Proxy, RequestCtx};
use crate::body::{LimitedBody, ProxyBody};
use crate::guard::Priority;
use crate::isolation::{self, Verdict};
use crate::microcache::Microcache;
use crate::protect;
use crate::refusal::Refusal;
use crate::upstream::UpstreamError;

/// Retires the portal connection the request went out on, if it was captured: poisoned, the
/// pool never hands it out again (an idle copy is dropped when next seen, a waiting checkout
/// gets another), and hyper closes it once nothing holds it; what it carries afterwards
/// (perhaps an answer shifted by one) reaches nobody.
fn retire_portal_conn(ctx: &RequestCtx, reason: &'static str) {
    let Some(captured) = &ctx.portal_conn else {
        return;
    };
    if let Some(conn) = captured.connection_metadata().as_ref() {
        conn.poison();
        metrics::counter!(isolation::CONNECTIONS_RETIRED, "reason" => reason).increment(1);
    }
}

impl Proxy {
    /// Phase 7: anonymous informational pages (never a gated path) from the micro-cache. On a
    /// miss, remembers the key and the request headers so the answer can be stored.
    pub(super) fn cache_lookup(
        &self,
        head: &Parts,
        ctx: &mut RequestCtx,
    ) -> Option<Response<ProxyBody>> {
        let cache = self.shared.microcache.as_ref()?;
        if ctx.gate.is_some() {
            return None;
        }
        let key = Microcache::key(
            &head.method,
            head.headers.get(header::HOST).and_then(|h| h.to_str().ok()),
            ctx.path.as_deref()?,
            head.uri.query(),
            &head.headers,
        )?;
        if let Some(e) = cache.get(&key, &head.headers) {
            self.metrics.cache_hit.increment(1);
            let mut resp = Response::new(if head.method == http::Method::HEAD {
                ProxyBody::empty()
            } else {
                ProxyBody::full(e.body.clone())
            });
            *resp.status_mut() = e.status;
            *resp.headers_mut() = e.headers.clone();
            resp.headers_mut()
                .insert(header::AGE, HeaderValue::from(e.age()));
            ctx.disposition = Disposition::Cached;
            return Some(resp);
        }
        self.metrics.cache_miss.increment(1);
        ctx.cache = Some((key, head.headers.clone()));
        None
    }

    /// Phase 8: hop-by-hop headers out, `X-Forwarded-*` and the request id in, then the
    /// breaker and the concurrency guard (users already inside are shed last), then the pooled
    /// client with its deadlines. The portal permit reports how the exchange went when it is
    /// dropped. When responses are checked for their owner, the portal connection is captured
    /// (one small allocation per request) so that a refused or broken answer retires it.
    pub(super) async fn forward(
        &self,
        mut head: Parts,
        body: Incoming,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Incoming>, Refusal> {
        let sh = &*self.shared;
        strip_hop_by_hop(&mut head.headers);
        sh.forwarders.rewrite(
            ctx.conn.peer.ip(),
            ctx.client,
            ctx.conn.scheme,
            &mut head.headers,
        );
        let peer = ctx.conn.peer.ip();
        ctx.request_id = sh
            .isolation
            .stamp_request_id(&mut head.headers, || sh.forwarders.is_trusted(peer));
        let priority = if ctx.seat.is_some() || ctx.session.is_some() {
            Priority::Inside
        } else {
            Priority::New
        };
        let mut permit = protect::enter(
            sh.breaker.as_ref(),
            sh.guard.as_ref(),
            priority,
            &self.metrics.slot_wait,
        )
        .await?;
        let mut req = Request::from_parts(head, LimitedBody::new(body, self.max_body));
        if sh.isolation.checks_responses() {
            ctx.portal_conn = Some(capture_connection(&mut req));
        }
        ctx.body_unread = false;
        // The slot rides with the exchange: if the client goes away while the portal works on
        // the request, the slot stays taken until the portal is done with it.
        let (result, slot) = self.upstream.send(req, permit.take_slot()).await;
        permit.restore_slot(slot);
        permit.observe(&result);
        drop(permit);
        if let Err(e @ (UpstreamError::Timeout(_) | UpstreamError::Protocol(_))) = &result {
            // hyper already keeps such a connection out of the pool; retiring it says so
            // explicitly and counts it.
            retire_portal_conn(ctx, e.kind());
        }
        result.map_err(Refusal::Upstream)
    }

    /// Phase 9: the leak guard (a page stamped for another user is refused), the portal's
    /// release header (frees the slot), anticamera's cookie, personal answers marked private,
    /// and the micro-cache store of what RFC 9111 allows (small, declared length only).
    pub(super) async fn response_filter(
        &self,
        resp: Response<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let sh = &*self.shared;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Nothing below awaits before the verdict: a bodiless answer's connection may already
        // be back in this worker's pool, but no other request of this worker (one
        // current-thread runtime, one pool) can take it before it is retired here.
        let verdict = match sh
            .isolation
            .check_echo(ctx.request_id.as_ref(), &parts.headers)
        {
            // The owner's stamp is only looked at (and bound) once the answer is known to
            // belong to this request.
            Verdict::Deliver => {
                sh.isolation
                    .check_response(ctx.session, &mut parts.headers, sh.clock.now_ms())
            }
            refused => refused,
        };
        if verdict != Verdict::Deliver {
            let reason = verdict.reason();
            retire_portal_conn(ctx, reason);
            metrics::counter!(isolation::REFUSED, "reason" => reason).increment(1);
            if verdict == Verdict::Leak {
                metrics::counter!(isolation::LEAKS_BLOCKED).increment(1);
            }
            tracing::error!(
                session = ctx
                    .session
                    .map(|s| format!("{:08x}", s >> 32))
                    .unwrap_or_else(|| "none".into()),
                request_id = ctx
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none"),
                reason,
                "the portal's answer belongs to another user or request; refused, and its \
                 connection retired"
            );
            return Err(Refusal::Leak);
        }
        if let Some(room) = &sh.room {
            // The journey ends when the portal says so (the release header), or when it answers
            // a request the gate's `release_on` names with one of its statuses.
            let said = parts.headers.remove(&room.release_header).is_some();
            let ended = match (ctx.gate, ctx.release_rule) {
                (Some(g), Some(rule)) => room.gates[g.gate]
                    .policy()
                    .ends_journey(rule, parts.status.as_u16()),
                _ => false,
            };
            if said || ended {
                if let Some(seat) = ctx.seat.take() {
                    ctx.set_cookie = room.release(seat);
                }
            }
        }
        if let Some(c) = ctx.set_cookie.take() {
            parts.headers.append(header::SET_COOKIE, c);
        }
        sh.isolation.mark_private(
            ctx.session.is_some() || ctx.seat.is_some(),
            &mut parts.headers,
        );

        if let (Some(cache), Some((key, req_headers))) = (&sh.microcache, ctx.cache.take()) {
            let len = content_length(&parts.headers);
            match cache.storable(parts.status, &parts.headers) {
                Some((ttl, age)) if len.is_some_and(|l| l <= cache.max_object) => {
                    let bytes = http_body_util::Limited::new(body, cache.max_object as usize)
                        .collect()
                        .await
                        .map_err(|e| {
                            Refusal::Upstream(UpstreamError::Protocol(format!(
                                "reading a cacheable answer: {e}"
                            )))
                        })?
                        .to_bytes();
                    cache.put(
                        key,
                        &req_headers,
                        parts.headers.clone(),
                        bytes.clone(),
                        ttl,
                        age,
                    );
                    self.metrics.cache_stored.increment(1);
                    return Ok(Response::from_parts(parts, ProxyBody::full(bytes)));
                }
                _ => self.metrics.cache_not_storable.increment(1),
            }
        }
        Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
    }
}
