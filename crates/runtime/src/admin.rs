//! The admin listener (loopback or a private network; never exposed with a public API):
//! `/healthz` (the process runs), `/readyz` (it should get traffic: ready and not draining),
//! `/metrics` (Prometheus text).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Shutdown;

/// `/metrics` and `/healthz`, for a service that adds its own `/readyz`.
pub fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// `/metrics`, `/healthz`, and a `/readyz` that answers 200 `ready` until `shutdown` is
/// triggered and 503 `draining` after (so a load balancer stops sending traffic first).
pub fn router(metrics: PrometheusHandle, shutdown: Shutdown) -> Router {
    router_with(metrics, shutdown, || None)
}

/// [`router`], whose `/readyz` also answers 503 with what `not_ready` says while it says
/// something (a processor whose store fails: `store: failing for 12 s: …`).
pub fn router_with(
    metrics: PrometheusHandle,
    shutdown: Shutdown,
    not_ready: impl Fn() -> Option<String> + Clone + Send + Sync + 'static,
) -> Router {
    metrics_router(metrics).route(
        "/readyz",
        get(move || {
            let why = if shutdown.is_triggered() {
                Some("draining".to_owned())
            } else {
                not_ready()
            };
            async move {
                match why {
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    None => (StatusCode::OK, "ready".to_owned()),
                }
            }
        }),
    )
}

/// Serves `router` on `listener` until `shutdown` is triggered, within [`LIMITS`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    crate::http::serve(listener, router, LIMITS, shutdown).await
}

/// The admin listener's bounds (a few probes and a scraper): 64 connections, 10 s for a
/// request head (and to send a first byte), 5 s to finish on shutdown.
pub const LIMITS: crate::http::Limits = crate::http::Limits {
    max_connections: 64,
    header_read_timeout: std::time::Duration::from_secs(10),
    http2_keepalive_interval: std::time::Duration::from_secs(30),
    http2_keepalive_timeout: std::time::Duration::from_secs(20),
    drain_timeout: std::time::Duration::from_secs(5),
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let res = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_turns_to_draining_on_shutdown() {
        let shutdown = Shutdown::new();
        let router = router(crate::telemetry::prometheus(), shutdown.clone());
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::OK, "ready".into())
        );
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        shutdown.trigger("test");
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining".into())
        );
        assert_eq!(
            get(&router, "/healthz").await.0,
            StatusCode::OK,
            "still alive"
        );
        let (status, text) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.is_empty() || text.contains("# TYPE"), "{text}");
    }
}
