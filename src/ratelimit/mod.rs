//! Rate limits: GCRA token buckets (via `governor`) per session, per client address, per cohort
//! and per gate, with bounded keyed state.
//!
//! This module owns the rate syntax, the `[rate_limits]` schema, address keys, the limiter and the
//! `RateLimit` headers; the bounded keyed store is in `store.rs`.
//!
//! # Model
//!
//! Each configured kind (`per_session`, `per_address`, `per_cohort`, `per_gate`) is one keyed
//! `governor` limiter whose keys are `u64`. A request is checked against every configured kind in
//! the order session → address → cohort → gate, and the first refusal wins. The order puts the
//! most specific buckets first: a request refused by its own session bucket consumes nothing from
//! the shared cohort and gate buckets (which other users depend on). A request that passes the
//! session bucket but is refused by a later one has still spent its session token; that only ever
//! costs the requester itself.
//!
//! # Address levels
//!
//! An address is checked against its own bucket (IPv6 by `ipv6_prefix`, /64 by default; IPv4 by
//! `ipv4_prefix`, /32) and then against one bucket per *aggregate level* of its family
//! (`ipv6_aggregates`, by default its /48 at 16× and its /32 at 1024× the `per_address` quota;
//! `ipv4_aggregates`, its /24 at 32×), most specific first. Rotating addresses inside a prefix
//! therefore spends that prefix's bucket instead of minting fresh budgets, while a client from an
//! untouched prefix is not affected. All levels of the address limit share one store (one cap).
//!
//! # Bounded memory
//!
//! Each keyed limiter keeps at most `max_keys` keys ([`CappedStore`]). When the table is full, a
//! new key still gets a bucket of its own: the store evicts the idlest of a few sampled keys (the
//! one whose bucket refills first; a key whose bucket is already full is forgotten at no cost to
//! anyone). A key at its limit has the latest refill time of all (the levels of one limit share one
//! window, so refill times compare fairly) and is evicted last, so a flood of
//! new addresses can neither grow memory, nor lock newcomers out (which a shared overflow bucket
//! did), nor hand a throttled client a fresh bucket. [`RateLimiter::sweep`] drops idle keys in
//! bulk; [`RateLimiter::sweep_due`] tells a sweeper task that a limiter reached its cap.
//!
//! Keys are `u64`: sessions are hashed by the caller (see [`crate::util::hash::hash_bytes`]), addresses are masked to
//! their configured prefix and packed injectively when the prefix fits in 64 bits (IPv4, and IPv6
//! up to /64). The map itself hashes keys with a per-process random seed (splitmix64 finaliser) so
//! that an attacker who picks keys cannot aim them at one hash bucket.
//!
//! # Headers
//!
//! [`Limited::headers`] and [`Allowed::headers`] render the `RateLimit-Policy` and `RateLimit`
//! fields of draft-ietf-httpapi-ratelimit-headers-10 (September 2025):
//! `RateLimit-Policy: "address";q=20;w=2` and `RateLimit: "address";r=0;t=1`. A token bucket of
//! burst `B` refilled one unit every `T` is advertised as quota `q = B` over window `w = ceil(B·T)`
//! seconds (the time to refill the whole burst). `r` is the number of units left, `t` the number of
//! seconds until the next unit is available when `r = 0` (equal to `Retry-After`), otherwise until
//! the bucket is full again. `Retry-After` is the exact wait rounded UP to whole seconds, so a
//! client that waits that long is served by the bucket that refused it.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::Quota;
use serde::Deserialize;

use crate::util::duration;
use crate::util::duration::{ceil_secs, serde_str as duration_str};
use crate::util::field_error::FieldError;
use crate::util::hash::mix64;

mod store;

pub use store::{CappedStore, SharedStore};

/// A rate written as `"COUNT/UNIT"`: `"10/s"`, `"600/m"`, `"100/h"`, or `"5/10s"` (any humantime
/// duration after the slash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate {
    /// Number of requests allowed per `per`.
    pub count: u32,
    /// The period the count applies to.
    pub per: Duration,
}

