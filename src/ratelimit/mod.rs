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
//! # Bounded memory
//!
//! Each keyed limiter keeps at most `max_keys` keys ([`CappedStore`]). When the cap is reached,
//! requests with a key that is not already tracked share one *overflow* bucket (same quota as one
//! key), instead of inserting a new key or evicting an existing one. So a flood of random IPv6
//! addresses can neither grow memory nor evict well-behaved keys; at worst new arrivals are limited
//! together, very conservatively, until the next [`RateLimiter::sweep`] drops idle keys (a key is
//! idle once its bucket is full again, which makes dropping it invisible to its owner).
//! [`RateLimiter::sweep_due`] tells a sweeper task that a limiter hit its cap, so it can sweep
//! earlier than `sweep_interval`.
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
}

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
            per_session: None,
            per_address: None,
            per_cohort: None,
            per_gate: None,
        }
    }
}

impl RateLimitsConfig {
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
}

impl AddressKeyer {
    /// IPv4 keys live in `0xff00_0000_xxxx_xxxx`: as an IPv6 /64 that is multicast (ff00::/8),
    /// never a client source address, so IPv4 and IPv6 keys (prefix <= 64) never collide.
    const V4_TAG: u64 = 0xff00_0000_0000_0000;

    /// A keyer for the given prefix lengths (clamped to 0..=32 and 0..=128).
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        let p4 = u32::from(ipv4_prefix.min(32));
        let p6 = u32::from(ipv6_prefix.min(128));
        AddressKeyer {
            v4_mask: if p4 == 0 { 0 } else { u32::MAX << (32 - p4) },
            v6_mask: if p6 == 0 { 0 } else { u128::MAX << (128 - p6) },
            v6_prefix: ipv6_prefix.min(128),
            seed: rand::random::<u64>(),
        }
    }

    /// The key for an address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.
    #[inline]
    pub fn key(&self, addr: IpAddr) -> u64 {
        let v6 = match addr {
            IpAddr::V4(v4) => return Self::V4_TAG | u64::from(u32::from(v4) & self.v4_mask),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => return Self::V4_TAG | u64::from(u32::from(v4) & self.v4_mask),
                None => u128::from(v6) & self.v6_mask,
            },
        };
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

struct KindLimiter<C: Clock> {
    policy: Policy,
    limiter: Keyed<C>,
    store: Arc<CappedStore>,
}

impl<C: Clock> KindLimiter<C> {
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

/// Key counts per kind, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyCounts {
    /// Tracked session keys.
    pub session: usize,
    /// Tracked address-prefix keys.
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
        let build = |kind: LimitKind, lim: Option<&LimitConfig>| {
            lim.map(|lim| {
                let quota = lim.quota();
                let store = Arc::new(CappedStore::new(cfg.max_keys));
                let limiter: Keyed<C> =
                    governor::RateLimiter::<u64, SharedStore, C, NoOpMiddleware<C::Instant>>::new(
                        quota,
                        SharedStore(store.clone()),
                        clock.clone(),
                    )
                    .with_middleware::<StateInformationMiddleware>();
                KindLimiter {
                    policy: Policy::from_quota(kind, quota),
                    limiter,
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
            keyer: AddressKeyer::new(cfg.ipv4_prefix, cfg.ipv6_prefix),
        }
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
            l.check(k, &mut tightest)?;
        }
        if let Some(l) = a {
            l.check(self.keyer.key(keys.addr), &mut tightest)?;
        }
        if let Some(l) = c {
            l.check(u64::from(keys.cohort), &mut tightest)?;
        }
        if let (Some(l), Some(k)) = (g, keys.gate) {
            l.check(u64::from(k), &mut tightest)?;
        }
        Ok(Allowed { tightest })
    }

    /// The address key used for `addr` (exposed for tests and diagnostics).
    pub fn address_key(&self, addr: IpAddr) -> u64 {
        self.keyer.key(addr)
    }

    /// The policy configured for a kind, if any.
    pub fn policy(&self, kind: LimitKind) -> Option<Policy> {
        self.kinds[kind as usize].as_ref().map(|k| k.policy)
    }

    /// Drops idle keys (whose bucket is full again) and releases memory when the maps shrank a lot.
    /// Call every `sweep_interval`, and sooner when [`Self::sweep_due`] says so.
    pub fn sweep(&self) {
        for k in self.kinds.iter().flatten() {
            k.limiter.retain_recent();
            k.limiter.shrink_to_fit();
        }
    }

    /// True when some keyed limiter hit `max_keys` since the last sweep (new keys are sharing
    /// the overflow bucket): the sweeper should run now rather than wait for its interval.
    pub fn sweep_due(&self) -> bool {
        self.kinds.iter().flatten().any(|k| k.store.at_cap())
    }

    /// Checks that used the shared overflow bucket since start, per kind (for a counter).
    pub fn overflowed_by_kind(&self) -> [(LimitKind, u64); 4] {
        LimitKind::ALL.map(|kind| {
            let n = self.kinds[kind as usize]
                .as_ref()
                .map_or(0, |k| k.store.overflowed());
            (kind, n)
        })
    }

    /// Tracked keys per kind (for a gauge).
    pub fn len_by_kind(&self) -> KeyCounts {
        let len = |i: usize| self.kinds[i].as_ref().map_or(0, |k| k.limiter.len());
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
