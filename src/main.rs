//! The `pitboss` command.
//!
//! - `pitboss up`: Pitboss in one process over the embedded durable log — no servers needed —
//!   or over Kafka and ClickHouse when given their addresses.
//! - `pitboss ingest`: the ingest function as a standalone server over Kafka, Kinesis or the
//!   embedded log.
//! - `pitboss migrate` / `pitboss process`: the ClickHouse schema, and the processor from Kafka
//!   into ClickHouse (events, and the live path's alerts, pushes, deliveries and acks).
//! - `pitboss topics`: every topic the roles use, created where missing (MSK, compose).
//! - `pitboss gateway`: the edge gateway (WebSocket pushes and alerts) over Kafka, Kinesis or
//!   the embedded log (it also runs inside `pitboss up`); `pitboss token`: a connection token.
//! - `pitboss antifraud`: the rules engine over Kafka, Kinesis or the embedded log, publishing
//!   alerts and pushes (it also runs inside `pitboss up`).
//! - `pitboss rules check` / `test` / `backtest`: a rule set checked, its test files run, or
//!   stored events replayed through it, with hits per rule,
//!   example alerts and the score distribution.
//! - `pitboss sql "SELECT …"`: a read-only query against the embedded store of `pitboss up`.
//! - `pitboss hash-key KEY`: the `api_key_sha256` entry for an API key.
//! - `pitboss loadgen`: sustained HTTP load with events/s and latency percentiles; with
//!   `--live`, the live path under load (time to notify, lost and duplicated pushes); with
//!   `--broadcast`, broadcast to one room against Pitboss or Socket.IO.

mod backtest;
mod demo;
mod gateway;
mod lists;
mod loadgen;
mod loadgen_broadcast;
mod loadgen_live;
mod rules_dir;
mod ruletest;
mod snooze;
mod topics;

/// mimalloc: the ingest path allocates per event; glibc malloc took a fifth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, BusSpec};
use pitboss_ingest::{IngestConfig, TenantConfig};
use pitboss_model::live::{Alert, AlertAck, Delivery, LiveMessage, Push};
use pitboss_processor::Table;
use pitboss_runtime::Shutdown;

/// The live path's topics `pitboss up` creates (8 partitions, like `events`) and stores.
const LIVE_TOPICS: [&str; 4] = [Alert::TOPIC, Push::TOPIC, Delivery::TOPIC, AlertAck::TOPIC];

#[derive(Debug, Parser)]
#[command(
    name = "pitboss",
    version,
    about = "Real-time analytics, antifraud and pushes for gaming operators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Pitboss in one process over the embedded log (no servers needed), or on Kafka and
    /// ClickHouse (`--kafka-bootstrap`, `--clickhouse-url`).
    Up(UpArgs),
    /// Run the ingest function as a standalone server.
    Ingest(IngestArgs),
    /// Print the SHA-256 of an API key: the value of an `api_key_sha256` entry of the ingest config.
    HashKey {
        /// The key, or `-` to read it from standard input (kept out of `ps` and shell history).
        key: String,
    },
    /// Send sustained load to an ingest API and report events/s and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Bring the ClickHouse schema up to date (versioned, idempotent migrations).
    Migrate(MigrateArgs),
    /// Create the topics every role reads and writes where missing (brokers that do not
    /// create topics on first use: MSK, compose); idempotent.
    Topics(topics::TopicsArgs),
    /// Run the processor: events (and alerts, pushes, deliveries, acks) from Kafka into
    /// ClickHouse, effectively once.
    Process(ProcessArgs),
    /// Query the embedded store of `pitboss up` (read-only SQLite SQL).
    Sql(SqlArgs),
    /// Run the rules engine: events in, alerts and pushes out (docs/rules.md).
    Antifraud(AntifraudArgs),
    /// Run the edge gateway: WebSocket pushes to players and alerts to operators (docs/gateway.md).
    Gateway(Box<gateway::GatewayArgs>),
    /// Print a signed connection token for the gateway (HS256).
    Token(gateway::TokenArgs),
    /// Work with rule sets: check them, test them on scripted events, backtest them on history.
    Rules(backtest::RulesArgs),
}

#[derive(Debug, Args)]
struct AntifraudArgs {
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Topic the alerts are published to.
    #[arg(long, default_value = "alerts")]
    alerts_topic: String,
    /// Topic the pushes are published to.
    #[arg(long, default_value = "pushes")]
    pushes_topic: String,
    /// Where events the engine cannot evaluate go, with the reason in the key.
    #[arg(long, default_value = "antifraud_dead_letter")]
    dead_letter_topic: String,
    /// How often the engine's state is saved and the offsets committed (milliseconds).
    #[arg(long, default_value_t = 5000)]
    snapshot_interval_ms: u64,
    /// Units of state a save writes between two polls, at most (a larger save is spread over
    /// several).
    #[arg(long, default_value_t = 200)]
    save_slice_units: usize,
    /// How long one slice of a save may hold the engine between two polls (milliseconds; 0:
    /// `--save-slice-units` alone sizes the slices).
    #[arg(long, default_value_t = 2)]
    save_slice_ms: u64,
    /// Seconds without heartbeats before the group gives a dead member's partitions away.
    #[arg(long, default_value_t = 10)]
    session_timeout_secs: u64,
    /// On Kafka: the compacted topic the engine's state is mirrored to, so that an engine
    /// taking the group over on another machine starts from these windows (docs/rules.md).
    #[arg(long, default_value = "antifraud_state")]
    state_topic: String,
    /// On Kafka: keep the state only in the state directory (a takeover elsewhere starts
    /// with empty windows).
    #[arg(long)]
    no_state_topic: bool,
    /// Which part of the rules' keys this engine evaluates, `i/N`: N engines (0/N … N-1/N)
    /// split the work, each reading every event in its own group `<group>-shard-i-of-N`, with
    /// its own state file and state topic; a hit for a player another shard owns goes to it on
    /// the forwards topic (docs/rules.md, "Several engines"). `0/1`: one engine does it all.
    #[arg(long, env = "PITBOSS_ANTIFRAUD_SHARD", default_value = "0/1", value_parser = pitboss_antifraud::Shard::parse)]
    shard: pitboss_antifraud::Shard,
    /// Where split engines send each other the hits of players they do not own (made with the
    /// events topic's partitions where missing).
    #[arg(long, default_value = "antifraud_forwards")]
    forwards_topic: String,
    /// A group that has committed nothing yet (a first start, a new `--shard` split, a switch
    /// from the Lambda) starts at the first event the bus stored at or after this time
    /// (RFC 3339, e.g. `2026-12-05T10:00:00Z`) instead of the earliest retained one; once it
    /// has committed, a restart resumes at its commit (docs/rules.md, "Several engines").
    #[arg(long, env = "PITBOSS_ANTIFRAUD_START_AT", value_parser = parse_start_at)]
    start_at: Option<pitboss_model::Timestamp>,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "PITBOSS_ANTIFRAUD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9466"
    )]
    admin_listen: std::net::SocketAddr,
    /// On SIGTERM/SIGINT, how long the engine may take to publish and save what it holds.
    #[arg(long, env = "PITBOSS_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// One SQLite statement, e.g. "SELECT * FROM bets_per_minute ORDER BY minute DESC LIMIT 10".
    sql: String,
    /// The data directory of `pitboss up`.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
    /// Output: tab-separated with a header row (NULL as \N), or one JSON object per row (keys
    /// in the columns' order; a name repeated in one answer gets `:2`, `:3`… after it).
    #[arg(long, value_enum, default_value_t = SqlFormat::Tsv)]
    format: SqlFormat,
    /// Refuse answers longer than this (add a LIMIT).
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    max_rows: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SqlFormat {
    Tsv,
    Json,
}

#[derive(Debug, Args)]
struct ClickHouseArgs {
    /// ClickHouse HTTP URL (`--clickhouse-url`, as `up` and `rules backtest` spell it, works
    /// too).
    #[arg(
        long,
        visible_alias = "clickhouse-url",
        env = "PITBOSS_CLICKHOUSE_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse: String,
    /// Database of the Pitboss tables (created if missing).
    #[arg(
        long,
        visible_alias = "clickhouse-database",
        env = "PITBOSS_CLICKHOUSE_DATABASE",
        default_value = "pitboss"
    )]
    database: String,
    /// Cluster (from the servers' `remote_servers`) for the replicated, sharded layout:
    /// `ON CLUSTER` migrations, `Replicated*MergeTree` tables behind `Distributed` ones.
    /// `process` also needs `<NAME>_replicas` there: every replica a shard of its own, with
    /// the cluster's user and password (high-water marks are read from every replica).
    /// Without it, the schema lives on the one server of `--clickhouse`.
    #[arg(long = "clickhouse-cluster", env = "PITBOSS_CLICKHOUSE_CLUSTER")]
    cluster: Option<String>,
    /// How long one call to ClickHouse (an insert with its lookups, a read, the start-up's
    /// database and migrations) waits for the answer: past it the call counts as failed — the
    /// processor retries it (and asks whether an insert landed all the same), `migrate` exits
    /// non-zero. A server that takes the connection and never answers is then named in the
    /// logs, not waited for without a word.
    #[arg(
        long = "clickhouse-timeout-secs",
        env = "PITBOSS_CLICKHOUSE_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout_secs: u64,
}

impl ClickHouseArgs {
    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }

    fn layout(&self) -> Result<pitboss_processor::schema::Layout> {
        Ok(match &self.cluster {
            None => pitboss_processor::schema::Layout::Single,
            Some(c) => pitboss_processor::schema::Layout::cluster(c, &self.database)?,
        })
    }
}

/// Where Kafka is and how to talk to it (ingest and processor alike).
#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "PITBOSS_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
    /// Extra librdkafka property, `key=value` (repeatable; e.g. security.protocol=SASL_SSL,
    /// linger.ms=10). Applied after Pitboss's own settings; values are never logged.
    #[arg(
        long = "kafka-option",
        env = "PITBOSS_KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    kafka_options: Vec<String>,
}

