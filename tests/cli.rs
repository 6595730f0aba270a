//! The binary's command line: `check-config` refuses each kind of bad config, naming the key.

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anticamera"))
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
        let out = Command::new(env!("CARGO_BIN_EXE_anticamera"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
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
    let out = Command::new(env!("CARGO_BIN_EXE_anticamera"))
        .args(["check-config", "/nonexistent/anticamera.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn help_documents_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_anticamera"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check-config"] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
}
