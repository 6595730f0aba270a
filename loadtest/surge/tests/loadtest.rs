//! The load-test kit end to end: `surge run` starts the demo portal and anticamera itself,
//! replays a small scenario (mixed JSON/HTML users, impatient reloaders, abandoning users, a
//! bot, two cohorts), and its checks come out clean; the same scenario straight at a portal in
//! fault mode shows the leaks. Release-sized runs are in BENCHMARKS.md.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn scenario(dir: &Path, extra: &str) -> std::path::PathBuf {
    let tmpl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/anticamera.toml.tmpl");
    let text = format!(
        r#"name = "smoke"
[users]
count = 300
arrival = "spike"
over = "2s"
[behaviour]
json = 0.5
impatient = 0.1
abandon = 0.05
bots = 0.01
bot_requests = 5
max_wait = "30s"
[cohorts]
citizens = 0.7
intermediaries = 0.3
[run]
duration = "40s"
client_addresses = 300
[portal]
capacity = 10
[anticamera]
config = "{}"
gate_prefixes = ["/login", "/account", "/claim", "/api/"]
{extra}"#,
        tmpl.display()
    );
    let p = dir.join("smoke.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// surge starts the `anticamera` binary it finds next to itself, and cargo builds only this
/// package's binaries for its tests: build anticamera's here, with the profile these tests were
/// built with (a no-op when it is fresh), so a run never uses a stale proxy.
fn build_anticamera() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let surge = Path::new(env!("CARGO_BIN_EXE_surge"));
        let profile = match surge.parent().and_then(|d| d.file_name()?.to_str()) {
            Some("debug") | None => "dev",
            Some(p) => p,
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "anticamera",
                "--bin",
                "anticamera",
            ])
            .args(["--profile", profile])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p anticamera: {status}");
    });
}

fn run(args: &[&str], out: &Path) -> (bool, Value) {
    build_anticamera();
    let o = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let report = std::fs::read(out.join("report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    (o.status.success(), serde_json::from_slice(&report).unwrap())
}

#[test]
fn a_scenario_through_anticamera_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path(), "");
    let out = dir.path().join("out");
    let (ok, report) = run(&["run", sc.to_str().unwrap(), "--strict"], &out);
    let r = &report["runs"][0];
    assert!(ok, "strict run failed: {:#}", r["summary"]);
    assert_eq!(r["label"], "anticamera");
    let s = &r["summary"];
    assert_eq!(s["leaks"], 0);
    assert!(s["portal_peak_in_flight"].as_u64().unwrap() <= 10, "{s:#}");
    assert_eq!(s["admission_inversions"], 0);
    assert_eq!(s["position_regressions"], 0);
    // People got through the waiting room and were checked.
    let done = r["journeys"]["completed"].as_u64().unwrap();
    assert!(
        done >= 200,
        "only {done} journeys of 300 users: {:#}",
        r["journeys"]
    );
    assert!(r["queue"]["users_queued"].as_u64().unwrap() > 50);
    assert!(
        r["verification"]["waiting_answers_checked"]
            .as_u64()
            .unwrap()
            > 50
    );
    assert!(r["isolation"]["checked"].as_u64().unwrap() >= 3 * done);
    assert!(r["bots"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(r["isolation"]["bot_personal_pages"], 0);
    // The timeline and the plots.
    assert!(r["timeline"]["t_s"].as_array().unwrap().len() >= 3);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("anticamera"));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("| admission inversions / arrival overtakes | 0 / 0 |"),
        "{md}"
    );
}

#[test]
fn the_same_scenario_straight_at_a_faulty_portal_shows_the_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path(), "");
    let out = dir.path().join("out");
    let (ok, report) = run(
        &[
            "run",
            sc.to_str().unwrap(),
            "--against",
            "direct",
            "--fault-mode",
            "--duration",
            "15s",
            "--strict",
        ],
        &out,
    );
    // --strict judges anticamera runs only.
    assert!(ok);
    let r = &report["runs"][0];
    assert_eq!(r["label"], "direct");
    let peak = r["summary"]["portal_peak_in_flight"].as_u64().unwrap();
    assert!(peak > 10, "the portal was not overloaded: {peak}");
    let leaks = r["isolation"]["leaks"].as_u64().unwrap()
        + r["portal"]["after"]["leaks_served"].as_u64().unwrap();
    assert!(
        leaks > 0,
        "fault mode under overload should leak: {:#}",
        r["isolation"]
    );
}

