//! The Redis store: every node pointed at the same Redis, prefix, gates and signing keys is one
//! waiting room.
//!
//! * **Writes that must be atomic across nodes are Lua scripts** (`lua.rs`): taking a ticket
//!   (bounded increment), the leader's admission (compare-and-set of serving plus the batch of
//!   places held, in one step), a direct admission, a first claim (a place from the ticket's
//!   batch, free room or the late line), a release, the expiry of idle sessions and lapsed
//!   places, the late line.
//! * **Reads come from a mirror** ([`Lane`]): next ticket, serving, people inside, places
//!   held, the late line's length and its first [`LATE_HEAD`], and the batches with places
//!   left, refreshed by the fleet's thread every [`SYNC_MS`] and by every write (the
//!   admission script answers with the whole read; the others with the counts, or a read
//!   after them). Other nodes' admissions, the leak guard's bindings and the sessions ended
//!   elsewhere are pushed by Redis (one subscriber thread per node). A status poll and an admitted person's
//!   request make no round trip; an arrival makes one (take a ticket, or be let in directly);
//!   a first claim one; the controller one or two per lane and tick.
//! * **Sessions are keyed by ticket**, not by node: whichever node sees a person's requests
//!   reports them (`SharedAdmission::touch`, one batch per lane and tick), so a node that dies
//!   takes nobody's place with it: the people it served carry on through the others, and the
//!   sessions nobody reports end after `session_duration` like any idle session.
//! * **One leader** advances admissions: a lease key (`SET NX PX`, extended by the holder every
//!   [`SYNC_MS`], [`LEASE_MS`] to live); the admission script also checks that the caller
//!   holds it, and the compare-and-set on serving means nobody is admitted twice even by a
//!   leader whose lease lapsed mid-tick. When the leader dies another node takes the lease within
//!   [`LEASE_MS`] + [`SYNC_MS`].
//! * **Counters never go backwards**: every script raises next and serving to the highest this
//!   node has seen (its floors). An *epoch* key, born again whenever Redis has none (flushed,
//!   restarted without persistence) or its process is not the one the epoch was born in
//!   (restarted with its data, which may have lost the last writes; a promoted replica), tells
//!   a Redis that may have lost data: a node that sees a new epoch re-reports every session it
//!   knows, and write scripts refuse for a grace after an epoch is born ([`grace_ms`]: at
//!   least [`GRACE_MS`], and two ticks and two syncs; every live node raises the counters to
//!   its floors and re-reports its sessions meanwhile), so no ticket number is handed out
//!   twice and nobody is let in ahead of the sessions re-reported.
//! * **Blocking calls, kept short**: the `AdmissionStore` trait is synchronous and called on
//!   the workers' runtimes (each a current-thread runtime: while a call waits, every
//!   connection of that worker waits), so calls are blocking round trips on a small pool of
//!   connections (at most [`POOL_MAX`] kept idle; more may be opened while busy). A request's
//!   call (arrival, first claim, release, first leak-guard binding) has a deadline of
//!   [`REQUEST_TIMEOUT_MS`] (at most `[store] timeout`) and at most [`REQUEST_CALLS_MAX`] are
//!   in flight per node: past that the fail mode answers at once, no waiting. The controller's
//!   and the fleet thread's calls get the whole `[store] timeout`. After a call failed, the
//!   request paths do not try until the fleet's thread, which probes every [`SYNC_MS`], gets
//!   an answer. Known work: moving the store calls of the request paths and of the tick off
//!   the workers (`spawn_blocking` or an async connection), so a slow Redis holds no worker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult, Script};

use super::lua;
use super::portal::{PortalShare, Report};
use super::{FailMode, StoreConfig};
use crate::guard::Guard;
use crate::waitroom::late::LATE_IDLE_MS;
use crate::waitroom::store::{AdmissionStore, SharedAdmission, SharedClaim, StoreCounters, INSIDE};

/// How often the fleet's thread refreshes the mirrors and the leader lease.
pub const SYNC_MS: u64 = 50;
/// The leader lease's time to live in Redis.
pub const LEASE_MS: u64 = 1_500;
/// How long this node believes it leads after the lease was extended (under [`LEASE_MS`]:
/// the lease cannot lapse in Redis while this node still believes it holds it).
const LEAD_FOR_MS: u64 = 1_000;
/// Metric: messages Redis pushed to this node (another node's admission, a session ended on
/// another node).
pub const PUSHED: &str = "anticamera_store_pushed_total";

/// Metric: how long Redis's pushes took to reach this node (from the script that published,
/// by Redis's clock, to the subscriber, by this node's), by `kind` (`admission`: another
/// node's admission into this node's mirror; `release`: a session ended elsewhere, to the
/// leader). Clocks apart by more than the lag make it meaningless: the nodes keep NTP time.
pub const PUSH_LAG: &str = "anticamera_store_push_lag_seconds";
/// Metric: first sights of a session answered by a binding another node took (pushed by Redis),
/// without a round trip.
pub const BINDS_KNOWN: &str = "anticamera_store_binds_pushed_used_total";
/// Metric: on the leader, from a session ended on another node (its push received) to the
/// admission that followed (the admission script answered).
pub const RELEASE_TO_ADMISSION: &str = "anticamera_store_release_to_admission_seconds";

/// The first of the late line each mirror read brings (the leader wakes them when room frees
/// up, without a round trip of its own).
pub const LATE_HEAD: usize = 16;

/// A page request near the front reads the lane again only if the mirror is older than this
/// (a flood of such requests makes at most one round trip per lane per this many ms).
pub const REFRESH_MIN_MS: u64 = 10;

/// A node's part of the portal is taken back by the others when it has not reported for this
/// long while they were connected (a node that died gives its part back within it).
pub const PORTAL_TTL_MS: u64 = 2_000;
/// A node reports its part of the portal every this many fleet steps (every 100 ms).
const PORTAL_EVERY: u32 = 2;
/// Metric: this node's part of the portal's capacity (`[store] kind = "redis"`).
pub const PORTAL_SHARE: &str = "anticamera_portal_share";

/// After Redis lost its data: write scripts refuse at least this long (see [`grace_ms`]),
/// while every live node's sync raises the counters to what it had seen.
pub const GRACE_MS: u64 = 500;

/// The resync grace of a fleet whose controller ticks every `tick`: long enough for every live
/// node to notice the new epoch (a sync) and re-report its sessions (a tick), twice over:
/// max([`GRACE_MS`], 2 × tick + 2 × [`SYNC_MS`]).
pub fn grace_ms(tick: Duration) -> u64 {
    let tick = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX / 4);
    GRACE_MS.max(tick.saturating_mul(2).saturating_add(2 * SYNC_MS))
}
/// Leak-guard bindings waiting to be written to Redis, at most.
pub const BINDS_MAX: usize = 1 << 16;
/// Leak-guard bindings written per round trip of the fleet step.
const BINDS_PER_STEP: usize = 1024;
/// Connections kept for reuse.
pub const POOL_MAX: usize = 8;
/// Releases remembered per lane to be sent again after Redis lost its data (about 16 bytes
/// each), for at most [`RECENT_RELEASE_MS`].
pub const RECENT_RELEASES: usize = 1 << 16;
/// How long a release is remembered for that.
pub const RECENT_RELEASE_MS: u64 = 30 * 60 * 1000;

/// Metric: round trips to the shared store, by `op`.
pub const ROUND_TRIPS: &str = "anticamera_store_round_trips_total";
/// Metric: how long round trips to the shared store took (the caller's thread waited), by `op`.
pub const ROUND_TRIP_TIME: &str = "anticamera_store_round_trip_seconds";
/// Metric: round trips that failed, by `op`.
pub const ERRORS: &str = "anticamera_store_errors_total";
/// Metric: request-path calls not made because [`REQUEST_CALLS_MAX`] were in flight, by `op`
/// (the fail mode answered).
pub const BUSY: &str = "anticamera_store_busy_total";
/// Deadline of a request's round trip (an arrival, a claim, a release, a first leak-guard
/// binding), at most `[store] timeout`: a worker serves every connection on its thread, so a
/// slow Redis must not hold it long. The controller's and the fleet thread's calls (bulk) get
/// the whole `[store] timeout`.
pub const REQUEST_TIMEOUT_MS: u64 = 100;
/// Request-path round trips in flight at once, per node; past it the fail mode answers.
pub const REQUEST_CALLS_MAX: u32 = POOL_MAX as u32;

