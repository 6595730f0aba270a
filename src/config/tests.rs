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
            "[upstream]\nurls = [\"https://a:1\", \"http://b:2/x\"]\n[server]\nmax_header_bytes = 100\n",
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
