//! HTTP adapter (axum): `POST /v1/events`, `/healthz`, `/readyz`; `/metrics` on the admin router. It only
//! translates between HTTP and the pure core; every status code comes from `IngestError`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use pitboss_bus::{OutRecord, Publisher};
use serde::{Deserialize, Serialize};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::config::IngestConfig;
use crate::core::{self, BodyFormat, Outcome};
use crate::dedup::DedupWindow;
use crate::error::IngestError;
use crate::limit::TenantLimits;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<dyn Publisher>,
    pub config: Arc<IngestConfig>,
    pub auth: Authenticator,
    pub limits: TenantLimits,
    pub dedup: Arc<DedupWindow>,
    /// Hot-key rerouting (None: off).
    pub hot_keys: Option<Arc<crate::hot::HotKeys>>,
    pub metrics: PrometheusHandle,
    /// What else `/readyz` waits for besides the bus ([`Readiness`]).
    pub readiness: Readiness,
    /// The bus's last answer to a check, shared by every probe ([`BusCheck`]).
    pub bus_check: Arc<BusCheck>,
    /// Request-body bytes held at once, process-wide ([`crate::budget`]).
    pub body_budget: Arc<crate::budget::BodyBudget>,
    /// Ingest WebSockets open, per tenant.
    pub sockets: Arc<crate::budget::SocketSlots>,
}

/// How long the bus's answer to a readiness check is reused.
pub const BUS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The bus's answer to a readiness check, shared by `/readyz` (both listeners) and the gRPC
/// health service: at most one check at a time (callers meanwhile wait for its answer), and its
/// answer reused for [`BUS_CHECK_EVERY`]. The public `/readyz` needs no key, and each check was
/// a metadata request to the brokers (on a blocking thread) or a `ListStreams` call (5 a second
/// per AWS account): a flood of probes loaded the bus and could throttle every instance's
/// checks.
#[derive(Debug, Default)]
pub struct BusCheck {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), NotReady>)>>,
}

impl BusCheck {
    async fn answer(&self, publisher: &dyn Publisher) -> Result<(), NotReady> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < BUS_CHECK_EVERY
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(Duration::from_secs(3), publisher.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotReady::Bus(e.to_string())),
            Err(_) => Err(NotReady::NoAnswer),
        };
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }
}

/// What `/readyz` answers besides the bus: 503 `draining` once the process drains (SIGTERM),
/// and 503 with a part's name while a part it runs beside ingest is not ready (`pitboss up`'s
/// gateway while it rebuilds its history).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Option<pitboss_runtime::Shutdown>,
    parts: Vec<(&'static str, tokio::sync::watch::Receiver<bool>)>,
}

impl Readiness {
    /// `/readyz` answers 503 `draining` once `stop` is triggered.
    pub fn draining_on(mut self, stop: pitboss_runtime::Shutdown) -> Readiness {
        self.draining = Some(stop);
        self
    }

    /// `/readyz` answers 503 `<name>: catching up` until `ready` holds true.
    pub fn with_part(
        mut self,
        name: &'static str,
        ready: tokio::sync::watch::Receiver<bool>,
    ) -> Readiness {
        self.parts.push((name, ready));
        self
    }

    /// Why the process is not ready, if it is not.
    fn not_ready(&self) -> Option<String> {
        if self
            .draining
            .as_ref()
            .is_some_and(pitboss_runtime::Shutdown::is_triggered)
        {
            return Some("draining".into());
        }
        self.parts
            .iter()
            .find(|(_, r)| !*r.borrow())
            .map(|(name, _)| format!("{name}: catching up"))
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("publisher", &self.publisher)
            .field("topic", &self.config.topic)
            .finish()
    }
}