/// The round trips made for a request (short deadline, capped in number).
fn is_request_op(op: &str) -> bool {
    matches!(
        op,
        "take"
            | "admit_now"
            | "claim"
            | "release"
            | "bind"
            | "late_arrive"
            | "late_leave"
            | "refresh"
    )
}

/// One of [`REQUEST_CALLS_MAX`] request-path calls in flight; given back when dropped.
struct RequestPermit<'a>(&'a AtomicU32);

impl<'a> RequestPermit<'a> {
    /// A permit if fewer than [`REQUEST_CALLS_MAX`] are out; never waits.
    fn take(n: &'a AtomicU32) -> Option<Self> {
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v < REQUEST_CALLS_MAX).then_some(v + 1)
        })
        .ok()
        .map(|_| RequestPermit(n))
    }
}

impl Drop for RequestPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Metric: 1 while this node holds the leader lease (advances admissions).
pub const LEADER: &str = "anticamera_store_leader";

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not describe a Redis server (validated before, so unexpected).
    #[error("store.url: {0}")]
    Url(String),
    /// The fleet's thread could not be started.
    #[error("store: cannot start the sync thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Checks a `[store] url`: `redis://host:port[/db]` only.
pub fn check_url(url: &str) -> Result<(), String> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("redis") => {}
        Some("rediss") => {
            return Err(format!(
            "{url:?}: TLS to Redis (rediss://) is not built in; use redis:// on a private network"
        ))
        }
        Some(other) => {
            return Err(format!(
                "{url:?}: scheme {other:?} is not supported; write redis://host:port"
            ))
        }
        None => return Err(format!("{url:?}: write redis://host:port")),
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("{url:?}: {e}"))
}

/// The scripts, hashed once.
struct Scripts {
    take: Script,
    cas: Script,
    admit: Script,
    admit_now: Script,
    claim: Script,
    release: Script,
    expire: Script,
    touch: Script,
    sync: Script,
    reserve: Script,
    unreserve: Script,
    late_arrive: Script,
    late_leave: Script,
    late_expire: Script,
    late_clear: Script,
    shuffle: Script,
    restore_held: Script,
    bind: Script,
    admin: Script,
    fleet: Script,
    portal: Script,
}

impl Scripts {
    fn new(grace_ms: u64) -> Self {
        let l = |body: &str| Script::new(&lua::lane(body, grace_ms));
        Scripts {
            take: l(lua::TAKE),
            cas: l(lua::CAS),
            admit: l(lua::ADMIT),
            admit_now: l(lua::ADMIT_NOW),
            claim: l(lua::CLAIM),
            release: l(lua::RELEASE),
            expire: l(lua::EXPIRE),
            touch: l(lua::TOUCH),
            sync: l(lua::SYNC),
            reserve: l(lua::RESERVE),
            unreserve: l(lua::UNRESERVE),
            late_arrive: l(lua::LATE_ARRIVE),
            late_leave: l(lua::LATE_LEAVE),
            late_expire: l(lua::LATE_EXPIRE),
            late_clear: l(lua::LATE_CLEAR),
            shuffle: l(lua::SHUFFLE),
            restore_held: l(lua::RESTORE_HELD),
            bind: Script::new(lua::BIND),
            admin: Script::new(lua::ADMIN),
            fleet: Script::new(lua::FLEET),
            portal: Script::new(lua::PORTAL),
        }
    }
}

/// The connection to Redis shared by every lane of this node, the leader lease and the epoch.
struct Inner {
    node: String,
    prefix: String,
    fail_mode: FailMode,
    timeout: Duration,
    client: redis::Client,
    pool: Mutex<Vec<Connection>>,
    up: AtomicBool,
    /// Milliseconds since `started` until which this node leads (0: it does not).
    lead_until: AtomicU64,
    started: Instant,
    lanes: Mutex<Vec<Arc<Lane>>>,
    stop: AtomicBool,
    /// The epoch this node knows (empty before the first sync).
    epoch: RwLock<String>,
    /// Nodes seen alive in the fleet at the last sync (this one included).
    nodes_alive: AtomicU32,
    /// This process's 20 random bits in the numbers it hands out during an outage.
    salt: u64,
    /// Numbers handed out during outages so far.
    outage_seq: AtomicU64,
    /// The gates whose admin settings this node follows (names), and the fleet's settings for
    /// each as last read, with the version this node last applied.
    admin: Mutex<std::collections::HashMap<String, (Option<GateAdmin>, u64)>>,
    /// Leak-guard bindings (session → user, idle ms) to write in the next fleet step: the
    /// refreshes of bindings in use and those made while Redis did not answer.
    binds: Mutex<std::collections::HashMap<u64, (u64, u64)>>,
    /// Request-path calls in flight (at most [`REQUEST_CALLS_MAX`]).
    request_calls: AtomicU32,
    /// When (ms since `started`) a refused command was last logged, and how many since.
    refused_logged: AtomicU64,
    refused_quiet: AtomicU64,
    /// Bindings dropped because [`BINDS_MAX`] were waiting (logged once per outage).
    binds_dropped: AtomicU64,
    /// Leak-guard bindings other nodes took, as Redis pushed them.
    pushed_binds: PushedBinds,
    /// Whether the subscriber thread listens to Redis's pushes now.
    listening: AtomicBool,
    /// The channel the binding script publishes the bindings it takes on (`PREFIX binds`).
    binds_channel: String,
    scripts: Scripts,
    /// The resync grace (see [`grace_ms`]): also how long nobody grows their part of the
    /// portal after Redis lost its data.
    grace_ms: u64,
    /// This node's part of the portal's capacity, once the proxy shares its guard
    /// ([`Fleet::share_portal`]).
    portal: Mutex<Option<PortalShare>>,
}

/// What the admin API set for one gate, shared by the fleet (`POST /admin/gates/NAME/...` on
/// any node applies on every node within a sync and a tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateAdmin {
    /// `configured`, `paused`, `queue_all` or `open`.
    pub switch: String,
    /// The capacity set, if any.
    pub capacity: Option<u32>,
    /// The admissions per minute set, if any.
    pub admit_per_minute: Option<u32>,
    /// Bumped by every change.
    pub version: u64,
}

/// A node's membership of a fleet sharing one Redis: the connection pool, the leader lease,
/// the epoch and the thread that keeps every lane's mirror fresh. Stopped (and the lease given
/// up) when dropped.
pub struct Fleet {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.inner.node)
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .field("leader", &self.inner.is_leader())
            .finish()
    }
}

impl Fleet {
    /// Joins the fleet of `[store]` (kind redis): one first sync (leader lease, epoch), then the
    /// sync thread. Redis may be down: the node starts in its fail mode and joins when Redis
    /// answers.
    pub fn start(cfg: &StoreConfig) -> Result<Fleet, StoreError> {
        Self::start_ticking(cfg, Duration::ZERO)
    }

