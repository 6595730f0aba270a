//! Every answer anticamera makes itself, in one type.
//!
//! A [`Synthetic`] is a status, a stable machine-readable code, a message for people, and the
//! connection-level consequences (`Retry-After`, `Connection: close`). One constructor per case
//! keeps statuses and headers consistent; [`Synthetic::into_response`] renders HTML or JSON from
//! the request's `Accept`. All synthetic answers carry `Cache-Control: no-store`.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::body::ProxyBody;

/// An answer made by anticamera rather than by the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code for programs (`upstream_timeout`, `body_too_large`...).
    pub code: &'static str,
    /// Short explanation for people.
    pub message: Cow<'static, str>,
    /// Seconds after which retrying makes sense, sent as `Retry-After`.
    pub retry_after: Option<u32>,
    /// Close the client connection after this answer (the request body may be unread).
    pub close: bool,
}

impl Synthetic {
    fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Synthetic {
            status,
            code,
            message: Cow::Borrowed(message),
            retry_after: None,
            close: false,
        }
    }

    /// The portal could not be reached or broke the exchange.
    pub fn bad_gateway() -> Self {
        Synthetic {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "The service could not be reached. Please try again in a few seconds.",
            )
        }
    }

    /// The portal did not answer in time.
    pub fn gateway_timeout() -> Self {
        Synthetic {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "The service took too long to answer. Please try again in a few seconds.",
            )
        }
    }

    /// The request body is larger than allowed. The body is not read: the connection closes.
    pub fn payload_too_large() -> Self {
        Synthetic {
            close: true,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The request body is larger than this service accepts.",
            )
        }
    }

    /// The request is malformed.
    pub fn bad_request(message: &'static str) -> Self {
        Synthetic {
            close: true,
            ..Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
    }

    /// A rate limit was hit; `retry_after` is honest (waiting that long is enough).
    pub fn too_many_requests(retry_after: u32) -> Self {
        Synthetic {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests in a short time. Please wait a moment and try again; your place is not lost.",
            )
        }
    }

    /// The leak guard refused a response stamped for another user.
    pub fn leak_blocked() -> Self {
        Synthetic {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::BAD_GATEWAY,
                "leak_blocked",
                "The service sent a page that does not belong to you, so anticamera did not show it. Please try again.",
            )
        }
    }

    /// The request head is larger than allowed. The connection closes.
    pub fn header_too_large() -> Self {
        Synthetic {
            close: true,
            ..Self::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                "Request header too large.",
            )
        }
    }

    /// Nothing here.
    pub fn not_found(message: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// anticamera is shutting down or overloaded and cannot take this request.
    pub fn unavailable(code: &'static str, message: &'static str, retry_after: u32) -> Self {
        Synthetic {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// Renders the answer; JSON when the client asked for it, HTML otherwise.
    pub fn into_response(self, json: bool) -> Response<ProxyBody> {
        let (body, ctype) = if json {
            let v = serde_json::json!({
                "status": self.status.as_u16(),
                "error": self.code,
                "message": self.message,
                "retry_after": self.retry_after,
            });
            (v.to_string(), "application/json")
        } else {
            (render_html(&self), "text/html; charset=utf-8")
        };
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Synthetic {
    /// The answer as raw HTTP/1.1 bytes in plain text, for refusals written before any request
    /// was parsed (no `Accept` to negotiate, no hyper connection to answer through).
    pub fn to_http1_bytes(&self) -> Bytes {
        use std::fmt::Write as _;
        let body = format!("{}\r\n", self.message);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
        );
        if let Some(s) = self.retry_after {
            let _ = write!(head, "retry-after: {s}\r\n");
        }
        if self.close {
            head.push_str("connection: close\r\n");
        }
        let _ = write!(head, "content-length: {}\r\n\r\n{body}", body.len());
        Bytes::from(head)
    }
}

fn render_html(s: &Synthetic) -> String {
    let reason = s.status.canonical_reason().unwrap_or("Error");
    format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{code} {reason}</title>\
         <main style=\"font:1.1rem/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem\">\
         <h1>{reason}</h1><p>{msg}</p><p><small>{code} · {err}</small></p></main></html>",
        code = s.status.as_u16(),
        msg = html_escape(&s.message),
        err = s.code,
    )
}

pub use crate::util::escape::html_escape;

/// Whether the client prefers JSON over HTML (`Accept: application/json` without `text/html`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") && !v.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<ProxyBody>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_answer_has_code_and_retry_after() {
        let r = Synthetic::gateway_timeout().into_response(true);
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["error"], "upstream_timeout");
        assert_eq!(v["retry_after"], 5);
    }

    #[tokio::test]
    async fn html_answer_escapes_and_closes_when_asked() {
        let r = Synthetic::payload_too_large().into_response(false);
        assert_eq!(r.headers()["connection"], "close");
        assert!(body_of(r).await.contains("<h1>Payload Too Large</h1>"));
        assert_eq!(html_escape("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
    }

    #[test]
    fn raw_http1_bytes_are_a_complete_response() {
        let raw = Synthetic::header_too_large().to_http1_bytes();
        let text = std::str::from_utf8(&raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len, "the body is exactly content-length long");
        assert!(head.lines().any(|l| l == "connection: close"));
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/json;q=0.9"),
        );
        assert!(!wants_json(&h));
    }
}