/// Issue 14's clients in small: plain HTTP clients (only `Retry-After` on the gated URL) in
/// front of a portal that never sends the release header, through anticamera with `release_on`,
/// `hold_front` and `admission = "portal"`: every journey ends, nobody sees another's data,
/// nobody is let in out of turn, and nobody ever asked the status endpoint.
#[test]
fn plain_clients_before_a_portal_without_release_all_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let tmpl = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/plain-clients.anticamera.toml.tmpl");
    let text = format!(
        r#"name = "plain"
[users]
count = 40
arrival = "even"
over = "1s"
[behaviour]
plain = 1.0
max_wait = "30s"
[run]
duration = "40s"
request_timeout = "20s"
client_addresses = 40
[portal]
capacity = 5
base_latency = "100ms"
release = false
[anticamera]
config = "{}"
gate_capacity = 20
gate_prefixes = ["/login", "/account", "/claim", "/api/"]
"#,
        tmpl.display()
    );
    let sc = dir.path().join("plain.toml");
    std::fs::write(&sc, text).unwrap();
    let out = dir.path().join("out");
    let (ok, report) = run(&["run", sc.to_str().unwrap(), "--strict"], &out);
    let r = &report["runs"][0];
    assert!(ok, "strict run failed: {:#}", r["summary"]);
    let s = &r["summary"];
    assert_eq!(s["leaks"], 0, "{s:#}");
    assert_eq!(s["admission_inversions"], 0, "{s:#}");
    assert!(s["portal_peak_in_flight"].as_u64().unwrap() <= 5, "{s:#}");
    assert_eq!(r["journeys"]["completed"], 40, "{:#}", r["journeys"]);
    assert_eq!(r["personas"]["plain"]["people"], 40, "{:#}", r["personas"]);
    assert_eq!(
        r["personas"]["plain"]["completed"], 40,
        "{:#}",
        r["personas"]
    );
    // They met the waiting room (40 people at once on a portal of 5 at 100 ms): told to wait,
    // or held at the front until their place came (`hold_front`: their gated request then
    // takes far longer than the portal's 100 ms), and followed only Retry-After: no status
    // poll at all.
    let queued = r["queue"]["users_queued"].as_u64().unwrap();
    let held_ms = r["latency_ms"]["admitted"]["max"].as_f64().unwrap_or(0.0);
    assert!(
        queued > 0 || held_ms > 1000.0,
        "queued {queued}, slowest admitted request {held_ms} ms: {:#}",
        r["latency_ms"]
    );
    assert!(
        r["requests"]["by_step"].get("status_poll").is_none(),
        "{:#}",
        r["requests"]["by_step"]
    );
    // The portal never sent the release header; the journeys ended by release_on.
    assert_eq!(r["portal"]["release_header"], false);
    assert_eq!(r["release"]["release_header_seen_by_client"], 0);
}

#[test]
fn a_bad_scenario_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "name = \"x\"\n[users]\ncount = 10\nover = \"1s\"\n[portal]\ncapacty = 5\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("portal"), "{err}");
}

