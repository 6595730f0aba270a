use super::*;
use governor::clock::FakeRelativeClock;
use std::net::{Ipv4Addr, Ipv6Addr};

fn cfg(src: &str) -> RateLimitsConfig {
    let c: RateLimitsConfig = toml::from_str(src).unwrap();
    c.validate().unwrap();
    c
}

fn keys(session: Option<u64>, addr: IpAddr) -> RequestKeys {
    RequestKeys {
        session,
        addr,
        cohort: 1,
        gate: None,
    }
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

#[test]
fn rate_parsing() {
    assert_eq!(
        "10/s".parse::<Rate>().unwrap(),
        Rate {
            count: 10,
            per: Duration::from_secs(1)
        }
    );
    assert_eq!(
        "600/m".parse::<Rate>().unwrap().per,
        Duration::from_secs(60)
    );
    assert_eq!(
        "5/10s".parse::<Rate>().unwrap().per,
        Duration::from_secs(10)
    );
    assert_eq!("1_000/h".parse::<Rate>().unwrap().count, 1000);
    for bad in ["10", "0/s", "x/s", "10/fortnight", "10/0s", ""] {
        assert!(bad.parse::<Rate>().is_err(), "{bad} should be refused");
    }
    // burst defaults to the count; 600/m is one every 100 ms
    let q = LimitConfig {
        rate: "600/m".parse().unwrap(),
        burst: None,
    }
    .quota();
    assert_eq!(q.burst_size().get(), 600);
    assert_eq!(q.replenish_interval(), Duration::from_millis(100));
}

#[test]
fn config_defaults_and_validation() {
    let c: RateLimitsConfig = toml::from_str("").unwrap();
    assert_eq!(c.max_keys, 1_000_000);
    assert_eq!(c.sweep_interval, Duration::from_secs(10));
    assert_eq!((c.ipv4_prefix, c.ipv6_prefix), (32, 64));
    assert!(c.per_session.is_none());

    let c: RateLimitsConfig = toml::from_str(
        "max_keys = 0\nsweep_interval = \"0s\"\nipv6_prefix = 129\nipv4_prefix = 0\n\
             [per_gate]\nrate = \"2/s\"\nburst = 0\n",
    )
    .unwrap();
    let errs = c.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "max_keys",
            "sweep_interval",
            "ipv6_prefix",
            "ipv4_prefix",
            "per_gate.burst"
        ]
    );
    assert!(
        toml::from_str::<RateLimitsConfig>("[per_session]\nrate = \"10/s\"\nbrust = 3\n").is_err()
    );
    assert!(toml::from_str::<RateLimitsConfig>("[per_session]\nrate = \"ten/s\"\n").is_err());
}

#[test]
fn burst_then_sustained_rate() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_session]\nrate = \"10/s\"\nburst = 20\n"),
        clock.clone(),
    );
    let k = keys(Some(42), V4);
    for i in 0..20 {
        assert!(rl.check(&k).is_ok(), "burst request {i}");
    }
    let lim = rl.check(&k).unwrap_err();
    assert_eq!(lim.kind(), LimitKind::Session);
    assert_eq!(lim.retry_after, Duration::from_millis(100));

    // Over 10 simulated seconds, hammering every 10 ms: 10/s sustained, +-1.
    let mut ok = 0;
    for _ in 0..1000 {
        clock.advance(Duration::from_millis(10));
        ok += u32::from(rl.check(&k).is_ok());
    }
    assert!((99..=101).contains(&ok), "sustained {ok} in 10 s");

    // Another session is unaffected.
    assert!(rl.check(&keys(Some(43), V4)).is_ok());
}

