//! A short micro-cache for public informational pages, off by default.
//!
//! It exists to spare a struggling portal the informational pages everybody reloads on claim
//! day, and it follows RFC 9111 strictly so that it can never store anything personal:
//! - only `GET`/`HEAD` requests with **no `Cookie` and no `Authorization`** (after anticamera
//!   removed its own cookies) and outside every gate are looked up or stored;
//! - only `200` responses with **explicit** freshness (`s-maxage` or `max-age`; no heuristic
//!   freshness), without `private`, `no-store`, `no-cache`, without `Set-Cookie`, and whose
//!   `Vary` is not `*` and names neither `Cookie` nor `Authorization`;
//! - the key is method, host, normalized path and query, plus the values of the request headers
//!   the response varies on;
//! - entries live for the response's freshness (`s-maxage` over `max-age`, minus `Age`), capped
//!   by `microcache.max_ttl`; hits carry a correct `Age`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::Deserialize;

use crate::config::{ByteSize, Dur};

/// `[microcache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicrocacheConfig {
    /// Off unless set.
    pub enabled: bool,
    /// Longest time an entry is served, whatever the portal allows.
    pub max_ttl: Dur,
    /// Entries kept (oldest dropped first).
    pub max_entries: usize,
    /// Largest body stored (a response must declare Content-Length to be stored).
    pub max_object_bytes: ByteSize,
}

impl Default for MicrocacheConfig {
    fn default() -> Self {
        MicrocacheConfig {
            enabled: false,
            max_ttl: Dur(Duration::from_secs(5)),
            max_entries: 10_000,
            max_object_bytes: ByteSize(256 << 10),
        }
    }
}

/// Metric: micro-cache results by `result` (`hit`, `miss`, `stored`, `not_storable`).
pub const RESULTS: &str = "anticamera_microcache_total";

/// A stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Status (always 200).
    pub status: StatusCode,
    /// Headers as the portal sent them (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    stored: Instant,
    ttl: Duration,
    age_at_store: u64,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Entry {
    /// The `Age` to send now.
    pub fn age(&self) -> u64 {
        self.age_at_store + self.stored.elapsed().as_secs()
    }
}

/// The cache.
pub struct Microcache {
    max_ttl: Duration,
    max_entries: usize,
    /// Largest body stored.
    pub max_object: u64,
    map: Mutex<HashMap<String, Entry>>,
}

impl Microcache {
    /// A cache for a config with `enabled = true`.
    pub fn new(cfg: &MicrocacheConfig) -> Self {
        Microcache {
            max_ttl: cfg.max_ttl.0,
            max_entries: cfg.max_entries.max(1),
            max_object: cfg.max_object_bytes.0,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cache key for an anonymous request, or `None` if the request may not use the cache.
    pub fn key(
        method: &Method,
        host: Option<&str>,
        normalized_path: &str,
        query: Option<&str>,
        h: &HeaderMap,
    ) -> Option<String> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if h.contains_key(header::COOKIE) || h.contains_key(header::AUTHORIZATION) {
            return None;
        }
        Some(format!(
            "{} {}{}?{}",
            method,
            host.unwrap_or("").to_ascii_lowercase(),
            normalized_path,
            query.unwrap_or("")
        ))
    }

    /// A fresh entry for this key whose `Vary` headers match the request.
    pub fn get(&self, key: &str, req: &HeaderMap) -> Option<Entry> {
        let mut map = self.map.lock().ok()?;
        let e = map.get(key)?;
        if e.stored.elapsed() >= e.ttl {
            map.remove(key);
            return None;
        }
        if e.vary.iter().any(|(n, v)| req.get(n) != v.as_ref()) {
            return None;
        }
        Some(e.clone())
    }

    /// How long a response may be stored, or `None` if it must not be (see the module docs).
    pub fn storable(&self, status: StatusCode, h: &HeaderMap) -> Option<(Duration, u64)> {
        if status != StatusCode::OK || h.contains_key(header::SET_COOKIE) {
            return None;
        }
        let mut max_age = None;
        let mut s_maxage = None;
        for d in h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let d = d.trim().to_ascii_lowercase();
            let (name, val) = d
                .split_once('=')
                .map(|(a, b)| {
                    (
                        a.trim().to_string(),
                        Some(b.trim().trim_matches('"').to_string()),
                    )
                })
                .unwrap_or((d.clone(), None));
            match name.as_str() {
                "private" | "no-store" | "no-cache" | "must-understand" => return None,
                "max-age" => max_age = Some(val?.parse::<u64>().ok()?),
                "s-maxage" => s_maxage = Some(val?.parse::<u64>().ok()?),
                _ => {}
            }
        }
        for v in h.get_all(header::VARY).iter() {
            let v = v.to_str().ok()?.to_ascii_lowercase();
            if v.split(',')
                .any(|n| matches!(n.trim(), "*" | "cookie" | "authorization"))
            {
                return None;
            }
        }
        let lifetime = s_maxage.or(max_age)?;
        let age: u64 = h
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let fresh = lifetime.checked_sub(age).filter(|f| *f > 0)?;
        Some((Duration::from_secs(fresh).min(self.max_ttl), age))
    }

