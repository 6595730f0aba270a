//! Configuration: TOML parsed with serde, then validated as a whole before anything starts.
//!
//! Every error names the file, the key path (`upstream.connect_timeout`) and the reason, and the
//! line where TOML can tell it. `anticamera check-config FILE` runs exactly this and nothing else.
//!
//! This module owns the schema: every section's types and defaults, [`Dur`] and [`ByteSize`], and
//! what is derived from a valid config (signing keys, admin token, upstream targets, workers).
//! Loading and error rendering live in `load.rs`, the semantic checks in `validate.rs`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::util::duration;

mod load;
mod validate;

pub use load::{ConfigError, ConfigIssue};

/// A duration written as `250ms`, `10s`, `5m`, `1h` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        duration::parse(&s).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"250ms\", \"10s\", \"5m\""
            ))
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", duration::format(self.0))
    }
}

/// A size in bytes, written as an integer or as `"16KiB"`, `"10MiB"`, `"1GiB"`, `"500kB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"10MiB"`-style sizes.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: u64 = num.replace('_', "").parse().map_err(|_| {
            format!("invalid size {s:?}: expected e.g. 16384, \"16KiB\", \"10MiB\"")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1_000,
            "KiB" | "K" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" | "M" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" | "G" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}: use B, KiB, MiB, GiB, kB, MB, GB"
                ))
            }
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing listener, limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// The portal behind anticamera.
    pub upstream: UpstreamConfig,
    /// Which peers may tell us the client's address.
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// Metrics, health and the admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Signed tickets and passes, cookies, persistence, pages.
    #[serde(default)]
    pub waiting_room: WaitingRoomConfig,
    /// The portal's path and host semantics for gate matching (`[routing]`).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Gates: the scopes that have a waiting room (and maybe opening hours). Paths outside
    /// every gate are forwarded without queueing.
    #[serde(default)]
    pub gates: Vec<GateConfig>,
    /// Who is who: cohorts recognised per request.
    #[serde(default)]
    pub cohorts: crate::cohort::CohortConfig,
    /// Token-bucket limits per session, address, cohort and gate (absent: none).
    pub rate_limits: Option<crate::ratelimit::RateLimitsConfig>,
    /// Protection of the portal: concurrency cap (fixed or adaptive), queue, circuit breaker
    /// (absent: none).
    pub upstream_guard: Option<crate::guard::GuardConfig>,
    /// Session isolation: credentials, leak guard, identity headers.
    #[serde(default)]
    pub isolation: crate::isolation::IsolationConfig,
    /// Micro-cache for public informational pages (off by default).
    #[serde(default)]
    pub microcache: crate::microcache::MicrocacheConfig,
    /// Where the waiting room's counters live: this process (default) or Redis, shared by
    /// several nodes (`[store]`).
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    /// Holidays and closures shared by gates (`[calendars.NAME]`, named by a schedule's
    /// `calendar`).
    #[serde(default)]
    pub calendars: std::collections::BTreeMap<String, crate::schedule::CalendarConfig>,
    /// Set by `anticamera demo` only: allows the clearly fake example keys.
    #[serde(skip)]
    pub demo_mode: bool,
    /// Loaded to be checked, not run ([`Config::load_for_check`]): secrets taken from the
    /// environment or from files need not be available.
    #[serde(skip)]
    defer_secrets: bool,
    /// `calendars`, compiled when the config is loaded.
    #[serde(skip)]
    calendar_set: crate::schedule::Calendars,
    /// Directory of the config file, for relative paths in it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was loaded from (what a reload reads again), if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Marker that example configs put in fake secrets; refused outside demo mode.
pub const FAKE_SECRET_MARKER: &str = "NOT-A-SECRET";

/// A signing key for tickets and passes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id (1-255), carried in every token so keys can rotate.
    pub id: u8,
    /// The secret itself (at least 32 bytes). Prefer `secret_env` or `secret_file`.
    pub secret: Option<String>,
    /// Name of an environment variable holding the secret.
    pub secret_env: Option<String>,
    /// File holding the secret (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
}

