//! The sockets: `GET /v1/ws` (WebSocket, protocol v1), `POST /v1/publish` (an operator's push,
//! through the bus like any push), and the admin listener (`/healthz`, `/readyz` — ready once
//! the feeds have rebuilt the history, 503 while draining —, `/metrics`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pitboss_bus::{OutRecord, Publisher};
use pitboss_model::Timestamp;
use pitboss_model::live::{
    AlertAck, ChannelName, Delivery, LiveMessage, MessageType, OperatorSource, Push, PushSource,
    Target,
};
use pitboss_runtime::http::WsBroken;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::auth::{AuthError, Claims, Role, Verifier};
use crate::feed::lock;
use crate::hub::{AckSeen, ConnId, Entry, Hub, Out};
use crate::protocol::{
    ClientMessage, MAX_CLIENT_FRAME, PROTOCOL_VERSION, ProtocolError, ServerFrame, close,
    parse_client,
};
use crate::receipts::Receipts;
use crate::stats::{NotifyLatency, StatsSource};

/// Tuning of the socket side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This instance's name (in `welcome`).
    pub gateway_id: String,
    /// Frames queued for one connection before it is closed as a slow consumer (4008).
    pub queue_capacity: usize,
    /// A WebSocket ping this often…
    pub ping_interval: Duration,
    /// …and a connection from which nothing came for this long is closed (1001).
    pub idle_timeout: Duration,
    /// A write to a socket that takes longer than this closes it.
    pub write_timeout: Duration,
    /// Requests a connection may send per second (and in a burst); past it, `rate_limited`.
    pub requests_per_second: u32,
    pub requests_burst: u32,
    /// Error answers a connection may provoke before it is closed (1008).
    pub max_errors: u32,
    /// Topic operator pushes go to, and acks.
    pub pushes_topic: String,
    pub acks_topic: String,
    /// Operator pushes a tenant may publish per second through this instance (`POST
    /// /v1/publish`, each push of an array counted)…
    pub publish_per_second: u32,
    /// …and in a burst (at least one full array, [`MAX_PUBLISH_BATCH`]).
    pub publish_burst: u32,
    /// How long a `POST /v1/publish` body may take to arrive, whole (then `408
    /// body_timeout`).
    pub publish_body_timeout: Duration,
    /// Sockets one subject (a tenant's player or operator) may hold at once on this instance;
    /// one more is refused `429 too_many_connections`. Without it one token could take every
    /// place under `--max-connections`, each replaying and queueing.
    pub max_connections_per_subject: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            gateway_id: "gateway".into(),
            queue_capacity: 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            requests_per_second: 20,
            requests_burst: 100,
            max_errors: 50,
            pushes_topic: Push::TOPIC.into(),
            acks_topic: AlertAck::TOPIC.into(),
            publish_per_second: 1_000,
            publish_burst: 10_000,
            publish_body_timeout: Duration::from_secs(10),
            max_connections_per_subject: 32,
        }
    }
}

/// Sockets held per subject ([`ServerConfig::max_connections_per_subject`]).
#[derive(Debug, Default)]
pub struct SubjectCounts(Mutex<HashMap<SubjectKey, usize>>);

/// A subject: its tenant and `sub`.
type SubjectKey = (Arc<str>, Arc<str>);

/// A subject's place among its sockets, given back when dropped.
#[derive(Debug)]
struct SubjectSlot {
    counts: Arc<SubjectCounts>,
    key: SubjectKey,
}

impl SubjectCounts {
    /// A place for one more socket of `sub` in `tenant`, unless it holds `max` already.
    fn take(self: &Arc<Self>, tenant: &str, sub: &str, max: usize) -> Option<SubjectSlot> {
        let key: SubjectKey = (tenant.into(), sub.into());
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SubjectSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Sockets `sub` of `tenant` holds.
    pub fn held(&self, tenant: &str, sub: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(Arc::from(tenant), Arc::from(sub)))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut o) = counts.entry(self.key.clone()) {
            *o.get_mut() -= 1;
            if *o.get() == 0 {
                o.remove();
            }
        }
    }
}

