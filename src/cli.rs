//! The command line: `run`, `check-config`, `schedule`, `demo` (with its crowd), `demo-portal`.
//! `check-config` and `schedule` load the config to check it, so they run without its secrets
//! and list them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use anticamera::config::{Config, LogConfig, LogFormat};
use anticamera::server::BoundServer;

/// anticamera: a reverse proxy that keeps a public portal standing on claim day.
#[derive(Debug, Parser)]
#[command(name = "anticamera", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of the portal named in the config.
    Run {
        /// Configuration file (TOML), e.g. config/anticamera.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Rehearsal only: start the clock at this instant (RFC 3339, e.g.
        /// 2026-04-01T15:59:30+02:00) and let it run from there, to rehearse an opening
        /// with a load test. Tickets and passes are stamped with the rehearsal time.
        #[arg(long, value_name = "RFC3339")]
        rehearse_at: Option<String>,
    },
    /// Validate a configuration file and exit: 0 if it is good, 1 with every problem listed
    /// (file:line: key: reason) otherwise. Starts nothing.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Check it as `anticamera demo` would load it (accepts the fake example keys).
        #[arg(long)]
        demo: bool,
    },
    /// Start, on loopback, the demo portal and anticamera in front of it (from
    /// config/demo.toml), and print the addresses to open. With --crowd, simulated people
    /// fill the waiting room so your own browser lands in it. Ctrl-C stops everything.
    Demo {
        /// anticamera configuration; the demo portal listens on its first upstream address.
        #[arg(long, short, default_value = "config/demo.toml")]
        config: PathBuf,
        /// How the demo portal behaves.
        #[command(flatten)]
        portal: PortalArgs,
        /// The crowd: simulated people sent through the demo's gate.
        #[command(flatten)]
        crowd: CrowdArgs,
    },
    /// Print which gates are open to which cohorts at a time, and when each next opens or
    /// closes (local time), so operators can check a config before the day.
    Schedule {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The instant to check: RFC 3339 (2026-04-02T17:00:00+02:00), or local time in the
        /// gates' zone (2026-04-02T17:00 or "2026-04-02 17:00"). Default: now.
        #[arg(long)]
        at: Option<String>,
        /// Only this cohort.
        #[arg(long)]
        cohort: Option<String>,
        /// Language of dates: it or en.
        #[arg(long, default_value = "en")]
        lang: String,
    },
    /// Run only the demo portal (for load tests and benchmarks), on the given address.
    DemoPortal {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// How the demo portal behaves.
        #[command(flatten)]
        portal: PortalArgs,
        /// Runtime threads for the portal.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

/// How the demo portal behaves.
#[derive(Debug, clap::Args)]
pub struct PortalArgs {
    /// Requests the portal serves at normal speed; beyond it latency grows, then errors, then
    /// it hangs, as the real portal did.
    #[arg(long, default_value_t = 50)]
    pub capacity: usize,
    /// Normal latency of a portal page.
    #[arg(long, default_value = "20ms", value_parser = anticamera::util::duration::parse)]
    pub base_latency: std::time::Duration,
    /// Reproduce the 1 April 2020 accident: under load, personal pages are served from a
    /// shared cache to other users.
    #[arg(long)]
    pub fault_mode: bool,
    /// Never send the release header when a claim is filed, as a portal nobody changed for a
    /// waiting room: a journey then ends by a gate's `[[gates.release_on]]` rule or by time.
    #[arg(long)]
    pub no_release_header: bool,
}

/// The demo's crowd of simulated people.
#[derive(Debug, clap::Args)]
pub struct CrowdArgs {
    /// Send this many simulated people through anticamera to the claim form as soon as the
    /// demo starts (300 if no number is given), so that your browser, opened meanwhile, waits
    /// in line behind them. Each logs in, waits in the queue as the page does, reads its
    /// account, submits the claim and leaves; the crowd stops by itself. The home page's
    /// button sends another wave of the same size.
    #[arg(long, value_name = "PEOPLE", num_args = 0..=1, default_missing_value = "300")]
    pub crowd: Option<usize>,
    /// Over how long the crowd arrives.
    #[arg(long, default_value = "10s", value_parser = anticamera::util::duration::parse)]
    pub crowd_over: std::time::Duration,
    /// How long a simulated person looks at each page inside (±50%).
    #[arg(long, default_value = "1500ms", value_parser = anticamera::util::duration::parse)]
    pub crowd_think: std::time::Duration,
}

impl PortalArgs {
    fn config(&self) -> anticamera_demo_portal::PortalConfig {
        anticamera_demo_portal::PortalConfig {
            capacity: self.capacity,
            base_latency: self.base_latency,
            fault_mode: self.fault_mode,
            release_header: if self.no_release_header {
                String::new()
            } else {
                anticamera_demo_portal::PortalConfig::default().release_header
            },
            ..Default::default()
        }
    }
}

/// Entry point used by `main`.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            rehearse_at,
        } => run(&config, rehearse_at.as_deref()),
        Command::CheckConfig { file, demo } => check_config(&file, demo),
        Command::Demo {
            config,
            portal,
            crowd,
        } => demo(&config, &portal, &crowd),
        Command::Schedule {
            config,
            at,
            cohort,
            lang,
        } => schedule(&config, at.as_deref(), cohort.as_deref(), &lang),
        Command::DemoPortal {
            listen,
            portal,
            threads,
        } => demo_portal(listen, &portal, threads),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads a config to check it, not run it: secrets not available here are not needed.
