//! `pitboss loadgen --live`: the live path under load. The demo simulator's events (normal play
//! with injected fraud and risky-play patterns, `demo.rs`) go to an ingest API at `--rate`
//! events/s while `--sockets` players and `--operators` operators hold WebSocket connections
//! to a gateway. Every player a pattern targets is connected before its first event is sent.
//! The report: accepted events/s; time to notify (from sending the event that fired a rule to
//! the push or alert arriving on the socket) p50/p95/p99/max; and every push and alert the
//! injected patterns must raise matched to its delivery — lost and duplicated ones counted.
//! Exits non-zero when one is lost or duplicated, or the target cannot be used.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use pitboss_gateway::Role;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::demo::{DemoConfig, Expected, Simulator};
use crate::loadgen::LoadgenArgs;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The live-path options of `pitboss loadgen --live`.
#[derive(Debug, clap::Args)]
pub struct LiveArgs {
    /// Base URL of the gateway's WebSocket API (with --broadcast socketio, of the Socket.IO
    /// server).
    #[arg(long, default_value = "ws://127.0.0.1:8081")]
    pub gateway: String,
    /// Player connections held open besides those of the injected patterns' players (with
    /// --broadcast: the clients in the room).
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Operator connections (each subscribed to the tenant's alerts).
    #[arg(long, default_value_t = 2, requires = "live")]
    pub operators: usize,
    /// The gateway's HS256 secret, to sign the clients' tokens (`pitboss up`'s by default).
    #[arg(
        long,
        env = "PITBOSS_GATEWAY_JWT_SECRET_FILE",
        default_value = ".pitboss/gateway-jwt-secret"
    )]
    pub jwt_secret_file: std::path::PathBuf,
    /// Share (0–0.5) of the events from injected fraud and risky-play patterns.
    #[arg(long, default_value_t = 0.02, requires = "live")]
    pub risky_share: f64,
    /// The simulator's seed.
    #[arg(long, default_value_t = 1, requires = "live")]
    pub seed: u64,
    /// After sending, how long to wait for the last pushes and alerts (seconds; with
    /// --broadcast, after each rate).
    #[arg(long, default_value_t = 15)]
    pub settle_secs: u64,
    /// Local addresses the sockets connect from, in turn (e.g. 127.0.0.2,127.0.0.3: a load
    /// balancer that hashes the client address then spreads them over its gateways; `ws://`
    /// only).
    #[arg(long, value_delimiter = ',')]
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Writes every push and alert the run expected, one JSON object a line (tenant, player,
    /// rule, push), e.g. to check the store afterwards.
    #[arg(long, requires = "live")]
    pub expected_file: Option<std::path::PathBuf>,
}

/// A push or alert as it arrived on a socket.
#[derive(Debug)]
struct Received {
    alert: bool,
    id: String,
    /// The player the message names (the push's target, the alert's player).
    player: String,
    rule: String,
    trigger: String,
    /// The connection it came on.
    socket: usize,
    /// Sent as part of a subscribe (missed ones; on an operator channel, every alert not
    /// acknowledged yet, which loadgen never acknowledges).
    replayed: bool,
    at: Instant,
    /// When it arrived (Unix microseconds), and the message's own times (Unix milliseconds):
    /// ingest's receipt of the triggering event and the rule's detection (an alert's
    /// `detected_at`, a push's `created_at`), for the time per stage.
    arrived_us: i64,
    received_ms: Option<i64>,
    produced_ms: Option<i64>,
}

/// What one socket subscribes to, as whom, and from which local address.
#[derive(Debug, Clone)]
struct SocketSpec {
    n: usize,
    token: String,
    channel: String,
    source: Option<std::net::IpAddr>,
}

/// Every event id sent, with when it left.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// The wall clock in microseconds since the Unix epoch.
fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

