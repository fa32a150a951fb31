//! `pitboss gateway` (the edge gateway over Kafka, Kinesis or the embedded log), `pitboss token`
//! (a signed connection token), and the gateway inside `pitboss up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use pitboss_gateway::auth::read_secret;
use pitboss_gateway::{GatewayConfig, KeySource, Keying, ReceiptPolicy, Role, Verifier};
use pitboss_runtime::Shutdown;

use crate::BusKind;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub bus: crate::BusArgs,
    /// Address of the WebSocket and publish API.
    #[arg(long, env = "PITBOSS_GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9467"
    )]
    pub admin_listen: std::net::SocketAddr,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// This instance's name (in `welcome` frames and logs); the host name by default.
    #[arg(long, env = "PITBOSS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    #[command(flatten)]
    pub tuning: GatewayTuning,
    /// Topics read and written.
    #[arg(long, default_value = "alerts")]
    pub alerts_topic: String,
    #[arg(long, default_value = "pushes")]
    pub pushes_topic: String,
    #[arg(long, default_value = "alert_acks")]
    pub acks_topic: String,
    /// Topic delivery receipts go to.
    #[arg(long, default_value = "deliveries")]
    pub deliveries_topic: String,
    /// Topic the instances share presence on; `none`: each instance answers for itself.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_PRESENCE_TOPIC",
        default_value = "presence"
    )]
    pub presence_topic: String,
    /// How often this instance publishes who is in its rooms (another instance's snapshot is
    /// forgotten after three times this without a newer one).
    #[arg(long, default_value_t = 5)]
    pub presence_interval_secs: u64,
    /// On SIGTERM/SIGINT, how long sockets get to take their `reconnect` and close.
    #[arg(long, env = "PITBOSS_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,
    /// ClickHouse HTTP URL the console's traffic figures are read from (events/s, active
    /// players, GGR by game, alerts by rule, recent pushes, pipeline lag); without it the
    /// console shows the live feeds and the time to notify only.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_STATS_CLICKHOUSE_URL",
        hide_env_values = true
    )]
    pub stats_clickhouse_url: Option<String>,
    /// ClickHouse database of the Pitboss tables, for `--stats-clickhouse-url`.
    #[arg(long, env = "PITBOSS_CLICKHOUSE_DATABASE", default_value = "pitboss")]
    pub stats_clickhouse_database: String,
    /// The rules directory the engine runs (shared with it): operators change its lists and
    /// snoozes through `POST /v1/lists/{list}/add|remove` and `POST /v1/snoozes`
    /// (docs/gateway.md, "Lists", "Snoozes"); without it the gateway changes neither.
    #[arg(long = "rules", value_name = "DIR", env = "PITBOSS_GATEWAY_RULES")]
    pub rules: Option<PathBuf>,
}

/// Where connection-token keys come from.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// File holding the HS256 secret (at least 32 bytes; surrounding whitespace ignored).
    #[arg(long, env = "PITBOSS_GATEWAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWKS document with RS256/ES256 public keys.
    #[arg(long, env = "PITBOSS_GATEWAY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched at start and every `--jwks-refresh-secs`.
    #[arg(long, env = "PITBOSS_GATEWAY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again (and the `--tenant-keys` file read again);
    /// at least 10.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_JWKS_REFRESH_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    pub jwks_refresh_secs: u64,
    /// Required `aud` claim.
    #[arg(long, env = "PITBOSS_GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "PITBOSS_GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Keys per tenant instead (a TOML file, docs/gateway.md "Keys per tenant"): a token
    /// verifies only with the keys of the tenant it names. Read again every
    /// `--jwks-refresh-secs`.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_TENANT_KEYS",
        conflicts_with_all = ["jwt_secret_file", "jwks_file", "jwks_url", "jwt_audience", "jwt_issuer"]
    )]
    pub tenant_keys: Option<PathBuf>,
}