/// `[waiting_room]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitingRoomConfig {
    /// Signing keys; tokens signed with any of them are accepted.
    pub keys: Vec<KeyConfig>,
    /// Key id new tokens are signed with (default: the last key listed).
    pub current_key: Option<u8>,
    /// Cookie name prefix; each gate's cookie is `PREFIX + gate name`.
    pub cookie_prefix: String,
    /// Mark cookies `Secure` (set it when clients reach you over HTTPS).
    pub cookie_secure: bool,
    /// Where queue counters and active passes are saved, so a restart keeps the queue.
    pub state_file: Option<PathBuf>,
    /// How often the state is saved (and always at shutdown).
    pub snapshot_interval: Dur,
    /// How often the admission controller runs.
    pub tick: Dur,
    /// How often a waiting page refreshes or polls (jittered ±20%).
    pub poll_interval: Dur,
    /// How long a waiting ticket stays valid.
    pub ticket_ttl: Dur,
    /// An active pass is re-issued when older than this (keeps it fresh across restarts).
    pub pass_refresh: Dur,
    /// Response header by which the portal ends a user's session early (stripped).
    pub release_header: String,
    /// Directory with `queue.html` / `closed.html` overriding the built-in pages.
    pub templates: Option<PathBuf>,
    /// How long a request of someone at the front of the line (an HTTP client that carries its
    /// ticket and asks for the gated page again) is held open, to be forwarded the moment the
    /// place is theirs instead of answered "wait"; `"0s"` (the default) turns holding off.
    pub hold_front: Dur,
}

impl Default for WaitingRoomConfig {
    fn default() -> Self {
        WaitingRoomConfig {
            keys: Vec::new(),
            current_key: None,
            cookie_prefix: "anticamera_".into(),
            cookie_secure: false,
            state_file: None,
            snapshot_interval: Dur(Duration::from_secs(5)),
            tick: Dur(Duration::from_millis(200)),
            poll_interval: Dur(Duration::from_secs(5)),
            ticket_ttl: Dur(Duration::from_secs(24 * 3600)),
            pass_refresh: Dur(Duration::from_secs(60)),
            hold_front: Dur(Duration::ZERO),
            release_header: "x-anticamera-release".into(),
            templates: None,
        }
    }
}

/// `[[gates]]`: one scope with a waiting room.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Short name (letters, digits, `_`, `-`): in cookies, metrics and the admin API.
    pub name: String,
    /// Human title shown on the pages.
    pub label: Option<String>,
    /// Path prefixes this gate covers.
    #[serde(default)]
    pub prefix: Vec<String>,
    /// Path globs this gate covers (`*` one segment, `**` any).
    #[serde(default)]
    pub glob: Vec<String>,
    /// Methods it applies to (default all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host names it applies to (default every host); see [`crate::route`].
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Compare its paths ignoring case; default `[routing] case_insensitive`.
    pub case_insensitive: Option<bool>,
    /// Active users at once.
    #[serde(default = "gate_defaults::capacity")]
    pub capacity: u32,
    /// New users admitted per minute; 0 = no cap.
    #[serde(default)]
    pub admit_per_minute: u32,
    /// A session ends this long after the user's last request.
    #[serde(default = "gate_defaults::session_duration")]
    pub session_duration: Dur,
    /// An admitted user has this long to show up before the place goes to the next.
    #[serde(default = "gate_defaults::arrival_timeout")]
    pub arrival_timeout: Dur,
    /// `open` (queue only when full), `queue_all` or `paused`.
    #[serde(default)]
    pub mode: crate::waitroom::Mode,
    /// Reserved capacity share per cohort when several cohorts' windows overlap.
    #[serde(default)]
    pub shares: std::collections::BTreeMap<String, f64>,
    /// Opening hours; absent = always open.
    pub schedule: Option<crate::schedule::ScheduleConfig>,
    /// Requests whose successful answer ends the journey and frees the place at once, for a
    /// portal that sends no release header (`POST /claim/submit` answered 2xx, `/logout`).
    #[serde(default)]
    pub release_on: Vec<ReleaseOnConfig>,
    /// What steers admissions: `capacity` (people holding a pass, the default) or `portal`
    /// (the portal's room, from `[upstream_guard]`; `capacity` is then only a safety bound).
    #[serde(default)]
    pub admission: Admission,
}