impl KafkaArgs {
    fn spec(&self) -> Result<BusSpec> {
        Ok(BusSpec::Kafka {
            bootstrap: self.kafka_bootstrap.clone(),
            options: pitboss_bus::parse_options(self.kafka_options.iter().map(String::as_str))?,
        })
    }
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    /// Print every migration's SQL for the layout (`;`-terminated, `-- version` comments)
    /// instead of applying it; connects to nothing.
    #[arg(long)]
    print_sql: bool,
}

#[derive(Debug, Args)]
struct ProcessArgs {
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    #[command(flatten)]
    bus: BusArgs,
    /// Topic to consume (repeatable), `NAME` or `NAME=TABLE`: the events topic and its hot-key
    /// overflow by default. `alerts`, `pushes`, `deliveries` and `alert_acks` are stored in
    /// the tables of those names, any other topic in `events`; `=TABLE` says otherwise
    /// (`--topic alerts_eu=alerts`). Each topic gets its own consumer in the group and its own
    /// `<topic>_dead_letter`.
    #[arg(long = "topic", default_values = ["events", "events_overflow"])]
    topics: Vec<String>,
    /// Consumer group.
    #[arg(long, default_value = "pitboss-processor")]
    group: String,
    /// Seconds without heartbeats before the group gives a dead member's partitions away
    /// (the broker's minimum is usually 6).
    #[arg(long, default_value_t = 10)]
    session_timeout_secs: u64,
    /// A partition's batch is inserted when it holds this many rows (at least 1)…
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch_max_rows: usize,
    /// …or this many bytes (at least 1)…
    #[arg(long, default_value_t = 64 * 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch_max_bytes: usize,
    /// …or its first record is this old (milliseconds).
    #[arg(long, default_value_t = 1000)]
    batch_max_age_ms: u64,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "PITBOSS_PROCESSOR_ADMIN_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    admin_listen: std::net::SocketAddr,
    /// On SIGTERM/SIGINT, how long the processors may take to store what they hold.
    #[arg(long, env = "PITBOSS_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
}

async fn clickhouse_client(
    args: &ClickHouseArgs,
) -> Result<pitboss_processor::sink::ClickHouseClient> {
    if !pitboss_processor::schema::valid_identifier(&args.database) {
        bail!("--database must be letters, digits and '_' (not starting with a digit)");
    }
    pitboss_processor::sink::check_url(&args.clickhouse)
        .map_err(|e| anyhow::anyhow!("--clickhouse: {e}"))?;
    let layout = args.layout()?;
    let server = pitboss_processor::sink::client(&args.clickhouse, "default");
    // Bounded: a server that takes the connection and never answers is found by this first
    // call. What follows is not cut short (an `ON CLUSTER` statement may wait minutes for every
    // replica, and a migration stopped between its steps would leave them half done).
    pitboss_processor::sink::within(args.timeout(), async {
        Ok(server.query("SELECT 1").fetch_one::<u8>().await?)
    })
    .await
    .context("asking ClickHouse")?;
    pitboss_processor::schema::create_database(&server, &args.database, &layout)
        .await
        .context("creating the database")?;
    let client = pitboss_processor::sink::client(&args.clickhouse, &args.database);
    let ran = pitboss_processor::schema::migrate(&client, &layout).await?;
    tracing::info!(database = %args.database, cluster = ?args.cluster, applied = ?ran, "schema up to date");
    Ok(client)
}

fn processor_config(topic: &str, group: &str) -> pitboss_processor::ProcessorConfig {
    pitboss_processor::ProcessorConfig {
        dead_letter_topic: format!("{topic}_dead_letter"),
        topic: topic.to_owned(),
        group: group.to_owned(),
        ..pitboss_processor::ProcessorConfig::default()
    }
}

/// One processor per topic into `sink` (each into its table), all stopped by `stop`; their
/// figures, logged.
async fn run_processors<S: pitboss_processor::AnySink>(
    bus: std::sync::Arc<dyn Bus>,
    sink: std::sync::Arc<S>,
    configs: Vec<(pitboss_processor::ProcessorConfig, Table)>,
    stop: Shutdown,
    runtime: tokio::runtime::Handle,
) -> Result<()> {
    let runs = configs.into_iter().map(|(config, table)| {
        let topic = config.topic.clone();
        let stop = {
            let stop = stop.clone();
            async move { stop.wait().await }
        };
        let (bus, sink) = (bus.clone(), sink.clone());
        on_runtime(&runtime, "processor", async move {
            let stats = pitboss_processor::run_table(table, bus, sink, config, stop)
                .await
                .with_context(|| format!("processor of {topic}"))?;
            tracing::info!(%topic, table = table.name(), ?stats, "processor stopped");
            anyhow::Ok(())
        })
    });
    let ran = futures::future::try_join_all(runs).await;
    if let Err(e) = &ran {
        // A processor that stops on its own (its store failed) stops the whole process:
        // accepting events that nothing stores would hide the failure.
        stop.trigger("a processor failed");
        return Err(anyhow::anyhow!("{e:#}"));
    }
    if !stop.is_triggered() {
        stop.trigger("the processors stopped");
        bail!("the processors stopped before shutdown");
    }
    Ok(())
}

/// Runs `task` on the runtime's worker threads and waits for it; dropping the returned future
/// aborts the task. Every long-running part of a process goes through this: a future merely
/// joined in `main` is polled on the one thread that runs `main`, so the parts of `pitboss up`
/// (processors, rules engine, simulator) would share one core between them.
async fn on_worker<T: Send + 'static>(
    what: &'static str,
    task: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    on_runtime(&tokio::runtime::Handle::current(), what, task).await
}

/// [`on_worker`] on the workers of `runtime`.
async fn on_runtime<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    what: &'static str,
    task: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let handle = runtime.spawn(task);
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => Err(anyhow::anyhow!("the {what} panicked: {e}")),
        Err(e) => Err(anyhow::anyhow!("the {what} was cancelled: {e}")),
    }
}

/// Runs the processors until the stop signal, then gives them `deadline` to store what they
/// hold (the log keeps the rest: it is processed at the next start).
async fn drain_processors(
    processors: impl std::future::Future<Output = Result<()>>,
    stop: Shutdown,
    deadline: std::time::Duration,
) -> Result<()> {
    match stop.drain(deadline, processors).await {
        Ok(done) => done,
        Err(_) => {
            tracing::warn!(
                ?deadline,
                "processors still busy at the drain deadline; the log keeps the rest for the next start"
            );
            Ok(())
        }
    }
}

/// Which rules engine: its rules, state directory, events topic and group (`pitboss
/// antifraud`, and `pitboss rules warm` that writes its state).
#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Directory of rule files (`*.toml`, reloaded on change); the shipped packs without it.
    #[arg(long, env = "PITBOSS_RULES")]
    pub rules: Option<PathBuf>,
    /// Where the engine keeps its snapshot and batch log (one instance's own; `pitboss up`
    /// keeps them in its data directory).
    #[arg(
        long,
        env = "PITBOSS_ANTIFRAUD_STATE_DIR",
        default_value = ".pitboss-antifraud"
    )]
    pub state_dir: PathBuf,
    /// Events topic (its hot-key overflow topic `<topic>_overflow` is read with it).
    #[arg(long, default_value = "events")]
    pub topic: String,
    /// Consumer group.
    #[arg(long, default_value = "pitboss-antifraud")]
    pub group: String,
}

/// The bus flags of every service (ingest, antifraud, process, gateway).
#[derive(Debug, Args)]
pub(crate) struct BusArgs {
    /// Which bus: Kafka, Kinesis (a build with `--features aws`) or the embedded log in
    /// `--data-dir`.
    #[arg(long = "bus", value_name = "BUS", env = "PITBOSS_BUS", value_enum, default_value_t = BusKind::Kafka)]
    pub kind: BusKind,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// AWS region for Kinesis.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub kinesis_region: String,
    /// Custom Kinesis endpoint (LocalStack).
    #[arg(long, env = "PITBOSS_KINESIS_ENDPOINT")]
    pub kinesis_endpoint: Option<String>,
    /// DynamoDB table of the Kinesis consumer groups' leases (created on first use; every
    /// member of a group must name the same one).
    #[arg(
        long,
        env = "PITBOSS_KINESIS_LEASE_TABLE",
        default_value = "pitboss-leases"
    )]
    pub kinesis_lease_table: String,
    /// Directory of the embedded log (with `--bus embedded`) and of local files.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    pub data_dir: PathBuf,
}

impl BusArgs {
    /// The bus of a role that reads what others wrote (the rules engine, the processor): an
    /// embedded log must be there already — opening it would make an empty one in a mistyped
    /// `--data-dir`, and the role would fail later on a topic that is not there.
    pub(crate) fn existing_spec(&self) -> Result<BusSpec> {
        if matches!(self.kind, BusKind::Embedded) && !self.data_dir.join("log").is_dir() {
            bail!(
                "no embedded log in {}: give --data-dir the directory `pitboss up` or `pitboss ingest --bus embedded` writes to",
                self.data_dir.display()
            );
        }
        self.spec()
    }

    pub(crate) fn spec(&self) -> Result<BusSpec> {
        bus_spec(
            self.kind,
            &self.kafka,
            (
                self.kinesis_region.clone(),
                self.kinesis_endpoint.clone(),
                self.kinesis_lease_table.clone(),
            ),
            &self.data_dir,
        )
    }
}

/// The bus `--bus` names: the embedded log in `data_dir/log`, Kafka, or Kinesis.
fn bus_spec(
    kind: BusKind,
    kafka: &KafkaArgs,
    (kinesis_region, kinesis_endpoint, kinesis_lease_table): (String, Option<String>, String),
    data_dir: &Path,
) -> Result<BusSpec> {
    Ok(match kind {
        BusKind::Embedded => BusSpec::Embedded {
            dir: data_dir.join("log"),
        },
        BusKind::Kafka => kafka.spec()?,
        #[cfg(feature = "aws")]
        BusKind::Kinesis => BusSpec::Kinesis {
            region: kinesis_region,
            endpoint: kinesis_endpoint,
            lease_table: Some(kinesis_lease_table),
        },
        #[cfg(not(feature = "aws"))]
        BusKind::Kinesis => {
            let _ = (kinesis_region, kinesis_endpoint, kinesis_lease_table);
            bail!("{NO_KINESIS}")
        }
    })
}

