//! The `pitboss` command.
//!
//! - `pitboss up`: Pitboss in one process over the embedded durable log — no servers needed.
//! - `pitboss ingest`: the ingest function as a standalone server over Kafka, Kinesis or the
//!   embedded log.
//! - `pitboss hash-key KEY`: the `api_key_sha256` entry for an API key.
//! - `pitboss loadgen`: sustained HTTP load with events/s and latency percentiles.

mod loadgen;

/// mimalloc: the ingest path allocates per event; glibc malloc took a fifth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, BusSpec};
use pitboss_ingest::{IngestConfig, TenantConfig};

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
    /// Run Pitboss in one process over the embedded log (no servers needed).
    Up(UpArgs),
    /// Run the ingest function as a standalone server.
    Ingest(IngestArgs),
    /// Print the api_key_sha256 config entry for an API key.
    HashKey { key: String },
    /// Send sustained load to an ingest API and report events/s and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Bring the ClickHouse schema up to date (versioned, idempotent migrations).
    Migrate(ClickHouseArgs),
    /// Run the processor: events from Kafka into ClickHouse, effectively once.
    Process(ProcessArgs),
}

#[derive(Debug, Args)]
struct ClickHouseArgs {
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "PITBOSS_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse: String,
    /// Database of the Pitboss tables (created if missing).
    #[arg(long, env = "PITBOSS_CLICKHOUSE_DATABASE", default_value = "pitboss")]
    database: String,
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
struct ProcessArgs {
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to consume.
    #[arg(long, default_value = "events")]
    topic: String,
    /// Consumer group.
    #[arg(long, default_value = "pitboss-processor")]
    group: String,
    /// Seconds without heartbeats before the group gives a dead member's partitions away
    /// (the broker's minimum is usually 6).
    #[arg(long, default_value_t = 10)]
    session_timeout_secs: u64,
}

async fn clickhouse_client(
    args: &ClickHouseArgs,
) -> Result<pitboss_processor::sink::ClickHouseClient> {
    if !args
        .database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("--database must be letters, digits and '_'");
    }
    pitboss_processor::sink::client(&args.clickhouse, "default")
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", args.database))
        .execute()
        .await
        .context("creating the database")?;
    let client = pitboss_processor::sink::client(&args.clickhouse, &args.database);
    let ran = pitboss_processor::schema::migrate(&client).await?;
    tracing::info!(database = %args.database, applied = ?ran, "schema up to date");
    Ok(client)
}

