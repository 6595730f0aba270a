//! The Redis store under the gate, against a real redis-server (scripts/setup-redis): several
//! "nodes" (each its own `Fleet`, as separate processes would have) over one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use anticamera::store::redis::{Fleet, RedisStore};
use anticamera::store::{StoreConfig, StoreKind};
use anticamera::waitroom::{AdmissionStore, Arrival, Gate, GateSettings, Mode, Occupant};
use common::RedisServer;

fn cfg(r: &RedisServer, node: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Redis,
        url: Some(r.url()),
        node_id: Some(node.into()),
        ..StoreConfig::default()
    }
}

fn settings(capacity: u32) -> GateSettings {
    GateSettings {
        capacity,
        mode: Mode::Open,
        ..GateSettings::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until `f` holds (polling every 10 ms), failing after `within`.
fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn who(ticket: u64, visitor: u64) -> Occupant {
    Occupant {
        ticket,
        visitor,
        binding: 1,
    }
}

/// Nodes `names` on `r`, each with gate `claims` of `capacity` over its lane, past the grace
/// and with one leader (its index).
fn nodes(r: &RedisServer, names: &[&str], capacity: u32) -> (Vec<Fleet>, Vec<Gate>, usize) {
    let fleets: Vec<Fleet> = names
        .iter()
        .map(|n| Fleet::start(&cfg(r, n)).unwrap())
        .collect();
    let gates: Vec<Gate> = fleets
        .iter()
        .map(|f| {
            Gate::with_store(
                &settings(capacity),
                Box::new(f.lane("claims", "all")),
                now(),
            )
        })
        .collect();
    settle();
    until(Duration::from_secs(3), "one leader", || {
        fleets.iter().filter(|f| f.is_leader()).count() == 1
    });
    let leader = fleets.iter().position(|f| f.is_leader()).unwrap();
    (fleets, gates, leader)
}

/// Waits past the grace of a new epoch (a fresh Redis is one).
fn settle() {
    std::thread::sleep(Duration::from_millis(
        anticamera::store::redis::GRACE_MS + 150,
    ));
}

#[test]
fn three_nodes_share_one_line_one_capacity_and_one_leader() {
    let r = RedisServer::start();
    let (_fleets, gates, leader) = nodes(&r, &["a", "b", "c"], 3);

    // Arrivals spread round-robin: the first three are let in directly (nobody waits, room),
    // the rest queue, with one ticket order across the nodes.
    let mut tickets = Vec::new();
    let mut admitted = Vec::new();
    for i in 0..9u64 {
        match gates[(i % 3) as usize].arrive(100 + i, 1, now()) {
            Arrival::Admitted { ticket, .. } => {
                admitted.push(ticket);
                tickets.push(ticket)
            }
            Arrival::Queued { ticket } => tickets.push(ticket),
            Arrival::Unnumbered => panic!("no number"),
        }
    }
    assert_eq!(
        tickets,
        (1..=9).collect::<Vec<_>>(),
        "one order across nodes"
    );
    assert_eq!(admitted, vec![1, 2, 3], "capacity 3 holds across the fleet");
    for g in &gates {
        // Every node's mirror catches up within a sync.
        until(Duration::from_millis(500), "mirror", || {
            g.serving() == 4 && g.next_ticket() == 10 && g.stats().active == 3
        });
    }

    // Nobody is admitted while the room is full, whichever node ticks.
    for g in &gates {
        g.tick(now());
    }
    assert_eq!(gates[0].serving(), 4);

    // Ticket 1 leaves through node b (its slot is node a's): the leader admits ticket 4, and
    // ticket 4 claims on a node that is not the leader.
    assert!(
        gates[1].release(u32::MAX, 1),
        "released fleet-wide from another node"
    );
    assert!(!gates[2].release(u32::MAX, 1), "released once");
    // Non-leaders do not admit.
    for (i, g) in gates.iter().enumerate() {
        if i != leader {
            assert_eq!(g.tick(now()).admitted, 0);
        }
    }
    assert_eq!(gates[leader].tick(now()).admitted, 1);
    let other = (leader + 1) % 3;
    until(Duration::from_millis(500), "mirror", || {
        gates[other].serving() == 5
    });
    assert!(gates[other].status(4).admitted);
    assert_eq!(gates[other].stats().pending, 1);
    let slot = gates[other].claim(who(4, 104), now()).unwrap();
    // The pass is honoured on every node (the third one has no slot for it).
    for g in &gates {
        g.touch(slot, who(4, 104), now(), now()).unwrap();
    }
    // A copied pass (another client) is refused on a node that knows the ticket's client.
    let third = (other + 1) % 3;
    assert!(gates[third].touch(slot, who(4, 999), now(), now()).is_err());
    // A claim of the same ticket by another client is refused fleet-wide.
    assert!(gates[third].claim(who(4, 999), now()).is_err());

    // Its page polling another node while the room is full: inside, not late.
    until(Duration::from_millis(500), "mirror", || {
        gates[third].stats().active == 3 && gates[third].stats().pending == 0
    });
    assert_eq!(
        gates[third].turn(4, now()),
        anticamera::waitroom::Turn::Ready
    );
    assert_eq!(r.cmd("ZCARD anticamera:lane:claims:all:late"), ":0");
    // Still full: ticket 5 waits.
    assert_eq!(gates[leader].tick(now()).admitted, 0);
    assert!(!gates[0].status(5).admitted);
    until(Duration::from_millis(500), "occupied", || {
        gates
            .iter()
            .all(|g| g.stats().active == 3 && g.stats().pending == 0)
    });
}

#[test]
fn the_lease_moves_when_the_leader_stops_or_dies() {
    let r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    until(Duration::from_secs(2), "a leads", || a.is_leader());
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(a.is_leader() && !b.is_leader(), "one leader at a time");
    // A clean stop gives the lease up at once.
    a.stop();
    assert!(!a.is_leader());
    // (Bounds 2-3 times what an idle machine takes: other tests may run alongside.)
    let took = until(Duration::from_secs(3), "b takes over", || b.is_leader());
    assert!(took < Duration::from_millis(1_250), "{took:?}");
    // A leader that dies without a word (here: a lease written by a node that is gone): the
    // lease lapses and b takes over within the lease's time to live.
    b.stop();
    assert_eq!(r.cmd("SET anticamera:leader ghost PX 1500"), "+OK");
    let c = Fleet::start(&cfg(&r, "c")).unwrap();
    assert!(!c.is_leader());
    let took = until(Duration::from_secs(6), "c takes over", || c.is_leader());
    assert!(took <= Duration::from_millis(4_000), "{took:?}");
    assert_eq!(r.cmd("GET anticamera:leader"), "c");
}

#[test]
fn counters_never_go_backwards_when_redis_comes_back_empty() {
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    let sa: RedisStore = a.lane("claims", "all");
    let sb: RedisStore = b.lane("claims", "all");
    settle();
    let mut seen = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { &sa } else { &sb };
        seen.push(s.take_ticket(u64::MAX).unwrap());
    }
    assert!(sa.advance_serving(sa.serving(), 8) || sb.advance_serving(1, 8));
    // b's mirror knows the highest number within a sync.
    until(Duration::from_millis(500), "mirror", || {
        sb.next_ticket() == 21 && sb.serving() == 8
    });
    // Redis restarted empty.
    r.wipe();
    r.restart();
    // Nobody hands out a number until the fleet has resynced...
    until(Duration::from_secs(2), "back up", || a.is_up() && b.is_up());
    // ...and then none is handed out twice, and serving is where it was.
    let t0 = Instant::now();
    let mut after = Vec::new();
    while after.len() < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "no numbers after the restart"
        );
        let s = if after.len() % 2 == 0 { &sb } else { &sa };
        if let Some(t) = s.take_ticket(u64::MAX) {
            after.push(t);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(
        after.iter().all(|t| !seen.contains(t)),
        "{after:?} vs {seen:?}"
    );
    assert_eq!(after[0], 21, "{after:?}");
    assert_eq!(r.cmd("GET anticamera:lane:claims:all:serving"), "8");
}

#[test]
fn an_unreachable_redis_closes_admissions_without_a_panic_and_they_resume() {
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let g = Gate::with_store(&settings(2), Box::new(a.lane("claims", "all")), now());
    settle();
    let Arrival::Admitted { ticket: 1, slot } = g.arrive(1, 1, now()) else {
        panic!("first arrival admitted");
    };
    r.kill();
    // Everything that needs Redis fails at once (closed): no number, no claim, no admission.
    let t0 = Instant::now();
    assert_eq!(g.arrive(2, 1, now()), Arrival::Unnumbered);
    assert_eq!(g.arrive(3, 1, now()), Arrival::Unnumbered);
    assert_eq!(g.tick(now()).admitted, 0);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(!a.is_up());
    // The person inside keeps their pass.
    g.touch(slot, who(1, 1), now(), now()).unwrap();
    // Redis back (empty): the line resumes after the resync, numbers after the ones seen.
    r.restart();
    until(Duration::from_secs(2), "up", || a.is_up());
    let t0 = Instant::now();
    loop {
        // The controller's tick (every 200 ms, within the resync grace) re-reports the
        // session this node knows before anyone new can be let in.
        g.tick(now());
        match g.arrive(4, 1, now()) {
            Arrival::Unnumbered => {
                assert!(t0.elapsed() < Duration::from_secs(3));
                std::thread::sleep(Duration::from_millis(20));
            }
            Arrival::Admitted { ticket, .. } | Arrival::Queued { ticket } => {
                assert_eq!(ticket, 2);
                break;
            }
        }
    }
    // The session inside was re-reported by the node that knows it: capacity 2 holds.
    let score = r.cmd("ZSCORE anticamera:lane:claims:all:sessions 1");
    assert!(!score.is_empty(), "session 1 taken back in");
    assert_eq!(r.cmd("ZCARD anticamera:lane:claims:all:sessions"), ":2");
    assert!(matches!(
        g.arrive(5, 1, now()),
        Arrival::Queued { ticket: 3 }
    ));
}

#[test]
fn open_local_admits_each_nodes_share_during_an_outage_and_the_store_takes_them_in() {
    let mut r = RedisServer::start();
    let open_local = |node: &str| StoreConfig {
        fail_mode: anticamera::store::FailMode::OpenLocal,
        ..cfg(&r, node)
    };
    let a = Fleet::start(&open_local("a")).unwrap();
    let b = Fleet::start(&open_local("b")).unwrap();
    let ga = Gate::with_store(&settings(4), Box::new(a.lane("claims", "all")), now());
    let gb = Gate::with_store(&settings(4), Box::new(b.lane("claims", "all")), now());
    settle();
    // Both nodes seen alive: each may hold 4 / 2 = 2 people on its own.
    r.kill();
    until(Duration::from_secs(2), "down", || !a.is_up() && !b.is_up());
    let mut let_in = Vec::new();
    for (g, base) in [(&ga, 10), (&gb, 20)] {
        for i in 0..3u64 {
            match g.arrive(base + i, 1, now()) {
                Arrival::Admitted { ticket, slot } => let_in.push((ticket, slot, base + i)),
                a => assert_eq!(a, Arrival::Unnumbered, "past the share: come back"),
            }
        }
    }
    assert_eq!(let_in.len(), 4, "2 per node: {let_in:?}");
    let numbers: std::collections::HashSet<u64> = let_in.iter().map(|t| t.0).collect();
    assert_eq!(numbers.len(), 4, "numbers distinct across nodes");
    assert!(numbers
        .iter()
        .all(|t| *t >= anticamera::waitroom::store::OUTAGE_MIN));
    // Their passes are honoured on both nodes.
    for &(t, slot, visitor) in &let_in {
        ga.touch(slot, who(t, visitor), now(), now()).unwrap();
        gb.touch(slot, who(t, visitor), now(), now()).unwrap();
    }
    // Redis back: the sessions opened meanwhile are taken in (the room is full), and the
    // line's numbers resume.
    r.restart();
    until(Duration::from_secs(2), "up", || a.is_up() && b.is_up());
    std::thread::sleep(Duration::from_millis(anticamera::store::redis::GRACE_MS));
    ga.tick(now());
    gb.tick(now());
    assert_eq!(r.cmd("ZCARD anticamera:lane:claims:all:sessions"), ":4");
    until(Duration::from_secs(2), "mirror", || ga.stats().active == 4);
    let t0 = Instant::now();
    loop {
        match ga.arrive(99, 1, now()) {
            Arrival::Queued { ticket } => {
                assert!(ticket < 1000, "{ticket}");
                break;
            }
            Arrival::Unnumbered => {
                assert!(t0.elapsed() < Duration::from_secs(3));
                std::thread::sleep(Duration::from_millis(20));
            }
            a => panic!("the room is full: {a:?}"),
        }
    }
}

#[test]
fn every_store_operation_runs_against_redis() {
    // Each script at least once, checked by its result (a Lua error would only be logged).
    let r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let s = a.lane("claims", "all");
    settle();
    assert_eq!(s.take_ticket(3), Some(1));
    assert_eq!(s.take_ticket(3), Some(2));
    assert_eq!(s.take_ticket(3), None, "bounded by the ceiling");
    assert_eq!(s.next_ticket(), 3);
    assert!(!s.advance_serving(2, 3), "compare-and-set: serving is 1");
    assert!(s.advance_serving(1, 2));
    assert!(!s.advance_serving(2, 9), "never past next");
    assert_eq!(s.serving(), 2);
    assert_eq!(s.reserve(5, 3), 3);
    assert_eq!(s.reserve(1, 3), 0);
    s.unreserve(2);
    assert_eq!(s.occupied(), 1);
    s.unreserve(9);
    assert_eq!(s.occupied(), 0);
    assert_eq!(s.late_arrive(7, 1_000), 0);
    assert_eq!(s.late_arrive(3, 1_001), 1);
    assert_eq!(s.late_arrive(7, 1_002), 0, "a visit keeps its place");
    until(Duration::from_millis(500), "late_len", || s.late_len() == 2);
    assert_eq!(s.late_first(5), vec![7, 3]);
    assert!(s.late_leave(7));
    // The head the mirror read is not used once this node changed the line.
    assert_eq!(s.late_first(5), vec![3]);
    assert!(!s.late_leave(7));
    assert_eq!(
        s.late_expire(1_001 + anticamera::waitroom::late::LATE_IDLE_MS + 1),
        1
    );
    s.late_arrive(9, 5_000);
    s.late_clear();
    assert!(s.late_first(5).is_empty());
    s.restore(anticamera::waitroom::store::StoreCounters {
        next_ticket: 50,
        serving: 40,
        occupied: 0,
    });
    assert_eq!((s.next_ticket(), s.serving()), (50, 40), "raised");
    assert_eq!(r.cmd("GET anticamera:lane:claims:all:next"), "50");
    s.restore(anticamera::waitroom::store::StoreCounters {
        next_ticket: 5,
        serving: 4,
        occupied: 0,
    });
    assert_eq!((s.next_ticket(), s.serving()), (50, 40), "never lowered");
}

#[test]
fn a_late_arrival_waits_in_one_late_line_across_nodes() {
    let r = RedisServer::start();
    let fa = Fleet::start(&cfg(&r, "a")).unwrap();
    until(Duration::from_secs(2), "a leads", || fa.is_leader());
    let fb = Fleet::start(&cfg(&r, "b")).unwrap();
    let s = GateSettings {
        arrival_timeout: Duration::from_millis(200),
        ..settings(1)
    };
    let ga = Gate::with_store(&s, Box::new(fa.lane("claims", "all")), now());
    let gb = Gate::with_store(&s, Box::new(fb.lane("claims", "all")), now());
    settle();
    let Arrival::Admitted { ticket: 1, slot } = ga.arrive(1, 1, now()) else {
        panic!("room: let in")
    };
    assert_eq!(gb.arrive(2, 1, now()), Arrival::Queued { ticket: 2 });
    assert!(gb.release(slot, 1));
    assert_eq!(ga.tick(now()).admitted, 1, "the leader admits 2");
    // 2 does not come within its arrival timeout: its place is given up...
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ga.tick(now()).abandoned, 1);
    // ...and taken by a newcomer let in directly.
    until(Duration::from_millis(500), "mirror", || {
        gb.stats().pending == 0
    });
    let Arrival::Admitted { ticket: 3, slot } = gb.arrive(3, 1, now()) else {
        panic!("free room and nobody waiting")
    };
    // 2 comes back to node b, then polls node a: one late line, first in it.
    assert_eq!(
        gb.claim(who(2, 2), now()),
        Err(anticamera::waitroom::ClaimError::Late { ahead: 0 })
    );
    // (node a's mirror sees the room full within a sync)
    until(Duration::from_millis(500), "mirror", || {
        ga.stats().active == 1
    });
    assert_eq!(
        ga.turn(2, now()),
        anticamera::waitroom::Turn::Late { ahead: 0 }
    );
    until(Duration::from_millis(500), "late on both", || {
        ga.stats().late == 1 && gb.stats().late == 1
    });
    // A newcomer does not pass them: the free place is kept for the late line.
    assert!(gb.release(slot, 3));
    until(Duration::from_millis(500), "mirror", || {
        ga.stats().active == 0 && gb.stats().active == 0
    });
    assert_eq!(ga.arrive(4, 1, now()), Arrival::Queued { ticket: 4 });
    assert_eq!(ga.late_to_wake(), vec![2]);
    // 2 takes it on node a and leaves the late line.
    ga.claim(who(2, 2), now()).unwrap();
    until(Duration::from_millis(500), "late line empty", || {
        ga.stats().late == 0 && gb.stats().late == 0
    });
    assert_eq!(
        ga.tick(now()).admitted,
        0,
        "the room is full again: 4 waits"
    );
}

