//! gRPC adapter (tonic) for the `pitboss.v1.Ingest` service: unary batches and client
//! streaming. It authenticates from metadata and translates between protobuf and the shared
//! ingest path; error codes map to gRPC codes in `status`, through the error table. Served on the same port as HTTP,
//! with the standard health service (`grpc.health.v1.Health`, [`HealthService`]).

use std::sync::Arc;
use std::time::Duration;

use pitboss_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Outcome;
use crate::error::IngestError;
use crate::http::{AppState, IngestResponse, ingest_events};

/// The `Ingest` gRPC service.
#[derive(Debug, Clone)]
pub struct IngestService {
    state: AppState,
}

impl IngestService {
    pub fn new(state: AppState) -> Self {
        IngestService { state }
    }

    fn tenant(&self, metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
        api_key(|name| metadata.get(name).and_then(|v| v.to_str().ok()))
            .and_then(|k| self.state.auth.tenant(k))
            .map(str::to_owned)
            .ok_or_else(|| status(IngestError::Unauthorized))
    }
}

/// The API key of a call: `authorization: Bearer …`, else `x-api-key`.
fn api_key<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    header("authorization")
        .and_then(pitboss_runtime::http::bearer)
        .or_else(|| header("x-api-key"))
        .map(str::trim)
}

/// The gRPC status for an ingest error, from its row of the error table: the table's gRPC
/// code, a message that starts with the error code, and the code again in the
/// `pitboss-error-code` metadata.
pub fn status(e: IngestError) -> Status {
    let kind = e.kind();
    let mut status = Status::new(kind.grpc_code(), format!("{}: {e}", kind.as_str()));
    status.metadata_mut().insert(
        pitboss_proto::codec::ERROR_CODE_METADATA,
        MetadataValue::from_static(kind.as_str()),
    );
    status
}

/// Metadata of a stream's error: how many of its batches were written before it.
pub const BATCHES_WRITTEN_METADATA: &str = "pitboss-batches-written";
/// Metadata of a stream's error: how many events those batches had accepted.
pub const EVENTS_ACCEPTED_METADATA: &str = "pitboss-events-accepted";

/// A stream's error after `done` batches were written (and acknowledged by the bus): the
/// status says so, in its message and its metadata, so the client resends from the batch that
/// failed and knows the earlier ones are stored (docs/api.md). With none written, the status
/// is the plain whole-request error.
fn after_batches(mut s: Status, done: u32, reply: &pb::IngestReply) -> Status {
    if done == 0 {
        return s;
    }
    let message = format!(
        "{} (batch {} of the stream; its first {done} batches were written: {} events accepted, {} duplicates, {} rejected; resend from batch {})",
        s.message(),
        done + 1,
        reply.accepted,
        reply.duplicates,
        reply.rejected,
        done + 1
    );
    let mut out = Status::with_metadata(s.code(), message, std::mem::take(s.metadata_mut()));
    out.metadata_mut()
        .insert(BATCHES_WRITTEN_METADATA, MetadataValue::from(done));
    out.metadata_mut().insert(
        EVENTS_ACCEPTED_METADATA,
        MetadataValue::from(reply.accepted),
    );
    out
}