/// Why a rate string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {input:?}: {reason} (expected e.g. \"10/s\", \"600/m\", \"5/10s\")")]
pub struct RateParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| RateParseError {
            input: s.to_string(),
            reason,
        };
        let (count, unit) = s.trim().split_once('/').ok_or_else(|| err("missing '/'"))?;
        let count: u32 = count
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| err("count is not a whole number"))?;
        if count == 0 {
            return Err(err("count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => duration::parse(other).map_err(|_| err("unknown unit"))?,
        };
        if per.is_zero() {
            return Err(err("period must be positive"));
        }
        if (per / count).is_zero() {
            return Err(err("rate is too high (more than one per nanosecond)"));
        }
        Ok(Rate { count, per })
    }
}

impl TryFrom<String> for Rate {
    type Error = RateParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, duration::format(self.per))
    }
}

/// One limit: a sustained rate and a burst.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained rate, e.g. `"10/s"`.
    pub rate: Rate,
    /// Bucket size: requests allowed back to back on a full bucket. Defaults to the rate's count.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl LimitConfig {
    /// The governor quota for this limit (burst 0 is refused by `validate`, and clamped to 1 here).
    pub fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.rate.count).max(1))
            .unwrap_or(NonZeroU32::MIN);
        let per_cell = self.rate.per / self.rate.count.max(1);
        Quota::with_period(per_cell)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }

    /// This limit with `times` the rate and `times` the burst (an aggregate level), or why it
    /// cannot be represented.
    pub fn quota_times(&self, times: u32) -> Result<Quota, &'static str> {
        let count = self
            .rate
            .count
            .max(1)
            .checked_mul(times.max(1))
            .ok_or("rate times this is too large")?;
        let burst = self
            .burst
            .unwrap_or(self.rate.count)
            .max(1)
            .checked_mul(times.max(1))
            .and_then(NonZeroU32::new)
            .ok_or("burst times this is too large")?;
        let per_cell = self.rate.per / count;
        Quota::with_period(per_cell)
            .map(|q| q.allow_burst(burst))
            .ok_or("rate times this is too high (more than one per nanosecond)")
    }
}

/// One aggregate level of the address limit: every address inside the same `/prefix` also
/// shares one bucket with `times` the `per_address` rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Prefix length (shorter than the per-address prefix).
    pub prefix: u8,
    /// Multiplier of the `per_address` quota (rate and burst), at least 1.
    pub times: u32,
}

impl AggregateConfig {
    const fn new(prefix: u8, times: u32) -> Self {
        AggregateConfig { prefix, times }
    }
}

/// At most this many aggregate levels per address family.
pub const MAX_AGGREGATES: usize = 4;

/// `[rate_limits]`: all rate-limit settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Hard cap on tracked keys per keyed limiter (default 1,000,000).
    pub max_keys: usize,
    /// How often idle keys are dropped (default "10s").
    #[serde(with = "duration_str")]
    pub sweep_interval: Duration,
    /// IPv6 clients are aggregated by this prefix length (default 64).
    pub ipv6_prefix: u8,
    /// IPv4 clients are aggregated by this prefix length (default 32).
    pub ipv4_prefix: u8,
    /// Wider IPv6 buckets a request is also checked against, most specific first. Absent:
    /// [`Self::DEFAULT_IPV6_AGGREGATES`] (those shorter than `ipv6_prefix`); `[]`: none.
    pub ipv6_aggregates: Option<Vec<AggregateConfig>>,
    /// Wider IPv4 buckets a request is also checked against. Absent:
    /// [`Self::DEFAULT_IPV4_AGGREGATES`] (those shorter than `ipv4_prefix`); `[]`: none.
    pub ipv4_aggregates: Option<Vec<AggregateConfig>>,
    /// Limit per session (absent: none).
    pub per_session: Option<LimitConfig>,
    /// Limit per client address prefix (absent: none).
    pub per_address: Option<LimitConfig>,
    /// Limit applied to each cohort (absent: none).
    pub per_cohort: Option<LimitConfig>,
    /// Limit applied to each gate (absent: none).
    pub per_gate: Option<LimitConfig>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            max_keys: 1_000_000,
            sweep_interval: Duration::from_secs(10),
            ipv6_prefix: 64,
            ipv4_prefix: 32,
            ipv6_aggregates: None,
            ipv4_aggregates: None,
            per_session: None,
            per_address: None,
            per_cohort: None,
            per_gate: None,
        }
    }
}

