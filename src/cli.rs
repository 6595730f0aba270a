//! The command line: `run`, `check-config`, `demo`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, LogConfig, LogFormat};
use crate::server::BoundServer;

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
    },
    /// Validate a configuration file and exit: 0 if it is good, 1 with every problem listed
    /// (file:line: key: reason) otherwise. Starts nothing.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

/// Entry point used by `main`.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { file } => check_config(&file),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let cfg = load(path)?;
    println!(
        "{}: ok (listen {}, admin {}, {} upstream address(es), {} worker(s))",
        path.display(),
        cfg.server.listen,
        cfg.admin.listen,
        cfg.upstream.urls.len(),
        cfg.worker_count()
    );
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

fn run(path: &Path) -> anyhow::Result<()> {
    let cfg = load(path)?;
    init_logging(&cfg.log);
    let bound = BoundServer::bind(cfg).context("starting anticamera")?;
    let running = bound.start()?;
    wait_for_signal_then(running.shutdown_handle())?;
    running.join();
    tracing::info!("anticamera stopped");
    Ok(())
}

/// Blocks until SIGTERM or SIGINT, then begins graceful shutdown.
pub fn wait_for_signal_then(handle: crate::server::ShutdownHandle) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    })?;
    handle.shutdown();
    Ok(())
}