/// Shared state of the gateway's handlers.
#[derive(Clone)]
pub struct GatewayState {
    pub hub: Arc<Mutex<Hub>>,
    pub verifier: Verifier,
    pub publisher: Arc<dyn Publisher>,
    pub config: Arc<ServerConfig>,
    pub ready: watch::Receiver<bool>,
    pub shutdown: pitboss_runtime::Shutdown,
    next_conn: Arc<AtomicU64>,
    /// Sessions running (upgraded sockets are not tracked by the HTTP server's drain).
    sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// Time to notify per tenant, for the console (`/v1/stats`).
    pub latency: Arc<NotifyLatency>,
    /// Where the tenant's traffic figures come from (the embedded store in `pitboss up`).
    pub stats: Option<Arc<dyn StatsSource>>,
    /// Delivery receipts onto the `deliveries` topic.
    pub receipts: Receipts,
    /// Presence on the other instances.
    pub cluster: Arc<Mutex<crate::presence::Cluster>>,
    /// The presence publisher, awaited on shutdown (it says `gone`).
    pub presence_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Connection ids are `<gateway>-<boot>-<n>`: `boot` (this start's time, base 36) keeps
    /// them unique across restarts, so receipts of two runs never collide.
    boot: Arc<str>,
    /// Operator pushes per tenant (`publish_per_second`, `publish_burst`).
    publish_limit: Arc<governor::DefaultKeyedRateLimiter<String>>,
    /// Sockets held per subject.
    pub subjects: Arc<SubjectCounts>,
    /// Where changes to lists and snoozes are made (`POST /v1/lists/…`, `/v1/snoozes`), when
    /// the gateway runs beside the rules: `pitboss up --rules DIR`, `pitboss gateway --rules
    /// DIR`.
    pub rules: Option<Arc<dyn crate::rules::RulesAdmin>>,
    /// Those changes per tenant ([`crate::rules::RULES_CHANGES_PER_MINUTE`]).
    pub(crate) rules_limit: Arc<governor::DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    pub fn new(
        hub: Arc<Mutex<Hub>>,
        verifier: Verifier,
        publisher: Arc<dyn Publisher>,
        config: ServerConfig,
        ready: watch::Receiver<bool>,
        shutdown: pitboss_runtime::Shutdown,
        receipts: Receipts,
    ) -> Self {
        let gateway_id = config.gateway_id.clone();
        let boot = base36(Timestamp::now().as_millis().max(0) as u64);
        let publish_limit = RateLimiter::keyed(
            Quota::per_second(
                std::num::NonZeroU32::new(config.publish_per_second.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )
            .allow_burst(
                std::num::NonZeroU32::new(config.publish_burst.max(MAX_PUBLISH_BATCH as u32))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            ),
        );
        GatewayState {
            hub,
            verifier,
            publisher,
            config: Arc::new(config),
            ready,
            shutdown,
            next_conn: Arc::new(AtomicU64::new(1)),
            sessions: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            latency: Arc::new(NotifyLatency::default()),
            stats: None,
            receipts,
            cluster: Arc::new(Mutex::new(crate::presence::Cluster::new(
                &gateway_id,
                &boot,
                15_000,
            ))),
            presence_task: Arc::new(Mutex::new(None)),
            boot: boot.into(),
            publish_limit: Arc::new(publish_limit),
            subjects: Arc::default(),
            rules: None,
            rules_limit: Arc::new(RateLimiter::keyed(
                Quota::per_minute(
                    std::num::NonZeroU32::new(crate::rules::RULES_CHANGES_PER_MINUTE)
                        .unwrap_or(std::num::NonZeroU32::MIN),
                )
                .allow_burst(std::num::NonZeroU32::new(10).unwrap_or(std::num::NonZeroU32::MIN)),
            )),
        }
    }

    /// This start of the instance (base 36 ms), part of its connection ids.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// Adds the source of the tenant's traffic figures `/v1/stats` answers with.
    pub fn with_stats(mut self, source: Arc<dyn StatsSource>) -> Self {
        self.stats = Some(source);
        self
    }

    /// Lets operators change the lists and snoozes of the rules the engine runs (`POST
    /// /v1/lists/…`, `/v1/snoozes`).
    pub fn with_rules(mut self, admin: Arc<dyn crate::rules::RulesAdmin>) -> Self {
        self.rules = Some(admin);
        self
    }
}

pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The public router: `/v1/ws`, `/v1/publish`, `/v1/stats`, `/v1/lists/{list}/add|remove`,
/// `/v1/snoozes` and the operator console (`/console`).
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/v1/publish", post(publish))
        .route("/v1/stats", get(stats))
        .route("/v1/lists/{list}/{action}", post(crate::rules::change_list))
        .route("/v1/snoozes", post(crate::rules::snooze))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
        .merge(crate::console::router())
}

/// The admin router: `/metrics`, `/healthz`, and `/readyz` (200 once every feed has caught up,
/// 503 before and while draining).
pub fn admin_router(
    state: GatewayState,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    pitboss_runtime::admin::metrics_router(metrics).route(
        "/readyz",
        get(move || {
            let (ready, draining) = (*state.ready.borrow(), state.shutdown.is_triggered());
            async move {
                match (ready, draining) {
                    (_, true) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "catching up"),
                    (true, false) => (StatusCode::OK, "ready"),
                }
            }
        }),
    )
}

/// The claims of an operator's `Authorization: Bearer` token; else the answer: `401 token_*`,
/// or `403 forbidden` saying `only` (a player's token).
pub(crate) fn operator(
    st: &GatewayState,
    headers: &HeaderMap,
    only: &str,
) -> Result<crate::auth::Claims, Box<Response>> {
    let claims = token(headers, &TokenQuery { token: None })
        .and_then(|t| st.verifier.verify(t))
        .map_err(|e| Box::new(auth_error(&e)))?;
    if claims.role != Role::Operator {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            only,
        )));
    }
    Ok(claims)
}

/// An operator request's whole body within `publish_body_timeout`, at most `max` bytes; else
/// the answer, in the JSON form of every other (axum's own are plain text): `413 too_large`
/// saying `too_large`, `400 malformed`, `408 body_timeout` (nothing was `done`).
pub(crate) async fn read_body(
    st: &GatewayState,
    body: axum::body::Body,
    max: usize,
    too_large: &str,
    done: &str,
) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(
        st.config.publish_body_timeout,
        axum::body::to_bytes(body, max),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if pitboss_runtime::http::caused_by::<http_body_util::LengthLimitError>(&e) => {
            Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                too_large,
            ))
        }
        Ok(Err(e)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("the body could not be read: {e}"),
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} ms; nothing was {done}",
                st.config.publish_body_timeout.as_millis()
            ),
        )),
    }
}

/// `{"error":{"code","message"}}` with a status.
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message.to_string()}})),
    )
        .into_response()
}

fn auth_error(e: &AuthError) -> Response {
    error_response(StatusCode::UNAUTHORIZED, e.code(), e)
}

/// The WebSocket subprotocol the gateway speaks, selected when a client offers it (a browser
/// that offers subprotocols needs one selected).
pub const SUBPROTOCOL: &str = "pitboss.v1";

/// A client offering `pitboss.token.<jwt>` among its subprotocols sends its token that way: a
/// browser cannot set headers on a WebSocket, and a token in the URL's query is written to the
/// access logs of whatever proxy or load balancer records URLs (an AWS ALB's do).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "pitboss.token.";

