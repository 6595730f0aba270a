//! `surge`: the claim-day load-test kit. It replays a scenario (`loadtest/scenarios/*.toml`:
//! arrivals, behaviours, the portal's capacity, events) against the demo portal — straight,
//! through nginx with `limit_req`/`limit_conn`, and through anticamera, starting all of them
//! itself — or against any URL, and proves what claim day is judged on: every personal response
//! checked against its requester (the isolation canary), the portal's concurrency against its
//! capacity, admission order against arrival order, queue positions never going backwards, the
//! wait estimate against the actual wait, the status mix and the latency distribution.
//!
//! ```text
//! surge run loadtest/scenarios/claim-day.toml                    # anticamera only
//! surge run loadtest/scenarios/claim-day.toml --against direct,nginx,anticamera
//! surge run loadtest/scenarios/claim-day.toml --nodes 3         # 3 nodes on one Redis
//! surge run SCENARIO --target http://host:8080 [--portal http://portal]   # any URL
//! surge report --html report.html runs/*.json                     # redraw a report
//! ```
//!
//! Output (`--out`, default `target/surge/SCENARIO`): one JSON report per run, `report.json`
//! (all runs), `summary.md` (the side-by-side table) and `report.html` (plots over time).
//! Why not goose: see `loadtest/scenarios/README.md`.
#![forbid(unsafe_code)]

mod fleet;
mod html;
mod http;
mod orchestra;
mod report;
mod scenario;
mod verify;
mod vu;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hyper::{Method, Uri};
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::orchestra::Front;
use crate::report::Samples;
use crate::scenario::Scenario;
use crate::vu::{lock, run_bot, run_vu, Ctx, PortalAdmin};

/// Claim-day load tests: scenarios against the demo portal, straight, through nginx and
/// through anticamera, with isolation, capacity, order and estimate checks.
#[derive(Debug, Parser)]
#[command(name = "surge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and write the reports.
    Run(RunArgs),
    /// Redraw the HTML report and the table from JSON reports of earlier runs.
    Report {
        /// Write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// JSON reports (one per run, or report.json files holding several).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenario file (loadtest/scenarios/*.toml).
    scenario: PathBuf,
    /// Fronts to run the scenario through, one after the other, each with a fresh portal.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "anticamera")]
    against: Vec<Front>,
    /// Send the users to this URL instead of starting anything (any site); several URLs,
    /// comma-separated, are the nodes of one site: each person spreads its requests over them
    /// round-robin.
    #[arg(long, value_delimiter = ',', conflicts_with = "against")]
    target: Vec<String>,
    /// With --target: the demo portal behind it, for its stats (omit for any other site).
    #[arg(long, requires = "target")]
    portal: Option<String>,
    /// Override users.count.
    #[arg(long)]
    users: Option<usize>,
    /// Override users.over (e.g. 60s).
    #[arg(long, value_parser = anticamera::util::duration::parse)]
    over: Option<Duration>,
    /// anticamera nodes (overrides anticamera.nodes): more than 1 starts a redis-server and
    /// that many nodes sharing it (`[store] kind = "redis"`), each person's requests spread over
    /// them round-robin.
    #[arg(long, conflicts_with = "target")]
    nodes: Option<usize>,
    /// Override run.duration.
    #[arg(long, value_parser = anticamera::util::duration::parse)]
    duration: Option<Duration>,
    /// Override portal.fault_mode (the 2020 shared cache).
    #[arg(long)]
    fault_mode: bool,
    /// Override behaviour.plain: the share of people who are plain HTTP clients (follow only
    /// `Retry-After` on the gated URL), from 0 to 1.
    #[arg(long)]
    plain: Option<f64>,
    /// Seed of the random draws (behaviours, cohorts, spike arrivals).
    #[arg(long, default_value_t = 2020)]
    seed: u64,
    /// Output directory (default target/surge/SCENARIO).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 if a check fails: a leak, the portal over capacity, an admission inversion or a
    /// queue position going backwards, through anticamera.
    #[arg(long)]
    strict: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Report { html, reports } => {
            let runs = read_reports(&reports)?;
            print!("{}", report::markdown_table(&runs));
            if let Some(path) = html {
                std::fs::write(&path, html::render("surge report", &runs)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("\nHTML report: {}", path.display());
            }
            Ok(())
        }
        Command::Run(args) => {
            let code = run_all(args)?;
            std::process::exit(code);
        }
    }
}