#[test]
fn retry_after_is_honest() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_address]\nrate = \"2/m\"\nburst = 1\n"),
        clock.clone(),
    );
    let k = keys(None, V4);
    assert!(rl.check(&k).is_ok());
    clock.advance(Duration::from_millis(1500));
    let lim = rl.check(&k).unwrap_err();
    assert_eq!(lim.kind(), LimitKind::Address);
    assert_eq!(lim.retry_after, Duration::from_millis(28_500));
    assert_eq!(lim.retry_after_secs(), 29); // rounded up
                                            // Just before: still refused; after exactly Retry-After seconds: served.
    clock.advance(Duration::from_millis(28_499));
    assert!(rl.check(&k).is_err());
    clock.advance(Duration::from_millis(500));
    assert!(rl.check(&k).is_ok());

    // Property over many states: waiting Retry-After seconds always suffices.
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_session]\nrate = \"3/s\"\nburst = 2\n"),
        clock.clone(),
    );
    let k = keys(Some(1), V4);
    for step in 0..200u64 {
        clock.advance(Duration::from_millis(37 * (step % 7)));
        if let Err(lim) = rl.check(&k) {
            clock.advance(Duration::from_secs(lim.retry_after_secs()));
            assert!(rl.check(&k).is_ok(), "step {step}: {lim:?}");
        }
    }
}

#[test]
fn ipv6_aggregated_by_prefix() {
    let clock = FakeRelativeClock::default();
    // Without the aggregate levels, to count the address's own keys alone.
    let rl = RateLimiter::with_clock(
        &cfg("ipv6_aggregates = []\nipv4_aggregates = []\n\
              [per_address]\nrate = \"1/h\"\nburst = 1\n"),
        clock.clone(),
    );
    assert!(rl.check(&keys(None, v6("2001:db8:1:2::1"))).is_ok());
    // Same /64, other interface id: shares the (now empty) bucket.
    assert!(rl
        .check(&keys(None, v6("2001:db8:1:2:ffff:1:2:3")))
        .is_err());
    // Neighbouring /64: its own bucket.
    assert!(rl.check(&keys(None, v6("2001:db8:1:3::1"))).is_ok());
    assert_eq!(rl.len_by_kind().address, 2);

    // IPv4: /32 by default; IPv4-mapped IPv6 is the same client.
    assert!(rl.check(&keys(None, V4)).is_ok());
    assert!(rl.check(&keys(None, v6("::ffff:192.0.2.7"))).is_err());
    assert!(rl
        .check(&keys(None, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))))
        .is_ok());

    // Configurable prefixes: /48 and /24.
    let rl = RateLimiter::with_clock(
        &cfg("ipv6_prefix = 48\nipv4_prefix = 24\n[per_address]\nrate = \"1/h\"\nburst = 1\n"),
        clock.clone(),
    );
    assert!(rl.check(&keys(None, v6("2001:db8:1:2::1"))).is_ok());
    assert!(rl.check(&keys(None, v6("2001:db8:1:ffff::1"))).is_err());
    assert!(rl.check(&keys(None, v6("2001:db8:2::1"))).is_ok());
    assert!(rl.check(&keys(None, V4)).is_ok());
    assert!(rl
        .check(&keys(None, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200))))
        .is_err());

    // /128: every address distinct.
    let k = AddressKeyer::new(32, 128);
    assert_ne!(k.key(v6("2001:db8::1")), k.key(v6("2001:db8::2")));
    assert_eq!(k.key(v6("2001:db8::1")), k.key(v6("2001:db8::1")));
}

#[test]
fn check_order_spares_shared_buckets() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_session]\nrate = \"1/h\"\nburst = 1\n[per_cohort]\nrate = \"1/h\"\nburst = 2\n"),
        clock,
    );
    let a = keys(Some(1), V4);
    assert!(rl.check(&a).is_ok()); // cohort 1 has 1 left
    for _ in 0..10 {
        // refused by the session bucket: must not drain the cohort bucket
        assert_eq!(rl.check(&a).unwrap_err().kind(), LimitKind::Session);
    }
    assert!(rl.check(&keys(Some(2), V4)).is_ok());
    assert_eq!(
        rl.check(&keys(Some(3), V4)).unwrap_err().kind(),
        LimitKind::Cohort
    );
    // Anonymous requests skip the session limit; gate None skips the gate limit.
    assert_eq!(
        rl.check(&keys(None, V4)).unwrap_err().kind(),
        LimitKind::Cohort
    );
}

