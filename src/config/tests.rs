use super::*;

const MIN: &str = "[upstream]\nurls = [\"http://127.0.0.1:9000\"]\n";

fn issues(text: &str) -> Vec<ConfigIssue> {
    match Config::parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(i) => i,
    }
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::parse(MIN).unwrap();
    assert_eq!(c.server.request_head_timeout.0, Duration::from_secs(10));
    assert_eq!(c.server.max_body_bytes.0, 10 << 20);
    assert_eq!(c.upstream_targets().len(), 1);
}

#[test]
fn unknown_key_is_named_with_its_section_and_line() {
    let i = issues(&format!(
        "{MIN}[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n"
    ));
    assert_eq!(i[0].key, "server.lisen");
    assert!(i[0].reason.contains("unknown field `lisen`"), "{:?}", i[0]);
    assert_eq!(i[0].line, Some(5));
}

#[test]
fn bad_address_names_the_key() {
    let i = issues(&format!("{MIN}[server]\nlisten = \"localhost:port\"\n"));
    assert_eq!(i[0].key, "server.listen");
    assert_eq!(i[0].line, Some(4));
}

#[test]
fn bad_duration_names_the_key() {
    let i = issues("[upstream]\nurls = [\"http://a:1\"]\nconnect_timeout = \"3 parsecs\"\n");
    assert_eq!(i[0].key, "upstream.connect_timeout");
    assert!(i[0].reason.contains("invalid duration"));
}

#[test]
fn semantic_errors_name_the_key() {
    let i = issues(
        "[upstream]\nurls = [\"ftp://a:1\", \"http://b:2/x\"]\n[server]\nmax_header_bytes = 100\n",
    );
    let keys: Vec<_> = i.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"upstream.urls[0]"), "{keys:?}");
    assert!(keys.contains(&"upstream.urls[1]"), "{keys:?}");
    assert!(keys.contains(&"server.max_header_bytes"), "{keys:?}");
    let mh = i
        .iter()
        .find(|i| i.key == "server.max_header_bytes")
        .unwrap();
    assert_eq!(mh.line, Some(4));
}

#[test]
fn missing_upstream_is_reported() {
    let i = issues("[server]\nworkers = 1\n");
    assert!(
        i[0].reason.contains("missing field `upstream`"),
        "{:?}",
        i[0]
    );
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(ByteSize::parse("16KiB").unwrap().0, 16384);
    assert_eq!(ByteSize::parse("1_000").unwrap().0, 1000);
    assert_eq!(ByteSize::parse("2MB").unwrap().0, 2_000_000);
    assert!(ByteSize::parse("2 parsecs").is_err());
    assert!(ByteSize::parse("99999999999999GiB").is_err());
}

#[test]
fn error_display_has_file_line_key_reason() {
    let e = ConfigError::Invalid {
        file: "x.toml".into(),
        issues: vec![ConfigIssue {
            key: "server.listen".into(),
            reason: "bad".into(),
            line: Some(3),
        }],
    };
    assert_eq!(e.to_string(), "x.toml:3: server.listen: bad");
}

#[test]
fn a_semantic_error_in_an_array_of_tables_names_the_line_of_that_element() {
    let text = format!(
        "{MIN}[waiting_room]\nkeys = [{{ id = 1, secret = \"config-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"a\"\nprefix = [\"/a\"]\ncapacity = 5\n\
         [gates.schedule]\ntime_zone = \"Europe/Rome\"\n\
         [[gates]]\nname = \"b\"\nprefix = [\"/b\"]\ncapacity = 0\n"
    );
    let i = issues(&text);
    let cap = i.iter().find(|i| i.key == "gates[1].capacity").unwrap();
    assert_eq!(
        cap.line,
        Some(14),
        "the second element, not the first (line 8): {i:?}"
    );
}
/// Two gates on one calendar; gate `b` names a calendar nobody declared.
const CALENDARS: &str = r#"[upstream]
urls = ["http://127.0.0.1:9000"]
[waiting_room]
keys = [{ id = 1, secret = "0123456789abcdef0123456789abcdef" }]

[calendars.it]
time_zone = "Europe/Rome"
holidays = [
  { date = "12-25", name = "Natale" },
  { easter_offset = 1 },
]