#[test]
fn a_redis_restarted_with_its_data_is_a_new_epoch_too() {
    // Persistence may lose the last writes (appendfsync everysec), and a promoted replica may
    // lag: any new Redis process gets the same resync as an empty one.
    let mut r = RedisServer::start_with(true);
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let s = a.lane("claims", "all");
    settle();
    for want in 1..=5 {
        assert_eq!(s.take_ticket(u64::MAX), Some(want));
    }
    let epoch = r.cmd("GET anticamera:epoch");
    assert!(!epoch.is_empty());
    r.restart();
    assert_eq!(
        r.cmd("GET anticamera:lane:claims:all:next"),
        "6",
        "data kept"
    );
    until(Duration::from_secs(2), "new epoch", || {
        let e = r.cmd("GET anticamera:epoch");
        !e.is_empty() && e != epoch
    });
    // Fenced while the fleet resyncs, then the numbers go on.
    assert_eq!(s.take_ticket(u64::MAX), None, "no number during the grace");
    let t0 = Instant::now();
    let t = loop {
        if let Some(t) = s.take_ticket(u64::MAX) {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(t, 6);
}

/// Two in-process nodes with a pre-queue drawn at random at opening.
fn prequeue_node(r: &RedisServer, node: &str, portal: std::net::SocketAddr) -> common::Proxy {
    common::proxy_from(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{portal}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"prequeue-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 3\n\
         [gates.schedule]\nprequeue = \"15m\"\nprequeue_order = \"random\"\n\
         [[gates.schedule.windows]]\nstart = \"16:00\"\nend = \"18:00\"\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nnode_id = \"{node}\"\n",
        r.url()
    ))
}

async fn ask(addr: std::net::SocketAddr, path: &str, jar: &mut common::Jar) -> serde_json::Value {
    let mut b =
        http::Request::get(format!("http://{addr}{path}")).header("accept", "application/json");
    if let Some(c) = jar.header() {
        b = b.header("cookie", c);
    }
    let (_, h, body) = common::send(b.body(common::full("")).unwrap()).await;
    jar.absorb(&h);
    // The portal's own answer is not JSON: Null.
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prequeue_draw_at_opening_is_the_same_on_every_node() {
    let r = RedisServer::start();
    let portal = common::slow_upstream(Duration::ZERO, "portal").await;
    let (a, b) = (
        prequeue_node(&r, "a", portal.addr),
        prequeue_node(&r, "b", portal.addr),
    );
    for p in [&a, &b] {
        p.clock().freeze_at(common::rome(2026, 4, 2, 15, 50));
        p.tick();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut jars = Vec::new();
    for i in 0..24 {
        let mut jar = common::Jar::default();
        let node = if i % 2 == 0 { &a } else { &b };
        let v = ask(node.addr, "/claim", &mut jar).await;
        assert_eq!(v["state"], "prequeue", "{v}");
        jars.push(jar);
    }
    // Opening: both nodes' controllers draw; the first draw is everyone's.
    for p in [&a, &b] {
        p.clock().freeze_at(common::rome(2026, 4, 2, 16, 0));
    }
    a.tick();
    b.tick();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut on_a = Vec::new();
    for jar in jars.iter_mut() {
        let va = ask(a.addr, "/.anticamera/status?gate=claims", jar).await;
        let vb = ask(b.addr, "/.anticamera/status?gate=claims", jar).await;
        assert_eq!(
            (va["state"].clone(), va["number"].clone()),
            (vb["state"].clone(), vb["number"].clone()),
            "{va} vs {vb}"
        );
        on_a.push(va["number"].as_u64().unwrap_or(0));
    }
    let mut sorted = on_a.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (1..=24).collect::<Vec<_>>(),
        "a permutation: {on_a:?}"
    );
    assert_ne!(
        on_a,
        (1..=24).collect::<Vec<_>>(),
        "drawn, not arrival order"
    );
    // A node that starts after the opening takes the same draw.
    let c = prequeue_node(&r, "c", portal.addr);
    c.clock().freeze_at(common::rome(2026, 4, 2, 16, 0));
    for (jar, n) in jars.iter_mut().zip(&on_a) {
        let v = ask(c.addr, "/.anticamera/status?gate=claims", jar).await;
        assert_eq!(v["number"].as_u64().unwrap_or(0), *n, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_long_poll_on_another_node_wakes_when_the_leader_admits() {
    let r = RedisServer::start();
    let portal = common::upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let mut b = http::Response::builder();
        if req.uri().path() == "/claim/done" {
            b = b.header("x-anticamera-release", "1");
        }
        b.body(common::full("portal")).unwrap()
    })
    .await;
    // Controller ticks 5 s apart: only the mirror can wake the poll in time.
    let node = |id: &str| {
        common::proxy_from(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurls = [\"http://{}\"]\n\
             [waiting_room]\ntick = \"5s\"\n\
             keys = [{{ id = 1, secret = \"longpoll-test-key-0123456789abcdef0123\" }}]\n\
             [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 1\n\
             [store]\nkind = \"redis\"\nurl = \"{}\"\nnode_id = \"{id}\"\n",
            portal.addr,
            r.url()
        ))
    };
    let (a, b) = (node("a"), node("b"));
    // A fresh Redis is a new epoch: writes wait out its grace (two 5 s ticks).
    tokio::time::sleep(Duration::from_millis(
        anticamera::store::redis::grace_ms(Duration::from_secs(5)) + 200,
    ))
    .await;
    let (leader, other) = if r.cmd("GET anticamera:leader") == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let mut p1 = common::Jar::default();
    let v = ask(leader.addr, "/claim", &mut p1).await;
    assert!(
        v.is_null(),
        "let in directly (the portal's answer is not JSON): {v}"
    );
    let mut p2 = common::Jar::default();
    let v = ask(other.addr, "/claim", &mut p2).await;
    assert_eq!(v["state"], "waiting", "{v}");
    // p2 holds a poll on the other node; p1 leaves through the leader, which admits p2 at once.
    let poll = {
        let addr = other.addr;
        let mut jar = p2.clone();
        tokio::spawn(async move {
            let v = ask(addr, "/.anticamera/status?gate=claims&wait=10", &mut jar).await;
            (v, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let v = ask(leader.addr, "/claim/done", &mut p1).await;
    assert!(v.is_null());
    let (v, answered) = poll.await.unwrap();
    assert_eq!(v["state"], "admitted", "{v}");
    let took = answered.duration_since(t0);
    // Well under the 5 s tick (2-3 times what an idle machine takes).
    assert!(took < Duration::from_millis(1_250), "woke after {took:?}");
    // p2 comes in on the other node; their pass works on the leader too, but not copied to
    // another client (another User-Agent), even on a node that never saw the pass before.
    let v = ask(other.addr, "/claim", &mut p2).await;
    assert!(v.is_null(), "in: {v}");
    let v = ask(leader.addr, "/claim/page", &mut p2).await;
    assert!(v.is_null(), "the pass is honoured on the other node: {v}");
    let c = common::proxy_from(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{}\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"longpoll-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"claims\"\nprefix = [\"/claim\"]\ncapacity = 1\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nnode_id = \"c\"\n",
        portal.addr,
        r.url()
    ));
    let copied = http::Request::get(format!("http://{}/claim/page", c.addr))
        .header("accept", "application/json")
        .header("user-agent", "another-browser")
        .header("cookie", p2.header().unwrap())
        .body(common::full(""))
        .unwrap();
    let (st, _, body) = common::send(copied).await;
    assert_eq!(st, 503, "a copied pass is refused: {body}");
    // The owner's own requests still go through on that node.
    let v = ask(c.addr, "/claim/page", &mut p2).await;
    assert!(v.is_null(), "{v}");
}

#[test]
fn a_rate_cap_holds_for_the_fleet_not_per_node() {
    let r = RedisServer::start();
    let fa = Fleet::start(&cfg(&r, "a")).unwrap();
    until(Duration::from_secs(2), "a leads", || fa.is_leader());
    let fb = Fleet::start(&cfg(&r, "b")).unwrap();
    let s = GateSettings {
        admit_per_minute: 60,
        ..settings(100)
    };
    let ga = Gate::with_store(&s, Box::new(fa.lane("claims", "all")), now());
    let gb = Gate::with_store(&s, Box::new(fb.lane("claims", "all")), now());
    settle();
    let mut direct = Vec::new();
    for i in 0..10u64 {
        let (g, node) = if i % 2 == 0 { (&ga, "a") } else { (&gb, "b") };
        if let Arrival::Admitted { ticket, .. } = g.arrive(i, 1, now()) {
            direct.push((ticket, node));
        }
    }
    // 60 a minute with two seconds of burst: at most 2 let in, all by the leader's bucket.
    assert!(!direct.is_empty() && direct.len() <= 2, "{direct:?}");
    assert!(direct.iter().all(|(_, n)| *n == "a"), "{direct:?}");
    // The non-leader never admits; the leader's bucket is spent.
    assert_eq!(gb.tick(now()).admitted, 0);
    assert_eq!(ga.tick(now()).admitted, 0);
    until(Duration::from_millis(500), "mirror", || {
        gb.serving() == ga.serving()
    });
    assert_eq!(gb.serving() - 1, direct.len() as u64);
}

#[test]
fn a_node_started_while_redis_is_down_joins_when_it_answers() {
    let mut r = RedisServer::start();
    r.kill();
    let t0 = Instant::now();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let g = Gate::with_store(&settings(2), Box::new(a.lane("claims", "all")), now());
    assert!(t0.elapsed() < Duration::from_secs(2), "start does not hang");
    assert!(!a.is_up() && !a.is_leader());
    assert_eq!(
        g.arrive(1, 1, now()),
        Arrival::Unnumbered,
        "closed: nobody new"
    );
    r.restart();
    until(Duration::from_secs(2), "joined", || {
        a.is_up() && a.is_leader()
    });
    let t0 = Instant::now();
    loop {
        match g.arrive(1, 1, now()) {
            Arrival::Admitted { ticket: 1, .. } => break,
            // The grace ended between the direct admission (refused) and the number: the
            // leader lets them in at its tick.
            Arrival::Queued { ticket: 1 } => {
                g.tick(now());
                assert!(g.status(1).admitted);
                break;
            }
            Arrival::Unnumbered => {
                assert!(t0.elapsed() < Duration::from_secs(3));
                std::thread::sleep(Duration::from_millis(20));
            }
            a => panic!("{a:?}"),
        }
    }
}

#[test]
fn a_leak_guard_binding_in_use_outlives_its_idle_time_for_a_node_that_never_saw_it() {
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    let idle = 300;
    assert_eq!(a.bind_session(7, 1, idle), Some(true));
    // Node a serves the session from its own table for three idle times, refreshing the
    // fleet's binding as the leak guard does (a quarter of the idle time apart).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(3 * idle) {
        a.queue_binding(7, 1, idle);
        std::thread::sleep(Duration::from_millis(idle / 4));
    }
    // A node that has never seen the session cannot bind it to someone else.
    assert_eq!(b.bind_session(7, 2, idle), Some(false));
    assert_eq!(b.bind_session(7, 1, idle), Some(true));

    // A binding made while Redis did not answer is written when it does.
    r.kill();
    until(Duration::from_secs(2), "down", || !a.is_up());
    assert_eq!(a.bind_session(8, 1, 60_000), None);
    a.queue_binding(8, 1, 60_000);
    r.restart();
    until(Duration::from_secs(3), "written", || {
        b.bind_session(8, 2, 60_000) == Some(false)
    });
}

#[test]
fn an_admin_change_after_redis_came_back_empty_applies_on_every_node() {
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    let _la = a.lane("claims", "all");
    let _lb = b.lane("claims", "all");
    for sw in ["paused", "queue_all", "paused"] {
        assert!(a.publish_admin("claims", Some(sw), None, None));
    }
    let mut got = (None, None);
    until(Duration::from_secs(2), "both follow", || {
        if let Some(x) = a.take_admin("claims") {
            got.0 = Some(x);
        }
        if let Some(x) = b.take_admin("claims") {
            got.1 = Some(x);
        }
        got.0.as_ref().is_some_and(|x| x.version == 3)
            && got.1.as_ref().is_some_and(|x| x.version == 3)
    });
    // Redis restarted empty; then one change on b.
    r.wipe();
    r.restart();
    until(Duration::from_secs(3), "back up", || a.is_up() && b.is_up());
    settle();
    assert!(b.publish_admin("claims", Some("open"), Some(7), None));
    let mut after = (None, None);
    until(Duration::from_secs(2), "both apply it", || {
        if let Some(x) = a.take_admin("claims") {
            after.0 = Some(x);
        }
        if let Some(x) = b.take_admin("claims") {
            after.1 = Some(x);
        }
        after.0.as_ref().is_some_and(|x| x.switch == "open")
            && after.1.as_ref().is_some_and(|x| x.switch == "open")
    });
    let (x, y) = (after.0.unwrap(), after.1.unwrap());
    assert_eq!((x.capacity, y.capacity), (Some(7), Some(7)));
    assert!(x.version > 3, "{x:?}");
}

#[test]
fn after_redis_came_back_empty_a_copied_ticket_from_another_client_is_not_placed() {
    use anticamera::waitroom::ClaimError;
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    let ga = Gate::with_store(&settings(5), Box::new(a.lane("claims", "all")), now());
    let gb = Gate::with_store(&settings(5), Box::new(b.lane("claims", "all")), now());
    settle();
    let Arrival::Admitted { ticket: t1, .. } = ga.arrive(100, 1, now()) else {
        panic!("not let in")
    };
    let Arrival::Admitted {
        ticket: t2,
        slot: s2,
    } = ga.arrive(101, 1, now())
    else {
        panic!("not let in")
    };
    // t2's session ends through node a (the portal's release).
    assert!(ga.release(s2, t2));
    // Redis restarted empty; the nodes re-report what they know, node a with the owners.
    r.wipe();
    r.restart();
    until(Duration::from_secs(3), "back up", || a.is_up() && b.is_up());
    let key = format!("ZSCORE anticamera:lane:claims:all:sessions {t1}");
    until(Duration::from_secs(5), "t1 taken back in", || {
        ga.tick(now());
        gb.tick(now());
        !r.cmd(&key).is_empty()
    });
    settle();
    // Copies of both tickets, from another client, on node b.
    let c1 = gb.claim(who(t1, 999), now());
    assert!(matches!(c1, Err(ClaimError::BoundElsewhere)), "{c1:?}");
    let c2 = gb.claim(who(t2, 998), now());
    assert!(c2.is_err(), "a released ticket is not placed again: {c2:?}");
    // The owner itself still is.
    assert!(gb.claim(who(t1, 100), now()).is_ok());
}

#[test]
fn the_resync_grace_covers_two_ticks_and_two_syncs() {
    use anticamera::store::redis::{grace_ms, GRACE_MS, SYNC_MS};
    assert_eq!(grace_ms(Duration::from_millis(100)), GRACE_MS);
    assert_eq!(grace_ms(Duration::from_secs(1)), 2_000 + 2 * SYNC_MS);
}

#[test]
fn a_redis_that_answers_but_cannot_serve_counts_as_down() {
    let r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let g = Gate::with_store(&settings(5), Box::new(a.lane("claims", "all")), now());
    settle();
    assert!(a.is_up());
    // Out of memory: every write is refused with OOM.
    assert_eq!(r.cmd("CONFIG SET maxmemory-policy noeviction"), "+OK");
    assert_eq!(r.cmd("CONFIG SET maxmemory 1"), "+OK");
    until(Duration::from_secs(2), "down", || !a.is_up());
    assert!(!a.is_leader());
    assert_eq!(g.arrive(1, 1, now()), Arrival::Unnumbered, "closed");
    assert_eq!(r.cmd("CONFIG SET maxmemory 0"), "+OK");
    until(Duration::from_secs(2), "up again", || a.is_up());
}

#[test]
fn a_slow_redis_holds_a_request_path_call_at_most_the_short_deadline() {
    use anticamera::store::redis::REQUEST_TIMEOUT_MS;
    let r = RedisServer::start();
    let a = Fleet::start(&StoreConfig {
        timeout: anticamera::config::Dur(Duration::from_secs(2)),
        ..cfg(&r, "a")
    })
    .unwrap();
    settle();
    assert_eq!(a.bind_session(1, 1, 60_000), Some(true));
    // Redis stalls (a slow command on its one thread): a first binding gives up after the
    // request deadline, not the whole [store] timeout.
    let port = r.port;
    let stall = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A script that spins for a second (Redis serves nobody else meanwhile).
        let lua = "local function ms() local t = redis.call('TIME') \
                   return t[1] * 1000 + t[2] / 1000 end \
                   local s = ms() while ms() < s + 1000 do end return 1";
        let cmd = format!("*3\r\n$4\r\nEVAL\r\n${}\r\n{lua}\r\n$1\r\n0\r\n", lua.len());
        s.write_all(cmd.as_bytes()).unwrap();
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    assert_eq!(a.bind_session(2, 1, 60_000), None);
    assert!(
        t0.elapsed() < Duration::from_millis(3 * REQUEST_TIMEOUT_MS),
        "{:?}",
        t0.elapsed()
    );
    stall.join().unwrap();
    until(Duration::from_secs(3), "up again", || a.is_up());
}

/// The portal's capacity shared by two nodes (`Fleet::share_portal`): split by what each
/// would use, never more than the capacity in all, kept through an outage, and not overdrawn
/// while the nodes re-report their parts to a Redis that came back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portals_capacity_is_split_by_use_kept_through_an_outage_and_never_overdrawn() {
    use anticamera::guard::{Guard, GuardConfig, Priority};
    let mut r = RedisServer::start();
    let guard = || {
        Guard::new(&GuardConfig {
            max_in_flight: 10,
            queue_size: 0,
            ..GuardConfig::default()
        })
    };
    let (ga, gb) = (guard(), guard());
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    a.share_portal(ga.clone(), 10);
    b.share_portal(gb.clone(), 10);
    let parts = || (ga.current_limit(), gb.current_limit());
    // Idle: the capacity split evenly once the new epoch's grace is over.
    until(Duration::from_secs(3), "5 + 5", || parts() == (5, 5));

    // Node a uses all of its part: it wants more than b, and gets what b does not use.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            ga.acquire(Priority::Inside, tokio::time::Instant::now())
                .await
                .unwrap(),
        );
    }
    until(
        Duration::from_secs(2),
        "a grows, b keeps a slot at hand",
        || {
            let (x, y) = parts();
            assert!(x + y <= 10, "{x} + {y}");
            x >= 7 && y >= 1
        },
    );
    let before = parts();

    // Redis forgets the parts (an expired or deleted key, the same epoch): both re-report what
    // they hold, and neither grows into the other's part before it has.
    assert_eq!(r.cmd("DEL anticamera:portal"), ":1");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1_000) {
        let (x, y) = parts();
        assert!(
            x + y <= 10,
            "overdrawn after the parts were forgotten: {x} + {y}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    until(Duration::from_secs(3), "the same parts again", || {
        parts() == before
    });

    // Redis down: each keeps its part (nobody can take it) and nobody grows.
    r.kill();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(600) {
        assert_eq!(parts(), before);
        std::thread::sleep(Duration::from_millis(10));
    }

    // Back empty: both re-report, and at no moment do the parts add up to more than 10 (the
    // first to re-report does not take the capacity the other still holds).
    r.wipe();
    r.restart();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2_000) {
        let (x, y) = parts();
        assert!(x + y <= 10, "overdrawn after the empty restart: {x} + {y}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Growing again waits for 2 s of reports without a gap.
    until(Duration::from_secs(3), "a grows again", || {
        let (x, y) = parts();
        assert!(x + y <= 10, "{x} + {y}");
        x >= 7
    });
    drop(held);

    // A clean stop gives the part back at once: a alone gets all but nothing of b's.
    b.stop();
    until(Duration::from_secs(2), "a takes b's part", || {
        parts().0 >= 9
    });
}

/// A binding one node takes is pushed to the others: their first sight of the session is
/// answered without a round trip (here: with Redis gone), for the binding's user and against
/// anyone else, and only while the binding cannot have lapsed.
#[test]
fn a_binding_taken_on_one_node_is_known_to_the_others_without_a_round_trip() {
    let mut r = RedisServer::start();
    let a = Fleet::start(&cfg(&r, "a")).unwrap();
    let b = Fleet::start(&cfg(&r, "b")).unwrap();
    let c = Fleet::start(&cfg(&r, "c")).unwrap();
    until(Duration::from_secs(2), "up", || {
        a.is_up() && b.is_up() && c.is_up()
    });
    // Every node's subscriber listening (a node that is not yet asks Redis, as before).
    until(Duration::from_secs(2), "listening", || {
        b.listening() && c.listening()
    });
    assert_eq!(a.bind_session(41, 1, 60_000), Some(true));
    assert_eq!(a.bind_session(42, 1, 60_000), Some(true));
    assert_eq!(a.bind_session(43, 1, 200), Some(true));
    // Pushed within milliseconds; then Redis goes away.
    std::thread::sleep(Duration::from_millis(400));
    r.kill();
    until(Duration::from_secs(2), "down", || !b.is_up() && !c.is_up());
    assert_eq!(
        b.bind_session(41, 1, 60_000),
        Some(true),
        "the binding's user"
    );
    assert_eq!(c.bind_session(42, 2, 60_000), Some(false), "someone else");
    // Older than its idle time: it may have lapsed in Redis, so it is not trusted.
    assert_eq!(b.bind_session(43, 2, 200), None);
    // Never pushed: only Redis could say.
    assert_eq!(b.bind_session(44, 1, 60_000), None);
    // A node is not told of its own (its leak guard keeps them).
    assert_eq!(a.bind_session(41, 2, 60_000), None);
}

/// Scripts Redis has run so far (`EVALSHA` calls; the commands inside a script are counted
/// apart).
fn scripts_run(r: &RedisServer) -> u64 {
    let mut c = redis::Client::open(r.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .map_or(0, |v| v.parse().unwrap())
}

/// A flood of page requests near the front reads the lane at most once per
/// `REFRESH_MIN_MS`, not once each.
#[test]
fn refreshes_near_the_front_are_coalesced() {
    let r = RedisServer::start();
    let f = Fleet::start(&cfg(&r, "a")).unwrap();
    let store = f.lane("claims", "all");
    settle();
    let shared = store.shared().unwrap();
    let before = scripts_run(&r);
    let t0 = Instant::now();
    for _ in 0..200 {
        shared.refresh();
    }
    let spent = t0.elapsed().as_millis() as u64;
    let made = scripts_run(&r) - before;
    // The refreshes, and the fleet thread's own scripts meanwhile (the lease and the lane's
    // mirror every 50 ms).
    let most = 1 + spent / anticamera::store::redis::REFRESH_MIN_MS + 4 * (1 + spent / 50);
    assert!(
        made <= most,
        "200 refreshes in {spent} ms ran {made} scripts (at most {most})"
    );
}

/// Redis pushes what the other nodes need at once: an admission reaches every node's mirror
/// (and wakes the long polls there) well within a sync, and a session ended on another node
/// tells the leader, so the next is let in at once; nobody is told of their own.
#[test]
fn admissions_and_releases_are_pushed_to_the_other_nodes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let r = RedisServer::start();
    let (_fleets, gates, l) = nodes(&r, &["a", "b"], 1);
    let o = 1 - l;
    let told: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for (g, t) in gates.iter().zip(&told) {
        let t = t.clone();
        g.on_released(Box::new(move || {
            t.fetch_add(1, Ordering::SeqCst);
        }));
    }
    // One inside, then a line: each release lets the next in, and the other node's mirror
    // sees the admission.
    let first = match gates[o].arrive(1, 1, now()) {
        Arrival::Admitted { ticket, .. } => ticket,
        a => panic!("{a:?}"),
    };
    let mut line = Vec::new();
    for i in 0..10u64 {
        match gates[o].arrive(10 + i, 1, now()) {
            Arrival::Queued { ticket } => line.push(ticket),
            a => panic!("{a:?}"),
        }
    }
    // The leader's mirror knows the line (its next sync).
    let last = *line.last().unwrap();
    until(
        Duration::from_secs(1),
        "the line in the leader's mirror",
        || gates[l].next_ticket() > last,
    );
    let mut inside = first;
    let mut lags = Vec::new();
    for (i, &next) in line.iter().enumerate() {
        // Released on the node that does not lead: the leader is told.
        assert!(gates[o].release(u32::MAX, inside));
        until(Duration::from_secs(1), "the leader told", || {
            told[l].load(Ordering::SeqCst) == i + 1
        });
        assert_eq!(gates[l].admit(now()), 1);
        let t0 = Instant::now();
        until(Duration::from_secs(1), "the other mirror", || {
            gates[o].status(next).admitted
        });
        lags.push(t0.elapsed());
        assert_eq!(
            gates[o].stats().pending,
            1,
            "the place held is in the mirror too"
        );
        gates[o].claim(who(next, 10 + i as u64), now()).unwrap();
        inside = next;
    }
    assert_eq!(told[o].load(Ordering::SeqCst), 0, "only the leader is told");
    // A release on the leader itself is not told back to it.
    assert!(gates[l].release(u32::MAX, inside));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(told[l].load(Ordering::SeqCst), line.len());
    lags.sort();
    let median = lags[lags.len() / 2];
    // Without the push the mirror moves at its next sync: 25 ms on average, up to 50.
    assert!(
        median < Duration::from_millis(15),
        "another node's admission reached the mirror in {median:?} (median; all {lags:?})"
    );
}
