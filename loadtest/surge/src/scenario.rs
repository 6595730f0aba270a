//! Scenario files (`loadtest/scenarios/*.toml`): who arrives and when, how they behave, the
//! portal's capacity, the fronts put in front of it, and events during the run. Every key is
//! documented in `loadtest/scenarios/README.md`; an unknown key or a bad value is an error
//! naming the file and the key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// `"250ms"`, `"60s"`, `"2m"` in a scenario file: parsed as anticamera's config parses them.
mod dur {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        anticamera::config::Dur::deserialize(d).map(|d| d.0)
    }
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (file names of the reports).
    pub name: String,
    /// What it rehearses.
    #[serde(default)]
    pub description: String,
    /// Arrivals.
    pub users: Users,
    /// The mix of behaviours.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Share of users per cohort (sent in `run.cohort_header`); empty = no cohort header.
    #[serde(default)]
    pub cohorts: BTreeMap<String, f64>,
    /// Run limits and client settings.
    #[serde(default)]
    pub run: RunCfg,
    /// The demo portal.
    #[serde(default)]
    pub portal: PortalCfg,
    /// anticamera in front of the portal.
    #[serde(default)]
    pub anticamera: AnticameraCfg,
    /// nginx in front of the portal.
    #[serde(default)]
    pub nginx: NginxCfg,
    /// Things that happen during the run.
    #[serde(default)]
    pub events: Vec<Event>,
    /// The directory of the scenario file (templates are relative to it).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// How users arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// How many.
    pub count: usize,
    /// The shape of arrivals within `over`.
    #[serde(default)]
    pub arrival: Arrival,
    /// All users arrive within this.
    #[serde(deserialize_with = "dur::de")]
    pub over: Duration,
}

/// The shape of arrivals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced.
    #[default]
    Even,
    /// Independent random instants (a Poisson-like spike).
    Spike,
    /// A rate growing linearly from zero (news spreading).
    Ramp,
}

/// The mix of behaviours (shares of users, each in [0, 1]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Behaviour {
    /// Use the JSON API (the mobile app, intermediaries' software) instead of HTML pages.
    pub json: f64,
    /// Reload the page every `reload_every` while waiting instead of polling.
    pub impatient: f64,
    /// Give up at a random moment while waiting (before `max_wait`).
    pub abandon: f64,
    /// Bots: hammer the personal page without keeping cookies, from a few addresses.
    pub bots: f64,
    /// Plain HTTP clients (a script, an app that knows nothing of the waiting room): they ask
    /// for the gated URL with `Accept: application/json` and, while told to wait, sleep
    /// `Retry-After` (at most 5 s) and ask for it again; never the status endpoint, never a
    /// long poll, never the page's data attributes.
    pub plain: f64,
    /// Everyone gives up after waiting this long.
    #[serde(deserialize_with = "dur::de")]
    pub max_wait: Duration,
    /// Reading time between the steps of a journey.
    #[serde(deserialize_with = "dur::de")]
    pub think: Duration,
    /// How often impatient users reload.
    #[serde(deserialize_with = "dur::de")]
    pub reload_every: Duration,
    /// Pause between a bot's requests.
    #[serde(deserialize_with = "dur::de")]
    pub bot_interval: Duration,
    /// Requests per bot.
    pub bot_requests: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            json: 0.5,
            impatient: 0.0,
            abandon: 0.0,
            bots: 0.0,
            plain: 0.0,
            max_wait: Duration::from_secs(300),
            think: Duration::ZERO,
            reload_every: Duration::from_secs(3),
            bot_interval: Duration::from_millis(250),
            bot_requests: 20,
        }
    }
}