/// What steers a gate's admissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Admit while fewer than `capacity` people hold a pass.
    #[default]
    Capacity,
    /// Admit while the portal has room (requests in flight under the guard's limit and no
    /// request of someone inside waiting for a portal slot), up to `capacity` people inside.
    Portal,
}

/// `[[gates.release_on]]`: a request (by path and method) whose answer, when its status is one
/// of `status`, ends the admitted person's journey: their place goes to the next in line at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseOnConfig {
    /// Path prefixes (whole segments, as a gate's).
    #[serde(default)]
    pub prefix: Vec<String>,
    /// Path globs (`*` one segment, `**` any).
    #[serde(default)]
    pub glob: Vec<String>,
    /// Methods (default all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Statuses that count as the end: classes (`"2xx"`) or codes (`"303"`); default `["2xx"]`.
    #[serde(default = "gate_defaults::release_status")]
    pub status: Vec<String>,
}

impl ReleaseOnConfig {
    /// Compiles the rule as its gate reads paths: the path rules and the statuses, or every
    /// problem as `(key relative to the rule, reason)`. Used by validation and by the room.
    pub fn compile(
        &self,
        gate: &crate::route::RuleConfig,
    ) -> Result<ReleaseRule, Vec<(String, String)>> {
        let mut errs = Vec::new();
        if self.prefix.is_empty() && self.glob.is_empty() {
            errs.push((
                "prefix".into(),
                "give a prefix or a glob: which request ends the journey".into(),
            ));
        }
        let rules = crate::route::Rules::compile(&self.rules(gate)).map_err(|e| errs.extend(e));
        if self.status.is_empty() {
            errs.push(("status".into(), "give at least one status (\"2xx\")".into()));
        }
        let mut statuses = Vec::new();
        for (k, st) in self.status.iter().enumerate() {
            match StatusMatch::parse(st) {
                Ok(m) => statuses.push(m),
                Err(reason) => errs.push((format!("status[{k}]"), reason)),
            }
        }
        match rules {
            Ok(rules) if errs.is_empty() => Ok((rules, statuses)),
            _ => Err(errs),
        }
    }

    /// The path rules of this release rule, read as its gate reads paths (case).
    pub fn rules(&self, gate: &crate::route::RuleConfig) -> crate::route::RuleConfig {
        crate::route::RuleConfig {
            prefix: self.prefix.clone(),
            glob: self.glob.clone(),
            methods: self.methods.clone(),
            hosts: Vec::new(),
            case_insensitive: gate.case_insensitive,
        }
    }
}

/// A compiled `release_on` rule: which requests, and which statuses end the journey.
pub type ReleaseRule = (crate::route::Rules, Vec<StatusMatch>);

/// A status an answer must have to count: a class (`2xx`) or one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Any status of this hundred (2 for `2xx`).
    Class(u16),
    /// Exactly this status.
    Code(u16),
}

impl StatusMatch {
    /// Parses `"2xx"` or `"204"` (100–599).
    pub fn parse(s: &str) -> Result<StatusMatch, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || format!("{s:?} is not a status (\"2xx\" or a code like \"303\")");
        if let Some(class) = t.strip_suffix("xx") {
            return match class.parse::<u16>() {
                Ok(c @ 1..=5) => Ok(StatusMatch::Class(c)),
                _ => Err(bad()),
            };
        }
        match t.parse::<u16>() {
            Ok(code @ 100..=599) => Ok(StatusMatch::Code(code)),
            _ => Err(bad()),
        }
    }

    /// Whether `status` is matched.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Class(c) => status / 100 == c,
            StatusMatch::Code(code) => status == code,
        }
    }
}

mod gate_defaults {
    use super::Dur;
    use std::time::Duration;
    pub fn capacity() -> u32 {
        1000
    }
    pub fn session_duration() -> Dur {
        Dur(Duration::from_secs(20 * 60))
    }
    pub fn arrival_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn release_status() -> Vec<String> {
        vec!["2xx".into()]
    }
}

impl GateConfig {
    /// The admission settings of this gate.
    pub fn settings(&self) -> crate::waitroom::GateSettings {
        crate::waitroom::GateSettings {
            capacity: self.capacity,
            admit_per_minute: self.admit_per_minute,
            session_duration: self.session_duration.0,
            arrival_timeout: self.arrival_timeout.0,
            mode: self.mode,
        }
    }