impl RateLimitsConfig {
    /// This config for one of `nodes` nodes sharing one waiting room (`[store] kind =
    /// "redis"`): the per-gate and per-cohort limits, which are the fleet's, divided among
    /// them (rate and burst; a balancer spreading requests evenly makes the sum the configured
    /// limit). Per-session and per-address limits stay each node's.
    pub fn shared_by(&self, nodes: u32) -> RateLimitsConfig {
        let n = nodes.max(1);
        let div = |l: &LimitConfig| LimitConfig {
            rate: Rate {
                count: l.rate.count,
                per: l.rate.per.saturating_mul(n),
            },
            burst: Some(l.burst.unwrap_or(l.rate.count).div_ceil(n).max(1)),
        };
        RateLimitsConfig {
            per_gate: self.per_gate.as_ref().map(div),
            per_cohort: self.per_cohort.as_ref().map(div),
            ..self.clone()
        }
    }

    /// IPv6 aggregate levels when `ipv6_aggregates` is absent: a /48 (one site, RFC 6177) shares
    /// 16 × the `per_address` quota, a /32 (typically one ISP's allocation) 1024 ×.
    pub const DEFAULT_IPV6_AGGREGATES: [AggregateConfig; 2] =
        [AggregateConfig::new(48, 16), AggregateConfig::new(32, 1024)];
    /// IPv4 aggregate levels when `ipv4_aggregates` is absent: a /24 shares 32 × the quota.
    pub const DEFAULT_IPV4_AGGREGATES: [AggregateConfig; 1] = [AggregateConfig::new(24, 32)];

    /// The IPv6 aggregate levels in effect, most specific first.
    pub fn ipv6_levels(&self) -> Vec<AggregateConfig> {
        Self::levels(
            &self.ipv6_aggregates,
            &Self::DEFAULT_IPV6_AGGREGATES,
            self.ipv6_prefix,
        )
    }

    /// The IPv4 aggregate levels in effect, most specific first.
    pub fn ipv4_levels(&self) -> Vec<AggregateConfig> {
        Self::levels(
            &self.ipv4_aggregates,
            &Self::DEFAULT_IPV4_AGGREGATES,
            self.ipv4_prefix,
        )
    }

    fn levels(
        set: &Option<Vec<AggregateConfig>>,
        default: &[AggregateConfig],
        base: u8,
    ) -> Vec<AggregateConfig> {
        match set {
            Some(list) => list.clone(),
            // Defaults that are not wider than the configured prefix do not apply.
            None => default
                .iter()
                .copied()
                .filter(|a| a.prefix < base)
                .collect(),
        }
    }

