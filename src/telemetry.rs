//! Metric names and the Prometheus recorder.
//!
//! Names are part of the operator interface (dashboards and alerts are built on them): they only
//! ever gain labels or siblings, never change. Prometheus conventions: `anticamera_` prefix,
//! `_total` counters, `_seconds` durations, base units.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `route` (gate name or `open`), `outcome` and `status`.
pub const REQUESTS_TOTAL: &str = "anticamera_requests_total";
/// Time from request head to response head, by `route`.
pub const REQUEST_DURATION: &str = "anticamera_request_duration_seconds";
/// Time the portal took to answer (response head), by `upstream` address.
pub const UPSTREAM_DURATION: &str = "anticamera_upstream_duration_seconds";
/// Requests currently at the portal.
pub const UPSTREAM_IN_FLIGHT: &str = "anticamera_upstream_in_flight";
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

/// Histogram buckets for request and upstream latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle for `/metrics`.
///
/// If another recorder is already installed (an embedding program's), a detached handle is
/// returned and metrics from this crate go to that recorder instead.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route, outcome and status."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request head to response head."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time the portal took to send its response head."
    );
    describe_gauge!(UPSTREAM_IN_FLIGHT, "Requests currently at the portal.");
    describe_counter!(ERRORS_TOTAL, "Errors by kind.");
    describe_gauge!(OPEN_CONNECTIONS, "Client connections open now.");
    describe_counter!(CONNECTIONS_TOTAL, "Client connections by result.");
    describe_counter!(
        CONNECTIONS_CLOSED_TOTAL,
        "Client connections closed by anticamera, by reason."
    );
    describe_gauge!(UPSTREAM_HEALTHY, "1 if a portal address is in rotation.");
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
}