[[gates]]
name = "a"
prefix = ["/a"]
[gates.schedule]
calendar = "it"
[[gates.schedule.windows]]
start = "08:00"
end = "16:00"

[[gates]]
name = "b"
prefix = ["/b"]
[gates.schedule]
calendar = "fr"
[[gates.schedule.windows]]
start = "08:00"
end = "16:00"
"#;

#[test]
fn calendars_are_compiled_and_unknown_names_refused_with_their_line() {
    let i = issues(CALENDARS);
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].key, "gates[1].schedule.calendar");
    assert!(i[0]
        .reason
        .contains("unknown calendar \"fr\"; declared: it"));
    assert_eq!(i[0].line, Some(26), "the second gate's line");
    let ok = CALENDARS.replace("calendar = \"fr\"", "calendar = \"it\"");
    let c = Config::parse(&ok).unwrap();
    let it = c.calendar_set().get("it").unwrap();
    assert_eq!(
        it.holiday(chrono::NaiveDate::from_ymd_opt(2031, 12, 25).unwrap()),
        Some("Natale")
    );
}

#[test]
fn calendar_entry_errors_name_the_key_and_line() {
    let bad = CALENDARS.replace("{ easter_offset = 1 }", "{ date = \"04-31\" }");
    let i = issues(&bad);
    assert_eq!(i[0].key, "calendars.it.holidays[1].date");
    assert!(i[0].reason.contains("is not a date"), "{:?}", i[0]);
    assert_eq!(i[0].line, Some(10));
    let bad = CALENDARS.replace(
        "{ easter_offset = 1 }",
        "{ easter_offset = 1, date = \"04-30\" }",
    );
    let i = issues(&bad);
    assert_eq!(i[0].key, "calendars.it.holidays[1]");
    assert_eq!(i[0].line, Some(10));
    let bad = CALENDARS.replace(
        "time_zone = \"Europe/Rome\"\nholidays",
        "time_zone = \"Rome\"\nholidays",
    );
    let i = issues(&bad);
    assert!(
        i.iter()
            .any(|i| i.key == "calendars.it.time_zone" && i.line == Some(7)),
        "{i:?}"
    );
    let bad = CALENDARS.replace(
        "time_zone = \"Europe/Rome\"\nholidays",
        "ics = \"nope.ics\"\nholidays",
    );
    let i = issues(&bad);
    assert!(
        i.iter().any(|i| i.key == "calendars.it.ics"
            && i.line == Some(7)
            && i.reason.contains("nope.ics: cannot read")),
        "{i:?}"
    );
}

const ENV_SECRETS: &str = r#"[upstream]
urls = ["http://127.0.0.1:9000"]
[admin]
token_env = "ANTICAMERA_TEST_UNSET_ADMIN_TOKEN_7f3a"
[waiting_room]
keys = [
  { id = 1, secret_env = "ANTICAMERA_TEST_UNSET_KEY_7f3a" },
  { id = 2, secret_file = "no-such-dir/key2" },
]
"#;

#[test]
fn secrets_are_needed_to_run_not_to_check() {
    // To run: the same errors as ever.
    let i = issues(ENV_SECRETS);
    assert!(
        i.iter().any(|i| i.key == "waiting_room.keys[0].secret_env"
            && i.reason == "environment variable ANTICAMERA_TEST_UNSET_KEY_7f3a is not set"),
        "{i:?}"
    );
    assert!(
        i.iter().any(|i| i.key == "admin.token_env"
            && i.reason
                == "environment variable ANTICAMERA_TEST_UNSET_ADMIN_TOKEN_7f3a is not set"),
        "{i:?}"
    );
    // To check: fine, and the missing ones are listed.
    let c = Config::parse_for_check_in(ENV_SECRETS, Path::new("."), false).unwrap();
    let s: Vec<String> = c.secret_sources().iter().map(ToString::to_string).collect();
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(
        s[0],
        "waiting_room.keys[0].secret_env = ANTICAMERA_TEST_UNSET_KEY_7f3a (not set here)"
    );
    assert!(
        s[1].starts_with("waiting_room.keys[1].secret_file = ./no-such-dir/key2 (cannot read here"),
        "{s:?}"
    );
    assert_eq!(
        s[2],
        "admin.token_env = ANTICAMERA_TEST_UNSET_ADMIN_TOKEN_7f3a (not set here)"
    );
    // A checked config cannot be run: the keys are still resolved for real.
    assert!(c.keyring().is_err());
    assert!(c.admin_token().is_err());
    // What is in the file is checked either way.
    let fake = ENV_SECRETS.replace(
        "secret_file = \"no-such-dir/key2\"",
        "secret = \"NOT-A-SECRET-0123456789abcdef0123456789\"",
    );
    let i = Config::parse_for_check_in(&fake, Path::new("."), false).unwrap_err();
    assert!(i.iter().any(|i| i.reason.contains("NOT-A-SECRET")), "{i:?}");
}