    /// [`Fleet::start`] for nodes whose controller ticks every `tick` (`[waiting_room] tick`):
    /// the resync grace after Redis lost its data is [`grace_ms`] of it.
    pub fn start_ticking(cfg: &StoreConfig, tick: Duration) -> Result<Fleet, StoreError> {
        let url = cfg.url.clone().unwrap_or_default();
        let client =
            redis::Client::open(url.as_str()).map_err(|e| StoreError::Url(e.to_string()))?;
        let inner = Arc::new(Inner {
            node: cfg.node_id(),
            prefix: cfg.prefix.clone(),
            fail_mode: cfg.fail_mode,
            timeout: cfg.timeout.0,
            client,
            pool: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            lead_until: AtomicU64::new(0),
            started: Instant::now(),
            lanes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            epoch: RwLock::new(String::new()),
            nodes_alive: AtomicU32::new(1),
            salt: rand::random::<u64>() & 0xF_FFFF,
            outage_seq: AtomicU64::new(0),
            admin: Mutex::new(std::collections::HashMap::new()),
            binds: Mutex::new(std::collections::HashMap::new()),
            binds_dropped: AtomicU64::new(0),
            pushed_binds: PushedBinds::new(),
            listening: AtomicBool::new(false),
            binds_channel: format!("{}binds", cfg.prefix),
            request_calls: AtomicU32::new(0),
            refused_logged: AtomicU64::new(0),
            refused_quiet: AtomicU64::new(0),
            scripts: Scripts::new(grace_ms(tick)),
            grace_ms: grace_ms(tick),
            portal: Mutex::new(None),
        });
        metrics::gauge!(crate::telemetry::STORE_UP).set(1.0);
        inner.fleet_step();
        tracing::info!(node = %inner.node, up = inner.is_up(), leader = inner.is_leader(),
            fail_mode = inner.fail_mode.as_str(), "store: joined the fleet on Redis");
        let t = inner.clone();
        let thread = std::thread::Builder::new()
            .name("anticamera-store".into())
            .spawn(move || t.run())?;
        let t = inner.clone();
        std::thread::Builder::new()
            .name("anticamera-store-push".into())
            .spawn(move || t.listen())?;
        Ok(Fleet {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The store of one lane (gate `gate`, cohort `cohort`), its mirror kept fresh by this
    /// fleet's thread.
    pub fn lane(&self, gate: &str, cohort: &str) -> RedisStore {
        let lane = Arc::new(Lane::new(&self.inner.prefix, gate, cohort));
        if let Ok(mut a) = self.inner.admin.lock() {
            a.entry(gate.to_string()).or_insert((None, 0));
        }
        if let Ok(mut l) = self.inner.lanes.lock() {
            l.push(lane.clone());
        }
        let store = RedisStore {
            fleet: self.inner.clone(),
            lane,
        };
        store.sync();
        store
    }

    /// Publishes an admin change of gate `gate` to the fleet (`switch`, and the limits when
    /// given). False when Redis did not take it.
    pub fn publish_admin(
        &self,
        gate: &str,
        switch: Option<&str>,
        capacity: Option<u32>,
        admit_per_minute: Option<u32>,
    ) -> bool {
        let key = format!("{}admin:{gate}", self.inner.prefix);
        // Versions only move up, even after Redis lost its data: the new one is above both
        // what Redis holds and the highest this node has seen.
        let floor = self
            .inner
            .admin
            .lock()
            .ok()
            .and_then(|m| {
                m.get(gate)
                    .map(|(cur, applied)| cur.as_ref().map_or(0, |a| a.version).max(*applied))
            })
            .unwrap_or(0);
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(sw) = switch {
            fields.push(("switch", sw.to_string()));
        }
        if let Some(cap) = capacity {
            fields.push(("capacity", cap.to_string()));
        }
        if let Some(apm) = admit_per_minute {
            fields.push(("admit_per_minute", apm.to_string()));
        }
        self.inner
            .call("admin", false, |c| {
                let mut inv = self.inner.scripts.admin.key(&key);
                inv.arg(floor);
                for (k, v) in &fields {
                    inv.arg(*k).arg(v);
                }
                inv.invoke::<i64>(c)
            })
            .is_some()
    }

    /// The fleet's admin settings of `gate`, once per change (`None` when unchanged since the
    /// last call, or never set).
    pub fn take_admin(&self, gate: &str) -> Option<GateAdmin> {
        let mut m = self.inner.admin.lock().ok()?;
        let (cur, applied) = m.get_mut(gate)?;
        let a = cur.clone()?;
        // `!=`, not `<`: a Redis emptied and published to by a node that had seen less starts
        // its versions lower.
        if a.version == *applied {
            return None;
        }
        *applied = a.version;
        Some(a)
    }

    /// The leak guard's binding of `session` to `user`, fleet-wide, for `idle_ms`: whether
    /// the session is this user's (taken if free); `None` when Redis did not answer.
    /// A binding another node took and Redis pushed here (received within `idle_ms`) answers
    /// without a round trip: the session's requests spread over N nodes cost one binding round
    /// trip, not N.
    pub fn bind_session(&self, session: u64, user: u64, idle_ms: u64) -> Option<bool> {
        if let Some(bound_to) = self.inner.pushed_binds.take(session, idle_ms) {
            metrics::counter!(BINDS_KNOWN).increment(1);
            return Some(bound_to == user);
        }
        let key = format!("{}bind:{session:016x}", self.inner.prefix);
        let r: i64 = self.inner.call("bind", false, |c| {
            self.inner
                .scripts
                .bind
                .key(&key)
                .arg(user)
                .arg(idle_ms.max(1))
                .arg(&self.inner.binds_channel)
                .arg(&self.inner.node)
                .invoke(c)
        })?;
        Some(r == 1)
    }

    /// Queues the leak guard's binding of `session` to `user` for `idle_ms`, written to the
    /// fleet by the next fleet step (every [`SYNC_MS`], no round trip here): refreshes a
    /// binding in use, or writes one made while Redis did not answer. At most
    /// [`BINDS_MAX`] wait; more are dropped (and logged).
    pub fn queue_binding(&self, session: u64, user: u64, idle_ms: u64) {
        let Ok(mut b) = self.inner.binds.lock() else {
            return;
        };
        if b.len() >= BINDS_MAX && !b.contains_key(&session) {
            drop(b);
            if self.inner.binds_dropped.fetch_add(1, Ordering::AcqRel) == 0 {
                tracing::warn!("store: too many leak-guard bindings wait for Redis; some are not refreshed in the fleet");
            }
            return;
        }
        b.insert(session, (user, idle_ms));
    }

    /// Whether this node listens to Redis's pushes (other nodes' admissions and bindings, the
    /// sessions ended elsewhere) now; without them it reads Redis at its next sync instead.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// Nodes seen alive in the fleet at the last sync (this one included; at least 1).
    pub fn nodes_alive(&self) -> u32 {
        self.inner.nodes_alive.load(Ordering::Acquire).max(1)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    /// Whether this node holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// What a node does while Redis does not answer.
    pub fn fail_mode(&self) -> FailMode {
        self.inner.fail_mode
    }

    /// Shares the portal's capacity (`upstream_guard.max_in_flight`) with the fleet: from now
    /// on `guard` uses only this node's part of it, reported and renewed every 100 ms (see
    /// `store/portal.rs`). Asks Redis once before returning.
    pub fn share_portal(&self, guard: Guard, capacity: usize) {
        let share = PortalShare::new(guard, capacity);
        if let Ok(mut p) = self.inner.portal.lock() {
            *p = Some(share);
        }
        self.inner.portal_step(false);
    }

    /// Stops the sync thread and gives up the leader lease (another node takes over at once).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn is_leader(&self) -> bool {
        self.ms() < self.lead_until.load(Ordering::Acquire)
    }

    fn epoch(&self) -> String {
        self.epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    fn connect(&self, deadline: Duration) -> RedisResult<Connection> {
        self.client.get_connection_with_timeout(deadline)
    }

    /// One round trip on a pooled connection. While Redis is down, request paths (`probe`
    /// false) fail at once without trying: only the fleet's thread probes.
    fn call<T>(
        &self,
        op: &'static str,
        probe: bool,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Option<T> {
        if !probe && !self.is_up() {
            return None;
        }
        // A request's call: a short deadline, and at most REQUEST_CALLS_MAX at once (no permit:
        // none is waited for, the fail mode answers at once).
        let request = !probe && is_request_op(op);
        let _permit = if request {
            match RequestPermit::take(&self.request_calls) {
                Some(p) => Some(p),
                None => {
                    metrics::counter!(BUSY, "op" => op).increment(1);
                    return None;
                }
            }
        } else {
            None
        };
        let deadline = if request {
            self.timeout.min(Duration::from_millis(REQUEST_TIMEOUT_MS))
        } else {
            self.timeout
        };
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => match self.connect(deadline) {
                Ok(c) => c,
                Err(e) => {
                    self.failed(op, &e);
                    return None;
                }
            },
        };
        if let Err(e) = conn
            .set_read_timeout(Some(deadline))
            .and_then(|()| conn.set_write_timeout(Some(deadline)))
        {
            self.failed(op, &e);
            return None;
        }
        metrics::counter!(ROUND_TRIPS, "op" => op).increment(1);
        let start = Instant::now();
        let answer = f(&mut conn);
        metrics::histogram!(ROUND_TRIP_TIME, "op" => op).record(start.elapsed().as_secs_f64());
        match answer {
            Ok(v) => {
                self.answered();
                if let Ok(mut p) = self.pool.lock() {
                    if p.len() < POOL_MAX {
                        p.push(conn);
                    }
                }
                Some(v)
            }
            Err(e) => {
                self.failed(op, &e);
                None
            }
        }
    }

    fn answered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!(crate::telemetry::STORE_UP).set(1.0);
            tracing::warn!(node = %self.node, "store: Redis answers again; resyncing");
        }
    }

    fn failed(&self, op: &'static str, e: &RedisError) {
        metrics::counter!(ERRORS, "op" => op).increment(1);
        let unreachable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error();
        // Replies of a Redis that answers but cannot serve: loading its data, a replica (or a
        // primary without its replicas), out of memory, busy with a script, or refusing writes
        // after a failed save. As good as down: the fail mode applies until the fleet's probe
        // goes through.
        let unavailable = matches!(
            e.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "OOM" | "BUSY" | "MISCONF")
        );
        if !unreachable && !unavailable {
            // Once a second at most (a request path may meet it on every request).
            let now = self.ms();
            let last = self.refused_logged.load(Ordering::Acquire);
            if (last == 0 || now.saturating_sub(last) >= 1_000)
                && self
                    .refused_logged
                    .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let more = self.refused_quiet.swap(0, Ordering::AcqRel);
                tracing::error!(op, error = %e, more_since_last_log = more,
                    "store: Redis refused a command");
            } else {
                self.refused_quiet.fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        if let Ok(mut p) = self.pool.lock() {
            p.clear();
        }
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(crate::telemetry::STORE_UP).set(0.0);
            self.lead_until.store(0, Ordering::Release);
            tracing::error!(node = %self.node, op, error = %e, fail_mode = self.fail_mode.as_str(),
                "store: Redis does not answer or cannot serve; nobody new is admitted until it does (people inside keep their passes)");
        }
    }

    /// The fleet's thread: every `SYNC_MS`, the lease and epoch, then every lane's mirror.
    fn run(self: Arc<Self>) {
        let mut steps: u32 = 0;
        while !self.stop.load(Ordering::Acquire) {
            let t0 = Instant::now();
            self.fleet_step();
            steps = steps.wrapping_add(1);
            if steps % PORTAL_EVERY == 0 {
                self.portal_step(false);
            }
            self.admin_step();
            self.binds_step();
            let lanes: Vec<Arc<Lane>> = self.lanes.lock().map(|l| l.clone()).unwrap_or_default();
            for lane in lanes {
                RedisStore {
                    fleet: self.clone(),
                    lane,
                }
                .sync_probe();
            }
            let spent = t0.elapsed();
            let every = Duration::from_millis(SYNC_MS);
            if spent < every {
                std::thread::sleep(every - spent);
            }
        }
        // A clean stop: the part of the portal back (if nothing is there any more), and the
        // lease, so another node takes over at once.
        self.portal_step(true);
        if self.is_leader() {
            let _ = self.lease("", true);
            self.lead_until.store(0, Ordering::Release);
            metrics::gauge!(LEADER).set(0.0);
        }
    }

    /// What Redis pushes (`PSUBSCRIBE PREFIX lane:*`, published by the admission and release
    /// scripts on the lane's serving key): another node's admission goes into this node's
    /// mirror at once (its batch, then serving: the held long polls of those admitted wake),
    /// and on the leader a session ended elsewhere lets the next in at once. A hint only: the
    /// mirror's sync every [`SYNC_MS`] stays the source of truth, so a message lost while the
    /// connection is down costs at most that. Runs until the fleet stops.
    fn listen(self: Arc<Self>) {
        let pattern = format!("{}lane:*", self.prefix);
        while !self.stop.load(Ordering::Acquire) {
            let mut conn = match self.connect(self.timeout) {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(SYNC_MS * 4));
                    continue;
                }
            };
            let mut ps = conn.as_pubsub();
            if ps.psubscribe(&pattern).is_err()
                || ps.subscribe(&self.binds_channel).is_err()
                || ps
                    .set_read_timeout(Some(Duration::from_millis(SYNC_MS * 4)))
                    .is_err()
            {
                std::thread::sleep(Duration::from_millis(SYNC_MS * 4));
                continue;
            }
            self.listening.store(true, Ordering::Release);
            while !self.stop.load(Ordering::Acquire) {
                match ps.get_message() {
                    Ok(m) => {
                        metrics::counter!(PUSHED).increment(1);
                        let payload: String = m.get_payload().unwrap_or_default();
                        self.pushed(m.get_channel_name(), &payload);
                    }
                    Err(e) if e.is_timeout() => continue,
                    Err(_) => {
                        self.listening.store(false, Ordering::Release);
                        std::thread::sleep(Duration::from_millis(SYNC_MS));
                        break;
                    }
                }
            }
        }
    }

    /// One pushed message of lane channel `channel`, or of the bindings' (see
    /// [`Inner::listen`]).
    fn pushed(&self, channel: &str, payload: &str) {
        if let Some(rest) = payload.strip_prefix("b ") {
            if channel == self.binds_channel {
                let mut w = rest.split(' ');
                let node = w.next();
                if let (true, Some(Ok(session)), Some(Ok(user))) = (
                    node != Some(self.node.as_str()),
                    w.next().map(|h| u64::from_str_radix(h, 16)),
                    w.next().map(str::parse::<u64>),
                ) {
                    self.pushed_binds.learn(session, user);
                }
            }
            return;
        }
        let lane = match self.lanes.lock() {
            Ok(l) => l.iter().find(|l| l.keys[1] == channel).cloned(),
            Err(_) => None,
        };
        let Some(lane) = lane else { return };
        let mut words = payload.split(' ');
        match (words.next(), words.next()) {
            (Some("a"), Some(node)) if node != self.node => {
                let mut num = || words.next().and_then(|w| w.parse::<u64>().ok());
                let (Some(next), Some(from), Some(to), Some(held)) = (num(), num(), num(), num())
                else {
                    return;
                };
                if let Some(at) = num() {
                    push_lag("admission", at);
                }
                // Older than what the mirror has (a sync read it already): nothing to add.
                if to > from && to > lane.serving.load(Ordering::Acquire) {
                    lane.written(|| {
                        if let Ok(mut b) = lane.batches.write() {
                            if !b.iter().any(|&(a, _)| a == from) {
                                b.push((from, to));
                            }
                        }
                        lane.pending
                            .store(u32::try_from(held).unwrap_or(u32::MAX), Ordering::Release);
                    });
                }
                lane.raise(
                    i64::try_from(next).unwrap_or(i64::MAX),
                    i64::try_from(to).unwrap_or(i64::MAX),
                );
            }
            (Some("r"), node) if node != Some(self.node.as_str()) && self.is_leader() => {
                if let Some(at) = words.next().and_then(|w| w.parse::<u64>().ok()) {
                    push_lag("release", at);
                }
                let _ = lane.release_seen_ms.compare_exchange(
                    0,
                    wall_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if let Some(f) = lane.on_release.get() {
                    f();
                }
            }
            _ => {}
        }
    }

    /// This node's part of the portal: report, and apply the grant (see `store/portal.rs`).
    /// With `leave`, gives the part up if nothing of this node is at the portal.
    fn portal_step(&self, leave: bool) {
        let Ok(mut guard) = self.portal.lock() else {
            return;
        };
        let Some(p) = guard.as_mut() else { return };
        let keys = [
            format!("{}portal", self.prefix),
            format!("{}epoch", self.prefix),
            format!("{}epoch_at", self.prefix),
        ];
        let epoch = self.epoch();
        let run = |r: Report, leave: bool| -> Option<(i64, i64)> {
            self.call("portal", true, |c| {
                self.scripts
                    .portal
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(&self.node)
                    .arg(r.keep)
                    .arg(r.want)
                    .arg(r.capacity)
                    .arg(PORTAL_TTL_MS)
                    .arg(PORTAL_TTL_MS / 2)
                    .arg(self.grace_ms)
                    .arg(&epoch)
                    .arg(u8::from(leave))
                    .invoke(c)
            })
        };
        if leave {
            if p.idle() {
                let _ = run(p.report(), true);
            }
            return;
        }
        let r = p.report();
        match run(r, false) {
            Some((held, target)) => p.answer(
                r,
                usize::try_from(held).unwrap_or(0),
                usize::try_from(target).unwrap_or(0),
            ),
            None => p.no_answer(self.fail_mode, self.nodes_alive.load(Ordering::Acquire)),
        }
        metrics::gauge!(PORTAL_SHARE).set(p.granted() as f64);
    }

    fn fleet_keys(&self) -> [String; 5] {
        [
            format!("{}leader", self.prefix),
            format!("{}epoch", self.prefix),
            format!("{}epoch_at", self.prefix),
            format!("{}nodes", self.prefix),
            format!("{}redis_run_id", self.prefix),
        ]
    }

    /// The fleet's admin settings of every gate (one pipelined round trip).
    fn admin_step(&self) {
        let gates: Vec<String> = match self.admin.lock() {
            Ok(a) => a.keys().cloned().collect(),
            Err(_) => return,
        };
        if gates.is_empty() {
            return;
        }
        let got: Option<Vec<std::collections::HashMap<String, String>>> =
            self.call("admin_read", true, |c| {
                let mut p = redis::pipe();
                for g in &gates {
                    p.hgetall(format!("{}admin:{g}", self.prefix));
                }
                p.query(c)
            });
        let Some(got) = got else { return };
        let Ok(mut a) = self.admin.lock() else { return };
        for (g, h) in gates.iter().zip(got) {
            let version = h.get("version").and_then(|v| v.parse().ok()).unwrap_or(0);
            if version == 0 {
                continue;
            }
            let entry = a.entry(g.clone()).or_insert((None, 0));
            entry.0 = Some(GateAdmin {
                switch: h
                    .get("switch")
                    .cloned()
                    .unwrap_or_else(|| "configured".into()),
                capacity: h.get("capacity").and_then(|v| v.parse().ok()),
                admit_per_minute: h.get("admit_per_minute").and_then(|v| v.parse().ok()),
                version,
            });
        }
    }

    /// The leak-guard bindings queued (refreshes, and those made while Redis did not answer),
    /// one pipelined round trip; put back if Redis did not answer.
    fn binds_step(&self) {
        let batch: Vec<(u64, (u64, u64))> = match self.binds.lock() {
            Ok(mut b) if !b.is_empty() => {
                let keys: Vec<u64> = b.keys().take(BINDS_PER_STEP).copied().collect();
                keys.into_iter()
                    .filter_map(|k| b.remove(&k).map(|v| (k, v)))
                    .collect()
            }
            _ => return,
        };
        let got: Option<Vec<i64>> = self.call("bind_batch", true, |c| {
            let mut p = redis::pipe();
            for (session, (user, idle_ms)) in &batch {
                p.cmd("EVAL")
                    .arg(lua::BIND)
                    .arg(1)
                    .arg(format!("{}bind:{session:016x}", self.prefix))
                    .arg(user)
                    .arg((*idle_ms).max(1))
                    .arg(&self.binds_channel)
                    .arg(&self.node);
            }
            p.query(c)
        });
        match got {
            Some(r) => {
                self.binds_dropped.store(0, Ordering::Release);
                let taken = r.iter().filter(|&&v| v != 1).count();
                if taken > 0 {
                    tracing::warn!(
                        sessions = taken,
                        "store: leak-guard bindings made here are another user's in the fleet (bound elsewhere while Redis did not answer)"
                    );
                }
            }
            None => {
                if let Ok(mut b) = self.binds.lock() {
                    for (k, v) in batch {
                        if b.len() < BINDS_MAX {
                            b.entry(k).or_insert(v);
                        }
                    }
                }
            }
        }
    }

    /// The leader lease and the epoch.
    /// The fleet script (see `lua::FLEET`): the lease taken or extended and the epoch, or with
    /// `give_up` the lease given up. {1 if leader, the epoch, nodes alive}.
    fn lease(&self, fresh: &str, give_up: bool) -> Option<(i64, String, i64)> {
        let [k1, k2, k3, k4, k5] = self.fleet_keys();
        self.call("lease", true, |c| {
            self.scripts
                .fleet
                .key(&k1)
                .key(&k2)
                .key(&k3)
                .key(&k4)
                .key(&k5)
                .arg(&self.node)
                .arg(LEASE_MS)
                .arg(fresh)
                .arg(u8::from(give_up))
                .invoke(c)
        })
    }

    fn fleet_step(&self) {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let sent = self.ms();
        let r = self.lease(&fresh, false);
        let Some((lead, epoch, nodes)) = r else {
            self.lead_until.store(0, Ordering::Release);
            metrics::gauge!(LEADER).set(0.0);
            return;
        };
        self.nodes_alive.store(
            u32::try_from(nodes.max(1)).unwrap_or(u32::MAX),
            Ordering::Release,
        );
        let was = self.is_leader();
        if lead == 1 {
            self.lead_until.store(sent + LEAD_FOR_MS, Ordering::Release);
        } else {
            self.lead_until.store(0, Ordering::Release);
        }
        if was != (lead == 1) {
            tracing::info!(node = %self.node, leader = lead == 1, "store: leader lease");
        }
        metrics::gauge!(LEADER).set(lead as f64);
        let known = self.epoch();
        if known != epoch {
            if !known.is_empty() {
                tracing::warn!(node = %self.node, "store: Redis lost its data (new epoch); raising its counters to what this node has seen and re-reporting the sessions it knows");
                if let Ok(lanes) = self.lanes.lock() {
                    for l in lanes.iter() {
                        // What the mirror held before the loss (the lanes' syncs come after
                        // this step and will read the emptied Redis).
                        let batches = l.batches.read().map(|b| b.clone()).unwrap_or_default();
                        let pending = l.pending.load(Ordering::Acquire);
                        if let Ok(mut h) = l.lost_held.lock() {
                            *h = Some((batches, pending));
                        }
                        // The releases made through this node are sent again (the lanes'
                        // syncs send them), before anyone is let in after the resync grace.
                        let recent: Vec<(u64, u64)> = l
                            .recent_releases
                            .lock()
                            .map(|r| r.iter().copied().collect())
                            .unwrap_or_default();
                        if let Ok(mut u) = l.unsent_releases.lock() {
                            u.extend(recent);
                        }
                        l.wants_all.store(true, Ordering::Release);
                    }
                }
            }
            if let Ok(mut e) = self.epoch.write() {
                *e = epoch;
            }
            // The settings read from the Redis of the last epoch are not the fleet's any more:
            // the next change published (its version above every node's, see
            // `publish_admin`) applies everywhere; until then each node keeps what it applied.
            if let Ok(mut a) = self.admin.lock() {
                for v in a.values_mut() {
                    v.0 = None;
                }
            }
        }
    }
}