#[test]
fn headers_follow_draft_10() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_gate]\nrate = \"10/s\"\nburst = 20\n"),
        clock.clone(),
    );
    let k = RequestKeys {
        session: None,
        addr: V4,
        cohort: 0,
        gate: Some(7),
    };
    let ok = rl.check(&k).unwrap();
    let h = ok.headers().unwrap();
    assert_eq!(h.policy, "\"gate\";q=20;w=2");
    assert_eq!(h.ratelimit, "\"gate\";r=19;t=1");
    assert_eq!(h.retry_after, None);
    for _ in 0..19 {
        rl.check(&k).unwrap();
    }
    clock.advance(Duration::from_millis(30));
    let lim = rl.check(&k).unwrap_err();
    let h = lim.headers();
    assert_eq!(h.ratelimit, "\"gate\";r=0;t=1");
    assert_eq!(h.retry_after, Some(1));
    let mut map = http::HeaderMap::new();
    h.apply(&mut map);
    assert_eq!(map["retry-after"], "1");
    assert_eq!(map["ratelimit-policy"], "\"gate\";q=20;w=2");
    assert_eq!(map["ratelimit"], "\"gate\";r=0;t=1");

    // No limit configured: nothing to advertise.
    let none = RateLimiter::with_clock(&cfg(""), clock);
    assert_eq!(none.check(&k).unwrap().headers(), None);
}

#[test]
fn sweep_drops_only_idle_keys() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_session]\nrate = \"1/s\"\nburst = 1\n"),
        clock.clone(),
    );
    for s in 0..100 {
        rl.check(&keys(Some(s), V4)).unwrap();
    }
    assert_eq!(rl.len_by_kind().session, 100);
    rl.sweep();
    // Every bucket is still empty: nothing can be forgotten.
    assert_eq!(rl.len_by_kind().session, 100);
    assert!(rl.check(&keys(Some(5), V4)).is_err());
    clock.advance(Duration::from_secs(3));
    rl.sweep();
    assert_eq!(rl.len_by_kind().session, 0);
}

fn random_v6(rng: &mut impl rand::Rng) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>()))
}

fn flood(n: usize, max_keys: usize) {
    use rand::SeedableRng;
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg(&format!(
            "max_keys = {max_keys}\n[per_address]\nrate = \"1/s\"\nburst = 2\n"
        )),
        clock.clone(),
    );
    // A client that spent its whole burst before the flood.
    let good = keys(None, v6("2001:db8:aaaa:1::1"));
    rl.check(&good).unwrap();
    rl.check(&good).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..n {
        let _ = rl.check(&keys(None, random_v6(&mut rng)));
        if i % 4096 == 0 {
            assert!(rl.len_by_kind().address <= max_keys);
        }
    }
    assert_eq!(rl.len_by_kind().address, max_keys);
    assert!(rl.sweep_due());
    assert!(rl.evicted_by_kind()[1].1 >= (n - max_keys) as u64);
    // Evicting makes room with the idlest keys: the flood cannot wipe out a spent bucket (which
    // would hand its owner a fresh burst); the client is still refused.
    assert_eq!(rl.check(&good).unwrap_err().kind(), LimitKind::Address);
    // Once the flood's buckets are full again, a sweep frees everything.
    clock.advance(Duration::from_secs(5));
    rl.sweep();
    assert_eq!(rl.len_by_kind().address, 0);
    assert!(!rl.sweep_due());
}

/// One million distinct random IPv6 addresses (three keys each: /64, /48, /32) against a
/// 10,000-key cap (~12 s in debug on a loaded 2-core machine).
#[test]
fn key_cap_holds_under_one_million_addresses() {
    flood(1_000_000, 10_000);
}

/// Full size: the default cap of one million keys, flooded with three million addresses.
/// `cargo test --release --lib ratelimit -- --ignored`
#[test]
#[ignore]
fn key_cap_holds_at_full_size() {
    flood(3_000_000, 1_000_000);
}

#[test]
fn concurrent_inserts_never_exceed_cap() {
    let rl = std::sync::Arc::new(RateLimiter::with_clock(
        &cfg("max_keys = 1000\n[per_session]\nrate = \"1/s\"\n"),
        FakeRelativeClock::default(),
    ));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let rl = rl.clone();
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    let _ = rl.check(&keys(Some(t << 32 | i), V4));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(rl.len_by_kind().session, 1000);
}

