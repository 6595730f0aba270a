//! Metric names, the description of every family (`FAMILIES`: help text, type, unit, wherever
//! the name is defined), the series that exist from start-up (build info, config reload), and
//! the Prometheus recorder.
//!
//! Names are part of the operator interface (dashboards and alerts are built on them): they only
//! ever gain labels or siblings, never change. Prometheus conventions: `anticamera_` prefix,
//! `_total` counters, `_seconds` durations, base units.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `route` (gate name or `open`), `outcome` and `status`.
pub const REQUESTS_TOTAL: &str = "anticamera_requests_total";
/// Time from request head to response head, by `route`.
pub const REQUEST_DURATION: &str = "anticamera_request_duration_seconds";
/// Time the portal took to answer (response head), by `upstream` address.
pub const UPSTREAM_DURATION: &str = "anticamera_upstream_duration_seconds";
/// Requests currently at the portal.
pub const UPSTREAM_IN_FLIGHT: &str = "anticamera_upstream_in_flight";
/// Metric: exchanges with the portal whose client went away first (the portal slot stays
/// taken until the portal is done with the request).
pub const UPSTREAM_ABANDONED: &str = "anticamera_upstream_abandoned_total";
/// Errors, by `kind` (`upstream_connect`, `upstream_timeout`, `body_too_large`, ...).
pub const ERRORS_TOTAL: &str = "anticamera_errors_total";
/// Client connections open now.
pub const OPEN_CONNECTIONS: &str = "anticamera_open_connections";
/// Client connections accepted, by `result` (`accepted`, `refused_limit`).
pub const CONNECTIONS_TOTAL: &str = "anticamera_connections_total";
/// Client connections closed by anticamera, by `reason` (`idle`, `head_timeout`).
pub const CONNECTIONS_CLOSED_TOTAL: &str = "anticamera_connections_closed_total";
/// Client connections closed because their request framing was ambiguous, by `reason`.
pub const FRAMING_REJECTED: &str = "anticamera_framing_rejected_total";
/// Portal addresses by `upstream` and health (1 = in rotation, 0 = skipped).
pub const UPSTREAM_HEALTHY: &str = "anticamera_upstream_healthy";

/// Build information, always 1: labels `version` (the crate's) and `commit` (the git commit
/// given at build time in `ANTICAMERA_GIT_COMMIT`, else `unknown`).
pub const BUILD_INFO: &str = "anticamera_build_info";
/// Configuration reloads (`SIGHUP`, `POST /admin/reload`), by `result` (`success`,
/// `failure`); both series exist from start-up, at 0.
pub const CONFIG_RELOAD_TOTAL: &str = "anticamera_config_reload_total";
/// When the configuration in force was last loaded successfully (Unix seconds): start-up, then
/// each successful reload.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "anticamera_config_last_reload_success_timestamp_seconds";
/// 1 while the shared admission store answers, 0 when it does not (`[store] kind = "redis"`;
/// the in-memory store never exports it).
pub const STORE_UP: &str = "anticamera_store_up";
/// 1 while a waiting-room lane lets new people in, 0 while it admits nobody new (window closed,
/// pre-queue, or paused by the admin API), by `gate` and `cohort`.
pub const WAITROOM_ADMITTING: &str = "anticamera_waitroom_admitting";

/// The git commit this binary was built from, if the build said (`ANTICAMERA_GIT_COMMIT`).
pub const GIT_COMMIT: &str = match option_env!("ANTICAMERA_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Histogram buckets for request and upstream latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for the time people wait in line (`anticamera_waitroom_wait_seconds`), in
/// seconds: claim-day waits are minutes to hours, and the wait objective of the alert rules
/// (`deploy/prometheus/`, 30 minutes) must be a bucket boundary.
pub const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 5400.0,
    7200.0, 10800.0, 14400.0,
];