/// Called when the mirror's serving counter moves up.
type OnMove = Box<dyn Fn(u64, u64) + Send + Sync>;
/// Called on the leader when a session ended on another node.
type OnRelease = Box<dyn Fn() + Send + Sync>;

/// Batches with places left (start, end) and the places held, as a mirror knew them.
type Held = (Vec<(u64, u64)>, u32);

/// One lane's keys and mirror.
pub struct Lane {
    keys: [String; 15],
    next: AtomicU64,
    serving: AtomicU64,
    active: AtomicU32,
    pending: AtomicU32,
    late: AtomicU32,
    /// Batches with places left: (start, end).
    batches: RwLock<Vec<(u64, u64)>>,
    /// Redis lost its data: the next activity report carries every session known.
    wants_all: AtomicBool,
    on_move: std::sync::OnceLock<OnMove>,
    /// Called on the leader when another node released a session of this lane (pushed by
    /// Redis): the room lets the next in at once, as a single node does.
    on_release: std::sync::OnceLock<OnRelease>,
    /// Bumped (under `apply`) by every write that updates the counts or batches from its own
    /// answer: a sync whose read started before such a write does not overwrite it with
    /// older values.
    gen: AtomicU64,
    /// Held while counts and batches are replaced.
    apply: Mutex<()>,
    /// Releases (ticket, ms) made while Redis did not answer, sent when it answers again.
    unsent_releases: Mutex<Vec<(u64, u64)>>,
    /// Releases made through this node lately (ticket, ms; at most [`RECENT_RELEASES`]): sent
    /// again when Redis lost its data, so that no node reports those sessions back in.
    recent_releases: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// When Redis lost its data: the batches with places left and the places held that the
    /// mirror knew just before (what `restore_held` takes back in; the next sync reads the
    /// emptied Redis).
    lost_held: Mutex<Option<Held>>,
    /// The first of the late line as last read, and whether it is the whole line; `None` once
    /// this node changed the line since (asked again then).
    late_head: Mutex<Option<(Vec<u64>, bool)>>,
    /// When (fleet ms) the mirror was last read from Redis, or a refresh claimed the next read:
    /// a page request near the front refreshes at most once per [`REFRESH_MIN_MS`] per lane.
    read_ms: AtomicU64,
    /// Leader only: when the oldest release pushed since the last admission came (wall ms;
    /// 0: none), for [`RELEASE_TO_ADMISSION`].
    release_seen_ms: AtomicU64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("keys", &self.keys[0])
            .field("next", &self.next)
            .field("serving", &self.serving)
            .field("active", &self.active)
            .field("pending", &self.pending)
            .field("late", &self.late)
            .finish_non_exhaustive()
    }
}

