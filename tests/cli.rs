//! The binary's command line: `check-config` refuses each kind of bad config, naming the key.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn anticamera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anticamera"))
}

/// Real configs take their secrets from the environment.
fn with_secrets(cmd: &mut Command) -> &mut Command {
    cmd.env(
        "ANTICAMERA_KEY_1",
        "ci-test-key-0123456789abcdef0123456789abcdef",
    )
    .env("ANTICAMERA_ADMIN_TOKEN", "ci-test-admin-token-0123")
}

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = anticamera()
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const UP: &str = "[upstream]\nurls = [\"http://127.0.0.1:9000\"]\n";

#[test]
fn good_config_passes() {
    let (ok, out, err) = check(UP);
    assert!(ok, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn shipped_configs_are_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let demo = path.file_name().unwrap() == "demo.toml";
        let mut cmd = anticamera();
        cmd.arg("check-config").arg(&path);
        if demo {
            cmd.arg("--demo");
        }
        let out = with_secrets(&mut cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn each_kind_of_bad_config_is_refused_with_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            &format!("{UP}[server]\nlisten = \"127.0.0.1:8080\"\nmax_conections = 5\n"),
            "bad.toml:5: server.max_conections: unknown field `max_conections`",
            "unknown key",
        ),
        (
            &format!("{UP}[server]\nlisten = \"not-an-address\"\n"),
            "bad.toml:4: server.listen",
            "bad address",
        ),
        (
            "[upstream]\nurls = [\"http://127.0.0.1:9000\"]\nresponse_timeout = \"soon\"\n",
            "bad.toml:3: upstream.response_timeout: invalid duration \"soon\"",
            "bad duration",
        ),
        (
            "[upstream]\nurls = [\"ftp://x\"]\n",
            "upstream.urls[0]",
            "bad upstream URL",
        ),
        (
            &format!("{UP}[server]\nmax_body_bytes = \"10 parsecs\"\n"),
            "server.max_body_bytes",
            "bad size",
        ),
        ("[server\nlisten = 1", "bad.toml:1", "not TOML"),
    ];
    for (text, expect, what) in cases {
        let (ok, _, err) = check(text);
        assert!(!ok, "{what}: accepted");
        assert!(
            err.contains(expect),
            "{what}: expected {expect:?} in:\n{err}"
        );
    }
}