fn to_reply(r: IngestResponse, into: &mut pb::IngestReply) {
    into.accepted += r.accepted as u32;
    into.duplicates += r.duplicates as u32;
    into.rejected += r.rejected as u32;
    into.results.extend(r.results.into_iter().map(|o| {
        match o {
            Outcome::Accepted { event_id, late } => pb::EventResult {
                status: pb::EventStatus::Accepted as i32,
                event_id,
                late,
                errors: Vec::new(),
            },
            Outcome::Duplicate { event_id } => pb::EventResult {
                status: pb::EventStatus::Duplicate as i32,
                event_id,
                late: false,
                errors: Vec::new(),
            },
            Outcome::Rejected { event_id, errors } => pb::EventResult {
                status: pb::EventStatus::Rejected as i32,
                event_id: event_id.unwrap_or_default(),
                late: false,
                errors: errors
                    .into_iter()
                    .map(|v| pb::Violation {
                        path: v.path,
                        code: v.code.to_string(),
                        message: v.message,
                    })
                    .collect(),
            },
        }
    }));
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn ingest_batch(
        &self,
        request: Request<pb::EventBatch>,
    ) -> Result<Response<pb::IngestReply>, Status> {
        let tenant = self.tenant(request.metadata())?;
        let response = ingest_events(&self.state, &tenant, request.into_inner().events)
            .await
            .map_err(status)?;
        let mut reply = pb::IngestReply::default();
        to_reply(response, &mut reply);
        Ok(Response::new(reply))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<pb::EventBatch>>,
    ) -> Result<Response<pb::IngestReply>, Status> {
        let tenant = self.tenant(request.metadata())?;
        // The server's shutdown signal (`serve` puts it on every request): on SIGTERM the
        // stream reads no further batch, as a WebSocket reads no further frame.
        let stop = request
            .extensions()
            .get::<pitboss_runtime::Shutdown>()
            .cloned();
        // What the stream's bytes hold of the process's budget (`routes` charges them as they
        // are read): given back after each batch is written, so a long stream holds one
        // batch's worth, not all it sent.
        let held = request
            .extensions()
            .get::<crate::budget::Held>()
            .cloned()
            .unwrap_or_default();
        let mut batches = request.into_inner();
        let mut reply = pb::IngestReply::default();
        let mut done = 0u32;
        // The reply holds a result per event of the stream: bounded, as a request is.
        let limit = self
            .state
            .config
            .core
            .max_events
            .saturating_mul(STREAM_BATCHES);
        let mut events = 0usize;
        // One batch at a time: the next is read only after the bus acknowledged this one.
        loop {
            let next = match &stop {
                Some(stop) => tokio::select! {
                    biased;
                    () = stop.wait() => None,
                    m = batches.message() => Some(m),
                },
                None => Some(batches.message().await),
            };
            let batch = match next {
                // Draining: unless the client has already ended the stream (then its reply,
                // with every batch written, is what it should get).
                None => match futures::FutureExt::now_or_never(batches.message()) {
                    Some(Ok(None)) => break,
                    _ => return Err(after_batches(status(IngestError::Draining), done, &reply)),
                },
                Some(Ok(Some(b))) => b,
                Some(Ok(None)) => break,
                Some(Err(_)) if held.refused() || held.stalled() => {
                    let why = match held.refusal() {
                        Some(why) => IngestError::Overloaded(why),
                        None => IngestError::BodyTimeout {
                            after_ms: self.state.config.header_read_timeout_ms,
                        },
                    };
                    return Err(after_batches(status(why), done, &reply));
                }
                Some(Err(e)) => return Err(after_batches(e, done, &reply)),
            };
            events = events.saturating_add(batch.events.len());
            if events > limit {
                return Err(after_batches(
                    status(IngestError::StreamTooLong { events, limit }),
                    done,
                    &reply,
                ));
            }
            let response = ingest_events(&self.state, &tenant, batch.events)
                .await
                .map_err(|e| after_batches(status(e), done, &reply))?;
            to_reply(response, &mut reply);
            done += 1;
            held.release();
        }
        Ok(Response::new(reply))
    }
}

/// A stream carries at most this many times `core.max_events` events: its reply holds a result
/// for each (unbounded, an endless stream of refused events grew the reply until the process
/// ran out of memory).
pub const STREAM_BATCHES: usize = 10;

/// How often the health service asks again while someone asks it.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The health service stops asking this long after the last `Check` when nobody watches.
const HEALTH_IDLE: Duration = Duration::from_secs(10);

/// `Watch` calls open at once, per process; one more is `RESOURCE_EXHAUSTED`.
pub const MAX_HEALTH_WATCHERS: usize = 256;

