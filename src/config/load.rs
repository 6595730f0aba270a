//! Loading a configuration: reading the file, parsing the TOML into [`Config`] with key paths
//! (`serde_path_to_error`), running the semantic checks (`validate.rs`), and reporting every
//! problem with file, line, key path and reason ([`ConfigIssue`], [`ConfigError`]).

use std::path::{Path, PathBuf};

use super::Config;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `server.listen` or `upstream.urls[1]`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
    /// 1-based line in the file, when the parser could tell.
    pub line: Option<usize>,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is wrong; every issue found is listed.
    #[error("{}", render_issues(file, issues))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong, one entry per key.
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(file: &Path, issues: &[ConfigIssue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&file.display().to_string());
        if let Some(line) = issue.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(&format!(": {}: {}", issue.key, issue.reason));
    }
    out
}

impl Config {
    /// Reads, parses and validates a configuration file, to run it: every secret it names
    /// must be available.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_mode(path, false)
    }

    /// Like [`Config::load`]; `demo` allows the fake example secrets.
    pub fn load_mode(path: &Path, demo: bool) -> Result<Config, ConfigError> {
        Self::load_inner(path, demo, false)
    }

    /// Like [`Config::load_mode`], to check the config (`check-config`, `schedule`) rather than
    /// run it: a secret taken from an environment variable or a file that is not available
    /// here is no error ([`Config::secret_sources`] lists them); one that is available is
    /// checked as for a run. [`Config::keyring`] and [`Config::admin_token`] still need them.
    pub fn load_for_check(path: &Path, demo: bool) -> Result<Config, ConfigError> {
        Self::load_inner(path, demo, true)
    }

    fn load_inner(path: &Path, demo: bool, defer_secrets: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cfg = Config::parse_inner(&text, &base, demo, defer_secrets).map_err(|issues| {
            ConfigError::Invalid {
                file: path.to_path_buf(),
                issues,
            }
        })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates configuration text (relative paths from the current directory).
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigIssue>> {
        Self::parse_in(text, Path::new("."), false)
    }

    /// Parses and validates configuration text; every issue names its key.
    pub fn parse_in(text: &str, base_dir: &Path, demo: bool) -> Result<Config, Vec<ConfigIssue>> {
        Self::parse_inner(text, base_dir, demo, false)
    }

    /// [`Config::parse_in`] to check, not run (see [`Config::load_for_check`]).
    pub fn parse_for_check_in(
        text: &str,
        base_dir: &Path,
        demo: bool,
    ) -> Result<Config, Vec<ConfigIssue>> {
        Self::parse_inner(text, base_dir, demo, true)
    }

    fn parse_inner(
        text: &str,
        base_dir: &Path,
        demo: bool,
        defer_secrets: bool,
    ) -> Result<Config, Vec<ConfigIssue>> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| line_of(text, element_start(text, s.start, &path)));
            let reason = inner.message().trim().to_string();
            let key = if path == "." || path.is_empty() {
                "(top level)".to_string()
            } else {
                path
            };
            vec![ConfigIssue { key, reason, line }]
        })?;
        cfg.demo_mode = demo;
        cfg.defer_secrets = defer_secrets;
        cfg.base_dir = base_dir.to_path_buf();
        let (calendars, calendar_errors) =
            crate::schedule::Calendars::compile(&cfg.calendars, &cfg.base_dir);
        cfg.calendar_set = calendars;
        let mut issues: Vec<(String, String)> = calendar_errors
            .into_iter()
            .map(|e| (format!("calendars.{}", e.key), e.reason))
            .collect();
        issues.extend(cfg.validate());
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(issues
                .into_iter()
                .map(|(key, reason)| ConfigIssue {
                    line: find_key_line(text, &key),
                    key,
                    reason,
                })
                .collect())
        }
    }
}

/// Where the element `[n]` of the key path starts when the error's span is the whole inline
/// array holding it (`holidays = [ {…}, {…} ]`: the parser points at the `[`), else `start`.
fn element_start(text: &str, start: usize, path: &str) -> usize {
    let Some(n) = path
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return start;
    };
    let Some(rest) = text.get(start..).filter(|r| r.starts_with('[')) else {
        return start;
    };
    let (mut depth, mut seen, mut expect) = (0usize, 0usize, false);
    let (mut quote, mut escaped, mut comment) = (None::<char>, false, false);
    for (i, c) in rest.char_indices() {
        if comment {
            comment = c != '\n';
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if expect && depth == 1 && !c.is_whitespace() && c != '#' && c != ']' {
            if seen == n {
                return start + i;
            }
            seen += 1;
            expect = false;
        }
        match c {
            '#' => comment = true,
            '"' | '\'' => quote = Some(c),
            '[' | '{' => {
                depth += 1;
                expect = depth == 1;
            }
            ']' | '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    start
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Best-effort line of the last segment of a dotted key path, for semantic errors. The first
/// segment picks the section (`gates[1]`: the second `[[gates]]`), a second segment naming a
/// table of it narrows to `[first.second]` (`calendars.it`), and the last segment is the key
/// looked for there.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?;
    let last = last.split('[').next()?;
    let first = key.split('.').next()?;
    let (section, index) = match first.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    // `calendars.it.ics`: the table `[calendars.it]` when the file has one.
    let sub = key
        .split('.')
        .nth(1)
        .filter(|_| key.split('.').count() > 2)
        .map(|s| format!("{section}.{}", s.split('[').next().unwrap_or(s)));
    let has_sub = sub.as_ref().is_some_and(|sub| {
        text.lines()
            .any(|l| l.trim().trim_matches(|c| c == '[' || c == ']').trim() == sub)
    });
    let mut in_section = !key.contains('.');
    let mut seen = 0usize;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let array = t.starts_with("[[");
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            if array && name == section {
                seen += 1;
            }
            let right_element = index.is_none_or(|n| seen == n + 1);
            in_section = right_element
                && match (&sub, has_sub) {
                    (Some(sub), true) => name == sub || name.starts_with(&format!("{sub}.")),
                    _ => name == section || name.starts_with(&format!("{section}.")),
                };
            continue;
        }
        if in_section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == last {
                    return Some(i + 1);
                }
            }
        }
    }
    // A key that is a table itself (`calendars.it`): its header.
    text.lines()
        .position(|l| {
            let t = l.trim();
            t.starts_with('[') && t.trim_matches(|c| c == '[' || c == ']').trim() == key
        })
        .map(|i| i + 1)
}