    /// The path rules of this gate, under the portal's path semantics `routing`.
    pub fn rules(&self, routing: &RoutingConfig) -> crate::route::RuleConfig {
        crate::route::RuleConfig {
            prefix: self.prefix.clone(),
            glob: self.glob.clone(),
            methods: self.methods.clone(),
            hosts: self.hosts.clone(),
            case_insensitive: self.case_insensitive.unwrap_or(routing.case_insensitive),
        }
    }
}

/// `[routing]`: how the portal reads paths and host names, for gate matching.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The portal serves paths case-insensitively (IIS, Windows): gates compare paths ignoring
    /// case unless a gate says otherwise.
    pub case_insensitive: bool,
    /// Host names the portal also answers to that host-scoped gates do not catch (a host no
    /// gate and no entry here names meets every host-scoped gate).
    pub hosts: Vec<String>,
}

/// `[server]`: the client-facing side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to accept clients on.
    pub listen: SocketAddr,
    /// Worker threads, each with its own listener (SO_REUSEPORT) and upstream pool; 0 = one per core.
    pub workers: usize,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// Connections open at once across all workers; beyond it new ones get 503 and are closed.
    pub max_connections: usize,
    /// Deadline for a client to send a complete request head once it started one (slowloris).
    pub request_head_timeout: Dur,
    /// A connection with no request in flight and no bytes from the client for this long is closed.
    pub idle_timeout: Dur,
    /// Largest request head (request line + headers); larger gets 431. At least 8KiB.
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Largest request body; larger gets 413 (before forwarding when Content-Length says so).
    pub max_body_bytes: ByteSize,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// On SIGTERM/SIGINT: how long in-flight requests may take to finish.
    pub shutdown_grace: Dur,
    /// Listen backlog.
    pub backlog: u32,
    /// TLS for clients (`[server.tls]`). Absent: plain HTTP (and h2c), for deployments behind
    /// a TLS-terminating balancer.
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: anticamera terminates TLS itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file with the server certificate, followed by its intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the two files are checked for changes; a changed pair is loaded and used for
    /// new connections without a restart (a pair that does not load keeps the old one).
    #[serde(default = "defaults::tls_reload_interval")]
    pub reload_interval: Dur,
}

/// `[upstream.tls]`: how `https://` portal addresses are verified (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates the portal's certificate must chain to; absent: the
    /// system's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (and chain) anticamera presents to the portal (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// Private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// The name sent as SNI and checked against the portal's certificate, instead of the host
    /// of the URL (for URLs that give an IP address).
    pub server_name: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            http2: true,
            max_connections: 20_000,
            request_head_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_header_bytes: ByteSize(16 << 10),
            max_headers: 100,
            max_body_bytes: ByteSize(10 << 20),
            http2_max_streams: 100,
            shutdown_grace: Dur(Duration::from_secs(30)),
            backlog: 1024,
            tls: None,
        }
    }
}

/// `[upstream]`: the portal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URLs of the portal (`http://host:port` or `https://host:port`); several are used
    /// round-robin.
    pub urls: Vec<String>,
    /// Deadline to open a TCP connection to the portal; past it the client gets 502.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Deadline for the portal's response head once the request is sent; past it 504.
    #[serde(default = "defaults::response_timeout")]
    pub response_timeout: Dur,
    /// Idle pooled connections to the portal are closed after this long.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
    /// Idle pooled connections kept per portal address, per worker.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// Consecutive connection failures after which an address is skipped for `unhealthy_for`.
    #[serde(default = "defaults::unhealthy_after")]
    pub unhealthy_after: u32,
    /// How long an address that kept failing is skipped (passive health).
    #[serde(default = "defaults::unhealthy_for")]
    pub unhealthy_for: Dur,
    /// Verification of `https://` portal addresses: CA, client certificate, server name.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

mod defaults {
    use super::Dur;
    use std::time::Duration;
    pub fn connect_timeout() -> Dur {
        Dur(Duration::from_secs(3))
    }
    pub fn response_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn pool_idle_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn pool_max_idle() -> usize {
        512
    }
    pub fn unhealthy_after() -> u32 {
        3
    }
    pub fn unhealthy_for() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn tls_reload_interval() -> Dur {
        Dur(Duration::from_secs(5))
    }
}

