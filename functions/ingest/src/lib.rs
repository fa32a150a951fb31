//! The Pitboss ingest function: the front door for player events.
//!
//! A pure core ([`core::plan`]) turns a request body and the caller's tenant into one outcome
//! per event and the bus records to write; the HTTP adapter ([`http::router`]) authenticates,
//! rate-limits, publishes, and answers 2xx only after the bus acknowledged every accepted event.

pub mod auth;
pub mod budget;
pub mod codes;
pub mod config;
pub mod core;
pub mod dedup;
pub mod error;
pub mod grpc;
pub mod hot;
pub mod http;
pub mod limit;
pub mod openapi;
pub mod recall;
pub mod sample;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::Publisher;

pub use config::{IngestConfig, TenantConfig};
pub use error::{ConfigError, IngestError};

/// Builds the handler state from a validated config and a publisher.
pub fn state(
    config: IngestConfig,
    publisher: Arc<dyn Publisher>,
) -> Result<http::AppState, ConfigError> {
    config.validate()?;
    let auth = auth::Authenticator::new(&config.tenants)?;
    let limits = limit::TenantLimits::new(
        config.default_events_per_second,
        config
            .tenants
            .iter()
            .filter_map(|t| t.events_per_second.map(|r| (t.id.clone(), r))),
    );
    let dedup = Arc::new(dedup::DedupWindow::new(
        Duration::from_secs(config.dedup_window_secs),
        config.dedup_capacity,
    ));
    let hot_keys = (config.hot_key_events_per_second > 0).then(|| {
        Arc::new(hot::HotKeys::new(
            config.hot_key_events_per_second,
            config.hot_key_sticky_secs,
        ))
    });
    let body_budget = Arc::new(budget::BodyBudget::new(
        config.max_inflight_body_bytes,
        config.max_inflight_body_bytes_per_tenant,
        config.tenants.iter().map(|t| t.id.as_str()),
        Duration::from_millis(config.header_read_timeout_ms),
    ));
    let config_sockets = config.max_websockets_per_tenant;
    let metrics = pitboss_runtime::telemetry::prometheus();
    // There from the start at 0, so an alert on their increase sees the first refusal.
    for bound in ["process", "tenant"] {
        metrics::counter!("pitboss_ingest_body_budget_refused_total", "bound" => bound)
            .increment(0);
    }
    metrics::gauge!("pitboss_ingest_body_bytes_held").set(body_budget.held() as f64);
    Ok(http::AppState {
        publisher,
        hot_keys,
        config: Arc::new(config),
        auth,
        limits,
        dedup,
        metrics,
        readiness: http::Readiness::default(),
        bus_check: Arc::default(),
        body_budget,
        sockets: budget::SocketSlots::new(config_sockets),
    })
}

/// Serves the admin router (`/metrics`, probes) on `listener` until `shutdown` is triggered.
pub async fn serve_admin(
    state: http::AppState,
    listener: tokio::net::TcpListener,
    shutdown: pitboss_runtime::Shutdown,
) -> std::io::Result<()> {
    let limits = state.config.admin_limits();
    pitboss_runtime::http::serve(listener, http::admin_router(state), limits, shutdown).await
}

/// Serves the ingest API on `listener` until `shutdown` is triggered, within the config's
/// connection limits; then stops accepting, answers the requests already read, closes
/// WebSockets with 1012 (reconnect), and returns (connections still busy at the drain deadline
/// are cut).
pub async fn serve(
    state: http::AppState,
    listener: tokio::net::TcpListener,
    shutdown: pitboss_runtime::Shutdown,
) -> std::io::Result<()> {
    let limits = state.config.limits();
    let router = http::router(state).layer(axum::Extension(shutdown.clone()));
    pitboss_runtime::http::serve(listener, router, limits, shutdown).await
}