    /// Checks value ranges; every error names its key relative to `[rate_limits]`.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.max_keys == 0 {
            errs.push(FieldError::new("max_keys", "must be at least 1"));
        }
        if self.sweep_interval.is_zero() {
            errs.push(FieldError::new("sweep_interval", "must be positive"));
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            errs.push(FieldError::new("ipv6_prefix", "must be between 1 and 128"));
        }
        if self.ipv4_prefix == 0 || self.ipv4_prefix > 32 {
            errs.push(FieldError::new("ipv4_prefix", "must be between 1 and 32"));
        }
        for (family, list, base, max) in [
            (
                "ipv6_aggregates",
                self.ipv6_levels(),
                self.ipv6_prefix,
                128u8,
            ),
            (
                "ipv4_aggregates",
                self.ipv4_levels(),
                self.ipv4_prefix,
                32u8,
            ),
        ] {
            if list.len() > MAX_AGGREGATES {
                errs.push(FieldError::new(
                    family,
                    format!("at most {MAX_AGGREGATES} levels"),
                ));
            }
            let mut longer = base.min(max);
            for (i, a) in list.iter().enumerate() {
                if a.prefix == 0 || a.prefix >= longer {
                    errs.push(FieldError::new(
                        format!("{family}[{i}].prefix"),
                        format!(
                            "must be between 1 and {} (shorter than the level before it)",
                            longer.saturating_sub(1)
                        ),
                    ));
                }
                longer = longer.min(a.prefix);
                if a.times == 0 {
                    errs.push(FieldError::new(
                        format!("{family}[{i}].times"),
                        "must be at least 1",
                    ));
                } else if let Some(lim) = &self.per_address {
                    if let Err(reason) = lim.quota_times(a.times) {
                        errs.push(FieldError::new(format!("{family}[{i}].times"), reason));
                    }
                }
            }
        }
        for (kind, lim) in self.limits() {
            if let Some(lim) = lim {
                if lim.burst == Some(0) {
                    errs.push(FieldError::new(
                        format!("{}.burst", kind.config_key()),
                        "must be at least 1",
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn limits(&self) -> [(LimitKind, Option<&LimitConfig>); 4] {
        [
            (LimitKind::Session, self.per_session.as_ref()),
            (LimitKind::Address, self.per_address.as_ref()),
            (LimitKind::Cohort, self.per_cohort.as_ref()),
            (LimitKind::Gate, self.per_gate.as_ref()),
        ]
    }
}

/// Which limit refused (or is closest to refusing) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Per-session bucket.
    Session,
    /// Per-client-address-prefix bucket.
    Address,
    /// Per-cohort bucket.
    Cohort,
    /// Per-gate bucket.
    Gate,
}

impl LimitKind {
    /// All kinds, in check order.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Session,
        LimitKind::Address,
        LimitKind::Cohort,
        LimitKind::Gate,
    ];

    /// Short name, used as the header policy name and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Session => "session",
            LimitKind::Address => "address",
            LimitKind::Cohort => "cohort",
            LimitKind::Gate => "gate",
        }
    }

    fn config_key(self) -> &'static str {
        match self {
            LimitKind::Session => "per_session",
            LimitKind::Address => "per_address",
            LimitKind::Cohort => "per_cohort",
            LimitKind::Gate => "per_gate",
        }
    }
}

/// The keys of one request, computed once by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKeys {
    /// Hash of the session id (see [`crate::util::hash::hash_bytes`]); `None` for anonymous requests.
    pub session: Option<u64>,
    /// Client address (after trusted-forwarder resolution).
    pub addr: IpAddr,
    /// Cohort id.
    pub cohort: u16,
    /// Gate id, if the request goes through a gate.
    pub gate: Option<u16>,
}

/// A quota as advertised in headers: `limit` units per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Which limit this is.
    pub kind: LimitKind,
    /// Burst size (`q`).
    pub limit: u32,
    /// Time to refill the whole burst (`w`, rounded up to whole seconds when rendered).
    pub window: Duration,
}

impl Policy {
    fn from_quota(kind: LimitKind, q: Quota) -> Self {
        Policy {
            kind,
            limit: q.burst_size().get(),
            window: q.burst_size_replenished_in(),
        }
    }

    fn render(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.kind.as_str(),
            self.limit,
            ceil_secs(self.window).max(1)
        )
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited by {} limit, retry after {retry_after:?}", policy.kind.as_str())]
pub struct Limited {
    /// The policy that refused.
    pub policy: Policy,
    /// Exact time after which the refusing bucket will accept one request.
    pub retry_after: Duration,
}

impl Limited {
    /// Which limit refused.
    pub fn kind(&self) -> LimitKind {
        self.policy.kind
    }