fn load_for_check(path: &Path, demo: bool) -> anyhow::Result<Config> {
    Config::load_for_check(path, demo).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The secrets `run` will need (environment variables, files), and which are missing here.
fn print_secrets(cfg: &Config) {
    let secrets = cfg.secret_sources();
    if secrets.is_empty() {
        return;
    }
    let missing = secrets.iter().filter(|s| s.missing.is_some()).count();
    println!(
        "secrets the run will need ({} of {} not available here):",
        missing,
        secrets.len()
    );
    for s in &secrets {
        println!("  {s}");
    }
}

fn check_config(path: &Path, demo: bool) -> anyhow::Result<()> {
    let cfg = load_for_check(path, demo)?;
    println!(
        "{}: ok (listen {}, admin {}, {} upstream address(es), {} worker(s))",
        path.display(),
        cfg.server.listen,
        cfg.admin.listen,
        cfg.upstream.urls.len(),
        cfg.worker_count()
    );
    print_secrets(&cfg);
    Ok(())
}

/// Installs the log subscriber (once per process).
pub fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run(path: &Path, rehearse_at: Option<&str>) -> anyhow::Result<()> {
    let rehearse_at = rehearse_at
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .with_context(|| format!("--rehearse-at {s:?}: not an RFC 3339 instant"))
        })
        .transpose()?;
    let cfg = load(path)?;
    init_logging(&cfg.log);
    let bound = BoundServer::bind(cfg).context("starting anticamera")?;
    let running = bound.start()?;
    if let Some(at) = rehearse_at {
        let clock = running.clock();
        clock.advance_ms(at.timestamp_millis() - clock.now_ms() as i64);
        tracing::warn!(clock = %clock.now(), "REHEARSAL: the clock was moved (--rehearse-at)");
    }
    wait_for_signal_then(running.shutdown_handle())?;
    running.join();
    tracing::info!("anticamera stopped");
    Ok(())
}

/// Blocks until SIGTERM or SIGINT, then begins graceful shutdown. Each SIGHUP meanwhile
/// reloads the config file (what nginx and HAProxy operators send; it never stops anticamera).
pub fn wait_for_signal_then(handle: anticamera::server::ShutdownHandle) -> anyhow::Result<()> {
    wait_for_signal(Some(&handle))?;
    handle.shutdown();
    Ok(())
}