/// `--bus kinesis` on a binary built without the `aws` feature (the default: the quickstart
/// does not compile the AWS SDK).
#[cfg(not(feature = "aws"))]
const NO_KINESIS: &str = "--bus kinesis: this pitboss was built without Kinesis; \
    build it with `cargo build --release --features aws`";

fn antifraud_config(
    topic: &str,
    overflow: &str,
    rules: Option<PathBuf>,
) -> pitboss_antifraud::stream::StreamConfig {
    use pitboss_antifraud::stream::{RulesSource, StreamConfig};
    let mut c = StreamConfig {
        topic: topic.to_owned(),
        rules: rules.map_or(RulesSource::Shipped, RulesSource::Dir),
        ..StreamConfig::default()
    };
    c.consumer.companions = vec![overflow.to_owned()];
    c
}

/// The rules engine until `stop` (nothing when `config` is None); like a processor, an engine
/// that stops on its own stops the whole process.
async fn run_antifraud(
    bus: std::sync::Arc<dyn Bus>,
    config: Option<pitboss_antifraud::stream::StreamConfig>,
    stop: Shutdown,
) -> Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    let stopped = {
        let stop = stop.clone();
        async move { stop.wait().await }
    };
    let engine = on_worker("rules engine", async move {
        Ok(pitboss_antifraud::stream::run(bus, config, stopped).await)
    });
    match engine.await? {
        Ok(stats) if stop.is_triggered() => {
            tracing::info!(?stats, "rules engine stopped");
            Ok(())
        }
        Ok(_) => {
            stop.trigger("the rules engine stopped");
            bail!("the rules engine stopped before shutdown")
        }
        Err(e) => {
            stop.trigger("the rules engine failed");
            Err(anyhow::anyhow!("rules engine: {e}"))
        }
    }
}

/// The rules engine's bus: on Kafka without the producer's linger (5 ms by default, which lets
/// ingest's many small publishes share requests) unless `linger.ms` is given: the engine
/// publishes each batch's output, and its changelog records, in one call and waits for them.
fn engine_spec(spec: BusSpec) -> BusSpec {
    match spec {
        BusSpec::Kafka {
            bootstrap,
            mut options,
        } => {
            options
                .entry("linger.ms".into())
                .or_insert_with(|| "0".into());
            BusSpec::Kafka { bootstrap, options }
        }
        other => other,
    }
}

/// `--start-at`: an RFC 3339 time.
fn parse_start_at(text: &str) -> Result<pitboss_model::Timestamp, String> {
    pitboss_model::Timestamp::parse_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-12-05T10:00:00Z: {e}"))
}

async fn antifraud(args: AntifraudArgs) -> Result<()> {
    let spec = engine_spec(args.bus.existing_spec()?);
    let overflow = format!("{}_overflow", args.engine.topic);
    let mut config = antifraud_config(&args.engine.topic, &overflow, args.engine.rules.clone());
    config.group = args.engine.group.clone();
    config.alerts_topic = args.alerts_topic.clone();
    config.pushes_topic = args.pushes_topic.clone();
    config.dead_letter_topic = args.dead_letter_topic.clone();
    config.state_path = args.engine.state_dir.join("antifraud.db");
    keep_private(std::slice::from_ref(&args.engine.state_dir));
    // Only Kafka compacts topics; elsewhere the state lives in the state directory.
    config.state_topic = (matches!(args.bus.kind, BusKind::Kafka) && !args.no_state_topic)
        .then(|| args.state_topic.clone());
    config.snapshot_interval = std::time::Duration::from_millis(args.snapshot_interval_ms.max(1));
    config.save_slice_units = args.save_slice_units;
    config.save_slice_time = std::time::Duration::from_millis(args.save_slice_ms);
    config.consumer.session_timeout = std::time::Duration::from_secs(args.session_timeout_secs);
    config.shard = args.shard;
    config.forwards_topic = args.forwards_topic.clone();
    if let Some(t) = args.start_at {
        config.consumer.start = pitboss_bus::StartFrom::CommittedOrTimestamp(t.as_millis());
    }
    // Refuse bad rules before connecting to anything.
    let set = config.rules.load()?;
    let bus = spec.open().await?;
    check_copartitioned(&*bus, &args.engine.topic, &overflow).await?;
    // What it publishes to must be there before it reads anything (it would fail at the first
    // alert, after dead-lettering records); the forwards topic it makes itself.
    for (topic, flag) in [
        (&args.alerts_topic, "--alerts-topic"),
        (&args.pushes_topic, "--pushes-topic"),
        (&args.dead_letter_topic, "--dead-letter-topic"),
    ] {
        require_topic(&*bus, topic, flag).await?;
    }
    let metrics = pitboss_runtime::telemetry::prometheus();
    let admin = bind(args.admin_listen).await?;
    tracing::info!(admin = %admin.local_addr()?, rules = set.rules.len(), bus = ?args.bus.kind, shard = %args.shard, "rules engine starting");
    let stop = Shutdown::on_signals();
    let router = pitboss_runtime::admin::router(metrics, stop.clone());
    let engine = drain_processors(
        run_antifraud(bus, Some(config), stop.clone()),
        stop.clone(),
        std::time::Duration::from_secs(args.drain_timeout_secs),
    );
    with_admin(
        engine,
        |done| pitboss_runtime::admin::serve(admin, router, done),
        stop,
    )
    .await
}

/// Runs `work` with the admin listener beside it: the listener answers through the drain (its
/// `/readyz` 503 `draining`: its router reads `stop`) and stops once `work` is done; if it
/// fails, `stop` stops the process too. `serve_admin` serves until the shutdown it is given.
pub(crate) async fn with_admin<A>(
    work: impl std::future::Future<Output = Result<()>>,
    serve_admin: impl FnOnce(Shutdown) -> A,
    stop: Shutdown,
) -> Result<()>
where
    A: std::future::Future<Output = std::io::Result<()>>,
{
    let done = Shutdown::new();
    let admin = serve_admin(done.clone());
    let work = async {
        let r = work.await;
        done.trigger("drained");
        r
    };
    let admin = async {
        let r = admin.await.context("admin listener");
        if r.is_err() {
            // Without probes and metrics the process stops, as it did before the drain.
            stop.trigger("the admin listener failed");
        }
        r
    };
    let (work, admin) = tokio::join!(work, admin);
    work?;
    admin
}

async fn process(args: ProcessArgs) -> Result<()> {
    // Refuse a bad --topic before connecting to anything.
    for arg in &args.topics {
        Table::parse_topic(arg)?;
    }
    // From the start: a SIGTERM during start-up (waiting for ClickHouse, migrations, joining
    // the group) stops the processors as soon as they run, and the process exits 0.
    let stop = Shutdown::on_signals();
    let spec = args.bus.existing_spec()?;
    // The admin listener (metrics, /healthz, /readyz) from the start: a processor waiting for
    // ClickHouse is alive, and says so to a health check.
    let metrics = pitboss_runtime::telemetry::prometheus();
    let admin = bind(args.admin_listen).await?;
    let admin_at = admin.local_addr()?;
    tracing::info!(admin = %admin_at, "admin listening");
    // `/readyz` answers 503 while ClickHouse is not reached yet, and while its calls fail.
    let health = pitboss_processor::StoreHealth::default();
    health.unreached("no answer yet");
    let router = pitboss_runtime::admin::router_with(metrics, stop.clone(), {
        let health = health.clone();
        move || health.not_ready()
    });
    let work = {
        let stop = stop.clone();
        async move {
            let Some(client) = wait_for_clickhouse(&args.clickhouse, &stop, &health).await? else {
                tracing::info!("stopped before ClickHouse answered");
                return Ok(());
            };
            let bus = spec.open().await?;
            // A topic that is not there is refused now (it ran on, warning without naming
            // it); so is its dead-letter topic, which the first bad record would otherwise
            // find missing and stop the processor on.
            for arg in &args.topics {
                let (topic, _) = Table::parse_topic(arg)?;
                require_topic(&*bus, &topic, "--topic").await?;
                require_topic(
                    &*bus,
                    &format!("{topic}_dead_letter"),
                    &format!("the dead-letter topic of --topic {topic:?},"),
                )
                .await?;
            }
            tracing::info!(admin = %admin_at, topics = ?args.topics, bus = ?args.bus.kind, "processor starting");
            let configs = args
                .topics
                .iter()
                .map(|arg| {
                    let (topic, table) = Table::parse_topic(arg)?;
                    let mut c = processor_config(&topic, &args.group);
                    c.health = health.clone();
                    c.consumer.session_timeout =
                        std::time::Duration::from_secs(args.session_timeout_secs);
                    c.batch = pitboss_processor::BatchConfig {
                        max_rows: args.batch_max_rows,
                        max_bytes: args.batch_max_bytes,
                        max_age: std::time::Duration::from_millis(args.batch_max_age_ms),
                    };
                    Ok((c, table))
                })
                .collect::<Result<Vec<_>>>()?;
            let sink = std::sync::Arc::new(
                match &args.clickhouse.cluster {
                    None => pitboss_processor::ClickHouseSink::new(client),
                    Some(cluster) => {
                        pitboss_processor::sink::within(
                            args.clickhouse.timeout(),
                            pitboss_processor::ClickHouseSink::cluster(
                                client,
                                cluster,
                                &args.clickhouse.database,
                            ),
                        )
                        .await?
                    }
                }
                .with_timeout(args.clickhouse.timeout()),
            );
            drain_processors(
                run_processors(
                    bus,
                    sink,
                    configs,
                    stop.clone(),
                    tokio::runtime::Handle::current(),
                ),
                stop.clone(),
                std::time::Duration::from_secs(args.drain_timeout_secs),
            )
            .await
        }
    };
    with_admin(
        work,
        |done| pitboss_runtime::admin::serve(admin, router, done),
        stop,
    )
    .await
}

