//! `pitboss loadgen --broadcast pitboss|socketio`: broadcast to one room. `--sockets` WebSocket
//! clients join one room of a Pitboss gateway (protocol v1, `room:<tenant>:<room>`) or of a
//! Socket.IO 4 server (Engine.IO 4 / Socket.IO 5 over a raw WebSocket, `bench/socketio`), then
//! a publisher sends pushes to the room at each of `--rates` messages/s for `--seconds`
//! (`POST /v1/publish` with an operator token; `POST /publish` on the Socket.IO server, which
//! does `io.to(room).emit`). Each message carries its send time and its number in the step; every
//! client records receive time minus send time. Per rate: deliveries/s summed over the sockets,
//! lost and duplicated deliveries, latency p50/p99/max, and the CPU this process and the server
//! (`--server-pid`) used. The same client for both servers, so the comparison is fair.
//!
//! `--rooms N` (Pitboss) spreads the sockets over N rooms (socket n in room n mod N) and sends
//! message i to room i mod N: with as many rooms as sockets every message reaches one socket,
//! which measures publish-to-socket latency at a rate of single pushes. `--source-addresses`
//! spreads the sockets' source addresses (one loopback address gives one client ~28,000 ports
//! toward one server port; 100,000 sockets need four).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::loadgen::LoadgenArgs;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Latency and counts are kept in this many shards (a socket's shard: its number modulo this),
/// so that the sockets' tasks rarely wait for one another.
const SHARDS: usize = 64;
/// The field of the push's `data` carrying `<step>:<index in the step>:<sent µs>`.
const MARK: &str = "\"bench_mark\":\"";

/// Which server `--broadcast` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// A Pitboss gateway: `/v1/ws` and `POST /v1/publish`.
    Pitboss,
    /// A Socket.IO 4 server (`bench/socketio/server.js`): `/socket.io/` and `POST /publish`.
    Socketio,
}

/// The options of `pitboss loadgen --broadcast` (besides `--gateway`, `--sockets`, `--seconds`
/// and `--settle-secs`).
#[derive(Debug, clap::Args)]
pub struct BroadcastArgs {
    /// Offered broadcast rates, messages/s to the room, one step each (ascending).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,50,100,200,500",
        requires = "broadcast"
    )]
    pub rates: Vec<f64>,
    /// An operator token allowing the room (`pitboss token --role operator --rooms '*'`); the
    /// sockets connect with it too (Pitboss only).
    #[arg(
        long,
        env = "PITBOSS_BENCH_TOKEN",
        hide_env_values = true,
        requires = "broadcast"
    )]
    pub token: Option<String>,
    /// The room.
    #[arg(long, default_value = "bench", requires = "broadcast")]
    pub room: String,
    /// The server's process id, to report the CPU it used at each rate.
    #[arg(long, requires = "broadcast")]
    pub server_pid: Option<u32>,
    /// A rate is sustained when nothing is lost and the p99 is under this (ms); after the
    /// first rate that is not, the higher ones are skipped (unless --keep-going).
    #[arg(long, default_value_t = 1000.0, requires = "broadcast")]
    pub max_p99_ms: f64,
    /// Run every rate even after one was not sustained.
    #[arg(long, requires = "broadcast")]
    pub keep_going: bool,
    /// A label for the JSON lines (e.g. the server's name and version).
    #[arg(long, default_value = "", requires = "broadcast")]
    pub label: String,
    /// Rooms the sockets are spread over (Pitboss only; `--sockets` must be a multiple): socket
    /// n joins `<room>-<n mod N>`, message i goes to `<room>-<i mod N>`. 1: every socket in
    /// `<room>`.
    #[arg(long, default_value_t = 1, requires = "broadcast")]
    pub rooms: usize,
    /// Publish every this many milliseconds the messages due by then as one array (Pitboss's
    /// `POST /v1/publish` takes up to 1000); 0: one request per message.
    #[arg(long, default_value_t = 0, requires = "broadcast")]
    pub publish_batch_ms: u64,
}

impl BroadcastArgs {
    /// The channel socket `n` joins (and message `n` goes to) among `rooms` rooms.
    fn room_of(&self, n: usize) -> String {
        if self.rooms <= 1 {
            self.room.clone()
        } else {
            format!("{}-{}", self.room, n % self.rooms)
        }
    }
}

/// Microseconds since the first call in this process: publisher and sockets share the clock.
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 2 significant digits (1 %).
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("constant bounds are valid")
}