/// Blocks until SIGTERM or SIGINT, reloading on SIGHUP when a server `handle` is given.
fn wait_for_signal(handle: Option<&anticamera::server::ShutdownHandle>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
                    _ = int.recv() => { tracing::info!("SIGINT: draining"); break }
                    _ = hup.recv() => match handle {
                        // The outcome is logged (and counted) by the reload itself.
                        Some(h) => { let _ = h.reload(); }
                        None => tracing::warn!("SIGHUP: nothing to reload here"),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    })
}

fn demo(path: &Path, args: &PortalArgs, crowd: &CrowdArgs) -> anyhow::Result<()> {
    let cfg = Config::load_mode(path, true).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&cfg.log);
    let portal_addr = cfg
        .upstream_targets()
        .first()
        .map(|t| t.authority.to_string())
        .context("the demo config needs an upstream address for the demo portal")?;
    let portal_addr: std::net::SocketAddr = portal_addr
        .parse()
        .with_context(|| format!("the demo portal needs an IP:port upstream, not {portal_addr}"))?;
    // The crowd goes through anticamera's listen address; only ever a loopback one.
    let listen = cfg.server.listen;
    let crowd_target = listen.ip().is_loopback().then_some(listen);
    let people = crowd.crowd.unwrap_or(300);
    let portal_cfg = anticamera_demo_portal::PortalConfig {
        anticamera: crowd_target,
        crowd_people: people,
        crowd_over: crowd.crowd_over,
        crowd_think: crowd.crowd_think,
        crowd_max: crowd_cap(),
        ..args.config()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    anticamera::server::spawn_on_own_runtime("demo-portal".into(), move || async move {
        let started = async {
            let l = tokio::net::TcpListener::bind(portal_addr).await?;
            anticamera_demo_portal::spawn(l, portal_cfg).await
        }
        .await;
        match started {
            Ok(handle) => {
                let _ = ready_tx.send(Ok(handle.crowd.clone()));
                std::future::pending::<()>().await;
                drop(handle);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!(
                    "demo portal cannot listen on {portal_addr}: {e}"
                )));
            }
        }
    })?;
    let crowd_ctl = ready_rx.recv().context("demo portal thread ended")??;
    let bound = BoundServer::bind(cfg).context("starting anticamera")?;
    let (addr, admin) = (bound.local_addr(), bound.admin_addr());
    let running = bound.start()?;
    let wave = match crowd.crowd {
        Some(n) if crowd_target.is_some() => Some(crowd_ctl.wave(n, crowd.crowd_over)?),
        Some(_) => anyhow::bail!("--crowd needs anticamera on a loopback address, not {listen}"),
        None => None,
    };
    println!(
        "anticamera demo is running.\n\n  \
         The portal through anticamera   http://{addr}/\n  \
         Log in as anyone                http://{addr}/login\n  \
         Your personal page              http://{addr}/account\n  \
         The claim form                  http://{addr}/claim\n  \
         Portal stats (peak load)        http://{portal_addr}/__portal/stats\n  \
         The crowd (simulated people)    http://{portal_addr}/__portal/crowd\n  \
         Metrics                         http://{admin}/metrics\n\n\
         The portal serves {} requests at once{}.",
        args.capacity,
        if args.fault_mode {
            " and has the 2020 fault mode ON"
        } else {
            ""
        }
    );
    match wave {
        Some(w) => println!(
            "\nOpen http://{addr}/claim in your browser now: {} simulated people are ahead of \
             you (arriving over {}). You wait in line, watch your place move, and get in. \
             The crowd stops by itself; the home page's button sends another wave.",
            w.started,
            anticamera::util::duration::format(crowd.crowd_over)
        ),
        None if crowd_target.is_some() => println!(
            "\nTo see the waiting room, press \"Send {people} people to the claim form\" on \
             http://{addr}/ (or start with --crowd), then open http://{addr}/claim."
        ),
        None => {}
    }
    println!("Press Ctrl-C to stop.");
    wait_for_signal(Some(&running.shutdown_handle()))?;
    // The crowd first, so anticamera's drain does not wait for its long polls.
    crowd_ctl.stop();
    running.shutdown_handle().shutdown();
    running.join();
    Ok(())
}