/// Limits and history of the gateway (the same in `pitboss up`).
#[derive(Debug, Clone, Args)]
pub struct GatewayTuning {
    /// Messages kept per topic for resumes…
    #[arg(long, default_value_t = 200_000)]
    pub history_max: usize,
    /// …for at most this long: a client away longer gets `too_old`.
    #[arg(long, default_value_t = 600)]
    pub history_max_age_secs: u64,
    /// An alert not acknowledged is kept for its tenant's operators past the history, until
    /// acknowledged or this old (a restart reads the alerts and acks of this span again)…
    #[arg(long, default_value_t = 24 * 3600)]
    pub open_alerts_max_age_secs: u64,
    /// …at most this many per tenant (the oldest go first).
    #[arg(long, default_value_t = 10_000)]
    pub open_alerts_max: usize,
    /// Frames queued per connection before it is closed as a slow consumer (4008).
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Connections held at once; more are refused.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_MAX_CONNECTIONS",
        default_value_t = 200_000
    )]
    pub max_connections: usize,
    /// Connections one subject (a tenant's player or operator: the token's `tenant` and `sub`)
    /// may hold at once on this instance; one more is refused `429 too_many_connections`.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_MAX_CONNECTIONS_PER_SUBJECT",
        default_value_t = 32
    )]
    pub max_connections_per_subject: usize,
    /// WebSocket ping period; a connection silent for `--idle-timeout-secs` is closed (1001).
    #[arg(long, default_value_t = 25)]
    pub ping_interval_secs: u64,
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// How often idle subscriptions get a fresh cursor (and old history is dropped).
    #[arg(long, default_value_t = 15)]
    pub cursor_refresh_secs: u64,
    /// Operator pushes a tenant may publish per second through one gateway (`POST
    /// /v1/publish`, each push of an array counted); past it, `429 rate_limited`…
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_PUBLISH_PER_SECOND",
        default_value_t = 1_000
    )]
    pub publish_per_second: u32,
    /// …after a burst of this many (at least 1,000, one full array).
    #[arg(long, env = "PITBOSS_GATEWAY_PUBLISH_BURST", default_value_t = 10_000)]
    pub publish_burst: u32,
    /// Which deliveries get a receipt on the `deliveries` topic: `direct` (player pushes and
    /// operator alerts), `all` (also every socket a room push reached), or `off`.
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_RECEIPTS",
        value_enum,
        default_value_t = ReceiptsArg::Direct
    )]
    pub receipts: ReceiptsArg,
}

/// `--receipts`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReceiptsArg {
    Off,
    Direct,
    All,
}

impl GatewayTuning {
    fn config(&self, gateway_id: String, keying: Keying, sequences: bool) -> GatewayConfig {
        let mut c = GatewayConfig {
            keying,
            sequences,
            tick: Duration::from_secs(self.cursor_refresh_secs.max(1)),
            ..GatewayConfig::default()
        };
        c.hub.history_max = self.history_max.max(1);
        c.hub.history_max_age_ms = (self.history_max_age_secs.max(1) * 1000) as i64;
        c.hub.open_alerts_max_age_ms = (self.open_alerts_max_age_secs.max(1) * 1000) as i64;
        c.hub.open_alerts_max = self.open_alerts_max.max(1);
        c.server.gateway_id = gateway_id;
        c.server.queue_capacity = self.queue_capacity.max(1);
        c.server.ping_interval = Duration::from_secs(self.ping_interval_secs.max(1));
        c.server.idle_timeout = Duration::from_secs(self.idle_timeout_secs.max(1));
        c.server.publish_per_second = self.publish_per_second.max(1);
        c.server.publish_burst = self.publish_burst.max(1);
        c.server.max_connections_per_subject = self.max_connections_per_subject.max(1);
        c.receipts.policy = match self.receipts {
            ReceiptsArg::Off => ReceiptPolicy::Off,
            ReceiptsArg::Direct => ReceiptPolicy::Direct,
            ReceiptsArg::All => ReceiptPolicy::All,
        };
        c
    }

    fn limits(&self, drain: Duration) -> pitboss_runtime::http::Limits {
        pitboss_runtime::http::Limits {
            max_connections: self.max_connections.max(1),
            drain_timeout: drain,
            ..pitboss_runtime::http::Limits::default()
        }
    }
}