/// ClickHouse's client once it answers and the schema is up to date; `None` when `stop` comes
/// first. A ClickHouse that does not answer yet (started after the processor, restarting) is
/// retried every 1 s, backing off to 10 s, with a warning each time; anything else it says (a
/// refused login, a migration it cannot run) is returned at once.
async fn wait_for_clickhouse(
    args: &ClickHouseArgs,
    stop: &Shutdown,
    health: &pitboss_processor::StoreHealth,
) -> Result<Option<pitboss_processor::sink::ClickHouseClient>> {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            () = stop.wait() => return Ok(None),
            r = clickhouse_client(args) => r,
        };
        match attempt {
            Ok(c) => {
                health.reached();
                return Ok(Some(c));
            }
            Err(e)
                if e.downcast_ref::<pitboss_processor::ProcessorError>()
                    .is_some_and(pitboss_processor::ProcessorError::is_retryable) =>
            {
                health.unreached(format!("{e:#}"));
                tracing::warn!(
                    // Which server (without its password): a name that does not resolve is
                    // otherwise told only as "failed to lookup address information".
                    clickhouse = %pitboss_processor::sink::redacted_url(&args.clickhouse),
                    error = %format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "ClickHouse does not answer yet; retrying"
                );
                tokio::select! {
                    () = stop.wait() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Where the embedded log and store (unless on Kafka and ClickHouse), the rules engine's
    /// state, the demo API keys and the gateway's secret live.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "PITBOSS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Address of the admin listener (/metrics).
    #[arg(long, env = "PITBOSS_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    admin_listen: std::net::SocketAddr,
    /// Ingest config (TOML); without one, a "demo" tenant with a generated key is used.
    #[arg(long, env = "PITBOSS_CONFIG")]
    config: Option<PathBuf>,
    /// On SIGTERM/SIGINT, how long requests in flight and the processors may take to finish
    /// and store what they hold (seconds); without it, the config's `drain_timeout_secs`
    /// (30 by default).
    #[arg(long, env = "PITBOSS_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    /// Directory of rule files (`*.toml`, reloaded on change); the shipped packs without it.
    #[arg(long, env = "PITBOSS_RULES")]
    rules: Option<PathBuf>,
    /// Do not run the rules engine (no alerts or pushes from events).
    #[arg(long, conflicts_with = "rules")]
    no_rules: bool,
    /// How often the rules engine saves its state and commits (milliseconds).
    #[arg(
        long,
        env = "PITBOSS_ANTIFRAUD_SNAPSHOT_INTERVAL_MS",
        default_value_t = 5000
    )]
    snapshot_interval_ms: u64,
    /// Units of the rules engine's state a save writes between two polls, at most.
    #[arg(
        long,
        env = "PITBOSS_ANTIFRAUD_SAVE_SLICE_UNITS",
        default_value_t = 200
    )]
    save_slice_units: usize,
    /// How long one slice of the rules engine's save may hold it between two polls
    /// (milliseconds; 0: `--save-slice-units` alone sizes the slices).
    #[arg(long, env = "PITBOSS_ANTIFRAUD_SAVE_SLICE_MS", default_value_t = 2)]
    save_slice_ms: u64,
    /// Address of the edge gateway (WebSocket pushes and alerts, operator publish API).
    #[arg(long, env = "PITBOSS_GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
    gateway_listen: std::net::SocketAddr,
    #[command(flatten)]
    gateway: gateway::GatewayTuning,
    /// Run the built-in traffic simulator: thousands of players of two tenants (`demo` and
    /// `northbet`) across several games, with injected fraud and risky play, so alerts and
    /// pushes appear within seconds. The console link is printed at start.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// The simulator's seed: the same seed gives the same players and events.
    #[arg(long, default_value_t = 1, requires = "demo")]
    seed: u64,
    /// Events per second the simulator sends.
    #[arg(long, default_value_t = 200.0, requires = "demo")]
    demo_rate: f64,
    /// Players per tenant.
    #[arg(long, default_value_t = 2000, requires = "demo")]
    demo_players: usize,
    /// Share (0–0.5) of the events that come from injected fraud and risky-play patterns.
    #[arg(long, default_value_t = 0.05, requires = "demo")]
    demo_risky_share: f64,
    /// Run on Kafka (bootstrap servers, `host:port[,…]`) instead of the embedded log in
    /// `--data-dir`: the topics are created when missing (8 partitions), the processors and
    /// the rules engine join their consumer groups there.
    #[arg(long, value_name = "HOST:PORT")]
    kafka_bootstrap: Option<String>,
    /// Extra librdkafka property, `key=value` (repeatable), with `--kafka-bootstrap`.
    #[arg(
        long = "kafka-option",
        env = "PITBOSS_UP_KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true,
        requires = "kafka_bootstrap"
    )]
    kafka_options: Vec<String>,
    /// Prefix of every topic and consumer group on Kafka (`staging_` → `staging_events`,
    /// `staging_pitboss-processor`), so several deployments share one cluster.
    #[arg(long, default_value = "", requires = "kafka_bootstrap")]
    topic_prefix: String,
    /// Store in ClickHouse at this HTTP URL (`?user=…&password=…` for credentials) instead of
    /// the embedded SQLite store: the database and its tables are created or migrated at
    /// start, and the console reads its figures there. Credentials are better given in the
    /// environment (`PITBOSS_UP_CLICKHOUSE_URL`), where other users' `ps` does not show them.
    #[arg(
        long,
        value_name = "URL",
        env = "PITBOSS_UP_CLICKHOUSE_URL",
        hide_env_values = true
    )]
    clickhouse_url: Option<String>,
    /// ClickHouse database of the Pitboss tables, with `--clickhouse-url`.
    #[arg(
        long,
        visible_alias = "database",
        default_value = "pitboss",
        requires = "clickhouse_url"
    )]
    clickhouse_database: String,
    /// On Kafka, keep the rules engine's state only in `--data-dir` instead of also mirroring
    /// it to the compacted topic `<prefix>antifraud_state` (which lets another `pitboss up`
    /// take the group over with the engine's windows, docs/rules.md).
    #[arg(long, requires = "kafka_bootstrap")]
    no_state_topic: bool,
    /// Rules engines splitting the rules' keys (`pitboss antifraud --shard i/N` each, on its
    /// own thread): one core's worth of rule work per engine (docs/rules.md, "Several
    /// engines").
    #[arg(long, env = "PITBOSS_RULES_SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with = "no_rules")]
    rules_shards: u32,
    /// A rules engine group that has committed nothing yet — after `--rules-shards` changed,
    /// each shard's group is new — starts at the first event stored at or after this time
    /// (RFC 3339) instead of the earliest the log keeps, which would raise every alert and
    /// push of the retained log again (docs/rules.md, "Several engines"). Once a group has
    /// committed, a restart resumes at its commit.
    #[arg(long, env = "PITBOSS_RULES_START_AT", value_parser = parse_start_at,
          conflicts_with = "no_rules")]
    rules_start_at: Option<pitboss_model::Timestamp>,
    /// How many steps (nice, 0–19) below the live path (ingest, the rules engine, the gateway)
    /// the threads that store run (the processors, their reads of the log, their writes):
    /// when the cores are busy, storing waits and notifications do not.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    storage_nice: i32,
}

/// Creates `topic` with `partitions` unless it exists (as it is: topics made beforehand keep
/// their own partition counts and settings).
async fn ensure_topic(bus: &dyn Bus, topic: &str, partitions: u32) -> Result<()> {
    match bus.partition_count(topic).await {
        Ok(_) => Ok(()),
        Err(pitboss_bus::BusError::UnknownTopic(_)) => bus
            .create_topic(topic, partitions)
            .await
            .with_context(|| format!("creating topic {topic}")),
        Err(e) => Err(anyhow::Error::new(e).context(format!("looking up topic {topic}"))),
    }
}

/// A data directory keeps read positions (the SQLite store's, the rules engine's) by topic
/// name: they belong to one bus. The first start records which (`<data-dir>/bus`, once the bus
/// answered: [`record_data_dir_bus`]); a start on another is refused rather than skipping or
/// replaying records by another bus's offsets. True when nothing is recorded yet.
fn check_data_dir_bus(data_dir: &Path, identity: &str) -> Result<bool> {
    let path = data_dir.join("bus");
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        // Empty: written by a build that did not sync it, and the power went before the OS
        // wrote it back. Worked out again, as for a directory made before the file, and
        // written again.
        Ok(_) if identity == "embedded" && data_dir.join("log").exists() => return Ok(true),
        Ok(_) => data_dir.join("log").exists().then(|| "embedded".to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Made before this file existed, when the embedded log was the only bus.
            data_dir.join("log").exists().then(|| "embedded".to_owned())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    match recorded {
        Some(r) if r == identity => Ok(false),
        Some(r) => bail!(
            "{} was used with another bus ({r}); this start asks for {identity}: its stored \
             positions would skip or replay records. Use another --data-dir",
            data_dir.display()
        ),
        None => Ok(true),
    }
}

/// Where `up`'s rules engines start, from the split this start asks for and the last one
/// (recorded in `data_dir/rules-shards` as `N` and the time of the last switch, or worked out
/// from the engines' state files of a directory made before the record). A changed split
/// without `--rules-start-at` is refused: its groups would start at the earliest retained event
/// (or at a commit from when that split last ran) and raise the retained log's alerts and
/// pushes again. Returns the start and what to record.
fn plan_rules_start(
    data_dir: &Path,
    shards: u32,
    start_at: Option<pitboss_model::Timestamp>,
) -> Result<(Option<pitboss_bus::StartFrom>, String)> {
    let path = data_dir.join("rules-shards");
    let (before, switched): (Option<u32>, Option<pitboss_model::Timestamp>) =
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                let mut words = text.split_whitespace();
                (
                    words.next().and_then(|w| w.parse().ok()),
                    words
                        .next()
                        .and_then(|w| pitboss_model::Timestamp::parse_rfc3339(w).ok()),
                )
            }
            // Missing, or empty (written by a build that did not sync it before a power cut):
            // worked out from the state files.
            Ok(_) => (split_of_state_files(data_dir), None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (split_of_state_files(data_dir), None)
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
            }
        };
    let record = |t: Option<pitboss_model::Timestamp>| match t.and_then(|t| t.to_rfc3339()) {
        Some(t) => format!("{shards} {t}\n"),
        None => format!("{shards}\n"),
    };
    match (before, start_at) {
        (Some(b), None) if b != shards => bail!(
            "{} ran {b} rules engine{} and this start asks for {shards}: the new split's \
             groups would read the retained log again and raise its alerts and pushes a second \
             time. Give --rules-start-at the time the old split stopped (e.g. --rules-start-at \
             {}), or start with --rules-shards {b}",
            data_dir.display(),
            if b == 1 { "" } else { "s" },
            pitboss_model::Timestamp::now()
                .to_rfc3339()
                .unwrap_or_else(|| "2026-12-05T10:00:00Z".into())
        ),
        // The first start of a new split reads from `t` whatever its groups committed (a split
        // used before holds old commits).
        (Some(b), Some(t)) if b != shards => Ok((
            Some(pitboss_bus::StartFrom::Timestamp(t.as_millis())),
            record(Some(t)),
        )),
        // The same split: its commits, and where a group has none (a first start cut short)
        // the time of the switch, so it does not go back to the earliest event either.
        _ => {
            let t = start_at.or(switched);
            Ok((
                t.map(|t| pitboss_bus::StartFrom::CommittedOrTimestamp(t.as_millis())),
                record(t),
            ))
        }
    }
}