/// Most simulated people at once: 2 000, or fewer when the process may not open enough files.
/// Every person holds a connection, counted twice in this one process (the person's end and
/// anticamera's), and running out of descriptors would refuse the newcomer's own browser too.
fn crowd_cap() -> usize {
    const MAX: usize = 2000;
    // Linux: the soft limit on open files, read from /proc (no unsafe call needed).
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => (soft.saturating_sub(200) / 3).clamp(1, MAX),
        None => MAX,
    }
}

fn demo_portal(
    listen: std::net::SocketAddr,
    args: &PortalArgs,
    threads: usize,
) -> anyhow::Result<()> {
    init_logging(&LogConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let handle = anticamera_demo_portal::spawn(l, args.config()).await?;
        println!(
            "demo portal on http://{} (capacity {})",
            handle.addr, args.capacity
        );
        tokio::signal::ctrl_c().await?;
        let s = handle.stats_snapshot();
        println!("{}", serde_json::to_string(&s)?);
        anyhow::Ok(())
    })
}

fn schedule(path: &Path, at: Option<&str>, cohort: Option<&str>, lang: &str) -> anyhow::Result<()> {
    use anticamera::cohort::Cohorts;
    use anticamera::schedule::{report_in, Lang, Schedule};
    let cfg = load_for_check(path, false)?;
    let cohorts = Cohorts::compile(&cfg.cohorts, &cfg.base_dir)
        .map_err(|e| anyhow::anyhow!("cohorts: {e:?}"))?;
    let mut schedules = Vec::new();
    for g in &cfg.gates {
        let s = match &g.schedule {
            Some(s) => Some(
                Schedule::compile_with(s, cohorts.names(), cfg.calendar_set())
                    .map_err(|e| anyhow::anyhow!("gates.{}.schedule: {e:?}", g.name))?,
            ),
            None => None,
        };
        schedules.push((g.name.as_str(), s));
    }
    let tz = schedules
        .iter()
        .find_map(|(_, s)| s.as_ref().map(|s| s.time_zone()))
        .unwrap_or(chrono_tz::Europe::Rome);
    let at = match at {
        None => chrono::Utc::now(),
        Some(s) => parse_instant(s, tz)?,
    };
    let names: Vec<&str> = match cohort {
        Some(c) => {
            if cohorts.id(c).is_none() {
                anyhow::bail!(
                    "unknown cohort {c:?}; the config declares: {}",
                    cohorts.names().join(", ")
                );
            }
            vec![c]
        }
        None => cohorts.names().iter().map(String::as_str).collect(),
    };
    let gates: Vec<(&str, Option<&Schedule>)> =
        schedules.iter().map(|(n, s)| (*n, s.as_ref())).collect();
    let lang = match lang {
        "it" => Lang::It,
        "en" => Lang::En,
        other => anyhow::bail!("--lang must be it or en, not {other:?}"),
    };
    print!("{}", report_in(&gates, &names, at, tz, lang));
    if gates.is_empty() {
        println!("(no gates: every path is forwarded at any hour)");
    }
    println!();
    print_secrets(&cfg);
    Ok(())
}

/// RFC 3339, or a local date-time in `tz`.
fn parse_instant(s: &str, tz: chrono_tz::Tz) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return tz
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(|| {
                    anyhow::anyhow!("{s} does not exist in {tz} (daylight-saving gap)")
                });
        }
    }
    anyhow::bail!("--at {s:?}: use 2026-04-02T17:00 (local) or 2026-04-02T17:00:00+02:00")
}