/// The token a request offers as a subprotocol ([`TOKEN_SUBPROTOCOL_PREFIX`]).
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
}

/// The bearer token of a request, the one it offers as a subprotocol, or its `token` query
/// parameter, in that order.
fn token<'a>(headers: &'a HeaderMap, query: &'a TokenQuery) -> Result<&'a str, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Malformed)?;
        return pitboss_runtime::http::bearer(v).ok_or(AuthError::Malformed);
    }
    if let Some(t) = subprotocol_token(headers) {
        return Ok(t);
    }
    query.token.as_deref().ok_or(AuthError::Missing)
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn ws(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    slot: Option<axum::Extension<pitboss_runtime::http::ConnSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if st.shutdown.is_triggered() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the gateway is restarting: connect to another instance",
        );
    }
    let claims = match token(&headers, &query).and_then(|t| st.verifier.verify(t)) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("pitboss_gateway_auth_failures_total", "code" => e.code())
                .increment(1);
            return auth_error(&e);
        }
    };
    let max = st.config.max_connections_per_subject.max(1);
    let Some(place) = st.subjects.take(&claims.tenant, &claims.sub, max) else {
        metrics::counter!("pitboss_gateway_connections_refused_total", "reason" => "per_subject")
            .increment(1);
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!(
                "{} already holds {max} connections to this gateway, the most one subject may: close one first",
                claims.sub
            ),
        );
    };
    upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        // tungstenite's default buffers (128 KiB each) would make an idle connection cost
        // over 100 KB. The read buffer is allocated up front: 1 KiB holds any subscribe or
        // ack, and a larger frame reserves its own length (docs/benchmarks.md: 11.7 -> 8.6 KB
        // per idle connection against 4 KiB). The write buffer grows only when written to.
        .read_buffer_size(1024)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            // The socket counts under `--max-connections` and its subject's limit while it
            // lives.
            let _slot = slot;
            let _place = place;
            session(st, claims, socket).await;
        })
}

/// Why a session ended, and what to tell the client.
struct End {
    code: u16,
    reason: String,
}