/// What `up` and the rules engine write (the log, the store, the engines' state) holds players'
/// IP addresses and device ids: their owner's alone. Files made from now on are (umask 077:
/// SQLite gives a new database's `-wal` and `-shm` files the database's mode), and SQLite files
/// already in `dirs` (an older version's, or copied in) are made so before they are opened:
/// SQLite gives a new `-wal` the mode of its database, whatever the umask.
fn keep_private(dirs: &[PathBuf]) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let sqlite = [".db", ".sqlite", "-wal", "-shm", "-journal"]
                    .iter()
                    .any(|end| name.ends_with(end));
                let open = entry
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0);
                if sqlite && open {
                    let path = entry.path();
                    if let Err(e) =
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    {
                        tracing::warn!(path = %path.display(), error = %e, "could not make the file readable by its owner alone");
                    }
                }
            }
        }
    }
}

/// The split of the engines whose state files a data directory holds (`antifraud.db`: one,
/// `antifraud-shard-i-of-N.db`: N), the newest if several; for directories made before
/// `rules-shards` was recorded.
fn split_of_state_files(data_dir: &Path) -> Option<u32> {
    std::fs::read_dir(data_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = if name == "antifraud.db" {
                1
            } else {
                name.strip_prefix("antifraud-shard-")?
                    .strip_suffix(".db")?
                    .rsplit("-of-")
                    .next()?
                    .parse()
                    .ok()?
            };
            Some((e.metadata().and_then(|m| m.modified()).ok(), n))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, n)| n)
}

/// Records the bus of a data directory (see [`check_data_dir_bus`]).
fn record_data_dir_bus(data_dir: &Path, identity: &str) -> Result<()> {
    write_durably(
        &data_dir.join("bus"),
        format!("{identity}\n").as_bytes(),
        false,
    )
}

/// The runtime the processors of `pitboss up` run on, its threads (workers and blocking pool)
/// at CPU priority `nice`. Never dropped: a runtime cannot be dropped inside another, and it
/// lives as long as the process.
fn storage_runtime(nice: i32) -> Result<tokio::runtime::Handle> {
    // Relative to the caller's priority (threads inherit their creator's: a blocking thread
    // started by a worker already has the lowered one).
    let target = thread_priority().map(|now| now.saturating_add(nice).min(19));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("pitboss-storage")
        .on_thread_start(move || {
            if let Some(target) = target.filter(|_| nice > 0) {
                set_thread_priority(target);
            }
        })
        .enable_all()
        .build()
        .context("starting the storage runtime")?;
    let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
    Ok(runtime.handle().clone())
}

/// The calling thread's nice value (Linux; None elsewhere or when it cannot be read).
fn thread_priority() -> Option<i32> {
    #[cfg(target_os = "linux")]
    return rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok();
    #[cfg(not(target_os = "linux"))]
    None
}

/// Sets the calling thread's nice value (Linux: per thread). Elsewhere, or when refused, the
/// thread keeps its priority.
fn set_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::debug!(error = %e, nice, "thread priority not set");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Where `pitboss up` stores what it reads.
enum UpStore {
    Sqlite(std::sync::Arc<pitboss_processor::SqliteSink>),
    ClickHouse(std::sync::Arc<pitboss_processor::ClickHouseSink>),
}

/// The tenants of `pitboss up --demo`; the first is `pitboss up`'s own.
const DEMO_TENANTS: [&str; 2] = ["demo", "northbet"];

#[derive(Debug, Args)]
struct IngestArgs {
    /// Ingest config (TOML): tenants, limits, listen address.
    #[arg(long, env = "PITBOSS_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    bus: BusArgs,
    /// Create the topic with this many partitions if it does not exist (development; in
    /// production topics come from the deployment).
    #[arg(long)]
    ensure_topic_partitions: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BusKind {
    Embedded,
    Kafka,
    Kinesis,
}

fn load_config(path: &Path) -> Result<IngestConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: IngestConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    config.validate()?;
    Ok(config)
}

/// A built-in tenant's key (`<tenant>-api-key`): generated once, kept in a file only its owner
/// can read, never logged.
fn demo_key(data_dir: &Path, tenant: &str) -> Result<(String, PathBuf)> {
    let path = data_dir.join(format!("{tenant}-api-key"));
    match std::fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => {
            return Ok((existing.trim().to_owned(), path));
        }
        // Empty: made by a build that did not sync it, and the power went before the OS wrote
        // it back. The key was never kept: a new one is made.
        Ok(_) => {
            tracing::warn!(file = %path.display(), "the API key file is empty: a new key is made")
        }
        Err(_) => {}
    }
    let key = format!("pb_{tenant}_{}", hex::encode(rand::random::<[u8; 24]>()));
    write_durably(&path, key.as_bytes(), true)?;
    Ok((key, path))
}

/// Writes `content` to `path` so that a crash or a power cut leaves either no file (or the one
/// before) or all of `content`, never an empty or partial file: a temporary file beside it,
/// fsynced, renamed over `path`, and the directory fsynced. `private`: readable by its owner
/// only (keys, secrets).
fn write_durably(path: &Path, content: &[u8], private: bool) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    // Left by a crash: made again, so that it gets this call's mode.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// `println!` that does not panic when stdout is closed (`pitboss up | head -1`): the banner
/// is for whoever reads it; a server keeps serving when nobody does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Refuses a topic the bus does not have (`what`: the flag or setting that names it); other
/// errors (a broker not answering yet) are left to the role's own retries.
pub(crate) async fn require_topic(bus: &dyn Bus, topic: &str, what: &str) -> Result<()> {
    if let Err(pitboss_bus::BusError::UnknownTopic(_)) = bus.partition_count(topic).await {
        bail!(
            "{what} {topic:?}: no such topic on the bus; make the topics with `pitboss topics` (docs/deploy.md) or name one that exists"
        );
    }
    Ok(())
}

/// The lock of `pitboss up` on its data directory (`up.lock`), held while the file is open.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "{} is in use by another `pitboss up`: one instance per data directory (give this one another --data-dir)",
            data_dir.display()
        );
    }
    Ok(file)
}

