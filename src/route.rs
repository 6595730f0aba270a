//! Which gate a request belongs to.
//!
//! A gate is a security boundary: when a spelling of a path could reach a gated page on some
//! portal, the request meets the gate (fail closed), never the other way round.
//!
//! Paths are matched after normalization, so that an encoded or decorated spelling of a gated
//! path cannot slip past its gate (`/cl%61im`, `/claim;x`, `//claim`, `/x/../claim`,
//! `/claim%2Fx` all mean `/claim` to a typical portal). Normalization: percent-decoding (a
//! decoded `/` splits segments like a real one: a portal that decodes `%2F` sees two segments,
//! one that does not sees one segment below the same parent, so the gate covers both), `;`
//! parameters removed from each segment (`/account;jsessionid=…` is `/account` on Java
//! portals), empty and `.` segments dropped, `..` resolved. A path that decodes to invalid
//! UTF-8, contains NUL, a control character or a backslash, or climbs above the root is refused
//! (400): no portal has a sane meaning for it.
//!
//! A `..` never takes a request out of a gate: a portal that does not resolve dot segments, or
//! does not decode `%2e`, `%2F` or strip `;` before it does (`/claim/..;/x`, `/claim/%2e%2e/x`,
//! `/claim/..%2Fx`), serves such a path from below the segment the `..` climbed out of. So a
//! request meets a gate if its normalized path does, or if any path a `..` climbed out of does
//! ([`Target`] keeps them; they are only computed when the raw path has a `..` or `%2e`).
//!
//! **Case.** A gate with `case_insensitive` compares paths ignoring case, as IIS and other
//! Windows-hosted portals serve them (`/Account` is `/account`): ASCII letters fold, and so does
//! any other letter, one character against one (Unicode simple case mapping, what .NET's
//! `OrdinalIgnoreCase` and NTFS do); no multi-character folds (`ß` is not `SS`).
//!
//! **Hosts.** A gate with `hosts` applies only to requests for those host names. Host names
//! compare ignoring ASCII case, without the port and without one trailing dot
//! (`Portal.Example.it.:443` is `portal.example.it`); internationalized names are written in
//! punycode (`xn--…`), as they travel. A request for a host that no gate and no
//! `[routing] hosts` names, or without a host, meets every host-scoped gate too: the portal may
//! serve it as its default site.

use http::Method;
use serde::Deserialize;

/// A path that cannot be normalized safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Invalid percent-encoding or UTF-8 after decoding.
    #[error("invalid percent-encoding in path")]
    BadEncoding,
    /// NUL, control characters or a backslash.
    #[error("forbidden character in path")]
    Forbidden,
    /// `..` above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// Not an origin-form path.
    #[error("path must start with /")]
    NotAbsolute,
}

/// Normalizes a request path (without the query) for matching. See the module docs.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        if path == "*" {
            return Ok("*".into());
        }
        return Err(PathError::NotAbsolute);
    }
    let decoded = percent_decode(path)?;
    let mut segs: Vec<&str> = Vec::new();
    walk(&decoded, &mut segs, |_| {})?;
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segs.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

