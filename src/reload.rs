//! Hot reload: `SIGHUP` or `POST /admin/reload` re-reads the config file, validates it whole and
//! applies it without dropping a connection, a waiting person's place or an admitted person's pass.
//!
//! What a reload applies, all or nothing: the gates' paths, capacities, admissions per minute,
//! modes, session and arrival settings, opening hours and holidays, capacity shares; cohort
//! matchers; signing keys (a key the file drops keeps verifying what it signed until that
//! expires); page templates; rate limits (a changed `[rate_limits]` starts with full buckets);
//! the admin token. Anything wrong — a parse or validation error, a template or key that cannot
//! be loaded — changes nothing, and the answer, the log line and
//! `anticamera_config_reload_total{result="failure"}` say why.
//!
//! What needs a restart is named, never half-applied: the listeners and workers (`server`,
//! `admin.listen`), the portal side (`upstream`, `upstream_guard`), `isolation`, `microcache`,
//! `forwarding`, `log`, `store` (moving a running node to another store would split its
//! line), and of `waiting_room` the cookie names, `Secure` flag, release header,
//! state file and controller timers; and the lanes (adding, removing, renaming or reordering
//! gates, adding or removing a gate's opening hours, changing cohort names). A file that changes
//! only those is refused with the list. A file that also changes reloadable settings has those
//! applied, and the answer lists what will take effect at the next restart.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::proxy::{templates_of, Shared};
use crate::ratelimit::RateLimiter;
use crate::room::RoomError;
use crate::telemetry;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The file read.
    pub file: PathBuf,
    /// Sections whose change was applied.
    pub applied: Vec<String>,
    /// Sections that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// This process was not started from a file.
    #[error("no config file to reload (this process was not started with --config)")]
    NoFile,
    /// The file cannot be read, parsed or validated.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The new waiting room, templates or keys cannot be built from it.
    #[error("{0}")]
    Build(#[from] RoomError),
    /// Every change in the file needs a restart.
    #[error("nothing applied: only settings that need a restart changed: {}", .0.join("; "))]
    OnlyRestart(Vec<String>),
}

/// Re-reads the file the running config came from and applies it (see the module docs).
/// Counts the attempt in `anticamera_config_reload_total{result}` and logs the outcome.
pub fn reload(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let result = apply(shared);
    match &result {
        Ok(r) => {
            metrics::counter!(telemetry::CONFIG_RELOAD_TOTAL, "result" => "success").increment(1);
            metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESS).set(unix_now());
            tracing::info!(
                file = %r.file.display(),
                applied = ?r.applied,
                needs_restart = ?r.needs_restart,
                "config reloaded"
            );
        }
        Err(e) => {
            metrics::counter!(telemetry::CONFIG_RELOAD_TOTAL, "result" => "failure").increment(1);
            tracing::error!(error = %e, "config reload refused; nothing changed");
        }
    }
    result
}

fn apply(shared: &Shared) -> Result<Reloaded, ReloadError> {
    let old = shared.config.load_full();
    let file = old.source.clone().ok_or(ReloadError::NoFile)?;
    let new = Config::load_mode(&file, old.demo_mode)?;
    let needs_restart = restart_only_changes(&old, &new);
    let applied = reloadable_changes(&old, &new);
    if applied.is_empty() && !needs_restart.is_empty() {
        return Err(ReloadError::OnlyRestart(needs_restart));
    }
    // A gate that follows the portal needs the guard that measures it, and the guard is built
    // once at start.
    // The store is restart-only: a file that says `memory` does not make a running Redis
    // fleet's gates able to follow one node's part of the portal.
    let cannot_follow = if shared.guard.is_none() {
        Some("without the [upstream_guard] this process started with")
    } else if old.store.kind == crate::store::StoreKind::Redis {
        Some("is not supported with the [store] kind = \"redis\" this process started with")
    } else {
        None
    };
    if let Some(why) = cannot_follow {
        let portal: Vec<String> = new
            .gates
            .iter()
            .filter(|g| g.admission == crate::config::Admission::Portal)
            .map(|g| format!("gates ({}): admission = \"portal\" {why}", g.name))
            .collect();
        if !portal.is_empty() {
            return Err(ReloadError::OnlyRestart(portal));
        }
    }
    // Build everything that can fail before anything is swapped.
    let templates = templates_of(&new)?;
    let admin_token = new
        .admin_token()
        .map_err(|(k, r)| RoomError::Config(k, r))?;
    let limiter = (section(&old.rate_limits) != section(&new.rate_limits))
        .then(|| new.rate_limits.as_ref().map(RateLimiter::new));
    match &shared.room {
        Some(room) => room.reload(&new, &old)?,
        None if !new.gates.is_empty() => {
            return Err(ReloadError::OnlyRestart(vec![
                "gates: this process started without a waiting room".into(),
            ]))
        }
        None => {}
    }
    // Swap. (The room's policy is already in place: its swap is the last step that can fail.)
    shared.templates.store(Arc::new(templates));
    shared.admin_token.store(admin_token.map(Arc::new));
    if let Some(limiter) = limiter {
        shared.limiter.store(limiter.map(Arc::new));
    }
    shared.config.store(Arc::new(effective(&old, new)));
    Ok(Reloaded {
        file,
        applied,
        needs_restart,
    })
}

