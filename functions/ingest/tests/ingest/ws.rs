//! WebSocket ingest: through a real socket (tokio-tungstenite client against the served
//! router), and the frame loop on its own to show backpressure.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pitboss_bus::memory::MemoryPublisher;
use pitboss_ingest::auth::hash_key;
use pitboss_ingest::ws::{FrameReply, FrameResult, serve_frames};
use pitboss_ingest::{IngestConfig, TenantConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common;

const KEY: &str = "pk_test_ws_5e4d3c2b1a09";

fn config() -> IngestConfig {
    IngestConfig {
        tenants: vec![TenantConfig {
            id: "acme".into(),
            api_key_sha256: vec![hash_key(KEY)],
            events_per_second: None,
        }],
        ..IngestConfig::default()
    }
}

fn events(n: usize) -> String {
    let now = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    let list: Vec<_> = (0..n)
        .map(|i| serde_json::json!({
            "tenant_id": "acme", "player_id": format!("p{i}"), "type": "login", "occurred_at": now,
            "payload": {"ip": "203.0.113.9", "country": "DE"}
        }))
        .collect();
    serde_json::to_string(&list).unwrap()
}

async fn serve(bus: &MemoryPublisher) -> String {
    serve_with(bus, config(), pitboss_runtime::Shutdown::new()).await
}

async fn serve_with(
    bus: &MemoryPublisher,
    config: IngestConfig,
    shutdown: pitboss_runtime::Shutdown,
) -> String {
    serve_task(bus, config, shutdown).await.0
}

/// [`serve_with`], and the task serving (it ends when `serve` returns).
async fn serve_task(
    bus: &MemoryPublisher,
    config: IngestConfig,
    shutdown: pitboss_runtime::Shutdown,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let state = pitboss_ingest::state(config, bus.publisher()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(pitboss_ingest::serve(state, listener, shutdown));
    (format!("ws://{addr}/v1/ingest/ws"), task)
}

#[tokio::test]
async fn frames_get_per_event_results_in_order() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve(&bus).await;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    socket.send(Message::text(events(3))).await.unwrap();
    socket.send(Message::text("{not json")).await.unwrap(); // a batch of one, rejected
    socket.send(Message::text("[1,")).await.unwrap(); // not a batch at all
    socket
        .send(Message::text(events(1).replace("\"acme\"", "\"other\"")))
        .await
        .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 4 {
        let msg = socket.next().await.unwrap().unwrap();
        common::check_json_answer(None, msg.to_text().unwrap().as_bytes());
        replies.push(serde_json::from_str::<FrameReply>(msg.to_text().unwrap()).unwrap());
    }
    let seqs: Vec<u64> = replies.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(matches!(&replies[0].result, FrameResult::Done(r) if r.accepted == 3));
    assert!(
        matches!(&replies[1].result, FrameResult::Done(r) if r.rejected == 1 && r.accepted == 0)
    );
    let code = |r: &FrameReply| match &r.result {
        FrameResult::Failed { error, .. } => error.code.clone(),
        FrameResult::Done(_) => "done".into(),
    };
    assert_eq!(code(&replies[2]), "unreadable_body");
    assert_eq!(code(&replies[3]), "forbidden_tenant");
    assert_eq!(bus.len("events"), 3);
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn a_connection_without_a_valid_key_is_refused() {
    let bus = MemoryPublisher::new();
    let url = serve(&bus).await;
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("no key");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("{other:?}"),
    }
}

/// While the bus holds a publish, the next frame is not even read: the sender is slowed by
/// the socket, not buffered in server memory.
#[tokio::test]
async fn a_slow_bus_slows_the_sender_down() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let state = pitboss_ingest::state(config(), bus.publisher()).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let frames = futures::stream::iter((0..3).map(|_| events(2).into_bytes())).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<String>();
    bus.hold_publishes(true);
    let task = tokio::spawn(async move { serve_frames(&state, "acme", frames, tx).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        1,
        "only the first frame is read while its publish waits"
    );
    assert!(
        rx.try_recv().is_err(),
        "no reply before the bus acknowledged"
    );
    bus.hold_publishes(false);
    task.await.unwrap().unwrap();
    let replies: Vec<String> = rx.collect().await;
    assert_eq!(replies.len(), 3);
    assert_eq!(bus.len("events"), 6);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Socket {
    try_connect(url).await.expect("connected")
}

/// A socket with the test key, or `None` when the connection is refused (within 10 s).
async fn try_connect(url: &str) -> Option<Socket> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("refused at once, not left waiting")
    .ok()
    .map(|(s, _)| s)
}

/// A socket once the server lets one in (every 100 ms, `tries` times).
async fn connect_when_let_in(url: &str, tries: usize) -> Option<Socket> {
    for _ in 0..tries {
        if let Some(s) = try_connect(url).await {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The next message that is not a ping, within 10 s.
async fn next_message(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

/// On shutdown the frame already read is answered, then the socket is closed with 1012 so the
/// client knows to reconnect (to another instance, or this one once it is back).
#[tokio::test]
async fn shutdown_answers_the_frame_in_flight_then_closes_with_1012() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let shutdown = pitboss_runtime::Shutdown::new();
    let (url, serving) = serve_task(&bus, config(), shutdown.clone()).await;
    let mut socket = connect(&url).await;
    bus.hold_publishes(true);
    socket.send(Message::text(events(2))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.trigger("test");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `serve` waits for the socket (a process exits when it returns, and the answer and the
    // 1012 would be lost): it had returned at once, the upgrade having ended hyper's
    // connection.
    assert!(
        !serving.is_finished(),
        "serve returned with a WebSocket frame still in flight"
    );
    bus.hold_publishes(false);
    let reply = next_message(&mut socket).await.expect("the reply");
    let reply: FrameReply = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert!(matches!(reply.result, FrameResult::Done(r) if r.accepted == 2));
    match next_message(&mut socket).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1012, "{frame:?}");
            assert!(frame.reason.contains("reconnect"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(bus.len("events"), 2);
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve returns once the socket is closed")
        .unwrap()
        .unwrap();
}

/// Open WebSockets count under `max_connections` (hyper ends a connection's own count at the
/// upgrade): with 2 allowed and 2 sockets open, a third connection is closed unanswered; once
/// a socket closes, its place is free again.
#[tokio::test]
async fn open_sockets_count_under_max_connections() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve_with(
        &bus,
        IngestConfig {
            max_connections: 2,
            ..config()
        },
        pitboss_runtime::Shutdown::new(),
    )
    .await;
    let mut first = connect(&url).await;
    let mut second = connect(&url).await;
    for s in [&mut first, &mut second] {
        s.send(Message::text(events(1))).await.unwrap();
        let reply = next_message(s).await.expect("served");
        assert!(reply.to_text().unwrap().contains("\"accepted\":1"));
    }
    assert!(
        try_connect(&url).await.is_none(),
        "a third socket was let in over the limit of 2"
    );
    first.close(None).await.unwrap();
    drop(first);
    // The place comes back when the server's side of the socket ends.
    let mut again = connect_when_let_in(&url, 50)
        .await
        .expect("a socket connects once one of the two closed");
    again.send(Message::text(events(1))).await.unwrap();
    assert!(
        next_message(&mut again)
            .await
            .expect("served")
            .to_text()
            .unwrap()
            .contains("\"accepted\":1")
    );
}

/// A peer that stops reading (it never answers pings) is closed after the idle timeout, with
/// 1001; one that answers pings stays.
#[tokio::test]
async fn a_silent_peer_is_closed_after_the_idle_timeout() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve_with(
        &bus,
        IngestConfig {
            ws_ping_interval_secs: 1,
            ws_idle_timeout_secs: 2,
            ..config()
        },
        pitboss_runtime::Shutdown::new(),
    )
    .await;
    let mut silent = connect(&url).await;
    let mut lively = connect(&url).await;
    // The lively client reads (tungstenite answers pings while reading); the silent one not.
    let lively_reads = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            if let Ok(Some(Ok(Message::Close(c)))) =
                tokio::time::timeout(Duration::from_millis(200), lively.next()).await
            {
                panic!("a client answering pings was closed: {c:?}");
            }
        }
        lively
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    match next_message(&mut silent).await {
        Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001, "{frame:?}"),
        None => {}
        other => panic!("expected a close, got {other:?}"),
    }
    let mut lively = lively_reads.await.unwrap();
    lively.send(Message::text(events(1))).await.unwrap();
    let reply = next_message(&mut lively).await.expect("still served");
    assert!(reply.to_text().unwrap().contains("\"accepted\":1"));
}

/// A frame up to the documented body limit (20 MiB) is read and answered, not reset.
#[tokio::test]
async fn a_17_mib_frame_is_answered() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve(&bus).await;
    let mut socket = connect(&url).await;
    let big = format!("[{}]", " ".repeat(17 << 20));
    socket.send(Message::text(big)).await.unwrap();
    let reply = next_message(&mut socket).await.expect("an answer");
    let reply: FrameReply = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply.seq, 1);
}

/// A frame over `max_body_bytes` closes the socket with 1009, after the frame before it was
/// answered.
#[tokio::test]
async fn a_frame_over_the_bound_closes_with_1009() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve_with(
        &bus,
        IngestConfig {
            max_body_bytes: 1 << 20,
            ..config()
        },
        pitboss_runtime::Shutdown::new(),
    )
    .await;
    let mut socket = connect(&url).await;
    socket.send(Message::text(events(1))).await.unwrap();
    let _ = socket
        .send(Message::text(format!("[{}]", " ".repeat(2 << 20))))
        .await;
    let reply = next_message(&mut socket)
        .await
        .expect("the first frame's answer");
    assert!(
        reply.to_text().unwrap().contains("\"accepted\":1"),
        "{reply:?}"
    );
    match next_message(&mut socket).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1009, "{frame:?}");
            assert!(frame.reason.contains("1048576"), "{frame:?}");
        }
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    assert_eq!(bus.len("events"), 1);
}

