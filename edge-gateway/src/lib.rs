//! Pitboss edge gateway: holds the WebSocket connections of game clients and operator consoles
//! and delivers alerts and pushes from the bus in milliseconds (docs/gateway.md).
//!
//! - [`auth`]: connection tokens (JWT HS256 / RS256 / ES256 with JWKS) and who may subscribe to
//!   what.
//! - [`protocol`]: the versioned JSON protocol.
//! - [`hub`]: the pure routing core — channels, bounded history, cursors, resume, acks,
//!   presence, slow consumers.
//! - [`feed`]: every instance reads every partition of `alerts`, `pushes` and `alert_acks`.
//! - [`presence`]: presence across instances (the `presence` topic).
//! - [`receipts`]: delivery receipts onto the `deliveries` topic.
//! - [`server`]: axum handlers (`/v1/ws`, `/v1/publish`, `/v1/stats`) and the admin listener.
//! - [`console`]: the operator console (`/console`), its files embedded in the binary.
//! - [`rules`]: operators' changes to the rules' lists and snoozes (`/v1/lists/…`,
//!   `/v1/snoozes`).
//! - [`stats`]: the console's figures: time to notify per tenant, and the store's traffic.

pub mod auth;
pub mod console;
pub mod feed;
pub mod hub;
pub mod presence;
pub mod protocol;
pub mod receipts;
pub mod rules;
pub mod server;
pub mod stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitboss_bus::Bus;
use pitboss_model::live::{Alert, AlertAck, LiveMessage, MessageType, Push};
use pitboss_runtime::Shutdown;
use tokio::sync::watch;

pub use auth::{Claims, KeySource, Role, Verifier};
pub use hub::{Hub, HubConfig, Keying};
pub use presence::PresenceConfig;
pub use receipts::{ReceiptConfig, ReceiptPolicy, Receipts};
pub use rules::{ListChange, Refusal, RulesAdmin, SnoozeRequest};
pub use server::{GatewayState, ServerConfig};
pub use stats::{NotifyLatency, StatsSource};

/// Everything a gateway needs besides the bus and the keys.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub hub: HubConfig,
    pub server: ServerConfig,
    pub alerts_topic: String,
    pub pushes_topic: String,
    pub acks_topic: String,
    /// How keys map to partitions on this bus (Kafka, embedded: CRC-32; Kinesis: unknown).
    pub keying: Keying,
    /// The bus numbers records with sequence numbers (Kinesis), not offsets.
    pub sequences: bool,
    /// Cursor refresh and history eviction period.
    pub tick: Duration,
    /// Delivery receipts (topic `deliveries`).
    pub receipts: ReceiptConfig,
    /// Presence across instances (topic `presence`).
    pub presence: PresenceConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            hub: HubConfig::default(),
            server: ServerConfig::default(),
            alerts_topic: Alert::TOPIC.into(),
            pushes_topic: Push::TOPIC.into(),
            acks_topic: AlertAck::TOPIC.into(),
            keying: Keying::Crc32,
            sequences: false,
            tick: Duration::from_secs(15),
            receipts: ReceiptConfig::default(),
            presence: PresenceConfig::default(),
        }
    }
}

/// Idle channels refreshed per hold of the hub lock by the periodic tick.
const TICK_CHUNK: usize = 256;

/// The owner's objective: 95 % of notifications within 10 s. A message written live later than
/// this after its event was received counts in `pitboss_gateway_messages_late_total{kind}`
/// (a counter any metrics backend can alarm on as a ratio of the delivered ones).
pub const NOTIFY_OBJECTIVE_MS: i64 = 10_000;

/// The counters a scrape should show before their first event (an alert on their rate needs
/// a series), with their help text.
fn describe_metrics() {
    metrics::describe_counter!(
        "pitboss_gateway_messages_late_total",
        "Messages written live more than 10 s (the objective) after their event was received."
    );
    metrics::describe_gauge!(
        "pitboss_gateway_open_alerts",
        "Unacknowledged alerts kept for operators past the history (those still in the history are not counted)."
    );
    for name in [
        "pitboss_gateway_messages_replayed_total",
        "pitboss_gateway_slow_consumers_closed_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["alert", "push"] {
        metrics::counter!("pitboss_gateway_messages_delivered_total", "kind" => kind).increment(0);
        metrics::counter!("pitboss_gateway_messages_late_total", "kind" => kind).increment(0);
    }
}

