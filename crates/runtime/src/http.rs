//! Serving an axum router with bounded connections: at most `max_connections` at once (a
//! connection over the limit is closed at once, before the process runs out of descriptors),
//! a deadline for a request head — which also ends an idle keep-alive connection, since the
//! wait for the next head is the same wait, and a connection that sends nothing at all — HTTP/2 keep-alive pings with a dead-peer
//! timeout, and a graceful stop: on shutdown no new connection is accepted, requests already
//! read are answered, and connections still open after the drain deadline are dropped.
//!
//! A connection upgraded to a WebSocket still counts: hyper ends its connection future at the
//! upgrade, so every request carries the connection's [`ConnSlot`], and a WebSocket handler
//! keeps it for as long as its socket lives ([`ConnSlot`]). The drain waits for those too.
//! Through the slot the handler can also have the connection's reads charged from then on
//! ([`ConnSlot::charge_reads`]): an upgraded socket's frames count against a budget as they are
//! read, not once whole.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::Shutdown;

/// Limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it, new ones are closed as soon as accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request head, and how long a keep-alive
    /// connection may stay idle between requests.
    pub header_read_timeout: Duration,
    /// HTTP/2 (gRPC): a ping this often on a quiet connection…
    pub http2_keepalive_interval: Duration,
    /// …and the connection is closed when its answer takes longer than this.
    pub http2_keepalive_timeout: Duration,
    /// After the stop signal, how long connections may take to finish what they are doing.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` value. The scheme is matched
/// without regard to case (RFC 7235: `bearer`, `BEARER`); `None` for another scheme.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Whether `e`, or an error in its chain of sources, is an `E` (a body timeout or length limit
/// under the layers and rejections that wrap it).
pub fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    cause::<E>(e).is_some()
}

/// The first `E` in `e`'s chain of sources, `e` included.
pub fn cause<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(found) = x.downcast_ref::<E>() {
            return Some(found);
        }
        cur = x.source();
    }
    None
}

/// Why a WebSocket read failed, when the peer broke the protocol (rather than the connection
/// dropping): the close code the ingest and the gateway answer with (RFC 6455 §7.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsBroken {
    /// A frame over the size bound (tungstenite's capacity error, "Space limit exceeded:
    /// Message too long: N > M", as axum wraps it): 1009.
    TooBig,
    /// A text frame that is not UTF-8 (RFC 6455 §8.1): 1007.
    NotUtf8,
    /// A frame the protocol does not allow (a control frame over 125 bytes, reserved bits set,
    /// an unmasked frame from a client, an unknown opcode, a stray continuation…): 1002, with
    /// what it was.
    Protocol(String),
}

impl WsBroken {
    /// The close code for it.
    pub fn code(&self) -> u16 {
        match self {
            WsBroken::TooBig => 1009,
            WsBroken::NotUtf8 => 1007,
            WsBroken::Protocol(_) => 1002,
        }
    }
}

/// Classifies a failed WebSocket read by its text (axum wraps tungstenite's error, of another
/// version than the gateway's): `None` for a connection that dropped or reset.
pub fn ws_broken(e: &dyn std::fmt::Display) -> Option<WsBroken> {
    let text = e.to_string();
    const PROTOCOL: &str = "WebSocket protocol error: ";
    if let Some(at) = text.find(PROTOCOL) {
        let what = &text[at + PROTOCOL.len()..];
        // A peer that went away without a close frame broke nothing worth answering.
        if what.contains("without closing handshake") {
            return None;
        }
        return Some(WsBroken::Protocol(what.to_owned()));
    }
    if text.contains("Space limit") || text.contains("too long") || text.contains("too big") {
        return Some(WsBroken::TooBig);
    }
    if text.contains("UTF-8") || text.contains("utf-8") {
        return Some(WsBroken::NotUtf8);
    }
    None
}

/// Raises the soft limit of open files to the hard limit, so the connection limit (not the
/// descriptor table) is what refuses connections. Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            None
        }
    }
}