impl KeyArgs {
    async fn verifier(&self) -> Result<Verifier> {
        if let Some(path) = &self.tenant_keys {
            let v = Verifier::tenants(path, Duration::from_secs(self.jwks_refresh_secs)).await?;
            v.spawn_refresh();
            return Ok(v);
        }
        let source = KeySource {
            hs256_secret: self
                .jwt_secret_file
                .as_deref()
                .map(read_secret)
                .transpose()?,
            jwks_file: self.jwks_file.clone(),
            jwks_url: self.jwks_url.clone(),
            jwks_refresh: Duration::from_secs(self.jwks_refresh_secs),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        };
        let v = Verifier::new(source).await?;
        v.spawn_refresh();
        Ok(v)
    }
}

fn host_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gateway-{}", std::process::id()))
}

pub async fn gateway(args: GatewayArgs) -> Result<()> {
    if !pitboss_processor::schema::valid_identifier(&args.stats_clickhouse_database) {
        bail!(
            "--stats-clickhouse-database must be letters, digits and '_' (not starting with a digit)"
        );
    }
    let spec = args.bus.spec()?;
    let verifier = args.keys.verifier().await?;
    let bus = spec.open().await?;
    // A topic that is not there is refused now, as by the other roles (the feed retried it for
    // ever, and receipts to a missing `deliveries` were dropped a while later).
    let mut needed = vec![
        (&args.alerts_topic, "--alerts-topic"),
        (&args.pushes_topic, "--pushes-topic"),
        (&args.acks_topic, "--acks-topic"),
    ];
    if !matches!(args.tuning.receipts, ReceiptsArg::Off) {
        needed.push((&args.deliveries_topic, "--deliveries-topic"));
    }
    if args.presence_topic != "none" {
        needed.push((&args.presence_topic, "--presence-topic"));
    }
    for (topic, flag) in needed {
        crate::require_topic(&*bus, topic, flag).await?;
    }
    let (keying, sequences) = match args.bus.kind {
        BusKind::Kinesis => (Keying::Unknown, true),
        BusKind::Kafka | BusKind::Embedded => (Keying::Crc32, false),
    };
    let mut config = args.tuning.config(
        args.gateway_id.clone().unwrap_or_else(host_id),
        keying,
        sequences,
    );
    config.alerts_topic = args.alerts_topic.clone();
    config.pushes_topic = args.pushes_topic.clone();
    config.acks_topic = args.acks_topic.clone();
    config.receipts.topic = args.deliveries_topic.clone();
    let interval = Duration::from_secs(args.presence_interval_secs.max(1));
    config.presence = pitboss_gateway::PresenceConfig {
        topic: (args.presence_topic != "none").then(|| args.presence_topic.clone()),
        interval,
        ttl: interval * 3,
    };
    let metrics = pitboss_runtime::telemetry::prometheus();
    let listener = crate::bind(args.listen).await?;
    let admin = crate::bind(args.admin_listen).await?;
    tracing::info!(
        ws = %pitboss_gateway::server::describe(listener.local_addr()?),
        admin = %admin.local_addr()?,
        bus = ?args.bus.kind,
        "gateway starting"
    );
    pitboss_runtime::http::raise_fd_limit();
    let stop = Shutdown::on_signals();
    if let Some(url) = &args.stats_clickhouse_url {
        pitboss_processor::sink::check_url(url)
            .map_err(|e| anyhow::anyhow!("--stats-clickhouse-url: {e}"))?;
    }
    let mut state = pitboss_gateway::start(bus, verifier, config, stop.clone());
    if let Some(rules) = &args.rules {
        if !rules.is_dir() {
            anyhow::bail!(
                "--rules {}: not a directory (the rules directory the engine runs, whose lists \
                 and snoozes operators change through POST /v1/lists/… and /v1/snoozes)",
                rules.display()
            );
        }
        state = state.with_rules(std::sync::Arc::new(crate::rules_dir::RulesDir {
            rules: rules.clone(),
        }));
    }
    if let Some(url) = &args.stats_clickhouse_url {
        let client = pitboss_processor::sink::client(url, &args.stats_clickhouse_database);
        state = state.with_stats(std::sync::Arc::new(Cached::new(ClickHouseStats::new(
            client,
        ))));
    }
    let admin_router = pitboss_gateway::server::admin_router(state.clone(), metrics);
    let limits = args
        .tuning
        .limits(Duration::from_secs(args.drain_timeout_secs));
    let gateway = async {
        pitboss_gateway::server::serve(state, listener, limits)
            .await
            .context("gateway listener")
    };
    crate::with_admin(
        gateway,
        |done| pitboss_runtime::admin::serve(admin, admin_router, done),
        stop,
    )
    .await
}