async fn session(st: GatewayState, claims: Claims, socket: WebSocket) {
    let conn: ConnId = st.next_conn.fetch_add(1, Ordering::Relaxed);
    let _running = Running::start(&st.sessions);
    // flume allocates its queue on first use (tokio's mpsc allocates a 32-slot block per
    // channel up front): an idle connection costs less (docs/benchmarks.md).
    let (tx, rx) = flume::bounded::<Out>(st.config.queue_capacity.max(1));
    let (kill_tx, mut kill_rx) = oneshot::channel::<(u16, String)>();
    // Answers that finish later (an ack stored on the bus) are queued behind the messages.
    let own = tx.clone();
    let listed = claims.role == crate::auth::Role::Player;
    lock(&st.hub).register(conn, &claims.sub, listed, tx, kill_tx);
    let (mut sink, mut stream) = socket.split();
    let mut claims = claims;
    let connection_id: Arc<str> = format!("{}-{}-{conn}", st.config.gateway_id, st.boot).into();
    let welcome = ServerFrame::Welcome {
        protocol: PROTOCOL_VERSION,
        gateway: st.config.gateway_id.clone(),
        connection: connection_id.to_string(),
        tenant: claims.tenant.clone(),
        subject: claims.sub.clone(),
        role: claims.role.as_str(),
        expires_at: claims.exp,
    };
    let mut conn_state = ConnState {
        limiter: RateLimiter::direct(
            Quota::per_second(
                std::num::NonZeroU32::new(st.config.requests_per_second.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )
            .allow_burst(
                std::num::NonZeroU32::new(st.config.requests_burst.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            ),
        ),
        errors: 0,
        limited: 0,
        limited_since: std::time::Instant::now(),
    };
    let write_timeout = st.config.write_timeout;
    let mut ready = st.ready.clone();
    let end: Option<End> = 'session: {
        if send_text(&mut sink, welcome.to_text().into(), write_timeout)
            .await
            .is_err()
        {
            break 'session None;
        }
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + st.config.ping_interval,
            st.config.ping_interval,
        );
        let mut last_seen = Instant::now();
        let expiry = tokio::time::sleep(claims.expires_in());
        tokio::pin!(expiry);
        // The idle timeout, to the millisecond after the last frame (checking it at the ping
        // ticks closed a silent connection up to one ping interval late: at 75 s, not 60). A
        // frame does not move the timer (that would cost a timer update per frame); when it
        // fires on a connection that spoke meanwhile it is set again from the last frame.
        let idle = tokio::time::sleep(st.config.idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = st.shutdown.wait() => {
                    let frame = ServerFrame::Reconnect { reason: "the gateway is restarting".into() };
                    let _ = send_text(&mut sink, frame.to_text().into(), write_timeout).await;
                    break 'session Some(End { code: close::RESTART, reason: "gateway restarting: reconnect".into() });
                }
                killed = &mut kill_rx => {
                    let (code, reason) = killed.unwrap_or((close::SLOW_CONSUMER, "closed".into()));
                    break 'session Some(End { code, reason });
                }
                () = &mut expiry => {
                    let frame = ServerFrame::Error(ProtocolError::new("token_expired", "the token expired: connect again with a fresh one (refresh before expires_at)"));
                    let _ = send_text(&mut sink, frame.to_text().into(), write_timeout).await;
                    break 'session Some(End { code: close::TOKEN_EXPIRED, reason: "token expired".into() });
                }
                out = rx.recv_async() => {
                    let Ok(out) = out else { break 'session None };
                    // A peer that does not read blocks the write: the hub's verdict (slow
                    // consumer) ends it rather than the write timeout.
                    tokio::select! {
                        written = write_queued(&mut sink, out, &rx, write_timeout, Written { st: &st, claims: &claims, connection_id: &connection_id }) => {
                            if written.is_err() {
                                break 'session None;
                            }
                        }
                        killed = &mut kill_rx => {
                            let (code, reason) = killed.unwrap_or((close::SLOW_CONSUMER, "closed".into()));
                            break 'session Some(End { code, reason });
                        }
                    }
                }
                incoming = stream.next() => {
                    last_seen = Instant::now();
                    match incoming {
                        None => break 'session None,
                        Some(Ok(Message::Close(_))) => {
                            // The library queued the close reply: send it, so the client's
                            // close is clean.
                            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                            break 'session None;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(conn, error = %e, "websocket read failed");
                            break 'session match pitboss_runtime::http::ws_broken(&e) {
                                None => None,
                                Some(WsBroken::TooBig) => Some(End { code: close::TOO_BIG, reason: format!("frame larger than {MAX_CLIENT_FRAME} bytes") }),
                                Some(WsBroken::NotUtf8) => Some(End { code: close::NOT_UTF8, reason: "a text frame that is not UTF-8".into() }),
                                Some(WsBroken::Protocol(what)) => Some(End { code: close::PROTOCOL, reason: format!("protocol error: {what}") }),
                            };
                        }
                        Some(Ok(Message::Text(t))) => {
                            let is_ready = *ready.borrow_and_update();
                            let replies = handle(&st, conn, &own, &mut claims, &mut conn_state, is_ready, &mut ready, t.as_str()).await;
                            // A refresh may have moved the expiry.
                            expiry.as_mut().reset(tokio::time::Instant::now() + claims.expires_in());
                            for text in replies {
                                if send_text(&mut sink, text.into(), write_timeout).await.is_err() {
                                    break 'session None;
                                }
                            }
                            if conn_state.errors > st.config.max_errors
                                || conn_state.limited > st.config.max_errors.saturating_mul(10)
                            {
                                let reason = if conn_state.errors > st.config.max_errors {
                                    "too many invalid requests"
                                } else {
                                    "flooding: too many requests past the rate limit"
                                };
                                break 'session Some(End { code: close::POLICY, reason: reason.into() });
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            conn_state.errors += 1;
                            let frame = ServerFrame::Error(ProtocolError::new("binary_not_supported", "send JSON text frames"));
                            if send_text(&mut sink, frame.to_text().into(), write_timeout).await.is_err() {
                                break 'session None;
                            }
                        }
                        Some(Ok(_)) => {} // pings (answered by the library) and pongs
                    }
                }
                () = &mut idle => {
                    if last_seen.elapsed() >= st.config.idle_timeout {
                        break 'session Some(End { code: close::IDLE, reason: "idle: nothing received within the idle timeout".into() });
                    }
                    idle.as_mut().reset(tokio::time::Instant::from_std(last_seen + st.config.idle_timeout));
                }
                _ = ping.tick() => {
                    if tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                        break 'session None;
                    }
                }
            }
        }
    };
    lock(&st.hub).unregister(conn);
    if let Some(End { code, reason }) = end {
        metrics::counter!("pitboss_gateway_closes_total", "code" => code.to_string()).increment(1);
        // A slow consumer's close frame waits behind what the socket already holds: it goes
        // out (and its answer comes back) only as the client reads that, so it gets the write
        // timeout rather than a second — a client that paused a moment learns it was too slow
        // (4008) instead of seeing the connection drop (1006).
        // The queue's frames (and the history entries they hold) are not sent now.
        drop(rx);
        let slow = code == close::SLOW_CONSUMER;
        let patience = if slow {
            write_timeout
        } else {
            Duration::from_secs(1)
        };
        let linger = async {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
            // Read on until the client answers the close: closing while its frames are still
            // arriving would reset the connection and lose the close frame.
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        };
        // One deadline for both; a slow consumer's wait ends within a second of a shutdown
        // (the drain does not wait on a client that does not read).
        let deadline = tokio::time::Instant::now() + patience;
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, linger) => {}
            () = async {
                st.shutdown.wait().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }, if slow => {}
        }
    }
}

struct ConnState {
    limiter: DefaultDirectRateLimiter,
    errors: u32,
    /// `rate_limited` answers, counted apart: a burst a client retries (an "acknowledge all")
    /// is not an invalid request; only ten times `max_errors` of them within
    /// [`LIMITED_WINDOW`] close the connection (a flood), never the sum of a long session.
    limited: u32,
    limited_since: std::time::Instant,
}

/// The span over which `rate_limited` answers are counted towards closing a connection.
const LIMITED_WINDOW: Duration = Duration::from_secs(10);

type WsSink = futures::stream::SplitSink<WebSocket, Message>;