/// `[forwarding]`: trusted forwarders.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Peers (load balancers, TLS terminators) whose `X-Forwarded-For`/`Forwarded`/`X-Forwarded-Proto`
    /// are believed. Anyone else's are replaced by what anticamera sees.
    pub trusted_forwarders: Vec<IpNet>,
}

/// `[admin]`: the operator-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the admin API. Keep it private.
    pub listen: SocketAddr,
    /// Bearer token for the admin API (prefer `token_env`). Without a token the admin API is off.
    pub token: Option<String>,
    /// Environment variable holding the admin token.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            token_env: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A parsed upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `scheme://authority`, used to build request URIs.
    pub authority: http::uri::Authority,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
}

/// A secret the configuration takes from outside the file (an environment variable or a
/// file): what `anticamera run` will need, and whether it is available where this runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The key naming it: `waiting_room.keys[0].secret_env`, `admin.token_env`, …
    pub key: String,
    /// The environment variable, or the file (resolved against the config's directory).
    pub source: String,
    /// `None` when it is available here; else why not (`not set here`, `cannot read here: …`).
    pub missing: Option<String>,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} ({})",
            self.key,
            self.source,
            self.missing.as_deref().unwrap_or("available here")
        )
    }
}

/// A secret looked up: its value, or (key, reason) when it is not available here.
type Fetched = Result<String, (String, String)>;

/// Stands in for a secret that is not available while a config is only checked: long enough
/// for the key checks, never used to sign (a checked config is not run, see
/// [`Config::load_for_check`]; [`Config::keyring`] always resolves the real secrets).
const ABSENT_SECRET_PLACEHOLDER: &str = "(absent secret: the config is only being checked)";

impl Config {
    /// The signing keys, resolved from the config, the environment or files.
    pub fn keyring(&self) -> Result<crate::waitroom::Keyring, (String, String)> {
        self.keyring_inner(false)
    }