fn read_reports(paths: &[PathBuf]) -> anyhow::Result<Vec<Value>> {
    let mut runs = Vec::new();
    for p in paths {
        let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let v: Value =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?;
        match v.get("runs").and_then(Value::as_array) {
            Some(list) => runs.extend(list.iter().cloned()),
            None => runs.push(v),
        }
    }
    Ok(runs)
}

fn run_all(args: RunArgs) -> anyhow::Result<i32> {
    let mut sc = Scenario::load(&args.scenario)?;
    if let Some(n) = args.users {
        sc.users.count = n;
    }
    if let Some(o) = args.over {
        sc.users.over = o;
    }
    if let Some(d) = args.duration {
        sc.run.duration = d;
    }
    if let Some(n) = args.nodes {
        scenario::check_nodes(n).context("--nodes")?;
        sc.anticamera.nodes = n;
    }
    sc.portal.fault_mode |= args.fault_mode;
    if let Some(p) = args.plain {
        anyhow::ensure!(
            (0.0..=1.0).contains(&p),
            "--plain: a share from 0 to 1, not {p}"
        );
        sc.behaviour.plain = p;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/surge").join(&sc.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sc.run.threads)
        .enable_all()
        .build()?;
    // Ctrl-C or SIGTERM: stop every process surge started (nodes, Redis, portal) and leave.
    rt.spawn(async {
        interrupted().await;
        eprintln!("\nsurge: interrupted; stopping the processes it started");
        orchestra::stop_all();
        std::process::exit(130);
    });
    let mut runs = Vec::new();
    if !args.target.is_empty() {
        let r = rt.block_on(run_one(
            &sc,
            "target",
            &args.target,
            args.portal.as_deref(),
            None,
            args.seed,
        ))?;
        runs.push(r);
    } else {
        for &front in &args.against {
            let nodes = match front {
                Front::Anticamera if sc.anticamera.nodes > 1 => {
                    format!(", {} nodes on one Redis", sc.anticamera.nodes)
                }
                _ => String::new(),
            };
            eprintln!(
                "surge: {} through {}{nodes} ({} users over {:?})",
                sc.name,
                front.as_str(),
                sc.users.count,
                sc.users.over
            );
            let stack = orchestra::start(front, &sc, &out.join("logs"))?;
            let r = rt.block_on(run_one(
                &sc,
                front.as_str(),
                &stack.targets,
                Some(&stack.portal),
                stack.fleet.clone(),
                args.seed,
            ))?;
            drop(stack);
            runs.push(r);
        }
    }
    for r in &runs {
        let label = r["label"].as_str().unwrap_or("run");
        let path = out.join(format!("{}-{label}.json", sc.name));
        std::fs::write(&path, serde_json::to_vec_pretty(r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let table = report::markdown_table(&runs);
    let title = format!(
        "{}: {} users over {} s, portal capacity {}{}",
        sc.name,
        sc.users.count,
        sc.users.over.as_secs(),
        sc.portal.capacity,
        if sc.portal.fault_mode {
            " (fault mode)"
        } else {
            ""
        }
    );
    std::fs::write(out.join("summary.md"), format!("**{title}**\n\n{table}"))?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&json!({ "scenario": sc.name, "runs": runs }))?,
    )?;
    std::fs::write(out.join("report.html"), html::render(&title, &runs)?)?;
    println!("\n## {title}\n\n{table}");
    println!(
        "Reports: {0}/report.html, {0}/report.json, {0}/summary.md",
        out.display()
    );
    let failed = runs
        .iter()
        .filter(|r| r["label"] == "anticamera" || r["label"] == "target")
        .any(|r| {
            let s = &r["summary"];
            s["leaks"].as_u64().unwrap_or(0) > 0
                || r["portal"]["within_capacity"] == json!(false)
                || s["admission_inversions"].as_u64().unwrap_or(0) > 0
                || s["position_regressions"].as_u64().unwrap_or(0) > 0
        });
    Ok(if args.strict && failed { 1 } else { 0 })
}

/// Resolves on Ctrl-C or SIGTERM (never, if neither can be listened for).
async fn interrupted() {
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = int => {}
        _ = term => {}
    }
}

/// The fleet's state now, read off the async threads.
async fn fleet_snapshot(fleet: &Arc<Fleet>) -> fleet::Snapshot {
    let f = fleet.clone();
    tokio::task::spawn_blocking(move || f.snapshot())
        .await
        .unwrap_or_default()
}

/// One run of the scenario against `targets` (one front, or the nodes of a fleet).
async fn run_one(
    sc: &Scenario,
    label: &str,
    targets: &[String],
    portal: Option<&str>,
    fleet: Option<Arc<Fleet>>,
    seed: u64,
) -> anyhow::Result<Value> {
    let target_uris = targets
        .iter()
        .map(|t| t.parse::<Uri>().with_context(|| format!("target {t}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = targets.join(", ");
    let portal = match portal {
        Some(p) => Some(PortalAdmin::new(
            p.parse().with_context(|| format!("portal {p}"))?,
        )),
        None => None,
    };
    let before = match &portal {
        Some(p) => {
            p.call(Method::POST, "/__portal/reset")
                .await
                .context("resetting the portal stats (is --portal the demo portal?)")?;
            Some(p.call(Method::GET, "/__portal/stats").await?)
        }
        None => None,
    };
    let fleet_before = match &fleet {
        Some(f) => Some(fleet_snapshot(f).await),
        None => None,
    };
    let start = Instant::now() + Duration::from_millis(100);
    let ctx = Arc::new(Ctx::new(sc.clone(), target_uris, start)?);
    let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
    let watcher = tokio::spawn(watch(ctx.clone(), portal.clone(), samples.clone()));
    let fleet_watcher = fleet
        .clone()
        .map(|f| tokio::spawn(watch_fleet(ctx.clone(), f, samples.clone())));

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut set = tokio::task::JoinSet::new();
    for id in 0..sc.users.count {
        let at = sc.arrival_of(id, rng.gen());
        if sc.is_bot(id) {
            set.spawn(run_bot(ctx.clone(), id, at));
        } else {
            set.spawn(run_vu(ctx.clone(), id, at, rng.gen()));
        }
    }
    let cut = tokio::select! {
        _ = async { while set.join_next().await.is_some() {} } => false,
        _ = tokio::time::sleep_until(ctx.deadline) => true,
    };
    let elapsed = start.elapsed();
    set.abort_all();
    while set.join_next().await.is_some() {}
    watcher.abort();
    let _ = watcher.await;
    if let Some(w) = fleet_watcher {
        w.abort();
        let _ = w.await;
    }
    eprintln!();
    let after = match &portal {
        Some(p) => p.call(Method::GET, "/__portal/stats").await.ok(),
        None => None,
    };
    let fleet_after = match &fleet {
        Some(f) => {
            let snapshot = fleet_snapshot(f).await;
            let f = f.clone();
            let _ = tokio::task::spawn_blocking(move || f.save_metrics()).await;
            Some(snapshot)
        }
        None => None,
    };
    let samples = std::mem::take(&mut *lock(&samples));
    let mut r = report::build_report(&ctx, label, &target, elapsed, cut, before, after, &samples);
    if let (Some(f), Some(b), Some(a)) = (&fleet, &fleet_before, &fleet_after) {
        let (admitted, waiting_person_s) = {
            let rec = lock(&ctx.rec);
            let admitted = rec.logs.iter().filter(|l| l.admitted_ms.is_some()).count();
            let waiting: u64 = samples.gauges.iter().map(|g| g.1).sum();
            (admitted as u64, waiting as f64)
        };
        let section = fleet::FleetRun {
            fleet: f,
            before: b,
            after: a,
            seconds: &samples.fleet,
            elapsed_s: elapsed.as_secs_f64(),
            admitted,
            waiting_person_s,
            sent: ctx.sent(),
        }
        .report();
        report::add_fleet(&mut r, section);
    }
    report::print_summary(&r);
    Ok(r)
}

/// Every second, with several nodes: which node holds the leader lease, and the store round
/// trips of all nodes so far (a node that does not answer counts with its last reading). Apart
/// from [`watch`]: reading the nodes must never delay the portal's samples or the events.
async fn watch_fleet(ctx: Arc<Ctx>, fleet: Arc<Fleet>, samples: Arc<std::sync::Mutex<Samples>>) {
    tokio::time::sleep_until(ctx.start).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Vec<Option<fleet::NodeMetrics>> = vec![None; fleet.nodes.len()];
    loop {
        tick.tick().await;
        let s = ctx.start.elapsed().as_secs();
        let f = fleet.clone();
        let now = tokio::task::spawn_blocking(move || {
            f.nodes
                .iter()
                .map(|n| Fleet::node_metrics(n).ok())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (l, n) in last.iter_mut().zip(now) {
            if n.is_some() {
                *l = n;
            }
        }
        let leaders = last
            .iter()
            .map(|m| m.as_ref().is_some_and(|m| m.leader))
            .collect();
        let trips = last
            .iter()
            .flatten()
            .map(fleet::NodeMetrics::round_trips_total)
            .sum();
        lock(&samples).fleet.push((s, leaders, trips));
    }
}

/// Every second: the portal's peak in flight, the users' gauges, the live progress line; and
/// the scenario's events on time.
async fn watch(
    ctx: Arc<Ctx>,
    portal: Option<PortalAdmin>,
    samples: Arc<std::sync::Mutex<Samples>>,
) {
    tokio::time::sleep_until(ctx.start).await;
    let mut events: Vec<_> = ctx.sc.events.clone();
    events.sort_by_key(|e| e.at);
    let mut events = events.into_iter().peekable();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let tty = std::io::stderr().is_terminal();
    let mut last_recs = 0usize;
    loop {
        tick.tick().await;
        let now = ctx.start.elapsed();
        let s = now.as_secs();
        while let Some(e) = events.next_if(|e| e.at <= now) {
            if let (Some(p), Some(f)) = (&portal, e.slowdown) {
                let path = format!("/__portal/slowdown?factor={f}");
                match p.call(Method::POST, &path).await {
                    Ok(_) => eprintln!("\nsurge: at {s} s the portal is {f}x slower"),
                    Err(e) => eprintln!("\nsurge: slowdown event failed: {e}"),
                }
            }
        }
        let sample = match &portal {
            Some(p) => p.call(Method::POST, "/__portal/sample").await.ok(),
            None => None,
        };
        let field = |k: &str| {
            sample
                .as_ref()
                .and_then(|v| v.get(k).and_then(Value::as_u64))
        };
        let (peak, work, busy) = (
            field("window_peak_in_flight"),
            field("work_us"),
            field("busy_us"),
        );
        let (waiting, active) = ctx.gauges();
        let (arrived, done, leaks, recs) = {
            let r = lock(&ctx.rec);
            (r.arrivals.len(), r.journeys.len(), r.leaks, r.recs.len())
        };
        {
            let mut sm = lock(&samples);
            sm.gauges.push((s, waiting, active));
            if let Some(p) = peak {
                sm.portal_peak.push((s, p));
            }
            if let (Some(w), Some(b)) = (work, busy) {
                sm.portal_work.push((now.as_secs_f64(), w));
                sm.portal_busy.push((now.as_secs_f64(), b));
            }
        }
        let line = format!(
            "[{s:>4} s] arrived {arrived}/{} waiting {waiting} active {active} done {done} | {} req/s | portal in flight {} / {} | leaks {leaks}",
            ctx.sc.users.count,
            recs - last_recs,
            peak.map(|p| p.to_string()).unwrap_or("-".into()),
            ctx.sc.portal.capacity
        );
        last_recs = recs;
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else if s % 5 == 0 {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}
