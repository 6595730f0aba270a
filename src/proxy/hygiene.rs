//! Header hygiene and small request-head helpers of the request path.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A path on this site to send the user back to (never `//host` or `/\\host`, which browsers
/// take for another site).
pub(super) fn local_path(p: &str) -> Option<&str> {
    (p.starts_with('/') && !p.starts_with("//") && !p.contains('\\')).then_some(p)
}

pub(super) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Refuses requests whose framing two HTTP implementations could read differently, on what
/// hyper parsed. HTTP/1.x bytes were already checked by `framing.rs` before parsing; this covers
/// HTTP/2 requests (which can carry these headers too) and the absolute-form target vs `Host`,
/// which the byte-level validator does not interpret.
pub(super) fn check_framing(parts: &http::request::Parts) -> Result<(), &'static str> {
    let h = &parts.headers;
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if !te.is_empty() && cl > 0 {
        return Err("Content-Length and Transfer-Encoding together are not accepted.");
    }
    if cl > 1 {
        return Err("Content-Length appears more than once.");
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err("Only Transfer-Encoding: chunked is accepted.");
    }
    if let (Some(auth), Some(host)) = (parts.uri.authority(), h.get(header::HOST)) {
        if parts.version <= http::Version::HTTP_11
            && !auth
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
        {
            return Err("The request target and the Host header disagree.");
        }
    }
    Ok(())
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
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