    fn key_secret_file(&self, i: usize, f: &Path) -> Fetched {
        let p = self.base_dir.join(f);
        std::fs::read_to_string(&p)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| {
                (
                    format!("waiting_room.keys[{i}].secret_file"),
                    format!("{}: {e}", p.display()),
                )
            })
    }

    /// `defer`: a secret not available here is replaced by a placeholder instead of an error.
    fn keyring_inner(&self, defer: bool) -> Result<crate::waitroom::Keyring, (String, String)> {
        let w = &self.waiting_room;
        let mut keys = Vec::new();
        for (i, k) in w.keys.iter().enumerate() {
            let at = |f: &str| format!("waiting_room.keys[{i}].{f}");
            let fetched: Fetched = match (&k.secret, &k.secret_env, &k.secret_file) {
                (Some(s), None, None) => Ok(s.clone()),
                (None, Some(var), None) => std::env::var(var).map_err(|_| {
                    (
                        at("secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                }),
                (None, None, Some(f)) => self.key_secret_file(i, f),
                _ => {
                    return Err((
                        format!("waiting_room.keys[{i}]"),
                        "give exactly one of secret, secret_env, secret_file".into(),
                    ))
                }
            };
            let secret = match fetched {
                Ok(s) => s,
                Err(_) if defer && k.secret.is_none() => ABSENT_SECRET_PLACEHOLDER.to_owned(),
                Err(e) => return Err(e),
            };
            if secret.contains(FAKE_SECRET_MARKER) && !self.demo_mode {
                return Err((
                    at("secret"),
                    format!(
                        "this is an example key ({FAKE_SECRET_MARKER}); it is only accepted by \
                         `anticamera demo`. Generate one: openssl rand -base64 48"
                    ),
                ));
            }
            keys.push((k.id, secret.into_bytes()));
        }
        let current = w
            .current_key
            .or_else(|| w.keys.last().map(|k| k.id))
            .unwrap_or(1);
        if keys.is_empty() {
            return Ok(crate::waitroom::Keyring::generate(current));
        }
        crate::waitroom::Keyring::new(current, keys)
            .map_err(|e| ("waiting_room.keys".to_string(), e.to_string()))
    }

    /// The admin API token, if configured.
    pub fn admin_token(&self) -> Result<Option<String>, (String, String)> {
        self.admin_token_inner(false)
    }

    /// `defer`: a token variable not set here is no error (and no token).
    fn admin_token_inner(&self, defer: bool) -> Result<Option<String>, (String, String)> {
        let t = match (&self.admin.token, &self.admin.token_env) {
            (Some(t), None) => t.clone(),
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) => t,
                Err(_) if defer => return Ok(None),
                Err(_) => {
                    return Err((
                        "admin.token_env".to_string(),
                        format!("environment variable {var} is not set"),
                    ))
                }
            },
            (None, None) => return Ok(None),
            _ => {
                return Err((
                    "admin.token".into(),
                    "give either token or token_env, not both".into(),
                ))
            }
        };
        if t.len() < 16 {
            return Err((
                "admin.token".into(),
                "must be at least 16 characters".into(),
            ));
        }
        if t.contains(FAKE_SECRET_MARKER) && !self.demo_mode {
            return Err((
                "admin.token".into(),
                format!("this is an example token ({FAKE_SECRET_MARKER}); only `anticamera demo` accepts it"),
            ));
        }
        Ok(Some(t))
    }

    /// The secrets this config takes from the environment or from files (what `run` will
    /// need), each saying whether it is available where this process runs.
    pub fn secret_sources(&self) -> Vec<SecretSource> {
        let env = |key: String, var: &str| SecretSource {
            key,
            source: var.to_owned(),
            missing: std::env::var_os(var)
                .is_none()
                .then(|| "not set here".to_owned()),
        };
        let mut out = Vec::new();
        for (i, k) in self.waiting_room.keys.iter().enumerate() {
            if let Some(var) = &k.secret_env {
                out.push(env(format!("waiting_room.keys[{i}].secret_env"), var));
            }
            if let Some(f) = &k.secret_file {
                let p = self.base_dir.join(f);
                out.push(SecretSource {
                    key: format!("waiting_room.keys[{i}].secret_file"),
                    source: p.display().to_string(),
                    missing: std::fs::metadata(&p)
                        .err()
                        .map(|e| format!("cannot read here: {e}")),
                });
            }
        }
        if let Some(var) = &self.admin.token_env {
            out.push(env("admin.token_env".to_owned(), var));
        }
        // TLS private keys: files the running process must read, like a key's secret_file.
        let key_files = [
            (
                "server.tls.key_file",
                self.server.tls.as_ref().map(|t| &t.key_file),
            ),
            (
                "upstream.tls.client_key_file",
                self.upstream.tls.client_key_file.as_ref(),
            ),
        ];
        for (key, f) in key_files {
            if let Some(f) = f {
                let p = self.base_dir.join(f);
                out.push(SecretSource {
                    key: key.to_owned(),
                    source: p.display().to_string(),
                    missing: std::fs::metadata(&p)
                        .err()
                        .map(|e| format!("cannot read here: {e}")),
                });
            }
        }
        out
    }

    /// The compiled `[calendars]` (empty unless the config was loaded with [`Config::load`],
    /// [`Config::parse_in`] or their `_for_check` forms).
    pub fn calendar_set(&self) -> &crate::schedule::Calendars {
        &self.calendar_set
    }

    /// The upstream targets, parsed (validation guarantees they parse).
    pub fn upstream_targets(&self) -> Vec<UpstreamTarget> {
        self.upstream
            .urls
            .iter()
            .filter_map(|u| parse_upstream(u).ok())
            .collect()
    }

    /// Whether any portal address is `https://` (then the TLS client needs trust roots).
    pub fn upstream_uses_tls(&self) -> bool {
        self.upstream_targets()
            .iter()
            .any(|t| t.scheme == http::uri::Scheme::HTTPS)
    }

    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        if self.server.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.server.workers
        }
    }
}

/// Parses `http://host:port` or `https://host:port` (no path, no query) into an upstream
/// target.
pub fn parse_upstream(url: &str) -> Result<UpstreamTarget, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a scheme: write http://host:port"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!(
            "{url:?}: only http:// and https:// upstreams are supported"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a host: write http://host:port"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{url:?}: a path prefix is not supported; give scheme://host:port only"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?}: a query is not allowed"));
    }
    Ok(UpstreamTarget { authority, scheme })
}

#[cfg(test)]
mod tests;