    /// `Retry-After` value: the wait rounded UP to whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// Header fields for the 429 response (draft-ietf-httpapi-ratelimit-headers-10 + `Retry-After`).
    pub fn headers(&self) -> RateLimitHeaders {
        let secs = self.retry_after_secs();
        RateLimitHeaders {
            policy: self.policy.render(),
            ratelimit: format!("\"{}\";r=0;t={}", self.policy.kind.as_str(), secs),
            retry_after: Some(secs),
        }
    }
}

/// A request let through, with the tightest remaining budget among the checked limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The policy with the fewest remaining units, if any limit applied.
    pub tightest: Option<(Policy, u32)>,
}

impl Allowed {
    /// Informational header fields (no `Retry-After`), or `None` when no limit applied.
    pub fn headers(&self) -> Option<RateLimitHeaders> {
        let (policy, remaining) = self.tightest?;
        // Time until the bucket is full again: each missing unit takes window/limit.
        let missing = policy.limit.saturating_sub(remaining);
        let refill = policy
            .window
            .mul_f64(f64::from(missing) / f64::from(policy.limit.max(1)));
        Some(RateLimitHeaders {
            policy: policy.render(),
            ratelimit: format!(
                "\"{}\";r={};t={}",
                policy.kind.as_str(),
                remaining,
                ceil_secs(refill)
            ),
            retry_after: None,
        })
    }
}

/// Rendered rate-limit header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Value of `RateLimit-Policy`.
    pub policy: String,
    /// Value of `RateLimit`.
    pub ratelimit: String,
    /// Value of `Retry-After` in seconds (only on refusals).
    pub retry_after: Option<u64>,
}

impl RateLimitHeaders {
    /// Inserts the fields into a header map (values are plain ASCII, so this cannot fail in practice;
    /// an invalid value is skipped).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        if let Ok(v) = http::HeaderValue::from_str(&self.policy) {
            headers.insert(http::HeaderName::from_static("ratelimit-policy"), v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&self.ratelimit) {
            headers.insert(http::HeaderName::from_static("ratelimit"), v);
        }
        if let Some(s) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
        }
    }
}

/// Maps client addresses to `u64` keys, aggregating by prefix.
#[derive(Debug, Clone, Copy)]
pub struct AddressKeyer {
    v4_mask: u32,
    v6_mask: u128,
    v6_prefix: u8,
    seed: u64,
    /// Masks of the aggregate levels, most specific first, and how many are used.
    v6_levels: [u128; MAX_AGGREGATES],
    v4_levels: [u32; MAX_AGGREGATES],
    n6: usize,
    n4: usize,
    /// Secret per-level seeds folding aggregate keys (IPv6 levels, then IPv4 levels).
    level_seeds: [u64; 2 * MAX_AGGREGATES],
}

/// The keys of one client address: its own bucket's, then one per aggregate level of its
/// address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressKeys {
    /// The key of the address's own prefix (`ipv4_prefix` / `ipv6_prefix`).
    pub base: u64,
    /// True for IPv4 (and IPv4-mapped IPv6) addresses.
    pub v4: bool,
    levels: [u64; MAX_AGGREGATES],
    n: usize,
}

impl AddressKeys {
    /// The aggregate keys, most specific first.
    pub fn levels(&self) -> &[u64] {
        &self.levels[..self.n]
    }
}

fn v6_mask(prefix: u8) -> u128 {
    match u32::from(prefix.min(128)) {
        0 => 0,
        p => u128::MAX << (128 - p),
    }
}

fn v4_mask(prefix: u8) -> u32 {
    match u32::from(prefix.min(32)) {
        0 => 0,
        p => u32::MAX << (32 - p),
    }
}

impl AddressKeyer {
    /// IPv4 keys live in `0xff00_0000_xxxx_xxxx`: as an IPv6 /64 that is multicast (ff00::/8),
    /// never a client source address, so IPv4 and IPv6 keys (prefix <= 64) never collide.
    const V4_TAG: u64 = 0xff00_0000_0000_0000;

