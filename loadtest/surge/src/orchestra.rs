//! Starts what a run needs on loopback, as child processes: the demo portal, and in front of
//! it anticamera (from the scenario's config template) or nginx (limits an operator would
//! set). Everything is stopped when the [`Stack`] is dropped. Logs and the generated configs
//! go to `OUT/logs/`.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::fleet::{Fleet, Node};
use crate::scenario::Scenario;

/// What is in front of the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Front {
    /// Straight at the portal.
    Direct,
    /// Through nginx with limit_req / limit_conn.
    Nginx,
    /// Through anticamera.
    Anticamera,
}

impl Front {
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Direct => "direct",
            Front::Nginx => "nginx",
            Front::Anticamera => "anticamera",
        }
    }
}

/// The children running now (their pids, and whether they stop gracefully), so a signal can
/// stop them all: a pid stays ours until its child is reaped, which `Drop for Child` does only
/// after taking it out of here, under the same lock.
static RUNNING: std::sync::Mutex<Vec<(u32, bool)>> = std::sync::Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<(u32, bool)>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops every child still running (SIGTERM to the graceful ones, up to 3 s, then SIGKILL to
/// all): what surge does when it is interrupted (Ctrl-C, SIGTERM) before the stack's own drop.
pub fn stop_all() {
    let list = running();
    let signal = |sig: &str, pid: u32| {
        let _ = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let graceful: Vec<u32> = list.iter().filter(|c| c.1).map(|c| c.0).collect();
    for &pid in &graceful {
        signal("-TERM", pid);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !graceful.is_empty() && Instant::now() < deadline && graceful.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &(pid, _) in list.iter() {
        signal("-KILL", pid);
    }
}

/// Whether a process runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// A child process, stopped on drop.
pub struct Child {
    child: std::process::Child,
    /// Ask it to stop first (SIGTERM, up to 3 s), then kill it. nginx's master needs this:
    /// killed outright, it leaves its workers running.
    graceful: bool,
}

impl Child {
    fn new(child: std::process::Child, graceful: bool) -> Child {
        running().push((child.id(), graceful));
        Child { child, graceful }
    }

    fn set_graceful(&mut self) {
        self.graceful = true;
        let id = self.child.id();
        if let Some(c) = running().iter_mut().find(|c| c.0 == id) {
            c.1 = true;
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let id = self.child.id();
        let mut list = running();
        list.retain(|c| c.0 != id);
        if self.graceful {
            let asked = Command::new("kill")
                .arg("-TERM")
                .arg(id.to_string())
                .status()
                .is_ok_and(|s| s.success());
            let deadline = Instant::now() + Duration::from_secs(3);
            while asked && Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(list);
    }
}

/// The processes of one run.
pub struct Stack {
    /// Where users connect: one URL, or one per anticamera node (`--nodes N`), spread over
    /// round-robin by each person.
    pub targets: Vec<String>,
    /// The demo portal (stats, reset, slowdown).
    pub portal: String,
    /// With several anticamera nodes: the nodes and their Redis.
    pub fleet: Option<std::sync::Arc<Fleet>>,
    // Dropped in reverse order of start: the fronts first, then Redis, then the portal.
    children: Vec<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(c) = self.children.pop() {
            drop(c);
        }
    }
}

/// A free loopback port (bound then released: another process could take it in between, which
/// a failed start reports).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last 15 lines of a log.
pub fn log_tail(log: &Path) -> String {
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Waits until something listens on `port` (at most 15 s); fails at once, with the end of its
/// log, if the child exits first.
fn wait_port(port: u16, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait() {
            bail!(
                "{what} exited ({status}) before listening on {addr}; last lines of {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} is not listening on {addr} after 15 s; last lines of {}:\n{}",
        log.display(),
        log_tail(log)
    )
}

pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name} ({cmd:?})"))?;
    Ok(Child::new(child, false))
}

/// The `anticamera` binary next to this one (`cargo build --release -p anticamera -p surge`
/// builds both).
pub fn anticamera_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("anticamera");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p anticamera`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Fills `{{name}}` placeholders; an unknown placeholder is an error.
pub fn fill(template: &str, vars: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            bail!("unclosed {{{{ in the template");
        };
        let name = after[..j].trim();
        let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) else {
            bail!(
                "unknown placeholder {{{{{name}}}}}; known: {}",
                vars.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            );
        };
        out.push_str(v);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `waiting_room.tick`'s default (CONFIG.md).
const DEFAULT_TICK: Duration = Duration::from_millis(200);

/// The controller's tick of a config (`waiting_room.tick`), which the store's resync grace
/// after a fresh Redis depends on.
fn controller_tick(config: &str) -> anyhow::Result<Duration> {
    let v: toml::Value = toml::from_str(config).context("the generated config is not TOML")?;
    match v.get("waiting_room").and_then(|w| w.get("tick")) {
        None => Ok(DEFAULT_TICK),
        Some(t) => {
            let t = t.as_str().context("waiting_room.tick: not a string")?;
            anticamera::util::duration::parse(t)
                .map_err(|e| anyhow::anyhow!("waiting_room.tick = {t:?}: {e}"))
        }
    }
}

/// The `[store]` section surge appends to each node's config.
pub fn store_section(url: &str, prefix: &str, node: &str) -> String {
    format!(
        "\n# Added by surge (--nodes): one waiting room on surge's own Redis.\n\
         [store]\nkind = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\nnode_id = \"{node}\"\n"
    )
}

/// A `[store] prefix` of this run's own: `surge:NAME:MILLIS:` (ASCII, at most 64 bytes).
pub fn run_prefix(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("surge:{name}:{ms}:")
}

/// An anticamera config from the scenario's template, for a node listening on `port` with its
/// admin on `admin`, one of `nodes`.
fn anticamera_config(
    sc: &Scenario,
    port: u16,
    admin: u16,
    portal: &str,
    nodes: usize,
) -> anyhow::Result<String> {
    let tmpl_path = sc.dir.join(&sc.anticamera.config);
    let tmpl = std::fs::read_to_string(&tmpl_path)
        .with_context(|| format!("reading {}", tmpl_path.display()))?;
    let c = sc.portal.capacity;
    // With N nodes on one Redis the guard's limit is the fleet's: each node holds a part of it
    // (anticamera's `store/portal.rs`), so every node states the portal's whole capacity.
    let limit = sc.guard_limit();
    let prefixes = sc
        .anticamera
        .gate_prefixes
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let vars = [
        ("listen", format!("127.0.0.1:{port}")),
        ("admin", format!("127.0.0.1:{admin}")),
        ("portal", portal.to_string()),
        ("workers", sc.anticamera.workers.to_string()),
        ("gate", sc.run.gate.clone()),
        ("gate_prefixes", prefixes),
        ("gate_capacity", sc.gate_capacity().to_string()),
        ("guard_mode", sc.anticamera.guard_mode.clone()),
        ("guard_limit", limit.to_string()),
        ("guard_min", (limit / 4).max(1).to_string()),
        ("guard_queue", (c * 20).to_string()),
        (
            "latency_threshold",
            format!("{}ms", sc.portal.base_latency.as_millis() * 4),
        ),
        ("cohort_header", sc.run.cohort_header.clone()),
    ];
    let config = fill(&tmpl, &vars).with_context(|| format!("filling {}", tmpl_path.display()))?;
    if nodes > 1
        && config
            .lines()
            .any(|l| l.trim_start().starts_with("[store]"))
    {
        bail!(
            "{} has a [store] section: with --nodes surge adds its own (its Redis, a prefix per run, a node_id per node)",
            tmpl_path.display()
        );
    }
    Ok(config)
}

/// Starts one anticamera process with `config`; waits until it listens.
fn start_anticamera(
    sc: &Scenario,
    bin: &Path,
    what: &str,
    config: &str,
    cfg_path: &Path,
    log: &Path,
    port: u16,
) -> anyhow::Result<Child> {
    std::fs::File::create(cfg_path)?.write_all(config.as_bytes())?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(cfg_path);
    if let Some(at) = &sc.anticamera.rehearse_at {
        cmd.arg("--rehearse-at").arg(at);
    }
    let mut child = spawn(what, &mut cmd, log)?;
    wait_port(port, what, &mut child, log)?;
    Ok(child)
}

/// Starts the demo portal and the front for one run: with `Front::Anticamera` and
/// `sc.anticamera.nodes` > 1, a redis-server and that many anticamera nodes on it.
pub fn start(front: Front, sc: &Scenario, logs: &Path) -> anyhow::Result<Stack> {
    std::fs::create_dir_all(logs)?;
    let bin = anticamera_bin()?;
    let label = format!("{}-{}", sc.name, front.as_str());
    let portal_port = free_port()?;
    let portal_log = logs.join(format!("{label}-portal.log"));
    let mut cmd = Command::new(&bin);
    cmd.arg("demo-portal")
        .arg("--listen")
        .arg(format!("127.0.0.1:{portal_port}"))
        .arg("--capacity")
        .arg(sc.portal.capacity.to_string())
        .arg("--base-latency")
        .arg(format!("{}ms", sc.portal.base_latency.as_millis()))
        .arg("--threads")
        .arg(sc.portal.threads.to_string())
        .env("RUST_LOG", "warn");
    if sc.portal.fault_mode {
        cmd.arg("--fault-mode");
    }
    if !sc.portal.release {
        cmd.arg("--no-release-header");
    }
    let mut portal_child = spawn("demo portal", &mut cmd, &portal_log)?;
    wait_port(
        portal_port,
        "the demo portal",
        &mut portal_child,
        &portal_log,
    )?;
    let portal = format!("http://127.0.0.1:{portal_port}");
    // Everything started is stopped, in reverse order, if a later start fails.
    let mut stack = Stack {
        targets: Vec::new(),
        portal: portal.clone(),
        fleet: None,
        children: vec![portal_child],
    };
    let children = &mut stack.children;
    let targets = match front {
        Front::Direct => vec![portal.clone()],
        Front::Anticamera if sc.anticamera.nodes > 1 => {
            let (redis, child) = crate::fleet::start_redis(logs, &label)?;
            children.push(child);
            let prefix = run_prefix(&sc.name);
            let mut nodes = Vec::new();
            let mut tick = DEFAULT_TICK;
            for i in 1..=sc.anticamera.nodes {
                let name = format!("node-{i}");
                let (port, admin) = (free_port()?, free_port()?);
                let config = anticamera_config(sc, port, admin, &portal, sc.anticamera.nodes)?
                    + &store_section(&redis.url(), &prefix, &name);
                tick = controller_tick(&config)?;
                let cfg_path = logs.join(format!("{label}-{name}.toml"));
                let log = logs.join(format!("{label}-{name}.log"));
                let what = format!("anticamera {name}");
                children.push(
                    start_anticamera(sc, &bin, &what, &config, &cfg_path, &log, port)
                        .with_context(|| format!("starting {name} (log {})", log.display()))?,
                );
                nodes.push(Node {
                    name,
                    url: format!("http://127.0.0.1:{port}"),
                    admin: format!("127.0.0.1:{admin}"),
                    log,
                });
            }
            let f = Fleet {
                nodes,
                redis,
                prefix,
            };
            f.wait_ready()?;
            // A fresh Redis is a new epoch: for its resync grace nobody is given a number or a
            // place (the nodes answer 503). The people arrive once it has passed.
            std::thread::sleep(Duration::from_millis(
                anticamera::store::redis::grace_ms(tick) + 100,
            ));
            let targets = f.nodes.iter().map(|n| n.url.clone()).collect();
            stack.fleet = Some(std::sync::Arc::new(f));
            targets
        }
        Front::Anticamera => {
            let (port, admin) = (free_port()?, free_port()?);
            let config = anticamera_config(sc, port, admin, &portal, 1)?;
            let cfg_path = logs.join(format!("{label}.toml"));
            let log = logs.join(format!("{label}.log"));
            children.push(start_anticamera(
                sc,
                &bin,
                "anticamera",
                &config,
                &cfg_path,
                &log,
                port,
            )?);
            vec![format!("http://127.0.0.1:{port}")]
        }
        Front::Nginx => {
            let nginx = find_nginx()?;
            let port = free_port()?;
            let c = sc.portal.capacity;
            let dir = logs.join(format!("{label}-nginx"));
            std::fs::create_dir_all(dir.join("tmp"))?;
            let conf = nginx_conf(
                &dir,
                port,
                portal_port,
                sc.nginx.rate.unwrap_or(c * 25),
                sc.nginx.burst.unwrap_or(c * 2),
                sc.nginx.conn.unwrap_or(c),
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let log = logs.join(format!("{label}.log"));
            let mut cmd = Command::new(nginx);
            cmd.arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log"));
            let mut nginx = spawn("nginx", &mut cmd, &log)?;
            nginx.set_graceful();
            let waited = wait_port(port, "nginx", &mut nginx, &log);
            children.push(nginx);
            waited?;
            vec![format!("http://127.0.0.1:{port}")]
        }
    };
    stack.targets = targets;
    Ok(stack)
}

/// nginx from PATH or /usr/sbin; installed by `scripts/setup-test-deps nginx-light` if missing.
fn find_nginx() -> anyhow::Result<PathBuf> {
    let look = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join("nginx"))
            .find(|p| p.exists())
    };
    if let Some(p) = look() {
        return Ok(p);
    }
    let setup = Path::new("scripts/setup-test-deps");
    if setup.exists() {
        eprintln!("surge: installing nginx with scripts/setup-test-deps nginx-light");
        let ok = Command::new(setup).arg("nginx-light").status()?.success();
        if ok {
            if let Some(p) = look() {
                return Ok(p);
            }
        }
    }
    bail!("nginx not found: run scripts/setup-test-deps nginx-light (from the repository root)")
}

/// What an operator without a waiting room would set: connections to the portal capped at C,
/// the request rate limited with a burst; everything beyond gets 503.
fn nginx_conf(
    dir: &Path,
    port: u16,
    portal_port: u16,
    rate: usize,
    burst: usize,
    conn: usize,
) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 1000000;
  limit_conn_zone $server_name zone=perserver:1m;
  limit_req_zone $server_name zone=portal:1m rate={rate}r/s;
  limit_conn_status 503;
  limit_req_status 503;
  upstream portal {{ server 127.0.0.1:{portal_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    # The limit keys must not be empty (an empty key is not limited): name the server.
    server_name portal.surge;
    location / {{
      limit_conn perserver {conn};
      limit_req zone=portal burst={burst};
      proxy_pass http://portal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_read_timeout 10s;
    }}
  }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_unknown_placeholders_refused() {
        let vars = [("a", "1".to_string()), ("b", "x".to_string())];
        assert_eq!(fill("{{a}}-{{ b }}!", &vars).unwrap(), "1-x!");
        assert!(fill("{{c}}", &vars)
            .unwrap_err()
            .to_string()
            .contains("{{c}}"));
        assert!(fill("{{a", &vars).is_err());
    }

    #[test]
    fn each_node_gets_a_store_section_of_the_run() {
        let p = run_prefix("claim day/é");
        assert!(
            p.starts_with("surge:claim_day__:") && p.ends_with(':'),
            "{p}"
        );
        assert!(
            p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic()),
            "{p}"
        );
        assert_eq!(
            controller_tick("[waiting_room]\ntick = \"100ms\"\n").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(controller_tick("[server]\n").unwrap(), DEFAULT_TICK);
        assert!(controller_tick("[waiting_room]\ntick = \"soon\"\n").is_err());
        let t: toml::Value =
            toml::from_str(&store_section("redis://127.0.0.1:1", &p, "node-2")).unwrap();
        assert_eq!(t["store"]["kind"].as_str(), Some("redis"));
        assert_eq!(t["store"]["node_id"].as_str(), Some("node-2"));
        assert_eq!(t["store"]["prefix"].as_str(), Some(p.as_str()));
    }
}