/// Resolves the segments of a decoded path into `segs`; `climbed` sees the segments each `..`
/// is about to leave.
fn walk<'a>(
    decoded: &'a str,
    segs: &mut Vec<&'a str>,
    mut climbed: impl FnMut(&[&'a str]),
) -> Result<(), PathError> {
    for raw in decoded.split('/') {
        let seg = raw.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if segs.is_empty() {
                    return Err(PathError::AboveRoot);
                }
                climbed(segs);
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    Ok(())
}

fn percent_decode(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hi = (hex[0] as char)
                .to_digit(16)
                .ok_or(PathError::BadEncoding)?;
            let lo = (hex[1] as char)
                .to_digit(16)
                .ok_or(PathError::BadEncoding)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    if out.iter().any(|&c| c < 0x20 || c == 0x7f || c == b'\\') {
        return Err(PathError::Forbidden);
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

/// Whether a raw path may hold a `..` segment in some spelling (`..`, `%2e%2e`, `.%2E`, …).
/// Allocation-free; false for nearly every real request.
fn may_climb(raw: &str) -> bool {
    raw.contains("..")
        || raw
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%2e"))
}

/// The paths the `..` segments of a raw path climbed out of, each followed by the same path
/// with `/..` below it (the portal's view when it does not resolve that `..`). Empty, without
/// allocating, when the path has no `..`.
pub fn climbed_from(raw_path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !raw_path.starts_with('/') || !may_climb(raw_path) {
        return out;
    }
    let Ok(decoded) = percent_decode(raw_path) else {
        return out;
    };
    let mut segs = Vec::new();
    let _ = walk(&decoded, &mut segs, |left| {
        let mut p = String::new();
        for s in left {
            p.push('/');
            p.push_str(s);
        }
        out.push(format!("{p}/.."));
        out.push(p);
    });
    out
}

/// The host name of a `Host` header or a URI authority, as gates compare it: without user
/// information, port and one trailing dot (`Portal.example.it.:443` → `Portal.example.it`).
/// Case is kept; comparisons ignore ASCII case.
pub fn host_of(authority: &str) -> &str {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    let h = if a.starts_with('[') {
        match a.find(']') {
            Some(i) => &a[..=i],
            None => a,
        }
    } else {
        a.split(':').next().unwrap_or(a)
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// A host name as written in the config, checked and made canonical: lowercase, no trailing
/// dot. Errors say why (a port, a wildcard, non-ASCII letters instead of punycode, …).
pub fn canonical_host(h: &str) -> Result<String, String> {
    let bare = h.strip_suffix('.').unwrap_or(h);
    let ipv6 = bare.starts_with('[')
        && bare.ends_with(']')
        && bare[1..bare.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    let labels_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ipv6 || labels_ok {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(format!(
            "{h:?} must be a host name without port or wildcard (letters, digits, -, .; \
             internationalized names in punycode, xn--…)"
        ))
    }
}

/// Path rules of a gate, as written in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Path prefixes, matched on whole segments: `/claim` matches `/claim` and `/claim/x`,
    /// not `/claims`. A prefix ending in `/` matches only below it.
    #[serde(default)]
    pub prefix: Vec<String>,
    /// Globs: `*` matches within one segment, `**` across segments.
    #[serde(default)]
    pub glob: Vec<String>,
    /// Methods this gate applies to; empty = all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host names this gate applies to; empty = every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Compare paths ignoring case (see the module docs).
    #[serde(default)]
    pub case_insensitive: bool,
}

/// Compiled path rules of one gate.
#[derive(Debug, Clone)]
pub struct Rules {
    prefixes: Vec<String>,
    globs: Vec<Vec<GlobSeg>>,
    methods: Vec<Method>,
    /// Canonical host names; empty = every host.
    hosts: Vec<String>,
    /// Case-insensitive paths.
    fold: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum GlobSeg {
    /// `**`: any number of segments.
    Any,
    /// A segment pattern with `*` wildcards.
    Pattern(String),
}

/// One request as the gates see it: method, host, normalized path and the paths its `..`
/// segments climbed out of. Built once per request, then asked of every gate.
#[derive(Debug)]
pub struct Target<'a> {
    method: &'a Method,
    /// The request's host when the config names it; `None` for any other host or none.
    host: Option<&'a str>,
    path: &'a str,
    climbed: Vec<String>,
}

impl<'a> Target<'a> {
    /// `host` is the `Host` header or the URI's authority (HTTP/2 `:authority`), as received;
    /// `known_hosts` the canonical host names the config names (gates' `hosts` and
    /// `[routing] hosts`); `path` the normalized path; `raw_path` the path as received.
    pub fn new(
        method: &'a Method,
        host: Option<&'a str>,
        known_hosts: &[String],
        path: &'a str,
        raw_path: &str,
    ) -> Target<'a> {
        let host = host
            .map(host_of)
            .filter(|h| known_hosts.iter().any(|k| k.eq_ignore_ascii_case(h)));
        Target {
            method,
            host,
            path,
            climbed: climbed_from(raw_path),
        }
    }
}

/// The canonical host names a config names, for [`Target::new`]: each list's valid names,
/// once each.
pub fn known_hosts<'a>(lists: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in lists.into_iter().flatten() {
        if let Ok(h) = canonical_host(h) {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

impl Rules {
    /// Compiles the rules; errors are `(key relative to the rules, reason)`.
    pub fn compile(cfg: &RuleConfig) -> Result<Rules, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let mut prefixes = Vec::new();
        for (i, p) in cfg.prefix.iter().enumerate() {
            match normalize(p) {
                Ok(n) if p.starts_with('/') => prefixes.push(n),
                _ => errs.push((
                    format!("prefix[{i}]"),
                    format!("{p:?} must be a path starting with / (no %, .., or NUL)"),
                )),
            }
        }
        let mut globs = Vec::new();
        for (i, g) in cfg.glob.iter().enumerate() {
            if !g.starts_with('/') || g.contains(['%', '?', '[', ';']) {
                errs.push((
                    format!("glob[{i}]"),
                    format!("{g:?} must start with / and use only * and ** as wildcards"),
                ));
                continue;
            }
            globs.push(
                g.split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        if s == "**" {
                            GlobSeg::Any
                        } else {
                            GlobSeg::Pattern(s.to_string())
                        }
                    })
                    .collect(),
            );
        }
        let mut methods = Vec::new();
        for (i, m) in cfg.methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => errs.push((format!("methods[{i}]"), format!("{m:?} is not a method"))),
            }
        }
        let mut hosts = Vec::new();
        for (i, h) in cfg.hosts.iter().enumerate() {
            match canonical_host(h) {
                Ok(h) => hosts.push(h),
                Err(reason) => errs.push((format!("hosts[{i}]"), reason)),
            }
        }
        if prefixes.is_empty() && globs.is_empty() && errs.is_empty() {
            errs.push((
                "prefix".into(),
                "a gate needs at least one prefix or glob".into(),
            ));
        }
        if errs.is_empty() {
            Ok(Rules {
                prefixes,
                globs,
                methods,
                hosts,
                fold: cfg.case_insensitive,
            })
        } else {
            Err(errs)
        }
    }

    /// The canonical host names this gate is scoped to (empty = every host).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Whether a request (normalized path) falls under these rules' methods and paths, on
    /// any host.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method_ok(method) && self.path_matches(path)
    }

    /// Whether a request meets this gate: its method, its host (a host the config does not
    /// name meets every gate) and its normalized path or any path a `..` of it climbed out
    /// of. Allocation-free.
    pub fn catches(&self, t: &Target<'_>) -> bool {
        if !self.method_ok(t.method) {
            return false;
        }
        if let (false, Some(h)) = (self.hosts.is_empty(), t.host) {
            if !self.hosts.iter().any(|g| g.eq_ignore_ascii_case(h)) {
                return false;
            }
        }
        self.path_matches(t.path) || t.climbed.iter().any(|p| self.path_matches(p))
    }

    fn method_ok(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    fn path_matches(&self, path: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| prefix_match(p, path, self.fold))
            || (!self.globs.is_empty() && {
                let rest = path.trim_start_matches('/').trim_end_matches('/');
                self.globs.iter().any(|g| glob_match(g, rest, self.fold))
            })
    }
}