async fn up(
    UpArgs {
        data_dir,
        listen,
        admin_listen,
        config,
        drain_timeout_secs,
        rules,
        no_rules,
        snapshot_interval_ms,
        save_slice_units,
        save_slice_ms,
        gateway_listen,
        gateway: gateway_tuning,
        demo,
        seed,
        demo_rate,
        demo_players,
        demo_risky_share,
        kafka_bootstrap,
        kafka_options,
        topic_prefix,
        clickhouse_url,
        clickhouse_database,
        no_state_topic,
        rules_shards,
        rules_start_at,
        storage_nice,
    }: UpArgs,
) -> Result<()> {
    if !topic_prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!(
            "--topic-prefix may hold only letters, digits, '.', '_' and '-' (Kafka's topic names)"
        );
    }
    let named = |name: &str| format!("{topic_prefix}{name}");
    let demo = demo.then(|| demo::DemoConfig {
        seed,
        tenants: DEMO_TENANTS.iter().map(|t| (*t).to_owned()).collect(),
        players_per_tenant: demo_players,
        events_per_second: demo_rate,
        risky_share: demo_risky_share,
    });
    if let Some(d) = &demo {
        d.validate().map_err(anyhow::Error::msg)?;
    }
    // Readable by its owner alone when `up` makes it: the log and the store hold players' IP
    // addresses and device ids, the secrets sit beside them. (An existing directory keeps its
    // mode: the operator chose it.)
    // A port another process holds fails the start before anything is made or opened: before
    // the directory when `up` would make it, else once the directory is locked (a second `up`
    // on it is told so, not that its ports are taken).
    let listeners = [
        ("--listen", listen),
        ("--admin-listen", admin_listen),
        ("--gateway-listen", gateway_listen),
    ];
    let existed = data_dir.exists();
    if !existed {
        probe_listeners(&listeners)?;
    }
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&data_dir)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                dir = %data_dir.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "the data directory is open to other users: its log and store hold players' IP addresses and device ids (chmod 700 it)"
            );
        }
    }
    // One `up` per data directory, whatever its bus and store (on Kafka nothing else in it is
    // locked: a second one joined the first's consumer groups and wrote the same store). Held
    // until the process exits.
    keep_private(&[data_dir.clone(), data_dir.join("log")]);
    let _one_up = lock_data_dir(&data_dir)?;
    if existed {
        probe_listeners(&listeners)?;
    }
    let mut ingest = match &config {
        Some(path) => load_config(path)?,
        None => IngestConfig::default(),
    };
    ingest.listen = listen;
    ingest.admin_listen = admin_listen;
    // One drain bound for the whole process: requests in flight as well as the processors.
    if let Some(secs) = drain_timeout_secs {
        ingest.drain_timeout_secs = secs;
    }
    let drain_timeout_secs = ingest.drain_timeout_secs;
    let mut key_note = None;
    let mut demo_keys = Vec::new();
    if ingest.tenants.is_empty() {
        // `demo`, and with --demo the simulator's second tenant.
        let tenants = if demo.is_some() {
            &DEMO_TENANTS[..]
        } else {
            &DEMO_TENANTS[..1]
        };
        for tenant in tenants {
            let (key, path) = demo_key(&data_dir, tenant)?;
            ingest.tenants.push(TenantConfig {
                id: (*tenant).into(),
                api_key_sha256: vec![pitboss_ingest::auth::hash_key(&key)],
                events_per_second: None,
            });
            key_note.get_or_insert(path);
            demo_keys.push(((*tenant).to_owned(), key));
        }
    }
    ingest.topic = named(&ingest.topic);
    ingest.overflow_topic = ingest.overflow_topic.as_deref().map(named);
    // The bus this data directory's positions and engine state belong to.
    let bus_identity = match &kafka_bootstrap {
        None => "embedded".to_owned(),
        Some(_) => format!("kafka, topic prefix {topic_prefix:?}"),
    };
    let record_bus = check_data_dir_bus(&data_dir, &bus_identity)?;
    // Before anything is served or created: a wrong address fails here, in one line.
    let store_path = data_dir.join("pitboss.db");
    let (store, stats, store_note): (
        UpStore,
        std::sync::Arc<dyn pitboss_gateway::StatsSource>,
        String,
    ) = match &clickhouse_url {
        None => (
            UpStore::Sqlite(std::sync::Arc::new({
                let sink = pitboss_processor::SqliteSink::open(&store_path)
                    .with_context(|| format!("opening {}", store_path.display()))?;
                // Its owner's alone: made under `keep_private`'s umask, or made so before.
                sink
            })),
            std::sync::Arc::new(gateway::Cached::new(gateway::SqliteStats {
                path: store_path.clone(),
            })),
            format!("SQLite in {}", store_path.display()),
        ),
        Some(url) => {
            let args = ClickHouseArgs {
                clickhouse: url.clone(),
                database: clickhouse_database.clone(),
                cluster: None,
                timeout_secs: pitboss_processor::sink::DEFAULT_TIMEOUT.as_secs(),
            };
            let at = pitboss_processor::sink::redacted_url(url);
            let client =
                tokio::time::timeout(std::time::Duration::from_secs(30), clickhouse_client(&args))
                    .await
                    .map_err(|_| anyhow::anyhow!("ClickHouse at {at} did not answer within 30 s"))?
                    .with_context(|| format!("ClickHouse at {at}"))?;
            (
                UpStore::ClickHouse(std::sync::Arc::new(pitboss_processor::ClickHouseSink::new(
                    client.clone(),
                ))),
                std::sync::Arc::new(gateway::Cached::new(gateway::ClickHouseStats::new(client))),
                format!("ClickHouse at {at}, database {clickhouse_database}"),
            )
        }
    };
    let (bus, bus_note): (std::sync::Arc<dyn Bus>, String) = match &kafka_bootstrap {
        None => (
            std::sync::Arc::new(EmbeddedBus::open(
                data_dir.join("log"),
                EmbeddedConfig::default(),
            )?),
            format!("embedded log in {}", data_dir.join("log").display()),
        ),
        Some(bootstrap) => {
            let spec = BusSpec::Kafka {
                bootstrap: bootstrap.clone(),
                options: pitboss_bus::parse_options(kafka_options.iter().map(String::as_str))?,
            };
            let bus = spec.open().await?;
            // Kafka answers lookups of a topic that does not exist too; a broker that does not
            // answer at all fails this within the bus's request timeout (10 s).
            match bus.partition_count(&ingest.topic).await {
                Ok(_) | Err(pitboss_bus::BusError::UnknownTopic(_)) => {}
                Err(e) => bail!("Kafka at {bootstrap} does not answer: {e}"),
            }
            (bus, format!("Kafka at {bootstrap}"))
        }
    };
    ensure_topic(&*bus, &ingest.topic, 8).await?;
    ensure_topic(&*bus, &ingest.overflow_topic(), 8).await?;
    if record_bus {
        record_data_dir_bus(&data_dir, &bus_identity)?;
    }
    check_copartitioned(&*bus, &ingest.topic, &ingest.overflow_topic()).await?;
    let processor_group = named("pitboss-processor");
    // Events (and their overflow) from ingest; the live path's topics, which the rules engine
    // and the gateway publish to, each stored in its table.
    let mut configs = vec![
        (
            processor_config(&ingest.topic, &processor_group),
            Table::Events,
        ),
        (
            processor_config(&ingest.overflow_topic(), &processor_group),
            Table::Events,
        ),
    ];
    for topic in LIVE_TOPICS {
        let name = named(topic);
        ensure_topic(&*bus, &name, 8).await?;
        configs.push((
            processor_config(&name, &processor_group),
            Table::for_topic(topic),
        ));
    }
    for (c, _) in &configs {
        ensure_topic(&*bus, &c.dead_letter_topic, 1).await?;
    }
    // Operators change the lists and snoozes of the rules directory through the gateway (the
    // built-in packs, without one, are not changed).
    let rules_dir: Option<std::sync::Arc<dyn pitboss_gateway::RulesAdmin>> =
        rules.clone().map(|rules| {
            std::sync::Arc::new(rules_dir::RulesDir { rules })
                as std::sync::Arc<dyn pitboss_gateway::RulesAdmin>
        });
    let antifraud = (!no_rules).then(|| {
        let mut c = antifraud_config(&ingest.topic, &ingest.overflow_topic(), rules);
        c.group = named(&c.group);
        c.alerts_topic = named(&c.alerts_topic);
        c.pushes_topic = named(&c.pushes_topic);
        c.dead_letter_topic = named(&c.dead_letter_topic);
        c.state_path = data_dir.join("antifraud.db");
        // On Kafka the state is mirrored to the bus too: another `pitboss up` that takes the
        // group over starts from it.
        c.state_topic =
            (kafka_bootstrap.is_some() && !no_state_topic).then(|| named("antifraud_state"));
        c.snapshot_interval = std::time::Duration::from_millis(snapshot_interval_ms.max(1));
        c.save_slice_units = save_slice_units;
        c.save_slice_time = std::time::Duration::from_millis(save_slice_ms);
        c.forwards_topic = named(&c.forwards_topic);
        c
    });
    if let Some(c) = &antifraud {
        // Refuse bad rules before serving anything.
        c.rules.load()?;
        ensure_topic(&*bus, &c.dead_letter_topic, 1).await?;
    }
    let ingest_tenants: Vec<String> = ingest.tenants.iter().map(|t| t.id.clone()).collect();
    let state = pitboss_ingest::state(ingest, bus.publisher())?;
    let stop = Shutdown::on_signals();
    recall_dedup(bus.clone(), &state).await;
    // Storing yields the cores to the live path: its batches are measured in seconds of
    // freshness, a notification in milliseconds.
    let storage = storage_runtime(storage_nice)?;
    let processors: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> =
        match store {
            UpStore::Sqlite(s) => Box::pin(run_processors(
                bus.clone(),
                s,
                configs,
                stop.clone(),
                storage,
            )),
            UpStore::ClickHouse(s) => Box::pin(run_processors(
                bus.clone(),
                s,
                configs,
                stop.clone(),
                storage,
            )),
        };
    // On Kafka the engine has a producer of its own, without linger (`engine_spec`).
    let engine_bus = match &kafka_bootstrap {
        Some(bootstrap) if antifraud.is_some() => {
            engine_spec(BusSpec::Kafka {
                bootstrap: bootstrap.clone(),
                options: pitboss_bus::parse_options(kafka_options.iter().map(String::as_str))?,
            })
            .open()
            .await?
        }
        _ => bus.clone(),
    };
    // One engine, or `--rules-shards` of them each owning part of the keys.
    let mut antifraud = antifraud;
    if let Some(c) = &mut antifraud {
        let (start, record) = plan_rules_start(&data_dir, rules_shards, rules_start_at)?;
        if let Some(start) = start {
            c.consumer.start = start;
        }
        write_durably(&data_dir.join("rules-shards"), record.as_bytes(), false)?;
    }
    let engines = match antifraud {
        Some(c) if rules_shards > 1 => (0..rules_shards)
            .map(|i| {
                let mut c = c.clone();
                c.shard =
                    pitboss_antifraud::Shard::new(i, rules_shards).map_err(anyhow::Error::msg)?;
                Ok(Some(c))
            })
            .collect::<Result<Vec<_>>>()?,
        c => vec![c],
    };
    let engine = futures::future::try_join_all(
        engines
            .into_iter()
            .map(|c| run_antifraud(engine_bus.clone(), c, stop.clone())),
    );
    let processors = drain_processors(
        async { tokio::try_join!(processors, engine).map(|_| ()) },
        stop.clone(),
        std::time::Duration::from_secs(drain_timeout_secs),
    );
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let admin = bind(admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    let gateway_listener = bind(gateway_listen).await?;
    let gateway_addr = gateway_listener.local_addr()?;
    gateway::up_secret(&data_dir)?;
    let (gateway_ready, gateway) = gateway::serve_in_up(
        bus.clone(),
        &data_dir,
        gateway_listener,
        &gateway_tuning,
        &topic_prefix,
        gateway::Operators {
            stats,
            rules: rules_dir,
        },
        stop.clone(),
    )?;
    // `/readyz` (public and admin) waits for the gateway's history too, and says `draining`
    // through the drain.
    let mut state = state;
    state.readiness = state
        .readiness
        .draining_on(stop.clone())
        .with_part("gateway", gateway_ready);
    // A ready-to-use console link only with the demo (its token can also publish pushes):
    // otherwise the console asks for a token.
    let console_token = match &demo {
        Some(_) => Some(gateway::console_token(&data_dir, DEMO_TENANTS[0])?),
        None => None,
    };
    let demo_banner = demo.as_ref().map(|d| {
        format!(
            "  demo:    {} players of {} at {} events/s, {:.0} % of them from injected fraud and risky play (seed {})",
            d.players_per_tenant * d.tenants.len(),
            d.tenants.join(" and "),
            d.events_per_second,
            d.risky_share * 100.0,
            d.seed
        )
    });
    let simulator = {
        let stop = stop.clone();
        on_worker("demo simulator", async move {
            match demo {
                Some(d) => {
                    let sim = demo::Simulator::new(d, pitboss_model::Timestamp::now().as_millis());
                    demo::drive(sim, format!("http://{addr}/v1/events"), demo_keys, stop).await
                }
                None => Ok(()),
            }
        })
    };
    say!("Pitboss is up: http://{addr}");
    say!("  POST http://{addr}/v1/events   (JSON array or NDJSON of events; see docs/events.md)");
    say!("  GET  http://{addr}/healthz | /readyz    admin: http://{admin_addr}/metrics");
    if let Some(path) = key_note {
        say!("  API key of tenant \"demo\": in {}", path.display());
        say!(
            "  try: curl -s -H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' \\\n       -d '[{{\"tenant_id\":\"demo\",\"player_id\":\"p1\",\"type\":\"deposit\",\"occurred_at\":\"'$(date -u +%FT%TZ)'\",\"payload\":{{\"transaction_id\":\"t1\",\"amount\":{{\"amount_minor\":5000,\"currency\":\"EUR\"}}}}}}]' \\\n       http://{addr}/v1/events",
            path.display()
        );
    }
    say!("  bus:     {bus_note}");
    say!("  store:   {store_note}");
    if clickhouse_url.is_none() {
        // Runnable as printed: `pitboss sql` reads `.pitboss` unless told another directory.
        let dir = if data_dir == Path::new(".pitboss") {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        };
        say!(
            "  history: pitboss sql{dir} \"SELECT * FROM bets_per_minute ORDER BY minute DESC LIMIT 10\""
        );
        say!(
            "  alerts:  pitboss sql{dir} \"SELECT rule_id, severity, player_id, reason FROM alerts ORDER BY detected_at DESC LIMIT 10\""
        );
    } else {
        say!(
            "  alerts:  SELECT rule_id, severity, player_id, reason FROM {clickhouse_database}.alerts ORDER BY detected_at DESC LIMIT 10   (in ClickHouse)"
        );
    }
    // A token for the first tenant the server knows (`pitboss token` makes `demo`'s unless
    // told another).
    let token_tenant = match ingest_tenants.first() {
        Some(t) if t != "demo" => format!(" --tenant {t}"),
        _ => String::new(),
    };
    say!(
        "  live:    ws://{gateway_addr}/v1/ws?token=$(pitboss token{token_tenant} --role operator --subject ops --data-dir {})   (docs/gateway.md)",
        data_dir.display()
    );
    match console_token {
        // The token rides in the fragment, which browsers never send to a server.
        Some(token) => say!("  console: http://{gateway_addr}/console#token={token}"),
        None => say!(
            "  console: http://{gateway_addr}/console   (sign in with: pitboss token{token_tenant} --role operator --subject ops --data-dir {})",
            data_dir.display()
        ),
    }
    if let Some(line) = demo_banner {
        say!("{line}");
    }
    // The processors stop on the same signal, after storing what they hold; one that stops
    // on its own stops the server too (run_processors). The admin listener answers through the
    // drain (`/readyz` 503 `draining`) and stops when everything else has.
    let work = async {
        tokio::try_join!(
            async {
                pitboss_runtime::http::raise_fd_limit();
                pitboss_ingest::serve(state.clone(), listener, stop.clone())
                    .await
                    .context("public listener")
            },
            processors,
            gateway,
            simulator
        )
        .map(|_| ())
    };
    let admin_state = state.clone();
    with_admin(
        work,
        |done| pitboss_ingest::serve_admin(admin_state, admin, done),
        stop.clone(),
    )
    .await
}