#[test]
fn aggregate_config_defaults_and_validation() {
    let c: RateLimitsConfig = toml::from_str("").unwrap();
    let pairs = |l: Vec<AggregateConfig>| l.iter().map(|a| (a.prefix, a.times)).collect::<Vec<_>>();
    assert_eq!(pairs(c.ipv6_levels()), [(48, 16), (32, 1024)]);
    assert_eq!(pairs(c.ipv4_levels()), [(24, 32)]);
    // Defaults not wider than the configured prefix do not apply; an explicit [] turns them off.
    let c = cfg("ipv6_prefix = 48\nipv4_prefix = 24\n");
    assert_eq!(pairs(c.ipv6_levels()), [(32, 1024)]);
    assert!(c.ipv4_levels().is_empty());
    let c = cfg("ipv6_aggregates = []\nipv4_aggregates = [{ prefix = 16, times = 100 }]\n");
    assert!(c.ipv6_levels().is_empty());
    assert_eq!(pairs(c.ipv4_levels()), [(16, 100)]);

    let c: RateLimitsConfig = toml::from_str(
        "ipv6_aggregates = [{ prefix = 64, times = 2 }, { prefix = 40, times = 0 }, \
                            { prefix = 44, times = 3 }]\n\
         ipv4_aggregates = [{ prefix = 24, times = 2000000000 }, { prefix = 0, times = 1 }]\n\
         per_address = { rate = \"5/s\", burst = 10 }\n",
    )
    .unwrap();
    let errs = c.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ipv6_aggregates[0].prefix",
            "ipv6_aggregates[1].times",
            "ipv6_aggregates[2].prefix",
            "ipv4_aggregates[0].times",
            "ipv4_aggregates[1].prefix",
        ],
        "{errs:?}"
    );
    assert!(toml::from_str::<RateLimitsConfig>(
        "ipv6_aggregates = [{ prefix = 48, times = 2, burst = 3 }]\n"
    )
    .is_err());
}

#[test]
fn rotating_inside_a_prefix_spends_the_prefix_budget() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("[per_address]\nrate = \"1/h\"\nburst = 1\n"),
        clock.clone(),
    );
    // Sixteen /64s of one /48 each get their first request; the seventeenth new /64 is refused
    // by the /48 bucket (16 × the quota), with an honest Retry-After (16/h: one every 225 s).
    for i in 0..16 {
        assert!(rl
            .check(&keys(None, v6(&format!("2001:db8:1:{i:x}::1"))))
            .is_ok());
    }
    let lim = rl.check(&keys(None, v6("2001:db8:1:ff::1"))).unwrap_err();
    assert_eq!(lim.kind(), LimitKind::Address);
    assert_eq!(lim.policy.limit, 16);
    assert_eq!(lim.retry_after, Duration::from_secs(225));
    let (p6, p4) = rl.aggregate_policies();
    assert_eq!(p6.iter().map(|p| p.limit).collect::<Vec<_>>(), [16, 1024]);
    assert_eq!(p4.iter().map(|p| p.limit).collect::<Vec<_>>(), [32]);
    // A neighbour in another /48 of the same /32: unaffected.
    assert!(rl.check(&keys(None, v6("2001:db8:2::1"))).is_ok());
    // Rotating /48s inside the /32: 1024 first requests in all (17 spent so far), then refused.
    let mut ok = 17;
    for i in 3..2000u32 {
        let a = v6(&format!("2001:db8:{i:x}::1"));
        match rl.check(&keys(None, a)) {
            Ok(_) => ok += 1,
            Err(lim) => {
                assert_eq!(lim.policy.limit, 1024);
                break;
            }
        }
    }
    assert_eq!(ok, 1024);
    // Another /32 is untouched.
    assert!(rl.check(&keys(None, v6("2001:db9::1"))).is_ok());
    // IPv4: 32 addresses of one /24, then refused; IPv4-mapped IPv6 is the same /24.
    for i in 0..32u8 {
        assert!(rl
            .check(&keys(None, IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))))
            .is_ok());
    }
    let lim = rl.check(&keys(None, v6("::ffff:192.0.2.200"))).unwrap_err();
    assert_eq!(lim.policy.limit, 32);
    assert!(rl
        .check(&keys(None, IpAddr::V4(Ipv4Addr::new(192, 0, 3, 1))))
        .is_ok());
    // A refusal by the /64 itself spends nothing from the wider buckets.
    let rl = RateLimiter::with_clock(
        &cfg("ipv6_aggregates = [{ prefix = 48, times = 2 }]\n\
              [per_address]\nrate = \"1/h\"\nburst = 1\n"),
        clock,
    );
    assert!(rl.check(&keys(None, v6("2001:db8:5:1::1"))).is_ok());
    for _ in 0..10 {
        assert_eq!(
            rl.check(&keys(None, v6("2001:db8:5:1::2")))
                .unwrap_err()
                .policy
                .limit,
            1
        );
    }
    assert!(rl.check(&keys(None, v6("2001:db8:5:2::1"))).is_ok());
    assert_eq!(
        rl.check(&keys(None, v6("2001:db8:5:3::1")))
            .unwrap_err()
            .policy
            .limit,
        2
    );
}

