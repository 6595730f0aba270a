//! Cohorts: who is asking.
//!
//! Every request is put in exactly one *cohort* (for INPS on claim day: `intermediaries` —
//! patronati, CAF, professionals — and `citizens`). Opening hours ([`crate::schedule`]) and queues
//! are per cohort.
//!
//! A cohort is recognised by **matchers tried in order; the first that matches wins**; when none
//! matches the request belongs to the `default` cohort. Matcher kinds:
//!
//! * `jwt` — a signed JWT taken from a cookie or a header (`Authorization: Bearer …` by default).
//!   The signature is checked with the key of `key_file`, the algorithm is **pinned by the
//!   configuration** (the token's own `alg` header is never trusted), `exp` is required and
//!   checked (`nbf` too when present), optional `issuer`/`audience` are enforced. A token that is
//!   missing, malformed, badly signed, expired or lacking the claim value **does not match**: the
//!   next matcher is tried.
//! * `header` — a header set by a gateway in front of us. It is believed **only when the direct
//!   TCP peer is in `trusted_header_from`**; from anyone else the header is ignored (a client
//!   cannot promote itself by sending `X-Cohort: intermediary`).
//! * `cookie` — a plain cookie value. Cookies are client-controlled: use it only where a wrong
//!   cohort is harmless, or prefer `jwt`.
//! * `network` — the client address (after the trusted-forwarders logic of the proxy) is in one
//!   of the CIDRs. IPv4-mapped IPv6 addresses are compared as IPv4.
//! * `path_prefix` — the request path starts with one of the prefixes.
//!
//! Cohort ids ([`CohortId`]) are small indexes into [`Cohorts::names`]; compile the schedules with
//! the same list ([`crate::schedule::Schedule::compile`]) so that ids agree.
//!
//! This module owns the `[cohorts]` schema, the compilation of the matchers and the
//! classification; the `jwt` matcher (token source, key, verification, claim) is in `jwt.rs`.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

mod jwt;

use crate::util::cookie::{cookie_value, valid_cookie_name};
use crate::util::field_error::FieldError;
use jwt::{compile_jwt, JwtMatcher};

/// Maximum number of distinct cohorts (schedules keep cohort sets as 64-bit masks).
pub const MAX_COHORTS: usize = 64;

/// Small index of a cohort in [`Cohorts::names`] (and in the `known_cohorts` given to
/// [`crate::schedule::Schedule::compile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CohortId(u8);

impl CohortId {
    /// The id of the cohort at position `index` of the cohort list; `None` past [`MAX_COHORTS`].
    pub const fn from_index(index: usize) -> Option<Self> {
        if index < MAX_COHORTS {
            Some(Self(index as u8))
        } else {
            None
        }
    }

    /// Position of this cohort in the cohort list.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

fn default_cohort_name() -> String {
    "everyone".to_owned()
}

fn default_leeway() -> String {
    "30s".to_owned()
}

/// `[cohorts]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    /// Cohort of requests that no matcher claims (default `"everyone"`).
    #[serde(default = "default_cohort_name")]
    pub default: String,
    /// Optional explicit list of every cohort. When non-empty, the default and every matcher
    /// cohort must be listed (catches typos) and ids follow this order. When empty the list is
    /// the default followed by matcher cohorts in order of first appearance.
    #[serde(default)]
    pub names: Vec<String>,
    /// CIDRs (or single addresses) of direct peers (gateways) whose `header` matchers are
    /// believed. This is the TCP peer, not the forwarded client address.
    #[serde(default)]
    pub trusted_header_from: Vec<String>,
    /// Matchers, tried in order; first match wins.
    #[serde(default)]
    pub matchers: Vec<MatcherConfig>,
}

impl Default for CohortConfig {
    fn default() -> Self {
        Self {
            default: default_cohort_name(),
            names: Vec::new(),
            trusted_header_from: Vec::new(),
            matchers: Vec::new(),
        }
    }
}

