//! Two edge gateways over real Kafka behind real nginx (Debian) with the shipped
//! `deploy/nginx/nginx.conf`: players connect through nginx from many source addresses (so
//! both gateways hold some), pushes flow, one gateway is SIGKILLed under traffic, its clients
//! reconnect through nginx to the other and resume from their cursors — and every player gets
//! every push for it exactly once: zero missed, zero duplicated. Ingest's gRPC goes through
//! the config's gRPC port too. And the config's ingest location never resends a POST an ingest
//! took (`nginx_never_resends_an_ingest_post_an_instance_took`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use pitboss_bus::{BusSpec, OutRecord, header};
use pitboss_gateway::Role;
use pitboss_model::live::{LiveMessage, Target};
use pitboss_testkit::free_port;
use tokio_tungstenite::tungstenite::Message;

const PLAYERS: usize = 24;
const SECRET: &str = "nginx-failover-test-secret-0123456789";
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped nginx.conf with its upstreams pointed at `gateways` and `ingests` (an unused
/// port where there are none), listening on `port` (HTTP) and `grpc` (ingest's gRPC), with every
/// path inside `dir`.
fn nginx_conf(
    dir: &std::path::Path,
    port: u16,
    grpc: u16,
    gateways: &[u16],
    ingests: &[u16],
) -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/nginx.conf"
    ))
    .unwrap();
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("server gateway-") || t.starts_with("server ingest-") {
            continue;
        }
        if t.starts_with("listen 80;") {
            out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            continue;
        }
        if t.starts_with("listen 8090;") {
            // nginx-exporter's stub_status: a port of its own, or a second nginx of the run
            // (another test's) fails to bind 8090 and exits after taking connections on `port`,
            // which are reset (nginx_never_resends_… failed so beside a_gateway_killed_…).
            out.push_str(&format!("        listen 127.0.0.1:{};\n", free_port()));
            continue;
        }
        if t.starts_with("listen 50051 http2;") {
            out.push_str(&format!("        listen 127.0.0.1:{grpc} http2;\n"));
            continue;
        }
        if t.starts_with("error_log") {
            out.push_str(&format!(
                "            error_log {}/ws-error.log crit;\n",
                dir.display()
            ));
            continue;
        }
        if t.starts_with("access_log") {
            out.push_str(&format!(
                "        access_log {}/access.log pitboss;\n",
                dir.display()
            ));
            continue;
        }
        if t.starts_with("worker_processes") {
            out.push_str("worker_processes 1;\n");
            out.push_str(&format!(
                "error_log {}/error.log warn;\npid {}/nginx.pid;\n",
                dir.display(),
                dir.display()
            ));
            continue;
        }
        if t.starts_with("worker_connections") {
            out.push_str("    worker_connections 1024;\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.starts_with("upstream pitboss_gateway") {
            let unused = [free_port()];
            let ports = if gateways.is_empty() {
                &unused[..]
            } else {
                gateways
            };
            for p in ports {
                out.push_str(&format!(
                    "        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"
                ));
            }
        }
        if t.starts_with("upstream pitboss_ingest") {
            let unused = [free_port()];
            let ports = if ingests.is_empty() {
                &unused[..]
            } else {
                ingests
            };
            for p in ports {
                out.push_str(&format!(
                    "        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"
                ));
            }
        }
        if t.starts_with("http {") {
            for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                out.push_str(&format!("    {temp}_temp_path {}/{temp};\n", dir.display()));
            }
        }
    }
    assert!(
        out.contains("hash $remote_addr consistent"),
        "the shipped config hashes by address"
    );
    assert!(
        out.contains(&format!(":{grpc} http2;")),
        "the shipped config serves gRPC on 50051"
    );
    out
}

