//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz`
//! (it should receive traffic: not draining, and at least one portal address in rotation).
//!
//! It runs on its own thread so a saturated proxy still answers its operators.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Shared;

/// Serves the admin listener until `shutdown` fires (after the workers have drained).
pub async fn serve(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    prometheus: &'static PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = std_listener.set_nonblocking(true) {
        tracing::error!(error = %e, "admin listener");
        return;
    }
    let listener = match TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            // Stopped after the workers have drained; until then /readyz answers 503.
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, &shared, prometheus)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(
    req: Request<Incoming>,
    shared: &Shared,
    prometheus: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            prometheus.run_upkeep();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                prometheus.render(),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if !shared.targets.any_healthy() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no portal address in rotation\n".into(),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