/// One `[[cohorts.matchers]]` entry: a cohort and exactly one matcher kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherConfig {
    /// Cohort assigned when this matcher matches.
    pub cohort: String,
    /// Signed JWT claim matcher.
    #[serde(default)]
    pub jwt: Option<JwtMatcherConfig>,
    /// Gateway header matcher (believed only from `trusted_header_from` peers).
    #[serde(default)]
    pub header: Option<ValuesMatcherConfig>,
    /// Plain cookie value matcher.
    #[serde(default)]
    pub cookie: Option<ValuesMatcherConfig>,
    /// Client address in one of these CIDRs.
    #[serde(default)]
    pub network: Option<Vec<String>>,
    /// Request path starts with one of these prefixes.
    #[serde(default)]
    pub path_prefix: Option<Vec<String>>,
}

/// `header = { name, values }` / `cookie = { name, values }`: matches when the header or cookie
/// has exactly one of `values` (surrounding whitespace ignored, case-sensitive).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuesMatcherConfig {
    /// Header or cookie name.
    pub name: String,
    /// Accepted values.
    pub values: Vec<String>,
}

/// `jwt = { … }`: a signed token whose `claim` holds one of `values`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtMatcherConfig {
    /// Take the token from this cookie. Exclusive with `header`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Take the token from this header (a `Bearer ` prefix is stripped). Default when neither
    /// `cookie` nor `header` is given: `authorization`.
    #[serde(default)]
    pub header: Option<String>,
    /// Claim to look at; dots walk into objects (`realm_access.roles`). The claim may be a
    /// string or an array of strings.
    pub claim: String,
    /// Accepted claim values.
    pub values: Vec<String>,
    /// Pinned algorithm: HS256/384/512 (key file = raw secret, trailing CR/LF trimmed, at least
    /// 32 bytes), RS256/384/512 and PS256/384/512 (PEM RSA public key), ES256/384 (PEM EC public
    /// key), EdDSA (PEM Ed25519 public key).
    pub algorithm: String,
    /// Key file, relative to the configuration file's directory unless absolute.
    pub key_file: String,
    /// Required `iss` value, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` value, if set (tokens carrying an `aud` are rejected when unset).
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf` (default `"30s"`).
    #[serde(default = "default_leeway")]
    pub leeway: String,
}

enum MatcherKind {
    Jwt(Box<JwtMatcher>),
    Header {
        name: HeaderName,
        values: Vec<String>,
    },
    Cookie {
        name: String,
        values: Vec<String>,
    },
    Network(Vec<IpNet>),
    PathPrefix(Vec<String>),
}

struct Matcher {
    cohort: CohortId,
    kind: MatcherKind,
}

/// Compiled cohort configuration: classifies requests into [`CohortId`]s.
pub struct Cohorts {
    names: Vec<String>,
    default: CohortId,
    trusted_header_from: Vec<IpNet>,
    matchers: Vec<Matcher>,
}

impl std::fmt::Debug for Cohorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cohorts")
            .field("names", &self.names)
            .field("default", &self.default)
            .field("trusted_header_from", &self.trusted_header_from)
            .field("matchers", &self.matchers.len())
            .finish()
    }
}

fn valid_cohort_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

const NAME_RULE: &str = "cohort names are 1-64 characters among A-Z a-z 0-9 _ - .";

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (as /32 or /128).
pub(crate) fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = IpNet::from_str(s) {
        return Some(net.trunc());
    }
    IpAddr::from_str(s).ok().map(IpNet::from)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl Cohorts {
    /// Validates `cfg` and loads the JWT key files (relative paths are resolved against
    /// `base_dir`, normally the configuration file's directory). Returns every problem found.
    pub fn compile(cfg: &CohortConfig, base_dir: &Path) -> Result<Cohorts, Vec<FieldError>> {
        let mut errors = Vec::new();

        // 1. The cohort list.
        if !valid_cohort_name(&cfg.default) {
            errors.push(FieldError::new("default", NAME_RULE));
        }
        let mut names: Vec<String> = Vec::new();
        let strict = !cfg.names.is_empty();
        if strict {
            let mut seen = HashSet::new();
            for (i, n) in cfg.names.iter().enumerate() {
                if !valid_cohort_name(n) {
                    errors.push(FieldError::new(format!("names[{i}]"), NAME_RULE));
                } else if !seen.insert(n.as_str()) {
                    errors.push(FieldError::new(
                        format!("names[{i}]"),
                        format!("duplicate cohort name {n:?}"),
                    ));
                } else {
                    names.push(n.clone());
                }
            }
            if valid_cohort_name(&cfg.default) && !names.contains(&cfg.default) {
                errors.push(FieldError::new(
                    "default",
                    format!(
                        "default cohort {:?} is not listed in names = {:?}",
                        cfg.default, cfg.names
                    ),
                ));
            }
        } else {
            names.push(cfg.default.clone());
        }
        for (i, m) in cfg.matchers.iter().enumerate() {
            if !valid_cohort_name(&m.cohort) {
                errors.push(FieldError::new(format!("matchers[{i}].cohort"), NAME_RULE));
            } else if !names.contains(&m.cohort) {
                if strict {
                    errors.push(FieldError::new(
                        format!("matchers[{i}].cohort"),
                        format!(
                            "cohort {:?} is not listed in names = {:?}",
                            m.cohort, cfg.names
                        ),
                    ));
                } else {
                    names.push(m.cohort.clone());
                }
            }
        }
        if names.len() > MAX_COHORTS {
            errors.push(FieldError::new(
                "names",
                format!("{} cohorts declared, at most {MAX_COHORTS}", names.len()),
            ));
        }
        let id_of = |name: &str| -> CohortId {
            names
                .iter()
                .position(|n| n == name)
                .and_then(CohortId::from_index)
                .unwrap_or(CohortId(0))
        };
        let default = id_of(&cfg.default);

        // 2. Trusted gateways.
        let mut trusted_header_from = Vec::new();
        for (i, s) in cfg.trusted_header_from.iter().enumerate() {
            match parse_cidr(s) {
                Some(net) => trusted_header_from.push(net),
                None => errors.push(FieldError::new(
                    format!("trusted_header_from[{i}]"),
                    format!("{s:?} is not a CIDR (like 10.0.0.0/8) or an IP address"),
                )),
            }
        }

        // 3. Matchers.
        let mut matchers = Vec::new();
        for (i, m) in cfg.matchers.iter().enumerate() {
            let key = format!("matchers[{i}]");
            let mut kinds = Vec::new();
            if m.jwt.is_some() {
                kinds.push("jwt");
            }
            if m.header.is_some() {
                kinds.push("header");
            }
            if m.cookie.is_some() {
                kinds.push("cookie");
            }
            if m.network.is_some() {
                kinds.push("network");
            }
            if m.path_prefix.is_some() {
                kinds.push("path_prefix");
            }
            if kinds.len() != 1 {
                errors.push(FieldError::new(
                    key,
                    if kinds.is_empty() {
                        "a matcher needs exactly one of jwt, header, cookie, network, path_prefix; none given".to_owned()
                    } else {
                        format!(
                            "a matcher needs exactly one of jwt, header, cookie, network, path_prefix; several given: {}",
                            kinds.join(", ")
                        )
                    },
                ));
                continue;
            }
            let before = errors.len();
            let kind = if let Some(j) = &m.jwt {
                compile_jwt(j, &format!("{key}.jwt"), base_dir, &mut errors)
                    .map(|j| MatcherKind::Jwt(Box::new(j)))
            } else if let Some(h) = &m.header {
                let k = format!("{key}.header");
                if cfg.trusted_header_from.is_empty() {
                    errors.push(FieldError::new(
                        k.clone(),
                        "a header matcher is only believed from trusted gateways: set [cohorts] trusted_header_from",
                    ));
                }
                check_values(&h.values, &format!("{k}.values"), &mut errors);
                match HeaderName::from_bytes(h.name.as_bytes()) {
                    Ok(name) => Some(MatcherKind::Header {
                        name,
                        values: trimmed(&h.values),
                    }),
                    Err(_) => {
                        errors.push(FieldError::new(
                            format!("{k}.name"),
                            format!("{:?} is not a valid header name", h.name),
                        ));
                        None
                    }
                }
            } else if let Some(c) = &m.cookie {
                let k = format!("{key}.cookie");
                check_values(&c.values, &format!("{k}.values"), &mut errors);
                if !valid_cookie_name(&c.name) {
                    errors.push(FieldError::new(
                        format!("{k}.name"),
                        format!("{:?} is not a valid cookie name", c.name),
                    ));
                }
                Some(MatcherKind::Cookie {
                    name: c.name.clone(),
                    values: trimmed(&c.values),
                })
            } else if let Some(list) = &m.network {
                let k = format!("{key}.network");
                if list.is_empty() {
                    errors.push(FieldError::new(k.clone(), "empty list never matches"));
                }
                let mut nets = Vec::new();
                for (j, s) in list.iter().enumerate() {
                    match parse_cidr(s) {
                        Some(n) => nets.push(n),
                        None => errors.push(FieldError::new(
                            format!("{k}[{j}]"),
                            format!("{s:?} is not a CIDR (like 192.0.2.0/24) or an IP address"),
                        )),
                    }
                }
                Some(MatcherKind::Network(nets))
            } else if let Some(list) = &m.path_prefix {
                let k = format!("{key}.path_prefix");
                if list.is_empty() {
                    errors.push(FieldError::new(k.clone(), "empty list never matches"));
                }
                for (j, p) in list.iter().enumerate() {
                    if !p.starts_with('/') {
                        errors.push(FieldError::new(
                            format!("{k}[{j}]"),
                            format!("{p:?} must start with '/'"),
                        ));
                    }
                }
                Some(MatcherKind::PathPrefix(list.clone()))
            } else {
                None
            };
            if let (Some(kind), true) = (kind, errors.len() == before) {
                matchers.push(Matcher {
                    cohort: id_of(&m.cohort),
                    kind,
                });
            }
        }

        if errors.is_empty() {
            Ok(Cohorts {
                names,
                default,
                trusted_header_from,
                matchers,
            })
        } else {
            Err(errors)
        }
    }

    /// Every declared cohort; a [`CohortId`] indexes this list.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Name of a cohort (`"?"` for an id from another configuration).
    pub fn name(&self, id: CohortId) -> &str {
        self.names.get(id.index()).map_or("?", String::as_str)
    }

    /// Id of the cohort called `name`.
    pub fn id(&self, name: &str) -> Option<CohortId> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(CohortId::from_index)
    }

    /// The cohort of requests no matcher claims.
    pub fn default_id(&self) -> CohortId {
        self.default
    }

    /// Classifies a request using the system clock for JWT expiry. `client_ip` is the client
    /// address after the trusted-forwarders logic; `peer_ip` is the direct TCP peer.
    pub fn classify(
        &self,
        parts: &http::request::Parts,
        client_ip: IpAddr,
        peer_ip: IpAddr,
    ) -> CohortId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.classify_at(parts, client_ip, peer_ip, now)
    }

    /// [`Cohorts::classify`] with an explicit clock (`now_unix` seconds since the UNIX epoch).
    pub fn classify_at(
        &self,
        parts: &http::request::Parts,
        client_ip: IpAddr,
        peer_ip: IpAddr,
        now_unix: u64,
    ) -> CohortId {
        let client_ip = canonical(client_ip);
        let mut peer_trusted: Option<bool> = None;
        for m in &self.matchers {
            let hit = match &m.kind {
                MatcherKind::Network(nets) => nets.iter().any(|n| n.contains(&client_ip)),
                MatcherKind::PathPrefix(prefixes) => {
                    let path = parts.uri.path();
                    prefixes.iter().any(|p| path.starts_with(p.as_str()))
                }
                MatcherKind::Cookie { name, values } => cookie_value(&parts.headers, name)
                    .is_some_and(|v| values.iter().any(|x| x == v)),
                MatcherKind::Header { name, values } => {
                    let trusted = *peer_trusted.get_or_insert_with(|| {
                        let p = canonical(peer_ip);
                        self.trusted_header_from.iter().any(|n| n.contains(&p))
                    });
                    trusted
                        && parts.headers.get_all(name).iter().any(|v| {
                            v.to_str()
                                .is_ok_and(|s| values.iter().any(|x| x == s.trim()))
                        })
                }
                MatcherKind::Jwt(j) => j.matches(&parts.headers, now_unix),
            };
            if hit {
                return m.cohort;
            }
        }
        self.default
    }
}

fn trimmed(values: &[String]) -> Vec<String> {
    values.iter().map(|v| v.trim().to_owned()).collect()
}

fn check_values(values: &[String], key: &str, errors: &mut Vec<FieldError>) {
    if values.is_empty() {
        errors.push(FieldError::new(key, "empty list never matches"));
    }
    for (j, v) in values.iter().enumerate() {
        if v.trim().is_empty() {
            errors.push(FieldError::new(format!("{key}[{j}]"), "empty value"));
        }
    }
}

#[cfg(test)]
mod tests;