/// The tenant an authenticated request writes for.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// The response to `POST /v1/events`: counts and one result per event, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngestResponse {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub results: Vec<Outcome>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        metrics::counter!("pitboss_ingest_requests_total", "status" => status.as_u16().to_string())
            .increment(1);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after()
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The paths [`router`] serves over HTTP/1 (gRPC's are its own).
pub const PATHS: [&str; 5] = [
    "/v1/events",
    "/v1/ingest/ws",
    "/v1/openapi.json",
    "/healthz",
    "/readyz",
];

/// The path an API Gateway request is for, without the stage lambda_http puts in front of it
/// (`/prod/v1/events` from a REST API's stage `prod`; an HTTP API's named stage is in its raw
/// path already): `None` when `path` is one of [`PATHS`] as it is, or does not start with the
/// stage, or is not one of them without it either. A stage named like a path's first segment
/// (`v1`) is told apart by the same rule.
pub fn without_stage(path: &str, stage: Option<&str>) -> Option<String> {
    let stage = stage.filter(|s| !s.is_empty() && *s != "$default")?;
    if PATHS.contains(&path) {
        return None;
    }
    let rest = path.strip_prefix('/')?.strip_prefix(stage)?;
    PATHS.contains(&rest).then(|| rest.to_owned())
}

/// The router, for the standalone server and (through lambda_http) for AWS Lambda alike.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    // Outermost first: authenticate, check the encoding, decompress, limit the body.
    // A body that stalls (a client that sent its head and a byte) is cut after the head's
    // deadline without a frame, not held for ever.
    let body_timeout = std::time::Duration::from_millis(state.config.header_read_timeout_ms);
    let events = post(post_events)
        .layer::<_, Infallible>(DefaultBodyLimit::max(max_body))
        // Inside the decompression: what is charged is what is held.
        .layer::<_, Infallible>(middleware::from_fn_with_state(
            state.clone(),
            hold_body_budget,
        ))
        .layer::<_, Infallible>(RequestDecompressionLayer::new())
        .layer::<_, Infallible>(middleware::from_fn(check_encoding))
        .layer::<_, Infallible>(RequestBodyTimeoutLayer::new(body_timeout))
        .layer::<_, Infallible>(middleware::from_fn_with_state(state.clone(), authenticate));
    let ws = get(ws_ingest).layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/events", events)
        .route("/v1/ingest/ws", ws)
        .route(
            "/v1/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_public))
        // The span names the path, never the query: a client that puts its key there (or a
        // browser's `?token=`) would have it in every debug line.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(FailureLog::default())
                .make_span_with(|request: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        version = ?request.version(),
                    )
                }),
        )
        .with_state(state.clone())
        .merge(crate::grpc::routes(state))
}

/// tower-http's "response failed" line for a 5xx answer, at most one a second: a burst of
/// `503 overloaded` or `bus_unavailable` answers (thousands a second, each counted in
/// `pitboss_ingest_requests_total`) wrote one ERROR line each; now one line a second says how
/// many it stands for.
#[derive(Debug, Clone, Default)]
pub struct FailureLog(Arc<std::sync::Mutex<(u64, u64)>>);

impl FailureLog {
    /// A failure at second `now`: `Some(n)` when a line is due, `n` the failures since the
    /// last line that had none.
    pub fn note(&self, now: u64) -> Option<u64> {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, suppressed) = *g;
        if last == now && last != 0 {
            g.1 = suppressed.saturating_add(1);
            None
        } else {
            *g = (now, 0);
            Some(suppressed)
        }
    }
}

impl tower_http::trace::OnFailure<tower_http::classify::ServerErrorsFailureClass> for FailureLog {
    fn on_failure(
        &mut self,
        class: tower_http::classify::ServerErrorsFailureClass,
        latency: Duration,
        _span: &tracing::Span,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        if let Some(more) = self.note(now) {
            tracing::error!(
                classification = %class,
                latency_ms = latency.as_millis() as u64,
                not_logged_since_last = more,
                "response failed"
            );
        }
    }
}

/// The operator's router, for the admin listener only (loopback or a private network; never
/// exposed with the public API): Prometheus `/metrics`, and `/healthz` and `/readyz` again for
/// probes that use this port.
pub fn admin_router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(pitboss_runtime::admin::metrics_router(metrics))
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return pitboss_runtime::http::bearer(v);
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Rejects a request without a valid API key before its body is read.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let tenant = presented_key(request.headers())
        .and_then(|k| state.auth.tenant(k))
        .map(str::to_owned);
    match tenant {
        Some(t) => {
            request.extensions_mut().insert(Tenant(t));
            next.run(request).await
        }
        None => IngestError::Unauthorized.into_response(),
    }
}