#[test]
fn missing_file_is_an_error() {
    let out = anticamera()
        .args(["check-config", "/nonexistent/anticamera.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn help_documents_every_command() {
    let out = anticamera().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check-config"] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
}

#[test]
fn fake_example_keys_are_refused_outside_demo_mode() {
    let out = anticamera()
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("waiting_room.keys[0].secret") && err.contains("NOT-A-SECRET"),
        "{err}"
    );
    assert!(err.contains("admin.token"), "{err}");
    // `run` refuses it too, before binding anything.
    let out = anticamera()
        .args([
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn schedule_command_prints_the_bands() {
    let out = with_secrets(anticamera().args([
        "schedule",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/inps.toml"),
        "--at",
        "2026-04-02T17:00",
    ]))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("claims") && text.contains("delega"), "{text}");
    assert!(
        text.contains("intermediaries") && text.contains("citizens"),
        "{text}"
    );
    let out = with_secrets(anticamera().args([
        "schedule",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/inps.toml"),
        "--cohort",
        "nobody",
    ]))
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown cohort"));
}

#[test]
fn config_errors_in_gates_and_cohorts_name_the_key() {
    let base = "[upstream]\nurls = [\"http://127.0.0.1:9000\"]\n[waiting_room]\nkeys = [{ id = 1, secret = \"0123456789abcdef0123456789abcdef\" }]\n";
    let cases: &[(&str, &str)] = &[
        ("[[gates]]\nname = \"g\"\nprefix = [\"/a\"]\n[gates.schedule]\n[[gates.schedule.windows]]\ncohorts = [\"martians\"]\nstart = \"08:00\"\nend = \"16:00\"\n", "gates[0].schedule.windows[0].cohorts[0]"),
        ("[[gates]]\nname = \"g\"\nprefix = [\"/a\"]\n[gates.schedule]\n[[gates.schedule.windows]]\nstart = \"25:00\"\nend = \"16:00\"\n", "gates[0].schedule.windows[0].start"),
        ("[[gates]]\nname = \"g\"\nprefix = [\"a\"]\n", "gates[0].prefix[0]"),
        ("[[gates]]\nname = \"g\"\nprefix = [\"/a\"]\nshares = { martians = 0.5 }\n", "gates[0].shares.martians"),
        ("[[gates]]\nname = \"g\"\nprefix = [\"/a\"]\n[[gates]]\nname = \"g\"\nprefix = [\"/b\"]\n", "gates[1].name"),
        ("[cohorts]\ndefault = \"x\"\n[[cohorts.matchers]]\ncohort = \"y\"\nnetwork = [\"10.0.0.0/33\"]\n", "cohorts.matchers[0].network[0]"),
        ("[rate_limits.per_address]\nrate = \"lots\"\n", "rate_limits.per_address.rate"),
    ];
    for (extra, key) in cases {
        let (ok, _, err) = check(&format!("{base}{extra}"));
        assert!(!ok, "{key}: accepted");
        assert!(err.contains(key), "expected {key} in:\n{err}");
    }
}

const INPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/inps.toml");

/// `anticamera schedule --config config/inps.toml --at AT` with no environment at all.
fn schedule_without_env(at: &str) -> String {
    let out = anticamera()
        .env_clear()
        .args(["schedule", "--config", INPS, "--at", at])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "--at {at}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The report's line for `cohort` under `gate`.
fn state_of<'a>(report: &'a str, gate: &str, cohort: &str) -> &'a str {
    let section = report
        .split("\ngate ")
        .find(|s| s.starts_with(&format!("{gate:?}")))
        .unwrap_or_else(|| panic!("no gate {gate} in:\n{report}"));
    section
        .lines()
        .find(|l| l.trim_start().starts_with(cohort))
        .unwrap_or_else(|| panic!("no {cohort} under {gate} in:\n{report}"))
}

#[test]
fn schedule_runs_without_secrets_and_closes_on_holidays_of_any_year() {
    for at in [
        "2027-12-25T10:00",
        "2027-12-25T18:00",
        "2027-12-08T10:00",
        "2031-12-25T10:00",
        "2031-12-25T18:00",
        "2031-12-08T10:00",
        "2031-12-08T18:00",
        "2027-03-29T10:00",
        "2027-03-29T18:00",
    ] {
        let report = schedule_without_env(at);
        for gate in ["claims", "delega"] {
            for cohort in ["citizens", "intermediaries"] {
                let line = state_of(&report, gate, cohort);
                assert!(line.contains("CLOSED"), "{at} {gate} {cohort}: {line}");
            }
        }
        assert!(report.contains("holiday on"), "{at}:\n{report}");
    }
    // 8 December 2026 is a Tuesday: the desk would open at 09:00 but for the holiday.
    let report = schedule_without_env("2026-12-08T10:00");
    assert!(
        state_of(&report, "delega", "citizens").contains("CLOSED"),
        "{report}"
    );
    // An ordinary Tuesday morning: the desk and the intermediaries' band are open.
    let report = schedule_without_env("2027-03-02T10:00");
    for cohort in ["citizens", "intermediaries"] {
        let line = state_of(&report, "delega", cohort);
        assert!(line.contains("OPEN"), "{line}\n{report}");
    }
    assert!(state_of(&report, "claims", "intermediaries").contains("OPEN"));
    assert!(state_of(&report, "claims", "citizens").contains("CLOSED"));
    // The eve's overnight band runs to its end on the holiday: 25 December 2031 07:00.
    let report = schedule_without_env("2031-12-25T07:00");
    assert!(
        state_of(&report, "claims", "citizens").contains("OPEN"),
        "{report}"
    );
    // It says which secrets the run will need, and that they are missing here.
    assert!(
        report.contains("waiting_room.keys[0].secret_env = ANTICAMERA_KEY_1 (not set here)"),
        "{report}"
    );
    assert!(
        report.contains("admin.token_env = ANTICAMERA_ADMIN_TOKEN (not set here)"),
        "{report}"
    );
}

#[test]
fn check_config_lists_the_secrets_and_run_still_needs_them() {
    let out = anticamera()
        .env_clear()
        .args(["check-config", INPS])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok"), "{text}");
    assert!(
        text.contains("secrets the run will need (2 of 2 not available here)")
            && text.contains("ANTICAMERA_KEY_1 (not set here)"),
        "{text}"
    );
    // With them set, they are checked (and listed as available).
    let out = with_secrets(anticamera().env_clear().args(["check-config", INPS]))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ANTICAMERA_KEY_1 (available here)"));
    // A secret that is there but wrong is refused.
    let out = anticamera()
        .env_clear()
        .env("ANTICAMERA_KEY_1", "too-short")
        .args(["check-config", INPS])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    // `run` refuses to start without them, naming what is missing.
    let out = anticamera()
        .env_clear()
        .args(["run", "--config", INPS])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "waiting_room.keys[0].secret_env: environment variable ANTICAMERA_KEY_1 is not set"
        ),
        "{err}"
    );
}

#[test]
fn calendar_errors_name_the_file_line_and_key() {
    let base = "[upstream]\nurls = [\"http://127.0.0.1:9000\"]\n[waiting_room]\nkeys = [{ id = 1, secret = \"0123456789abcdef0123456789abcdef\" }]\n";
    let gate = "[[gates]]\nname = \"g\"\nprefix = [\"/a\"]\n[gates.schedule]\ncalendar = \"it\"\n[[gates.schedule.windows]]\nstart = \"08:00\"\nend = \"16:00\"\n";
    let cases: &[(String, &str)] = &[
        (gate.to_string(), "bad.toml:9: gates[0].schedule.calendar: unknown calendar \"it\""),
        (
            format!("[calendars.it]\nholidays = [\n  {{ date = \"12-25\" }},\n  {{ date = \"12-32\" }},\n]\n{gate}"),
            "bad.toml:8: calendars.it.holidays[1].date: \"12-32\" is not a date",
        ),
        (
            format!("[calendars.it]\nics = \"it.ics\"\n{gate}"),
            "bad.toml:6: calendars.it.ics:",
        ),
    ];
    for (extra, expect) in cases {
        let (ok, _, err) = check(&format!("{base}{extra}"));
        assert!(!ok, "{expect}: accepted");
        assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
    }
}