/// A frame the WebSocket protocol does not allow closes the socket with 1002, saying what it
/// was; a text frame that is not UTF-8 with 1007 (RFC 6455 §7.4.1, §8.1). Both were dropped
/// without a close frame (and a 200-byte ping was closed as "too big", 1009).
#[tokio::test]
async fn a_frame_that_breaks_the_protocol_closes_with_1002_and_one_not_utf8_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve_with(&bus, config(), pitboss_runtime::Shutdown::new()).await;
    for (frame, code, says) in [
        (Frame::ping(vec![b'x'; 200]), 1002, "Control frame too big"),
        (
            Frame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true),
            1007,
            "not UTF-8",
        ),
    ] {
        let mut socket = connect(&url).await;
        socket.send(Message::text(events(1))).await.unwrap();
        let reply = next_message(&mut socket).await.expect("an answer");
        assert!(
            reply.to_text().unwrap().contains("\"accepted\":1"),
            "{reply:?}"
        );
        let _ = socket.send(Message::Frame(frame)).await;
        match next_message(&mut socket).await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), code, "{frame:?}");
                assert!(frame.reason.contains(says), "{frame:?}");
            }
            other => panic!("expected a {code} close, got {other:?}"),
        }
    }
    assert_eq!(bus.len("events"), 2);
}