/// Lets through a body in `gzip` (decompressed by the layer inside) or `identity`; any other
/// `Content-Encoding`, or more than one, is 415 `unsupported_encoding` with the usual JSON
/// error body. Runs after authentication, so an unauthenticated caller learns nothing more.
async fn check_encoding(mut request: Request, next: Next) -> Response {
    let mut values = request.headers().get_all(header::CONTENT_ENCODING).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        if request.headers().contains_key(header::CONTENT_ENCODING) {
            return IngestError::UnsupportedEncoding("more than one Content-Encoding".into())
                .into_response();
        }
        return next.run(request).await;
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.eq_ignore_ascii_case("gzip") || text.eq_ignore_ascii_case("x-gzip") {
        if text != "gzip" {
            // The decompression layer matches exactly `gzip`.
            request
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
    } else if text.eq_ignore_ascii_case("identity") {
        request.headers_mut().remove(header::CONTENT_ENCODING);
    } else {
        let shown = String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(100)
            .collect();
        return IngestError::UnsupportedEncoding(shown).into_response();
    }
    next.run(request).await
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, IngestError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(BodyFormat::Ndjson),
        _ => Err(IngestError::UnsupportedMediaType(
            raw.chars().take(100).collect(),
        )),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Charges a request's body to the process's budget as it is read, and holds it until the
/// answer is made ([`crate::budget`]).
async fn hold_body_budget(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let held = crate::budget::Held::default();
    let (parts, body) = request.into_parts();
    let tenant = parts
        .extensions
        .get::<Tenant>()
        .map(|Tenant(t)| t.clone())
        .unwrap_or_default();
    let body = state.body_budget.body(body, tenant, held.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(held);
    response
}

async fn post_events(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IngestError> {
    let format = body_format(&headers)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::BodyTooLarge {
                limit: state.config.max_body_bytes,
            }
        } else if let Some(why) = pitboss_runtime::http::cause::<crate::budget::OverBudget>(&r) {
            IngestError::Overloaded(*why)
        } else if pitboss_runtime::http::caused_by::<tower_http::timeout::TimeoutError>(&r)
            || pitboss_runtime::http::caused_by::<crate::budget::Stalled>(&r)
        {
            IngestError::BodyTimeout {
                after_ms: state.config.header_read_timeout_ms,
            }
        } else {
            IngestError::Request(core::RequestError::Unreadable(r.body_text()))
        }
    })?;
    let response = ingest_batch(&state, &tenant, &body, format).await?;
    // 200 when anything was taken (or was already there); 400 when every event was refused.
    let status = if response.rejected > 0 && response.accepted + response.duplicates == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    metrics::counter!("pitboss_ingest_requests_total", "status" => status.as_u16().to_string())
        .increment(1);
    Ok((status, Json(response)).into_response())
}

/// One batch, whatever transport it came by: plan it with the pure core, take it from the
/// tenant's rate budget, publish the accepted events, and only after the bus acknowledged them
/// remember their ids and report them accepted.
pub async fn ingest_batch(
    state: &AppState,
    tenant: &str,
    body: &[u8],
    format: BodyFormat,
) -> Result<IngestResponse, IngestError> {
    let plan = core::plan(
        body,
        format,
        tenant,
        &state.config.core,
        now_ms(),
        state.dedup.as_ref(),
    )?;
    publish_plan(state, tenant, plan).await
}

/// [`ingest_batch`] for events that arrived in protobuf form (gRPC).
pub async fn ingest_events(
    state: &AppState,
    tenant: &str,
    events: Vec<pitboss_proto::v1::Event>,
) -> Result<IngestResponse, IngestError> {
    let plan = core::plan_proto(
        events,
        tenant,
        &state.config.core,
        now_ms(),
        state.dedup.as_ref(),
    )?;
    publish_plan(state, tenant, plan).await
}

async fn publish_plan(
    state: &AppState,
    tenant: &str,
    mut plan: core::Plan,
) -> Result<IngestResponse, IngestError> {
    metrics::histogram!("pitboss_ingest_batch_events").record(plan.outcomes.len() as f64);

    // Refused events count against the rate as accepted ones do (they cost the decoding and
    // the checks; uncounted, a stream of invalid events was never limited); duplicates (a
    // client's retry) do not.
    let (_, _, rejected) = plan.counts();
    let charged = plan.publish.len() + rejected;
    if charged > 0 {
        state.limits.admit(tenant, charged).map_err(|r| match r {
            crate::limit::Refused::Wait(secs) => IngestError::RateLimited {
                retry_after_secs: secs,
            },
            crate::limit::Refused::OverBurst { per_second } => IngestError::BatchOverRateLimit {
                events: charged,
                per_second,
            },
        })?;
    }
    if !plan.publish.is_empty() {
        let client_ids: Vec<core::IdFingerprint> =
            plan.publish.iter().filter_map(|p| p.client_id).collect();
        let records: Vec<OutRecord> = std::mem::take(&mut plan.publish)
            .into_iter()
            .map(|p| OutRecord {
                key: p.key,
                value: p.value,
                headers: p.headers,
            })
            .collect();
        let now = now_ms();
        let (main, overflow) = match &state.hot_keys {
            Some(hot) => {
                hot.tick(now);
                let (overflow, main): (Vec<OutRecord>, Vec<OutRecord>) =
                    records.into_iter().partition(|r| hot.reroute(&r.key, now));
                metrics::gauge!("pitboss_ingest_hot_keys").set(hot.hot_count() as f64);
                (main, overflow)
            }
            None => (records, Vec::new()),
        };
        if !overflow.is_empty() {
            metrics::counter!("pitboss_ingest_overflow_events_total")
                .increment(overflow.len() as u64);
        }
        let started = Instant::now();
        let timeout = Duration::from_millis(state.config.publish_timeout_ms);
        let overflow_topic = state.config.overflow_topic();
        let publish_all = async {
            let (a, b) = futures::future::join(
                async {
                    if main.is_empty() {
                        Ok(Vec::new())
                    } else {
                        state.publisher.publish(&state.config.topic, main).await
                    }
                },
                async {
                    if overflow.is_empty() {
                        Ok(Vec::new())
                    } else {
                        state.publisher.publish(&overflow_topic, overflow).await
                    }
                },
            )
            .await;
            a.and(b)
        };
        let published = tokio::time::timeout(timeout, publish_all).await;
        metrics::histogram!("pitboss_ingest_bus_ack_seconds")
            .record(started.elapsed().as_secs_f64());
        match published {
            Ok(Ok(_acks)) => {}
            Ok(Err(e)) if e.is_retryable() => return Err(IngestError::BusUnavailable(e)),
            Ok(Err(e)) => return Err(IngestError::BusRejected(e)),
            Err(_) => {
                return Err(IngestError::BusUnavailable(
                    pitboss_bus::BusError::Unavailable(format!(
                        "no acknowledgement within {} ms",
                        timeout.as_millis()
                    )),
                ));
            }
        }
        state.dedup.remember(client_ids, now);
    }

    let (accepted, duplicates, rejected) = plan.counts();
    for (outcome, n) in [
        ("accepted", accepted),
        ("duplicate", duplicates),
        ("rejected", rejected),
    ] {
        metrics::counter!("pitboss_ingest_events_total", "outcome" => outcome).increment(n as u64);
    }
    Ok(IngestResponse {
        accepted,
        duplicates,
        rejected,
        results: plan.outcomes,
    })
}

/// Upgrades an authenticated request to a WebSocket that ingests frames (see [`crate::ws`]).
/// The server pings every `ws_ping_interval_secs`; a socket from which nothing came for
/// `ws_idle_timeout_secs` is closed (1001); on shutdown the frame in progress is answered and
/// the socket closed with 1012 so the client reconnects elsewhere.
async fn ws_ingest(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    shutdown: Option<Extension<pitboss_runtime::Shutdown>>,
    slot: Option<Extension<pitboss_runtime::http::ConnSlot>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let max = state.config.max_body_bytes;
    let shutdown = shutdown.map_or_else(pitboss_runtime::Shutdown::new, |Extension(s)| s);
    // One tenant's sockets leave room for the others' under `max_connections`.
    let Some(place) = state.sockets.take(&tenant) else {
        return IngestError::TooManyWebSockets {
            limit: state.sockets.max(),
        }
        .into_response();
    };
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite's defaults (128 KiB each) made an idle socket cost ~117 KB; a busy one
        // grows its buffers as frames need.
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            // The socket counts under `max_connections`, and its tenant's bound, while it
            // lives.
            let _place = place;
            // Its frames count against the body budget as they are read, not once whole: a
            // tenant's sockets reading frames hold its share at most, whatever their number.
            // (A frame is charged at most its largest size: what it holds in memory, whatever
            // its heads cost on the wire, so a frame of `max_body_bytes` fits in any share.)
            let reads = crate::budget::Held::default();
            let charged = slot.as_ref().is_some_and(|Extension(slot)| {
                let (budget, tenant, held) =
                    (state.body_budget.clone(), tenant.clone(), reads.clone());
                slot.charge_reads(Box::new(move |n| {
                    let n = n.min(max.saturating_sub(held.bytes()));
                    if n == 0 {
                        return Ok(());
                    }
                    budget
                        .charge(&held, &tenant, n)
                        .map_err(std::io::Error::other)
                }))
            });
            let _slot = slot;
            ws_session(state, tenant, socket, shutdown, charged.then_some(reads)).await;
        })
}