#[test]
fn https_upstreams_are_accepted_and_other_schemes_named() {
    let c = Config::parse("[upstream]\nurls = [\"https://portal.example:8443\", \"http://b:2\"]\n")
        .unwrap();
    let t = c.upstream_targets();
    assert_eq!(t[0].scheme, http::uri::Scheme::HTTPS);
    assert_eq!(t[0].authority.as_str(), "portal.example:8443");
    assert!(c.upstream_uses_tls());
    assert!(!Config::parse(MIN).unwrap().upstream_uses_tls());
    let i = issues("[upstream]\nurls = [\"ftp://a:1\"]\n");
    assert_eq!(i[0].key, "upstream.urls[0]");
    assert!(i[0].reason.contains("http:// and https://"), "{:?}", i[0]);
}

#[test]
fn tls_key_files_are_secrets_a_check_may_not_see() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("s.pem"), cert.cert.pem()).unwrap();
    let text = "[upstream]\nurls = [\"https://a:1\"]\n\
                [upstream.tls]\nclient_cert_file = \"c.pem\"\nclient_key_file = \"c.key\"\n\
                [server.tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n";
    // Run: the missing key files are errors naming their keys.
    let i = match Config::parse_in(text, dir.path(), false) {
        Ok(_) => panic!("missing TLS key files accepted"),
        Err(i) => i,
    };
    let keys: Vec<_> = i.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["server.tls.key_file", "upstream.tls.client_key_file"],
        "{i:?}"
    );
    // Checked elsewhere: they are listed as secrets not available here, not refused.
    let c = Config::parse_for_check_in(text, dir.path(), false).unwrap();
    let listed: Vec<_> = c
        .secret_sources()
        .into_iter()
        .filter(|s| s.missing.is_some())
        .map(|s| s.key)
        .collect();
    assert_eq!(
        listed,
        ["server.tls.key_file", "upstream.tls.client_key_file"]
    );
}

#[test]
fn routing_and_gate_hosts_are_checked_with_their_key() {
    let text = format!(
        "{MIN}[routing]\ncase_insensitive = true\nhosts = [\"ok.example.it.\", \"a.example.it:8443\"]\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"config-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"a\"\nprefix = [\"/a\"]\nhosts = [\"portal.example.it\", \"*.example.it\"]\n"
    );
    let i = issues(&text);
    let keys: Vec<_> = i.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["routing.hosts[1]", "gates[0].hosts[1]"], "{i:?}");
    let ok = format!(
        "{MIN}[routing]\ncase_insensitive = true\n\
         [waiting_room]\nkeys = [{{ id = 1, secret = \"config-test-key-0123456789abcdef0123\" }}]\n\
         [[gates]]\nname = \"a\"\nprefix = [\"/a\"]\n\
         [[gates]]\nname = \"b\"\nprefix = [\"/b\"]\ncase_insensitive = false\nhosts = [\"Portal.Example.it.\"]\n"
    );
    let c = Config::parse(&ok).unwrap();
    assert!(c.gates[0].rules(&c.routing).case_insensitive);
    let b = c.gates[1].rules(&c.routing);
    assert!(!b.case_insensitive);
    assert_eq!(b.hosts, ["Portal.Example.it."]);
    let unknown = issues(&format!("{MIN}[routing]\ncase_sensitive = true\n"));
    assert_eq!(unknown[0].key, "routing.case_sensitive");
}