/// nginx, stopped with SIGTERM so its master takes its workers with it (a SIGKILLed master
/// leaves them running, holding the port); `.1` is its gRPC port.
struct Nginx(Child, u16);
impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &std::path::Path, port: u16, gateways: &[u16], ingests: &[u16]) -> Nginx {
    let conf = dir.join("nginx.conf");
    let grpc = free_port();
    std::fs::write(&conf, nginx_conf(dir, port, grpc, gateways, ingests)).unwrap();
    let bin = if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let check = Command::new(bin)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx is installed (scripts/stack.sh install)");
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Nginx(child, grpc)
}

fn gateway(
    port: u16,
    id: &str,
    secret: &std::path::Path,
    topics: &Topics,
    log: &std::path::Path,
) -> Killed {
    gateway_with(port, id, secret, topics, log, &[])
}

fn gateway_with(
    port: u16,
    id: &str,
    secret: &std::path::Path,
    topics: &Topics,
    log: &std::path::Path,
    extra: &[&str],
) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "gateway",
            "--bus",
            "kafka",
            "--kafka-bootstrap",
            &pitboss_testkit::kafka(),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--jwt-secret-file")
        .arg(secret)
        .args(["--gateway-id", id, "--cursor-refresh-secs", "1"])
        .args([
            "--alerts-topic",
            &topics.alerts,
            "--pushes-topic",
            &topics.pushes,
            "--acks-topic",
            &topics.acks,
            "--deliveries-topic",
            &topics.deliveries,
            "--presence-topic",
            &topics.presence,
        ])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Killed(child)
}

/// Kafka, with fresh alerts/pushes/acks topics of `partitions` partitions.
async fn kafka_topics(
    prefix: &str,
    partitions: u32,
) -> (std::sync::Arc<dyn pitboss_bus::Bus>, Topics) {
    let name = pitboss_testkit::unique_name(prefix);
    let topics = Topics {
        alerts: format!("{name}_alerts"),
        pushes: format!("{name}_pushes"),
        acks: format!("{name}_acks"),
        deliveries: format!("{name}_deliveries"),
        presence: format!("{name}_presence"),
    };
    let spec = BusSpec::Kafka {
        bootstrap: pitboss_testkit::kafka(),
        options: Default::default(),
    };
    let bus = spec.open().await.unwrap();
    for t in [
        &topics.alerts,
        &topics.pushes,
        &topics.acks,
        &topics.deliveries,
        &topics.presence,
    ] {
        bus.create_topic(t, partitions).await.unwrap();
    }
    (bus, topics)
}

struct Topics {
    alerts: String,
    pushes: String,
    acks: String,
    deliveries: String,
    presence: String,
}

/// What one player's client has received: every message id, in order, and which gateways it
/// was connected to.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    gateways: Vec<String>,
    recoveries: Vec<String>,
}