impl Lane {
    fn new(prefix: &str, gate: &str, cohort: &str) -> Lane {
        let base = format!("{prefix}lane:{gate}:{cohort}:");
        let k = |s: &str| format!("{base}{s}");
        Lane {
            keys: [
                k("next"),
                k("serving"),
                k("sessions"),
                k("owners"),
                k("claimed"),
                k("batches"),
                k("batch"),
                k("held"),
                k("late"),
                k("late_seen"),
                k("late_seq"),
                format!("{prefix}leader"),
                format!("{prefix}epoch"),
                format!("{prefix}epoch_at"),
                k("released"),
            ],
            next: AtomicU64::new(1),
            serving: AtomicU64::new(1),
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            late: AtomicU32::new(0),
            batches: RwLock::new(Vec::new()),
            wants_all: AtomicBool::new(false),
            on_move: std::sync::OnceLock::new(),
            on_release: std::sync::OnceLock::new(),
            gen: AtomicU64::new(0),
            apply: Mutex::new(()),
            unsent_releases: Mutex::new(Vec::new()),
            recent_releases: Mutex::new(std::collections::VecDeque::new()),
            lost_held: Mutex::new(None),
            late_head: Mutex::new(None),
            read_ms: AtomicU64::new(0),
            release_seen_ms: AtomicU64::new(0),
        }
    }