/// What the sockets of one shard received of one step's messages.
struct StepStats {
    latency: Histogram<u64>,
    duplicates: u64,
    bytes: u64,
    /// When the last one arrived (µs, `now_us`).
    last_us: u64,
    /// Deliveries of each of the step's messages (by index).
    per_message: Vec<u32>,
}

impl StepStats {
    fn new(messages: usize) -> Self {
        StepStats {
            latency: histogram(),
            duplicates: 0,
            bytes: 0,
            last_us: 0,
            per_message: vec![0; messages],
        }
    }
}

/// Which of the newest messages a socket has had: the highest key seen and a bitmap of the
/// 128 keys below it (publishes run concurrently, so messages may arrive out of order).
#[derive(Default)]
struct Seen {
    max: Option<u64>,
    bits: u128,
}

impl Seen {
    /// Whether `key` was seen already (then it is a copy); marks it seen.
    fn copy(&mut self, key: u64) -> bool {
        let Some(max) = self.max else {
            self.max = Some(key);
            self.bits = 1;
            return false;
        };
        if key > max {
            let shift = key - max;
            self.bits = if shift >= 128 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.max = Some(key);
            return false;
        }
        let back = max - key;
        if back >= 128 {
            return false; // too far back to tell: counted
        }
        let was = self.bits & (1 << back) != 0;
        self.bits |= 1 << back;
        was
    }
}

struct Shared {
    /// `[shard][step]`.
    shards: Vec<Mutex<Vec<StepStats>>>,
    /// Deliveries so far, all steps (for the settle wait).
    delivered: Vec<AtomicU64>,
    /// Sockets the server closed (or that failed) after they were subscribed.
    closed: AtomicUsize,
}