/// Run limits and client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunCfg {
    /// Hard limit from the first arrival; users not done then are "unfinished".
    #[serde(deserialize_with = "dur::de")]
    pub duration: Duration,
    /// Client-side timeout of one request.
    #[serde(deserialize_with = "dur::de")]
    pub request_timeout: Duration,
    /// Retries of a step after a 5xx, a timeout or a transport error.
    pub retries: u32,
    /// The load tool's runtime threads.
    pub threads: usize,
    /// Requests in flight at once from the tool (each holds a connection; the machine's file
    /// descriptor limit bounds it).
    pub max_connections: usize,
    /// Loopback source addresses people connect from (each in its own /24, 127.16.0.1 onwards:
    /// [`crate::vu::person_address`]; bots use 127.2.0.x).
    pub client_addresses: u16,
    /// Source addresses of the bots.
    pub bot_addresses: u16,
    /// Waiting-room gate polled at `/.anticamera/status?gate=NAME`.
    pub gate: String,
    /// Prefix of anticamera's cookies (a Set-Cookie with it on a 503 marks a queue answer).
    pub cookie_prefix: String,
    /// Portal header naming the owner of a personal response.
    pub user_header: String,
    /// Portal header ending the session (anticamera should strip it).
    pub release_header: String,
    /// Header carrying a user's cohort (trusted by the scenario's anticamera config).
    pub cohort_header: String,
}

impl Default for RunCfg {
    fn default() -> Self {
        RunCfg {
            duration: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            retries: 3,
            threads: 2,
            max_connections: 12_000,
            client_addresses: 256,
            bot_addresses: 4,
            gate: "services".into(),
            cookie_prefix: "anticamera_".into(),
            user_header: "x-portal-user".into(),
            release_header: "x-anticamera-release".into(),
            cohort_header: "x-surge-cohort".into(),
        }
    }
}

/// The demo portal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalCfg {
    /// Requests in flight served at nominal latency (C).
    pub capacity: usize,
    /// Nominal latency.
    #[serde(deserialize_with = "dur::de")]
    pub base_latency: Duration,
    /// The 2020 accident: personal pages from a shared cache under load.
    pub fault_mode: bool,
    /// Runtime threads of the portal.
    pub threads: usize,
    /// Whether the portal sends the release header when a claim is filed; `false` is a portal
    /// nobody changed for a waiting room (`anticamera demo-portal --no-release-header`).
    pub release: bool,
}

impl Default for PortalCfg {
    fn default() -> Self {
        PortalCfg {
            capacity: 50,
            base_latency: Duration::from_millis(20),
            fault_mode: false,
            threads: 1,
            release: true,
        }
    }
}

/// anticamera in front of the portal: a config template and the values put in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnticameraCfg {
    /// Config template, relative to the scenario file; `{{name}}` placeholders are filled in
    /// (listen, admin, portal, gate, gate_prefixes, gate_capacity, guard_mode, guard_limit,
    /// guard_min, guard_queue, latency_threshold, workers, cohort_header).
    pub config: String,
    /// Users admitted at once (default: the portal's capacity and a quarter).
    pub gate_capacity: Option<usize>,
    /// Requests in flight to the portal (default: the portal's capacity).
    pub guard_limit: Option<usize>,
    /// `fixed` or `adaptive`.
    pub guard_mode: String,
    /// Worker threads.
    pub workers: usize,
    /// Paths behind the gate.
    pub gate_prefixes: Vec<String>,
    /// Start anticamera's clock at this instant (RFC 3339): rehearses an opening.
    pub rehearse_at: Option<String>,
    /// anticamera nodes (`surge run --nodes` overrides it): more than 1 starts surge's own
    /// redis-server and that many nodes sharing it (`[store] kind = "redis"`), each person's
    /// requests spread over them round-robin.
    pub nodes: usize,
}

impl Default for AnticameraCfg {
    fn default() -> Self {
        AnticameraCfg {
            config: "anticamera.toml.tmpl".into(),
            gate_capacity: None,
            guard_limit: None,
            guard_mode: "fixed".into(),
            workers: 2,
            gate_prefixes: vec![
                "/login".into(),
                "/account".into(),
                "/claim".into(),
                "/api/".into(),
            ],
            rehearse_at: None,
            nodes: 1,
        }
    }
}

/// nginx in front of the portal, limits set as an operator would from the capacity.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxCfg {
    /// `limit_req` rate per second (default 25 × C: half of what C requests of 20 ms allow).
    pub rate: Option<usize>,
    /// `limit_req` burst (default 2 × C).
    pub burst: Option<usize>,
    /// `limit_conn` (default C).
    pub conn: Option<usize>,
}

/// Something that happens during the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When, from the first arrival.
    #[serde(deserialize_with = "dur::de")]
    pub at: Duration,
    /// The portal's latency multiplier from then on (1 = normal).
    pub slowdown: Option<f64>,
}