    /// A write's own answer updates the mirror: newer than any sync read before it.
    fn written(&self, f: impl FnOnce()) {
        let _g = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        self.gen.fetch_add(1, Ordering::AcqRel);
        f();
    }

    /// The mirror's people inside, places held and late line, as a script read them.
    fn counts(&self, active: i64, pending: i64, late: i64) {
        let c = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        self.active.store(c(active), Ordering::Release);
        self.pending.store(c(pending), Ordering::Release);
        self.late.store(c(late), Ordering::Release);
    }

    /// Applies a mirror read (`lua::mirror`: next, serving, sessions, places held, late line,
    /// the late line's head, batches) but for the counters next and serving, which the caller
    /// raises once the batches are in. The caller holds `apply`.
    fn mirror(&self, r: &[i64]) {
        let (Some(&[_, _, act, pend, late, heads]), Some(rest)) = (r.get(..6), r.get(6..)) else {
            return;
        };
        self.counts(act, pend, late);
        let heads = usize::try_from(heads.max(0)).unwrap_or(0).min(rest.len());
        let (head, batches) = rest.split_at(heads);
        if let Ok(mut h) = self.late_head.lock() {
            let whole = heads as i64 >= late;
            *h = Some((head.iter().map(|&t| t.max(0) as u64).collect(), whole));
        }
        let batches: Vec<(u64, u64)> = batches
            .chunks_exact(2)
            .map(|p| (p[0].max(0) as u64, p[1].max(0) as u64))
            .collect();
        if let Ok(mut b) = self.batches.write() {
            *b = batches;
        }
    }

    /// This node changed the late line: its head is asked again.
    fn late_changed(&self) {
        if let Ok(mut h) = self.late_head.lock() {
            *h = None;
        }
    }

    /// Raises the mirror's counters (they never go backwards).
    fn raise(&self, next: i64, serving: i64) {
        if next > 0 {
            self.next.fetch_max(next as u64, Ordering::AcqRel);
        }
        if serving > 0 {
            let to = serving as u64;
            let from = self.serving.fetch_max(to, Ordering::AcqRel);
            if from < to {
                if let Some(f) = self.on_move.get() {
                    f(from, to);
                }
            }
        }
    }
}

/// One lane's [`AdmissionStore`] on Redis (and its [`SharedAdmission`]).
pub struct RedisStore {
    fleet: Arc<Inner>,
    lane: Arc<Lane>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.fleet.node)
            .field("lane", &self.lane)
            .finish()
    }
}

impl RedisStore {
    /// Runs lane script `script` with the floors and the epoch, then `args`.
    fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        probe: bool,
        script: &Script,
        args: &[String],
    ) -> Option<T> {
        let epoch = self.fleet.epoch();
        self.fleet.call(op, probe, |c| {
            let mut inv = script.prepare_invoke();
            for k in &self.lane.keys {
                inv.key(k);
            }
            inv.arg(self.lane.next.load(Ordering::Acquire))
                .arg(self.lane.serving.load(Ordering::Acquire))
                .arg(&epoch);
            for a in args {
                inv.arg(a);
            }
            inv.invoke(c)
        })
    }

    /// A write script answering {result, next, serving, ...}: the mirror raised, `None` when
    /// Redis did not answer or refused during a resync (`-3`).
    fn write(&self, op: &'static str, script: &Script, args: &[String]) -> Option<Vec<i64>> {
        let r: Vec<i64> = self.run(op, false, script, args)?;
        if r.len() < 3 {
            return None;
        }
        if r[0] == -3 {
            tracing::debug!(op, "store: write refused while the fleet resyncs");
            return None;
        }
        self.lane.raise(r[1], r[2]);
        Some(r)
    }

    /// Refreshes the mirror now, after a write (request path: not while Redis is down).
    fn sync(&self) {
        self.sync_inner("sync_after_write", false);
    }

    /// The fleet thread's refresh (probes while Redis is down); then the releases made while
    /// Redis did not answer are sent.
    fn sync_probe(&self) {
        self.sync_inner("sync", true);
        if !self.fleet.is_up() {
            return;
        }
        let unsent: Vec<(u64, u64)> = match self.lane.unsent_releases.lock() {
            Ok(mut u) if !u.is_empty() => std::mem::take(&mut *u),
            _ => return,
        };
        let mut left = Vec::new();
        for (t, at) in unsent {
            if self.send_release(t, at, true).is_none() {
                left.push((t, at));
            }
        }
        if !left.is_empty() {
            if let Ok(mut u) = self.lane.unsent_releases.lock() {
                u.extend(left);
            }
        } else {
            tracing::info!("store: releases made while Redis did not answer were sent");
        }
    }

    /// The touch script in `mode` (0 report, 2 only check; 1 is [`SharedAdmission::touch_all`]): the
    /// sessions that have ended, `None` when Redis did not answer.
    fn touch_script(
        &self,
        op: &'static str,
        tickets: &[u64],
        now_ms: u64,
        mode: u8,
    ) -> Option<Vec<u64>> {
        let mut args = Vec::with_capacity(tickets.len() + 2);
        args.push(s(now_ms));
        args.push(s(mode));
        args.extend(tickets.iter().map(s));
        let gone: Vec<String> = self.run(op, false, &self.fleet.scripts.touch, &args)?;
        parse_gone(&gone)
    }

    /// The release script: whether `t` was inside, `None` when Redis did not answer.
    fn send_release(&self, t: u64, at_ms: u64, probe: bool) -> Option<bool> {
        let r: Option<Vec<i64>> = self.run(
            "release",
            probe,
            &self.fleet.scripts.release,
            &[s(t), s(at_ms), s(&self.fleet.node)],
        );
        match r.as_deref()? {
            &[released, act, pend, late] => {
                self.lane.written(|| self.lane.counts(act, pend, late));
                Some(released == 1)
            }
            _ => Some(false),
        }
    }

    fn sync_inner(&self, op: &'static str, probe: bool) {
        if probe {
            self.lane.read_ms.store(self.fleet.ms(), Ordering::Release);
        }
        let gen = self.lane.gen.load(Ordering::Acquire);
        let Some(r) = self.run::<Vec<i64>>(op, probe, &self.fleet.scripts.sync, &[]) else {
            return;
        };
        if r.len() < 6 {
            return;
        }
        {
            let _g = self.lane.apply.lock().unwrap_or_else(|e| e.into_inner());
            // A write answered meanwhile: its values may be newer than this read.
            if self.lane.gen.load(Ordering::Acquire) == gen {
                self.lane.mirror(&r);
            }
        }
        // Serving moves after the batches it admitted are in the mirror (see `admit`).
        self.lane.raise(r[0], r[1]);
    }
}

