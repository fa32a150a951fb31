//! The rules engine on AWS Lambda (`pitboss-antifraud-lambda`), invoked by an event source
//! mapping on the `events` stream (Kinesis) or topic (MSK, self-managed Kafka) with
//! `ReportBatchItemFailures`. Stateless between invocations: window state lives in DynamoDB
//! (`pitboss_antifraud::lambda`, docs/rules.md "On AWS Lambda").
//!
//! Environment: `PITBOSS_STATE_TABLE` (required), `PITBOSS_DYNAMODB_ENDPOINT` (LocalStack and
//! moto only), `PITBOSS_BUS` with its settings (`PITBOSS_KAFKA_BOOTSTRAP`; `AWS_REGION`,
//! `PITBOSS_KINESIS_ENDPOINT`; `PITBOSS_KAFKA_OPTIONS_SECRET`, a Secrets Manager secret holding
//! the Kafka options with credentials) for the alerts, pushes and dead letters, `PITBOSS_RULES_DIR`
//! (default: the shipped packs built in), `PITBOSS_ALERTS_TOPIC`, `PITBOSS_PUSHES_TOPIC`,
//! `PITBOSS_DEAD_LETTER_TOPIC`.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{LambdaEvent, service_fn};
use pitboss_antifraud::lambda::dynamo::DynamoUnits;
use pitboss_antifraud::lambda::{Function, Topics, parse_event, response};
use pitboss_antifraud::stream::RulesSource;
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn function() -> Result<Function, lambda_runtime::Error> {
    let table = var("PITBOSS_STATE_TABLE")
        .ok_or("PITBOSS_STATE_TABLE is not set: the DynamoDB table holding the engine's state")?;
    let rules = match var("PITBOSS_RULES_DIR") {
        Some(d) => RulesSource::Dir(d.into()),
        None => RulesSource::Shipped,
    };
    let set = rules.load()?;
    let defaults = Topics::default();
    let topics = Topics {
        alerts: var("PITBOSS_ALERTS_TOPIC").unwrap_or(defaults.alerts),
        pushes: var("PITBOSS_PUSHES_TOPIC").unwrap_or(defaults.pushes),
        dead_letter: var("PITBOSS_DEAD_LETTER_TOPIC").unwrap_or(defaults.dead_letter),
    };
    let publisher = pitboss_bus::BusSpec::from_env_with_secrets()
        .await?
        .publisher()
        .await?;
    let store = DynamoUnits::from_env(&table, var("PITBOSS_DYNAMODB_ENDPOINT").as_deref()).await;
    tracing::info!(rules = set.rules.len(), %table, "antifraud function ready");
    Ok(Function {
        set,
        store: Arc::new(store),
        publisher,
        topics,
    })
}

#[tokio::main]
async fn main() -> Result<(), pitboss_runtime::Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time() // CloudWatch stamps every line
        .with_ansi(false) // CloudWatch shows escape codes as they are
        .init();
    let function = match function().await {
        Ok(f) => Arc::new(f),
        Err(e) => {
            // To the Runtime API as well as the log: the invoker sees why.
            let failure = pitboss_runtime::Failure::from(e);
            pitboss_runtime::lambda::report_init_error(&format!("{failure:?}")).await;
            return Err(failure);
        }
    };
    Ok(
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
            let function = function.clone();
            async move {
                // Not a batch of a Kinesis or Kafka mapping: named as such (its error type
                // read as a Rust type name).
                let invocation =
                    parse_event(event.payload).map_err(|e| lambda_runtime::Diagnostic {
                        error_type: "Pitboss.InvalidEvent".into(),
                        error_message: e.to_string(),
                    })?;
                // Answer before Lambda's deadline: a batch still running then is reported failed
                // (and retried) rather than timed out.
                let left = event
                    .context
                    .deadline()
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_millis(1500));
                let outcome =
                    tokio::time::timeout(left, function.handle(invocation.records.clone())).await;
                let failed = match outcome {
                    Ok(Ok(stats)) => {
                        tracing::info!(?stats, "batch evaluated");
                        false
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "batch failed; reported for retry");
                        true
                    }
                    Err(_) => {
                        tracing::error!("batch not done before the deadline; reported for retry");
                        true
                    }
                };
                Ok::<Value, lambda_runtime::Diagnostic>(response(&invocation, failed))
            }
        }))
        .await?,
    )
}