async fn send_text(sink: &mut WsSink, text: crate::hub::Text, timeout: Duration) -> Result<(), ()> {
    match tokio::time::timeout(timeout, sink.send(Message::Text(text))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Most queued frames written with one flush.
const MAX_COALESCED: usize = 64;

/// Who a socket's frames are written for: for time-to-notify and receipts.
#[derive(Clone, Copy)]
struct Written<'a> {
    st: &'a GatewayState,
    claims: &'a Claims,
    connection_id: &'a Arc<str>,
}

/// Writes `first` and whatever else is queued already (up to [`MAX_COALESCED`] frames) with one
/// flush: under a broadcast a socket's queue holds several frames, and they go out in a few
/// writes (tungstenite's 4 KiB write buffer) instead of one system call each. Once flushed,
/// live messages are timed, and live and replayed ones receipted.
async fn write_queued(
    sink: &mut WsSink,
    first: Out,
    rx: &flume::Receiver<Out>,
    timeout: Duration,
    to: Written<'_>,
) -> Result<(), ()> {
    let mut live: Vec<Arc<Entry>> = Vec::new();
    let mut replayed: Vec<Arc<Entry>> = Vec::new();
    let write = async {
        let mut next = Some(first);
        let mut fed = 0usize;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(t) => sink.feed(Message::Text(t)).await.map_err(|_| ())?,
                Out::Batch {
                    frames,
                    replayed: messages,
                } => {
                    for m in &messages {
                        sink.feed(Message::Text(m.replay_frame()))
                            .await
                            .map_err(|_| ())?;
                    }
                    for t in frames {
                        sink.feed(Message::Text(t)).await.map_err(|_| ())?;
                    }
                    metrics::counter!("pitboss_gateway_messages_replayed_total")
                        .increment(messages.len() as u64);
                    replayed.extend(messages);
                }
                Out::Live { text, message } => {
                    sink.feed(Message::Text(text)).await.map_err(|_| ())?;
                    live.push(message);
                }
            }
            fed += 1;
            if fed < MAX_COALESCED {
                next = rx.try_recv().ok();
            }
        }
        sink.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| ())??;
    if live.is_empty() && replayed.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now().as_millis();
    let tenant = &to.claims.tenant;
    let (mut alerts, mut pushes, mut late_alerts, mut late_pushes) = (0u64, 0u64, 0u64, 0u64);
    for m in &live {
        let ms = (now - m.received_at_ms()).max(0);
        let late = u64::from(ms > crate::NOTIFY_OBJECTIVE_MS);
        let kind = match m.kind() {
            MessageType::Alert => {
                alerts += 1;
                late_alerts += late;
                "alert"
            }
            MessageType::Push => {
                pushes += 1;
                late_pushes += late;
                "push"
            }
        };
        metrics::histogram!("pitboss_time_to_notify_seconds", "kind" => kind)
            .record(ms as f64 / 1000.0);
        to.st.latency.record(tenant, ms, now);
    }
    for (kind, n, late) in [
        ("alert", alerts, late_alerts),
        ("push", pushes, late_pushes),
    ] {
        if n > 0 {
            metrics::counter!("pitboss_gateway_messages_delivered_total", "kind" => kind)
                .increment(n);
        }
        if late > 0 {
            metrics::counter!("pitboss_gateway_messages_late_total", "kind" => kind)
                .increment(late);
        }
    }
    let receipts = &to.st.receipts;
    let tagged = live
        .iter()
        .map(|m| (m, false))
        .chain(replayed.iter().map(|m| (m, true)));
    for (m, was_replayed) in tagged {
        if !receipts.covers(m.channel()) {
            continue;
        }
        receipts.record(Delivery {
            message_type: m.kind(),
            message_id: m.id().to_owned(),
            tenant_id: tenant.clone(),
            channel: m.channel().to_owned(),
            subscriber: to.claims.sub.clone(),
            gateway_id: to.st.config.gateway_id.clone(),
            connection_id: to.connection_id.to_string(),
            delivered_at: Timestamp::from_millis(now),
            received_at: Timestamp::from_millis(m.received_at_ms()),
            replayed: was_replayed,
        });
    }
    Ok(())
}