/// What the gateway inside `pitboss up` gives operators besides the live feeds.
pub struct Operators {
    /// The console's figures (`/v1/stats`).
    pub stats: std::sync::Arc<dyn pitboss_gateway::StatsSource>,
    /// Changes to lists and snoozes (`POST /v1/lists/…`, `/v1/snoozes`), with `--rules DIR`.
    pub rules: Option<std::sync::Arc<dyn pitboss_gateway::RulesAdmin>>,
}

/// The gateway inside `pitboss up`: over its bus (the embedded log or Kafka), topics named
/// with `topic_prefix`, HS256 with the secret in `data_dir/gateway-jwt-secret` (made once,
/// readable by its owner only), the console's figures and list changes from `operators`.
pub fn serve_in_up(
    bus: std::sync::Arc<dyn pitboss_bus::Bus>,
    data_dir: &Path,
    listener: tokio::net::TcpListener,
    tuning: &GatewayTuning,
    topic_prefix: &str,
    operators: Operators,
    stop: Shutdown,
) -> Result<(
    tokio::sync::watch::Receiver<bool>,
    impl std::future::Future<Output = Result<()>>,
)> {
    let secret = read_secret(&up_secret(data_dir)?)?;
    let verifier = Verifier::hs256(&secret)?;
    let mut config = tuning.config("up".into(), Keying::Crc32, false);
    for topic in [
        &mut config.alerts_topic,
        &mut config.pushes_topic,
        &mut config.acks_topic,
        &mut config.receipts.topic,
    ] {
        *topic = format!("{topic_prefix}{topic}");
    }
    // One gateway: presence is its own.
    config.presence.topic = None;
    let mut state = pitboss_gateway::start(bus, verifier, config, stop).with_stats(operators.stats);
    if let Some(rules) = operators.rules {
        state = state.with_rules(rules);
    }
    let limits = tuning.limits(Duration::from_secs(5));
    let ready = state.ready.clone();
    Ok((ready, async move {
        pitboss_gateway::server::serve(state, listener, limits)
            .await
            .context("gateway listener")
    }))
}

/// An operator token of `tenant` for the console link `pitboss up` prints (12 hours).
pub fn console_token(data_dir: &Path, tenant: &str) -> Result<String> {
    let secret = read_secret(&up_secret(data_dir)?)?;
    let claims = pitboss_gateway::auth::claims(
        tenant,
        "console",
        Role::Operator,
        Vec::new(),
        Duration::from_secs(12 * 3600),
    );
    pitboss_gateway::auth::sign_hs256(&claims, &secret)
}

/// The HS256 secret of `pitboss up`'s gateway: created on first use.
pub fn up_secret(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join("gateway-jwt-secret");
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > 0 => return Ok(path),
        // Empty: made by a build that did not sync it, and the power went before the OS wrote
        // it back. The secret was never kept: a new one is made (tokens signed with the lost
        // one are refused, as after any change of secret).
        Ok(_) => {
            tracing::warn!(file = %path.display(), "the gateway's secret file is empty: a new secret is made")
        }
        Err(_) => {}
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    crate::write_durably(&path, secret.as_bytes(), true)?;
    Ok(path)
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tenant.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    #[arg(long, value_enum, default_value_t = TokenRole::Player)]
    pub role: TokenRole,
    /// The player or operator id (`sub`).
    #[arg(long, default_value = "p1")]
    pub subject: String,
    /// Rooms the token allows (comma-separated; `*` for all).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Lifetime in seconds (at least 1: a token of 0 was expired when made).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_secs: u64,
    /// The HS256 secret file; `pitboss up`'s (`<data-dir>/gateway-jwt-secret`) by default.
    #[arg(long, env = "PITBOSS_GATEWAY_JWT_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenRole {
    Player,
    Operator,
}

