//! TLS on both sides, with rustls and its `ring` provider.
//!
//! - Towards the portal: [`PortalTls`] is built once from the config and shared by the workers
//!   (trust roots from `[upstream.tls] ca_file` or the system's store, an optional client
//!   certificate for mutual TLS, an optional fixed server name for SNI and verification);
//!   [`portal_connector`] wraps a worker's `HttpConnector` so the legacy client pools
//!   `https://` connections exactly like plain ones. There is no way to skip verification.
//!   [`failure_reason`] names why a handshake failed, for the log line and
//!   `anticamera_upstream_tls_errors_total`.
//! - For clients: [`ServerTls`] holds the listener's rustls config (certificate chain, key, ALPN
//!   `h2` and `http/1.1`) behind an `ArcSwap`; each accepted connection takes the config in force.
//!   [`ServerTls::watch`] checks the two files' modification time and size every
//!   `server.tls.reload_interval` and swaps in a new pair once it loads; a pair that does not
//!   load keeps the old certificate, and the log says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::sync::watch;

use crate::config::{Config, ServerTlsConfig, UpstreamTlsConfig};

/// Failed TLS handshakes with the portal, by `upstream` address and `reason` (`expired`,
/// `unknown_issuer`, `wrong_name`, …).
pub const UPSTREAM_TLS_ERRORS: &str = "anticamera_upstream_tls_errors_total";
/// Reloads of the client-facing certificate after its files changed, by `result`
/// (`success`, `failure`).
pub const CERT_RELOADS: &str = "anticamera_tls_cert_reloads_total";
/// Client TLS handshakes that failed or did not finish in time, by `reason`.
pub const HANDSHAKE_FAILURES: &str = "anticamera_tls_handshake_failures_total";

/// TLS material that cannot be used, with the config key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// The key path (`server.tls.cert_file`, `upstream.tls.ca_file`, …).
    pub key: String,
    /// Why.
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> TlsError {
    TlsError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// rustls with *ring*: ring is already in the tree (jsonwebtoken), aws-lc-rs would need cmake
/// and clang to build. rustls 0.23.48 marks this provider deprecated because it has no
/// post-quantum key exchange (X25519MLKEM768); it negotiates X25519/P-256/P-384, which every
/// client and portal speaks. Moving to aws-lc-rs later changes only this function.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain, or a set of CAs).
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let at = |e: &dyn std::fmt::Display| err(key, format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| at(&e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&e))?;
    if certs.is_empty() {
        return Err(at(&"no PEM certificate (BEGIN CERTIFICATE) in it"));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let at = |e: &dyn std::fmt::Display| err(key, format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| at(&e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => at(&"no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"),
        e => at(&e),
    })
}

/// How anticamera verifies and authenticates itself to `https://` portal addresses; built
/// once, shared by every worker's connector.
#[derive(Clone)]
pub struct PortalTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for PortalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PortalTls {
    /// Builds the client side from `[upstream.tls]`. The system's trust store is read only
    /// when a portal address is `https://` and no `ca_file` is given.
    pub fn from_config(cfg: &Config) -> Result<PortalTls, TlsError> {
        Self::build(&cfg.upstream.tls, &cfg.base_dir, cfg.upstream_uses_tls())
    }

    /// As [`PortalTls::from_config`]; `system_roots`: read the system's trust store when no
    /// `ca_file` is given (without it and without `ca_file`, no server is trusted).
    pub fn build(
        tls: &UpstreamTlsConfig,
        base: &Path,
        system_roots: bool,
    ) -> Result<PortalTls, TlsError> {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &tls.ca_file {
            let key = "upstream.tls.ca_file";
            let path = base.join(ca);
            for c in read_certs(key, &path)? {
                roots
                    .add(c)
                    .map_err(|e| err(key, format!("{}: {e}", path.display())))?;
            }
        } else if system_roots {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(err(
                    "upstream.tls.ca_file",
                    format!(
                        "no trusted certificate found in the system's store ({why}); install \
                         ca-certificates or give the portal's CA in ca_file"
                    ),
                ));
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("upstream.tls", e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(c), Some(k)) => {
                let certs = read_certs("upstream.tls.client_cert_file", &base.join(c))?;
                let key = read_key("upstream.tls.client_key_file", &base.join(k))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    err(
                        "upstream.tls.client_key_file",
                        format!("does not go with client_cert_file: {e}"),
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(err(
                    "upstream.tls.client_key_file",
                    "client_cert_file needs its private key here",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "upstream.tls.client_cert_file",
                    "client_key_file needs its certificate here",
                ))
            }
        };
        let server_name = match &tls.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| {
                err(
                    "upstream.tls.server_name",
                    format!("{n:?} is not a DNS name or IP address: {e}"),
                )
            })?),
            None => None,
        };
        Ok(PortalTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// A worker's connector to the portal: plain TCP for `http://` addresses, TLS over it for
/// `https://` ones; the legacy client pools both the same way.
pub type PortalConnector = HttpsConnector<HttpConnector>;

/// Wraps a worker's TCP connector (its timeouts and socket options stay) with the portal's TLS.
pub fn portal_connector(mut tcp: HttpConnector, tls: &PortalTls) -> PortalConnector {
    // The TLS layer checks the scheme; the TCP connector must let `https://` through.
    tcp.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    // The portal speaks HTTP/1.1 to anticamera (see `upstream.rs`).
    builder.enable_http1().wrap_connector(tcp)
}

/// Why a request to the portal failed in its TLS handshake, if it did: a short label for the
/// metric, `None` when the error is not a TLS one (refused connection, timeout, …).
pub fn failure_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(r) = find_rustls(x) {
            return Some(reason(r));
        }
        cur = x.source();
    }
    None
}