    /// A keyer for the given prefix lengths (clamped to 0..=32 and 0..=128), without aggregates.
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        Self::with_aggregates(ipv4_prefix, ipv6_prefix, &[], &[])
    }

    /// A keyer with aggregate levels (at most [`MAX_AGGREGATES`] per family are used).
    pub fn with_aggregates(
        ipv4_prefix: u8,
        ipv6_prefix: u8,
        v4_levels: &[AggregateConfig],
        v6_levels: &[AggregateConfig],
    ) -> Self {
        let mut k = AddressKeyer {
            v4_mask: v4_mask(ipv4_prefix),
            v6_mask: v6_mask(ipv6_prefix),
            v6_prefix: ipv6_prefix.min(128),
            seed: rand::random::<u64>(),
            v6_levels: [0; MAX_AGGREGATES],
            v4_levels: [0; MAX_AGGREGATES],
            n6: v6_levels.len().min(MAX_AGGREGATES),
            n4: v4_levels.len().min(MAX_AGGREGATES),
            level_seeds: std::array::from_fn(|_| rand::random::<u64>()),
        };
        for (m, a) in k.v6_levels.iter_mut().zip(v6_levels) {
            *m = v6_mask(a.prefix);
        }
        for (m, a) in k.v4_levels.iter_mut().zip(v4_levels) {
            *m = v4_mask(a.prefix);
        }
        k
    }

    /// The key for an address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.
    #[inline]
    pub fn key(&self, addr: IpAddr) -> u64 {
        match Self::family(addr) {
            Ok(v4) => self.v4_key(v4),
            Err(v6) => self.v6_key(v6),
        }
    }

    /// The address's own key and its aggregate keys. Aggregate keys are folded with a secret
    /// per-level seed (a bijection for prefixes up to /64), so they cannot be aimed at another
    /// level's or another address's key.
    #[inline]
    pub fn keys(&self, addr: IpAddr) -> AddressKeys {
        let mut levels = [0u64; MAX_AGGREGATES];
        match Self::family(addr) {
            Ok(v4) => {
                for (i, l) in levels.iter_mut().enumerate().take(self.n4) {
                    let x = Self::V4_TAG | u64::from(v4 & self.v4_levels[i]);
                    *l = mix64(x ^ self.level_seeds[MAX_AGGREGATES + i]);
                }
                AddressKeys {
                    base: self.v4_key(v4),
                    v4: true,
                    levels,
                    n: self.n4,
                }
            }
            Err(v6) => {
                for (i, l) in levels.iter_mut().enumerate().take(self.n6) {
                    let m = v6 & self.v6_levels[i];
                    let seed = self.level_seeds[i];
                    *l = mix64((m >> 64) as u64 ^ seed) ^ mix64(m as u64 ^ seed.rotate_left(32));
                }
                AddressKeys {
                    base: self.v6_key(v6),
                    v4: false,
                    levels,
                    n: self.n6,
                }
            }
        }
    }

    /// `Ok(IPv4 as u32)` or `Err(IPv6 as u128)`.
    #[inline]
    fn family(addr: IpAddr) -> Result<u32, u128> {
        match addr {
            IpAddr::V4(v4) => Ok(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Ok(u32::from(v4)),
                None => Err(u128::from(v6)),
            },
        }
    }

    #[inline]
    fn v4_key(&self, v4: u32) -> u64 {
        Self::V4_TAG | u64::from(v4 & self.v4_mask)
    }

    #[inline]
    fn v6_key(&self, v6: u128) -> u64 {
        let v6 = v6 & self.v6_mask;
        let hi = (v6 >> 64) as u64;
        let lo = v6 as u64;
        if self.v6_prefix <= 64 {
            hi // injective: the low half is masked out
        } else {
            // Longer prefixes do not fit: fold with a secret seed so collisions cannot be aimed.
            hi ^ mix64(lo ^ self.seed)
        }
    }
}

