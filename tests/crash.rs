//! A crash never hands out a ticket number twice: the real `anticamera` binary, a state file, a
//! surge of newcomers, `kill -9` at a random moment, a restart on the same state file, more
//! newcomers. Every number is distinct, and everyone who was waiting still holds their number
//! with nobody who came later ahead of them.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One answer: status, the `Set-Cookie` values (name=value), the JSON body if any.
struct Answer {
    status: u16,
    cookies: Vec<String>,
    json: Option<serde_json::Value>,
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Option<Answer> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\
             User-Agent: crash-test\r\n{cookie}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.get(9..12)?.parse().ok()?;
        let cookies = head
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("set-cookie")
                    .then(|| v.trim().split(';').next().unwrap_or("").to_string())
            })
            .collect();
        Some(Answer {
            status,
            cookies,
            json: serde_json::from_str(body).ok(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .ok()
        .flatten()
}

struct Anticamera {
    child: Child,
}

impl Drop for Anticamera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(config: &Path, addr: SocketAddr, admin: SocketAddr) -> Anticamera {
    let child = Command::new(env!("CARGO_BIN_EXE_anticamera"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a = Anticamera { child };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = get(admin, "/healthz", None).await {
            if r.status == 200 && TcpStream::connect(addr).await.is_ok() {
                return a;
            }
        }
        assert!(Instant::now() < deadline, "anticamera did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A person who got a number: the number and the ticket cookie.
#[derive(Clone, Debug)]
struct Person {
    number: u64,
    cookie: String,
}

/// Newcomers arriving from `tasks` connections at once until `stop`; every number handed out
/// (and received) is recorded. Also counts the honest "come back in a second" answers.
async fn surge(
    addr: SocketAddr,
    tasks: usize,
    stop: Arc<AtomicBool>,
    people: Arc<Mutex<Vec<Person>>>,
    busy: Arc<Mutex<u64>>,
) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (stop, people, busy) = (stop.clone(), people.clone(), busy.clone());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Some(a) = get(addr, "/claim", None).await else {
                    // Killed: connection refused or cut.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let number = a
                    .json
                    .as_ref()
                    .and_then(|j| j.get("number"))
                    .and_then(|n| n.as_u64());
                match number {
                    Some(number) => {
                        assert_eq!(a.status, 503, "a newcomer waits");
                        let cookie = a.cookies.first().cloned().expect("a ticket cookie");
                        people.lock().unwrap().push(Person { number, cookie });
                    }
                    None => {
                        let j = a.json.unwrap_or_default();
                        assert_eq!(
                            (a.status, j["error"].as_str()),
                            (503, Some("queue_busy")),
                            "without a number, only the honest retry: {j}"
                        );
                        *busy.lock().unwrap() += 1;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_surge_never_repeats_a_number_and_keeps_everyone_s_place() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("anticamera.toml");
    // Everybody queues; two are admitted at the first tick and their places stay held for the
    // whole test (arrival_timeout), so `serving` stays put once started and positions compare.
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nworkers = 2\n\
             [upstream]\nurls = [\"http://127.0.0.1:1\"]\n\
             [admin]\nlisten = \"{admin}\"\n\
             [log]\nlevel = \"warn\"\n\
             [waiting_room]\nstate_file = \"state.json\"\nsnapshot_interval = \"300ms\"\n\
             keys = [{{ id = 1, secret = \"crash-test-key-0123456789abcdef0123456789\" }}]\n\
             [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 2\n\
             mode = \"queue_all\"\narrival_timeout = \"10m\"\n"
        ),
    )
    .unwrap();

    let mut before: Vec<Person> = Vec::new();
    let mut busy_total = 0;
    let mut kills = Vec::new();
    // Two lives cut by kill -9 at a random moment of a surge, then a third that survives.
    for life in 0..3 {
        let proxy = start(&config, addr, admin).await;
        let stop = Arc::new(AtomicBool::new(false));
        let people = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(Mutex::new(0));
        let crowd = tokio::spawn(surge(addr, 8, stop.clone(), people.clone(), busy.clone()));
        let mut proxy = proxy;
        let after_ms = if life < 2 {
            rand::random::<u64>() % 700 + 100
        } else {
            400
        };
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        if life < 2 {
            // SIGKILL, mid-surge: no shutdown, no last snapshot.
            proxy.child.kill().unwrap();
            proxy.child.wait().unwrap();
            kills.push(after_ms);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop.store(true, Ordering::Relaxed);
        crowd.await.unwrap();
        let got = std::mem::take(&mut *people.lock().unwrap());
        busy_total += *busy.lock().unwrap();
        assert!(!got.is_empty(), "life {life}: the surge got numbers");
        let highest_before = before.iter().map(|p| p.number).max().unwrap_or(0);
        let lowest_now = got.iter().map(|p| p.number).min().unwrap();
        assert!(
            lowest_now > highest_before,
            "life {life}: numbers resume past every number handed out before ({lowest_now} <= {highest_before})"
        );
        before.extend(got);
        if life == 2 {
            // Everyone, from every life, polls the surviving process with their cookie.
            let mut seen: BTreeMap<u64, (String, u64)> = BTreeMap::new();
            for p in &before {
                let a = get(addr, "/.anticamera/status?gate=claims", Some(&p.cookie))
                    .await
                    .expect("status answered");
                let j = a.json.expect("status JSON");
                assert_eq!(
                    j["number"].as_u64(),
                    Some(p.number),
                    "their number is still theirs: {j}"
                );
                let state = j["state"].as_str().unwrap().to_string();
                let ahead = j["ahead"].as_u64().unwrap_or(0);
                seen.insert(p.number, (state, ahead));
            }
            // Nobody who came later is ahead of anyone who came before.
            let waiting: Vec<(u64, u64)> = seen
                .iter()
                .filter(|(_, (s, _))| s == "waiting")
                .map(|(n, (_, a))| (*n, *a))
                .collect();
            assert!(
                waiting.len() + 2 >= before.len(),
                "all but the two admitted wait"
            );
            for w in waiting.windows(2) {
                assert!(
                    w[0].1 < w[1].1,
                    "number {} has {} ahead, number {} has {}",
                    w[0].0,
                    w[0].1,
                    w[1].0,
                    w[1].1
                );
            }
        }
        if life == 2 {
            // A clean stop (SIGTERM) leaves no gap: numbering resumes right after the last.
            let pid = proxy.child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            assert!(proxy.child.wait().unwrap().success());
            let again = start(&config, addr, admin).await;
            let a = get(addr, "/claim", None).await.unwrap();
            let highest = before.iter().map(|p| p.number).max().unwrap();
            assert_eq!(
                a.json.unwrap()["number"].as_u64(),
                Some(highest + 1),
                "after a clean stop, no gap"
            );
            drop(again);
        }
        drop(proxy);
    }
    let distinct: HashSet<u64> = before.iter().map(|p| p.number).collect();
    assert_eq!(distinct.len(), before.len(), "no number handed out twice");
    assert!(
        dir.path().join("state.json.tickets").exists(),
        "the ticket file is kept"
    );
    eprintln!(
        "{} numbers over three lives (killed after {kills:?} ms), {busy_total} asked to retry",
        before.len()
    );
}
