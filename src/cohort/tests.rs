use super::*;
use http::Request;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";
const NOW: u64 = 1_775_000_000; // 2026-03-31

fn parts(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn keydir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut secret = SECRET.to_vec();
    secret.push(b'\n');
    std::fs::write(d.path().join("hs.key"), secret).unwrap();
    std::fs::write(
        d.path().join("rsa.pub"),
        include_str!("../../testdata/jwt/rsa.pub"),
    )
    .unwrap();
    std::fs::write(
        d.path().join("ec.pub"),
        include_str!("../../testdata/jwt/ec.pub"),
    )
    .unwrap();
    d
}

fn compile(toml_src: &str, dir: &Path) -> Result<Cohorts, Vec<FieldError>> {
    let cfg: CohortConfig = toml::from_str(toml_src).unwrap();
    Cohorts::compile(&cfg, dir)
}

fn hs_token(alg: Algorithm, claims: serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

const CLIENT: &str = "198.51.100.7";
const UNTRUSTED_PEER: &str = "203.0.113.9";
const TRUSTED_PEER: &str = "10.1.2.3";

fn full_config() -> String {
    r#"
default = "citizens"
trusted_header_from = ["10.0.0.0/8"]
[[matchers]]
cohort = "intermediaries"
jwt = { cookie = "portal_jwt", claim = "role", values = ["intermediary","caf","patronato"], algorithm = "HS256", key_file = "hs.key" }
[[matchers]]
cohort = "intermediaries"
header = { name = "x-cohort", values = ["intermediary"] }
[[matchers]]
cohort = "staff"
network = ["192.0.2.0/24", "2001:db8::/32"]
[[matchers]]
cohort = "intermediaries"
path_prefix = ["/intermediari/"]
[[matchers]]
cohort = "staff"
cookie = { name = "role", values = ["staff"] }
"#
        .to_owned()
}

#[test]
fn names_and_default() {
    let d = keydir();
    let c = compile(&full_config(), d.path()).unwrap();
    assert_eq!(c.names(), ["citizens", "intermediaries", "staff"]);
    assert_eq!(c.name(c.default_id()), "citizens");
    assert_eq!(c.id("staff").map(CohortId::index), Some(2));
    let p = parts("/", &[]);
    assert_eq!(
        c.name(c.classify_at(&p, ip(CLIENT), ip(UNTRUSTED_PEER), NOW)),
        "citizens"
    );
}

#[test]
fn each_matcher_kind() {
    let d = keydir();
    let c = compile(&full_config(), d.path()).unwrap();
    let who = |p: &http::request::Parts, client: &str, peer: &str| {
        c.name(c.classify_at(p, ip(client), ip(peer), NOW))
            .to_owned()
    };
    // network, v4, v6 and v4-mapped v6
    assert_eq!(who(&parts("/", &[]), "192.0.2.55", UNTRUSTED_PEER), "staff");
    assert_eq!(
        who(&parts("/", &[]), "2001:db8::1", UNTRUSTED_PEER),
        "staff"
    );
    assert_eq!(
        who(&parts("/", &[]), "::ffff:192.0.2.1", UNTRUSTED_PEER),
        "staff"
    );
    assert_eq!(
        who(&parts("/", &[]), "192.0.3.1", UNTRUSTED_PEER),
        "citizens"
    );
    // path prefix
    assert_eq!(
        who(&parts("/intermediari/domande", &[]), CLIENT, UNTRUSTED_PEER),
        "intermediaries"
    );
    assert_eq!(
        who(&parts("/intermediari", &[]), CLIENT, UNTRUSTED_PEER),
        "citizens"
    );
    // cookie
    assert_eq!(
        who(
            &parts("/", &[("cookie", "a=b; role=staff")]),
            CLIENT,
            UNTRUSTED_PEER
        ),
        "staff"
    );
    assert_eq!(
        who(
            &parts("/", &[("cookie", "role=staffer")]),
            CLIENT,
            UNTRUSTED_PEER
        ),
        "citizens"
    );
    // jwt in cookie
    let t = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "caf", "exp": NOW + 600}),
        SECRET,
    );
    let cookie = format!("x=1; portal_jwt={t}");
    assert_eq!(
        who(
            &parts("/", &[("cookie", cookie.as_str())]),
            CLIENT,
            UNTRUSTED_PEER
        ),
        "intermediaries"
    );
}

