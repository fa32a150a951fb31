//! The `pitboss` command.
//!
//! - `pitboss up`: Pitboss in one process over the embedded durable log — no servers needed.
//! - `pitboss ingest`: the ingest function as a standalone server over Kafka, Kinesis or the
//!   embedded log.
//! - `pitboss hash-key KEY`: the `api_key_sha256` entry for an API key.
//! - `pitboss loadgen`: sustained HTTP load with events/s and latency percentiles.

mod loadgen;

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
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Where the embedded log and the demo API key live.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "PITBOSS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
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
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "PITBOSS_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
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
    let state = pitboss_ingest::state(ingest, bus.publisher())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!("Pitboss is up: http://{addr}");
    println!(
        "  POST http://{addr}/v1/events   (JSON array or NDJSON of events; see docs/events.md)"
    );
    println!("  GET  http://{addr}/metrics | /healthz | /readyz");
    if let Some(path) = key_note {
        println!("  API key of tenant \"demo\": in {}", path.display());
        println!(
            "  try: curl -s -H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' \\\n       -d '[{{\"tenant_id\":\"demo\",\"player_id\":\"p1\",\"type\":\"deposit\",\"occurred_at\":\"'$(date -u +%FT%TZ)'\",\"payload\":{{\"transaction_id\":\"t1\",\"amount\":{{\"amount_minor\":5000,\"currency\":\"EUR\"}}}}}}]' \\\n       http://{addr}/v1/events",
            path.display()
        );
    }
    pitboss_ingest::serve(state, listener, shutdown_signal()).await?;
    Ok(())
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let IngestArgs {
        config,
        bus,
        kafka_bootstrap,
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
        BusKind::Kafka => BusSpec::Kafka {
            bootstrap: kafka_bootstrap,
        },
        BusKind::Kinesis => BusSpec::Kinesis {
            region: kinesis_region,
            endpoint: kinesis_endpoint,
        },
    };
    let bus = spec.open().await?;
    if let Some(n) = ensure_topic_partitions {
        bus.create_topic(&config.topic, n).await?;
    }
    let publisher = bus.publisher();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, ?bus, "ingest listening");
    let state = pitboss_ingest::state(config, publisher)?;
    pitboss_ingest::serve(state, listener, shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::Loadgen(args) => loadgen::run(args).await,
        Command::HashKey { key } => {
            if key.len() < 16 {
                bail!("use a key of at least 16 random characters");
            }
            println!("{}", pitboss_ingest::auth::hash_key(&key));
            Ok(())
        }
    }
}