async fn process(args: ProcessArgs) -> Result<()> {
    let client = clickhouse_client(&args.clickhouse).await?;
    let bus = args.kafka.spec()?.open().await?;
    let config = pitboss_processor::ProcessorConfig {
        dead_letter_topic: format!("{}_dead_letter", args.topic),
        topic: args.topic,
        group: args.group,
        consumer: pitboss_bus::ConsumerConfig {
            session_timeout: std::time::Duration::from_secs(args.session_timeout_secs),
            ..pitboss_bus::ConsumerConfig::default()
        },
        ..pitboss_processor::ProcessorConfig::default()
    };
    let sink = std::sync::Arc::new(pitboss_processor::ClickHouseSink::new(client));
    let stats = pitboss_processor::run(bus, sink, config, shutdown_signal()).await?;
    tracing::info!(?stats, "processor stopped");
    Ok(())
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Where the embedded log and the demo API key live.
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
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Ingest config (TOML): tenants, limits, listen address.
    #[arg(long, env = "PITBOSS_CONFIG")]
    config: PathBuf,
    /// Which bus to write to.
    #[arg(long, env = "PITBOSS_BUS", value_enum, default_value_t = BusKind::Kafka)]
    bus: BusKind,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// AWS region for Kinesis.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    kinesis_region: String,
    /// Custom Kinesis endpoint (LocalStack).
    #[arg(long, env = "PITBOSS_KINESIS_ENDPOINT")]
    kinesis_endpoint: Option<String>,
    /// Directory of the embedded log (with `--bus embedded`).
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
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

/// The demo tenant's key: generated once, kept in a file only its owner can read, never logged.
fn demo_key(data_dir: &Path) -> Result<(String, PathBuf)> {
    let path = data_dir.join("demo-api-key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok((existing.trim().to_owned(), path));
    }
    let key = format!("pb_demo_{}", hex::encode(rand::random::<[u8; 24]>()));
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(key.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(&path, &key)?;
    Ok((key, path))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down: draining in-flight requests");
}

async fn up(
    UpArgs {
        data_dir,
        listen,
        admin_listen,
        config,
    }: UpArgs,
) -> Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut ingest = match &config {
        Some(path) => load_config(path)?,
        None => IngestConfig::default(),
    };
    ingest.listen = listen;
    ingest.admin_listen = admin_listen;
    let mut key_note = None;
    if ingest.tenants.is_empty() {
        let (key, path) = demo_key(&data_dir)?;
        ingest.tenants.push(TenantConfig {
            id: "demo".into(),
            api_key_sha256: vec![pitboss_ingest::auth::hash_key(&key)],
            events_per_second: None,
        });
        key_note = Some(path);
    }
    let bus = EmbeddedBus::open(data_dir.join("log"), EmbeddedConfig::default())?;
    bus.create_topic(&ingest.topic, 8).await?;
    bus.create_topic(&ingest.overflow_topic(), 2).await?;
    let state = pitboss_ingest::state(ingest, bus.publisher())?;
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let admin = bind(admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    println!("Pitboss is up: http://{addr}");
    println!(
        "  POST http://{addr}/v1/events   (JSON array or NDJSON of events; see docs/events.md)"
    );
    println!("  GET  http://{addr}/healthz | /readyz    admin: http://{admin_addr}/metrics");
    if let Some(path) = key_note {
        println!("  API key of tenant \"demo\": in {}", path.display());
        println!(
            "  try: curl -s -H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' \\\n       -d '[{{\"tenant_id\":\"demo\",\"player_id\":\"p1\",\"type\":\"deposit\",\"occurred_at\":\"'$(date -u +%FT%TZ)'\",\"payload\":{{\"transaction_id\":\"t1\",\"amount\":{{\"amount_minor\":5000,\"currency\":\"EUR\"}}}}}}]' \\\n       http://{addr}/v1/events",
            path.display()
        );
    }
    serve_both(state, listener, admin).await
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// The public API and the admin listener, stopped together by SIGINT/SIGTERM.
async fn serve_both(
    state: pitboss_ingest::http::AppState,
    public: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(());
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    tokio::try_join!(
        pitboss_ingest::serve(state.clone(), public, until_stopped(stopped.clone())),
        pitboss_ingest::serve_admin(state, admin, until_stopped(stopped)),
    )?;
    Ok(())
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let IngestArgs {
        config,
        bus,
        kafka,
        kinesis_region,
        kinesis_endpoint,
        data_dir,
        ensure_topic_partitions,
    } = args;
    let config = load_config(&config)?;
    let spec = match bus {
        BusKind::Embedded => BusSpec::Embedded {
            dir: data_dir.join("log"),
        },
        BusKind::Kafka => kafka.spec()?,
        BusKind::Kinesis => BusSpec::Kinesis {
            region: kinesis_region,
            endpoint: kinesis_endpoint,
        },
    };
    let bus = spec.open().await?;
    if let Some(n) = ensure_topic_partitions {
        bus.create_topic(&config.topic, n).await?;
        bus.create_topic(&config.overflow_topic(), n).await?;
    }
    let publisher = bus.publisher();
    let listener = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, ?bus, "ingest listening");
    let state = pitboss_ingest::state(config, publisher)?;
    serve_both(state, listener, admin).await
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::Loadgen(args) => loadgen::run(args).await,
        Command::Migrate(args) => clickhouse_client(&args).await.map(|_| ()),
        Command::Process(args) => process(args).await,
        Command::HashKey { key } => {
            if key.len() < 16 {
                bail!("use a key of at least 16 random characters");
            }
            println!("{}", pitboss_ingest::auth::hash_key(&key));
            Ok(())
        }
    }
}