/// Two characters are the same, or (folding) the same letter in another case: ASCII, or one
/// character's simple case mapping.
#[inline]
fn same_char(a: char, b: char, fold: bool) -> bool {
    a == b
        || (fold
            && (a.eq_ignore_ascii_case(&b)
                || ((!a.is_ascii() || !b.is_ascii())
                    && (a.to_lowercase().eq(b.to_lowercase())
                        || a.to_uppercase().eq(b.to_uppercase())))))
}

/// `path` after `prefix`, comparing characters with [`same_char`].
fn strip_prefix<'p>(path: &'p str, prefix: &str, fold: bool) -> Option<&'p str> {
    if !fold {
        return path.strip_prefix(prefix);
    }
    let mut rest = path;
    for c in prefix.chars() {
        let d = rest.chars().next()?;
        if !same_char(c, d, true) {
            return None;
        }
        rest = &rest[d.len_utf8()..];
    }
    Some(rest)
}

fn prefix_match(prefix: &str, path: &str, fold: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(rest) = strip_prefix(path, prefix, fold) else {
        return false;
    };
    if prefix.ends_with('/') {
        !rest.is_empty()
    } else {
        rest.is_empty() || rest.starts_with('/')
    }
}

/// `rest`: the path's segments joined by `/`, without a leading or trailing one ("" = none).
/// The same walk as [`seg_match`], over segments: `**` is the star, so a glob of several `**`
/// costs at most pattern × segments.
fn glob_match(pat: &[GlobSeg], rest: &str, fold: bool) -> bool {
    let (mut p, mut s) = (pat, rest);
    // After the last `**` seen: the pattern behind it and where in the path it resumes.
    let mut star: Option<(&[GlobSeg], &str)> = None;
    loop {
        match p.first() {
            Some(GlobSeg::Any) => {
                p = &p[1..];
                star = Some((p, s));
                continue;
            }
            Some(GlobSeg::Pattern(pattern)) if !s.is_empty() => {
                let (seg, tail) = s.split_once('/').unwrap_or((s, ""));
                if seg_match(pattern, seg, fold) {
                    p = &p[1..];
                    s = tail;
                    continue;
                }
            }
            Some(GlobSeg::Pattern(_)) => {}
            None if s.is_empty() => return true,
            None => {}
        }
        // Mismatch: let the last `**` take one more segment, or fail.
        let Some((sp, ss)) = star else {
            return false;
        };
        if ss.is_empty() {
            return false;
        }
        let ss = ss.split_once('/').map_or("", |(_, tail)| tail);
        star = Some((sp, ss));
        p = sp;
        s = ss;
    }
}