/// Binds each fixed address (port 0 is any free port: nothing to check) and listens on it,
/// holding them all until the last is bound, so a port in use — by another process or by an
/// earlier listener of the same list (`--admin-listen` given the address of `--listen`) —
/// fails the start with the same line `bind` gives, before anything is opened.
fn probe_listeners(addrs: &[(&str, std::net::SocketAddr)]) -> Result<()> {
    let mut held = Vec::with_capacity(addrs.len());
    for (i, (flag, addr)) in addrs.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, _)) = addrs[..i].iter().find(|(_, a)| a == addr) {
            bail!("binding {addr}: given to both {other} and {flag}");
        }
        let probe = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .with_context(|| format!("binding {addr}"))?;
        // As tokio's listener does: a port whose last connections are in TIME_WAIT is free.
        probe
            .set_reuseaddr(true)
            .with_context(|| format!("binding {addr}"))?;
        probe
            .bind(*addr)
            .with_context(|| format!("binding {addr}"))?;
        // Listening: a later probe of the same port (0.0.0.0 against 127.0.0.1, say) is
        // refused as the real listener would be.
        held.push(
            probe
                .listen(1)
                .with_context(|| format!("binding {addr} ({flag})"))?,
        );
    }
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// The public API until `stop`, and the admin listener until the public one has drained
/// (its `/readyz` answering 503 `draining` meanwhile).
async fn serve_both(
    state: pitboss_ingest::http::AppState,
    public: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    stop: Shutdown,
) -> Result<()> {
    pitboss_runtime::http::raise_fd_limit();
    let mut state = state;
    state.readiness = state.readiness.draining_on(stop.clone());
    let work = async {
        pitboss_ingest::serve(state.clone(), public, stop.clone())
            .await
            .context("public listener")
    };
    let admin_state = state.clone();
    with_admin(
        work,
        |done| pitboss_ingest::serve_admin(admin_state, admin, done),
        stop.clone(),
    )
    .await
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let IngestArgs {
        config,
        bus,
        ensure_topic_partitions,
    } = args;
    let config = load_config(&config)?;
    let spec = bus.spec()?;
    // What the bus is (option values never shown), not the open bus's internals.
    let bus_kind = format!("{spec:?}");
    let bus = spec.open().await?;
    if let Some(n) = ensure_topic_partitions {
        bus.create_topic(&config.topic, n).await?;
        bus.create_topic(&config.overflow_topic(), n).await?;
    }
    check_copartitioned(&*bus, &config.topic, &config.overflow_topic()).await?;
    // Events to a topic that is not there were answered 503 after the publish timeout, for
    // ever; refused now, before the listener opens.
    require_topic(&*bus, &config.topic, "the config's `topic`").await?;
    require_topic(&*bus, &config.overflow_topic(), "its overflow topic").await?;
    let publisher = bus.publisher();
    let (listen, admin_listen) = (config.listen, config.admin_listen);
    let state = pitboss_ingest::state(config, publisher)?;
    let stop = Shutdown::on_signals();
    // Before the listeners: nothing connects to a port that does not answer yet.
    recall_dedup(bus.clone(), &state).await;
    let listener = bind(listen).await?;
    let admin = bind(admin_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, bus = %bus_kind, "ingest listening");
    serve_both(state, listener, admin, stop).await
}

/// Reads the dedup window back from the bus, so a client retrying after a restart, or through
/// another instance, is answered `duplicate` (docs/api.md, "Duplicates"). Serving waits up to
/// 10 s for it; a longer log is read on while serving.
async fn recall_dedup(bus: std::sync::Arc<dyn Bus>, state: &pitboss_ingest::http::AppState) {
    let window = std::time::Duration::from_secs(state.config.dedup_window_secs);
    if window.is_zero() {
        return;
    }
    let topics = vec![state.config.topic.clone(), state.config.overflow_topic()];
    let dedup = state.dedup.clone();
    let task = tokio::spawn(async move {
        pitboss_ingest::recall::recall(&*bus, &topics, &dedup, window).await
    });
    match tokio::time::timeout(std::time::Duration::from_secs(10), task).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "dedup window not read back: retries of ids accepted before the start are answered accepted (and stored once)");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "dedup window read-back failed"),
        Err(_) => tracing::warn!(
            "dedup window still being read back from the bus after 10 s; serving meanwhile"
        ),
    }
}

/// The hot-key overflow topic must have the events topic's partition count, so a player's
/// events sit at the same partition index on both and one group member reads them all
/// (docs/bus.md, "Hot keys"). Topics not created yet are not checked.
async fn check_copartitioned(bus: &dyn Bus, topic: &str, overflow: &str) -> Result<()> {
    check_companion(
        bus,
        topic,
        overflow,
        "the overflow topic must be co-partitioned with the events topic (docs/bus.md, \"Hot keys\")",
    )
    .await
}

