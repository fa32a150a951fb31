//! The ingest function on AWS Lambda: the same axum router as the standalone server, run by
//! lambda_http behind API Gateway (HTTP API v2, REST v1), function URLs or an ALB.
//!
//! Configuration comes from the environment: `PITBOSS_CONFIG_TOML` or `PITBOSS_CONFIG` (see
//! docs/api.md) and `PITBOSS_BUS` with its settings (`PITBOSS_KAFKA_BOOTSTRAP`, or
//! `AWS_REGION` + optional `PITBOSS_KINESIS_ENDPOINT`); `PITBOSS_KAFKA_OPTIONS_SECRET` names a
//! Secrets Manager secret holding the Kafka options with credentials (MSK's SASL/SCRAM).

use pitboss_ingest::config::config_from_env;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time() // CloudWatch stamps every line
        .init();
    let config = config_from_env()?;
    let publisher = pitboss_bus::BusSpec::from_env_with_secrets()
        .await?
        .publisher()
        .await?;
    let state = pitboss_ingest::state(config, publisher)?;
    lambda_http::run(pitboss_ingest::http::router(state)).await
}