#[test]
fn order_first_match_wins() {
    let d = keydir();
    let c = compile(&full_config(), d.path()).unwrap();
    // Matches network (staff, 3rd) and path_prefix (intermediaries, 4th): network first.
    let p = parts("/intermediari/x", &[]);
    assert_eq!(
        c.name(c.classify_at(&p, ip("192.0.2.1"), ip(UNTRUSTED_PEER), NOW)),
        "staff"
    );
    // Reverse the order: now path_prefix comes first.
    let src = r#"
default = "citizens"
[[matchers]]
cohort = "intermediaries"
path_prefix = ["/intermediari/"]
[[matchers]]
cohort = "staff"
network = ["192.0.2.0/24"]
"#;
    let c = compile(src, d.path()).unwrap();
    assert_eq!(
        c.name(c.classify_at(&p, ip("192.0.2.1"), ip(UNTRUSTED_PEER), NOW)),
        "intermediaries"
    );
}

#[test]
fn spoofed_header_ignored_from_untrusted_peer() {
    let d = keydir();
    let c = compile(&full_config(), d.path()).unwrap();
    let p = parts("/", &[("x-cohort", "intermediary")]);
    assert_eq!(
        c.name(c.classify_at(&p, ip(CLIENT), ip(UNTRUSTED_PEER), NOW)),
        "citizens"
    );
    assert_eq!(
        c.name(c.classify_at(&p, ip(CLIENT), ip(TRUSTED_PEER), NOW)),
        "intermediaries"
    );
    // The client address being "trusted" is irrelevant: only the direct peer counts.
    assert_eq!(
        c.name(c.classify_at(&p, ip(TRUSTED_PEER), ip(UNTRUSTED_PEER), NOW)),
        "citizens"
    );
    let p = parts("/", &[("x-cohort", "citizen")]);
    assert_eq!(
        c.name(c.classify_at(&p, ip(CLIENT), ip(TRUSTED_PEER), NOW)),
        "citizens"
    );
}

fn jwt_header_config(alg: &str, key: &str) -> String {
    format!(
        r#"
default = "citizens"
[[matchers]]
cohort = "intermediaries"
jwt = {{ claim = "role", values = ["intermediary"], algorithm = "{alg}", key_file = "{key}", leeway = "0s" }}
"#
    )
}

fn classify_bearer(c: &Cohorts, token: &str, now: u64) -> String {
    let auth = format!("Bearer {token}");
    let p = parts("/", &[("authorization", auth.as_str())]);
    c.name(c.classify_at(&p, ip(CLIENT), ip(UNTRUSTED_PEER), now))
        .to_owned()
}