/// Handles one request; the answer to write, if it is not queued through the hub.
#[allow(clippy::too_many_arguments)]
async fn handle(
    st: &GatewayState,
    conn: ConnId,
    own: &flume::Sender<Out>,
    claims: &mut Claims,
    cs: &mut ConnState,
    is_ready: bool,
    ready: &mut watch::Receiver<bool>,
    text: &str,
) -> Vec<String> {
    let msg = match parse_client(text) {
        Ok(m) => m,
        Err(e) => {
            cs.errors += 1;
            return vec![ServerFrame::Error(e).to_text()];
        }
    };
    let id = msg.id().cloned();
    if cs.limiter.check().is_err() {
        if cs.limited_since.elapsed() > LIMITED_WINDOW {
            cs.limited = 0;
            cs.limited_since = std::time::Instant::now();
        }
        cs.limited += 1;
        return vec![
            ServerFrame::Error(
                ProtocolError::new(
                    "rate_limited",
                    format!(
                        "at most {} requests per second",
                        st.config.requests_per_second
                    ),
                )
                .for_request(id.as_ref()),
            )
            .to_text(),
        ];
    }
    let fail = |cs: &mut ConnState, e: ProtocolError| {
        // The client's faults count toward the close; the server's (a closed connection) not.
        if e.code != "closed" {
            cs.errors += 1;
        }
        vec![ServerFrame::Error(e.for_request(id.as_ref())).to_text()]
    };
    match msg {
        ClientMessage::Ping { id } => vec![ServerFrame::Pong { id }.to_text()],
        ClientMessage::Subscribe { id, channel, since } => {
            let parsed = match ChannelName::parse(&channel, "channel") {
                Ok(c) => c,
                Err(v) => return fail(cs, ProtocolError::new("invalid_channel", v.message)),
            };
            if !claims.may_subscribe(&parsed) {
                return fail(
                    cs,
                    ProtocolError::new("forbidden", format!("the token does not allow {channel}")),
                );
            }
            if !is_ready {
                // The history is still being rebuilt from the bus: answer once it is, so a
                // resume is complete.
                let _ = ready.wait_for(|r| *r).await;
            }
            let now = Timestamp::now().as_millis();
            match lock(&st.hub).subscribe(conn, &parsed, since.as_deref(), id.clone(), now) {
                Ok(_) => Vec::new(),
                Err(e) => fail(cs, e),
            }
        }
        ClientMessage::Unsubscribe { id, channel } => {
            if lock(&st.hub).unsubscribe(conn, &channel) {
                vec![
                    ServerFrame::Unsubscribed {
                        id,
                        channel,
                        reason: None,
                    }
                    .to_text(),
                ]
            } else {
                fail(
                    cs,
                    ProtocolError::new("not_subscribed", format!("not subscribed to {channel}")),
                )
            }
        }
        ClientMessage::Presence { id, channel } => {
            let parsed = match ChannelName::parse(&channel, "channel") {
                Ok(c) => c,
                Err(v) => return fail(cs, ProtocolError::new("invalid_channel", v.message)),
            };
            if !matches!(parsed, ChannelName::Room { .. }) || !claims.may_subscribe(&parsed) {
                return fail(
                    cs,
                    ProtocolError::new(
                        "forbidden",
                        format!(
                            "presence of {channel} is not allowed: rooms the token allows only"
                        ),
                    ),
                );
            }
            let now = Timestamp::now().as_millis();
            let local = lock(&st.hub).presence(&channel);
            let (connections, subjects, gateways) =
                crate::presence::merged(local, &st.cluster, &channel, now);
            vec![
                ServerFrame::Presence {
                    id,
                    channel,
                    connections,
                    subjects,
                    gateways,
                }
                .to_text(),
            ]
        }
        ClientMessage::Refresh { id, token } => match st.verifier.verify(&token) {
            Ok(new) => {
                if new.tenant != claims.tenant {
                    return fail(
                        cs,
                        ProtocolError::new(
                            "token_mismatch",
                            AuthError::Mismatch("tenant").to_string(),
                        ),
                    );
                }
                if new.sub != claims.sub || new.role != claims.role {
                    return fail(
                        cs,
                        ProtocolError::new(
                            "token_mismatch",
                            AuthError::Mismatch("subject or role").to_string(),
                        ),
                    );
                }
                let expires_at = new.exp;
                *claims = new;
                // Rooms the new token no longer allows are left.
                let mut hub = lock(&st.hub);
                let mut frames = Vec::new();
                for ch in hub.subscriptions(conn) {
                    if ChannelName::parse(&ch, "channel").is_ok_and(|c| !claims.may_subscribe(&c)) {
                        hub.unsubscribe(conn, &ch);
                        frames.push(ServerFrame::Unsubscribed {
                            id: None,
                            channel: ch,
                            reason: Some("the refreshed token does not allow it".into()),
                        });
                    }
                }
                drop(hub);
                frames.push(ServerFrame::Refreshed { id, expires_at });
                frames.iter().map(ServerFrame::to_text).collect()
            }
            Err(e) => fail(cs, ProtocolError::new(e.code(), e.to_string())),
        },
        ClientMessage::Ack {
            id,
            alert_id,
            outcome,
            note,
            ack_id,
        } => {
            if claims.role != Role::Operator {
                return fail(
                    cs,
                    ProtocolError::new("forbidden", "only operators acknowledge alerts"),
                );
            }
            // Every check below reads the acks and alerts read back from the bus: a gateway
            // still rebuilding them answers once it has (a retry checked before would be
            // written again, undoing a later ack).
            if !is_ready {
                let _ = ready.wait_for(|r| *r).await;
            }
            // An ack id already used for another alert: a second record under it would replace
            // that ack where acks are stored one per id.
            if let Some(a) = &ack_id
                && let Some(other) = lock(&st.hub).ack_id_taken(&claims.tenant, a, &alert_id)
            {
                return fail(
                    cs,
                    ProtocolError::new(
                        "invalid_ack",
                        format!(
                            "ack_id {a} already acknowledged alert {other}: a retry repeats the same alert; another alert needs its own ack_id"
                        ),
                    ),
                );
            }
            // A retry of an ack already read back from the bus (the first answer was lost, or
            // was `bus_unavailable` though the record was stored): the same ack, not a second
            // record (which would move its time and could drop its note). A retry of an
            // earlier ack that a later one superseded is that ack too (written again, it would
            // undo the later one). The same id with another outcome is not a retry: it would
            // be answered `acked` and change nothing.
            if let Some(a) = &ack_id {
                let seen = lock(&st.hub).ack_seen(&claims.tenant, &alert_id, a);
                match seen {
                    AckSeen::Latest(o) | AckSeen::Earlier(o) if o != outcome => {
                        return fail(
                            cs,
                            ProtocolError::new(
                                "invalid_ack",
                                format!(
                                    "ack_id {a} already acknowledged alert {alert_id} as {}: a retry repeats the same ack; another outcome needs its own ack_id",
                                    serde_json::to_value(o)
                                        .ok()
                                        .and_then(|v| v.as_str().map(str::to_owned))
                                        .unwrap_or_default()
                                ),
                            ),
                        );
                    }
                    AckSeen::Latest(_) | AckSeen::Earlier(_) => {
                        return vec![
                            ServerFrame::Acked {
                                id,
                                alert_id,
                                ack_id: a.clone(),
                            }
                            .to_text(),
                        ];
                    }
                    AckSeen::No => {}
                }
            }
            let ack = AlertAck {
                ack_id: ack_id.unwrap_or_else(pitboss_model::live::new_message_id),
                alert_id,
                tenant_id: claims.tenant.clone(),
                operator_id: claims.sub.clone(),
                outcome,
                note,
                acked_at: Timestamp::now(),
            };
            if let Err(violations) = ack.validate() {
                let m = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.path, v.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return fail(cs, ProtocolError::new("invalid_ack", m));
            }
            // Only an alert of the tenant that this gateway holds (in the history, open, or
            // acknowledged): an ack of any made-up id was stored and remembered, and enough of
            // them pushed other tenants' acks out of memory, reopening their alerts.
            if !lock(&st.hub).knows_alert(&claims.tenant, &ack.alert_id) {
                return fail(
                    cs,
                    ProtocolError::new(
                        "unknown_alert",
                        format!(
                            "alert {} is not an alert of tenant {} that this gateway holds (an alert can be acknowledged while it is in the history or open: unacknowledged and at most --open-alerts-max-age-secs old)",
                            ack.alert_id, claims.tenant
                        ),
                    ),
                );
            }
            // Stored in the background, so the connection keeps delivering (and pinging) while
            // the bus confirms; the answer follows in the connection's queue.
            let (publisher, topic, own) = (
                st.publisher.clone(),
                st.config.acks_topic.clone(),
                own.clone(),
            );
            tokio::spawn(async move {
                let frame = match publish_message(&*publisher, &topic, &ack).await {
                    Ok(_) => ServerFrame::Acked {
                        id,
                        alert_id: ack.alert_id,
                        ack_id: ack.ack_id,
                    },
                    Err(e) => ServerFrame::Error(
                        ProtocolError::new(
                            "bus_unavailable",
                            format!(
                                // Most often stored after all (a broker that answered
                                // late): the retry with the same ack_id is the same ack.
                                "the bus did not confirm the ack (it may be stored all the same); retry with ack_id {:?}, which is the same ack: {e}",
                                ack.ack_id
                            ),
                        )
                        .for_request(id.as_ref()),
                    ),
                };
                let _ = own.send_async(Out::Frame(frame.to_text().into())).await;
            });
            Vec::new()
        }
    }
}

