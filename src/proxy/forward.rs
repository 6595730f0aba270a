//! The portal-side phases: the micro-cache, forwarding under the breaker and the guard, and
//! the response's hygiene on its way back.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::hygiene::{content_length, strip_hop_by_hop};
use super::{Disposition, Proxy, RequestCtx};
use crate::body::{LimitedBody, ProxyBody};
use crate::guard::Priority;
use crate::isolation::{self, Verdict};
use crate::microcache::Microcache;
use crate::protect;
use crate::refusal::Refusal;
use crate::upstream::UpstreamError;

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

    /// Phase 8: hop-by-hop headers out and `X-Forwarded-*` in, then the breaker and the
    /// concurrency guard (users already inside are shed last), then the pooled client with its
    /// deadlines. The portal permit reports how the exchange went when it is dropped.
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
        let req = Request::from_parts(head, LimitedBody::new(body, self.max_body));
        ctx.body_unread = false;
        let result = self.upstream.send(req).await;
        permit.observe(&result);
        drop(permit);
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
        if sh
            .isolation
            .check_response(ctx.session, &mut parts.headers, sh.clock.now_ms())
            == Verdict::Leak
        {
            metrics::counter!(isolation::LEAKS_BLOCKED).increment(1);
            tracing::error!(
                session = ctx
                    .session
                    .map(|s| format!("{:08x}", s >> 32))
                    .unwrap_or_else(|| "none".into()),
                "leak guard: the portal answered with a page stamped for another user; refused"
            );
            return Err(Refusal::Leak);
        }
        if let Some(room) = &sh.room {
            if parts.headers.remove(&room.release_header).is_some() {
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
