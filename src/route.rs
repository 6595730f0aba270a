//! Which gate a request belongs to.
//!
//! Paths are matched after normalization, so that an encoded or decorated spelling of a gated
//! path cannot slip past its gate (`/cl%61im`, `/claim;x`, `//claim`, `/x/../claim` all mean
//! `/claim` to a typical portal). Normalization: percent-decoding (a decoded `/` splits segments
//! like a real one), `;parameters` removed from each segment, empty and `.` segments dropped,
//! `..` resolved. A path that decodes to invalid UTF-8, contains NUL or a backslash, or climbs
//! above the root is refused (400): no portal has a sane meaning for it.

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
    for raw in decoded.split('/') {
        let seg = raw.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segs.push(s),
        }
    }
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
}

/// Compiled path rules of one gate.
#[derive(Debug, Clone)]
pub struct Rules {
    prefixes: Vec<String>,
    globs: Vec<Vec<GlobSeg>>,
    methods: Vec<Method>,
}

#[derive(Debug, Clone, PartialEq)]
enum GlobSeg {
    /// `**`: any number of segments.
    Any,
    /// A segment pattern with `*` wildcards.
    Pattern(String),
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
            })
        } else {
            Err(errs)
        }
    }

    /// Whether a request (normalized path) falls under these rules.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.prefixes.iter().any(|p| prefix_match(p, path))
            || self.globs.iter().any(|g| {
                let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                glob_match(g, &segs)
            })
    }
}

fn prefix_match(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    if let Some(stripped) = prefix.strip_suffix('/') {
        return path.len() > stripped.len() + 1 && path.starts_with(prefix);
    }
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn glob_match(pat: &[GlobSeg], segs: &[&str]) -> bool {
    match pat.first() {
        None => segs.is_empty(),
        Some(GlobSeg::Any) => (0..=segs.len()).any(|skip| glob_match(&pat[1..], &segs[skip..])),
        Some(GlobSeg::Pattern(p)) => match segs.first() {
            Some(s) if seg_match(p.as_bytes(), s.as_bytes()) => glob_match(&pat[1..], &segs[1..]),
            _ => false,
        },
    }
}

/// `*` within one segment.
fn seg_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| seg_match(&p[1..], &s[i..])),
        Some(&c) => s.first() == Some(&c) && seg_match(&p[1..], &s[1..]),
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
            "//claim",
            "/claim;jsessionid=1",
            "/x/../claim",
            "/./claim",
            "/%2fclaim",
        ] {
            assert_eq!(normalize(p).unwrap(), "/claim", "{p}");
        }
        assert_eq!(normalize("/account/x.css").unwrap(), "/account/x.css");
        assert_eq!(normalize("/account;x.css").unwrap(), "/account");
        assert_eq!(normalize("/account%2Fx.css").unwrap(), "/account/x.css");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/").unwrap(), "/a/");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a%00b"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%5cb"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%c3"), Err(PathError::BadEncoding));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
    }

    fn rules(prefix: &[&str], glob: &[&str], methods: &[&str]) -> Rules {
        Rules::compile(&RuleConfig {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            glob: glob.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
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
    fn bad_rules_name_the_key() {
        let e = Rules::compile(&RuleConfig {
            prefix: vec!["claim".into()],
            glob: vec!["/a/[b]".into()],
            methods: vec!["GE T".into()],
        })
        .unwrap_err();
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["prefix[0]", "glob[0]", "methods[0]"]);
        let e = Rules::compile(&RuleConfig::default()).unwrap_err();
        assert_eq!(e[0].0, "prefix");
    }
}