/// A player's client: connects through nginx from `source`, subscribes (with its cursor after
/// the first time), records what arrives; on a lost connection it reconnects after 100 ms.
async fn player(
    source: std::net::Ipv4Addr,
    nginx: u16,
    player: String,
    token: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut cursor: Option<String> = None;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let connected = async {
            let stream = socket.connect(([127, 0, 0, 1], nginx).into()).await.ok()?;
            let url = format!("ws://127.0.0.1:{nginx}/v1/ws?token={token}");
            tokio_tungstenite::client_async(url, stream).await.ok()
        };
        let ws = tokio::select! {
            () = stop.notified() => return,
            ws = connected => ws,
        };
        let Some((mut ws, _)) = ws else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut req =
            serde_json::json!({"type": "subscribe", "channel": format!("player:acme:{player}")});
        if let Some(c) = &cursor {
            req["since"] = serde_json::json!(c);
        }
        if ws
            .send(Message::Text(req.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let next = tokio::select! {
                () = stop.notified() => return,
                next = ws.next() => next,
            };
            let Some(Ok(Message::Text(t))) = next else {
                if matches!(next, Some(Ok(_))) {
                    continue;
                }
                break; // lost: reconnect
            };
            let f: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if let Some(c) = f["cursor"].as_str() {
                cursor = Some(c.to_owned());
            }
            let mut s = seen.lock().unwrap();
            match f["type"].as_str() {
                Some("welcome") => s.gateways.push(f["gateway"].as_str().unwrap().to_owned()),
                Some("message") => s.ids.push(f["id"].as_str().unwrap().to_owned()),
                Some("subscribed") => s
                    .recoveries
                    .push(f["recovery"].as_str().unwrap().to_owned()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_behind_nginx_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, topics) = kafka_topics("gw", 4).await;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (pa, pb, pn) = (free_port(), free_port(), free_port());
    let mut a = gateway(pa, "gw-a", &secret, &topics, &dir.path().join("gw-a.log"));
    let _b = gateway(pb, "gw-b", &secret, &topics, &dir.path().join("gw-b.log"));
    let ng = tempfile::tempdir().unwrap();
    let _nginx = nginx(ng.path(), pn, &[pa, pb], &[]);
    // Both gateways ready (history rebuilt from Kafka).
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in [pa, pb] {
        loop {
            // Without an upgrade the endpoint answers 400: the listener is up.
            let ok = client
                .get(format!("http://127.0.0.1:{port}/v1/ws"))
                .send()
                .await
                .is_ok();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway on {port} never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut seen = BTreeMap::new();
    let mut tasks = Vec::new();
    for i in 0..PLAYERS {
        let p = format!("p{i}");
        let claims = pitboss_gateway::auth::claims(
            "acme",
            &p,
            Role::Player,
            vec![],
            Duration::from_secs(3600),
        );
        let token = pitboss_gateway::auth::sign_hs256(&claims, SECRET.as_bytes()).unwrap();
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.insert(p.clone(), s.clone());
        let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + i as u8);
        tasks.push(tokio::spawn(player(source, pn, p, token, s, stop.clone())));
    }
    // Everyone connected and subscribed, on both gateways.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = seen
            .values()
            .all(|s| !s.lock().unwrap().recoveries.is_empty());
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "not every player subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on = |gw: &str| {
        seen.values()
            .filter(|s| s.lock().unwrap().gateways[0] == gw)
            .count()
    };
    assert!(
        on("gw-a") > 0 && on("gw-b") > 0,
        "nginx spread the players: a {} b {}",
        on("gw-a"),
        on("gw-b")
    );

    // Traffic: pushes for every player, published to Kafka in small batches; gw-a is SIGKILLed
    // a third of the way in.
    let publisher = bus.publisher();
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0u64;
    for round in 0..60 {
        let mut records = Vec::new();
        for i in 0..PLAYERS {
            if (round + i) % 3 != 0 {
                continue;
            }
            n += 1;
            let mut push = pitboss_testkit::live::push(n);
            push.tenant_id = "acme".into();
            push.target = Target::Player(format!("p{i}"));
            push.push_id = pitboss_model::live::new_message_id();
            sent.entry(format!("p{i}"))
                .or_default()
                .push(push.push_id.clone());
            records.push(
                OutRecord::new(push.bus_key(), push.encode_proto())
                    .with_header(header::TYPE, "push")
                    .with_header(header::TENANT, "acme"),
            );
        }
        publisher.publish(&topics.pushes, records).await.unwrap();
        if round == 20 {
            a.0.kill().unwrap(); // SIGKILL
            a.0.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Every player ends up with exactly what was sent to it, in order, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = seen
            .iter()
            .all(|(p, s)| s.lock().unwrap().ids.len() >= sent.get(p).map_or(0, Vec::len));
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate would show now
    stop.notify_waiters();
    let mut moved = 0;
    for (p, s) in &seen {
        let s = s.lock().unwrap();
        let want = sent.get(p).cloned().unwrap_or_default();
        assert_eq!(
            s.ids, want,
            "{p}: gateways {:?}, recoveries {:?}",
            s.gateways, s.recoveries
        );
        if s.gateways.first().map(String::as_str) == Some("gw-a") {
            assert!(
                s.gateways.len() >= 2,
                "{p} reconnected after gw-a died: {:?}",
                s.gateways
            );
            assert_eq!(s.gateways.last().map(String::as_str), Some("gw-b"));
            assert!(
                s.recoveries[1..].iter().all(|r| r == "complete"),
                "{p}: {:?}",
                s.recoveries
            );
            moved += 1;
        }
    }
    assert!(moved > 0);
    for t in tasks {
        t.abort();
    }
}

/// SIGTERM on a `pitboss gateway` process with clients connected: each client is told to
/// reconnect and closed with 1012, and the process exits 0 (not before the sockets closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_every_client_to_reconnect_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, topics) = kafka_topics("gwterm", 2).await;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let port = free_port();
    let mut gw = gateway(port, "gw-t", &secret, &topics, &dir.path().join("gw.log"));
    let mut clients = Vec::new();
    for i in 0..5 {
        let player = format!("p{i}");
        let channel = format!("player:acme:{player}");
        clients.push(subscribed(port, &player, &[], &channel).await);
    }
    let pid = gw.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    for mut ws in clients {
        let mut told = false;
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(15), ws.next())
                .await
                .expect("closed within 15 s")
            {
                Some(Ok(Message::Text(t))) => told |= t.as_str().contains("\"reconnect\""),
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break None,
            }
        };
        assert!(told, "a reconnect frame before the close");
        assert_eq!(code, Some(1012));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = gw.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A player of `acme` allowed in `rooms`, connected to the gateway on `port` (retrying while it
/// starts) and subscribed to `channel`.
async fn subscribed(port: u16, player: &str, rooms: &[&str], channel: &str) -> Ws {
    let claims = pitboss_gateway::auth::claims(
        "acme",
        player,
        Role::Player,
        rooms.iter().map(|r| (*r).to_owned()).collect(),
        Duration::from_secs(3600),
    );
    let token = pitboss_gateway::auth::sign_hs256(&claims, SECRET.as_bytes()).unwrap();
    let url = format!("ws://127.0.0.1:{port}/v1/ws?token={token}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let req = serde_json::json!({"type": "subscribe", "channel": channel});
    ws.send(Message::Text(req.to_string().into()))
        .await
        .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("closed")
        };
        if t.as_str().contains("\"subscribed\"") {
            break ws;
        }
    }
}

/// A player of `acme` in `room:acme:vip` on the gateway on `port`.
async fn in_room(port: u16, player: &str) -> Ws {
    subscribed(port, player, &["vip"], "room:acme:vip").await
}

/// Asks for the room's presence until `holds` or `within` passed; the last answer.
async fn presence_until(
    ws: &mut Ws,
    within: Duration,
    holds: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let req = serde_json::json!({"type": "presence", "channel": "room:acme:vip"});
        ws.send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        let reply = loop {
            let t = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_)) | Err(_)) | None => panic!("closed"),
                Some(Ok(_)) => continue, // pings
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "presence" {
                break v;
            }
        };
        if holds(&reply) || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Presence across three `pitboss gateway` processes over Kafka: each answers for all three;
/// one that is SIGTERMed says it is gone and leaves the answers long before its snapshot would
/// expire; one that is SIGKILLed is forgotten once its snapshot is three intervals old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_gateway_processes_through_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, topics) = kafka_topics("gwpres", 2).await;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut gws: Vec<Killed> = ["gw-a", "gw-b", "gw-c"]
        .iter()
        .zip(ports)
        .map(|(id, port)| {
            gateway_with(
                port,
                id,
                &secret,
                &topics,
                &dir.path().join(format!("{id}.log")),
                &["--presence-interval-secs", "5"],
            )
        })
        .collect();
    let mut a = in_room(ports[0], "pa").await;
    let _b = in_room(ports[1], "pb").await;
    let _c = in_room(ports[2], "pc").await;
    let all = presence_until(&mut a, Duration::from_secs(30), |r| r["connections"] == 3).await;
    assert_eq!(
        all["subjects"],
        serde_json::json!(["pa", "pb", "pc"]),
        "{all}\n{}",
        pitboss_testkit::log_tails(dir.path(), 20)
    );
    assert_eq!(all["gateways"], 3, "{all}");

    // SIGTERM: gone at once (well within the 15 s its snapshot would still hold).
    let pid = gws[1].0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let after_term =
        presence_until(&mut a, Duration::from_secs(8), |r| r["connections"] == 2).await;
    assert_eq!(after_term["connections"], 2, "{after_term}");
    assert_eq!(after_term["subjects"], serde_json::json!(["pa", "pc"]));

    // SIGKILL: no word from it; forgotten after three intervals.
    gws[2].0.kill().unwrap();
    let killed_at = Instant::now();
    let after_kill =
        presence_until(&mut a, Duration::from_secs(40), |r| r["connections"] == 1).await;
    assert_eq!(after_kill["connections"], 1, "{after_kill}");
    assert_eq!(after_kill["gateways"], 1);
    assert!(
        killed_at.elapsed() >= Duration::from_secs(9),
        "a killed instance's snapshot holds until it is old"
    );
}

/// A process of the distributed scenario, killed when the test ends.
fn pitboss(args: &[&str], log: &std::path::Path) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The distributed scenario of docs/benchmarks.md as a test: real Kafka and ClickHouse; ingest,
/// the rules engine, the processor and two gateways as separate processes behind real nginx
/// (the shipped config); `pitboss loadgen --live` drives it through nginx with the simulator's
/// fraud and risky-play patterns and players connected. Every push and alert the patterns must
/// raise arrives once (none lost, none duplicated), and the alerts are stored in ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_stack_behind_nginx_delivers_every_expected_push_once_and_stores_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path();
    let (bus, topics) = kafka_topics("dist", 4).await;
    let name = topics.alerts.trim_end_matches("_alerts").to_owned();
    let events = format!("{name}_events");
    for (t, n) in [
        (events.clone(), 8),
        (format!("{events}_overflow"), 8),
        (format!("{name}_af_dead_letter"), 1),
    ] {
        bus.create_topic(&t, n).await.unwrap();
    }
    for t in [
        &events,
        &format!("{events}_overflow"),
        &topics.alerts,
        &topics.pushes,
        &topics.acks,
        &topics.deliveries,
    ] {
        bus.create_topic(&format!("{t}_dead_letter"), 1)
            .await
            .unwrap();
    }
    let (kafka, clickhouse) = (pitboss_testkit::kafka(), pitboss_testkit::clickhouse());
    let database = format!("{name}_db");
    let secret = logs.join("secret");
    std::fs::write(&secret, SECRET).unwrap();

    // Ingest on Kafka.
    let key = "distributed-scenario-key";
    let pi = free_port();
    let config = logs.join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{pi}\"\nadmin_listen = \"127.0.0.1:0\"\ntopic = \"{events}\"\n[[tenants]]\nid = \"demo\"\napi_key_sha256 = [\"{}\"]\n",
            pitboss_ingest::auth::hash_key(key)
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let _ingest = pitboss(
        &[
            "ingest",
            "--bus",
            "kafka",
            "--kafka-bootstrap",
            &kafka,
            "--config",
            &config,
        ],
        &logs.join("ingest.log"),
    );
    // The rules engine, its own state directory.
    let state = logs.join("antifraud-state");
    let _engine = pitboss(
        &[
            "antifraud",
            "--bus",
            "kafka",
            "--kafka-bootstrap",
            &kafka,
            "--topic",
            &events,
            "--group",
            &format!("{name}_af"),
            "--alerts-topic",
            &topics.alerts,
            "--pushes-topic",
            &topics.pushes,
            "--dead-letter-topic",
            &format!("{name}_af_dead_letter"),
            "--state-dir",
            state.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &logs.join("antifraud.log"),
    );
    // The processor: events, alerts, pushes, acks and delivery receipts into ClickHouse.
    let _processor = pitboss(
        &[
            "process",
            "--clickhouse",
            &clickhouse,
            "--database",
            &database,
            "--kafka-bootstrap",
            &kafka,
            "--topic",
            &events,
            "--topic",
            &format!("{events}_overflow"),
            "--topic",
            &format!("{}=alerts", topics.alerts),
            "--topic",
            &format!("{}=pushes", topics.pushes),
            "--topic",
            &format!("{}=alert_acks", topics.acks),
            "--topic",
            &format!("{}=deliveries", topics.deliveries),
            "--group",
            &format!("{name}_processor"),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &logs.join("process.log"),
    );
    // Two gateways and nginx in front of everything.
    let (pa, pb, pn) = (free_port(), free_port(), free_port());
    // Gateway A serves the console's traffic figures from ClickHouse.
    let _a = gateway_with(
        pa,
        "gw-a",
        &secret,
        &topics,
        &logs.join("gw-a.log"),
        &[
            "--stats-clickhouse-url",
            &clickhouse,
            "--stats-clickhouse-database",
            &database,
        ],
    );
    let _b = gateway(pb, "gw-b", &secret, &topics, &logs.join("gw-b.log"));
    let ng = tempfile::tempdir().unwrap();
    let edge = nginx(ng.path(), pn, &[pa, pb], &[pi]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in [
        format!("http://127.0.0.1:{pi}/healthz"),
        format!("http://127.0.0.1:{pa}/v1/ws"),
        format!("http://127.0.0.1:{pb}/v1/ws"),
    ] {
        while client.get(&url).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{url} never answered\n{}",
                pitboss_testkit::log_tails(logs, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The load: through nginx, players and operators connected.
    let expected_file = logs.join("expected.jsonl");
    let out = tokio::task::spawn_blocking({
        let (secret, expected_file) = (secret.clone(), expected_file.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_pitboss"))
                .args([
                    "loadgen",
                    "--live",
                    "--url",
                    &format!("http://127.0.0.1:{pn}"),
                ])
                .args(["--gateway", &format!("ws://127.0.0.1:{pn}"), "--key", key])
                .arg("--jwt-secret-file")
                .arg(&secret)
                .args(["--rate", "300", "--seconds", "20", "--sockets", "200"])
                .args([
                    "--operators",
                    "2",
                    "--risky-share",
                    "0.2",
                    "--settle-secs",
                    "90",
                ])
                // From 32 loopback addresses, so nginx's address hash uses both gateways (with
                // eight, all of them hashed to one gateway about once in twenty runs: the
                // consistent hash's ring depends on the gateways' random ports).
                .arg("--source-addresses")
                .arg(
                    (2..34)
                        .map(|i| format!("127.0.0.{i}"))
                        .collect::<Vec<_>>()
                        .join(","),
                )
                .arg("--expected-file")
                .arg(&expected_file)
                .env_remove("RUST_BACKTRACE")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pitboss_testkit::log_tails(logs, 20)
    );
    // The figures, for docs/benchmarks.md (`cargo test --test gateway_live distributed -- --nocapture`).
    eprintln!("{stdout}");
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in {stdout}"));
    for k in [
        "pushes_lost",
        "pushes_duplicated",
        "alerts_lost",
        "alerts_duplicated",
        "refused",
    ] {
        assert_eq!(report[k], 0, "{k}: {report}");
    }
    // Both gateways held sockets (nginx logs each finished WebSocket with its upstream).
    let access = std::fs::read_to_string(ng.path().join("access.log")).unwrap_or_default();
    for port in [pa, pb] {
        assert!(
            access
                .lines()
                .any(|l| l.contains("/v1/ws") && l.contains(&format!("127.0.0.1:{port}\""))),
            "no socket went to the gateway on {port}:\n{access}"
        );
    }
    let expected_alerts = report["alerts_expected"].as_u64().unwrap();
    assert!(
        expected_alerts > 0 && report["pushes_expected"].as_u64().unwrap() > 0,
        "{report}"
    );

    // The alerts are stored: every expected one, by player and rule.
    let expected: std::collections::BTreeSet<(String, String)> =
        std::fs::read_to_string(&expected_file)
            .unwrap()
            .lines()
            .map(|l| {
                let x: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    x["player"].as_str().unwrap().to_owned(),
                    x["rule"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    assert_eq!(expected.len() as u64, expected_alerts);
    let ch = pitboss_processor::sink::client(&clickhouse, &database);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: std::collections::BTreeSet<(String, String)> = ch
            .query("SELECT DISTINCT player_id, rule_id FROM alerts")
            .fetch_all::<(String, String)>()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let missing: Vec<_> = expected.difference(&stored).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected alerts not stored: {missing:?}\n{}",
            pitboss_testkit::log_tails(logs, 400)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every push and alert a socket got live has a receipt from the gateway that wrote it,
    // stored in ClickHouse (through Kafka): both gateways wrote some.
    let (pushes, alerts) = (
        report["pushes_measured"].as_u64().unwrap(),
        report["alerts_measured"].as_u64().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(String, String, u64)> = ch
            .query(
                "SELECT message_type, gateway_id, count() FROM
                   (SELECT DISTINCT message_type, gateway_id, message_id, connection_id
                    FROM deliveries WHERE replayed = 0)
                 GROUP BY message_type, gateway_id",
            )
            .fetch_all::<(String, String, u64)>()
            .await
            .unwrap_or_default();
        let n = |t: &str| -> u64 { rows.iter().filter(|r| r.0 == t).map(|r| r.2).sum() };
        let gateways: std::collections::BTreeSet<&str> =
            rows.iter().map(|r| r.1.as_str()).collect();
        if n("push") >= pushes && n("alert") >= alerts && gateways.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "receipts stored {rows:?}, sockets got {pushes} pushes and {alerts} alerts live\n{}",
            pitboss_testkit::log_tails(logs, 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The console's figures on gateway A, from ClickHouse: the alerts of the last hour (at
    // least the expected ones: the simulator's normal play may raise more), the run's players
    // and bets; gateway B has no store and says so.
    let ops = pitboss_gateway::auth::sign_hs256(
        &pitboss_gateway::auth::claims(
            "demo",
            "ops",
            Role::Operator,
            Vec::new(),
            Duration::from_secs(300),
        ),
        SECRET.as_bytes(),
    )
    .unwrap();
    let stats = |port: u16| {
        let (client, ops) = (client.clone(), ops.clone());
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/v1/stats"))
                .bearer_auth(&ops)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let a = stats(pa).await;
    assert_eq!(a["store"], true, "{a}");
    assert!(a.get("store_error").is_none(), "{a}");
    assert!(
        a["alerts_last_hour"].as_u64().unwrap() >= expected_alerts,
        "{a}"
    );
    assert!(a["active_players"].as_u64().unwrap() > 0, "{a}");
    assert!(!a["ggr_by_game"].as_array().unwrap().is_empty(), "{a}");
    assert!(a["pipeline"].is_object(), "{a}");
    let b = stats(pb).await;
    assert_eq!(b["store"], false, "{b}");

    // Ingest's gRPC through nginx's own gRPC port (h2c, as the shipped config serves it): a
    // batch and a stream of two batches answered by the ingest behind it and their events
    // stored; without the key, UNAUTHENTICATED and its code in the metadata, through the proxy.
    let grpc = format!("http://127.0.0.1:{}", edge.1);
    let mut ingest = pitboss_proto::v1::ingest_client::IngestClient::connect(grpc)
        .await
        .unwrap();
    let ids: Vec<String> = (0..6).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let now = pitboss_model::Timestamp::now().to_rfc3339().unwrap();
    let batch = |ids: &[String]| pitboss_proto::v1::EventBatch {
        events: ids
            .iter()
            .map(|id| {
                let json = serde_json::json!({
                    "event_id": id, "tenant_id": "demo", "player_id": "grpc-player",
                    "type": "session_started", "occurred_at": now, "payload": {"channel": "web"},
                });
                let e = pitboss_model::decode_event(json.to_string().as_bytes()).unwrap();
                pitboss_proto::v1::Event::from(&e)
            })
            .collect(),
    };
    let authed = |m| {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let reply = ingest
        .ingest_batch(authed(batch(&ids[..2])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.rejected), (2, 0), "{reply:?}");
    let mut stream =
        tonic::Request::new(futures::stream::iter([batch(&ids[2..4]), batch(&ids[4..])]));
    stream
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    let reply = ingest.ingest_stream(stream).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.rejected), (4, 0), "{reply:?}");
    let err = ingest
        .ingest_batch(tonic::Request::new(batch(&ids[..1])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(
        err.metadata()
            .get("pitboss-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("unauthorized"),
        "{err:?}"
    );
    // The standard health service through the same port, without a key (what a gRPC load
    // balancer or grpc_health_probe asks, docs/deploy.md).
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", edge.1))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pitboss.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = ch
            .query(&format!(
                "SELECT count() FROM events WHERE toString(event_id) IN ({list})"
            ))
            .fetch_one::<u64>()
            .await
            .unwrap_or_default();
        if stored == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of the 6 gRPC events stored\n{}",
            pitboss_testkit::log_tails(logs, 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A stand-in ingest behind nginx: reads each request whole (headers and `Content-Length`
/// body), counts it, then answers `200` — or, with `answer` false, closes the connection
/// unanswered, as an ingest SIGKILLed after taking a POST does.
async fn stand_in_ingest(answer: bool) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if answer {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        )
                        .await;
                }
            });
        }
    });
    (port, taken)
}

/// deploy/nginx/nginx.conf: an ingest POST goes to the next ingest only if it was never sent.
/// One ingest takes a POST and dies before answering: the client gets nginx's 502 (and retries
/// with its own ids, docs/api.md), and the other ingest never sees that request — resent, events
/// without a client `event_id` would be stored twice. (Clients come from several addresses: the
/// upstream hashes by address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_never_resends_an_ingest_post_an_instance_took() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dying, died_with) = stand_in_ingest(false).await;
    let (healthy, served) = stand_in_ingest(true).await;
    let ng = tempfile::tempdir().unwrap();
    let pn = free_port();
    let _nginx = nginx(ng.path(), pn, &[], &[dying, healthy]);
    let post = |source: [u8; 4]| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((source, 0).into()).unwrap();
            if let Ok(mut s) = socket.connect(([127, 0, 0, 1], pn).into()).await {
                let body = r#"{"events":[]}"#;
                let req = format!(
                    "POST /v1/events HTTP/1.1\r\nHost: pitboss\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.unwrap();
                return answer
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .unwrap_or(0);
            }
            assert!(Instant::now() < deadline, "nginx never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut dead_hits = 0;
    for host in 2..40u8 {
        let (died, served_before) = (
            died_with.load(std::sync::atomic::Ordering::SeqCst),
            served.load(std::sync::atomic::Ordering::SeqCst),
        );
        let status = post([127, 0, 0, host]).await;
        let (died_after, served_after) = (
            died_with.load(std::sync::atomic::Ordering::SeqCst),
            served.load(std::sync::atomic::Ordering::SeqCst),
        );
        if died_after > died {
            assert_eq!(status, 502, "the client is told the request failed");
            assert_eq!(
                served_after, served_before,
                "the POST the dying ingest took was resent to the other"
            );
            dead_hits += 1;
            break;
        }
        assert_eq!((status, served_after), (200, served_before + 1));
    }
    assert_eq!(dead_hits, 1, "no address hashed to the dying ingest");
}
