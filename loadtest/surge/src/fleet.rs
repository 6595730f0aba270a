//! Several anticamera nodes on one Redis (`surge run --nodes N`, or `[anticamera] nodes = N`):
//! surge's own redis-server (started as `tests/common`'s helper starts its own: a directory of
//! its own, a free loopback port, no persistence), what surge reads from the nodes' `/metrics`
//! (requests, the store's round trips by `op`, who holds the leader lease) and from Redis's
//! `INFO stats`, and the report's `fleet` section built from them.
//!
//! Nothing here speaks HTTP/1.1 or RESP beyond what surge needs: a blocking `GET` (HTTP/1.0,
//! so the body is never chunked) and three Redis commands (`PING`, `CONFIG GET dir`, `INFO`).

use std::collections::BTreeMap;
use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::orchestra::{free_port, log_tail, spawn, Child};
use crate::report::round2;

/// Debian's redis-server (`scripts/setup-redis` installs it).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Store round trips a person's way in makes, by `op` (the request-path ops of
/// src/store/redis.rs): the arrival (`take`, or `admit_now` when let in at once), the refresh
/// of a page request near the front that this node's mirror does not show admitted yet (with
/// requests spread over nodes, mostly the first page after the poll said "in", on another
/// node), the first claim, the release, and the leak guard's first binding of a session on
/// each node (so one per node a person's requests reach).
pub const ADMISSION_OPS: &[&str] = &["take", "admit_now", "refresh", "claim", "release", "bind"];
/// Round trips made for a waiting person's own requests: a late arrival's place in the late
/// line. A status poll makes none.
pub const WAITING_OPS: &[&str] = &["late_arrive", "late_leave"];

/// One anticamera node of a run.
#[derive(Debug, Clone)]
pub struct Node {
    /// `node-1` … `node-N` (its `[store] node_id`).
    pub name: String,
    /// Where people connect: `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its admin listener: `127.0.0.1:PORT`.
    pub admin: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

/// The nodes of a run and their Redis.
#[derive(Debug)]
pub struct Fleet {
    pub nodes: Vec<Node>,
    pub redis: Redis,
    /// The `[store] prefix` of this run.
    pub prefix: String,
}

/// surge's redis-server.
#[derive(Debug, Clone)]
pub struct Redis {
    pub port: u16,
    /// Its working directory (nothing is saved in it: `--save ""`, `--appendonly no`).
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Redis {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command; its answer.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        read_reply(&mut BufReader::new(s), 0)
    }

    /// Commands Redis has processed since it started (`INFO stats`, `total_commands_processed`;
    /// this `INFO` included).
    pub fn commands_processed(&self) -> anyhow::Result<u64> {
        let Reply::Bulk(Some(text)) = self.command(&["INFO", "stats"])? else {
            bail!("INFO stats: not a bulk string");
        };
        info_field(&String::from_utf8_lossy(&text), "total_commands_processed")
            .context("INFO stats without total_commands_processed")
    }

    /// Whether the server answering on the port is this one (its `dir` is ours): another
    /// process could take a free port between surge choosing it and Redis binding it.
    fn is_ours(&self) -> bool {
        let Ok(Reply::Array(Some(v))) = self.command(&["CONFIG", "GET", "dir"]) else {
            return false;
        };
        let want = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        v.iter().any(|r| match r {
            Reply::Bulk(Some(b)) => {
                let p = Path::new(std::str::from_utf8(b).unwrap_or(""));
                p == want || p == self.dir
            }
            _ => false,
        })
    }
}

/// A Redis answer (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

fn read_reply(r: &mut impl std::io::BufRead, depth: usize) -> anyhow::Result<Reply> {
    if depth > 8 {
        bail!("Redis answer nested too deep");
    }
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("Redis closed the connection");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = || -> anyhow::Result<i64> {
        rest.parse::<i64>()
            .with_context(|| format!("bad Redis answer {line:?}"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(int()?),
        "$" => {
            let n = int()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let n = usize::try_from(n)?;
                if n > 64 << 20 {
                    bail!("Redis bulk answer of {n} bytes");
                }
                let mut b = vec![0; n + 2];
                r.read_exact(&mut b)?;
                b.truncate(n);
                Reply::Bulk(Some(b))
            }
        }
        "*" => {
            let n = int()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let n = usize::try_from(n)?.min(1 << 16);
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(read_reply(r, depth + 1)?);
                }
                Reply::Array(Some(v))
            }
        }
        _ => bail!("bad Redis answer {line:?}"),
    })
}