/// `*` within one segment: the classic wildcard walk that backtracks to the last `*` only, so
/// its cost is at most pattern × segment length whatever the pattern.
fn seg_match(pat: &str, seg: &str, fold: bool) -> bool {
    let (mut p, mut s) = (pat, seg);
    // After the last `*` seen: the pattern behind it and where in the segment it resumes.
    let mut star: Option<(&str, &str)> = None;
    loop {
        match p.chars().next() {
            Some('*') => {
                p = &p[1..];
                star = Some((p, s));
                continue;
            }
            Some(c) => {
                if let Some(d) = s.chars().next() {
                    if same_char(c, d, fold) {
                        p = &p[c.len_utf8()..];
                        s = &s[d.len_utf8()..];
                        continue;
                    }
                }
            }
            None if s.is_empty() => return true,
            None => {}
        }
        // Mismatch: let the last `*` take one more character, or fail.
        let Some((sp, ss)) = star else {
            return false;
        };
        let Some(d) = ss.chars().next() else {
            return false;
        };
        let ss = &ss[d.len_utf8()..];
        star = Some((sp, ss));
        p = sp;
        s = ss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_same_path_normalize_alike() {
        for p in [
            "/claim",
            "/cl%61im",
            "/%63%6C%61%69%6D",
            "//claim",
            "///claim//",
            "/claim;jsessionid=1",
            "/claim;",
            "/x/../claim",
            "/x;y/../claim",
            "/x/..;y/claim",
            "/x/%2e%2e/claim",
            "/x/.%2E/claim",
            "/./claim",
            "/%2e/claim",
            "/%2fclaim",
            "/x%2F..%2Fclaim",
        ] {
            let want = if p.ends_with("//") {
                "/claim/"
            } else {
                "/claim"
            };
            assert_eq!(normalize(p).unwrap(), want, "{p}");
        }
        assert_eq!(normalize("/account/x.css").unwrap(), "/account/x.css");
        assert_eq!(normalize("/account;x.css").unwrap(), "/account");
        assert_eq!(normalize("/account%2Fx.css").unwrap(), "/account/x.css");
        assert_eq!(normalize("/account%2fsub").unwrap(), "/account/sub");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/").unwrap(), "/a/");
        assert_eq!(normalize("/a/.").unwrap(), "/a");
        assert_eq!(normalize("/a/b/..").unwrap(), "/a");
        assert_eq!(normalize("*").unwrap(), "*");
        // Case is kept: whether it matters is the gate's choice.
        assert_eq!(normalize("/ACCOUNT").unwrap(), "/ACCOUNT");
        // `%25` is a literal `%`, decoded once.
        assert_eq!(normalize("/a%2561").unwrap(), "/a%61");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/%2e%2e/%2e%2e/etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/..;/etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a%00b"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%5cb"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%0d%0ab"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%c3"), Err(PathError::BadEncoding));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
    }

    fn cfg(prefix: &[&str], glob: &[&str], methods: &[&str]) -> RuleConfig {
        RuleConfig {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            glob: glob.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn rules(prefix: &[&str], glob: &[&str], methods: &[&str]) -> Rules {
        Rules::compile(&cfg(prefix, glob, methods)).unwrap()
    }

    /// Whether `r` catches a GET of `raw` (on no particular host), normalized as the proxy does.
    fn catches(r: &Rules, raw: &str) -> bool {
        let n = normalize(raw).unwrap();
        r.catches(&Target::new(&Method::GET, None, &[], &n, raw))
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = rules(&["/claim", "/api/"], &[], &[]);
        assert!(r.matches(&Method::GET, "/claim"));
        assert!(r.matches(&Method::GET, "/claim/step/2"));
        assert!(!r.matches(&Method::GET, "/claims"));
        assert!(r.matches(&Method::GET, "/api/x"));
        assert!(!r.matches(&Method::GET, "/api/"));
        assert!(!r.matches(&Method::GET, "/info"));
    }

    #[test]
    fn globs_and_methods() {
        let r = rules(&[], &["/servizi/*/domanda", "/delega/**"], &["post", "GET"]);
        assert!(r.matches(&Method::POST, "/servizi/bonus600/domanda"));
        assert!(!r.matches(&Method::POST, "/servizi/a/b/domanda"));
        assert!(r.matches(&Method::GET, "/delega/video/prenota"));
        assert!(r.matches(&Method::GET, "/delega"));
        assert!(!r.matches(&Method::DELETE, "/delega/x"));
    }

    #[test]
    fn segment_wildcards() {
        let r = rules(&[], &["/a/*x*y", "/b/**/c/*", "/d/*"], &[]);
        assert!(r.matches(&Method::GET, "/a/xy"));
        assert!(r.matches(&Method::GET, "/a/1x2x3y"));
        assert!(!r.matches(&Method::GET, "/a/1x2y3"));
        assert!(r.matches(&Method::GET, "/b/c/1"));
        assert!(r.matches(&Method::GET, "/b/1/2/c/3/"));
        assert!(!r.matches(&Method::GET, "/b/1/c"));
        assert!(r.matches(&Method::GET, "/d/é"));
        assert!(!r.matches(&Method::GET, "/d"));
        // A pattern of many stars against a long segment stays cheap (pattern × segment).
        let r = rules(&[], &["/*a*a*a*a*a*a*a*a*b"], &[]);
        let long = format!("/{}", "a".repeat(20_000));
        let t = std::time::Instant::now();
        assert!(!r.matches(&Method::GET, &long));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // So does a glob of many `**` against a path of many segments (pattern × segments).
        let r = rules(&[], &["/**/a/**/a/**/a/**/a/**/b"], &[]);
        let long = "/a".repeat(8_000);
        let t = std::time::Instant::now();
        assert!(!r.matches(&Method::GET, &long));
        assert!(r.matches(&Method::GET, &format!("{long}/b")));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn every_spelling_of_a_gated_path_meets_its_gate() {
        let r = rules(&["/account"], &[], &[]);
        for p in [
            "/account",
            "/account/",
            "//account",
            "/account;jsessionid=x",
            "/%61ccount",
            "/x/../account",
            "/account%2Fsub",
            "/account/./x",
        ] {
            assert!(catches(&r, p), "{p}");
        }
        // Case-sensitive (the default): another case is another page.
        for p in ["/ACCOUNT", "/Account/", "/accounts", "/info"] {
            assert!(!catches(&r, p), "{p}");
        }
    }

    #[test]
    fn case_insensitive_gates_fold_ascii_and_single_letters() {
        let mut c = cfg(&["/account", "/città/"], &["/servizi/*/Domanda"], &[]);
        c.case_insensitive = true;
        let r = Rules::compile(&c).unwrap();
        for p in [
            "/ACCOUNT",
            "/Account/",
            "//account",
            "//ACCOUNT/x",
            "/%41ccount",
            "/aCCount;jsessionid=x",
            "/X/../Account",
            "/ACCOUNT%2fsub",
            "/CITTÀ/x",
            "/citt%C3%80/x",
            "/SERVIZI/isee/domanda",
            "/servizi/ISEE/DOMANDA/",
        ] {
            assert!(catches(&r, p), "{p}");
        }
        for p in [
            "/accounts",
            "/ACCOUNTS",
            "/città",
            "/servizi/a/b/domanda",
            "/info",
        ] {
            assert!(!catches(&r, p), "{p}");
        }
    }

    #[test]
    fn a_dot_segment_never_leaves_a_gate() {
        let r = rules(&["/account"], &["/servizi/*/domanda"], &[]);
        for p in [
            "/account/../info",
            "/account/..;/info",
            "/account/%2e%2e/info",
            "/account/.%2E/info",
            "/account/..%2Finfo",
            "/account/x/../../info",
            "/account;a=b/../info",
            "/x/../account/../info",
            "/servizi/isee/domanda/../../info",
        ] {
            assert!(catches(&r, p), "{p}");
        }
        for p in ["/info/../x", "/x/..;/info", "/accounts/../x"] {
            assert!(!catches(&r, p), "{p}");
        }
        assert!(climbed_from("/static/app.js").is_empty());
        assert_eq!(climbed_from("/a/b/%2E%2e/c"), ["/a/b/..", "/a/b"]);
    }

    #[test]
    fn host_names_compare_without_case_port_and_trailing_dot() {
        assert_eq!(host_of("portal.example.it"), "portal.example.it");
        assert_eq!(host_of("Portal.Example.IT.:443"), "Portal.Example.IT");
        assert_eq!(host_of("portal.example.it."), "portal.example.it");
        assert_eq!(host_of("user@portal.example.it:80"), "portal.example.it");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of(""), "");
        assert_eq!(
            canonical_host("WWW.Portal.example.it.").unwrap(),
            "www.portal.example.it"
        );
        assert_eq!(
            canonical_host("xn--citt-5qa.it").unwrap(),
            "xn--citt-5qa.it"
        );
        assert_eq!(canonical_host("[::1]").unwrap(), "[::1]");
        for bad in [
            "portal.example.it:443",
            "*.example.it",
            "città.it",
            "",
            "a..b",
            ".",
        ] {
            assert!(canonical_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_scoped_gates() {
        let mut c = cfg(&["/account"], &[], &[]);
        c.hosts = vec!["portal.example.it".into(), "www.portal.example.it".into()];
        let a = Rules::compile(&c).unwrap();
        let known = known_hosts([
            a.hosts(),
            &[
                "other.example.it".to_string(),
                "OTHER.example.it.".to_string(),
            ][..],
        ]);
        assert_eq!(
            known,
            [
                "portal.example.it",
                "www.portal.example.it",
                "other.example.it"
            ]
        );
        let at = |host: Option<&str>, path: &str| {
            let n = normalize(path).unwrap();
            a.catches(&Target::new(&Method::GET, host, &known, &n, path))
        };
        for h in [
            "portal.example.it",
            "PORTAL.example.it",
            "portal.example.it.",
            "portal.example.it:443",
            "portal.example.it.:8443",
            "www.portal.example.it",
        ] {
            assert!(at(Some(h), "/account"), "{h}");
            assert!(!at(Some(h), "/info"), "{h}");
        }
        // A host the config names elsewhere is not this gate's.
        assert!(!at(Some("other.example.it"), "/account"));
        assert!(!at(Some("Other.Example.it.:80"), "/account"));
        // A host nobody names, or none: the portal may serve it as its default site.
        assert!(at(Some("unknown.example"), "/account"));
        assert!(at(Some("203.0.113.7"), "/account"));
        assert!(at(None, "/account"));
    }

    #[test]
    fn bad_rules_name_the_key() {
        let e = Rules::compile(&RuleConfig {
            prefix: vec!["claim".into()],
            glob: vec!["/a/[b]".into()],
            methods: vec!["GE T".into()],
            hosts: vec!["portal.example.it:443".into()],
            case_insensitive: false,
        })
        .unwrap_err();
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["prefix[0]", "glob[0]", "methods[0]", "hosts[0]"]);
        let e = Rules::compile(&RuleConfig::default()).unwrap_err();
        assert_eq!(e[0].0, "prefix");
    }
}
