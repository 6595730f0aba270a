//! The admission store behind the waiting room: `[store]` in the config.
//!
//! `kind = "memory"` (the default) keeps every counter in this process
//! ([`MemoryStore`](crate::waitroom::MemoryStore)): `anticamera demo` and a single node need
//! nothing else. `kind = "redis"` makes every node pointed at the same Redis (same gates, same
//! signing keys, same prefix) one waiting room ([`redis::Fleet`], [`redis::RedisStore`]): one
//! ticket order per lane, one serving counter, one count of people inside and of places held,
//! one late line, and one leader that advances admissions.
//!
//! Only a restart applies `[store]` (it is in `reload.rs`'s restart-only table): moving a running
//! node from one store to another would split the line it is part of.

use serde::Deserialize;

use crate::config::Dur;

mod lua;
pub mod portal;
pub mod redis;

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (this process only) or `redis` (shared by every node pointed at it).
    pub kind: StoreKind,
    /// `redis://[user:password@]host:port[/db]`; required with `kind = "redis"`.
    pub url: Option<String>,
    /// Prefix of every key anticamera writes (several rooms may share one Redis).
    pub prefix: String,
    /// Deadline of one Redis round trip (connect, send, answer) of the controller and the
    /// fleet's thread. A request that needs one (an arrival, a first claim, a release, a first
    /// leak-guard binding) waits at most the shorter
    /// [`REQUEST_TIMEOUT_MS`](redis::REQUEST_TIMEOUT_MS) of it before the fail mode decides.
    pub timeout: Dur,
    /// What a node does while Redis does not answer: `closed` or `open-local`.
    pub fail_mode: FailMode,
    /// This node's name in the fleet (the leader lease holds it); default: random per process.
    pub node_id: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            url: None,
            prefix: "anticamera:".into(),
            timeout: Dur(std::time::Duration::from_millis(250)),
            fail_mode: FailMode::Closed,
            node_id: None,
        }
    }
}

/// Where the admission state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process.
    #[default]
    Memory,
    /// In Redis, shared by every node pointed at it.
    Redis,
}

/// What a node does while the shared store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Nobody new is admitted (arrivals are asked to come back, waiting people keep their
    /// number, people inside keep their passes) until the store answers again.
    #[default]
    Closed,
    /// Each node lets new arrivals in on its own, while the people it holds slots for stay
    /// within its share of the capacity (capacity / nodes seen alive at the last sync), with
    /// numbers of its own; waiting people keep their number and the line moves again when the
    /// store answers, which takes the sessions opened meanwhile in.
    OpenLocal,
}

impl FailMode {
    /// As written in the config (for logs, `/readyz` and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::OpenLocal => "open-local",
        }
    }
}

impl StoreConfig {
    /// Checks what serde cannot: `(key, reason)` pairs, keys relative to the config's top.
    pub fn validate(&self, state_file: bool) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let at = |k: &str| format!("store.{k}");
        if self.timeout.0.is_zero() {
            v.push((at("timeout"), "must be longer than zero".into()));
        } else if self.timeout.0 > std::time::Duration::from_secs(5) {
            v.push((
                at("timeout"),
                "must be at most 5s: an arrival may wait this long for Redis".into(),
            ));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || !self.prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            v.push((
                at("prefix"),
                "1-64 printable characters without spaces, e.g. \"anticamera:\"".into(),
            ));
        } else if !self.prefix.ends_with(':') {
            v.push((
                at("prefix"),
                format!(
                    "must end with ':' (e.g. \"{}:\"), so one room's keys never run into \
                     another's; no room's prefix may start another's",
                    self.prefix
                ),
            ));
        }
        if let Some(id) = &self.node_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                v.push((
                    at("node_id"),
                    "1-64 letters, digits, '_', '-' or '.'".into(),
                ));
            }
        }
        match (self.kind, &self.url) {
            (StoreKind::Redis, None) => v.push((
                at("kind"),
                "kind = \"redis\" needs the server's address: url = \"redis://127.0.0.1:6379\""
                    .into(),
            )),
            (StoreKind::Redis, Some(url)) => {
                if let Err(reason) = redis::check_url(url) {
                    v.push((at("url"), reason));
                }
            }
            (StoreKind::Memory, Some(_)) => v.push((
                at("url"),
                "only used with kind = \"redis\" (the memory store is this process's own)".into(),
            )),
            (StoreKind::Memory, None) => {}
        }
        if self.kind == StoreKind::Redis && state_file {
            v.push((
                at("kind"),
                "with kind = \"redis\" the counters live in Redis (use its persistence); \
                 waiting_room.state_file is one node's: remove it"
                    .into(),
            ));
        }
        v
    }

    /// This node's id: the configured one, or a random one for this process.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let n: u64 = rand::random();
            format!("node-{n:016x}")
        })
    }
}
