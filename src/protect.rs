//! Protecting the portal: the circuit breaker and the concurrency guard, asked together.
//!
//! [`enter`] asks the breaker first (open: refuse at once, the portal is failing) and then the
//! guard (a slot under the portal's concurrency limit, users already inside shed last). What it
//! hands back is one value, a [`PortalPermit`], that holds both the guard's slot and the
//! breaker's permission. Once the exchange with the portal is over, [`PortalPermit::observe`]
//! notes whether the portal showed overload; dropping the permit then reports that outcome to
//! both (the adaptive limit's latency and the breaker's failure count) and frees the slot.
//! A permit dropped without an observation (the client went away, the request was cancelled)
//! reports nothing: that says nothing about the portal. Its slot is freed when the portal is
//! done with the request (or the response deadline passes), not when the client leaves: the
//! forwarding phase lends the slot to the exchange ([`PortalPermit::take_slot`]), which keeps
//! it while the portal still works on an abandoned request.

use std::time::Instant;

use crate::breaker::{self, Breaker};
use crate::guard::{self, Guard, Priority};
use crate::refusal::Refusal;
use crate::upstream::UpstreamError;

/// Metric: requests shed to protect the portal, by `reason` and `priority`.
pub const SHED: &str = "anticamera_shed_total";

/// The right to send one request to the portal, under the breaker and the guard.
#[must_use = "dropping the permit frees the portal slot at once"]
pub struct PortalPermit<'a> {
    guard: Option<guard::Permit>,
    breaker: Option<(&'a Breaker, breaker::Permission)>,
    sent: Instant,
    overload: Option<bool>,
}

impl std::fmt::Debug for PortalPermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalPermit")
            .field("guarded", &self.guard.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("overload", &self.overload)
            .finish()
    }
}

/// Asks the breaker, then the guard, for the right to send one request to the portal.
///
/// Refusals: [`Refusal::BreakerOpen`] (the portal is failing; retry when the breaker lets a probe
/// through) and [`Refusal::Shed`] (no slot under the concurrency limit in time). Each is counted
/// in [`SHED`]. A request shed by the guard leaves the breaker untouched: that is not the
/// portal's fault (an unreported probe frees itself after `open_for`).
pub async fn enter<'a>(
    breaker: Option<&'a Breaker>,
    guard: Option<&Guard>,
    priority: Priority,
    slot_wait: &metrics::Histogram,
) -> Result<PortalPermit<'a>, Refusal> {
    let breaker = match breaker {
        Some(b) => match b.allow(Instant::now()) {
            Ok(p) => Some((b, p)),
            Err(open) => {
                metrics::counter!(SHED, "reason" => "breaker_open", "priority" => "any")
                    .increment(1);
                return Err(Refusal::BreakerOpen(open));
            }
        },
        None => None,
    };
    let guard = match guard {
        Some(g) => match g.acquire(priority, tokio::time::Instant::now()).await {
            Ok(p) => {
                slot_wait.record(p.waited().as_secs_f64());
                Some(p)
            }
            Err(shed) => {
                metrics::counter!(SHED, "reason" => shed.reason.as_str(), "priority" => priority.as_str())
                    .increment(1);
                return Err(Refusal::Shed(shed));
            }
        },
        None => None,
    };
    // The exchange starts when the slot is granted (no second clock read when there is one).
    let sent = guard
        .as_ref()
        .map_or_else(Instant::now, |p| p.granted().into_std());
    Ok(PortalPermit {
        guard,
        breaker,
        sent,
        overload: None,
    })
}