/// The touch script's answer: the sessions that have ended; `None` when it refused (`-3`: the
/// epoch is new to this node, or the fleet resyncs), so they are reported again.
fn parse_gone(gone: &[String]) -> Option<Vec<u64>> {
    if gone.first().is_some_and(|g| g == "-3") {
        return None;
    }
    Some(gone.iter().filter_map(|t| t.parse().ok()).collect())
}

/// Leak-guard bindings other nodes took, pushed by Redis (`b NODE SESSION USER` on the
/// bindings' channel): a first sight of the session here is answered from them without a round trip.
/// Each is used once (the leak guard keeps its own binding after that) and trusted only while
/// younger than the binding's idle time; at most [`PUSHED_BINDS_MAX`] are kept (past it the
/// oldest half goes: a binding not found costs the round trip it costs today, nothing else).
/// A binding this node knows is never overwritten by one pushed (the leak guard's own map
/// decides first), and one pushed is never trusted over Redis's own answer to a round trip.
struct PushedBinds {
    shards: Box<[Mutex<PushedShard>]>,
}

/// Session → (user, when pushed).
type PushedShard = std::collections::HashMap<u64, (u64, Instant)>;

/// Pushed bindings kept, at most (about 40 bytes each).
pub const PUSHED_BINDS_MAX: usize = 1 << 18;
const PUSHED_BINDS_SHARDS: usize = 16;