#[test]
fn store_defaults_to_memory_and_redis_is_checked_with_line_and_key() {
    let c = Config::parse(MIN).unwrap();
    assert_eq!(c.store.kind, crate::store::StoreKind::Memory);
    let c = Config::parse(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/2\"\nprefix = \"claims:\"\n\
         timeout = \"100ms\"\nfail_mode = \"closed\"\nnode_id = \"node-a\"\n"
    ))
    .unwrap();
    assert_eq!(c.store.kind, crate::store::StoreKind::Redis);
    assert_eq!(c.store.node_id(), "node-a");
    // Random per process when not given.
    let d = crate::store::StoreConfig::default();
    assert_ne!(d.node_id(), d.node_id());

    let i = issues(&format!("{MIN}[store]\nkind = \"redis\"\n"));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.kind", Some(4)),
        "{i:?}"
    );
    assert!(i[0].reason.contains("url"), "{i:?}");

    let i = issues(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"http://127.0.0.1:6379\"\n"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.url", Some(5)),
        "{i:?}"
    );
    assert!(i[0].reason.contains("redis://"), "{i:?}");

    let i = issues(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"rediss://r:6379\"\n"
    ));
    assert!(i[0].reason.contains("TLS"), "{i:?}");

    let i = issues(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\nfail_mode = \"open\"\n"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.fail_mode", Some(6)),
        "{i:?}"
    );
    assert!(i[0].reason.contains("closed"), "{i:?}");

    let c = Config::parse(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\nfail_mode = \"open-local\"\n"
    ))
    .unwrap();
    assert_eq!(c.store.fail_mode, crate::store::FailMode::OpenLocal);

    let i = issues(&format!("{MIN}[store]\nkind = \"etcd\"\n"));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.kind", Some(4)),
        "{i:?}"
    );

    let i = issues(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\ntimeout = \"0s\"\nnode_id = \"a b\"\n"
    ));
    let keys: Vec<_> = i.iter().map(|i| (i.key.as_str(), i.line)).collect();
    assert!(keys.contains(&("store.timeout", Some(6))), "{keys:?}");
    assert!(keys.contains(&("store.node_id", Some(7))), "{keys:?}");

    // A prefix that does not end with ':' could run into another room's keys.
    let i = issues(&format!(
        "{MIN}[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\nprefix = \"shop\"\n"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.prefix", Some(6)),
        "{i:?}"
    );
    assert!(i[0].reason.contains("end with ':'"), "{i:?}");

    // A url without redis is a mistake, not silently ignored.
    let i = issues(&format!("{MIN}[store]\nurl = \"redis://r:6379\"\n"));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.url", Some(4)),
        "{i:?}"
    );

    // A random draw at opening is agreed through Redis: allowed.
    let sched = "[[gates]]\nname = \"c\"\nprefix = [\"/c\"]\n[gates.schedule]\nprequeue = \"30m\"\n\
                 [[gates.schedule.windows]]\ndays = [\"mon\"]\nstart = \"08:00\"\nend = \"12:00\"\n\
                 [waiting_room]\nkeys = [{ id = 1, secret = \"store-test-key-0123456789abcdef0123\" }]\n\
                 [store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\n";
    Config::parse(&format!("{MIN}{sched}")).unwrap();

    // The state file is one node's: refused with a shared store.
    let i = issues(&format!(
        "{MIN}[waiting_room]\nstate_file = \"s.json\"\n[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\n"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("store.kind", Some(6)),
        "{i:?}"
    );

    // The fleet shares the capacity stated: a learned limit and admission that follows one
    // node's part of the portal are refused, with the key and line.
    let redis = "[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\n";
    let i = issues(&format!(
        "{MIN}[upstream_guard]\nmode = \"adaptive\"\n{redis}"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("upstream_guard.mode", Some(4)),
        "{i:?}"
    );
    assert!(i[0].reason.contains("fixed"), "{i:?}");
    let i = issues(&format!(
        "{MIN}[upstream_guard]\nmax_in_flight = 20\n[[gates]]\nname = \"c\"\nprefix = [\"/c\"]\n\
         admission = \"portal\"\n[waiting_room]\nkeys = [{{ id = 1, secret = \"store-test-key-0123456789abcdef0123\" }}]\n{redis}"
    ));
    assert_eq!(
        (i[0].key.as_str(), i[0].line),
        ("gates[0].admission", Some(8)),
        "{i:?}"
    );
}