/// What kind of series a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// Every metric family anticamera exports: name, kind, unit, help text. The one place they are
/// described, wherever their name is defined, so `/metrics` carries a `# HELP` for each.
pub const FAMILIES: &[(&str, Kind, Unit, &str)] = &[
    (
        REQUESTS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Requests answered, by route (gate name or open), outcome and status.",
    ),
    (
        REQUEST_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time from request head to response head, by route.",
    ),
    (
        UPSTREAM_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time the portal took to send its response head.",
    ),
    (
        UPSTREAM_IN_FLIGHT,
        Kind::Gauge,
        Unit::Count,
        "Requests currently at the portal.",
    ),
    (
        crate::admin::UPSTREAM_LIMIT,
        Kind::Gauge,
        Unit::Count,
        "Portal concurrency limit now (fixed, or learned in adaptive mode).",
    ),
    (
        crate::admin::UPSTREAM_QUEUED,
        Kind::Gauge,
        Unit::Count,
        "Requests waiting for a portal slot.",
    ),
    (
        crate::admin::RATELIMIT_KEYS,
        Kind::Gauge,
        Unit::Count,
        "Keys the rate limiter tracks now, by kind.",
    ),
    (
        crate::admin::RATELIMIT_EVICTED,
        Kind::Counter,
        Unit::Count,
        "Rate-limit keys evicted to make room for new ones, by kind.",
    ),
    (
        crate::proxy::HELD,
        Kind::Gauge,
        Unit::Count,
        "Requests of people at the front of a line held open until their place comes.",
    ),
    (
        crate::proxy::SLOT_WAIT,
        Kind::Histogram,
        Unit::Seconds,
        "Time requests waited for a portal slot.",
    ),
    (
        crate::admin::BREAKER_STATE,
        Kind::Gauge,
        Unit::Count,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
    ),
    (
        crate::protect::SHED,
        Kind::Counter,
        Unit::Count,
        "Requests refused to protect the portal, by reason and priority.",
    ),
    (
        UPSTREAM_HEALTHY,
        Kind::Gauge,
        Unit::Count,
        "1 if a portal address is in rotation, 0 if skipped, by upstream.",
    ),
    (
        UPSTREAM_ABANDONED,
        Kind::Counter,
        Unit::Count,
        "Exchanges with the portal whose client went away first; the portal slot stays taken until the portal is done.",
    ),
    (
        crate::tls::UPSTREAM_TLS_ERRORS,
        Kind::Counter,
        Unit::Count,
        "Failed TLS handshakes with the portal (answered 502), by upstream and reason.",
    ),
    (
        crate::tls::CERT_RELOADS,
        Kind::Counter,
        Unit::Count,
        "Reloads of the client-facing TLS certificate after its files changed, by result.",
    ),
    (
        crate::tls::HANDSHAKE_FAILURES,
        Kind::Counter,
        Unit::Count,
        "Client TLS handshakes that failed or did not finish within the head deadline, by reason.",
    ),
    (ERRORS_TOTAL, Kind::Counter, Unit::Count, "Errors, by kind."),
    (
        OPEN_CONNECTIONS,
        Kind::Gauge,
        Unit::Count,
        "Client connections open now.",
    ),
    (
        CONNECTIONS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Client connections, by result (accepted, refused_limit).",
    ),
    (
        CONNECTIONS_CLOSED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Client connections closed by anticamera, by reason.",
    ),
    (
        FRAMING_REJECTED,
        Kind::Counter,
        Unit::Count,
        "Client connections closed for ambiguous request framing, by reason.",
    ),
    (
        crate::proxy::LIMITED,
        Kind::Counter,
        Unit::Count,
        "Requests refused by a rate limit, by kind.",
    ),
    (
        crate::isolation::LEAKS_BLOCKED,
        Kind::Counter,
        Unit::Count,
        "Portal responses refused because they were stamped for another user.",
    ),
    (
        crate::isolation::REFUSED,
        Kind::Counter,
        Unit::Count,
        "Portal responses refused by session isolation, by reason (leak, request_id_missing, request_id_mismatch).",
    ),
    (
        crate::isolation::CONNECTIONS_RETIRED,
        Kind::Counter,
        Unit::Count,
        "Portal connections retired after a refused or broken answer (never reused, closed once free), by reason.",
    ),
    (
        crate::isolation::MARKED_PRIVATE,
        Kind::Counter,
        Unit::Count,
        "Personal responses whose caching headers anticamera tightened.",
    ),
    (
        crate::microcache::RESULTS,
        Kind::Counter,
        Unit::Count,
        "Micro-cache look-ups and stores, by result.",
    ),
    (
        crate::room::metric::WAITING,
        Kind::Gauge,
        Unit::Count,
        "People waiting in line (tickets not yet admitted), by gate and cohort.",
    ),
    (
        crate::room::metric::ACTIVE,
        Kind::Gauge,
        Unit::Count,
        "People inside (holding a slot), by gate and cohort.",
    ),
    (
        crate::room::metric::PENDING,
        Kind::Gauge,
        Unit::Count,
        "Admitted people whose place is held until they arrive, by gate and cohort.",
    ),
    (
        crate::room::metric::LATE,
        Kind::Gauge,
        Unit::Count,
        "Admitted people back after their held place lapsed (late line), by gate, cohort.",
    ),
    (
        crate::room::metric::CAPACITY,
        Kind::Gauge,
        Unit::Count,
        "Capacity given to the lane now, by gate and cohort.",
    ),
    (
        crate::room::metric::ISSUED,
        Kind::Counter,
        Unit::Count,
        "Tickets issued, by gate and cohort.",
    ),
    (
        crate::room::metric::ADMITTED,
        Kind::Counter,
        Unit::Count,
        "Tickets admitted, by gate and cohort.",
    ),
    (
        crate::room::metric::RELEASED,
        Kind::Counter,
        Unit::Count,
        "Sessions ended by the portal (release header), by gate and cohort.",
    ),
    (
        crate::room::metric::ABANDONED,
        Kind::Counter,
        Unit::Count,
        "Admitted tickets that never arrived, by gate and cohort.",
    ),
    (
        crate::room::metric::EXPIRED,
        Kind::Counter,
        Unit::Count,
        "Sessions ended by inactivity, by gate and cohort.",
    ),
    (
        crate::room::metric::WAIT,
        Kind::Histogram,
        Unit::Seconds,
        "Time from ticket to admission, by gate and cohort.",
    ),
    (
        crate::room::metric::REFUSED,
        Kind::Counter,
        Unit::Count,
        "Waiting-room tokens refused (forged, tampered, expired, copied...), by gate, reason.",
    ),
    (
        crate::room::metric::UNNUMBERED,
        Kind::Counter,
        Unit::Count,
        "Arrivals asked to retry in a second because the ticket numbers reserved in the state file were used up, by gate and cohort.",
    ),
    (
        crate::room::metric::NUMBER_BLOCKS,
        Kind::Counter,
        Unit::Count,
        "Blocks of ticket numbers reserved in the ticket file (written and fsynced before use), by result.",
    ),
    (
        crate::room::metric::CLOSED,
        Kind::Counter,
        Unit::Count,
        "Requests refused because the cohort's window is closed, by gate and cohort.",
    ),
    (
        crate::room::metric::ADMISSION_FACTOR,
        Kind::Gauge,
        Unit::Count,
        "Share of the configured admission given now (1 = all; less while the portal struggles).",
    ),
    (
        crate::room::metric::ESTIMATED_WAIT,
        Kind::Gauge,
        Unit::Seconds,
        "Estimated wait for a new arrival, by gate and cohort (absent while unknown).",
    ),
    (
        WAITROOM_ADMITTING,
        Kind::Gauge,
        Unit::Count,
        "1 while the lane lets new people in, 0 while closed, pre-queued or paused.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        Unit::Count,
        "Always 1: the version and git commit of this anticamera.",
    ),
    (
        CONFIG_RELOAD_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Configuration reloads, by result (success, failure).",
    ),
    (
        CONFIG_LAST_RELOAD_SUCCESS,
        Kind::Gauge,
        Unit::Seconds,
        "When the configuration in force was last loaded successfully (Unix time).",
    ),
    (
        STORE_UP,
        Kind::Gauge,
        Unit::Count,
        "1 while the shared admission store answers, 0 when it does not.",
    ),
    (
        crate::store::redis::ROUND_TRIPS,
        Kind::Counter,
        Unit::Count,
        "Round trips to the shared admission store (Redis), by op.",
    ),
    (
        crate::store::redis::ERRORS,
        Kind::Counter,
        Unit::Count,
        "Round trips to the shared admission store that failed, by op.",
    ),
    (
        crate::store::redis::BUSY,
        Kind::Counter,
        Unit::Count,
        "Request-path round trips to the shared store not made because too many were in flight (the fail mode answered), by op.",
    ),
    (
        crate::store::redis::PUSHED,
        Kind::Counter,
        Unit::Count,
        "Messages Redis pushed to this node: another node's admission (into the mirror at once) or a session ended on another node (the leader lets the next in at once).",
    ),
    (
        crate::store::redis::ROUND_TRIP_TIME,
        Kind::Histogram,
        Unit::Seconds,
        "How long round trips to the shared store took (the calling thread waited), by op.",
    ),
    (
        crate::store::redis::BINDS_KNOWN,
        Kind::Counter,
        Unit::Count,
        "Leak-guard first sights of a session answered by the binding another node took (pushed by Redis), without a round trip.",
    ),
    (
        crate::store::redis::PUSH_LAG,
        Kind::Histogram,
        Unit::Seconds,
        "How long Redis's pushes took to reach this node, from the script that published (Redis's clock) to this node's subscriber (its clock), by kind: admission (another node's, into this node's mirror) or release (a session ended on another node, to the leader).",
    ),
    (
        crate::store::redis::RELEASE_TO_ADMISSION,
        Kind::Histogram,
        Unit::Seconds,
        "On the leader: from a session ended on another node (its push received) to the admission that followed it (the admission script answered).",
    ),
    (
        crate::store::redis::PORTAL_SHARE,
        Kind::Gauge,
        Unit::Count,
        "This node's part of the portal's capacity (upstream_guard.max_in_flight), shared by the fleet through Redis.",
    ),
    (
        crate::store::redis::LEADER,
        Kind::Gauge,
        Unit::Count,
        "1 while this node holds the shared store's leader lease (it advances admissions).",
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle for `/metrics`.
///
/// If another recorder is already installed (an embedding program's), a detached handle is
/// returned and metrics from this crate go to that recorder instead.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        at_start();
        handle
    })
}