/// A connection's place under `max_connections`, in every request's extensions: the place is
/// given back when the connection ends and every clone of its slot is dropped. A WebSocket
/// handler moves its request's slot into the socket's task, so the socket keeps counting after
/// the upgrade ends hyper's connection (without it, upgraded sockets were not counted at all).
#[derive(Clone)]
pub struct ConnSlot {
    #[allow(dead_code)]
    place: Arc<Place>,
    reads: Arc<OnceLock<ReadCharge>>,
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot")
            .field("reads_charged", &self.reads.get().is_some())
            .finish()
    }
}

/// What a connection's reads are charged to once its handler asks
/// ([`ConnSlot::charge_reads`]): called with the byte count of each read; an error ends that
/// read, and so the connection, with it.
pub type ReadCharge = Box<dyn Fn(usize) -> std::io::Result<()> + Send + Sync>;

impl ConnSlot {
    /// From now on, every read of the connection is charged to `charge` (an upgraded
    /// WebSocket's frames, as they are read: bytes hyper read ahead before the upgrade, at
    /// most its read buffer, are not). Once per connection: `false` if already set. Only for a
    /// connection that carries one stream (HTTP/1, upgraded): on HTTP/2 it would charge every
    /// stream's reads to one hook (this server does not offer WebSockets over HTTP/2).
    pub fn charge_reads(&self, charge: ReadCharge) -> bool {
        self.reads.set(charge).is_ok()
    }
}