pub fn token(args: TokenArgs) -> Result<()> {
    let path = match args.secret_file {
        Some(p) => p,
        None => {
            let p = args.data_dir.join("gateway-jwt-secret");
            if !p.exists() {
                bail!(
                    "{} not found: run `pitboss up` once, or give --secret-file",
                    p.display()
                );
            }
            p
        }
    };
    let secret = read_secret(&path)?;
    let role = match args.role {
        TokenRole::Player => Role::Player,
        TokenRole::Operator => Role::Operator,
    };
    let claims = pitboss_gateway::auth::claims(
        &args.tenant,
        &args.subject,
        role,
        args.rooms,
        Duration::from_secs(args.ttl_secs),
    );
    let token = pitboss_gateway::auth::sign_hs256(&claims, &secret)?;
    // Verify what we print, so a bad tenant or subject fails here and not at connect.
    Verifier::hs256(&secret)?
        .verify(&token)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{token}");
    Ok(())
}

/// The console's traffic figures for one tenant, from wherever the events are stored.
#[async_trait::async_trait]
pub trait Figures: Send + Sync + 'static {
    async fn figures(&self, tenant: &str) -> Result<serde_json::Value, String>;
}

/// A [`Figures`] behind a cache: answers are kept for a second per tenant and one refresh
/// runs at a time, so any number of consoles cost at most one query set a second per tenant.
pub struct Cached<F> {
    figures: F,
    cache: std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, serde_json::Value)>,
    >,
    refresh: tokio::sync::Mutex<()>,
}

impl<F: Figures> Cached<F> {
    pub fn new(figures: F) -> Self {
        Cached {
            figures,
            cache: Default::default(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, tenant: &str) -> Option<serde_json::Value> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(1))
            .map(|(_, v)| v.clone())
    }
}

#[async_trait::async_trait]
impl<F: Figures> pitboss_gateway::StatsSource for Cached<F> {
    async fn tenant_stats(&self, tenant: &str) -> Result<serde_json::Value, String> {
        if let Some(v) = self.fresh(tenant) {
            return Ok(v);
        }
        // Requests that missed the cache together wait for one refresh.
        let _refreshing = self.refresh.lock().await;
        if let Some(v) = self.fresh(tenant) {
            return Ok(v);
        }
        // A store that hangs costs a console an error, not every console its answer.
        let v = tokio::time::timeout(Duration::from_secs(5), self.figures.figures(tenant))
            .await
            .map_err(|_| "the store did not answer within 5 s".to_owned())??;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), (std::time::Instant::now(), v.clone()));
        Ok(v)
    }
}

/// How far back (by the clients' `occurred_at`) the console's events/s and pipeline lag look
/// for events stored recently: clients whose clocks run minutes behind are counted, a batch of
/// day-old events is not live traffic, and the index on `occurred_at` bounds what is read.
const WINDOW_SECS: i64 = 300;

/// The figures from the embedded store of `pitboss up` (read-only queries on the rollups and
/// the live-path tables, one short-lived connection per request).
#[derive(Debug)]
pub struct SqliteStats {
    pub path: PathBuf,
}