/// Initial read and write buffer of a WebSocket.
const WS_BUFFER_BYTES: usize = 4096;

/// Why the server ended a WebSocket session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WsEnd {
    /// The client closed, or the socket failed.
    Client,
    /// Nothing came for the idle timeout: a dead peer.
    Idle,
    /// A frame being read found no room in the body budget.
    Overloaded(crate::budget::OverBudget),
    /// Part of a frame was held and nothing more of it came for the stall bound.
    Stalled,
    /// The server is shutting down.
    Shutdown,
    /// A frame over `max_body_bytes` (1009), a text frame that is not UTF-8 (1007), or one the
    /// protocol does not allow (1002).
    Broken(pitboss_runtime::http::WsBroken),
}

/// `reads`: what the socket's reads are charged to as they come, when they are (the frame read
/// last takes it over; without it each frame is charged once read).
async fn ws_session(
    state: AppState,
    tenant: String,
    socket: axum::extract::ws::WebSocket,
    shutdown: pitboss_runtime::Shutdown,
    reads: Option<crate::budget::Held>,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::{SinkExt, StreamExt};
    let idle = Duration::from_secs(state.config.ws_idle_timeout_secs);
    let stall = Duration::from_millis(state.config.header_read_timeout_ms);
    let ping_every = Duration::from_secs(state.config.ws_ping_interval_secs);
    let max_frame = state.config.max_body_bytes;
    let (mut sink, stream) = socket.split();
    let ended = Arc::new(std::sync::Mutex::new(WsEnd::Client));
    let end = |why: WsEnd, ended: &Arc<std::sync::Mutex<WsEnd>>| {
        *ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    };
    let reader_end = ended.clone();
    let stop = shutdown.clone();
    let frames = futures::stream::unfold(stream, move |mut stream| {
        let (stop, reader_end, reads) = (stop.clone(), reader_end.clone(), reads.clone());
        async move {
            // While part of a frame is held, its bytes must grow between two looks `stall`
            // apart (pings and pongs do not count: their bytes are given back), as a body's
            // pieces must come within it.
            let mut look = tokio::time::interval_at(tokio::time::Instant::now() + stall, stall);
            let mut held_before = 0;
            let mut idle_at = tokio::time::Instant::now() + idle;
            loop {
                let next = tokio::select! {
                    () = stop.wait() => {
                        end(WsEnd::Shutdown, &reader_end);
                        return None;
                    }
                    _ = look.tick(), if reads.is_some() => None,
                    next = tokio::time::timeout_at(idle_at, stream.next()) => Some(next),
                };
                let Some(next) = next else {
                    let held = reads.as_ref().map_or(0, crate::budget::Held::bytes);
                    if held > 0 && held <= held_before {
                        end(WsEnd::Stalled, &reader_end);
                        return None;
                    }
                    held_before = held;
                    continue;
                };
                match next {
                    Err(_) => {
                        end(WsEnd::Idle, &reader_end);
                        return None;
                    }
                    Ok(Some(Err(e))) => {
                        if let Some(why) = reads.as_ref().and_then(crate::budget::Held::refusal) {
                            end(WsEnd::Overloaded(why), &reader_end);
                        } else if let Some(broken) = pitboss_runtime::http::ws_broken(&e) {
                            // tungstenite refuses a frame over the bound as it reads it.
                            end(WsEnd::Broken(broken), &reader_end);
                        }
                        return None;
                    }
                    Ok(None | Some(Ok(Message::Close(_)))) => return None,
                    // The frame takes over what its reads were charged (and a few bytes of
                    // the next read ahead with it, at most the socket's read buffer).
                    Ok(Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))) => {
                        let held = reads.as_ref().map(crate::budget::Held::take);
                        let bytes = message.into_data().to_vec();
                        return Some((crate::ws::Frame { bytes, held }, stream));
                    }
                    // Pings (answered by axum) and pongs: the peer is alive. Their bytes (a
                    // client's control frame: 2 bytes of head, 4 of mask, the payload) are
                    // given back, or an idle socket's pongs would pile up in its tenant's share.
                    Ok(Some(Ok(Message::Ping(p) | Message::Pong(p)))) => {
                        if let Some(reads) = &reads {
                            reads.give_back_bytes(6 + p.len());
                        }
                        idle_at = tokio::time::Instant::now() + idle;
                    }
                }
            }
        }
    });
    let (replies, mut outgoing) = futures::channel::mpsc::channel::<String>(4);
    let writer = async move {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        loop {
            tokio::select! {
                reply = outgoing.next() => match reply {
                    // A peer that reads nothing for the idle timeout is gone: the session
                    // ends (its connection's place is given back) rather than wait on it.
                    Some(text) => {
                        match tokio::time::timeout(idle, sink.send(Message::Text(text.into()))).await {
                            Ok(Ok(())) => {}
                            _ => return,
                        }
                    }
                    // Every frame read has been answered: the session is over.
                    None => break,
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(idle, sink.send(Message::Ping(Bytes::new()))).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
            }
        }
        let why = std::mem::replace(
            &mut *ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            WsEnd::Client,
        );
        let (code, reason) = match why {
            WsEnd::Shutdown => (1012, "server restarting: reconnect".to_owned()),
            WsEnd::Idle => (
                1001,
                "idle: nothing received within the idle timeout".into(),
            ),
            // As `408 body_timeout`.
            WsEnd::Stalled => (
                1008,
                format!(
                    "body_timeout: the frame sent nothing for {} ms while part of it was held",
                    stall.as_millis()
                ),
            ),
            // "Try Again Later" (the IANA registry of close codes): as `503 overloaded`.
            WsEnd::Overloaded(why) => (
                1013,
                match why {
                    crate::budget::OverBudget::Tenant(n) => format!(
                        "overloaded: this tenant's bodies hold their {n} bytes; retry later"
                    ),
                    crate::budget::OverBudget::Process(n) => format!(
                        "overloaded: the server's {n} bytes of bodies are held; retry later"
                    ),
                },
            ),
            WsEnd::Broken(b) => (
                b.code(),
                match b {
                    pitboss_runtime::http::WsBroken::TooBig => {
                        format!("frame larger than {max_frame} bytes")
                    }
                    pitboss_runtime::http::WsBroken::NotUtf8 => {
                        "a text frame that is not UTF-8".to_owned()
                    }
                    pitboss_runtime::http::WsBroken::Protocol(what) => {
                        format!("protocol error: {what}")
                    }
                },
            ),
            WsEnd::Client => return,
        };
        let _ = tokio::time::timeout(
            idle,
            sink.send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))),
        )
        .await;
    };
    let replies = replies.sink_map_err(axum::Error::new);
    let serve = async {
        if let Err(e) =
            crate::ws::serve_frames(&state, &tenant, Box::pin(frames), Box::pin(replies)).await
        {
            tracing::debug!(error = %e, "websocket closed while replying");
        }
    };
    tokio::join!(serve, writer);
}