/// Most anticamera nodes surge starts (each is a process with its own workers).
pub const MAX_NODES: usize = 16;

/// Checks a node count (the scenario key or `--nodes`).
pub fn check_nodes(n: usize) -> anyhow::Result<()> {
    if !(1..=MAX_NODES).contains(&n) {
        bail!("{n} nodes: from 1 to {MAX_NODES}");
    }
    Ok(())
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s = Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        s.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(s)
    }

    /// Parses and checks scenario text: errors name the key path.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let de = toml::Deserializer::new(text);
        let s: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", e.into_inner().message().trim())
        })?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        let share = |key: &str, v: f64| -> anyhow::Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{key}: {v} is not a share between 0 and 1");
            }
            Ok(())
        };
        let b = &self.behaviour;
        share("behaviour.json", b.json)?;
        share("behaviour.impatient", b.impatient)?;
        share("behaviour.abandon", b.abandon)?;
        share("behaviour.bots", b.bots)?;
        share("behaviour.plain", b.plain)?;
        if b.impatient + b.abandon > 1.0 {
            bail!("behaviour: impatient + abandon must not exceed 1");
        }
        if self.users.count == 0 {
            bail!("users.count: at least 1");
        }
        if self.users.count > 10_000_000 {
            bail!("users.count: at most 10 000 000");
        }
        let mut sum = 0.0;
        for (name, v) in &self.cohorts {
            share(&format!("cohorts.{name}"), *v)?;
            sum += v;
        }
        if sum > 1.0 + 1e-9 {
            bail!("cohorts: shares add up to {sum}, more than 1");
        }
        if self.portal.capacity == 0 {
            bail!("portal.capacity: at least 1");
        }
        if self.run.threads == 0 || self.run.max_connections == 0 {
            bail!("run.threads and run.max_connections: at least 1");
        }
        if self.run.client_addresses == 0 || self.run.bot_addresses == 0 {
            bail!("run.client_addresses and run.bot_addresses: at least 1");
        }
        if !["fixed", "adaptive"].contains(&self.anticamera.guard_mode.as_str()) {
            bail!("anticamera.guard_mode: fixed or adaptive");
        }
        for (i, e) in self.events.iter().enumerate() {
            if let Some(f) = e.slowdown {
                if !(0.1..=100.0).contains(&f) {
                    bail!("events[{i}].slowdown: {f} is outside 0.1..=100");
                }
            }
        }
        check_nodes(self.anticamera.nodes).map_err(|e| anyhow::anyhow!("anticamera.nodes: {e}"))?;
        if let Some(at) = &self.anticamera.rehearse_at {
            chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| anyhow::anyhow!("anticamera.rehearse_at: {at:?}: {e}"))?;
        }
        Ok(())
    }

    /// When user `i` (of `count`) arrives, from the start; `u` is a uniform draw in [0, 1).
    pub fn arrival_of(&self, i: usize, u: f64) -> Duration {
        let n = self.users.count.max(1) as f64;
        let over = self.users.over.as_secs_f64();
        let x = match self.users.arrival {
            Arrival::Even => i as f64 / n,
            Arrival::Spike => u,
            // Rate growing linearly: the CDF is (t/T)^2.
            Arrival::Ramp => (i as f64 / n).sqrt(),
        };
        Duration::from_secs_f64(over * x.clamp(0.0, 1.0))
    }

    /// The cohort of user `i`, by the configured shares (deterministic).
    pub fn cohort_of(&self, u: f64) -> Option<&str> {
        let mut acc = 0.0;
        for (name, share) in &self.cohorts {
            acc += share;
            if u < acc {
                return Some(name);
            }
        }
        None
    }

    /// How many of the users are bots.
    pub fn bots(&self) -> usize {
        ((self.users.count as f64 * self.behaviour.bots).round() as usize).min(self.users.count)
    }

    /// Whether user `id` is a bot: bots are spread evenly among the people.
    pub fn is_bot(&self, id: usize) -> bool {
        let bots = self.bots();
        if bots == 0 {
            return false;
        }
        let stride = self.users.count / bots;
        id % stride == 0 && id / stride < bots
    }

    /// Users admitted at once by anticamera's gate: by default a quarter more than the
    /// portal's capacity. People let in are not in a request all the time (between two pages,
    /// between one person leaving and the next arriving), so a gate of exactly C leaves portal
    /// slots idle; the guard still keeps the portal at C, the few extra wait for a slot.
    pub fn gate_capacity(&self) -> usize {
        self.anticamera
            .gate_capacity
            .unwrap_or(self.portal.capacity + self.portal.capacity.div_ceil(4))
    }

    /// anticamera's cap on requests in flight to the portal.
    pub fn guard_limit(&self) -> usize {
        self.anticamera.guard_limit.unwrap_or(self.portal.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"t\"\n[users]\ncount = 10\nover = \"10s\"\n";

    #[test]
    fn minimal_scenario_has_defaults() {
        let s = Scenario::parse(MIN).unwrap();
        assert_eq!(s.users.count, 10);
        assert_eq!(s.users.arrival, Arrival::Even);
        assert_eq!(s.portal.capacity, 50);
        assert_eq!(s.gate_capacity(), 63);
        assert_eq!(s.arrival_of(5, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Scenario::parse(&format!("{MIN}[behaviour]\njsn = 0.5\n")).unwrap_err();
        assert!(e.to_string().contains("behaviour"), "{e}");
        let e = Scenario::parse(&format!("{MIN}[behaviour]\nbots = 2.0\n")).unwrap_err();
        assert!(e.to_string().contains("behaviour.bots"), "{e}");
        let e = Scenario::parse(&format!("{MIN}[run]\nduration = \"soon\"\n")).unwrap_err();
        assert!(e.to_string().contains("run.duration"), "{e}");
        let e = Scenario::parse(&format!("{MIN}[cohorts]\na = 0.7\nb = 0.7\n")).unwrap_err();
        assert!(e.to_string().contains("cohorts"), "{e}");
        let e =
            Scenario::parse(&format!("{MIN}[[events]]\nat = \"1s\"\nslowdown = 0\n")).unwrap_err();
        assert!(e.to_string().contains("events[0].slowdown"), "{e}");
        let e = Scenario::parse(&format!("{MIN}[behaviour]\nplain = 1.5\n")).unwrap_err();
        assert!(e.to_string().contains("behaviour.plain"), "{e}");
        let e = Scenario::parse(&format!("{MIN}[anticamera]\nnodes = 0\n")).unwrap_err();
        assert!(e.to_string().contains("anticamera.nodes"), "{e}");
        assert_eq!(
            Scenario::parse(&format!("{MIN}[anticamera]\nnodes = 3\n"))
                .unwrap()
                .anticamera
                .nodes,
            3
        );
        let e = Scenario::parse(&format!("{MIN}[portal]\nrelease = \"no\"\n")).unwrap_err();
        assert!(e.to_string().contains("portal.release"), "{e}");
    }

    #[test]
    fn plain_clients_and_a_portal_without_release_are_opt_in() {
        let s = Scenario::parse(MIN).unwrap();
        assert_eq!(s.behaviour.plain, 0.0);
        assert!(s.portal.release);
        let s = Scenario::parse(&format!(
            "{MIN}[behaviour]\nplain = 1.0\n[portal]\nrelease = false\n"
        ))
        .unwrap();
        assert_eq!(s.behaviour.plain, 1.0);
        assert!(!s.portal.release);
    }

    #[test]
    fn ramp_arrivals_accelerate_and_cohorts_follow_shares() {
        let mut s = Scenario::parse(MIN).unwrap();
        s.users.arrival = Arrival::Ramp;
        // Half of the users arrive in the last 30% of the window.
        assert!(s.arrival_of(5, 0.0) > Duration::from_secs(7));
        s.cohorts = [("a".to_string(), 0.25), ("b".to_string(), 0.75)].into();
        s.behaviour.bots = 0.2;
        let bots: Vec<usize> = (0..10).filter(|&i| s.is_bot(i)).collect();
        assert_eq!((s.bots(), bots), (2, vec![0, 5]));
        assert_eq!(s.cohort_of(0.1), Some("a"));
        assert_eq!(s.cohort_of(0.9), Some("b"));
    }
}