pub async fn run(args: &LoadgenArgs, key: String) -> Result<()> {
    let live = &args.live_args;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of events per second");
    }
    let demo = DemoConfig {
        seed: live.seed,
        tenants: vec![args.tenant.clone()],
        // A person acts every 20 s or so: enough players that the rate is human per player
        // (faster normal play would itself be fraud to the rules).
        players_per_tenant: args
            .players
            .max(live.sockets)
            .max((args.rate * 20.0) as usize)
            .max(1),
        events_per_second: args.rate,
        risky_share: live.risky_share,
    };
    demo.validate().map_err(anyhow::Error::msg)?;
    let secret = std::fs::read_to_string(&live.jwt_secret_file)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the gateway's secret {} (--jwt-secret-file): {e}",
                live.jwt_secret_file.display()
            )
        })?
        .trim()
        .as_bytes()
        .to_vec();
    let token = |sub: &str, role: Role| -> Result<String> {
        let c = pitboss_gateway::auth::claims(
            &args.tenant,
            sub,
            role,
            Vec::new(),
            Duration::from_secs(args.seconds + live.settle_secs + 3600),
        );
        pitboss_gateway::auth::sign_hs256(&c, &secret)
    };
    pitboss_runtime::http::raise_fd_limit();

    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let url = format!("{}/v1/events", args.url.trim_end_matches('/'));
    check_ingest(&http, &url, &key).await?;
    let ws_url = format!("{}/v1/ws", live.gateway.trim_end_matches('/'));

    let source = |n: usize| {
        (!live.source_addresses.is_empty())
            .then(|| live.source_addresses[n % live.source_addresses.len()])
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Operators first: a refused token or a wrong address fails here, in one line.
    let mut specs = Vec::new();
    for o in 0..live.operators {
        specs.push(SocketSpec {
            n: o,
            token: token(&format!("loadgen-ops-{o}"), Role::Operator)?,
            channel: format!("operator:{}", args.tenant),
            source: source(o),
        });
    }
    let player_spec = |n: usize, player: &str| -> Result<SocketSpec> {
        Ok(SocketSpec {
            n,
            token: token(player, Role::Player)?,
            channel: format!("player:{}:{player}", args.tenant),
            source: source(n),
        })
    };
    for p in 0..live.sockets {
        specs.push(player_spec(live.operators + p, &format!("p-{p:06}"))?);
    }
    let bar = indicatif::ProgressBar::new(specs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("connecting {bar:40} {pos}/{len} sockets")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut connected = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in specs.chunks(256) {
        let mut starting = Vec::new();
        for spec in chunk {
            starting.push(start_socket(
                &mut tasks,
                ws_url.clone(),
                spec.clone(),
                tx.clone(),
                stop_rx.clone(),
                FirstConnect::Fatal,
            ));
        }
        for ready in starting {
            match ready.await {
                Ok(Ok(())) => {
                    connected += 1;
                    bar.inc(1);
                }
                Ok(Err(e)) => {
                    bar.abandon();
                    bail!("{e}");
                }
                Err(_) => bail!("a socket task ended before connecting"),
            }
        }
    }
    bar.finish_and_clear();

    // The run: events from the simulator every 100 ms, patterns' players connected first.
    let start_ms = pitboss_model::Timestamp::now().as_millis();
    let mut sim = Simulator::new(demo, start_ms);
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    // The same moments on the wall clock (Unix microseconds), to compare with the times the
    // server writes into alerts and pushes.
    let mut sent_wall: HashMap<String, i64> = HashMap::new();
    let mut expected: Vec<Expected> = Vec::new();
    let mut pattern_players: HashSet<String> = HashSet::new();
    // Players some of whose events were not accepted (a request failed: the server restarting):
    // what their patterns would raise is not expected of the server.
    let mut unsent_players: HashSet<String> = HashSet::new();
    let mut next_socket = live.operators + live.sockets;
    let (mut accepted, mut refused, mut failed_requests) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let progress = indicatif::ProgressBar::new(args.seconds).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut received: Vec<Received> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The simulator's time of the last events handed out: what is due by then has been sent.
    let mut advanced_to = start_ms;
    while Instant::now() < deadline {
        tick.tick().await;
        advanced_to = pitboss_model::Timestamp::now().as_millis();
        let events = sim.advance(advanced_to);
        // Connect the players of newly injected patterns before their events leave.
        let fresh = sim.take_expected();
        let mut starting = Vec::new();
        for x in &fresh {
            if x.push && pattern_players.insert(x.player.clone()) {
                let spec = player_spec(next_socket, &x.player)?;
                next_socket += 1;
                starting.push(start_socket(
                    &mut tasks,
                    ws_url.clone(),
                    spec,
                    tx.clone(),
                    stop_rx.clone(),
                    FirstConnect::Retried,
                ));
            }
        }
        expected.extend(fresh);
        // The pattern's events wait for its player's socket: through a gateway restart, until
        // it is back (or the run is over).
        for ready in starting {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.max(CONNECT_TIMEOUT), ready).await {
                Ok(Ok(Ok(()))) => connected += 1,
                Ok(Ok(Err(e))) => bail!("{e}"),
                Ok(Err(_)) => bail!("a socket task ended before connecting"),
                Err(_) => bail!(
                    "the gateway at {ws_url} did not take a pattern player's socket before the run ended"
                ),
            }
        }
        for batch in events.chunks(2000) {
            let (now, wall) = (Instant::now(), unix_micros());
            {
                let mut s = sent.lock().unwrap_or_else(|e| e.into_inner());
                for e in batch {
                    if let Some(id) = e["event_id"].as_str() {
                        s.insert(id.to_owned(), now);
                        sent_wall.insert(id.to_owned(), wall);
                    }
                }
            }
            match http.post(&url).bearer_auth(&key).json(batch).send().await {
                Ok(resp) if resp.status().is_success() => {
                    let answer: Value = resp.json().await.unwrap_or_default();
                    accepted += answer["accepted"].as_u64().unwrap_or(0)
                        + answer["duplicates"].as_u64().unwrap_or(0);
                    refused += answer["rejected"].as_u64().unwrap_or(0);
                }
                Ok(resp) => {
                    failed_requests += 1;
                    unsent_players.extend(players_of(batch));
                    progress.println(format!("ingest answered {}", resp.status()));
                }
                Err(e) => {
                    failed_requests += 1;
                    unsent_players.extend(players_of(batch));
                    progress.println(format!("ingest request failed: {e}"));
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            received.push(r);
        }
        let elapsed = started.elapsed();
        progress.set_position(elapsed.as_secs().min(args.seconds));
        progress.set_message(format!(
            "{:.0} events/s, {connected} sockets, {} notifications",
            accepted as f64 / elapsed.as_secs_f64().max(0.001),
            received.len()
        ));
    }
    let send_secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Settle: wait for what the last events must still raise.
    let settle_until = Instant::now() + Duration::from_secs(live.settle_secs);
    // A pattern needs its player's events and its other players' (shared devices, addresses).
    let lacks_events = |x: &Expected| {
        std::iter::once(&x.player)
            .chain(&x.others)
            .any(|p| unsent_players.contains(p))
    };
    let due: Vec<&Expected> = expected
        .iter()
        .filter(|x| x.due_ms <= advanced_to && !lacks_events(x))
        .collect();
    let unsent = expected
        .iter()
        .filter(|x| x.due_ms <= advanced_to && lacks_events(x))
        .count();
    loop {
        while let Ok(r) = rx.try_recv() {
            received.push(r);
        }
        let report = Matching::new(&due, &received, live.operators > 0, &sent);
        if report.missing() == 0 || Instant::now() >= settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    while let Ok(r) = rx.try_recv() {
        received.push(r);
    }

    // Time to notify: from sending the event that fired the rule to the socket.
    let m = Matching::new(&due, &received, live.operators > 0, &sent);
    let sent_at = sent.lock().unwrap_or_else(|e| e.into_inner());
    let (mut pushes_h, mut alerts_h) = (histogram(), histogram());
    for r in received.iter().filter(|r| !r.replayed) {
        if let Some(t) = sent_at.get(&r.trigger) {
            let micros = r.at.saturating_duration_since(*t).as_micros() as u64;
            if r.alert {
                alerts_h.saturating_record(micros.max(1));
            } else {
                pushes_h.saturating_record(micros.max(1));
            }
        }
    }
    // Where the time goes, per live delivery (both kinds): loadgen's send to ingest's receipt
    // (the request's serialization and transfer), ingest's receipt to the rule firing (ingest,
    // the bus, the rules engine), the rule firing to the socket (the bus, the gateway, the
    // socket, loadgen reading it). Millisecond timestamps: each stage is ±1 ms.
    let mut stages = [histogram(), histogram(), histogram()];
    for r in received.iter().filter(|r| !r.replayed) {
        if let (Some(sent), Some(received_ms), Some(produced_ms)) =
            (sent_wall.get(&r.trigger), r.received_ms, r.produced_ms)
        {
            let points = [*sent, received_ms * 1000, produced_ms * 1000, r.arrived_us];
            for (h, w) in stages.iter_mut().zip(points.windows(2)) {
                h.saturating_record((w[1] - w[0]).max(1) as u64);
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let events_per_sec = accepted as f64 / send_secs;
    println!(
        "live load: {:.0} events/s asked, {events_per_sec:.0} accepted events/s for {send_secs:.1} s; {connected} sockets ({} operators)",
        args.rate, live.operators
    );
    println!(
        "requests: {failed_requests} failed; events refused: {refused}; patterns injected: {} ({} due, {unsent} more whose events were not all accepted, not expected)",
        expected.len(),
        due.len()
    );
    for (name, h) in [("pushes", &pushes_h), ("alerts", &alerts_h)] {
        println!(
            "time to notify, {name} ({}): p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            h.len(),
            ms(h, 0.5),
            ms(h, 0.95),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "where the time goes ({} deliveries; p50 / p95 / p99 ms): to ingest {:.1} / {:.1} / {:.1}, ingest to rule fired {:.1} / {:.1} / {:.1}, rule fired to socket {:.1} / {:.1} / {:.1}",
        stages[0].len(),
        ms(&stages[0], 0.5),
        ms(&stages[0], 0.95),
        ms(&stages[0], 0.99),
        ms(&stages[1], 0.5),
        ms(&stages[1], 0.95),
        ms(&stages[1], 0.99),
        ms(&stages[2], 0.5),
        ms(&stages[2], 0.95),
        ms(&stages[2], 0.99),
    );
    println!(
        "pushes: {} expected, {} delivered, {} lost, {} duplicated; alerts: {} expected, {} delivered, {} lost, {} duplicated",
        m.pushes_expected,
        m.pushes_matched,
        m.pushes_lost,
        m.pushes_duplicated,
        m.alerts_expected,
        m.alerts_matched,
        m.alerts_lost,
        m.alerts_duplicated
    );
    println!(
        "{}",
        json!({
            "rate": args.rate, "seconds": send_secs, "sockets": connected, "operators": live.operators,
            "accepted": accepted, "events_per_sec": events_per_sec.round(), "refused": refused,
            "failed_requests": failed_requests, "not_expected": unsent,
            "push_p50_ms": ms(&pushes_h, 0.5), "push_p95_ms": ms(&pushes_h, 0.95),
            "push_p99_ms": ms(&pushes_h, 0.99), "push_max_ms": pushes_h.max() as f64 / 1000.0,
            "pushes_measured": pushes_h.len(),
            "alert_p50_ms": ms(&alerts_h, 0.5), "alert_p95_ms": ms(&alerts_h, 0.95),
            "alert_p99_ms": ms(&alerts_h, 0.99), "alert_max_ms": alerts_h.max() as f64 / 1000.0,
            "alerts_measured": alerts_h.len(),
            "pushes_expected": m.pushes_expected, "pushes_lost": m.pushes_lost,
            "pushes_duplicated": m.pushes_duplicated, "alerts_expected": m.alerts_expected,
            "alerts_lost": m.alerts_lost, "alerts_duplicated": m.alerts_duplicated,
            "stage_ingest_p50_ms": ms(&stages[0], 0.5), "stage_ingest_p95_ms": ms(&stages[0], 0.95),
            "stage_ingest_p99_ms": ms(&stages[0], 0.99),
            "stage_detect_p50_ms": ms(&stages[1], 0.5), "stage_detect_p95_ms": ms(&stages[1], 0.95),
            "stage_detect_p99_ms": ms(&stages[1], 0.99),
            "stage_deliver_p50_ms": ms(&stages[2], 0.5), "stage_deliver_p95_ms": ms(&stages[2], 0.95),
            "stage_deliver_p99_ms": ms(&stages[2], 0.99),
        })
    );
    if let Some(path) = &live.expected_file {
        let lines: String = due
            .iter()
            .map(|x| {
                format!(
                    "{}\n",
                    json!({"tenant": x.tenant, "player": x.player, "rule": x.rule, "push": x.push})
                )
            })
            .collect();
        std::fs::write(path, lines)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if !m.lost_examples.is_empty() {
        eprintln!("not delivered: {}", m.lost_examples.join(", "));
    }
    if m.pushes_lost + m.alerts_lost + m.pushes_duplicated + m.alerts_duplicated > 0 {
        bail!("notifications lost or duplicated (see the report above)");
    }
    if refused + failed_requests > 0 {
        bail!("{refused} events refused and {failed_requests} requests failed");
    }
    Ok(())
}

/// The expected notifications matched to the delivered ones.
#[derive(Debug, Default)]
struct Matching {
    pushes_expected: usize,
    pushes_matched: usize,
    pushes_lost: usize,
    pushes_duplicated: usize,
    alerts_expected: usize,
    alerts_matched: usize,
    alerts_lost: usize,
    alerts_duplicated: usize,
    lost_examples: Vec<String>,
}

impl Matching {
    /// Alerts are expected only when operators are connected (`alerts`). Only messages that
    /// events of this run fired count (`sent`: a gateway's history may hold an earlier run's).
    /// An alert replayed to an operator is the gateway redelivering what is not acknowledged,
    /// not a copy; anything else twice on one connection is.
    fn new(due: &[&Expected], received: &[Received], alerts: bool, sent: &Sent) -> Matching {
        let mut m = Matching::default();
        let sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        // (alert?, player, rule) delivered, and how often each (socket, id) came.
        let mut delivered: HashSet<(bool, &str, &str)> = HashSet::new();
        let mut copies: HashMap<(usize, &str), usize> = HashMap::new();
        for r in received.iter().filter(|r| sent.contains_key(&r.trigger)) {
            delivered.insert((r.alert, &r.player, &r.rule));
            if !(r.alert && r.replayed) {
                *copies.entry((r.socket, &r.id)).or_default() += 1;
            }
        }
        drop(sent);
        for ((_, id), n) in &copies {
            if *n > 1 {
                let alert = received.iter().any(|r| r.id == *id && r.alert);
                if alert {
                    m.alerts_duplicated += n - 1;
                } else {
                    m.pushes_duplicated += n - 1;
                }
            }
        }
        for x in due {
            // A pattern of several accounts (a shared device or address) raises its alert on
            // whichever of them the engine reads last: the order of logins from several
            // players sent together is the bus's, not the simulator's.
            let raised = std::iter::once(&x.player)
                .chain(&x.others)
                .any(|p| delivered.contains(&(true, p.as_str(), x.rule)));
            if !alerts {
            } else if raised {
                m.alerts_expected += 1;
                m.alerts_matched += 1;
            } else {
                m.alerts_expected += 1;
                m.alerts_lost += 1;
                if m.lost_examples.len() < 10 {
                    m.lost_examples
                        .push(format!("alert {} for {}", x.rule, x.player));
                }
            }
            if x.push {
                m.pushes_expected += 1;
                if delivered.contains(&(false, x.player.as_str(), x.rule)) {
                    m.pushes_matched += 1;
                } else {
                    m.pushes_lost += 1;
                    if m.lost_examples.len() < 10 {
                        m.lost_examples
                            .push(format!("push {} to {}", x.rule, x.player));
                    }
                }
            }
        }
        m
    }

    fn missing(&self) -> usize {
        self.alerts_lost + self.pushes_lost
    }
}

/// An error and its causes on one line.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Checks the ingest API is there and takes the key (an empty batch is refused for being
/// empty, not for the key).
async fn check_ingest(http: &reqwest::Client, url: &str, key: &str) -> Result<()> {
    let resp = http
        .post(url)
        .bearer_auth(key)
        .json(&json!([]))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the ingest API at {url}: {}", causes(&e)))?;
    match resp.status().as_u16() {
        401 | 403 => {
            let body = resp.text().await.unwrap_or_default();
            bail!("the ingest API at {url} refused the key: {body}")
        }
        404 => bail!("{url} is not an ingest API (404)"),
        _ => Ok(()),
    }
}

/// Starts one socket: connects, subscribes, and reports every message to `tx`; reconnects
/// with its cursor when the gateway closes it. The receiver says when it is subscribed (or
/// why it could not be).
fn start_socket(
    tasks: &mut tokio::task::JoinSet<()>,
    url: String,
    spec: SocketSpec,
    tx: mpsc::UnboundedSender<Received>,
    mut stop: watch::Receiver<bool>,
    first: FirstConnect,
) -> tokio::sync::oneshot::Receiver<Result<()>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tasks.spawn(async move {
        let mut ready = Some(ready_tx);
        let mut cursor: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            match session(&url, &spec, &tx, &mut stop, &mut cursor, &mut ready).await {
                Ok(true) => return, // stopped
                Ok(false) => attempt = 0,
                Err(e) => {
                    if first == FirstConnect::Fatal
                        && let Some(r) = ready.take()
                    {
                        let _ = r.send(Err(e));
                        return;
                    }
                    attempt += 1;
                }
            }
            if *stop.borrow() {
                return;
            }
            // Reconnect with backoff and jitter (a gateway restarting or failing over).
            let ms = rand::random_range(0..=(100u64 << attempt.min(6)));
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
        }
    });
    ready_rx
}

/// What a socket's first connection failing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstConnect {
    /// The run stops with its error (before the run: a wrong address or token).
    Fatal,
    /// It is tried again like a reconnect (during the run: the gateway restarting), and the
    /// socket is ready once it has subscribed.
    Retried,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `address`, from `source` when one is given (`ws://` only).
async fn connect(
    address: &str,
    source: Option<std::net::IpAddr>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    connect_with(address, source, None).await
}

/// [`connect`] with a WebSocket configuration (buffer sizes).
pub(crate) async fn connect_with(
    address: &str,
    source: Option<std::net::IpAddr>,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let Some(source) = source else {
        return tokio_tungstenite::connect_async_with_config(address, config, true).await;
    };
    let request = address.into_client_request()?;
    let uri = request.uri();
    let (host, port) = (
        uri.host().unwrap_or_default().to_owned(),
        uri.port_u16().unwrap_or(80),
    );
    let peer = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| Error::Io(std::io::Error::other(format!("no address for {host}"))))?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind((source, 0).into()).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot bind to {source}: {e}"),
        ))
    })?;
    socket.set_nodelay(true)?;
    let stream = socket.connect(peer).await?;
    tokio_tungstenite::client_async_with_config(
        request,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        config,
    )
    .await
}

/// One connection; `Ok(true)` when told to stop, `Ok(false)` when the gateway closed it.
async fn session(
    url: &str,
    spec: &SocketSpec,
    tx: &mpsc::UnboundedSender<Received>,
    stop: &mut watch::Receiver<bool>,
    cursor: &mut Option<String>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<()>>>,
) -> Result<bool> {
    let address = format!("{url}?token={}", spec.token);
    let (mut ws, _) =
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&address, spec.source)).await {
            Err(_) => bail!("the gateway at {url} did not answer within {CONNECT_TIMEOUT:?}"),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => {
                let body =
                    String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).into_owned();
                bail!(
                    "the gateway at {url} refused the connection ({}): {body}",
                    res.status()
                )
            }
            Ok(Err(e)) => bail!("cannot reach the gateway at {url}: {}", causes(&e)),
            Ok(Ok(c)) => c,
        };
    let mut subscribe = json!({"type": "subscribe", "id": 1, "channel": spec.channel});
    if let Some(c) = cursor.as_ref() {
        subscribe["since"] = c.clone().into();
    }
    ws.send(Message::text(subscribe.to_string())).await?;
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ok(true);
            }
            _ = ping.tick() => {
                ws.send(Message::text(r#"{"type":"ping"}"#)).await?;
                continue;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            None => return Ok(false),
            Some(Err(e)) => {
                if ready.is_some() {
                    bail!("the gateway at {url} dropped the connection: {e}");
                }
                return Ok(false);
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) => return Ok(false),
            Some(Ok(_)) => continue,
        };
        let Ok(f) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match f["type"].as_str() {
            Some("subscribed") => {
                if let Some(c) = f["cursor"].as_str() {
                    *cursor = Some(c.to_owned());
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Some("cursor") => *cursor = f["cursor"].as_str().map(str::to_owned),
            Some("error") if ready.is_some() => {
                bail!("the gateway refused {}: {}", spec.channel, f["message"]);
            }
            Some("message") => {
                if let Some(c) = f["cursor"].as_str() {
                    *cursor = Some(c.to_owned());
                }
                let d = &f["data"];
                let alert = f["kind"] == "alert";
                let (player, rule, trigger) = if alert {
                    (&d["player_id"], &d["rule_id"], &d["trigger_event_id"])
                } else {
                    (
                        &d["target"]["player"],
                        &d["source"]["rule"]["rule_id"],
                        &d["source"]["rule"]["trigger_event_id"],
                    )
                };
                let ms = |v: &Value| {
                    v.as_str()
                        .and_then(|t| pitboss_model::Timestamp::parse_rfc3339(t).ok())
                        .map(|t| t.as_millis())
                };
                let produced = if alert {
                    &d["detected_at"]
                } else {
                    &d["created_at"]
                };
                let _ = tx.send(Received {
                    arrived_us: unix_micros(),
                    received_ms: ms(&d["received_at"]),
                    produced_ms: ms(produced),
                    alert,
                    id: f["id"].as_str().unwrap_or_default().to_owned(),
                    player: player.as_str().unwrap_or_default().to_owned(),
                    rule: rule.as_str().unwrap_or_default().to_owned(),
                    trigger: trigger.as_str().unwrap_or_default().to_owned(),
                    socket: spec.n,
                    replayed: f["replayed"] == true,
                    at: Instant::now(),
                });
            }
            _ => {}
        }
    }
}

/// The players of a batch of events.
fn players_of(batch: &[Value]) -> impl Iterator<Item = String> + '_ {
    batch
        .iter()
        .filter_map(|e| e["player_id"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--source-addresses`: a socket leaves from the address given (the server sees it as the
    /// peer); one that cannot be bound says which.
    #[tokio::test]
    async fn sockets_connect_from_the_source_address_given() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let to = listener.local_addr().expect("its address");
        let url = format!("ws://{to}/v1/ws");
        let from: std::net::IpAddr = [127, 0, 0, 2].into();
        // The listener accepts and hangs up: the handshake fails, the peer address stays.
        let (_, accepted) = tokio::join!(connect_with(&url, Some(from), None), async {
            let accepted = listener.accept().await;
            accepted.map(|(_, peer)| peer)
        });
        assert_eq!(accepted.expect("accepted").ip(), from);
        let refused = connect_with(&url, Some([192, 0, 2, 1].into()), None).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("cannot bind to 192.0.2.1"), "{message}");
    }

    fn expected(player: &str, rule: &'static str, push: bool) -> Expected {
        Expected {
            tenant: "demo".into(),
            player: player.into(),
            rule,
            push,
            due_ms: 0,
            others: Vec::new(),
        }
    }

    fn got(alert: bool, id: &str, player: &str, rule: &str, socket: usize) -> Received {
        Received {
            alert,
            id: id.into(),
            player: player.into(),
            rule: rule.into(),
            trigger: format!("t-{player}"),
            socket,
            replayed: false,
            at: Instant::now(),
            arrived_us: 0,
            received_ms: None,
            produced_ms: None,
        }
    }

    fn sent(players: &[&str]) -> Sent {
        Arc::new(Mutex::new(
            players
                .iter()
                .map(|p| (format!("t-{p}"), Instant::now()))
                .collect(),
        ))
    }

    #[test]
    fn expected_notifications_are_matched_and_losses_and_copies_counted() {
        let a = expected("p-1", "rg.late_night", true);
        let b = expected("p-2", "fraud.bet_velocity", false);
        let c = expected("p-3", "rg.loss_chasing", true);
        let due = vec![&a, &b, &c];
        let mut replayed = got(true, "a1", "p-1", "rg.late_night", 0);
        replayed.replayed = true;
        let mut stale = got(true, "a9", "p-3", "rg.loss_chasing", 0);
        stale.trigger = "an earlier run's event".into();
        let received = vec![
            got(true, "a1", "p-1", "rg.late_night", 0),
            // An operator's reconnect: the unacknowledged alert again, marked replayed.
            replayed,
            // p-3's alert from an earlier run against the same gateway does not count.
            stale,
            got(false, "x1", "p-1", "rg.late_night", 5),
            got(true, "a2", "p-2", "fraud.bet_velocity", 0),
            // The same alert on a second operator socket is not a copy…
            got(true, "a2", "p-2", "fraud.bet_velocity", 1),
            // …the same push twice on one socket is.
            got(false, "x1", "p-1", "rg.late_night", 5),
            // p-3's push came, its alert did not.
            got(false, "x3", "p-3", "rg.loss_chasing", 6),
        ];
        let run = sent(&["p-1", "p-2", "p-3"]);
        let m = Matching::new(&due, &received, true, &run);
        assert_eq!(
            (m.alerts_expected, m.alerts_matched, m.alerts_lost),
            (3, 2, 1)
        );
        assert_eq!(
            (m.pushes_expected, m.pushes_matched, m.pushes_lost),
            (2, 2, 0)
        );
        assert_eq!((m.pushes_duplicated, m.alerts_duplicated), (1, 0));
        assert_eq!(m.missing(), 1);
        assert_eq!(m.lost_examples, vec!["alert rg.loss_chasing for p-3"]);
        // Without operators, alerts are not expected.
        let m = Matching::new(&due, &received, false, &run);
        assert_eq!((m.alerts_expected, m.alerts_lost, m.missing()), (0, 0, 0));
    }

    /// A pattern of several accounts on one address is raised on whichever the engine read
    /// last: an alert on another of its accounts matches it; one on an account outside it
    /// does not.
    #[test]
    fn a_shared_address_alert_matches_on_any_of_its_accounts() {
        let mut x = expected("p-5", "fraud.multi_accounting.ip", false);
        x.others = vec!["p-1".into(), "p-2".into(), "p-3".into(), "p-4".into()];
        let run = sent(&["p-1", "p-2", "p-3", "p-4", "p-5", "p-9"]);
        let on_p4 = vec![got(true, "a1", "p-4", "fraud.multi_accounting.ip", 0)];
        let m = Matching::new(&[&x], &on_p4, true, &run);
        assert_eq!((m.alerts_matched, m.alerts_lost), (1, 0));
        let on_p9 = vec![got(true, "a1", "p-9", "fraud.multi_accounting.ip", 0)];
        let m = Matching::new(&[&x], &on_p9, true, &run);
        assert_eq!((m.alerts_matched, m.alerts_lost), (0, 1));
    }
}