/// How long a `Check` waits for the first answer after a pause (the bus check's own bound is
/// 3 s).
const FIRST_ANSWER: Duration = Duration::from_secs(4);

/// The standard gRPC health service (`grpc.health.v1.Health`), for load balancers and
/// orchestrators that probe over gRPC: `SERVING` when `/readyz` would answer 200 (not draining,
/// caught up, the bus answering), `NOT_SERVING` otherwise, for the service `""` (the server)
/// and `pitboss.v1.Ingest`; any other name is `NOT_FOUND` (`Check`) or `SERVICE_UNKNOWN`
/// (`Watch`). Like `/readyz`, it asks for no key and says nothing of why.
///
/// One task asks once a second while anyone uses the service (a `Check` in the last 10 s, an
/// open `Watch`) and stops otherwise: however many clients ask, the bus is asked at most once a
/// second on their behalf, and not at all when nobody does. At most
/// [`MAX_HEALTH_WATCHERS`] `Watch` calls are open at once; on shutdown each says
/// `NOT_SERVING` and ends.
#[derive(Debug, Clone)]
pub struct HealthService {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    state: AppState,
    /// The latest answer (`None`: being asked after a pause).
    status: tokio::sync::watch::Sender<Option<ServingStatus>>,
    watchers: Arc<tokio::sync::Semaphore>,
    /// When a `Check` or `Watch` last came.
    asked: std::sync::Mutex<std::time::Instant>,
    /// Whether the asking task runs.
    polling: std::sync::atomic::AtomicBool,
}

impl HealthInner {
    fn in_use(&self) -> bool {
        self.watchers.available_permits() < MAX_HEALTH_WATCHERS
            || self
                .asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed()
                <= HEALTH_IDLE
    }
}