/// `/readyz` of the admin listener: why the bus is not ready, the client's own words (a
/// refused login, an untrusted certificate, with the broker's address).
async fn readyz(State(state): State<AppState>) -> Response {
    ready(&state, true).await
}

/// `/readyz` of the public listener: the same answer, without the bus's error text (broker
/// addresses and why a login failed are the operator's, not the internet's).
async fn readyz_public(State(state): State<AppState>) -> Response {
    ready(&state, false).await
}

/// Why the ingest takes no events now.
#[derive(Debug, Clone)]
pub enum NotReady {
    /// Draining, or a part catching up: the reason.
    Part(String),
    /// The bus answered with an error (its text).
    Bus(String),
    /// The bus did not answer within 3 s.
    NoAnswer,
}

/// Whether the ingest takes events now: not draining, every part caught up, the bus answering
/// within 3 s (`/readyz`, and the gRPC health service; the bus's answer shared, [`BusCheck`]).
pub(crate) async fn check_ready(state: &AppState) -> Result<(), NotReady> {
    if let Some(why) = state.readiness.not_ready() {
        return Err(NotReady::Part(why));
    }
    state.bus_check.answer(&*state.publisher).await
}

async fn ready(state: &AppState, detail: bool) -> Response {
    match check_ready(state).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(NotReady::Part(why)) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        Err(NotReady::Bus(e)) if detail => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("bus: {e}")).into_response()
        }
        Err(NotReady::Bus(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "bus: unavailable (the admin listener's /readyz says why)",
        )
            .into_response(),
        Err(NotReady::NoAnswer) => {
            (StatusCode::SERVICE_UNAVAILABLE, "bus: no answer within 3 s").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FailureLog, without_stage};

    #[test]
    fn failures_are_logged_once_a_second_with_how_many_were_not() {
        let log = FailureLog::default();
        // The first of a second is logged; the rest of that second are counted.
        assert_eq!(log.note(100), Some(0));
        assert_eq!(log.note(100), None);
        assert_eq!(log.note(100), None);
        assert_eq!(
            log.note(101),
            Some(2),
            "the next second's first says two were not"
        );
        assert_eq!(log.note(101), None);
        assert_eq!(log.note(250), Some(1));
        assert_eq!(log.note(251), Some(0));
    }

    #[test]
    fn the_stage_goes_only_when_the_path_is_served_without_it() {
        // REST API stage `prod` (lambda_http puts it in front); HTTP API named stage (in the raw
        // path already): the same path without it.
        assert_eq!(
            without_stage("/prod/v1/events", Some("prod")).as_deref(),
            Some("/v1/events")
        );
        assert_eq!(
            without_stage("/prod/healthz", Some("prod")).as_deref(),
            Some("/healthz")
        );
        // `$default` and no stage: nothing in front of the path.
        assert_eq!(without_stage("/v1/events", Some("$default")), None);
        assert_eq!(without_stage("/v1/events", None), None);
        // A stage named like the path's first segment: a served path stays, the stage in
        // front of one goes.
        assert_eq!(without_stage("/v1/events", Some("v1")), None);
        assert_eq!(
            without_stage("/v1/v1/events", Some("v1")).as_deref(),
            Some("/v1/events")
        );
        // Not a path it serves either way, or a stage only as a prefix of a segment: left
        // for the router's 404.
        assert_eq!(without_stage("/prod/v2/events", Some("prod")), None);
        assert_eq!(without_stage("/production/v1/events", Some("prod")), None);
        assert_eq!(without_stage("/elsewhere", Some("prod")), None);
    }
}