#[test]
fn a_full_table_evicts_and_newcomers_get_their_own_bucket() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("max_keys = 100\n[per_session]\nrate = \"1/h\"\nburst = 1\n"),
        clock.clone(),
    );
    // The table fills with spent buckets.
    for s in 0..100 {
        rl.check(&keys(Some(s), V4)).unwrap();
    }
    assert_eq!(rl.len_by_kind().session, 100);
    // Every newcomer has a fresh bucket of its own: one request served, the next refused.
    for s in 1000..1300 {
        clock.advance(Duration::from_millis(1));
        assert!(rl.check(&keys(Some(s), V4)).is_ok(), "newcomer {s}");
        assert!(rl.check(&keys(Some(s), V4)).is_err(), "newcomer {s}");
        assert!(rl.len_by_kind().session <= 100);
    }
    assert_eq!(rl.len_by_kind().session, 100);
    assert_eq!(rl.evicted_by_kind()[0], (LimitKind::Session, 300));
    assert!(rl.sweep_due());
}

#[test]
fn eviction_prefers_idle_buckets() {
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::with_clock(
        &cfg("max_keys = 1000\n[per_session]\nrate = \"1/h\"\nburst = 5\n"),
        clock.clone(),
    );
    // 500 busy clients (burst spent) and 500 that came once.
    for s in 0..500 {
        for _ in 0..5 {
            rl.check(&keys(Some(s), V4)).unwrap();
        }
    }
    for s in 500..1000 {
        rl.check(&keys(Some(s), V4)).unwrap();
    }
    // An hour later the one-time clients' buckets are full again (idle); the busy ones have one
    // unit back.
    clock.advance(Duration::from_secs(3601));
    // 500 new keys: evictions sample five keys and take the idlest, so busy clients keep their
    // spent buckets unless all five samples were busy (about 1/32 of the time).
    for s in 2000..2500 {
        rl.check(&keys(Some(s), V4)).unwrap();
    }
    let busy_left = (0..500)
        .filter(|&s| rl.check(&keys(Some(s), V4)).is_ok() && rl.check(&keys(Some(s), V4)).is_err())
        .count();
    assert!(
        busy_left >= 400,
        "busy clients kept their spent buckets: {busy_left}/500"
    );
}

#[test]
fn fleet_limits_are_divided_among_the_nodes_and_per_client_limits_are_not() {
    let cfg: RateLimitsConfig = toml::from_str(
        "per_gate = { rate = \"30/s\", burst = 60 }\nper_cohort = { rate = \"10/s\" }\n\
         per_address = { rate = \"5/s\", burst = 10 }\n",
    )
    .unwrap();
    let d = cfg.shared_by(3);
    let g = d.per_gate.unwrap();
    assert_eq!(
        (g.rate.count, g.rate.per, g.burst),
        (30, Duration::from_secs(3), Some(20))
    );
    let c = d.per_cohort.unwrap();
    assert_eq!((c.rate.per, c.burst), (Duration::from_secs(3), Some(4)));
    let a = d.per_address.unwrap();
    assert_eq!((a.rate.per, a.burst), (Duration::from_secs(1), Some(10)));
    let one = cfg.shared_by(1).per_gate.unwrap();
    assert_eq!(
        (one.rate.per, one.burst),
        (Duration::from_secs(1), Some(60))
    );
}
