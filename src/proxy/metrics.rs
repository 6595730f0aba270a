//! Per-worker metric handles for the request path.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Disposition, Shared};
use crate::{microcache, telemetry};

/// Metric: requests refused by a rate limit, by `kind`.
pub const LIMITED: &str = "anticamera_ratelimit_limited_total";
/// Metric: requests of people at the front of a line held open until their place comes.
pub const HELD: &str = "anticamera_waitroom_held";
/// Metric: time spent waiting for a portal slot (seconds).
pub const SLOT_WAIT: &str = "anticamera_upstream_slot_wait_seconds";

/// Per-worker cache of metric handles, so the request path does not look labels up in the
/// global registry (a hash and a lock) for every request.
pub(super) struct RequestMetrics {
    pub(super) routes: Vec<String>,
    pub(super) durations: Vec<metrics::Histogram>,
    pub(super) slot_wait: metrics::Histogram,
    pub(super) cache_hit: metrics::Counter,
    pub(super) cache_miss: metrics::Counter,
    pub(super) cache_stored: metrics::Counter,
    pub(super) cache_not_storable: metrics::Counter,
    pub(super) counters:
        Mutex<HashMap<(usize, Disposition, u16), metrics::Counter, foldhash::fast::RandomState>>,
}

impl RequestMetrics {
    pub(super) fn new(shared: &Shared) -> Self {
        let mut routes = vec!["open".to_string()];
        if let Some(room) = &shared.room {
            routes.extend(room.gates.iter().map(|g| g.name.clone()));
        }
        let durations = routes
            .iter()
            .map(|r| metrics::histogram!(telemetry::REQUEST_DURATION, "route" => r.clone()))
            .collect();
        let cache = |r: &'static str| metrics::counter!(microcache::RESULTS, "result" => r);
        RequestMetrics {
            routes,
            durations,
            slot_wait: metrics::histogram!(SLOT_WAIT),
            cache_hit: cache("hit"),
            cache_miss: cache("miss"),
            cache_stored: cache("stored"),
            cache_not_storable: cache("not_storable"),
            counters: Mutex::new(HashMap::default()),
        }
    }

    pub(super) fn record(
        &self,
        route: usize,
        outcome: Disposition,
        status: u16,
        took: std::time::Duration,
    ) {
        let route = route.min(self.routes.len() - 1);
        if let Ok(mut map) = self.counters.lock() {
            map.entry((route, outcome, status))
                .or_insert_with(|| {
                    metrics::counter!(telemetry::REQUESTS_TOTAL,
                        "route" => self.routes[route].clone(),
                        "outcome" => outcome.label(),
                        "status" => telemetry::status_label(status))
                })
                .increment(1);
        }
        self.durations[route].record(took.as_secs_f64());
    }
}