/// `field:value` of an `INFO` answer.
pub fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim_end().split_once(':')?;
        (k == field).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Starts surge's redis-server in `logs/LABEL-redis/` on a free loopback port, without
/// persistence, and waits until it answers (at most 10 s). The child is stopped when dropped.
pub fn start_redis(logs: &Path, label: &str) -> anyhow::Result<(Redis, Child)> {
    if !Path::new(REDIS_SERVER).exists() {
        bail!("{REDIS_SERVER} is missing (needed for --nodes > 1): run scripts/setup-redis");
    }
    let dir = logs.join(format!("{label}-redis"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = logs.join(format!("{label}-redis.log"));
    let port = free_port()?;
    let redis = Redis {
        port,
        dir: dir.clone(),
        log: log.clone(),
    };
    let mut cmd = Command::new(REDIS_SERVER);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning"]);
    let mut child = spawn("redis-server", &mut cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = matches!(redis.command(&["PING"]), Ok(Reply::Simple(s)) if s == "PONG");
        if pong && redis.is_ours() {
            return Ok((redis, child));
        }
        if let Some(status) = child.try_wait() {
            bail!(
                "redis-server exited ({status}) before answering on port {port}; last lines of {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server does not answer on port {port} after 10 s; last lines of {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking `GET` over HTTP/1.0 (the answer is never chunked): status and body.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET http://{addr}{path}: no complete answer");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: bad status line"))?;
    Ok((status, body.to_string()))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (key, r) = rest.split_once('=')?;
            let mut chars = r.strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.push((key.trim().to_string(), value));
            rest = &r[end + 2..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// What one node's `/metrics` said at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMetrics {
    /// `anticamera_requests_total`, every series.
    pub requests: f64,
    /// `anticamera_store_round_trips_total` by `op`.
    pub round_trips: BTreeMap<String, f64>,
    /// `anticamera_store_errors_total` (round trips that failed: the fail mode answered) and
    /// `anticamera_store_busy_total` (request-path calls not made, too many in flight), by `op`.
    pub errors: BTreeMap<String, f64>,
    pub busy: BTreeMap<String, f64>,
    /// `anticamera_store_leader` is 1.
    pub leader: bool,
    /// `anticamera_store_up` is 1.
    pub store_up: bool,
    /// `anticamera_portal_share`: the node's part of the portal's capacity (absent without
    /// `[upstream_guard]`).
    pub portal_share: Option<f64>,
}

impl NodeMetrics {
    pub fn from_text(text: &str) -> NodeMetrics {
        let mut m = NodeMetrics::default();
        for s in parse_metrics(text) {
            match s.name.as_str() {
                "anticamera_requests_total" => m.requests += s.value,
                "anticamera_store_round_trips_total" => {
                    let op = s.label("op").unwrap_or("?").to_string();
                    *m.round_trips.entry(op).or_default() += s.value;
                }
                "anticamera_store_errors_total" => {
                    let op = s.label("op").unwrap_or("?").to_string();
                    *m.errors.entry(op).or_default() += s.value;
                }
                "anticamera_store_busy_total" => {
                    let op = s.label("op").unwrap_or("?").to_string();
                    *m.busy.entry(op).or_default() += s.value;
                }
                "anticamera_store_leader" => m.leader = s.value >= 0.5,
                "anticamera_store_up" => m.store_up = s.value >= 0.5,
                "anticamera_portal_share" => m.portal_share = Some(s.value),
                _ => {}
            }
        }
        m
    }

    pub fn round_trips_total(&self) -> f64 {
        self.round_trips.values().sum()
    }
}

/// The fleet at one moment: each node's metrics (None if it did not answer), and Redis's
/// commands processed.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Option<NodeMetrics>>,
    pub redis_commands: Option<u64>,
}

impl Fleet {
    /// One node's metrics now.
    pub fn node_metrics(node: &Node) -> anyhow::Result<NodeMetrics> {
        let (status, body) = http_get(&node.admin, "/metrics", Duration::from_secs(3))?;
        if status != 200 {
            bail!("{}: /metrics answered {status}", node.name);
        }
        Ok(NodeMetrics::from_text(&body))
    }

    /// Writes each node's `/metrics` now next to its log (`…-node-K.metrics`): what the
    /// report sums, and every other family (refusals by `outcome`, the store's state), for
    /// reading a run afterwards. A node that does not answer is skipped.
    pub fn save_metrics(&self) {
        for n in &self.nodes {
            if let Ok((200, body)) = http_get(&n.admin, "/metrics", Duration::from_secs(3)) {
                let _ = std::fs::write(n.log.with_extension("metrics"), body);
            }
        }
    }

    /// Every node's metrics and Redis's count, now (blocking: a few ms).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self
                .nodes
                .iter()
                .map(|n| Self::node_metrics(n).ok())
                .collect(),
            redis_commands: self.redis.commands_processed().ok(),
        }
    }

    /// Waits until every node reaches Redis, one holds the leader lease, and each holds a part
    /// of the portal (a node grows its part after 2 s of reports), at most 15 s, so the first
    /// people meet a fleet that admits and forwards.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.snapshot();
            let up = s
                .nodes
                .iter()
                .all(|n| n.as_ref().is_some_and(|m| m.store_up));
            let leader = s.nodes.iter().flatten().any(|m| m.leader);
            let parts = s
                .nodes
                .iter()
                .flatten()
                .all(|m| m.portal_share.is_none_or(|p| p >= 1.0));
            if up && leader && parts {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut why = Vec::new();
                for (n, m) in self.nodes.iter().zip(&s.nodes) {
                    let state = match m {
                        None => "its /metrics does not answer".to_string(),
                        Some(m) if !m.store_up => "does not reach Redis".to_string(),
                        Some(m) if m.portal_share.is_some_and(|p| p < 1.0) => {
                            "holds no part of the portal".to_string()
                        }
                        Some(_) => "up".to_string(),
                    };
                    why.push(format!(
                        "  {} ({}): {state}; log {}",
                        n.name,
                        n.admin,
                        n.log.display()
                    ));
                }
                bail!(
                    "the fleet is not ready after 15 s ({}):\n{}",
                    if leader {
                        "a leader"
                    } else {
                        "no node holds the leader lease"
                    },
                    why.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What a run did to the fleet, as the report's `fleet` section.
pub struct FleetRun<'a> {
    pub fleet: &'a Fleet,
    pub before: &'a Snapshot,
    pub after: &'a Snapshot,
    /// Per second: (second, which nodes held the lease, round trips of all nodes so far).
    pub seconds: &'a [(u64, Vec<bool>, f64)],
    pub elapsed_s: f64,
    /// People let in (their first "you are in").
    pub admitted: u64,
    /// Person-seconds spent waiting (sum of the per-second waiting gauge).
    pub waiting_person_s: f64,
    /// Requests surge sent to each node.
    pub sent: Vec<u64>,
}

/// A counter's difference as a whole number (a counter read twice never goes down; a node
/// restarted in between would, and counts 0).
fn count(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

/// Counter differences by op, the ops that moved only.
fn counts(m: &BTreeMap<String, f64>) -> serde_json::Map<String, Value> {
    m.iter()
        .filter(|(_, v)| **v >= 0.5)
        .map(|(k, v)| (k.clone(), json!(count(*v))))
        .collect()
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 {
        json!(round2(a / b))
    } else {
        Value::Null
    }
}

impl FleetRun<'_> {
    pub fn report(&self) -> Value {
        let n = self.fleet.nodes.len();
        let mut by_op: BTreeMap<String, f64> = BTreeMap::new();
        let mut errors: BTreeMap<String, f64> = BTreeMap::new();
        let mut busy: BTreeMap<String, f64> = BTreeMap::new();
        let delta = |sum: &mut BTreeMap<String, f64>,
                     a: &BTreeMap<String, f64>,
                     b: &BTreeMap<String, f64>| {
            for (op, v) in a {
                *sum.entry(op.clone()).or_default() += v - b.get(op).copied().unwrap_or(0.0);
            }
        };
        let mut per_node = Vec::new();
        let mut missing = Vec::new();
        for (i, node) in self.fleet.nodes.iter().enumerate() {
            let b = self.before.nodes.get(i).cloned().flatten();
            let a = self.after.nodes.get(i).cloned().flatten();
            let (requests, trips) = match (&b, &a) {
                (Some(b), Some(a)) => {
                    delta(&mut by_op, &a.round_trips, &b.round_trips);
                    delta(&mut errors, &a.errors, &b.errors);
                    delta(&mut busy, &a.busy, &b.busy);
                    (
                        json!(count(a.requests - b.requests)),
                        json!(count(a.round_trips_total() - b.round_trips_total())),
                    )
                }
                _ => {
                    missing.push(node.name.clone());
                    (Value::Null, Value::Null)
                }
            };
            let leader_s = self
                .seconds
                .iter()
                .filter(|s| s.1.get(i).copied().unwrap_or(false))
                .count();
            per_node.push(json!({
                "node": node.name,
                "url": node.url,
                "admin": node.admin,
                "log": node.log.display().to_string(),
                "requests": requests,
                "requests_sent": self.sent.get(i).copied().unwrap_or(0),
                "round_trips": trips,
                "leader_seconds": leader_s,
                "was_leader": leader_s > 0 || a.as_ref().is_some_and(|m| m.leader),
                "leader_at_end": a.as_ref().map(|m| m.leader),
            }));
        }
        let sum = |ops: &[&str]| -> f64 {
            by_op
                .iter()
                .filter(|(op, _)| ops.contains(&op.as_str()))
                .map(|(_, v)| v)
                .sum()
        };
        let total: f64 = by_op.values().sum();
        let admission = sum(ADMISSION_OPS);
        let waiting = sum(WAITING_OPS);
        let background = total - admission - waiting;
        let waiting_min = self.waiting_person_s / 60.0;
        let commands = match (self.before.redis_commands, self.after.redis_commands) {
            // The `INFO` that read the second count is counted in it.
            (Some(b), Some(a)) => Some(a.saturating_sub(b).saturating_sub(1)),
            _ => None,
        };
        let per_second: Vec<Value> = self
            .seconds
            .windows(2)
            .map(|w| json!(count(w[1].2 - w[0].2)))
            .collect();
        json!({
            "nodes": n,
            "store_prefix": self.fleet.prefix,
            "nodes_not_read": missing,
            "admitted_people": self.admitted,
            "waiting_person_minutes": round2(waiting_min),
            "round_trips": {
                "total": count(total),
                "by_op": counts(&by_op),
                "admission_ops": count(admission),
                "waiting_ops": count(waiting),
                "background_ops": count(background),
                // The figures of issue 15: a person's admission, a waiting person's minute.
                "per_admitted_person": ratio(admission, self.admitted as f64),
                "per_waiting_person_minute": ratio(waiting, waiting_min),
                "background_per_node_per_s": ratio(background, n as f64 * self.elapsed_s),
                // Everything, over each: an upper bound of both.
                "all_per_admitted_person": ratio(total, self.admitted as f64),
                "all_per_waiting_person_minute": ratio(total, waiting_min),
                "per_s": per_second,
                // Failed (the fail mode answered instead), and request-path calls not made
                // because 8 were in flight on the node: a 503 without a number for an arrival.
                "failed_by_op": counts(&errors),
                "busy_by_op": counts(&busy),
                "failed": count(errors.values().sum()),
                "busy": count(busy.values().sum()),
            },
            "redis": {
                "url": self.fleet.redis.url(),
                "log": self.fleet.redis.log.display().to_string(),
                "commands_processed": commands,
                "commands_per_round_trip": commands.map_or(Value::Null, |c| ratio(c as f64, total)),
            },
            "per_node": per_node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP anticamera_requests_total Requests.
# TYPE anticamera_requests_total counter
anticamera_requests_total{route="services",outcome="queued",status="503"} 12
anticamera_requests_total{route="default",outcome="forwarded",status="200"} 30
anticamera_store_round_trips_total{op="take"} 5
anticamera_store_round_trips_total{op="lease"} 40
anticamera_store_round_trips_total{op="take"} 1
anticamera_store_errors_total{op="take"} 2
anticamera_store_busy_total{op="bind"} 3
anticamera_store_leader 1
anticamera_store_up 1
anticamera_odd{a="x\"y,z}",b="2"} 7 1700000000
garbage line
"#;

    #[test]
    fn metrics_are_summed_by_family_and_op() {
        let m = NodeMetrics::from_text(METRICS);
        assert_eq!(m.requests, 42.0);
        assert_eq!(m.round_trips["take"], 6.0);
        assert_eq!(m.round_trips_total(), 46.0);
        assert_eq!((m.errors["take"], m.busy["bind"]), (2.0, 3.0));
        assert!(m.leader && m.store_up);
        let odd = parse_metrics(METRICS)
            .into_iter()
            .find(|s| s.name == "anticamera_odd")
            .unwrap();
        assert_eq!(odd.label("a"), Some("x\"y,z}"));
        assert_eq!(odd.label("b"), Some("2"));
        assert_eq!(odd.value, 7.0);
        assert!(!NodeMetrics::from_text("anticamera_store_leader 0\n").leader);
    }

    #[test]
    fn redis_answers_are_read() {
        let mut r = BufReader::new(&b"*2\r\n$3\r\ndir\r\n$4\r\n/tmp\r\n"[..]);
        assert_eq!(
            read_reply(&mut r, 0).unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"dir".to_vec())),
                Reply::Bulk(Some(b"/tmp".to_vec()))
            ]))
        );
        let mut r = BufReader::new(&b"+PONG\r\n:7\r\n$-1\r\n-ERR no\r\n"[..]);
        assert_eq!(read_reply(&mut r, 0).unwrap(), Reply::Simple("PONG".into()));
        assert_eq!(read_reply(&mut r, 0).unwrap(), Reply::Int(7));
        assert_eq!(read_reply(&mut r, 0).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r, 0).unwrap(),
            Reply::Error("ERR no".into())
        );
        assert!(read_reply(&mut r, 0).is_err());
        let info = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:1234\r\n";
        assert_eq!(info_field(info, "total_commands_processed"), Some(1234));
        assert_eq!(info_field(info, "missing"), None);
    }

    #[test]
    fn the_fleet_section_splits_round_trips_by_what_made_them() {
        let node = |name: &str| Node {
            name: name.into(),
            url: String::new(),
            admin: String::new(),
            log: PathBuf::new(),
        };
        let fleet = Fleet {
            nodes: vec![node("node-1"), node("node-2")],
            redis: Redis {
                port: 1,
                dir: PathBuf::new(),
                log: PathBuf::new(),
            },
            prefix: "surge:t:".into(),
        };
        let m = |take: f64, lease: f64, refresh: f64, req: f64, leader: bool| {
            Some(NodeMetrics {
                requests: req,
                round_trips: [
                    ("take".to_string(), take),
                    ("lease".to_string(), lease),
                    ("refresh".to_string(), refresh),
                    ("late_arrive".to_string(), refresh / 3.0),
                ]
                .into(),
                leader,
                store_up: true,
                errors: [("take".to_string(), take / 2.0)].into(),
                busy: BTreeMap::new(),
                portal_share: Some(3.0),
            })
        };
        let before = Snapshot {
            nodes: vec![m(0.0, 10.0, 0.0, 5.0, true), m(0.0, 10.0, 0.0, 0.0, false)],
            redis_commands: Some(100),
        };
        let after = Snapshot {
            nodes: vec![
                m(6.0, 70.0, 1.0, 105.0, true),
                m(4.0, 70.0, 2.0, 80.0, false),
            ],
            redis_commands: Some(301),
        };
        let seconds = [(0, vec![true, false], 20.0), (1, vec![true, false], 80.0)];
        let r = FleetRun {
            fleet: &fleet,
            before: &before,
            after: &after,
            seconds: &seconds,
            elapsed_s: 1.0,
            admitted: 10,
            waiting_person_s: 120.0,
            sent: vec![100, 80],
        }
        .report();
        let t = &r["round_trips"];
        assert_eq!(t["total"], 134);
        assert_eq!(t["per_admitted_person"], 1.3);
        assert_eq!(t["per_waiting_person_minute"], 0.5);
        assert_eq!(t["background_per_node_per_s"], 60.0);
        assert_eq!(t["per_s"], json!([60]));
        assert_eq!(r["redis"]["commands_processed"], 200);
        assert_eq!(t["failed"], 5);
        assert_eq!(t["failed_by_op"], json!({"take": 5}));
        assert_eq!(t["busy"], 0);
        assert_eq!(r["per_node"][0]["requests"], 100);
        assert_eq!(r["per_node"][1]["requests_sent"], 80);
        assert_eq!(r["per_node"][0]["was_leader"], true);
        assert_eq!(r["per_node"][1]["was_leader"], false);
        assert_eq!(r["per_node"][0]["leader_seconds"], 2);
    }
}
