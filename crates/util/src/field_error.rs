//! [`FieldError`]: one configuration problem, as every section's validation reports it.

/// One configuration problem: the key path (relative to the section being compiled, e.g.
/// `matchers[2].jwt.key_file` or `windows[1].start`) and a human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FieldError {
    /// Key path relative to the section, e.g. `matchers[0].network[1]`.
    pub key: String,
    /// What is wrong, for a human.
    pub reason: String,
}

impl FieldError {
    /// Builds a [`FieldError`].
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_key_then_reason() {
        let e = FieldError::new(format!("matchers[{}].cohort", 2), "unknown cohort");
        assert_eq!(e.key, "matchers[2].cohort");
        assert_eq!(e.reason, "unknown cohort");
        assert_eq!(e.to_string(), "matchers[2].cohort: unknown cohort");
    }
}