/// A client that sends frames but never reads its answers: once the server's writes have
/// waited for the idle timeout, the session ends and the connection's place under
/// `max_connections` is free again (it was held for good: the writer waited forever, and the
/// reader behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_gives_its_place_back_after_the_idle_timeout() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve_with(
        &bus,
        IngestConfig {
            max_connections: 1,
            ws_ping_interval_secs: 1,
            ws_idle_timeout_secs: 2,
            ..config()
        },
        pitboss_runtime::Shutdown::new(),
    )
    .await;
    let stuck = connect(&url).await;
    let (mut sink, stream) = stuck.split();
    // Replies pile up unread until the socket buffers are full and the server's write waits.
    let frame = events(1);
    let sender = tokio::spawn(async move {
        while sink.send(Message::text(frame.clone())).await.is_ok() {}
        sink
    });
    let mut again = connect_when_let_in(&url, 300)
        .await
        .expect("the place of a client that never reads is given back");
    again.send(Message::text(events(1))).await.unwrap();
    // Answered (accepted, or rate_limited after the flood: the tenant's rate is shared).
    let reply = next_message(&mut again).await.expect("served");
    let reply: FrameReply = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply.seq, 1);
    drop(stream);
    sender.abort();
}

/// Writes `bytes` on the socket's connection as they are: part of a frame, which the client
/// library would only send whole.
async fn send_raw(socket: &mut Socket, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
        panic!("a plain connection")
    };
    tcp.write_all(bytes).await.unwrap();
}

/// The head of a client's whole text frame of `len` bytes, masked with a zero key (so its
/// payload is sent as it is).
fn text_frame_head(len: usize) -> Vec<u8> {
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(len as u64).to_be_bytes());
    head.extend_from_slice(&[0; 4]);
    head
}

/// Waits (10 s at most) until `done`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 10 s: {what}");
}

/// A frame counts against its tenant's share of the body budget as it is read, not once whole:
/// frames half sent on many sockets held connections × `max_body_bytes` of the server's memory
/// before any of them was charged. A socket whose read finds the share full is closed with
/// 1013 ("try again later", as `503 overloaded`), saying so; the tenant's other sockets read
/// on, and a frame answered gives back what it held.
#[tokio::test]
async fn frames_are_charged_to_the_tenants_share_as_they_are_read_and_past_it_close_with_1013() {
    let (url, budget, bus) = serve_charged(256 << 10, 10_000).await;
    // One event, padded in front to 120 KiB; 100 KiB of it sent on each socket.
    let one = events(1);
    let frame = format!("{}{one}", " ".repeat((120 << 10) - one.len()));
    let (head, part) = (text_frame_head(frame.len()), &frame.as_bytes()[..100 << 10]);
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut socket = connect(&url).await;
        send_raw(&mut socket, &head).await;
        send_raw(&mut socket, part).await;
        sockets.push(socket);
    }
    wait_until("both halves charged", || {
        budget.held_by("acme") >= 200 << 10
    })
    .await;
    let mut third = connect(&url).await;
    send_raw(&mut third, &head).await;
    send_raw(&mut third, part).await;
    match next_message(&mut third).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1013, "{frame:?}");
            assert!(
                frame
                    .reason
                    .contains("this tenant's bodies hold their 262144 bytes"),
                "{frame:?}"
            );
        }
        other => panic!("expected a 1013 close, got {other:?}"),
    }
    wait_until("the refused socket's bytes given back", || {
        budget.held_by("acme") < 201 << 10
    })
    .await;
    // The first frame's rest: answered, and what it held given back.
    send_raw(&mut sockets[0], &frame.as_bytes()[100 << 10..]).await;
    let reply = next_message(&mut sockets[0]).await.expect("an answer");
    assert!(
        reply.to_text().unwrap().contains("\"accepted\":1"),
        "{reply:?}"
    );
    wait_until("the answered frame's bytes given back", || {
        budget.held_by("acme") < 110 << 10
    })
    .await;
    // A socket gone half-way through a frame gives back what it held.
    drop(sockets.remove(1));
    wait_until("the dropped socket's bytes given back", || {
        budget.held_by("acme") == 0
    })
    .await;
    assert_eq!(bus.len("events"), 1);
}