/// The rustls error in `e`, looking through `io::Error` wrappers (whose `source` skips the
/// error they wrap).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

fn reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong_name"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad_signature",
            _ => "invalid_certificate",
        },
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::NoCertificatesPresented => "no_certificate",
        _ => "handshake",
    }
}

/// The client-facing TLS config in force, reloaded when its files change.
pub struct ServerTls {
    current: ArcSwap<rustls::ServerConfig>,
    cert_file: PathBuf,
    key_file: PathBuf,
    alpn: Vec<Vec<u8>>,
    interval: Duration,
    /// The files' (modification time, size) when last loaded or tried.
    stamp: Mutex<Stamp>,
}

type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp_of(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

impl ServerTls {
    /// Loads `[server.tls]`; `http2`: offer `h2` in ALPN beside `http/1.1`.
    pub fn load(
        cfg: &ServerTlsConfig,
        base: &Path,
        http2: bool,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let mut alpn = Vec::new();
        if http2 {
            alpn.push(b"h2".to_vec());
        }
        alpn.push(b"http/1.1".to_vec());
        let cert_file = base.join(&cfg.cert_file);
        let key_file = base.join(&cfg.key_file);
        // Stamp before reading: a change after the stamp is seen by the next check.
        let stamp = stamp_of([&cert_file, &key_file]);
        let config = server_config(&cert_file, &key_file, alpn.clone())?;
        Ok(Arc::new(ServerTls {
            current: ArcSwap::from_pointee(config),
            cert_file,
            key_file,
            alpn,
            interval: cfg.reload_interval.0,
            stamp: Mutex::new(stamp),
        }))
    }

    /// An acceptor with the config in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads the pair if either file changed since the last load or try: `None` when nothing
    /// changed, else whether the new pair is now in use (a pair that does not load leaves the
    /// old one in force). Counted and logged.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp_of([&self.cert_file, &self.key_file]);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return None;
            }
            *last = now;
        }
        let result = server_config(&self.cert_file, &self.key_file, self.alpn.clone());
        Some(match result {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics::counter!(CERT_RELOADS, "result" => "success").increment(1);
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    "TLS certificate reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                metrics::counter!(CERT_RELOADS, "result" => "failure").increment(1);
                tracing::error!(
                    error = %e,
                    "TLS certificate files changed but do not load; the previous certificate stays in use"
                );
                Err(e)
            }
        })
    }

    /// Checks the files every `reload_interval` until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    // Small files; reading them on this (admin) thread is fine.
                    let _ = self.reload_if_changed();
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

fn server_config(
    cert_file: &Path,
    key_file: &Path,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs("server.tls.cert_file", cert_file)?;
    let key = read_key("server.tls.key_file", key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                "server.tls.key_file",
                format!(
                    "{} does not go with cert_file {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Checks `[server.tls]` and `[upstream.tls]` as the process would load them (files read and
/// parsed, key matching certificate). The system's trust store is not read here.
pub(crate) fn validate(cfg: &Config) -> Vec<TlsError> {
    let mut out = Vec::new();
    if let Some(t) = &cfg.server.tls {
        if t.reload_interval.0.is_zero() {
            out.push(err(
                "server.tls.reload_interval",
                "must be longer than zero",
            ));
        }
        if let Err(e) = server_config(
            &cfg.base_dir.join(&t.cert_file),
            &cfg.base_dir.join(&t.key_file),
            Vec::new(),
        ) {
            out.push(e);
        }
    }
    if let Err(e) = PortalTls::build(&cfg.upstream.tls, &cfg.base_dir, false) {
        out.push(e);
    }
    out
}