/// The recorder's settings: latency buckets for every histogram, wait buckets for the wait.
/// (`set_buckets*` only fail on an empty list; these are constants.)
fn builder() -> PrometheusBuilder {
    let wait = Matcher::Full(crate::room::metric::WAIT.to_string());
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(wait, WAIT_BUCKETS))
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Gives every family its help text and unit. Descriptions live in the recorder, apart from
/// the series: a family is rendered with `# HELP` only if it was described here (before this
/// table, only the nine names defined in this file were, and every family defined beside the
/// code that records it went out without one).
fn describe() {
    for &(name, kind, unit, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// Series that exist from start-up: build info, the reload metrics (the start-up load counts as
/// the last successful one), and the counters alerts watch with `increase()`, which would miss
/// the first event if its series only appeared with it.
fn at_start() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => GIT_COMMIT)
        .set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(now);
    for result in ["success", "failure"] {
        metrics::counter!(CONFIG_RELOAD_TOTAL, "result" => result).increment(0);
    }
    metrics::counter!(crate::isolation::LEAKS_BLOCKED).increment(0);
    for &reason in crate::isolation::REFUSED_REASONS {
        metrics::counter!(crate::isolation::REFUSED, "reason" => reason).increment(0);
    }
}

/// The status code as a static label value (no allocation per request).
pub fn status_label(code: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (206, "206"),
        (301, "301"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match CODES.binary_search_by_key(&code, |(c, _)| *c) {
        Ok(i) => CODES[i].1,
        Err(_) => match code {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_sorted_and_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(504), "504");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
    }

    /// Every family is rendered with its help text and its type; none is described twice.
    #[test]
    fn every_family_renders_help_and_type() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            at_start();
            for &(name, kind, _, _) in FAMILIES {
                match kind {
                    Kind::Counter => metrics::counter!(name).increment(1),
                    Kind::Gauge => metrics::gauge!(name).set(1.0),
                    Kind::Histogram => metrics::histogram!(name).record(1.0),
                }
            }
        });
        let text = handle.render();
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is listed twice");
        for &(name, kind, _, help) in FAMILIES {
            assert!(name.starts_with("anticamera_"), "{name}");
            assert!(
                text.contains(&format!("# HELP {name} {help}\n")),
                "{name} has no help text:\n{text}"
            );
            let ty = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(text.contains(&format!("# TYPE {name} {ty}\n")), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        }
        assert!(text.contains("anticamera_build_info{version=\""), "{text}");
        assert!(
            text.contains("anticamera_waitroom_wait_seconds_bucket{le=\"1800\"}"),
            "the wait objective is a bucket boundary:\n{text}"
        );
    }
}