/// Publishes one live message with its headers; where it was stored.
pub async fn publish_message<M: LiveMessage>(
    publisher: &dyn Publisher,
    topic: &str,
    message: &M,
) -> Result<pitboss_bus::Ack, pitboss_bus::BusError> {
    let acks = publisher.publish(topic, vec![live_record(message)]).await?;
    acks.into_iter()
        .next()
        .ok_or_else(|| pitboss_bus::BusError::Unavailable("no ack".into()))
}

/// A live message as a bus record, with its headers.
pub(crate) fn live_record<M: LiveMessage>(message: &M) -> OutRecord {
    use pitboss_bus::header;
    let mut record = OutRecord::new(message.bus_key(), message.encode_proto())
        .with_header(header::TYPE, M::TYPE)
        .with_header(header::TENANT, message.tenant_id())
        .with_header(
            header::EVENT_TIME,
            message.event_time().as_millis().to_string(),
        );
    if let Some(r) = message.received_at() {
        record = record.with_header(header::RECEIVED_AT, r.as_millis().to_string());
    }
    record
}

/// The body of `POST /v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub target: Target,
    pub kind: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// A UUID the operator's tool picks, so a retried request is the same push.
    #[serde(default)]
    pub push_id: Option<String>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// The answer of `POST /v1/publish`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishResponse {
    pub push_id: String,
    pub channel: String,
    pub partition: u32,
    pub position: String,
}