/// The config in force after a reload: the new file, except the parts that need a restart,
/// which keep what this process runs (the same table the reload compares).
fn effective(old: &Config, mut new: Config) -> Config {
    for part in RESTART_ONLY {
        (part.keep)(old, &mut new);
    }
    new
}

/// A section's value as text, to tell whether a reload changes it.
fn section<T: Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// One part of the config, named as the operator writes it, and its value as text.
type Part = (&'static str, fn(&Config) -> String);

/// A part only a restart applies: its value as text, and how the running value is kept.
struct RestartOnly {
    name: &'static str,
    value: fn(&Config) -> String,
    keep: fn(&Config, &mut Config),
}

/// What only a restart applies: compared section by section, and kept as running.
const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        name: "server",
        value: |c| section(&c.server),
        keep: |o, n| n.server = o.server.clone(),
    },
    RestartOnly {
        name: "upstream",
        value: |c| section(&c.upstream),
        keep: |o, n| n.upstream = o.upstream.clone(),
    },
    RestartOnly {
        name: "forwarding",
        value: |c| section(&c.forwarding),
        keep: |o, n| n.forwarding = o.forwarding.clone(),
    },
    RestartOnly {
        name: "admin.listen",
        value: |c| section(&c.admin.listen),
        keep: |o, n| n.admin.listen = o.admin.listen,
    },
    RestartOnly {
        name: "log",
        value: |c| section(&c.log),
        keep: |o, n| n.log = o.log.clone(),
    },
    RestartOnly {
        name: "upstream_guard",
        value: |c| section(&c.upstream_guard),
        keep: |o, n| n.upstream_guard = o.upstream_guard.clone(),
    },
    RestartOnly {
        name: "isolation",
        value: |c| section(&c.isolation),
        keep: |o, n| n.isolation = o.isolation.clone(),
    },
    RestartOnly {
        name: "store",
        value: |c| section(&c.store),
        keep: |o, n| n.store = o.store.clone(),
    },
    RestartOnly {
        name: "microcache",
        value: |c| section(&c.microcache),
        keep: |o, n| n.microcache = o.microcache.clone(),
    },
    RestartOnly {
        name: "waiting_room.cookie_prefix",
        value: |c| section(&c.waiting_room.cookie_prefix),
        keep: |o, n| n.waiting_room.cookie_prefix = o.waiting_room.cookie_prefix.clone(),
    },
    RestartOnly {
        name: "waiting_room.cookie_secure",
        value: |c| section(&c.waiting_room.cookie_secure),
        keep: |o, n| n.waiting_room.cookie_secure = o.waiting_room.cookie_secure,
    },
    RestartOnly {
        name: "waiting_room.state_file",
        value: |c| section(&c.waiting_room.state_file),
        keep: |o, n| n.waiting_room.state_file = o.waiting_room.state_file.clone(),
    },
    RestartOnly {
        name: "waiting_room.release_header",
        value: |c| section(&c.waiting_room.release_header),
        keep: |o, n| n.waiting_room.release_header = o.waiting_room.release_header.clone(),
    },
    RestartOnly {
        name: "waiting_room.tick",
        value: |c| section(&c.waiting_room.tick),
        keep: |o, n| n.waiting_room.tick = o.waiting_room.tick,
    },
    RestartOnly {
        name: "waiting_room.snapshot_interval",
        value: |c| section(&c.waiting_room.snapshot_interval),
        keep: |o, n| n.waiting_room.snapshot_interval = o.waiting_room.snapshot_interval,
    },
];

/// What a reload applies, beside the gates (compared one by one).
const RELOADABLE: &[Part] = &[
    ("routing", |c| section(&c.routing)),
    ("cohorts", |c| section(&c.cohorts)),
    ("calendars", |c| section(&c.calendars)),
    ("rate_limits", |c| section(&c.rate_limits)),
    ("waiting_room.keys", |c| {
        section(&(&c.waiting_room.keys, c.waiting_room.current_key))
    }),
    ("waiting_room.templates", |c| {
        section(&c.waiting_room.templates)
    }),
    (
        "waiting_room (poll_interval, ticket_ttl, pass_refresh)",
        |c| {
            let w = &c.waiting_room;
            section(&(w.poll_interval, w.ticket_ttl, w.pass_refresh))
        },
    ),
    ("admin token", |c| {
        section(&(&c.admin.token, &c.admin.token_env))
    }),
];

/// The names of the parts whose value differs between `old` and `new`.
fn changed(parts: &[Part], old: &Config, new: &Config) -> Vec<String> {
    parts
        .iter()
        .filter(|(_, value)| value(old) != value(new))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The changed sections that only a restart applies.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    RESTART_ONLY
        .iter()
        .filter(|p| (p.value)(old) != (p.value)(new))
        .map(|p| p.name.to_string())
        .collect()
}

/// The changed sections a reload applies.
fn reloadable_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (a, b)) in old.gates.iter().zip(&new.gates).enumerate() {
        if section(a) != section(b) {
            out.push(format!("gates[{i}] ({})", b.name));
        }
    }
    if old.gates.len() != new.gates.len() {
        out.push("gates".into());
    }
    out.extend(changed(RELOADABLE, old, new));
    out
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