impl SqliteStats {
    fn figures(path: &Path, tenant: &str) -> Result<serde_json::Value, String> {
        use pitboss_processor::sqlite::{SqlValue, query_with};
        use serde_json::{Value, json};
        let now_ms = pitboss_model::Timestamp::now().as_millis();
        let now = now_ms / 1000;
        let t = || SqlValue::Text(tenant.to_owned());
        let ask = |sql: &str, since: i64| {
            query_with(path, sql, &[t(), SqlValue::Integer(since)], 100).map_err(|e| e.to_string())
        };
        let objects = |a: pitboss_processor::sqlite::Answer| -> Vec<Value> {
            a.rows
                .into_iter()
                .map(|row| Value::Object(a.columns.iter().cloned().zip(row).collect()))
                .collect()
        };
        let scalar = |a: pitboss_processor::sqlite::Answer| {
            a.rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .unwrap_or(Value::Null)
        };
        // Stored in the last ten whole seconds (the current one is still being stored), by
        // `received_at`: the clients' clocks (`occurred_at`) may run behind or send in batches.
        // `occurred_at` within the window (the index's range) bounds what is read.
        let recent = scalar(
            query_with(
                path,
                "SELECT count(*) FROM events WHERE tenant_id = ?1 AND occurred_at >= ?2 \
                 AND received_at >= ?3 AND received_at < ?3 + 10",
                &[
                    t(),
                    SqlValue::Integer(now - WINDOW_SECS),
                    SqlValue::Integer(now - 11),
                ],
                100,
            )
            .map_err(|e| e.to_string())?,
        );
        let events_per_second = recent.as_f64().unwrap_or(0.0) / 10.0;
        let active_players = scalar(ask(
            "SELECT count(DISTINCT player_id) FROM player_minutes WHERE tenant_id = ?1 AND minute >= ?2",
            now - 300,
        )?);
        let alerts_last_hour = scalar(ask(
            "SELECT count(*) FROM alerts WHERE tenant_id = ?1 AND received_at >= ?2",
            now - 3600,
        )?);
        let alerts_by_rule = objects(ask(
            "SELECT rule_id, count(*) AS alerts FROM alerts WHERE tenant_id = ?1 AND received_at >= ?2 \
             GROUP BY rule_id ORDER BY alerts DESC, rule_id LIMIT 30",
            now - 3600,
        )?);
        let ggr_by_game = objects(ask(
            "SELECT game_id, currency, sum(bets) AS bets, sum(stakes_minor) AS stakes_minor, \
             sum(payouts_minor) AS payouts_minor, sum(ggr_minor) AS ggr_minor FROM bets_per_minute \
             WHERE tenant_id = ?1 AND minute >= ?2 GROUP BY game_id, currency \
             ORDER BY ggr_minor DESC, game_id LIMIT 30",
            now - 3600,
        )?);
        let recent_pushes = objects(ask(
            "SELECT push_id, target_type, target_id, kind, title, rule_id, created_at_ms FROM pushes \
             WHERE tenant_id = ?1 AND created_at >= ?2 ORDER BY created_at DESC, created_at_ms DESC LIMIT 15",
            now - 86_400,
        )?);
        let newest = scalar(ask(
            "SELECT max(received_at_ms) FROM events WHERE tenant_id = ?1 AND occurred_at >= ?2",
            now - WINDOW_SECS,
        )?);
        let lag_ms = newest.as_i64().map(|r| (now_ms - r).max(0));
        Ok(json!({
            "events_per_second": events_per_second,
            "active_players": active_players,
            "alerts_last_hour": alerts_last_hour,
            "alerts_by_rule": alerts_by_rule,
            "ggr_by_game": ggr_by_game,
            "recent_pushes": recent_pushes,
            "pipeline": {"lag_ms": lag_ms, "newest_event_received_at_ms": newest},
        }))
    }
}

#[async_trait::async_trait]
impl Figures for SqliteStats {
    async fn figures(&self, tenant: &str) -> Result<serde_json::Value, String> {
        let (path, owned) = (self.path.clone(), tenant.to_owned());
        tokio::task::spawn_blocking(move || SqliteStats::figures(&path, &owned))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// The figures from ClickHouse (the rollups `bets_per_minute`, `players_per_minute` and
/// `alerts_per_minute`, and the `events` and `pushes` tables), for `pitboss up` on ClickHouse
/// and `pitboss gateway --stats-clickhouse-url`. The same fields as [`SqliteStats`].
pub struct ClickHouseStats {
    client: pitboss_processor::sink::ClickHouseClient,
}

impl ClickHouseStats {
    pub fn new(client: pitboss_processor::sink::ClickHouseClient) -> Self {
        ClickHouseStats { client }
    }

    /// The rows of `sql` as JSON objects (64-bit integers as numbers); its `?` are the tenant,
    /// then `times` (Unix seconds).
    async fn rows(
        &self,
        sql: &str,
        tenant: &str,
        times: &[i64],
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut query = self.client.query(sql).bind(tenant);
        for t in times {
            query = query.bind(*t);
        }
        let bytes = query
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONEachRow")
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| e.to_string()))
            .collect()
    }