/// A companion topic (`why` it must be) has `topic`'s partition count; topics not created yet
/// are not checked.
async fn check_companion(bus: &dyn Bus, topic: &str, companion: &str, why: &str) -> Result<()> {
    match (
        bus.partition_count(topic).await,
        bus.partition_count(companion).await,
    ) {
        (Ok(a), Ok(b)) if a != b => anyhow::bail!(
            "topic {companion:?} has {b} partitions and {topic:?} has {a}: {why}; recreate it with {a}"
        ),
        (Err(pitboss_bus::BusError::UnknownTopic(_)), _)
        | (_, Err(pitboss_bus::BusError::UnknownTopic(_))) => {
            tracing::warn!(
                topic,
                companion,
                "topics not created yet: co-partitioning not checked"
            );
            Ok(())
        }
        // Not answering yet (Kinesis unreachable a moment at start): the roles wait it out, and
        // a group member checks its companions' partitions itself when it joins.
        (Err(e), _) | (_, Err(e)) if e.is_retryable() => {
            tracing::warn!(topic, companion, error = %e, "the bus does not answer yet: co-partitioning not checked here");
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// `pitboss sql`: prints the answer as TSV (header row; NULL as \N; tab, newline and
/// backslash escaped) or as one JSON object per row.
fn sql(args: &SqlArgs) -> Result<()> {
    use std::io::Write;
    let path = args.data_dir.join("pitboss.db");
    if !path.exists() {
        bail!(
            "no embedded store at {}: `pitboss sql` reads what `pitboss up` stores in SQLite \
             (start it with this --data-dir first); an `up` given --clickhouse-url stores in \
             ClickHouse instead: query it there (docs/processor.md)",
            path.display()
        );
    }
    let answer = pitboss_processor::sqlite::query(&path, &args.sql, args.max_rows)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        SqlFormat::Tsv => {
            writeln!(out, "{}", answer.columns.join("\t"))?;
            for row in &answer.rows {
                let cells: Vec<String> = row.iter().map(tsv_cell).collect();
                writeln!(out, "{}", cells.join("\t"))?;
            }
        }
        SqlFormat::Json => {
            let keys = json_keys(&answer.columns);
            for row in &answer.rows {
                writeln!(out, "{}", json_row(&keys, row))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The JSON keys of an answer's columns: each column's name, and for a name an earlier column
/// has (`SELECT p.bus_topic, d.bus_topic`, `p.*, d.*`) the name with `:2`, `:3`… (a JSON
/// object keeps one value per key: the second column's value replaced the first's).
fn json_keys(columns: &[String]) -> Vec<String> {
    use std::collections::HashSet;
    // Every column's own name is reserved first, then each repeat takes the next free `:k`.
    let mut used: HashSet<String> = columns.iter().cloned().collect();
    let mut first: HashSet<&str> = HashSet::new();
    columns
        .iter()
        .map(|c| {
            if first.insert(c.as_str()) {
                return c.clone();
            }
            let mut k = 2;
            loop {
                let key = format!("{c}:{k}");
                if used.insert(key.clone()) {
                    return key;
                }
                k += 1;
            }
        })
        .collect()
}

/// One answer row as a JSON object, its keys in the columns' order.
fn json_row(keys: &[String], row: &[serde_json::Value]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in keys.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(k.as_str()).to_string());
        out.push(':');
        out.push_str(&v.to_string());
    }
    out.push('}');
    out
}

/// A count that must be at least 1 (`--max-rows`, `--page-rows`: 0 answered nothing, or was
/// taken as 1 without a word).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn tsv_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "\\N".into(),
        serde_json::Value::String(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n"),
        other => other.to_string(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pitboss_runtime::telemetry::init_tracing();
    // A refusal is one line — the error and its causes — whatever RUST_BACKTRACE says (the
    // default report would add a stack trace a user has no use for).
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Up(args) => up(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::Loadgen(args) => loadgen::run(args).await,
        Command::Migrate(args) if args.print_sql => {
            print!(
                "{}",
                pitboss_processor::schema::script(&args.clickhouse.layout()?)
            );
            Ok(())
        }
        Command::Migrate(args) => clickhouse_client(&args.clickhouse).await.map(|_| ()),
        Command::Process(args) => process(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Sql(args) => sql(&args),
        Command::Antifraud(args) => antifraud(args).await,
        Command::Gateway(args) => gateway::gateway(*args).await,
        Command::Token(args) => gateway::token(args),
        Command::Rules(args) => backtest::rules(args).await,
        Command::HashKey { key } => {
            // `-`: the key from standard input (its first line), out of `ps` and shell history.
            let key = if key == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the key from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                key
            };
            if key.len() < 16 {
                bail!("use a key of at least 16 random characters");
            }
            println!("{}", pitboss_ingest::auth::hash_key(&key));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sql_json_keeps_every_column_in_order() {
        let cols: Vec<String> = [
            "z",
            "bus_topic",
            "a",
            "bus_topic",
            "bus_topic:2",
            "bus_topic",
        ]
        .map(String::from)
        .to_vec();
        let keys = super::json_keys(&cols);
        assert_eq!(
            keys,
            [
                "z",
                "bus_topic",
                "a",
                "bus_topic:3",
                "bus_topic:2",
                "bus_topic:4"
            ]
        );
        let row = [
            1.into(),
            "pushes".into(),
            serde_json::Value::Null,
            "deliveries".into(),
            2.into(),
            "x\"y".into(),
        ];
        let line = super::json_row(&keys, &row);
        assert_eq!(
            line,
            r#"{"z":1,"bus_topic":"pushes","a":null,"bus_topic:3":"deliveries","bus_topic:2":2,"bus_topic:4":"x\"y"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 6);
        assert!(super::at_least_one("0").is_err());
        assert_eq!(super::at_least_one("3"), Ok(3));
    }

    /// An empty `rules-shards` (an older build's record lost to a power cut) counts as
    /// missing: the split is worked out from the engines' state files, and a changed one is
    /// still refused (it was taken for "no record", and the new split allowed).
    #[test]
    fn an_empty_rules_shards_record_is_worked_out_from_the_state_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("antifraud-shard-0-of-3.db"), "").unwrap();
        std::fs::write(dir.path().join("rules-shards"), "").unwrap();
        assert!(plan_rules_start(dir.path(), 1, None).is_err());
        let (_, record) = plan_rules_start(dir.path(), 3, None).unwrap();
        assert_eq!(record, "3\n");
    }

    /// A data directory stays with the bus it was first used with: another is refused with
    /// a message naming both; one made before the record existed counts as the embedded log's.
    #[test]
    fn a_data_directory_is_refused_on_another_bus() {
        let dir = tempfile::tempdir().unwrap();
        let kafka = "kafka, topic prefix \"a_\"";
        assert!(check_data_dir_bus(dir.path(), kafka).unwrap());
        assert!(
            check_data_dir_bus(dir.path(), "embedded").unwrap(),
            "nothing recorded yet"
        );
        record_data_dir_bus(dir.path(), kafka).unwrap();
        assert!(!check_data_dir_bus(dir.path(), kafka).unwrap());
        let refused = check_data_dir_bus(dir.path(), "embedded")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("another bus (kafka, topic prefix \"a_\")"),
            "{refused}"
        );
        assert!(check_data_dir_bus(dir.path(), "kafka, topic prefix \"b_\"").is_err());

        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("log")).unwrap();
        assert!(check_data_dir_bus(old.path(), kafka).is_err());
        assert!(!check_data_dir_bus(old.path(), "embedded").unwrap());

        // Empty (an older build's record lost to a power cut): worked out as if missing, and
        // to be written again when it is the embedded log's.
        std::fs::write(old.path().join("bus"), "").unwrap();
        assert!(check_data_dir_bus(old.path(), kafka).is_err());
        assert!(check_data_dir_bus(old.path(), "embedded").unwrap());
        let fresh = tempfile::tempdir().unwrap();
        std::fs::write(fresh.path().join("bus"), "").unwrap();
        assert!(check_data_dir_bus(fresh.path(), kafka).unwrap());
    }

    /// A topic that exists is kept as it is, whatever its partition count.
    #[tokio::test]
    async fn existing_topics_keep_their_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
        bus.create_topic("events", 3).await.unwrap();
        ensure_topic(&bus, "events", 8).await.unwrap();
        ensure_topic(&bus, "alerts", 8).await.unwrap();
        assert_eq!(bus.partition_count("events").await.unwrap(), 3);
        assert_eq!(bus.partition_count("alerts").await.unwrap(), 8);
    }

    /// The processors of `pitboss up` run at the storage runtime's priority: its workers and
    /// the blocking work they spawn (the store's writes, the log's reads), not the caller.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_storage_runtime_runs_tasks_and_their_blocking_work_at_its_lower_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let here = nice();
        assert!(here <= 12, "run the tests at a nice value of 12 or less");
        let storage = storage_runtime(7).unwrap();
        let (worker, blocking) = storage
            .block_on(storage.spawn(async move {
                let blocking = tokio::task::spawn_blocking(nice).await.unwrap();
                (nice(), blocking)
            }))
            .unwrap();
        assert_eq!((worker, blocking), (here + 7, here + 7));
        assert_eq!(nice(), here);
    }

    /// What `main` merely awaits runs on the thread that runs `main`; `on_worker` puts it on
    /// a worker, so the parts of `pitboss up` use every core.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_worker_runs_off_the_callers_thread_and_aborts_when_dropped() {
        let here = std::thread::current().id();
        let there = on_worker("test", async { Ok(std::thread::current().id()) })
            .await
            .unwrap();
        assert_ne!(here, there);

        let (started_tx, started) = tokio::sync::oneshot::channel();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        let task = on_worker("test", async move {
            let _guard = guard;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        });
        tokio::select! {
            _ = task => unreachable!("the task never ends"),
            _ = started => {}
        }
        // The select dropped the waiting future: the task is aborted, its state dropped.
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));

        let failed = on_worker("test", async { Err::<(), _>(anyhow::anyhow!("no")) }).await;
        assert_eq!(failed.unwrap_err().to_string(), "no");
    }

    fn kinesis_spec() -> Result<BusSpec> {
        let kafka = KafkaArgs {
            kafka_bootstrap: "127.0.0.1:9092".into(),
            kafka_options: Vec::new(),
        };
        bus_spec(
            BusKind::Kinesis,
            &kafka,
            ("eu-west-1".into(), None, "pitboss-leases".into()),
            Path::new(".pitboss"),
        )
    }

    #[cfg(feature = "aws")]
    #[test]
    fn kinesis_is_the_kinesis_bus() {
        assert_eq!(
            kinesis_spec().unwrap(),
            BusSpec::Kinesis {
                region: "eu-west-1".into(),
                endpoint: None,
                lease_table: Some("pitboss-leases".into()),
            }
        );
        // `--kinesis-lease-table` (PITBOSS_KINESIS_LEASE_TABLE, what terraform's
        // `lease_table_name` passes): the table the groups' leases are kept in.
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "pitboss",
            "process",
            "--bus",
            "kinesis",
            "--kinesis-lease-table",
            "staging-leases",
            "--clickhouse-url",
            "http://127.0.0.1:8123",
        ])
        .unwrap();
        let Command::Process(args) = cli.command else {
            panic!("process")
        };
        assert!(matches!(
            args.bus.spec().unwrap(),
            BusSpec::Kinesis { lease_table: Some(t), .. } if t == "staging-leases"
        ));
    }

    /// Without the `aws` feature `--bus kinesis` is still an option, and says how to get it.
    #[cfg(not(feature = "aws"))]
    #[test]
    fn kinesis_without_aws_says_how_to_build() {
        let e = kinesis_spec().unwrap_err().to_string();
        assert!(e.contains("built without Kinesis"), "{e}");
        assert!(e.contains("--features aws"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
