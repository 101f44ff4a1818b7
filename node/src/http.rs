//! The node's HTTP listeners: S3 (s3s's service over hyper, with a bound
//! on connections and on the time to send request headers) and the ops
//! endpoints (`/metrics`, `/health/live`, `/health/ready`, with axum).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::serve::Node;

/// Limits of the S3 listener.
#[derive(Clone, Debug)]
pub struct S3HttpConfig {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this (slow-loris
    /// bound); bodies are bounded by the object layer's transfer budget.
    pub header_read_timeout: Duration,
}

impl Default for S3HttpConfig {
    fn default() -> Self {
        S3HttpConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serve S3 on `listener` until `stop` turns true.
pub async fn serve_s3(
    listener: tokio::net::TcpListener,
    service: s3s::service::S3Service,
    cfg: &S3HttpConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = crate::http::stopped(&mut stop) => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (sock, peer) = tokio::select! {
            _ = crate::http::stopped(&mut stop) => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "S3 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let service = service.clone();
        let header_timeout = cfg.header_read_timeout;
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "S3 connection ended with an error");
                    }
                }
                _ = crate::http::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Serve `/metrics`, `/health/live` and `/health/ready` until `stop`.
pub async fn serve_ops(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    metrics: Option<PrometheusHandle>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ready_node = node.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    match m {
                        Some(h) => (StatusCode::OK, h.render()),
                        None => (
                            StatusCode::NOT_FOUND,
                            "metrics are not recorded by this process\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route("/health/live", get(|| async { (StatusCode::OK, "live\n") }))
        .route(
            "/health/ready",
            get(move || {
                let n = ready_node.clone();
                async move {
                    if n.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "ops HTTP server failed");
    }
}
