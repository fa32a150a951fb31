//! Typed configuration of the ingest function, with every default in one place. Unknown keys
//! are rejected; `validate` runs at start-up.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::core::CoreConfig;
use crate::error::ConfigError;

/// One tenant: its API keys (SHA-256 hex of each key) and optional rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// `sha256(key)` in hex for every API key of the tenant (`pitboss hash-key KEY` prints it).
    pub api_key_sha256: Vec<String>,
    /// Events per second this tenant may send (burst: one second's worth).
    #[serde(default)]
    pub events_per_second: Option<u32>,
}

/// Settings of the ingest function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the standalone server listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, probes): loopback or a private network.
    pub admin_listen: SocketAddr,
    /// Bus topic events are written to.
    pub topic: String,
    /// Largest request body after decompression (PostHog's /batch: 20 MB).
    pub max_body_bytes: usize,
    /// Request-body bytes the process holds at once, all requests, gRPC batches and WebSocket
    /// frames together (after decompression); a body that finds no room is `overloaded`.
    pub max_inflight_body_bytes: usize,
    /// The most of it one tenant's requests hold at once.
    pub max_inflight_body_bytes_per_tenant: usize,
    /// Ingest WebSockets one tenant holds open at once on an instance (a part of
    /// `max_connections`, so one tenant's sockets leave room for the others').
    pub max_websockets_per_tenant: usize,
    /// Per-event and per-request limits and validation.
    pub core: CoreConfig,
    /// How long accepted event ids are remembered for edge dedup, in seconds.
    pub dedup_window_secs: u64,
    /// Most ids the dedup window holds.
    pub dedup_capacity: u64,
    /// How long to wait for the bus to acknowledge a batch before answering 503, in ms.
    pub publish_timeout_ms: u64,
    /// Events per second per tenant unless the tenant says otherwise.
    pub default_events_per_second: u32,
    /// Events per second one bus key (`tenant:player`) may send before its events are
    /// rerouted to the overflow topic (0: never reroute).
    pub hot_key_events_per_second: u32,
    /// How long a hot key stays rerouted after its last excess, in seconds.
    pub hot_key_sticky_secs: u64,
    /// Topic of rerouted events (default: `<topic>_overflow`).
    pub overflow_topic: Option<String>,
    /// Connections the public listener holds at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// How long a client may take to send a request head, which is also how long an idle
    /// keep-alive connection stays open, in ms.
    pub header_read_timeout_ms: u64,
    /// A WebSocket ping every this many seconds…
    pub ws_ping_interval_secs: u64,
    /// …and a WebSocket from which nothing (not even a pong) came for this long is closed.
    pub ws_idle_timeout_secs: u64,
    /// On SIGTERM, how long requests and sockets in progress may take before being cut, in s.
    pub drain_timeout_secs: u64,
    pub tenants: Vec<TenantConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            topic: "events".into(),
            max_body_bytes: 20 * 1024 * 1024,
            max_inflight_body_bytes: 256 * 1024 * 1024,
            max_inflight_body_bytes_per_tenant: 64 * 1024 * 1024,
            max_websockets_per_tenant: 2_500,
            core: CoreConfig::default(),
            dedup_window_secs: 15 * 60,
            dedup_capacity: 1_000_000,
            publish_timeout_ms: 10_000,
            default_events_per_second: 100_000,
            hot_key_events_per_second: 200,
            hot_key_sticky_secs: 60,
            overflow_topic: None,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            ws_ping_interval_secs: 20,
            ws_idle_timeout_secs: 60,
            drain_timeout_secs: 30,
            tenants: Vec::new(),
        }
    }
}

impl IngestConfig {
    /// Where hot keys' events go.
    pub fn overflow_topic(&self) -> String {
        self.overflow_topic
            .clone()
            .unwrap_or_else(|| format!("{}_overflow", self.topic))
    }