#[test]
fn jwt_hs256_valid_expired_badsig_wrongalg() {
    let d = keydir();
    let c = compile(&jwt_header_config("HS256", "hs.key"), d.path()).unwrap();
    let good = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "intermediary", "exp": NOW + 60}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &good, NOW), "intermediaries");
    // expired (by our injected clock), at the exact second and after
    assert_eq!(classify_bearer(&c, &good, NOW + 60), "citizens");
    assert_eq!(classify_bearer(&c, &good, NOW + 3600), "citizens");
    // bad signature: other secret
    let forged = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "intermediary", "exp": NOW + 60}),
        b"another-secret-another-secret-another-secret",
    );
    assert_eq!(classify_bearer(&c, &forged, NOW), "citizens");
    // tampered payload with the original signature
    let mut segs: Vec<&str> = good.split('.').collect();
    let other = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "intermediary", "exp": NOW + 99999}),
        b"whatever-whatever-whatever-whatever",
    );
    let other_payload = other.split('.').nth(1).unwrap();
    segs[1] = other_payload;
    assert_eq!(classify_bearer(&c, &segs.join("."), NOW), "citizens");
    // wrong algorithm: same secret, HS512 (header says HS512, config pins HS256)
    let hs512 = hs_token(
        Algorithm::HS512,
        serde_json::json!({"role": "intermediary", "exp": NOW + 60}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &hs512, NOW), "citizens");
    // wrong claim value, missing exp, garbage
    let citizen = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "citizen", "exp": NOW + 60}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &citizen, NOW), "citizens");
    let no_exp = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "intermediary"}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &no_exp, NOW), "citizens");
    assert_eq!(classify_bearer(&c, "not.a.jwt", NOW), "citizens");
    // array claim and nbf in the future
    let arr = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": ["x", "intermediary"], "exp": NOW + 60}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &arr, NOW), "intermediaries");
    let nbf = hs_token(
        Algorithm::HS256,
        serde_json::json!({"role": "intermediary", "exp": NOW + 60, "nbf": NOW + 30}),
        SECRET,
    );
    assert_eq!(classify_bearer(&c, &nbf, NOW), "citizens");
    assert_eq!(classify_bearer(&c, &nbf, NOW + 30), "intermediaries");
}

#[test]
fn jwt_leeway_issuer_audience_nested_claim() {
    let d = keydir();
    let src = r#"
default = "citizens"
[[matchers]]
cohort = "intermediaries"
jwt = { header = "x-token", claim = "realm.roles", values = ["caf"], algorithm = "HS256", key_file = "hs.key", issuer = "https://idp.example", audience = "anticamera", leeway = "30s" }
"#;
    let c = compile(src, d.path()).unwrap();
    let mk = |claims: serde_json::Value| hs_token(Algorithm::HS256, claims, SECRET);
    let run = |t: &str, now: u64| {
        let p = parts("/", &[("x-token", t)]);
        c.name(c.classify_at(&p, ip(CLIENT), ip(UNTRUSTED_PEER), now))
            .to_owned()
    };
    let ok = mk(serde_json::json!({"realm": {"roles": ["caf"]}, "exp": NOW,
            "iss": "https://idp.example", "aud": "anticamera"}));
    assert_eq!(run(&ok, NOW + 29), "intermediaries"); // within leeway
    assert_eq!(run(&ok, NOW + 30), "citizens");
    let bad_iss = mk(
        serde_json::json!({"realm": {"roles": ["caf"]}, "exp": NOW + 60,
            "iss": "https://evil.example", "aud": "anticamera"}),
    );
    assert_eq!(run(&bad_iss, NOW), "citizens");
    let no_aud = mk(
        serde_json::json!({"realm": {"roles": ["caf"]}, "exp": NOW + 60,
            "iss": "https://idp.example"}),
    );
    assert_eq!(run(&no_aud, NOW), "citizens");
}

#[test]
fn jwt_rs256_and_es256() {
    let d = keydir();
    let rs = compile(&jwt_header_config("RS256", "rsa.pub"), d.path()).unwrap();
    let es = compile(&jwt_header_config("ES256", "ec.pub"), d.path()).unwrap();
    let claims = serde_json::json!({"role": "intermediary", "exp": NOW + 60});
    let rsa_key = EncodingKey::from_rsa_pem(include_bytes!("../../testdata/jwt/rsa.pem")).unwrap();
    let ec_key = EncodingKey::from_ec_pem(include_bytes!("../../testdata/jwt/ec.pem")).unwrap();
    let rs_tok = encode(&Header::new(Algorithm::RS256), &claims, &rsa_key).unwrap();
    let es_tok = encode(&Header::new(Algorithm::ES256), &claims, &ec_key).unwrap();
    assert_eq!(classify_bearer(&rs, &rs_tok, NOW), "intermediaries");
    assert_eq!(classify_bearer(&es, &es_tok, NOW), "intermediaries");
    // cross: an ES256 token against the RS256-pinned matcher and vice versa
    assert_eq!(classify_bearer(&rs, &es_tok, NOW), "citizens");
    assert_eq!(classify_bearer(&es, &rs_tok, NOW), "citizens");
    // key confusion: HS256 token signed with the RSA public key bytes as secret
    let confused = hs_token(
        Algorithm::HS256,
        claims.clone(),
        include_bytes!("../../testdata/jwt/rsa.pub"),
    );
    assert_eq!(classify_bearer(&rs, &confused, NOW), "citizens");
    assert_eq!(classify_bearer(&rs, &rs_tok, NOW + 61), "citizens");
}