    /// Stores a response that [`Microcache::storable`] accepted.
    pub fn put(
        &self,
        key: String,
        req: &HeaderMap,
        headers: HeaderMap,
        body: Bytes,
        ttl: Duration,
        age: u64,
    ) {
        let vary = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .map(|n| {
                let v = req.get(&n).cloned();
                (n, v)
            })
            .collect();
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.max_entries {
            map.retain(|_, e| e.stored.elapsed() < e.ttl);
            if map.len() >= self.max_entries {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.stored)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            key,
            Entry {
                status: StatusCode::OK,
                headers,
                body,
                stored: Instant::now(),
                ttl,
                age_at_store: age,
                vary,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Microcache {
        Microcache::new(&MicrocacheConfig {
            enabled: true,
            ..Default::default()
        })
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_anonymous_gets_and_heads_have_a_key() {
        let empty = HeaderMap::new();
        assert!(Microcache::key(&Method::GET, Some("Portal"), "/info", None, &empty).is_some());
        assert!(Microcache::key(&Method::POST, Some("p"), "/info", None, &empty).is_none());
        assert!(Microcache::key(
            &Method::GET,
            Some("p"),
            "/info",
            None,
            &hm(&[("cookie", "a=1")])
        )
        .is_none());
        assert!(Microcache::key(
            &Method::GET,
            Some("p"),
            "/info",
            None,
            &hm(&[("authorization", "x")])
        )
        .is_none());
        let a = Microcache::key(&Method::GET, Some("p"), "/info", Some("a=1"), &empty);
        let b = Microcache::key(&Method::GET, Some("p"), "/info", Some("a=2"), &empty);
        let c = Microcache::key(&Method::HEAD, Some("p"), "/info", Some("a=1"), &empty);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn storability_follows_rfc_9111_strictly() {
        let c = cache();
        let ok = |pairs: &[(&str, &str)]| c.storable(StatusCode::OK, &hm(pairs)).is_some();
        assert!(ok(&[("cache-control", "public, max-age=60")]));
        assert!(ok(&[("cache-control", "s-maxage=10")]));
        assert!(!ok(&[]), "no heuristic freshness");
        assert!(
            !ok(&[("expires", "Thu, 01 Dec 2099 16:00:00 GMT")]),
            "only explicit max-age"
        );
        assert!(!ok(&[("cache-control", "private, max-age=60")]));
        assert!(!ok(&[("cache-control", "no-store")]));
        assert!(!ok(&[("cache-control", "max-age=60, no-cache")]));
        assert!(!ok(&[
            ("cache-control", "max-age=60"),
            ("set-cookie", "s=1")
        ]));
        assert!(!ok(&[("cache-control", "max-age=60"), ("vary", "*")]));
        assert!(!ok(&[
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Encoding, Cookie")
        ]));
        assert!(
            !ok(&[("cache-control", "max-age=60"), ("age", "60")]),
            "already stale"
        );
        assert!(!ok(&[("cache-control", "max-age=abc")]));
        assert!(c
            .storable(
                StatusCode::NOT_FOUND,
                &hm(&[("cache-control", "max-age=60")])
            )
            .is_none());
        let (ttl, _) = c
            .storable(StatusCode::OK, &hm(&[("cache-control", "max-age=600")]))
            .unwrap();
        assert_eq!(ttl, Duration::from_secs(5), "capped by max_ttl");
        let (ttl, age) = c
            .storable(
                StatusCode::OK,
                &hm(&[("cache-control", "max-age=3"), ("age", "1")]),
            )
            .unwrap();
        assert_eq!((ttl, age), (Duration::from_secs(2), 1));
    }

    #[test]
    fn vary_headers_are_part_of_the_match() {
        let c = cache();
        let req_it = hm(&[("accept-language", "it")]);
        let req_en = hm(&[("accept-language", "en")]);
        let resp = hm(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
        c.put(
            "k".into(),
            &req_it,
            resp,
            Bytes::from_static(b"ciao"),
            Duration::from_secs(5),
            0,
        );
        assert_eq!(c.get("k", &req_it).unwrap().body, "ciao");
        assert!(c.get("k", &req_en).is_none());
    }

    #[test]
    fn entries_expire_and_the_cache_is_bounded() {
        let c = Microcache::new(&MicrocacheConfig {
            enabled: true,
            max_entries: 3,
            ..Default::default()
        });
        let e = HeaderMap::new();
        c.put(
            "gone".into(),
            &e,
            HeaderMap::new(),
            Bytes::new(),
            Duration::ZERO,
            0,
        );
        assert!(c.get("gone", &e).is_none());
        for i in 0..10 {
            c.put(
                format!("k{i}"),
                &e,
                HeaderMap::new(),
                Bytes::new(),
                Duration::from_secs(5),
                0,
            );
        }
        assert!(c.map.lock().unwrap().len() <= 3);
        assert!(c.get("k9", &e).is_some());
    }
}