/// A server whose frames are charged as they are read: `max_body_bytes` 128 KiB, the tenant's
/// share `share` bytes (of 1 MiB), the stall bound `stall_ms`.
async fn serve_charged(
    share: usize,
    stall_ms: u64,
) -> (
    String,
    Arc<pitboss_ingest::budget::BodyBudget>,
    MemoryPublisher,
) {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let state = pitboss_ingest::state(
        IngestConfig {
            max_body_bytes: 128 << 10,
            max_inflight_body_bytes: 1 << 20,
            max_inflight_body_bytes_per_tenant: share,
            header_read_timeout_ms: stall_ms,
            ..config()
        },
        bus.publisher(),
    )
    .unwrap();
    let budget = state.body_budget.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ingest/ws", listener.local_addr().unwrap());
    tokio::spawn(pitboss_ingest::serve(
        state,
        listener,
        pitboss_runtime::Shutdown::new(),
    ));
    (url, budget, bus)
}

/// Pings and pongs are read too, but they are not frames: their bytes are given back at once
/// (an idle socket's pongs, one every ping interval, stayed charged until its next frame and
/// piled up in its tenant's share). And a frame is charged what it holds, not its heads: one
/// of `max_body_bytes` is read and answered when the share is that size.
#[tokio::test]
async fn pings_hold_nothing_and_a_frame_of_the_largest_size_fits_the_smallest_share() {
    let (url, budget, bus) = serve_charged(128 << 10, 300).await;
    let mut socket = connect(&url).await;
    for _ in 0..50 {
        socket
            .send(Message::Ping(vec![7; 100].into()))
            .await
            .unwrap();
    }
    let mut pongs = 0;
    while pongs < 50 {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected pongs, got {other:?}"),
        }
    }
    wait_until("the pings' bytes given back", || {
        budget.held_by("acme") == 0
    })
    .await;
    let one = events(1);
    let largest = format!("{}{one}", " ".repeat((128 << 10) - one.len()));
    socket.send(Message::text(largest)).await.unwrap();
    let reply = next_message(&mut socket).await.expect("an answer");
    assert!(
        reply.to_text().unwrap().contains("\"accepted\":1"),
        "{reply:?}"
    );
    assert_eq!(bus.len("events"), 1);
}

/// A frame of which part is held and nothing more comes for the stall bound
/// (`header_read_timeout_ms`) is cut as a body is (`408 body_timeout`): the socket closed with
/// 1008, its bytes given back. Pings meanwhile do not keep it (they only keep an idle socket
/// open).
#[tokio::test]
async fn a_frame_that_stalls_while_held_closes_with_1008() {
    let (url, budget, bus) = serve_charged(128 << 10, 300).await;
    let mut socket = connect(&url).await;
    send_raw(&mut socket, &text_frame_head(100 << 10)).await;
    send_raw(&mut socket, &[b' '; 50 << 10]).await;
    // A client's ping (masked with a zero key) every 100 ms, until the server closes.
    let pinging = async {
        use tokio::io::AsyncWriteExt;
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
            panic!("a plain connection")
        };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(&[0x89, 0x80, 0, 0, 0, 0]).await.is_err() {
                break;
            }
        }
    };
    // The pings go on until the server closes, or for 1.5 s.
    let _ = tokio::time::timeout(Duration::from_millis(1_500), pinging).await;
    match next_message(&mut socket).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
            assert!(
                frame.reason.contains("body_timeout") && frame.reason.contains("300 ms"),
                "{frame:?}"
            );
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    wait_until("the stalled frame's bytes given back", || {
        budget.held_by("acme") == 0
    })
    .await;
    assert_eq!(bus.len("events"), 0);
}