#[test]
fn compile_errors_name_keys() {
    let d = keydir();
    let src = r#"
default = "citizens"
trusted_header_from = ["10.0.0.0/33"]
[[matchers]]
cohort = "a"
jwt = { claim = "role", values = ["x"], algorithm = "HS257", key_file = "hs.key" }
[[matchers]]
cohort = "a"
jwt = { claim = "role", values = ["x"], algorithm = "RS256", key_file = "missing/jwt.pub" }
[[matchers]]
cohort = "b"
network = ["192.0.2.0/24", "192.0.2.300/24"]
[[matchers]]
cohort = "b"
[[matchers]]
cohort = "b"
network = ["192.0.2.0/24"]
path_prefix = ["/x"]
[[matchers]]
cohort = "c d"
path_prefix = ["x/"]
[[matchers]]
cohort = "b"
jwt = { claim = "role", values = ["x"], algorithm = "RS256", key_file = "hs.key" }
"#;
    let errs = compile(src, d.path()).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "trusted_header_from[0]",
        "matchers[0].jwt.algorithm",
        "matchers[1].jwt.key_file",
        "matchers[2].network[1]",
        "matchers[3]",
        "matchers[4]",
        "matchers[5].cohort",
        "matchers[5].path_prefix[0]",
        "matchers[6].jwt.key_file",
    ] {
        assert!(keys.contains(&k), "missing {k} in {errs:?}");
    }
    let missing = errs
        .iter()
        .find(|e| e.key == "matchers[1].jwt.key_file")
        .unwrap();
    assert!(missing.reason.contains("missing/jwt.pub"), "{missing:?}");
    let several = errs.iter().find(|e| e.key == "matchers[4]").unwrap();
    assert!(several.reason.contains("network, path_prefix"));
}

#[test]
fn compile_errors_names_and_headers() {
    let d = keydir();
    let src = r#"
default = "citizens"
names = ["citizens", "intermediaries", "citizens"]
[[matchers]]
cohort = "intermediaires"
header = { name = "x-cohort", values = ["intermediary"] }
"#;
    let errs = compile(src, d.path()).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"names[2]"), "{errs:?}");
    assert!(keys.contains(&"matchers[0].cohort"), "{errs:?}");
    // header matcher without trusted gateways
    assert!(keys.contains(&"matchers[0].header"), "{errs:?}");
    // short HMAC secret
    std::fs::write(d.path().join("short.key"), "tooshort\n").unwrap();
    let errs = compile(&jwt_header_config("HS256", "short.key"), d.path()).unwrap_err();
    assert_eq!(errs[0].key, "matchers[0].jwt.key_file");
    // unknown field is rejected by serde
    assert!(toml::from_str::<CohortConfig>("defualt = \"x\"").is_err());
}

#[test]
fn explicit_names_fix_ids() {
    let d = keydir();
    let src = r#"
default = "citizens"
names = ["intermediaries", "citizens", "desk"]
[[matchers]]
cohort = "intermediaries"
path_prefix = ["/i/"]
"#;
    let c = compile(src, d.path()).unwrap();
    assert_eq!(c.names(), ["intermediaries", "citizens", "desk"]);
    assert_eq!(c.default_id().index(), 1);
    assert_eq!(CohortConfig::default().default, "everyone");
}