/// `GET /v1/stats`: the console's figures for the operator's own tenant.
async fn stats(State(st): State<GatewayState>, headers: HeaderMap) -> Response {
    let claims = match operator(&st, &headers, "only operators read the tenant's figures") {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let now = Timestamp::now().as_millis();
    let mut body = serde_json::json!({
        "tenant": claims.tenant,
        "at_ms": now,
        "gateway": st.config.gateway_id,
        "time_to_notify": st.latency.summary(&claims.tenant, now),
        "store": st.stats.is_some(),
        // Whether operators can change lists and snoozes here (`POST /v1/lists/…`,
        // `/v1/snoozes`).
        "lists": st.rules.is_some(),
        "snoozes": st.rules.is_some(),
    });
    if let Some(source) = &st.stats {
        match source.tenant_stats(&claims.tenant).await {
            Ok(serde_json::Value::Object(figures)) => {
                if let Some(b) = body.as_object_mut() {
                    b.extend(figures);
                }
            }
            Ok(_) => {}
            Err(e) => body["store_error"] = e.into(),
        }
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Largest `POST /v1/publish` body (an array of pushes).
const MAX_PUBLISH_BYTES: usize = 1024 * 1024;

/// Most pushes in one `POST /v1/publish` array (the body, at most 1 MiB).
pub const MAX_PUBLISH_BATCH: usize = 1000;
/// Largest body of a single push.
const MAX_PUBLISH_BODY: usize = 64 * 1024;

async fn publish(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token before the body: nobody without one holds a connection sending a body.
    let claims = match operator(&st, &headers, "only operators publish") {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let body = match read_body(
        &st,
        body,
        MAX_PUBLISH_BYTES,
        "a body is at most 1 MiB (an array of pushes; a single push, 64 KiB)",
        "published",
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    // One push (an object) or several (an array, published together in one bus write).
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !batch && body.len() > MAX_PUBLISH_BODY {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a push is at most {MAX_PUBLISH_BODY} bytes (an array of pushes, 1 MiB)"),
        );
    }
    let requests: Vec<PublishRequest> = if batch {
        match from_json(&body) {
            Ok(r) => r,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, "malformed", e),
        }
    } else {
        match from_json(&body) {
            Ok(r) => vec![r],
            Err(e) => return error_response(StatusCode::BAD_REQUEST, "malformed", e),
        }
    };
    if requests.is_empty() || requests.len() > MAX_PUBLISH_BATCH {
        return error_response(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!(
                "an array of 1 to {MAX_PUBLISH_BATCH} pushes; this one has {}",
                requests.len()
            ),
        );
    }
    let now = Timestamp::now();
    let mut pushes = Vec::with_capacity(requests.len());
    let mut invalid = Vec::new();
    for (i, req) in requests.into_iter().enumerate() {
        let channel = match &req.target {
            Target::Player(p) => ChannelName::Player {
                tenant_id: claims.tenant.clone(),
                player_id: p.clone(),
            },
            Target::Room(r) => ChannelName::Room {
                tenant_id: claims.tenant.clone(),
                room_id: r.clone(),
            },
        };
        let push = Push {
            push_id: req
                .push_id
                .unwrap_or_else(pitboss_model::live::new_message_id),
            tenant_id: claims.tenant.clone(),
            target: req.target,
            kind: req.kind,
            title: req.title,
            body: req.body,
            data: req.data,
            source: PushSource::Operator(OperatorSource {
                operator_id: claims.sub.clone(),
            }),
            event_time: now,
            received_at: now,
            created_at: now,
            expires_at: req.expires_at,
        };
        let mut violations = push.validate().err().unwrap_or_default();
        // A rule push's id is a UUIDv5 anyone can derive (docs/alerts.md): an operator push under
        // one would take the rule push's place in the store and the channel history (both keep
        // one message per id), hiding an intervention. Checked here, where operators publish,
        // not in the contract: pushes already on the bus stay readable.
        // Ids are matched as text (store, history): one UUID is one id, in its canonical
        // lower-case form (an upper-case copy was a second push).
        if push.push_id.len() == 36
            && uuid::Uuid::try_parse(&push.push_id).is_ok()
            && push.push_id.bytes().any(|b| b.is_ascii_uppercase())
        {
            violations.push(pitboss_model::validate::Violation::new(
                "push_id",
                pitboss_model::ViolationCode::InvalidUuid,
                "a UUID in its canonical lower-case form",
            ));
        } else if let Ok(u) = uuid::Uuid::try_parse(&push.push_id)
            && push.push_id.len() == 36
            && u.get_version_num() != 7
        {
            violations.push(pitboss_model::validate::Violation::new(
                "push_id",
                pitboss_model::ViolationCode::InvalidValue,
                format!(
                    "an operator push's id is a UUIDv7 (this one is version {}); rule pushes' ids are UUIDv5s derived from the hit",
                    u.get_version_num()
                ),
            ));
        }
        if !violations.is_empty() {
            for v in violations {
                // In a batch, each violation names its push: `[3].title`.
                let path = if batch {
                    format!("[{i}].{}", v.path)
                } else {
                    v.path.to_string()
                };
                invalid
                    .push(serde_json::json!({"path": path, "code": v.code, "message": v.message}));
            }
        }
        pushes.push((push, channel));
    }
    if !invalid.is_empty() {
        // Nothing of a batch is published when any of its pushes is invalid.
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({"error": {"code": "invalid_push", "message": "the push breaks the contract (docs/alerts.md); nothing was published", "violations": invalid}})),
        )
            .into_response();
    }
    // The tenant's budget of pushes (a leaked or runaway operator tool cannot flood every
    // player): an array takes one per push, all or none.
    let n = std::num::NonZeroU32::new(u32::try_from(pushes.len()).unwrap_or(u32::MAX))
        .unwrap_or(std::num::NonZeroU32::MIN);
    if let Err(wait) = match st.publish_limit.check_key_n(&claims.tenant, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ))),
        // Never: the burst holds a full array.
        Err(_) => Err(Duration::from_secs(1)),
    } {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "the tenant's operator pushes are over {} a second (bursts of {}); nothing was published, retry in {secs} s",
                st.config.publish_per_second.max(1),
                st.config.publish_burst.max(MAX_PUBLISH_BATCH as u32)
            ),
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let records = pushes.iter().map(|(p, _)| live_record(p)).collect();
    match st.publisher.publish(&st.config.pushes_topic, records).await {
        Ok(acks) if acks.len() == pushes.len() => {
            let mut answers: Vec<PublishResponse> = pushes
                .into_iter()
                .zip(acks)
                .map(|((push, channel), ack)| PublishResponse {
                    push_id: push.push_id,
                    channel: channel.to_string(),
                    partition: ack.partition,
                    position: ack.position.to_string(),
                })
                .collect();
            if batch {
                (StatusCode::ACCEPTED, axum::Json(answers)).into_response()
            } else {
                match answers.pop() {
                    Some(one) => (StatusCode::ACCEPTED, axum::Json(one)).into_response(),
                    None => {
                        error_response(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", "no ack")
                    }
                }
            }
        }
        Ok(acks) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            format!(
                "the bus acknowledged {} of {} pushes; retry with the same push_ids",
                acks.len(),
                pushes.len()
            ),
        ),
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            format!("not confirmed (some may be stored); retry with the same push_ids: {e}"),
        ),
    }
}

/// Serves the public router until `shutdown`, then closes every socket with 1012.
pub async fn serve(
    state: GatewayState,
    listener: tokio::net::TcpListener,
    limits: pitboss_runtime::http::Limits,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let (sessions, drain) = (state.sessions.clone(), limits.drain_timeout);
    let receipts = state.receipts.clone();
    let presence_task = state.presence_task.clone();
    // One deadline for the whole drain, from the stop signal: the HTTP drain (which waits for
    // the sockets too, each holding its connection's slot), then the receipts.
    let drain_started = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            s.wait().await;
            tokio::time::Instant::now()
        })
    };
    pitboss_runtime::http::serve(listener, router(state), limits, shutdown).await?;
    let deadline = drain_started
        .await
        .unwrap_or_else(|_| tokio::time::Instant::now())
        + drain;
    // A session still finishing its `reconnect` after its socket's slot went (bounded by the
    // same deadline).
    while sessions.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The receipts of what the sessions wrote, published before the process exits.
    let left = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    receipts.finish(left).await;
    // And the other instances told this one is gone (presence).
    let presence = presence_task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(task) = presence
        && tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
    {
        tracing::warn!("presence not told this instance is gone within 3 s");
    }

    Ok(())
}

/// Counts a session while it runs.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn start(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The address a listener is bound to, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("ws://{addr}/v1/ws")
}

/// A JSON body as `T`; a refusal names where it broke: the field's path (`[1].title`) when a
/// value has the wrong shape, and the line and column.
fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}