impl PortalPermit<'_> {
    /// Takes the guard's slot out for the exchange ([`crate::upstream::Upstream::send`] keeps
    /// it until the portal is done with the request, even if the client goes away first); give
    /// it back with [`PortalPermit::restore_slot`] so the outcome is reported with it.
    pub fn take_slot(&mut self) -> Option<guard::Permit> {
        self.guard.take()
    }

    /// Gives back the slot taken with [`PortalPermit::take_slot`].
    pub fn restore_slot(&mut self, slot: Option<guard::Permit>) {
        if slot.is_some() {
            self.guard = slot;
        }
    }

    /// Notes how the exchange went; the outcome is reported when the permit is dropped.
    /// Overload is a 502–504 from the portal, a connect error, a timeout or a broken exchange;
    /// a problem with the client's own body says nothing about the portal.
    pub fn observe<B>(&mut self, result: &Result<http::Response<B>, UpstreamError>) {
        self.overload = Some(overloaded(result));
    }
}

/// Whether an exchange with the portal shows that it is overloaded or failing.
pub fn overloaded<B>(result: &Result<http::Response<B>, UpstreamError>) -> bool {
    match result {
        Ok(r) => matches!(r.status().as_u16(), 502..=504),
        Err(e) => matches!(
            e,
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Protocol(_)
        ),
    }
}

impl Drop for PortalPermit<'_> {
    fn drop(&mut self) {
        let Some(overload) = self.overload else {
            // Unobserved: the guard's slot is freed by its own drop, the breaker is not told.
            return;
        };
        if let Some(p) = self.guard.take() {
            let signal = if overload {
                guard::Signal::Overload
            } else {
                guard::Signal::Success
            };
            p.done(self.sent.elapsed(), signal);
        }
        if let Some((b, permission)) = self.breaker.take() {
            b.record(permission, !overload, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::guard::GuardConfig;
    use std::time::Duration;

    fn response(status: u16) -> Result<http::Response<()>, UpstreamError> {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(r)
    }

    #[tokio::test]
    async fn a_dropped_permit_reports_its_outcome_to_breaker_and_guard() {
        let cfg = BreakerConfig {
            failures: 2,
            ..BreakerConfig::default()
        };
        let b = Breaker::new(&cfg, Instant::now());
        let g = Guard::new(&GuardConfig {
            max_in_flight: 1,
            ..GuardConfig::default()
        });
        let h = metrics::histogram!("test_slot_wait");
        for _ in 0..2 {
            let mut p = enter(Some(&b), Some(&g), Priority::New, &h).await.unwrap();
            assert_eq!(g.in_flight(), 1, "the permit holds the guard's slot");
            p.observe(&response(503));
            drop(p);
            assert_eq!(g.in_flight(), 0, "dropping the permit frees the slot");
        }
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "two overloads trip the breaker"
        );
        let refused = enter(Some(&b), Some(&g), Priority::New, &h).await;
        match refused {
            Err(Refusal::BreakerOpen(open)) => assert!(open.retry_after > Duration::ZERO),
            other => panic!("expected the breaker to refuse, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unobserved_permit_frees_its_slot_and_tells_the_breaker_nothing() {
        let cfg = BreakerConfig {
            failures: 1,
            ..BreakerConfig::default()
        };
        let b = Breaker::new(&cfg, Instant::now());
        let g = Guard::new(&GuardConfig {
            max_in_flight: 1,
            ..GuardConfig::default()
        });
        let h = metrics::histogram!("test_slot_wait");
        let p = enter(Some(&b), Some(&g), Priority::Inside, &h)
            .await
            .unwrap();
        drop(p);
        assert_eq!(g.in_flight(), 0);
        assert_eq!(b.state(), BreakerState::Closed);
        let mut p = enter(Some(&b), None, Priority::Inside, &h).await.unwrap();
        p.observe(&response(404));
        drop(p);
        assert_eq!(b.state(), BreakerState::Closed, "a 404 is not overload");
    }

    #[test]
    fn what_counts_as_overload() {
        assert!(overloaded(&response(502)));
        assert!(overloaded(&response(504)));
        assert!(!overloaded(&response(500)));
        assert!(!overloaded(&response(200)));
        assert!(!overloaded::<()>(&Err(UpstreamError::BodyTooLarge)));
    }
}
