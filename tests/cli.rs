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
