//! Semantic checks of a parsed [`Config`], section by section and across sections: what serde
//! cannot express (ranges, combinations, references between sections). Each problem is a key path
//! and a reason; `load.rs` adds the file and line.

use super::*;

impl Config {
    /// Cross-field checks serde cannot express. Returns (key, reason) pairs.
    pub(super) fn validate(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let s = &self.server;
        if s.max_header_bytes.0 < 8192 {
            v.push((
                "server.max_header_bytes".into(),
                "must be at least 8KiB (8192)".into(),
            ));
        }
        if s.max_header_bytes.0 > 1 << 20 {
            v.push((
                "server.max_header_bytes".into(),
                "must be at most 1MiB".into(),
            ));
        }
        if s.max_headers == 0 {
            v.push(("server.max_headers".into(), "must be at least 1".into()));
        }
        if s.max_connections == 0 {
            v.push(("server.max_connections".into(), "must be at least 1".into()));
        }
        if s.http2_max_streams == 0 {
            v.push((
                "server.http2_max_streams".into(),
                "must be at least 1".into(),
            ));
        }
        if s.workers > 1024 {
            v.push(("server.workers".into(), "must be at most 1024".into()));
        }
        for (key, d) in [
            ("server.request_head_timeout", s.request_head_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
        ] {
            if d.0.is_zero() {
                v.push((key.into(), "must be longer than zero".into()));
            }
        }
        if self.upstream.urls.is_empty() {
            v.push((
                "upstream.urls".into(),
                "list at least one portal address, e.g. [\"http://127.0.0.1:9000\"]".into(),
            ));
        }
        for (i, url) in self.upstream.urls.iter().enumerate() {
            if let Err(reason) = parse_upstream(url) {
                v.push((format!("upstream.urls[{i}]"), reason));
            }
        }
        for e in crate::tls::validate(self) {
            // Checked, not run: a private key not available here is listed by
            // `secret_sources`, not refused.
            let deferred = self.defer_secrets
                && self
                    .secret_sources()
                    .iter()
                    .any(|s| s.key == e.key && s.missing.is_some());
            if !deferred {
                v.push((e.key, e.reason));
            }
        }
        if self.upstream.unhealthy_after == 0 {
            v.push((
                "upstream.unhealthy_after".into(),
                "must be at least 1".into(),
            ));
        }
        if self.admin.listen == self.server.listen && self.server.listen.port() != 0 {
            v.push((
                "admin.listen".into(),
                "must differ from server.listen: the admin listener is separate".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            v.push(("log.level".into(), format!("invalid filter: {e}")));
        }
        for (i, h) in self.routing.hosts.iter().enumerate() {
            if let Err(reason) = crate::route::canonical_host(h) {
                v.push((format!("routing.hosts[{i}]"), reason));
            }
        }
        self.validate_waiting_room(&mut v);
        if let Some(r) = &self.rate_limits {
            if let Err(errs) = r.validate() {
                v.extend(
                    errs.into_iter()
                        .map(|e| (format!("rate_limits.{}", e.key), e.reason)),
                );
            }
        }
        if let Some(g) = &self.upstream_guard {
            if let Err(errs) = g.validate() {
                v.extend(
                    errs.into_iter()
                        .map(|e| (format!("upstream_guard.{}", e.key), e.reason)),
                );
            }
        }
        v.extend(self.isolation.validate());
        v.extend(self.store.validate(self.waiting_room.state_file.is_some()));
        if let Some(g) = &self.upstream_guard {
            if g.mode == crate::guard::GuardMode::Adaptive
                && self.store.kind == crate::store::StoreKind::Redis
            {
                v.push((
                    "upstream_guard.mode".into(),
                    "\"adaptive\" is not supported with [store] kind = \"redis\" yet: the nodes share the capacity you state; use mode = \"fixed\" with max_in_flight the portal's capacity".into(),
                ));
            }
        }
        if self.microcache.max_entries == 0 {
            v.push(("microcache.max_entries".into(), "must be at least 1".into()));
        }
        v
    }

    fn validate_waiting_room(&self, v: &mut Vec<(String, String)>) {
        let w = &self.waiting_room;
        for (key, d) in [
            ("waiting_room.snapshot_interval", w.snapshot_interval),
            ("waiting_room.tick", w.tick),
            ("waiting_room.poll_interval", w.poll_interval),
            ("waiting_room.ticket_ttl", w.ticket_ttl),
            ("waiting_room.pass_refresh", w.pass_refresh),
        ] {
            if d.0.is_zero() {
                v.push((key.into(), "must be longer than zero".into()));
            }
        }
        if w.cookie_prefix.is_empty()
            || !w
                .cookie_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            v.push((
                "waiting_room.cookie_prefix".into(),
                "use letters, digits, _ and - only".into(),
            ));
        }
        if http::HeaderName::from_bytes(w.release_header.as_bytes()).is_err() {
            v.push((
                "waiting_room.release_header".into(),
                format!("{:?} is not a header name", w.release_header),
            ));
        }
        // Checked, not run: secrets not available here are listed, not refused.
        if let Err(e) = self.keyring_inner(self.defer_secrets) {
            v.push(e);
        }
        if let Err((key, reason)) = self.admin_token_inner(self.defer_secrets) {
            v.push((key, reason));
        }
        let cohorts = match crate::cohort::Cohorts::compile(&self.cohorts, &self.base_dir) {
            Ok(c) => Some(c),
            Err(errs) => {
                for e in errs {
                    v.push((format!("cohorts.{}", e.key), e.reason));
                }
                None
            }
        };
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.gates.iter().enumerate() {
            let at = |k: &str| format!("gates[{i}].{k}");
            if g.name.is_empty()
                || g.name.len() > 32
                || !g
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                v.push((at("name"), "1-32 letters, digits, _ or -".into()));
            } else if !names.insert(g.name.clone()) {
                v.push((at("name"), format!("gate {:?} is defined twice", g.name)));
            }
            if let Err(errs) = crate::route::Rules::compile(&g.rules(&self.routing)) {
                for (k, r) in errs {
                    v.push((at(&k), r));
                }
            }
            if g.admission == super::Admission::Portal
                && self.store.kind == crate::store::StoreKind::Redis
            {
                v.push((
                    at("admission"),
                    "\"portal\" is not supported with [store] kind = \"redis\" yet: the node that advances admissions sees only its own part of the portal; use admission = \"capacity\" (the default)".into(),
                ));
            }
            if g.admission == super::Admission::Portal && self.upstream_guard.is_none() {
                v.push((
                    at("admission"),
                    "\"portal\" follows the portal's room as [upstream_guard] measures it: configure [upstream_guard]".into(),
                ));
            }
            let gate_rules = g.rules(&self.routing);
            for (j, r) in g.release_on.iter().enumerate() {
                if let Err(errs) = r.compile(&gate_rules) {
                    for (k, reason) in errs {
                        v.push((format!("gates[{i}].release_on[{j}].{k}"), reason));
                    }
                }
            }
            if let Err(errs) = g.settings().validate() {
                for e in errs {
                    v.push((at(&e.key), e.reason));
                }
            }
            if let Some(c) = &cohorts {
                for (name, share) in &g.shares {
                    if c.id(name).is_none() {
                        v.push((
                            at(&format!("shares.{name}")),
                            format!(
                                "unknown cohort {name:?}; declared: {}",
                                c.names().join(", ")
                            ),
                        ));
                    }
                    if !(*share > 0.0 && *share <= 1.0) {
                        v.push((at(&format!("shares.{name}")), "must be in (0, 1]".into()));
                    }
                }
                if let Some(s) = &g.schedule {
                    if let Err(errs) =
                        crate::schedule::Schedule::compile_with(s, c.names(), &self.calendar_set)
                    {
                        for e in errs {
                            v.push((at(&format!("schedule.{}", e.key)), e.reason));
                        }
                    }
                }
            }
        }
        if !self.gates.is_empty() && w.keys.is_empty() {
            v.push((
                "waiting_room.keys".into(),
                "gates need at least one signing key: [[waiting_room.keys]] id = 1, secret_env = \"ANTICAMERA_KEY_1\"".into(),
            ));
        }
    }
}
