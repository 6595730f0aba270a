//! TLS on both sides (issue 16): a portal reachable only over HTTPS, certificates that must be
//! refused (expired, another CA, another name), mutual TLS, clients over TLS with HTTP/1.1 and
//! HTTP/2 (ALPN), framing still checked after decryption, the handshake under the head deadline,
//! and a rotated certificate picked up without a restart. Every certificate is made here with
//! rcgen; everything talks over loopback sockets.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM and DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, serial: u64) -> Issued {
        self.issue_with(names, usage, serial, |_| {})
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        serial: u64,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("test {serial}"));
        p.extended_key_usages = vec![usage];
        p.serial_number = Some(SerialNumber::from(serial));
        edit(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn server_cert(ca: &Ca, serial: u64) -> Issued {
    ca.issue(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        serial,
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Replaces a file the way certificate tools do: write beside it, then rename over it.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        r.add(c).unwrap();
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Logs: one subscriber for the whole test binary, writing into a buffer the tests read.

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// Log lines that contain every one of `words`.
fn log_lines_with(words: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A portal reachable only over HTTPS

struct TlsPortal {
    addr: SocketAddr,
    /// TLS connections accepted (handshakes completed).
    handshakes: Arc<AtomicUsize>,
    /// The SNI of the last handshake.
    sni: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsPortal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A portal speaking HTTP/1.1 over TLS only, with `cert`; with `client_ca`, it requires a client
/// certificate from that CA. Answers `portal over tls` and, in `x-client-cert`, the number of
/// certificates the client presented.
async fn tls_portal(cert: &Issued, client_ca: Option<&str>) -> TlsPortal {
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(ca)))
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&cert.cert_pem), key(&cert.key_pem))
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let sni = Arc::new(Mutex::new(None));
    let (h, s) = (handshakes.clone(), sni.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let (_, conn) = tls.get_ref();
                *s.lock().unwrap() = conn.server_name().map(str::to_owned);
                let presented = conn.peer_certificates().map_or(0, |c| c.len());
                let svc = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-client-cert", presented.to_string())
                            .body(full("portal over tls"))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsPortal {
        addr,
        handshakes,
        sni,
        task,
    }
}

/// anticamera in front of `https://{portal}` with `[upstream.tls]` lines `tls`, files in `dir`.
fn proxy_to_https(portal: SocketAddr, tls: &str, dir: &Path) -> Proxy {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"https://{portal}\"]\nunhealthy_after = 1000\n\
         [upstream.tls]\n{tls}\n"
    );
    proxy_from_in(&text, dir)
}

async fn metrics_text(admin: SocketAddr) -> String {
    let (status, _, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// The value of the series of `family` whose labels contain every one of `labels`.
fn series(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Towards the portal

#[tokio::test]
async fn a_portal_only_on_https_is_reached_and_its_connections_pooled() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("portal CA");
    write(dir.path(), "ca.pem", &ca.pem());
    let portal = tls_portal(&server_cert(&ca, 10), None).await;
    let proxy = proxy_to_https(portal.addr, "ca_file = \"ca.pem\"", dir.path());

    for _ in 0..3 {
        let (status, _, body) = get(proxy.addr, "/hello").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "portal over tls");
    }
    // Sequential requests reuse one pooled TLS connection.
    assert_eq!(portal.handshakes.load(Ordering::SeqCst), 1);
    // The URL's IP is the name verified; no SNI is sent for an IP address.
    assert_eq!(*portal.sni.lock().unwrap(), None);
    proxy.stop().await;
}

#[tokio::test]
async fn the_system_roots_do_not_trust_a_private_ca() {
    // No ca_file: the system's store is the trust anchor, and the test's CA is not in it.
    let ca = Ca::new("private CA");
    let portal = tls_portal(&server_cert(&ca, 11), None).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_to_https(portal.addr, "", dir.path());
    let (status, _, _) = get(proxy.addr, "/").await;
    assert_eq!(status, 502);
    let m = metrics_text(proxy.admin).await;
    let label = format!("upstream=\"{}\"", portal.addr);
    assert!(
        series(
            &m,
            "anticamera_upstream_tls_errors_total",
            &[&label, "reason=\"unknown_issuer\""]
        )
        .is_some(),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_expired_portal_certificate_is_refused_with_502_and_says_why() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("portal CA");
    write(dir.path(), "ca.pem", &ca.pem());
    let expired = ca.issue_with(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        12,
        |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        },
    );
    let portal = tls_portal(&expired, None).await;
    let proxy = proxy_to_https(portal.addr, "ca_file = \"ca.pem\"", dir.path());

    let (status, _, _) = get(proxy.addr, "/claim").await;
    assert_eq!(status, 502);
    assert_eq!(portal.handshakes.load(Ordering::SeqCst), 0);

    let label = format!("upstream=\"{}\"", portal.addr);
    let m = metrics_text(proxy.admin).await;
    assert_eq!(
        series(
            &m,
            "anticamera_upstream_tls_errors_total",
            &[&label, "reason=\"expired\""]
        ),
        Some(1.0),
        "{m}"
    );
    let addr = portal.addr.to_string();
    let lines = log_lines_with(&["TLS with the portal failed", &addr, "expired"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_502() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let ours = Ca::new("our CA");
    let theirs = Ca::new("another CA");
    write(dir.path(), "ca.pem", &ours.pem());
    let portal = tls_portal(&server_cert(&theirs, 13), None).await;
    let proxy = proxy_to_https(portal.addr, "ca_file = \"ca.pem\"", dir.path());

    let (status, _, _) = get(proxy.addr, "/").await;
    assert_eq!(status, 502);
    assert_eq!(portal.handshakes.load(Ordering::SeqCst), 0);
    let label = format!("upstream=\"{}\"", portal.addr);
    let m = metrics_text(proxy.admin).await;
    assert_eq!(
        series(
            &m,
            "anticamera_upstream_tls_errors_total",
            &[&label, "reason=\"unknown_issuer\""]
        ),
        Some(1.0),
        "{m}"
    );
    let addr = portal.addr.to_string();
    let lines = log_lines_with(&["TLS with the portal failed", &addr, "UnknownIssuer"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn server_name_sets_sni_and_the_name_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("portal CA");
    write(dir.path(), "ca.pem", &ca.pem());
    // A certificate for a name only: reached by IP, it does not match.
    let named = ca.issue(&["portal.example"], ExtendedKeyUsagePurpose::ServerAuth, 14);
    let portal = tls_portal(&named, None).await;

    let plain = proxy_to_https(portal.addr, "ca_file = \"ca.pem\"", dir.path());
    let (status, _, _) = get(plain.addr, "/").await;
    assert_eq!(status, 502);
    let m = metrics_text(plain.admin).await;
    let label = format!("upstream=\"{}\"", portal.addr);
    assert!(
        series(
            &m,
            "anticamera_upstream_tls_errors_total",
            &[&label, "reason=\"wrong_name\""]
        )
        .is_some(),
        "{m}"
    );
    plain.stop().await;

    let named_proxy = proxy_to_https(
        portal.addr,
        "ca_file = \"ca.pem\"\nserver_name = \"portal.example\"",
        dir.path(),
    );
    let (status, _, body) = get(named_proxy.addr, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        portal.sni.lock().unwrap().as_deref(),
        Some("portal.example")
    );
    named_proxy.stop().await;
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("portal CA");
    let clients = Ca::new("client CA");
    write(dir.path(), "ca.pem", &ca.pem());
    let client = clients.issue(&["anticamera"], ExtendedKeyUsagePurpose::ClientAuth, 15);
    write(dir.path(), "client.pem", &client.cert_pem);
    write(dir.path(), "client.key", &client.key_pem);
    let portal = tls_portal(&server_cert(&ca, 16), Some(&clients.pem())).await;

    // Without a client certificate the portal ends the handshake: 502.
    let without = proxy_to_https(portal.addr, "ca_file = \"ca.pem\"", dir.path());
    let (status, _, _) = get(without.addr, "/").await;
    assert_eq!(status, 502);
    let m = metrics_text(without.admin).await;
    let label = format!("upstream=\"{}\"", portal.addr);
    assert!(
        series(
            &m,
            "anticamera_upstream_tls_errors_total",
            &[&label, "reason=\"alert_received\""]
        )
        .is_some(),
        "{m}"
    );
    without.stop().await;

    let with = proxy_to_https(
        portal.addr,
        "ca_file = \"ca.pem\"\nclient_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"",
        dir.path(),
    );
    let (status, headers, body) = get(with.addr, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "portal over tls");
    assert_eq!(headers["x-client-cert"], "1");
    with.stop().await;
}

#[test]
fn tls_files_that_cannot_be_used_are_named_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let a = server_cert(&ca, 17);
    let b = server_cert(&ca, 18);
    write(dir.path(), "a.pem", &a.cert_pem);
    write(dir.path(), "b.key", &b.key_pem);
    write(dir.path(), "junk.pem", "not a certificate\n");
    let check = |extra: &str| -> Vec<String> {
        let text = format!("[upstream]\nurls = [\"https://127.0.0.1:1\"]\n{extra}\n");
        match anticamera::config::Config::parse_in(&text, dir.path(), false) {
            Ok(_) => Vec::new(),
            Err(issues) => issues
                .iter()
                .map(|i| format!("{} {}", i.key, i.reason))
                .collect(),
        }
    };
    let e = check("[server.tls]\ncert_file = \"a.pem\"\nkey_file = \"b.key\"");
    assert!(
        e.iter()
            .any(|x| x.starts_with("server.tls.key_file") && x.contains("does not go with")),
        "{e:?}"
    );
    let e = check("[server.tls]\ncert_file = \"junk.pem\"\nkey_file = \"b.key\"");
    assert!(
        e.iter()
            .any(|x| x.starts_with("server.tls.cert_file") && x.contains("no PEM certificate")),
        "{e:?}"
    );
    let e = check("[upstream.tls]\nca_file = \"missing.pem\"");
    assert!(
        e.iter().any(|x| x.starts_with("upstream.tls.ca_file")),
        "{e:?}"
    );
    let e = check("[upstream.tls]\nclient_cert_file = \"a.pem\"");
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstream.tls.client_key_file")),
        "{e:?}"
    );
    let e = check("[upstream.tls]\nserver_name = \"not a name\"");
    assert!(
        e.iter().any(|x| x.starts_with("upstream.tls.server_name")),
        "{e:?}"
    );
    let e = check("[upstream.tls]\ninsecure = true");
    assert!(
        e.iter().any(|x| x.contains("unknown field `insecure`")),
        "there is no way to skip verification: {e:?}"
    );
    assert!(check("[upstream.tls]\nca_file = \"a.pem\"").is_empty());
}

// ---------------------------------------------------------------------------------------------
// For clients

/// anticamera with `[server.tls]` (files `server.pem`/`server.key` in `dir`) in front of `up`.
fn tls_proxy(up: SocketAddr, dir: &Path, server_extra: &str) -> Proxy {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{server_extra}\n\
         [server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nreload_interval = \"50ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [\"http://{up}\"]\n"
    );
    proxy_from_in(&text, dir)
}

/// A TLS connection to anticamera trusting `ca_pem`, offering `alpn`.
async fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn alpn_of(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(|p| p.to_vec())
}

fn peer_cert(s: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn body_of(resp: Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test]
async fn clients_over_tls_with_http1_get_answers_and_x_forwarded_proto_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let cert = server_cert(&ca, 20);
    write(dir.path(), "server.pem", &cert.cert_pem);
    write(dir.path(), "server.key", &cert.key_pem);
    let up = echo_upstream().await;
    let proxy = tls_proxy(up.addr, dir.path(), "");

    let tls = connect_tls(proxy.addr, &ca.pem(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("/over-tls")
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let echo = json(&body_of(resp).await);
        assert_eq!(echo["uri"], "/over-tls");
        assert_eq!(seen(&echo, "x-forwarded-proto"), vec!["https"]);
    }
    // Plain HTTP on the TLS port gets no answer as if it were served.
    let answer = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn clients_over_tls_with_http2_by_alpn_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let cert = server_cert(&ca, 21);
    write(dir.path(), "server.pem", &cert.cert_pem);
    write(dir.path(), "server.key", &cert.key_pem);
    let up = echo_upstream().await;
    let proxy = tls_proxy(up.addr, dir.path(), "");

    let tls = connect_tls(proxy.addr, &ca.pem(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/h2-over-tls")
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let echo = json(&body_of(resp).await);
    assert_eq!(echo["uri"], "/h2-over-tls");
    assert_eq!(seen(&echo, "x-forwarded-proto"), vec!["https"]);
    proxy.stop().await;
}

#[tokio::test]
async fn without_http2_alpn_offers_only_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let cert = server_cert(&ca, 22);
    write(dir.path(), "server.pem", &cert.cert_pem);
    write(dir.path(), "server.key", &cert.key_pem);
    let up = echo_upstream().await;
    let proxy = tls_proxy(up.addr, dir.path(), "http2 = false");

    let tls = connect_tls(proxy.addr, &ca.pem(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"http/1.1"[..]));
    // A client that speaks only h2 finds no protocol in common.
    assert!(connect_tls(proxy.addr, &ca.pem(), &[b"h2"]).await.is_err());
    proxy.stop().await;
}

#[tokio::test]
async fn a_smuggling_shape_over_tls_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let cert = server_cert(&ca, 23);
    write(dir.path(), "server.pem", &cert.cert_pem);
    write(dir.path(), "server.key", &cert.key_pem);
    let seen_lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen_lines.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(req.uri().to_string());
            let _ = req.into_body().collect().await;
            Response::new(full("portal"))
        }
    })
    .await;
    let proxy = tls_proxy(up.addr, dir.path(), "");

    let mut tls = connect_tls(proxy.addr, &ca.pem(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut out),
    )
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(
        seen_lines.lock().unwrap().is_empty(),
        "{:?}",
        seen_lines.lock().unwrap()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_head_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let cert = server_cert(&ca, 24);
    write(dir.path(), "server.pem", &cert.cert_pem);
    write(dir.path(), "server.key", &cert.key_pem);
    let up = echo_upstream().await;
    let proxy = tls_proxy(
        up.addr,
        dir.path(),
        "request_head_timeout = \"300ms\"\nidle_timeout = \"60s\"",
    );
    // The first bytes of a ClientHello, then nothing.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf0, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let m = metrics_text(proxy.admin).await;
    assert!(
        series(
            &m,
            "anticamera_tls_handshake_failures_total",
            &["reason=\"timeout\""]
        )
        .is_some(),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_connections_without_restart() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("site CA");
    let first = server_cert(&ca, 30);
    write(dir.path(), "server.pem", &first.cert_pem);
    write(dir.path(), "server.key", &first.key_pem);
    let up = echo_upstream().await;
    let proxy = tls_proxy(up.addr, dir.path(), "");

    let old_conn = connect_tls(proxy.addr, &ca.pem(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(peer_cert(&old_conn), first.der);

    // A broken certificate file keeps the old certificate in use.
    replace(
        dir.path(),
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log_lines_with(&["previous certificate stays in use"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = connect_tls(proxy.addr, &ca.pem(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(peer_cert(&c), first.der);

    // A new pair: key first, then the certificate (as a renewal tool would write them).
    let second = server_cert(&ca, 31);
    replace(dir.path(), "server.key", &second.key_pem);
    replace(dir.path(), "server.pem", &second.cert_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let c = connect_tls(proxy.addr, &ca.pem(), &[b"http/1.1"])
            .await
            .unwrap();
        if peer_cert(&c) == second.der {
            break;
        }
        assert_eq!(peer_cert(&c), first.der);
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection made before keeps working.
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old_conn))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/still")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let m = metrics_text(proxy.admin).await;
    assert!(
        series(
            &m,
            "anticamera_tls_cert_reloads_total",
            &["result=\"success\""]
        )
        .is_some(),
        "{m}"
    );
    assert!(
        series(
            &m,
            "anticamera_tls_cert_reloads_total",
            &["result=\"failure\""]
        )
        .is_some(),
        "{m}"
    );
    proxy.stop().await;
}