impl HealthService {
    pub fn new(state: AppState) -> Self {
        HealthService {
            inner: Arc::new(HealthInner {
                state,
                status: tokio::sync::watch::Sender::new(None),
                watchers: Arc::new(tokio::sync::Semaphore::new(MAX_HEALTH_WATCHERS)),
                asked: std::sync::Mutex::new(std::time::Instant::now()),
                polling: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Marks the service in use, and starts the asking task if it does not run.
    fn demand(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        *self
            .inner
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        if !self.inner.polling.swap(true, SeqCst) {
            // A fresh answer, not the one from before the pause.
            self.inner.status.send_replace(None);
            tokio::spawn(poll_health(self.inner.clone()));
        }
    }
}

/// Asks once a second until the service has not been used for a while.
async fn poll_health(inner: Arc<HealthInner>) {
    use std::sync::atomic::Ordering::SeqCst;
    loop {
        let now = serving_status(&inner.state).await;
        inner.status.send_if_modified(|s| {
            let changed = *s != Some(now);
            *s = Some(now);
            changed
        });
        tokio::time::sleep(HEALTH_EVERY).await;
        if !inner.in_use() {
            inner.polling.store(false, SeqCst);
            // A call that came meanwhile saw this task running and started none: go on for it
            // (unless it started one after all).
            if !inner.in_use() || inner.polling.swap(true, SeqCst) {
                return;
            }
        }
    }
}

type ServingStatus = tonic_health::pb::health_check_response::ServingStatus;

fn known(service: &str) -> bool {
    service.is_empty() || service == pb::ingest_server::SERVICE_NAME
}

async fn serving_status(state: &AppState) -> ServingStatus {
    if crate::http::check_ready(state).await.is_ok() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn health_response(status: ServingStatus) -> tonic_health::pb::HealthCheckResponse {
    tonic_health::pb::HealthCheckResponse {
        status: status as i32,
    }
}

type HealthStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<tonic_health::pb::HealthCheckResponse, Status>>
            + Send
            + 'static,
    >,
>;

/// Waits for the server's shutdown (forever without one).
async fn stopped(stop: &Option<pitboss_runtime::Shutdown>) {
    match stop {
        Some(stop) => stop.wait().await,
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<tonic_health::pb::HealthCheckResponse>, Status> {
        if !known(&request.get_ref().service) {
            return Err(Status::not_found("unknown service"));
        }
        self.demand();
        let mut rx = self.inner.status.subscribe();
        let status = match tokio::time::timeout(FIRST_ANSWER, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.unwrap_or(ServingStatus::NotServing),
            _ => ServingStatus::NotServing,
        };
        Ok(Response::new(health_response(status)))
    }

    type WatchStream = HealthStream;

    /// The status now, then each change, until the client leaves or the server shuts down
    /// (then `NOT_SERVING` and the end).
    async fn watch(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        use futures::StreamExt as _;
        let permit = self
            .inner
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many health watchers"))?;
        let stop = request
            .extensions()
            .get::<pitboss_runtime::Shutdown>()
            .cloned();
        if !known(&request.get_ref().service) {
            // The protocol: SERVICE_UNKNOWN, and the call stays open (here until shutdown).
            let unknown =
                futures::stream::once(async { Ok(health_response(ServingStatus::ServiceUnknown)) })
                    .chain(
                        futures::stream::once(async move {
                            stopped(&stop).await;
                            drop(permit);
                        })
                        .filter_map(|()| async {
                            None::<Result<tonic_health::pb::HealthCheckResponse, Status>>
                        }),
                    );
            return Ok(Response::new(Box::pin(unknown)));
        }
        self.demand();
        let rx = self.inner.status.subscribe();
        let changes = futures::stream::unfold(
            Some((rx, stop, permit, None::<ServingStatus>)),
            |at| async move {
                let (mut rx, stop, permit, last) = at?;
                loop {
                    let now = *rx.borrow_and_update();
                    if let Some(now) = now
                        && Some(now) != last
                    {
                        return Some((
                            Ok(health_response(now)),
                            Some((rx, stop, permit, Some(now))),
                        ));
                    }
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        () = stopped(&stop) => {
                            // Draining: say so (unless already said), then end.
                            return (last != Some(ServingStatus::NotServing)).then(|| {
                                (Ok(health_response(ServingStatus::NotServing)), None)
                            });
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(changes)))
    }
}

/// The gRPC reflection service's contents: the contract and the health service. The contract
/// is public (it is in the repository), so reflection needs no key, like the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pitboss_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// `grpc.reflection.v1`: what `grpcurl` and other tools ask for the services and messages
/// without the .proto files.
fn reflection_v1() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    reflection()
        .build_v1()
        .expect("the contract's descriptor set, checked by a test")
}

/// The same in the older `grpc.reflection.v1alpha`, which some tools still ask first.
fn reflection_v1alpha() -> tonic_reflection::server::v1alpha::ServerReflectionServer<
    impl tonic_reflection::server::v1alpha::ServerReflection,
> {
    reflection()
        .build_v1alpha()
        .expect("the contract's descriptor set, checked by a test")
}

/// The gRPC routes, to merge into the HTTP router (one port serves both; gRPC needs HTTP/2):
/// the ingest, health and reflection services.
pub fn routes(state: AppState) -> axum::Router {
    let max = state.config.max_body_bytes;
    let batch_limit = pitboss_proto::codec::BatchLimit {
        max_events: state.config.core.max_events,
        refuse: |count, limit| {
            status(IngestError::Request(
                crate::core::RequestError::TooManyEvents { count, limit },
            ))
        },
    };
    let auth = state.auth.clone();
    let budget = state.body_budget.clone();
    let stall_ms = state.config.header_read_timeout_ms;
    tonic::service::Routes::new(
        pb::ingest_server::IngestServer::new(IngestService::new(state.clone()))
            .max_decoding_message_size(max),
    )
    // A health request is a service name, a reflection request a symbol or file name: a
    // small bound (tonic's reflection echoes an unknown symbol in its error).
    .add_service(
        tonic_health::pb::health_server::HealthServer::new(HealthService::new(state))
            .max_decoding_message_size(MAX_TOOL_MESSAGE),
    )
    .add_service(reflection_v1().max_decoding_message_size(MAX_TOOL_MESSAGE))
    .add_service(reflection_v1alpha().max_decoding_message_size(MAX_TOOL_MESSAGE))
    .into_axum_router()
    .layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            // The key before the body (docs/api.md): a call without a valid one is
            // UNAUTHENTICATED whatever it sends, and nothing of its message is read or
            // decoded (tonic reads it before a method could look at the key).
            let ingest = request.uri().path().starts_with("/pitboss.v1.Ingest/");
            let tenant = if ingest {
                api_key(|name| request.headers().get(name).and_then(|v| v.to_str().ok()))
                    .and_then(|k| auth.tenant(k))
                    .map(str::to_owned)
            } else {
                None
            };
            let refused = ingest && tenant.is_none();
            let budget = budget.clone();
            async move {
                if refused {
                    return status(IngestError::Unauthorized).into_http();
                }
                // An ingest call's bytes are charged to the process's budget as they are read
                // (a unary call holds them until its answer; a stream gives them back after
                // each batch).
                let held = crate::budget::Held::default();
                let request = if ingest {
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(held.clone());
                    let body = budget.body(body, tenant.unwrap_or_default(), held.clone());
                    axum::extract::Request::from_parts(parts, body)
                } else {
                    request
                };
                let limit = if request.uri().path().starts_with("/grpc.") {
                    MAX_TOOL_MESSAGE
                } else {
                    max
                };
                // A batch of more events than a request may hold is refused before it is
                // decoded (`pitboss_proto::codec`), as an HTTP body is before its events are.
                let response = pitboss_proto::codec::BATCH_LIMIT
                    .scope(batch_limit, next.run(request))
                    .await;
                let answered = response
                    .headers()
                    .get(pitboss_proto::codec::ERROR_CODE_METADATA)
                    .is_some_and(|c| {
                        c.as_bytes() == b"overloaded" || c.as_bytes() == b"body_timeout"
                    });
                if (held.refused() || held.stalled())
                    && response.headers().contains_key("grpc-status")
                    && !answered
                {
                    // tonic read the message and failed on the body's error before the method
                    // ran (a unary call): the documented answer instead of its own. (A stream's
                    // method answers it itself, with the batches it wrote.)
                    let why = match held.refusal() {
                        Some(why) => IngestError::Overloaded(why),
                        None => IngestError::BodyTimeout { after_ms: stall_ms },
                    };
                    return status(why).into_http();
                }
                too_large(response, limit)
            }
        },
    ))
    // tonic's fallback answers every unknown path with HTTP 200 + grpc-status 12; REST clients
    // (and scanners) must see a 404 instead.
    .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
}

/// The bound on a message to the health and reflection services (`/grpc.*`), bytes.
pub const MAX_TOOL_MESSAGE: usize = 64 * 1024;

/// tonic refuses a message over `max_decoding_message_size` with OUT_OF_RANGE before any
/// handler sees it; the documented answer (docs/api.md) is RESOURCE_EXHAUSTED `body_too_large`,
/// as for HTTP, with the bound of the service asked (the ingest's `max_body_bytes`, or
/// [`MAX_TOOL_MESSAGE`] for health and reflection). Nothing else here answers OUT_OF_RANGE, so
/// every such answer is that one.
fn too_large(mut response: axum::response::Response, limit: usize) -> axum::response::Response {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
    {
        let status = status(IngestError::BodyTooLarge { limit });
        let fields = [
            ("grpc-status", (status.code() as i32).to_string()),
            ("grpc-message", status.message().to_owned()),
            (
                pitboss_proto::codec::ERROR_CODE_METADATA,
                status
                    .metadata()
                    .get(pitboss_proto::codec::ERROR_CODE_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            ),
        ];
        for (name, value) in fields {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    response
}