    /// The first column of the first row (an object's only field), or null.
    async fn scalar(
        &self,
        sql: &str,
        tenant: &str,
        times: &[i64],
    ) -> Result<serde_json::Value, String> {
        Ok(self
            .rows(sql, tenant, times)
            .await?
            .into_iter()
            .next()
            .and_then(|row| match row {
                serde_json::Value::Object(o) => o.into_iter().next().map(|(_, v)| v),
                _ => None,
            })
            .unwrap_or(serde_json::Value::Null))
    }
}

#[async_trait::async_trait]
impl Figures for ClickHouseStats {
    async fn figures(&self, tenant: &str) -> Result<serde_json::Value, String> {
        let now_ms = pitboss_model::Timestamp::now().as_millis();
        let now = now_ms / 1000;
        // Stored in the last ten whole seconds, as for SQLite above.
        let recent = self
            .scalar(
                "SELECT count() AS n FROM events WHERE tenant_id = ? \
                 AND occurred_at >= toDateTime(?) \
                 AND received_at >= toDateTime(?) AND received_at < toDateTime(?)",
                tenant,
                &[now - WINDOW_SECS, now - 11, now - 1],
            )
            .await?;
        let events_per_second = recent.as_f64().unwrap_or(0.0) / 10.0;
        let active_players = self
            .scalar(
                "SELECT uniqMerge(players) AS n FROM players_per_minute \
                 WHERE tenant_id = ? AND minute >= toDateTime(?)",
                tenant,
                &[now - 300],
            )
            .await?;
        let alerts_by_rule = self
            .rows(
                "SELECT rule_id, uniqExactMerge(alerts) AS alerts FROM alerts_per_minute \
                 WHERE tenant_id = ? AND minute >= toDateTime(?) \
                 GROUP BY rule_id ORDER BY alerts DESC, rule_id LIMIT 30",
                tenant,
                &[now - 3600],
            )
            .await?;
        let alerts_last_hour = self
            .scalar(
                "SELECT uniqExactMerge(alerts) AS n FROM alerts_per_minute \
                 WHERE tenant_id = ? AND minute >= toDateTime(?)",
                tenant,
                &[now - 3600],
            )
            .await?;
        let ggr_by_game = self
            .rows(
                "SELECT game_id, currency, sum(bets) AS bets, sum(stakes_minor) AS stakes_minor, \
                 sum(payouts_minor) AS payouts_minor, sum(ggr_minor) AS ggr_minor \
                 FROM bets_per_minute WHERE tenant_id = ? AND minute >= toDateTime(?) \
                 GROUP BY game_id, currency ORDER BY ggr_minor DESC, game_id LIMIT 30",
                tenant,
                &[now - 3600],
            )
            .await?;
        // A push the table has not merged away yet appears once (LIMIT 1 BY).
        let recent_pushes = self
            .rows(
                "SELECT push_id, target_type, target_id, kind, title, rule_id, created_at_ms \
                 FROM pushes WHERE tenant_id = ? AND created_at >= toDateTime(?) \
                 ORDER BY created_at_ms DESC LIMIT 1 BY push_id LIMIT 15",
                tenant,
                &[now - 86_400],
            )
            .await?;
        // `max` of no rows is 0 here (NULL in SQLite).
        let newest = self
            .scalar(
                "SELECT max(received_at_ms) AS m FROM events \
                 WHERE tenant_id = ? AND occurred_at >= toDateTime(?)",
                tenant,
                &[now - WINDOW_SECS],
            )
            .await?;
        let newest = newest.as_i64().filter(|m| *m > 0);
        let lag_ms = newest.map(|r| (now_ms - r).max(0));
        Ok(serde_json::json!({
            "events_per_second": events_per_second,
            "active_players": active_players,
            "alerts_last_hour": alerts_last_hour,
            "alerts_by_rule": alerts_by_rule,
            "ggr_by_game": ggr_by_game,
            "recent_pushes": recent_pushes,
            "pipeline": {"lag_ms": lag_ms, "newest_event_received_at_ms": newest},
        }))
    }
}