/// Issue 15's fleet under the load-test kit: surge starts its own redis-server and three
/// anticamera nodes on it (`--nodes 3`), and every person's requests go round-robin over the
/// nodes with one cookie jar. Every check holds as through one node, the portal stays within
/// its capacity, and the report has the store's figures. Needs redis-server (`scripts/test`
/// installs it first; without it the test fails rather than passing unchecked).
#[test]
fn a_scenario_through_three_nodes_on_redis_passes_every_check() {
    assert!(
        Path::new("/usr/bin/redis-server").exists(),
        "/usr/bin/redis-server is missing: scripts/test installs it (scripts/setup-redis)"
    );
    let dir = tempfile::tempdir().unwrap();
    let tmpl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/anticamera.toml.tmpl");
    // No abandoning users: every journey must end.
    let text = format!(
        r#"name = "fleet"
[users]
count = 300
arrival = "spike"
over = "2s"
[behaviour]
json = 0.5
impatient = 0.1
bots = 0.01
bot_requests = 5
max_wait = "30s"
[cohorts]
citizens = 0.7
intermediaries = 0.3
[run]
duration = "30s"
client_addresses = 300
[portal]
capacity = 10
[anticamera]
config = "{}"
gate_prefixes = ["/login", "/account", "/claim", "/api/"]
"#,
        tmpl.display()
    );
    let sc = dir.path().join("fleet.toml");
    std::fs::write(&sc, text).unwrap();
    let out = dir.path().join("out");
    let (ok, report) = run(
        &["run", sc.to_str().unwrap(), "--nodes", "3", "--strict"],
        &out,
    );
    let r = &report["runs"][0];
    assert!(ok, "strict run failed: {:#}", r["summary"]);
    assert_eq!(r["label"], "anticamera");
    assert_eq!(r["nodes"], 3);
    let s = &r["summary"];
    assert_eq!(s["leaks"], 0, "{s:#}");
    assert_eq!(s["admission_inversions"], 0, "{s:#}");
    assert_eq!(s["position_regressions"], 0, "{s:#}");
    assert!(s["portal_peak_in_flight"].as_u64().unwrap() <= 10, "{s:#}");
    let people = s["users"].as_u64().unwrap();
    assert_eq!(
        r["journeys"]["completed"].as_u64().unwrap(),
        people,
        "{:#}",
        r["journeys"]
    );
    assert!(r["queue"]["users_queued"].as_u64().unwrap() > 50);
    assert!(r["isolation"]["checked"].as_u64().unwrap() >= 3 * people);
    // The first arrivals came after the fresh Redis's resync grace (during it every node
    // answers an arrival 503 without a number).
    assert_eq!(r["timeline"]["errors"][0], 0, "{:#}", r["errors"]);

    // The store's figures.
    let f = &r["fleet"];
    let t = &f["round_trips"];
    assert!(t["total"].as_u64().unwrap() > 0, "{f:#}");
    assert!(t["admission_ops"].as_u64().unwrap() >= people, "{f:#}");
    assert!(t["per_admitted_person"].as_f64().unwrap() > 0.0, "{f:#}");
    assert!(
        t["background_per_node_per_s"].as_f64().unwrap() > 0.0,
        "{f:#}"
    );
    // A waiting person's own requests make a round trip only in the late line, so this one
    // may be 0; everything over the waiting minutes is not.
    assert!(t["per_waiting_person_minute"].is_number(), "{f:#}");
    assert!(
        t["all_per_waiting_person_minute"].as_f64().unwrap() > 0.0,
        "{f:#}"
    );
    assert!(f["waiting_person_minutes"].as_f64().unwrap() > 0.0, "{f:#}");
    assert!(
        f["redis"]["commands_processed"].as_u64().unwrap() > 0,
        "{f:#}"
    );
    assert_eq!(f["nodes_not_read"], serde_json::json!([]), "{f:#}");
    assert_eq!(
        s["redis_round_trips_per_admitted_person"],
        t["per_admitted_person"]
    );
    // Every node served its round-robin share, and one held the lease.
    let nodes = f["per_node"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let sent: u64 = nodes
        .iter()
        .map(|n| n["requests_sent"].as_u64().unwrap())
        .sum();
    for n in nodes {
        let served = n["requests"].as_u64().unwrap();
        assert!(served > sent / 6, "{n:#} of {sent}");
        assert!(n["round_trips"].as_u64().unwrap() > 0, "{n:#}");
    }
    assert!(nodes.iter().any(|n| n["was_leader"] == true), "{f:#}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| | anticamera (3 nodes) |"), "{md}");
}

/// A node that cannot start fails the run, naming the node and its log, and nothing is left
/// running (here: a state file, which one node's config may have and a fleet's may not).
#[test]
fn a_node_that_does_not_start_fails_the_run_with_its_name_and_log() {
    assert!(
        Path::new("/usr/bin/redis-server").exists(),
        "/usr/bin/redis-server is missing: scripts/test installs it (scripts/setup-redis)"
    );
    build_anticamera();
    let dir = tempfile::tempdir().unwrap();
    let tmpl = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/anticamera.toml.tmpl"),
    )
    .unwrap();
    let state = dir.path().join("state.json");
    let bad = tmpl.replacen(
        "[waiting_room]\n",
        &format!(
            "[waiting_room]\nstate_file = {:?}\n",
            state.to_str().unwrap()
        ),
        1,
    );
    assert_ne!(bad, tmpl);
    let bad_path = dir.path().join("bad.toml.tmpl");
    std::fs::write(&bad_path, bad).unwrap();
    let sc = scenario(dir.path(), "");
    let text = std::fs::read_to_string(&sc)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("config = ") {
                format!("config = {:?}", bad_path.to_str().unwrap())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&sc, text).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["run", sc.to_str().unwrap(), "--nodes", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("node-1") && err.contains("node-1.log") && err.contains("state_file"),
        "{err}"
    );
    // Its Redis was stopped with it (the node's config names it).
    let cfg = std::fs::read_to_string(out.join("logs/smoke-anticamera-node-1.toml")).unwrap();
    let url = cfg
        .lines()
        .find_map(|l| l.strip_prefix("url = \"redis://"))
        .unwrap()
        .trim_end_matches('"');
    assert!(
        std::net::TcpStream::connect(url).is_err(),
        "redis-server still answers on {url}"
    );
}