impl Shared {
    fn record(&self, socket: usize, text: &str, seen: &mut Seen) {
        let Some((step, index, sent)) = parse_mark(text) else {
            return;
        };
        let now = now_us();
        let Some(shard) = self.shards.get(socket % SHARDS) else {
            return;
        };
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = s.get_mut(step) else {
            return;
        };
        if seen.copy(step as u64 * 1_000_000_000 + index) {
            st.duplicates += 1;
            return;
        }
        if let Some(n) = st.per_message.get_mut(index as usize) {
            *n += 1;
        }
        st.latency
            .saturating_record(now.saturating_sub(sent).max(1));
        st.bytes += text.len() as u64;
        st.last_us = st.last_us.max(now);
        drop(s);
        if let Some(d) = self.delivered.get(step) {
            d.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `<step>:<index in the step>:<sent µs>` from a delivered frame.
fn parse_mark(text: &str) -> Option<(usize, u64, u64)> {
    let at = text.find(MARK)? + MARK.len();
    let rest = &text[at..];
    let end = rest.find('"')?;
    let mut parts = rest[..end].split(':');
    let step = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((step, seq, sent))
}

/// Messages sent at `rate` for `seconds`.
fn step_messages(rate: f64, seconds: u64) -> u64 {
    (rate * seconds as f64).round().max(1.0) as u64
}

/// Resident memory of a process (bytes), from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux for every architecture this runs on.
    Some(ticks as f64 / 100.0)
}

pub async fn run(args: &LoadgenArgs, server: Server) -> Result<()> {
    let b = &args.broadcast_args;
    let sockets = args.live_args.sockets;
    if b.rates.is_empty() || b.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rates must be positive numbers of messages per second");
    }
    if b.rooms == 0 || !sockets.is_multiple_of(b.rooms) {
        bail!(
            "--rooms must divide --sockets ({sockets}) evenly; {} does not",
            b.rooms
        );
    }
    if b.publish_batch_ms > 0 && server != Server::Pitboss {
        bail!("--publish-batch-ms works with --broadcast pitboss only");
    }
    if b.publish_batch_ms > 0
        && b.rates
            .iter()
            .any(|r| r * b.publish_batch_ms as f64 / 1000.0 > 1000.0)
    {
        bail!("--publish-batch-ms: a batch would hold more than 1000 messages at the highest rate");
    }
    if b.rooms > 1 && server != Server::Pitboss {
        bail!("--rooms works with --broadcast pitboss only (the Socket.IO server has one room)");
    }
    // Deliveries each message is due: the sockets of its room.
    let room_size = sockets / b.rooms;
    let token = match (server, &b.token) {
        (Server::Pitboss, None) => bail!("--broadcast pitboss needs --token (an operator token)"),
        (_, t) => t.clone().unwrap_or_default(),
    };
    pitboss_runtime::http::raise_fd_limit();
    let base = args.live_args.gateway.trim_end_matches('/').to_owned();
    let http_base = base
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    let (ws_url, publish_url) = match server {
        Server::Pitboss => (
            format!("{base}/v1/ws?token={token}"),
            format!("{http_base}/v1/publish"),
        ),
        Server::Socketio => (
            format!("{base}/socket.io/?EIO=4&transport=websocket"),
            format!("{http_base}/publish"),
        ),
    };
    let sources = &args.live_args.source_addresses;
    if !sources.is_empty() && !base.starts_with("ws://") {
        bail!("--source-addresses works with a ws:// gateway only");
    }
    let shared = Arc::new(Shared {
        shards: (0..SHARDS)
            .map(|_| {
                Mutex::new(
                    b.rates
                        .iter()
                        .map(|r| StepStats::new(step_messages(*r, args.seconds) as usize))
                        .collect(),
                )
            })
            .collect(),
        delivered: b.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        closed: AtomicUsize::new(0),
    });
    now_us();

    let rss_before = b.server_pid.and_then(rss_bytes);
    // Connect every socket, 256 at a time.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
    let bar = indicatif::ProgressBar::new(sockets as u64).with_style(
        indicatif::ProgressStyle::with_template("connecting {bar:40} {pos}/{len} sockets")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ids: Vec<usize> = (0..sockets).collect();
    for chunk in ids.chunks(256) {
        let mut starting = Vec::new();
        for &n in chunk {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (url, channel, shared, stop) = (
                ws_url.clone(),
                format!("room:{}:{}", args.tenant, b.room_of(n)),
                shared.clone(),
                stop_rx.clone(),
            );
            let from = sources.get(n % sources.len().max(1)).copied();
            tasks.spawn(async move {
                let r = socket(server, n, &url, from, &channel, &shared, stop, ready_tx).await;
                if r.is_err() {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                }
            });
            starting.push(ready_rx);
        }
        for ready in starting {
            match ready.await {
                Ok(Ok(())) => bar.inc(1),
                Ok(Err(e)) => {
                    bar.abandon();
                    return Err(e);
                }
                Err(_) => bail!("a socket task ended before it joined the room"),
            }
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "{sockets} sockets in the room in {:.1} s",
        connect_started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the sockets cost the server: its resident memory's growth while they connected.
    let per_socket = match (rss_before, b.server_pid.and_then(rss_bytes)) {
        (Some(before), Some(after)) => {
            let per = after.saturating_sub(before) as f64 / sockets.max(1) as f64;
            eprintln!(
                "server resident memory {} -> {} MB while they connected: {per:.0} bytes per socket",
                before / 1_000_000,
                after / 1_000_000
            );
            Some(per.round())
        }
        _ => None,
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()?;
    let mut rows = Vec::new();
    for (step, &rate) in b.rates.iter().enumerate() {
        let (self0, server0, wall0) = (
            cpu_seconds(None),
            b.server_pid.and_then(|p| cpu_seconds(Some(p))),
            Instant::now(),
        );
        let start_us = now_us();
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let inflight = Arc::new(Semaphore::new(512));
        let total = step_messages(rate, args.seconds);
        let started = tokio::time::Instant::now();
        let mut publishes = tokio::task::JoinSet::new();
        let message = |i: u64| {
            json!({
                "target": {"room": b.room_of(i as usize)},
                "kind": "operator.message",
                "title": "Broadcast benchmark",
                "body": "One of the messages of scripts/bench-broadcast.sh",
                "data": {"bench_mark": format!("{step}:{i}:{}", now_us())},
            })
        };
        let mut i = 0;
        let mut tick = 0u64;
        while i < total {
            // A fixed schedule, whatever the answers take: message i leaves at i / rate, or
            // with --publish-batch-ms, with the others due by the end of its interval.
            let (body, n) = if b.publish_batch_ms == 0 {
                tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
                (message(i).to_string(), 1)
            } else {
                tick += 1;
                let at = Duration::from_millis(tick * b.publish_batch_ms);
                tokio::time::sleep_until(started + at).await;
                let upto = ((at.as_secs_f64() * rate).floor() as u64).clamp(i, total);
                if upto == i {
                    continue;
                }
                let batch: Vec<_> = (i..upto).map(message).collect();
                (serde_json::Value::Array(batch).to_string(), upto - i)
            };
            i += n;
            let permit = inflight.clone().acquire_owned().await?;
            let (http, url, token, sent, failed) = (
                http.clone(),
                publish_url.clone(),
                token.clone(),
                sent.clone(),
                failed.clone(),
            );
            publishes.spawn(async move {
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                if !token.is_empty() {
                    req = req.bearer_auth(&token);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        sent.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(n, Ordering::Relaxed);
                        eprintln!("publish answered {}", r.status());
                    }
                    Err(e) => {
                        failed.fetch_add(n, Ordering::Relaxed);
                        eprintln!("publish failed: {e}");
                    }
                }
                drop(permit);
            });
        }
        while publishes.join_next().await.is_some() {}
        let send_secs = (now_us() - start_us) as f64 / 1e6;
        // Settle: until every delivery is in, or nothing arrived for a while.
        let open = sockets - shared.closed.load(Ordering::Relaxed).min(sockets);
        let expected = sent.load(Ordering::Relaxed) * open.div_ceil(b.rooms) as u64;
        let delivered_now = || {
            shared
                .delivered
                .get(step)
                .map_or(0, |d| d.load(Ordering::Relaxed))
        };
        let settle_until = Instant::now() + Duration::from_secs(args.live_args.settle_secs);
        let (mut last, mut last_change) = (delivered_now(), Instant::now());
        while delivered_now() < expected && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let d = delivered_now();
            if d != last {
                (last, last_change) = (d, Instant::now());
            } else if last_change.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let wall = wall0.elapsed().as_secs_f64();
        let client_cpu = match (self0, cpu_seconds(None)) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let server_cpu = match (server0, b.server_pid.and_then(|p| cpu_seconds(Some(p)))) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let mut merged = StepStats::new(total as usize);
        for shard in &shared.shards {
            let s = shard.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(st) = s.get(step) {
                let _ = merged.latency.add(&st.latency);
                merged.duplicates += st.duplicates;
                merged.bytes += st.bytes;
                merged.last_us = merged.last_us.max(st.last_us);
                for (m, n) in merged.per_message.iter_mut().zip(&st.per_message) {
                    *m += n;
                }
            }
        }
        // Messages not every socket got (e.g. a publish refused, or lost on the way).
        let incomplete: Vec<usize> = merged
            .per_message
            .iter()
            .enumerate()
            .filter(|(_, n)| (**n as usize) < room_size)
            .map(|(i, _)| i)
            .collect();
        let delivered = merged.latency.len();
        let sent_n = sent.load(Ordering::Relaxed);
        // Everything the sockets subscribed at the start should have had.
        let due = sent_n * room_size as u64;
        let lost = due.saturating_sub(delivered);
        let span = (merged.last_us.saturating_sub(start_us) as f64 / 1e6).max(send_secs);
        let ms = |q: f64| merged.latency.value_at_quantile(q) as f64 / 1000.0;
        let row = json!({
            "server": match server { Server::Pitboss => "pitboss", Server::Socketio => "socketio" },
            "label": b.label,
            "sockets": sockets,
            "rooms": b.rooms,
            "publish_batch_ms": b.publish_batch_ms,
            "rate": rate,
            "seconds": args.seconds,
            "messages_sent": sent_n,
            "publish_failed": failed.load(Ordering::Relaxed),
            "publish_rate": (sent_n as f64 / send_secs).round(),
            "deliveries_due": due,
            "delivered": delivered,
            "delivered_per_sec": (delivered as f64 / span).round(),
            "lost": lost,
            "duplicated": merged.duplicates,
            "messages_incomplete": incomplete.len(),
            "incomplete_examples": incomplete.iter().take(5).map(|i| {
                format!("{i}: {} sockets", merged.per_message.get(*i).copied().unwrap_or(0))
            }).collect::<Vec<_>>(),
            "sockets_closed": shared.closed.load(Ordering::Relaxed),
            "frame_bytes": merged.bytes.checked_div(delivered).unwrap_or(0),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": merged.latency.max() as f64 / 1000.0,
            "client_cpu": client_cpu.map(|c| (c * 100.0).round() / 100.0),
            "server_cpu": server_cpu.map(|c| (c * 100.0).round() / 100.0),
            "server_bytes_per_socket": per_socket,
        });
        println!("{row}");
        let sustained = lost == 0 && delivered > 0 && ms(0.99) <= b.max_p99_ms;
        rows.push(row);
        if !sustained && !b.keep_going {
            eprintln!("{rate} messages/s not sustained; higher rates skipped");
            break;
        }
    }
    let _ = stop_tx.send(true);
    let stopping = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    });
    let _ = stopping.await;
    tasks.abort_all();
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One client: connects, joins the room (says so on `ready`), records every message until
/// `stop`. An error after joining means the server closed it.
#[allow(clippy::too_many_arguments)]
async fn socket(
    server: Server,
    n: usize,
    url: &str,
    from: Option<std::net::IpAddr>,
    channel: &str,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
) -> Result<()> {
    // Small buffers (they grow when a frame needs it): 10,000 sockets at tungstenite's
    // default 128 KiB would take over a gigabyte.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::loadgen_live::connect_with(url, from, Some(config)),
    )
    .await;
    // Messages name the address without its query, which carries the token.
    let url = url.split('?').next().unwrap_or_default();
    let mut ws: Ws = match connected {
        Err(_) => {
            let _ = ready.send(Err(anyhow::anyhow!(
                "{url} did not answer within {CONNECT_TIMEOUT:?}"
            )));
            bail!("timeout");
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(anyhow::anyhow!("cannot connect to {url}: {e}")));
            bail!("connect");
        }
        Ok(Ok((ws, _))) => ws,
    };
    let mut ready = Some(ready);
    if server == Server::Pitboss {
        let subscribe = json!({"type": "subscribe", "id": 1, "channel": channel}).to_string();
        ws.send(Message::text(subscribe)).await?;
    }
    let mut seen = Seen::default();
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ok(());
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None if ready.is_some() => {
                let why = format!("{url} closed the connection before it joined the room");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(anyhow::anyhow!(why)));
                }
                bail!("closed");
            }
            Some(Ok(Message::Close(_))) | None => {
                if *stop.borrow() {
                    return Ok(());
                }
                bail!("closed by the server");
            }
            Some(Err(e)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(anyhow::anyhow!("{url}: {e}")));
                }
                if *stop.borrow() {
                    return Ok(());
                }
                return Err(e).context("the connection failed");
            }
            Some(Ok(_)) => continue,
        };
        let t = text.as_str();
        match server {
            Server::Pitboss => {
                if t.starts_with(r#"{"type":"message""#) {
                    shared.record(n, t, &mut seen);
                } else if t.contains(r#""type":"subscribed""#) {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                } else if t.contains(r#""type":"error""#)
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(Err(anyhow::anyhow!("the gateway refused {channel}: {t}")));
                    bail!("refused");
                }
            }
            // Engine.IO packets: 0 open, 2 ping, 4 message; Socket.IO inside: 0 connect,
            // 2 event.
            Server::Socketio => {
                if t.starts_with("42") {
                    shared.record(n, t, &mut seen);
                } else if t == "2" {
                    ws.send(Message::text("3")).await?;
                } else if t.starts_with("0{") {
                    ws.send(Message::text("40")).await?;
                } else if t.starts_with("40")
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(Ok(()));
                } else if t.starts_with("44")
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(Err(anyhow::anyhow!("the server refused the connect: {t}")));
                    bail!("refused");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(rooms: usize) -> BroadcastArgs {
        BroadcastArgs {
            rates: vec![1.0],
            token: None,
            room: "bench".into(),
            server_pid: None,
            max_p99_ms: 1000.0,
            keep_going: false,
            label: String::new(),
            rooms,
            publish_batch_ms: 0,
        }
    }

    #[test]
    fn sockets_and_messages_are_spread_over_the_rooms() {
        assert_eq!(args(1).room_of(7), "bench");
        let many = args(4);
        assert_eq!(many.room_of(0), "bench-0");
        assert_eq!(many.room_of(7), "bench-3");
    }

    #[test]
    fn marks_are_read_from_both_servers_frames() {
        let pitboss = r#"{"type":"message","channel":"room:demo:bench","cursor":"1=4","kind":"push","id":"x","data":{"data":{"bench_mark":"2:17:123456"},"title":"t"}}"#;
        assert_eq!(parse_mark(pitboss), Some((2, 17, 123456)));
        let socketio = r#"42["push",{"data":{"bench_mark":"0:1:99"}}]"#;
        assert_eq!(parse_mark(socketio), Some((0, 1, 99)));
        assert_eq!(parse_mark(r#"42["push",{}]"#), None);
    }

    #[test]
    fn copies_are_told_from_messages_out_of_order() {
        let mut s = Seen::default();
        assert!(!s.copy(5));
        assert!(!s.copy(3));
        assert!(!s.copy(7));
        assert!(s.copy(5));
        assert!(s.copy(3));
        assert!(!s.copy(4));
        assert!(s.copy(7));
        assert!(!s.copy(1000));
        assert!(s.copy(1000));
        assert!(!s.copy(7));
    }

    #[test]
    fn this_process_cpu_is_readable() {
        assert!(cpu_seconds(None).is_some());
    }
}
