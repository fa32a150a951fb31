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
async fn main() -> Result<(), pitboss_runtime::Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time() // CloudWatch stamps every line
        .with_ansi(false) // CloudWatch shows escape codes as they are
        .init();
    let router = match init().await {
        Ok(router) => router,
        Err(failure) => {
            // To the Runtime API as well as the log: the invoker sees why.
            pitboss_runtime::lambda::report_init_error(&format!("{failure:?}")).await;
            return Err(failure);
        }
    };
    Ok(
        lambda_http::run(lambda_http::tower::ServiceExt::map_request(
            router,
            without_stage,
        ))
        .await?,
    )
}

/// Everything before the first invocation: the config, the bus, its topics.
async fn init() -> Result<axum::Router, pitboss_runtime::Failure> {
    let config = config_from_env()?;
    let bus = pitboss_bus::BusSpec::from_env_with_secrets()
        .await?
        .open()
        .await?;
    // As the standalone server: both topics exist and pair partition by partition, or the
    // function fails at init naming them (it served, and a hot player's request wrote part of
    // its events to one topic and failed on the other).
    // Bounded well inside Lambda's 10 s init phase: a bus that does not answer yet is left to
    // the requests' retries.
    let (topic, overflow) = (config.topic.clone(), config.overflow_topic());
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        topics_usable(&*bus, &topic, &overflow),
    )
    .await
    {
        Ok(checked) => checked?,
        Err(_) => tracing::warn!(
            topic,
            overflow,
            "topics not checked at init: the bus did not answer within 3 s"
        ),
    }
    let state = pitboss_ingest::state(config, bus.publisher())?;
    Ok(pitboss_ingest::http::router(state))
}

/// Refuses a topic the bus does not have, or an overflow topic with another partition count
/// than the events topic (docs/bus.md, "Hot keys"); other errors (a bus not answering yet) are
/// left to the requests' own retries.
async fn topics_usable(
    bus: &dyn pitboss_bus::Bus,
    topic: &str,
    overflow: &str,
) -> Result<(), lambda_http::Error> {
    use pitboss_bus::BusError;
    let mut counts = Vec::new();
    for (name, what) in [(topic, "topic"), (overflow, "overflow_topic")] {
        match bus.partition_count(name).await {
            Ok(n) => counts.push(n),
            Err(BusError::UnknownTopic(_)) => {
                return Err(format!(
                    "{what} {name:?}: no such topic on the bus; make the topics with `pitboss topics` (docs/deploy.md) or name one that exists"
                )
                .into());
            }
            Err(e) => tracing::warn!(topic = name, error = %e, "topic not checked at init"),
        }
    }
    if let [a, b] = counts[..]
        && a != b
    {
        return Err(format!(
            "topic {overflow:?} has {b} partitions and {topic:?} has {a}: the overflow topic must be co-partitioned with the events topic (docs/bus.md, \"Hot keys\"); recreate it with {a}"
        )
        .into());
    }
    Ok(())
}

/// The request with the API Gateway stage taken out of its path where lambda_http put it in
/// (a REST API's stage is never `$default`: every path came out as a 404).
fn without_stage(mut request: lambda_http::Request) -> lambda_http::Request {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    let stage = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.stage.clone(),
        Some(RequestContext::ApiGatewayV2(c)) => c.stage.clone(),
        _ => None,
    };
    let Some(path) = pitboss_ingest::http::without_stage(request.uri().path(), stage.as_deref())
    else {
        return request;
    };
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = lambda_http::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}