/// Starts the feeds and the periodic tick on `bus`; the state the handlers serve. Everything
/// stops with `shutdown`.
pub fn start(
    bus: Arc<dyn Bus>,
    verifier: Verifier,
    mut config: GatewayConfig,
    shutdown: Shutdown,
) -> GatewayState {
    describe_metrics();
    config.server.pushes_topic = config.pushes_topic.clone();
    config.server.acks_topic = config.acks_topic.clone();
    let hub = Arc::new(Mutex::new(Hub::new(config.hub.clone(), config.keying)));
    // Exported from the start (a dashboard's "connections" reads 0, not "No data", until the
    // first client connects).
    metrics::gauge!("pitboss_gateway_connections").set(0.0);
    metrics::gauge!("pitboss_gateway_subscriptions").set(0.0);
    let history_age = Duration::from_millis(config.hub.history_max_age_ms.max(0) as u64);
    // Alerts and acks are read from as far back as an alert stays open for operators (a
    // restart rebuilds the open ones: the bus keeps them); pushes from the history's age.
    let open_age = Duration::from_millis(
        config
            .hub
            .open_alerts_max_age_ms
            .max(config.hub.history_max_age_ms)
            .max(0) as u64,
    );
    let feeds = [
        (
            feed::FeedKind::Messages(MessageType::Alert),
            config.alerts_topic.clone(),
        ),
        (
            feed::FeedKind::Messages(MessageType::Push),
            config.pushes_topic.clone(),
        ),
        (feed::FeedKind::Acks, config.acks_topic.clone()),
    ];
    let mut waits = Vec::new();
    for (kind, topic) in feeds {
        let (tx, rx) = watch::channel(false);
        waits.push(rx);
        let from_age = match kind {
            feed::FeedKind::Messages(MessageType::Push) => history_age,
            _ => open_age,
        };
        let spec = feed::Feed {
            kind,
            topic,
            history_max_age: from_age,
            sequences: config.sequences,
        };
        tokio::spawn(feed::run(
            bus.clone(),
            hub.clone(),
            spec,
            tx,
            shutdown.clone(),
        ));
    }
    let (ready_tx, ready_rx) = watch::channel(false);
    tokio::spawn(async move {
        for mut w in waits {
            if w.wait_for(|r| *r).await.is_err() {
                return;
            }
        }
        let _ = ready_tx.send(true);
        tracing::info!("gateway ready: history rebuilt from the bus");
    });
    {
        let (hub, stop, every) = (hub.clone(), shutdown.clone(), config.tick);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.wait() => return,
                    _ = t.tick() => {
                        let now = pitboss_model::Timestamp::now().as_millis();
                        let idle = feed::lock(&hub).idle_channels(now);
                        // In chunks, the hub released in between: the live path goes on.
                        for chunk in idle.chunks(TICK_CHUNK) {
                            feed::lock(&hub).refresh_cursors(chunk);
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
        });
    }
    let publisher = bus.publisher();
    let receipts = Receipts::start(publisher.clone(), config.receipts.clone());
    let gateway_id = config.server.gateway_id.clone();
    let mut state = GatewayState::new(
        hub.clone(),
        verifier,
        publisher,
        config.server,
        ready_rx,
        shutdown.clone(),
        receipts,
    );
    let boot = state.boot().to_owned();
    state.cluster = Arc::new(Mutex::new(presence::Cluster::new(
        &gateway_id,
        &boot,
        config.presence.ttl.as_millis() as i64,
    )));
    let task = tokio::spawn(presence::run(
        bus,
        hub,
        state.cluster.clone(),
        (gateway_id, boot),
        config.presence,
        shutdown,
    ));
    *state
        .presence_task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
    state
}