type Keyed<C> = governor::RateLimiter<u64, SharedStore, C, StateInformationMiddleware>;

/// One bucket family: a quota over keys, on a (possibly shared) store.
struct Level<C: Clock> {
    policy: Policy,
    limiter: Keyed<C>,
}

impl<C: Clock> Level<C> {
    #[inline]
    fn check(&self, key: u64, tightest: &mut Option<(Policy, u32)>) -> Result<(), Limited> {
        match self.limiter.check_key(&key) {
            Ok(snap) => {
                let rem = snap.remaining_burst_capacity();
                if tightest.is_none_or(|(_, r)| rem < r) {
                    *tightest = Some((self.policy, rem));
                }
                Ok(())
            }
            Err(not_until) => Err(Limited {
                policy: self.policy,
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            }),
        }
    }
}

/// One configured kind: its own bucket per key and, for addresses, the aggregate levels. All
/// levels of a kind share one store, so `max_keys` bounds the kind as a whole.
struct KindLimiter<C: Clock> {
    base: Level<C>,
    v6: Vec<Level<C>>,
    v4: Vec<Level<C>>,
    store: Arc<CappedStore>,
}

impl<C: Clock> KindLimiter<C> {
    /// The level built last: its start instant is the latest, so its idea of "idle" is the most
    /// conservative for every key of the shared store.
    fn last(&self) -> &Level<C> {
        self.v4.last().or(self.v6.last()).unwrap_or(&self.base)
    }
}

/// Key counts per kind, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyCounts {
    /// Tracked session keys.
    pub session: usize,
    /// Tracked address-prefix keys (the aggregate levels' keys included).
    pub address: usize,
    /// Tracked cohort keys.
    pub cohort: usize,
    /// Tracked gate keys.
    pub gate: usize,
}

/// All configured rate limits. Generic over the governor clock so tests can use
/// `governor::clock::FakeRelativeClock`; production uses the default (quanta) clock.
pub struct RateLimiter<C: Clock = DefaultClock> {
    kinds: [Option<KindLimiter<C>>; 4],
    keyer: AddressKeyer,
    sweep_interval: Duration,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("keys", &self.len_by_kind())
            .finish_non_exhaustive()
    }
}