/// An accepted stream whose reads are charged once its handler asks ([`ConnSlot`]).
struct Metered {
    inner: TcpStream,
    reads: Arc<OnceLock<ReadCharge>>,
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && let Some(charge) = this.reads.get()
        {
            let n = buf.filled().len() - before;
            if n > 0
                && let Err(e) = charge(n)
            {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a [`ConnSlot`] holds.
#[derive(Debug)]
struct Place(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Drop for Place {
    fn drop(&mut self) {
        metrics::gauge!("pitboss_http_connections").decrement(1.0);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` is triggered; then stops
/// accepting and drains (see the module doc). WebSocket upgrades are supported, and counted
/// while they live if their handler keeps the request's [`ConnSlot`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // There from the first scrape at 0: an alert on the refusals' rate needs a series.
    metrics::counter!("pitboss_http_connections_refused_total").increment(0);
    metrics::counter!("pitboss_http_connections_idle_closed_total").increment(0);
    metrics::gauge!("pitboss_http_connections").increment(0.0);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: back off a
                    // little instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("pitboss_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!("pitboss_http_connections").increment(1.0);
        let slot = ConnSlot {
            place: Arc::new(Place(permit)),
            reads: Arc::new(OnceLock::new()),
        };
        let reads = Arc::clone(&slot.reads);
        let for_requests = slot.clone();
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(for_requests.clone());
                req
            },
        ));
        let (builder, watcher, stop) = (builder.clone(), graceful.watcher(), shutdown.clone());
        let first_byte = limits.header_read_timeout;
        tokio::spawn(async move {
            // The first byte within the head's deadline: while hyper-util's connection picks
            // HTTP/1 or HTTP/2 it has no timer, so a client that connects and sends nothing
            // would hold its place for good (and `max_connections` of them, the listener).
            let mut first = [0u8; 1];
            let sent = tokio::select! {
                () = stop.wait() => false,
                peeked = tokio::time::timeout(first_byte, stream.peek(&mut first)) => {
                    if peeked.is_err() {
                        metrics::counter!("pitboss_http_connections_idle_closed_total")
                            .increment(1);
                    }
                    matches!(peeked, Ok(Ok(n)) if n > 0)
                }
            };
            if !sent {
                drop(slot);
                return;
            }
            let conn = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(Metered {
                        inner: stream,
                        reads,
                    }),
                    service,
                )
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + limits.drain_timeout;
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    // Requests read are answered, then every upgraded socket ends (its handler saw the
    // shutdown): all places are back.
    let drained = async {
        graceful.shutdown().await;
        // An error means the semaphore was closed: nothing left to wait for (never closed).
        let _ = permits.acquire_many(all).await;
    };
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!(
            timeout = ?limits.drain_timeout,
            "connections still open at the drain deadline were dropped"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for v in ["Bearer k1", "bearer k1", "BEARER  k1 ", " Bearer k1"] {
            assert_eq!(super::bearer(v), Some("k1"), "{v:?}");
        }
        for v in ["Basic k1", "Bearerk1", "k1", ""] {
            assert_eq!(super::bearer(v), None, "{v:?}");
        }
    }

    use super::*;

    async fn start(
        limits: Limits,
    ) -> (std::net::SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let router = Router::new().route("/", get(|| async { "hi" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        );
        let s = shutdown.clone();
        let task = tokio::spawn(async move { serve(listener, router, limits, s).await.unwrap() });
        (addr, shutdown, task)
    }

    /// Reads until the peer closes; the bytes read. Fails the test after 10 s.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap_or_default();
        out
    }

    async fn get_ok(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
    }

    #[tokio::test]
    async fn a_half_sent_head_and_an_idle_keep_alive_connection_are_closed() {
        let (addr, _shutdown, _task) = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_to_close(&mut half).await;
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "not before the deadline"
        );

        // A connection that never sends a byte is closed too (it held its place for good).
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let got = read_to_close(&mut silent).await;
        assert!(got.is_empty(), "{got:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "not before the deadline"
        );

        // A keep-alive connection answered once, then silent, is closed too.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut idle).await;
        assert!(
            String::from_utf8_lossy(&got).contains("200 OK"),
            "answered first"
        );
    }

    /// The frame types of an HTTP/2 byte stream (9-byte frame headers), from the start.
    fn h2_frame_types(mut bytes: &[u8]) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            out.push((bytes[3], bytes[4]));
            bytes = bytes.get(9 + len..).unwrap_or_default();
        }
        out
    }

    /// HTTP/2 (gRPC): a quiet connection is pinged every `http2_keepalive_interval`, and one
    /// whose peer does not answer within `http2_keepalive_timeout` is closed (a peer gone
    /// without a FIN, behind a NAT); with the default 30 s the same peer is still open 2 s on.
    #[tokio::test]
    async fn an_http2_peer_that_does_not_answer_pings_is_closed() {
        // The client preface and an empty SETTINGS frame; then silence (no acks at all).
        const PREFACE: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let (addr, _shutdown, _task) = start(Limits {
            http2_keepalive_interval: Duration::from_millis(200),
            http2_keepalive_timeout: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let mut peer = TcpStream::connect(addr).await.unwrap();
        peer.write_all(PREFACE).await.unwrap();
        let got = read_to_close(&mut peer).await;
        let frames = h2_frame_types(&got);
        assert!(
            frames.contains(&(6, 0)),
            "no PING before the close: {frames:?}"
        );

        let (addr, _shutdown, _task) = start(Limits::default()).await;
        let mut peer = TcpStream::connect(addr).await.unwrap();
        peer.write_all(PREFACE).await.unwrap();
        let mut buf = Vec::new();
        let open = tokio::time::timeout(Duration::from_secs(2), peer.read_to_end(&mut buf)).await;
        assert!(
            open.is_err(),
            "closed without the keep-alive: {:?}",
            h2_frame_types(&buf)
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_the_others_served() {
        let (addr, _shutdown, _task) = start(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        // Let the server accept both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut over = TcpStream::connect(addr).await.unwrap();
        over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok();
        assert!(
            read_to_close(&mut over).await.is_empty(),
            "closed without an answer"
        );
        // The connections within the limit still work.
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&read_to_close(&mut a).await).contains("hi"));
        // And a slot freed is a slot again.
        assert!(get_ok(addr, "/").await.contains("hi"));
    }

    #[tokio::test]
    async fn shutdown_answers_the_request_in_progress_and_refuses_new_connections() {
        let (addr, shutdown, task) = start(Limits::default()).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.trigger("test");
        let got = read_to_close(&mut slow).await;
        assert!(
            String::from_utf8_lossy(&got).contains("slow"),
            "answered while draining"
        );
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns after the drain")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