impl PushedBinds {
    fn new() -> Self {
        PushedBinds {
            shards: (0..PUSHED_BINDS_SHARDS)
                .map(|_| Mutex::new(std::collections::HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, session: u64) -> &Mutex<PushedShard> {
        &self.shards[(session as usize) % PUSHED_BINDS_SHARDS]
    }

    fn learn(&self, session: u64, user: u64) {
        let Ok(mut m) = self.shard(session).lock() else {
            return;
        };
        if m.len() >= PUSHED_BINDS_MAX / PUSHED_BINDS_SHARDS {
            let mut ages: Vec<Instant> = m.values().map(|v| v.1).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            m.retain(|_, v| v.1 > cut);
        }
        m.insert(session, (user, Instant::now()));
    }

    /// The user `session` was bound to elsewhere, if pushed less than `idle_ms` ago.
    fn take(&self, session: u64, idle_ms: u64) -> Option<u64> {
        let (user, at) = self.shard(session).lock().ok()?.remove(&session)?;
        (at.elapsed() < Duration::from_millis(idle_ms)).then_some(user)
    }
}

/// Records a push's lag: `at_ms` is Redis's clock when the script published.
fn push_lag(kind: &'static str, at_ms: u64) {
    let lag = wall_ms().saturating_sub(at_ms);
    metrics::histogram!(PUSH_LAG, "kind" => kind).record(lag as f64 / 1000.0);
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Milliseconds since the Unix epoch (releases made while Redis does not answer are stamped).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// "start end hexkey" as the shuffle script keeps it.
fn parse_shuffle(v: &str) -> Option<(u64, u64, [u8; 32])> {
    let mut it = v.split(' ');
    let start = it.next()?.parse().ok()?;
    let end = it.next()?.parse().ok()?;
    let h = it.next()?;
    if h.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((start, end, key))
}

impl AdmissionStore for RedisStore {
    fn take_ticket(&self, below: u64) -> Option<u64> {
        let r = self.write("take", &self.fleet.scripts.take, &[s(below)])?;
        (r[0] > 0).then_some(r[0] as u64)
    }

    fn next_ticket(&self) -> u64 {
        self.lane.next.load(Ordering::Acquire)
    }

    fn serving(&self) -> u64 {
        self.lane.serving.load(Ordering::Acquire)
    }

    fn advance_serving(&self, from: u64, to: u64) -> bool {
        self.write("cas", &self.fleet.scripts.cas, &[s(from), s(to)])
            .is_some_and(|r| r[0] == 1)
    }

    fn reserve(&self, n: u32, capacity: u32) -> u32 {
        let got = self
            .write("reserve", &self.fleet.scripts.reserve, &[s(n), s(capacity)])
            .map_or(0, |r| u32::try_from(r[0].max(0)).unwrap_or(0));
        self.sync();
        got
    }

    fn unreserve(&self, n: u32) {
        let _: Option<i64> = self.run("unreserve", false, &self.fleet.scripts.unreserve, &[s(n)]);
        self.sync();
    }

    fn occupied(&self) -> u32 {
        self.lane
            .active
            .load(Ordering::Acquire)
            .saturating_add(self.lane.pending.load(Ordering::Acquire))
    }

    fn counters(&self) -> StoreCounters {
        StoreCounters {
            next_ticket: self.next_ticket(),
            serving: self.serving(),
            occupied: self.occupied(),
        }
    }

    fn restore(&self, c: StoreCounters) {
        // Only ever raises (the floors): Redis holds the fleet's counters.
        self.lane.raise(c.next_ticket as i64, c.serving as i64);
        self.sync();
    }

    fn late_arrive(&self, ticket: u64, now_ms: u64) -> u64 {
        let ahead: Option<i64> = self.run(
            "late_arrive",
            false,
            &self.fleet.scripts.late_arrive,
            &[s(ticket), s(now_ms)],
        );
        self.lane.late_changed();
        match ahead {
            // Inside already (claimed on another node).
            Some(a) if a < 0 => INSIDE,
            a => a.map_or(0, |a| a as u64),
        }
    }

    fn late_leave(&self, ticket: u64) -> bool {
        let r: Option<i64> = self.run(
            "late_leave",
            false,
            &self.fleet.scripts.late_leave,
            &[s(ticket)],
        );
        self.lane.late_changed();
        r == Some(1)
    }

    fn late_first(&self, n: usize) -> Vec<u64> {
        if n == 0 {
            return Vec::new();
        }
        // From the last mirror read when it has them (the whole line, or enough of it) and
        // this node has not changed the line since.
        if let Ok(h) = self.lane.late_head.lock() {
            if let Some((head, whole)) = h.as_ref() {
                if *whole || head.len() >= n {
                    return head.iter().take(n).copied().collect();
                }
            }
        }
        let key = self.lane.keys[8].clone();
        let Some(first) = self.fleet.call("late_first", false, |c| {
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(n.saturating_sub(1))
                .query::<Vec<u64>>(c)
        }) else {
            return Vec::new();
        };
        // The head until this node changes the line or the next read (fewer than asked for:
        // the whole line).
        if let Ok(mut h) = self.lane.late_head.lock() {
            *h = Some((first.clone(), first.len() < n));
        }
        first
    }

    fn late_expire(&self, now_ms: u64) -> u32 {
        let r: Option<i64> = self.run(
            "late_expire",
            false,
            &self.fleet.scripts.late_expire,
            &[s(now_ms.saturating_sub(LATE_IDLE_MS))],
        );
        self.lane.late_changed();
        u32::try_from(r.unwrap_or(0).max(0)).unwrap_or(0)
    }

    fn late_len(&self) -> u32 {
        self.lane.late.load(Ordering::Acquire)
    }

    fn late_clear(&self) {
        let _: Option<i64> = self.run("late_clear", false, &self.fleet.scripts.late_clear, &[]);
        self.lane.late.store(0, Ordering::Release);
        self.lane.late_changed();
    }

    fn shared(&self) -> Option<&dyn SharedAdmission> {
        Some(self)
    }
}

impl SharedAdmission for RedisStore {
    fn is_leader(&self) -> bool {
        self.fleet.is_leader()
    }

    fn is_up(&self) -> bool {
        self.fleet.is_up()
    }

    fn admit(&self, from: u64, want: u64, room: u32, _now_ms: u64, deadline_ms: u64) -> u64 {
        if want == 0 {
            return 0;
        }
        let r: Option<Vec<i64>> = self.run(
            "admit",
            false,
            &self.fleet.scripts.admit,
            &[
                s(&self.fleet.node),
                s(want),
                s(from),
                s(room),
                s(deadline_ms),
            ],
        );
        let Some(r) = r.filter(|r| r.len() >= 3 && r[0] != -3) else {
            return 0;
        };
        let n = r[0].max(0) as u64;
        let seen = self.lane.release_seen_ms.swap(0, Ordering::AcqRel);
        if n > 0 && seen > 0 {
            metrics::histogram!(RELEASE_TO_ADMISSION)
                .record(wall_ms().saturating_sub(seen) as f64 / 1000.0);
        }
        if n > 0 {
            // The batch is in the mirror before serving moves past it, so a status poll here
            // never sees an admitted ticket without its held place; the script's answer is
            // the mirror read right after the admission (no read of its own).
            self.lane.written(|| self.lane.mirror(&r[1..]));
        }
        self.lane.raise(r[1], r[2]);
        n
    }

    fn admit_now(&self, room: u32, owner: u64, now_ms: u64) -> Option<u64> {
        let r = self.write(
            "admit_now",
            &self.fleet.scripts.admit_now,
            &[s(room), s(owner), s(now_ms)],
        )?;
        if r[0] <= 0 {
            return None;
        }
        self.lane.written(|| {
            self.lane.active.fetch_add(1, Ordering::AcqRel);
        });
        Some(r[0] as u64)
    }

    fn claim(&self, t: u64, owner: u64, capacity: u32, now_ms: u64) -> SharedClaim {
        let Some(r) = self.write(
            "claim",
            &self.fleet.scripts.claim,
            &[s(t), s(owner), s(capacity), s(now_ms)],
        ) else {
            return SharedClaim::Down;
        };
        if let [.., act, pend, late] = r[..] {
            self.lane.written(|| self.lane.counts(act, pend, late));
        }
        let out = match r[0] {
            0 => SharedClaim::Placed,
            1 => SharedClaim::NotAdmitted,
            2 => SharedClaim::BoundElsewhere,
            3 => SharedClaim::Used,
            _ => {
                // Joined (or stayed in) the late line here.
                self.lane.late_changed();
                SharedClaim::Late {
                    ahead: r.get(3).copied().unwrap_or(0).max(0) as u64,
                }
            }
        };
        out
    }

    fn holds(&self, t: u64) -> bool {
        self.lane
            .batches
            .read()
            .map(|b| b.iter().any(|&(a, e)| a <= t && t < e))
            .unwrap_or(false)
    }

    fn release(&self, t: u64) -> bool {
        let now = wall_ms();
        if let Ok(mut r) = self.lane.recent_releases.lock() {
            while r.len() >= RECENT_RELEASES
                || r.front()
                    .is_some_and(|&(_, at)| now.saturating_sub(at) > RECENT_RELEASE_MS)
            {
                r.pop_front();
            }
            r.push_back((t, now));
        }
        match self.send_release(t, now, false) {
            Some(released) => released,
            None => {
                // Redis does not answer: sent when it does (the fleet thread), so the place is
                // given back then rather than after `session_duration` of idleness.
                if let Ok(mut u) = self.lane.unsent_releases.lock() {
                    u.push((t, now));
                }
                true
            }
        }
    }

    fn expire(&self, now_ms: u64, session_ms: u64) -> (u64, u64) {
        let r = self.write(
            "expire",
            &self.fleet.scripts.expire,
            &[s(now_ms), s(session_ms), s(LATE_IDLE_MS)],
        );
        // {ended, next, serving, abandoned}
        match r {
            Some(r) if r.len() >= 4 => {
                let (ended, abandoned) = (r[0].max(0) as u64, r[3].max(0) as u64);
                if ended + abandoned > 0 {
                    self.sync();
                }
                (ended, abandoned)
            }
            _ => (0, 0),
        }
    }

    fn touch(&self, tickets: &[u64], now_ms: u64) -> Option<Vec<u64>> {
        self.touch_script("touch", tickets, now_ms, 0)
    }

    fn touch_all(&self, sessions: &[(u64, u64)], now_ms: u64) -> Option<Vec<u64>> {
        self.lane.wants_all.store(false, Ordering::Release);
        let mut args = Vec::with_capacity(2 * sessions.len() + 2);
        args.push(s(now_ms));
        args.push(s(1));
        for (t, owner) in sessions {
            args.push(s(t));
            args.push(s(owner));
        }
        let r: Option<Vec<String>> = self.run("touch_all", false, &self.fleet.scripts.touch, &args);
        let gone = r.as_deref().and_then(parse_gone);
        if gone.is_none() {
            // Not reported: again next tick.
            self.lane.wants_all.store(true, Ordering::Release);
        }
        gone
    }

    fn check(&self, tickets: &[u64]) -> Option<Vec<u64>> {
        self.touch_script("check", tickets, 0, 2)
    }

    fn wants_all_sessions(&self) -> bool {
        self.lane.wants_all.load(Ordering::Acquire)
    }

    fn restore_held(&self, deadline_ms: u64) -> u32 {
        let lost = self.lane.lost_held.lock().ok().and_then(|mut h| h.take());
        let Some((batches, pending)) = lost else {
            return 0;
        };
        if batches.is_empty() || pending == 0 {
            return 0;
        }
        let mut args = vec![s(deadline_ms), s(pending)];
        for (a, b) in batches {
            args.push(s(a));
            args.push(s(b));
        }
        let added: Option<i64> = self.run(
            "restore_held",
            false,
            &self.fleet.scripts.restore_held,
            &args,
        );
        let added = u32::try_from(added.unwrap_or(0).max(0)).unwrap_or(0);
        if added > 0 {
            tracing::warn!(
                places = added,
                "store: places held for admitted people taken back in after Redis lost its data"
            );
            self.sync();
        }
        added
    }

    fn refresh(&self) {
        let now = self.fleet.ms();
        let last = self.lane.read_ms.load(Ordering::Acquire);
        // One caller per REFRESH_MIN_MS reads; the others use the mirror it is refreshing or
        // that was just read (at most that much older).
        if now < last + REFRESH_MIN_MS
            || self
                .lane
                .read_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        self.sync_inner("refresh", false);
    }

    fn local_share(&self, capacity: u32) -> Option<u32> {
        if self.fleet.is_up() || self.fleet.fail_mode != FailMode::OpenLocal {
            return None;
        }
        Some(capacity / self.fleet.nodes_alive.load(Ordering::Acquire).max(1))
    }

    fn outage_ticket(&self) -> u64 {
        let n = self.fleet.outage_seq.fetch_add(1, Ordering::AcqRel) & ((1 << 40) - 1);
        crate::waitroom::store::OUTAGE_MIN | (self.fleet.salt << 40) | n
    }

    fn on_serving_moved(&self, f: Box<dyn Fn(u64, u64) + Send + Sync>) {
        let _ = self.lane.on_move.set(f);
    }

    fn on_released(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.lane.on_release.set(f);
    }

    fn agree_shuffle(
        &self,
        opening_s: i64,
        start: u64,
        end: u64,
        key: [u8; 32],
    ) -> Option<(u64, u64, [u8; 32])> {
        let proposal = format!("{start} {end} {}", hex(&key));
        let v: String = self.run(
            "shuffle",
            false,
            &self.fleet.scripts.shuffle,
            &[s(opening_s), proposal],
        )?;
        parse_shuffle(&v)
    }

    fn last_shuffle(&self) -> Option<(u64, u64, [u8; 32])> {
        let key = format!("{}:shuffle:last", self.lane.keys[5]);
        let v: Option<String> = self.fleet.call("shuffle_last", false, |c| {
            redis::cmd("GET").arg(&key).query(c)
        })?;
        parse_shuffle(&v?)
    }

    fn pending(&self) -> u32 {
        self.lane.pending.load(Ordering::Acquire)
    }

    fn active(&self) -> u32 {
        self.lane.active.load(Ordering::Acquire)
    }
}