impl RateLimiter<DefaultClock> {
    /// Builds the limiters from a validated config, on the default clock.
    pub fn new(cfg: &RateLimitsConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// Builds the limiters from a validated config on the given clock.
    pub fn with_clock(cfg: &RateLimitsConfig, clock: C) -> Self {
        let level = |kind: LimitKind, quota: Quota, store: &Arc<CappedStore>| {
            let limiter: Keyed<C> =
                governor::RateLimiter::<u64, SharedStore, C, NoOpMiddleware<C::Instant>>::new(
                    quota,
                    SharedStore(store.clone()),
                    clock.clone(),
                )
                .with_middleware::<StateInformationMiddleware>();
            Level {
                policy: Policy::from_quota(kind, quota),
                limiter,
            }
        };
        let build = |kind: LimitKind, lim: Option<&LimitConfig>| {
            lim.map(|lim| {
                let store = Arc::new(CappedStore::new(cfg.max_keys));
                let base = level(kind, lim.quota(), &store);
                let aggregates = |list: &[AggregateConfig]| -> Vec<Level<C>> {
                    if kind != LimitKind::Address {
                        return Vec::new();
                    }
                    list.iter()
                        .take(MAX_AGGREGATES)
                        .map(|a| {
                            // validate() refused quotas that do not fit; clamp if unvalidated.
                            let q = lim.quota_times(a.times).unwrap_or_else(|_| lim.quota());
                            level(kind, q, &store)
                        })
                        .collect()
                };
                let v6 = aggregates(&cfg.ipv6_levels());
                let v4 = aggregates(&cfg.ipv4_levels());
                KindLimiter {
                    base,
                    v6,
                    v4,
                    store,
                }
            })
        };
        let l = cfg.limits();
        RateLimiter {
            kinds: [
                build(l[0].0, l[0].1),
                build(l[1].0, l[1].1),
                build(l[2].0, l[2].1),
                build(l[3].0, l[3].1),
            ],
            keyer: AddressKeyer::with_aggregates(
                cfg.ipv4_prefix,
                cfg.ipv6_prefix,
                &cfg.ipv4_levels(),
                &cfg.ipv6_levels(),
            ),
            sweep_interval: cfg.sweep_interval,
        }
    }

    /// How often a table at its cap is swept (`[rate_limits] sweep_interval`).
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Checks (and consumes one unit from) every applicable bucket, session → address → cohort →
    /// gate; the first refusal is returned. On success, reports the tightest remaining budget.
    #[inline]
    pub fn check(&self, keys: &RequestKeys) -> Result<Allowed, Limited> {
        let mut tightest = None;
        let [s, a, c, g] = &self.kinds;
        if let (Some(l), Some(k)) = (s, keys.session) {
            l.base.check(k, &mut tightest)?;
        }
        if let Some(l) = a {
            // The address's own bucket, then each wider prefix's, most specific first.
            let k = self.keyer.keys(keys.addr);
            l.base.check(k.base, &mut tightest)?;
            let levels = if k.v4 { &l.v4 } else { &l.v6 };
            for (level, key) in levels.iter().zip(k.levels()) {
                level.check(*key, &mut tightest)?;
            }
        }
        if let Some(l) = c {
            l.base.check(u64::from(keys.cohort), &mut tightest)?;
        }
        if let (Some(l), Some(k)) = (g, keys.gate) {
            l.base.check(u64::from(k), &mut tightest)?;
        }
        Ok(Allowed { tightest })
    }

    /// The address key used for `addr` (exposed for tests and diagnostics).
    pub fn address_key(&self, addr: IpAddr) -> u64 {
        self.keyer.key(addr)
    }

    /// The policy configured for a kind, if any (for addresses: the address's own bucket).
    pub fn policy(&self, kind: LimitKind) -> Option<Policy> {
        self.kinds[kind as usize].as_ref().map(|k| k.base.policy)
    }

    /// The policies of the address aggregate levels, IPv6 then IPv4, most specific first.
    pub fn aggregate_policies(&self) -> (Vec<Policy>, Vec<Policy>) {
        let Some(a) = &self.kinds[LimitKind::Address as usize] else {
            return (Vec::new(), Vec::new());
        };
        let p = |ls: &[Level<C>]| ls.iter().map(|l| l.policy).collect();
        (p(&a.v6), p(&a.v4))
    }

    /// Drops idle keys (whose bucket is full again) and releases memory when the maps shrank a lot.
    /// Call every `sweep_interval`, and sooner when [`Self::sweep_due`] says so.
    pub fn sweep(&self) {
        for k in self.kinds.iter().flatten() {
            let last = &k.last().limiter;
            last.retain_recent();
            last.shrink_to_fit();
        }
    }

    /// True when some keyed limiter hit `max_keys` since the last sweep (it is evicting keys to
    /// make room for new ones): a sweep now would free the idle ones in bulk.
    pub fn sweep_due(&self) -> bool {
        self.kinds.iter().flatten().any(|k| k.store.at_cap())
    }

    /// Keys evicted to make room for new ones since start, per kind (for a counter).
    pub fn evicted_by_kind(&self) -> [(LimitKind, u64); 4] {
        LimitKind::ALL.map(|kind| {
            let n = self.kinds[kind as usize]
                .as_ref()
                .map_or(0, |k| k.store.evicted());
            (kind, n)
        })
    }

    /// Tracked keys per kind (for a gauge).
    pub fn len_by_kind(&self) -> KeyCounts {
        let len = |i: usize| self.kinds[i].as_ref().map_or(0, |k| k.store.len());
        KeyCounts {
            session: len(0),
            address: len(1),
            cohort: len(2),
            gate: len(3),
        }
    }
}

#[cfg(test)]
mod tests;
