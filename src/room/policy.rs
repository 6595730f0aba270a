//! What the configuration says about the waiting room, compiled, and replaced whole by a reload.
//!
//! The room keeps two kinds of things apart. The *state* (lanes: ticket and serving counters,
//! slots, reservations, the late line, the pre-queue shuffle, long-poll wakers) lives as long
//! as the process. The *policy* — path rules, opening hours, capacity shares, the configured
//! mode and settings of each gate, cohort matchers, signing keys, cookie lifetimes, the poll
//! interval — is compiled from the config into a [`RoomPolicy`] and a [`GatePolicy`] per gate,
//! held behind an `ArcSwap`: the request path reads it with one lock-free load, and
//! [`super::Room::reload`] replaces it without touching a waiting person's number or an admitted
//! person's slot.
//!
//! A reload keeps what the lanes are built from: the gates (names, order), whether each has
//! opening hours, and the cohort names (a scheduled gate has one lane per cohort). Changing
//! those needs a restart, and the reload says so ([`super::RoomError::NeedsRestart`]).

use std::time::Duration;

use super::RoomError;
use crate::cohort::{CohortId, Cohorts};
use crate::config::{Config, GateConfig, ReleaseRule};
use crate::route::Rules;
use crate::schedule::Schedule;
use crate::waitroom::{GateSettings, Keyring, Mode};

/// The configured policy of one gate.
#[derive(Debug)]
pub struct GatePolicy {
    /// Title on pages.
    pub label: String,
    pub(super) rules: Rules,
    /// Opening hours, if any.
    pub schedule: Option<Schedule>,
    pub(super) shares: Vec<f64>,
    pub(super) configured_mode: Mode,
    pub(super) settings: GateSettings,
    /// Requests whose successful answer ends the journey (`release_on`).
    release_on: Vec<ReleaseRule>,
    /// Admissions follow the portal's room (`admission = "portal"`).
    pub(super) follow_portal: bool,
}

/// The configured policy of the whole room (what is not per gate).
#[derive(Debug)]
pub struct RoomPolicy {
    /// Cohort recognition.
    pub cohorts: Cohorts,
    pub(super) keys: Keyring,
    pub(super) ticket_ttl_ms: u64,
    pub(super) pass_refresh_ms: u64,
    /// Advised poll interval.
    pub poll_interval: Duration,
    /// Host names the config names (gates' `hosts`, `[routing] hosts`), canonical: a request
    /// for any other host meets every host-scoped gate.
    pub known_hosts: Vec<String>,
}

impl RoomPolicy {
    /// Compiles the room's policy and every gate's from a validated config.
    pub fn compile(cfg: &Config) -> Result<(RoomPolicy, Vec<GatePolicy>), RoomError> {
        let keys = cfg.keyring().map_err(|(k, r)| RoomError::Config(k, r))?;
        let cohorts = Cohorts::compile(&cfg.cohorts, &cfg.base_dir).map_err(|e| {
            let e = e.into_iter().next();
            RoomError::Config(
                e.as_ref()
                    .map(|e| format!("cohorts.{}", e.key))
                    .unwrap_or_default(),
                e.map(|e| e.reason).unwrap_or_default(),
            )
        })?;
        let gates = cfg
            .gates
            .iter()
            .enumerate()
            .map(|(i, g)| GatePolicy::compile(i, g, &cohorts, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let known_hosts = crate::route::known_hosts(
            std::iter::once(&cfg.routing.hosts[..]).chain(cfg.gates.iter().map(|g| &g.hosts[..])),
        );
        let w = &cfg.waiting_room;
        let room = RoomPolicy {
            cohorts,
            keys,
            ticket_ttl_ms: w.ticket_ttl.0.as_millis() as u64,
            pass_refresh_ms: w.pass_refresh.0.as_millis() as u64,
            poll_interval: w.poll_interval.0,
            known_hosts,
        };
        Ok((room, gates))
    }
}

impl GatePolicy {
    fn compile(
        i: usize,
        g: &GateConfig,
        cohorts: &Cohorts,
        cfg: &Config,
    ) -> Result<GatePolicy, RoomError> {
        let rules = Rules::compile(&g.rules(&cfg.routing))
            .map_err(|e| RoomError::Config(format!("gates[{i}]"), format!("{e:?}")))?;
        let schedule = match &g.schedule {
            Some(s) => Some(
                Schedule::compile_with(s, cohorts.names(), cfg.calendar_set()).map_err(|e| {
                    RoomError::Config(format!("gates[{i}].schedule"), format!("{e:?}"))
                })?,
            ),
            None => None,
        };
        let shares = (0..cohorts.names().len())
            .map(|c| {
                g.shares
                    .get(
                        CohortId::from_index(c)
                            .map(|id| cohorts.name(id))
                            .unwrap_or_default(),
                    )
                    .copied()
                    .unwrap_or(1.0)
            })
            .collect();
        let gate_rules = g.rules(&cfg.routing);
        let release_on = g
            .release_on
            .iter()
            .enumerate()
            .map(|(j, r)| {
                r.compile(&gate_rules).map_err(|e| {
                    let (k, reason) = e.into_iter().next().unwrap_or_default();
                    RoomError::Config(format!("gates[{i}].release_on[{j}].{k}"), reason)
                })
            })
            .collect::<Result<Vec<_>, RoomError>>()?;
        Ok(GatePolicy {
            release_on,
            follow_portal: g.admission == crate::config::Admission::Portal,
            label: g.label.clone().unwrap_or_else(|| g.name.clone()),
            rules,
            schedule,
            shares,
            configured_mode: g.mode,
            settings: g.settings(),
        })
    }

    /// The `release_on` rule a request matches, if any (its index: the answer's status is
    /// checked against it with [`GatePolicy::ends_journey`]).
    pub fn release_rule(&self, method: &http::Method, path: &str) -> Option<usize> {
        self.release_on
            .iter()
            .position(|(rules, _)| rules.matches(method, path))
    }

    /// Whether an answer with `status` to a request matching rule `rule` ends the journey.
    pub fn ends_journey(&self, rule: usize, status: u16) -> bool {
        self.release_on
            .get(rule)
            .is_some_and(|(_, statuses)| statuses.iter().any(|s| s.matches(status)))
    }

    /// A pass's lifetime (ms): the session plus two refresh periods.
    pub(super) fn pass_ttl_ms(&self, pass_refresh_ms: u64) -> u64 {
        self.settings.session_duration.as_millis() as u64 + pass_refresh_ms * 2
    }
}
