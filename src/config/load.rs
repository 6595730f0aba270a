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
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_mode(path, false)
    }

    /// Like [`Config::load`]; `demo` allows the fake example secrets.
    pub fn load_mode(path: &Path, demo: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cfg =
            Config::parse_in(&text, &base, demo).map_err(|issues| ConfigError::Invalid {
                file: path.to_path_buf(),
                issues,
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
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            let reason = inner.message().trim().to_string();
            let key = if path == "." || path.is_empty() {
                "(top level)".to_string()
            } else {
                path
            };
            vec![ConfigIssue { key, reason, line }]
        })?;
        cfg.demo_mode = demo;
        cfg.base_dir = base_dir.to_path_buf();
        let issues = cfg.validate();
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

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Best-effort line of the last segment of a dotted key path, for semantic errors. The first
/// segment names the table; `gates[2].capacity` is looked for in the third `[[gates]]` element
/// (and its sub-tables, like `[gates.schedule]`).
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?.split('[').next()?;
    let first = key.split('.').next()?;
    let (section, index) = match first.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let sub = format!("{section}.");
    let mut in_section = !key.contains('.');
    let mut elements = 0usize;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let array = t.starts_with("[[");
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            if name == section {
                in_section = !array || index.is_none_or(|n| n == elements);
                if array {
                    elements += 1;
                }
            } else if !name.starts_with(&sub) {
                in_section = false;
            }
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
    None
}