    /// Limits of the public listener.
    pub fn limits(&self) -> pitboss_runtime::http::Limits {
        pitboss_runtime::http::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            drain_timeout: std::time::Duration::from_secs(self.drain_timeout_secs),
            ..pitboss_runtime::http::Limits::default()
        }
    }

    /// Limits of the admin listener (a few probes and a scraper).
    pub fn admin_limits(&self) -> pitboss_runtime::http::Limits {
        pitboss_runtime::http::Limits {
            max_connections: 64,
            ..self.limits()
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.topic.is_empty() {
            return err("topic must not be empty".into());
        }
        if self.overflow_topic() == self.topic {
            return err("overflow_topic must differ from topic".into());
        }
        if self.max_connections == 0
            || self.max_websockets_per_tenant == 0
            || self.header_read_timeout_ms == 0
            || self.ws_ping_interval_secs == 0
            || self.ws_idle_timeout_secs <= self.ws_ping_interval_secs
        {
            return err(
                "max_connections, max_websockets_per_tenant, header_read_timeout_ms and ws_ping_interval_secs must be positive, and ws_idle_timeout_secs longer than the ping interval".into(),
            );
        }
        if self.max_inflight_body_bytes_per_tenant < self.max_body_bytes {
            return err(format!(
                "max_inflight_body_bytes_per_tenant ({}) must be at least max_body_bytes ({}): a body of the largest size could never be read (raise both together)",
                self.max_inflight_body_bytes_per_tenant, self.max_body_bytes
            ));
        }
        if self.max_inflight_body_bytes < self.max_inflight_body_bytes_per_tenant {
            return err(format!(
                "max_inflight_body_bytes ({}) must be at least max_inflight_body_bytes_per_tenant ({}): a tenant's share is part of the whole",
                self.max_inflight_body_bytes, self.max_inflight_body_bytes_per_tenant
            ));
        }
        if self.core.max_event_bytes == 0 || self.core.max_events == 0 || self.max_body_bytes == 0 {
            return err("limits must be positive".into());
        }
        if self.default_events_per_second == 0
            || self.tenants.iter().any(|t| t.events_per_second == Some(0))
        {
            return err("events_per_second must be positive".into());
        }
        let mut ids = std::collections::HashSet::new();
        for t in &self.tenants {
            if t.id.is_empty() || t.id.contains(':') {
                return err(format!(
                    "tenant id {:?} must be non-empty and must not contain ':'",
                    t.id
                ));
            }
            if !ids.insert(&t.id) {
                return err(format!("tenant {:?} is configured twice", t.id));
            }
            if t.api_key_sha256.is_empty() {
                return err(format!("tenant {:?} has no api_key_sha256", t.id));
            }
        }
        Ok(())
    }
}

/// Reads the config the way a Lambda function gets it: inline TOML in `PITBOSS_CONFIG_TOML`, or
/// a file named by `PITBOSS_CONFIG` (e.g. bundled with the function).
pub fn config_from_env() -> Result<IngestConfig, ConfigError> {
    let text = match (
        std::env::var("PITBOSS_CONFIG_TOML"),
        std::env::var("PITBOSS_CONFIG"),
    ) {
        (Ok(inline), _) => inline,
        (Err(_), Ok(path)) => std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("reading {path}: {e}")))?,
        _ => {
            return Err(ConfigError(
                "set PITBOSS_CONFIG_TOML (inline) or PITBOSS_CONFIG (a file)".into(),
            ));
        }
    };
    let config: IngestConfig =
        toml::from_str(&text).map_err(|e| ConfigError(format!("ingest config: {e}")))?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_tenant() -> IngestConfig {
        IngestConfig {
            tenants: vec![TenantConfig {
                id: "acme".into(),
                api_key_sha256: vec![crate::auth::hash_key("k")],
                events_per_second: None,
            }],
            ..IngestConfig::default()
        }
    }

    #[test]
    fn the_budget_of_bodies_held_at_once_holds_at_least_the_largest_body() {
        with_tenant().validate().unwrap();
        let small = IngestConfig {
            max_inflight_body_bytes: 1024 * 1024,
            ..with_tenant()
        };
        let e = small.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_inflight_body_bytes (1048576) must be at least max_inflight_body_bytes_per_tenant (67108864): a tenant's share is part of the whole"),
            "{e}"
        );
        let share = IngestConfig {
            max_inflight_body_bytes_per_tenant: 1024 * 1024,
            ..with_tenant()
        };
        let e = share.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_inflight_body_bytes_per_tenant (1048576) must be at least max_body_bytes (20971520)"),
            "{e}"
        );
        let equal = IngestConfig {
            max_inflight_body_bytes: 20 * 1024 * 1024,
            max_inflight_body_bytes_per_tenant: 20 * 1024 * 1024,
            ..with_tenant()
        };
        equal.validate().unwrap();
    }
}
