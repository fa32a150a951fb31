//! A bus, gateways on it, and WebSocket clients that speak protocol v1.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{
    Ack, Bus, BusError, Consumer, ConsumerConfig, OutRecord, Partition, Publisher, ReadFrom, Reader,
};
use pitboss_gateway::auth::{Claims, claims, sign_hs256};
use pitboss_gateway::server::publish_message;
use pitboss_gateway::{GatewayConfig, GatewayState, Role, Verifier};
use pitboss_model::live::{LiveMessage, Target};
use pitboss_runtime::Shutdown;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const WAIT: Duration = Duration::from_secs(15);
pub const PARTITIONS: u32 = 4;

pub struct Env {
    _dir: tempfile::TempDir,
    pub bus: Arc<dyn Bus>,
    n: AtomicU64,
}

impl Env {
    /// An [`Env`] whose publishes to `topic` are written but answered `bus unavailable` while
    /// the flag it returns is set (the gateways' and the test's): a write the bus stored and
    /// could not confirm, the case a retry must not turn into a second ack.
    pub async fn failing(topic: &str) -> (Env, Arc<AtomicBool>) {
        let mut env = Env::new().await;
        let failing = Arc::new(AtomicBool::new(false));
        env.bus = Arc::new(Failing {
            inner: env.bus.clone(),
            topic: topic.into(),
            failing: failing.clone(),
        });
        (env, failing)
    }

    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("log"), EmbeddedConfig::default()).unwrap();
        for topic in ["alerts", "pushes", "alert_acks", "deliveries", "presence"] {
            bus.create_topic(topic, PARTITIONS).await.unwrap();
        }
        Env {
            _dir: dir,
            bus: Arc::new(bus),
            n: AtomicU64::new(1),
        }
    }

    pub fn token(&self, tenant: &str, sub: &str, role: Role, rooms: &[&str]) -> String {
        self.token_with(tenant, sub, role, rooms, |_| {})
    }

    pub fn token_with(
        &self,
        tenant: &str,
        sub: &str,
        role: Role,
        rooms: &[&str],
        edit: impl FnOnce(&mut Claims),
    ) -> String {
        let mut c = claims(
            tenant,
            sub,
            role,
            rooms.iter().map(|r| (*r).to_owned()).collect(),
            Duration::from_secs(3600),
        );
        edit(&mut c);
        sign_hs256(&c, SECRET).unwrap()
    }

    pub async fn gateway(&self) -> Gw {
        self.gateway_with(|_| {}).await
    }

    pub async fn gateway_with(&self, edit: impl FnOnce(&mut GatewayConfig)) -> Gw {
        self.gateway_full(edit, None, None, None).await
    }

    /// A gateway that takes at most `n` connections at once (`--max-connections`).
    pub async fn gateway_max_connections(&self, n: usize) -> Gw {
        self.gateway_full(|_| {}, None, Some(n), None).await
    }

    /// A gateway whose `/v1/stats` adds the figures of `stats`.
    pub async fn gateway_with_stats(
        &self,
        stats: std::sync::Arc<dyn pitboss_gateway::StatsSource>,
    ) -> Gw {
        self.gateway_full(|_| {}, Some(stats), None, None).await
    }

    /// A gateway whose changes to lists and snoozes (`POST /v1/lists/…`, `/v1/snoozes`) go
    /// to `rules`.
    pub async fn gateway_with_rules(
        &self,
        rules: std::sync::Arc<dyn pitboss_gateway::RulesAdmin>,
    ) -> Gw {
        self.gateway_full(|_| {}, None, None, Some(rules)).await
    }

    async fn gateway_full(
        &self,
        edit: impl FnOnce(&mut GatewayConfig),
        stats: Option<std::sync::Arc<dyn pitboss_gateway::StatsSource>>,
        max_connections: Option<usize>,
        rules: Option<std::sync::Arc<dyn pitboss_gateway::RulesAdmin>>,
    ) -> Gw {
        pitboss_runtime::telemetry::init_tracing();
        let mut config = GatewayConfig {
            tick: Duration::from_millis(200),
            ..GatewayConfig::default()
        };
        edit(&mut config);
        let shutdown = Shutdown::new();
        let verifier = Verifier::hs256(SECRET).unwrap();
        let mut state =
            pitboss_gateway::start(self.bus.clone(), verifier, config, shutdown.clone());
        if let Some(stats) = stats {
            state = state.with_stats(stats);
        }
        if let Some(rules) = rules {
            state = state.with_rules(rules);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let mut limits = pitboss_runtime::http::Limits {
            drain_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        if let Some(n) = max_connections {
            limits.max_connections = n;
        }
        let task = tokio::spawn(pitboss_gateway::server::serve(
            state.clone(),
            listener,
            limits,
        ));
        let admin_router = pitboss_gateway::server::admin_router(
            state.clone(),
            pitboss_runtime::telemetry::prometheus(),
        );
        tokio::spawn(pitboss_runtime::admin::serve(
            admin,
            admin_router,
            shutdown.clone(),
        ));
        let gw = Gw {
            addr,
            admin_addr,
            shutdown,
            state,
            task,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.ready().await != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gw
    }

    fn next(&self) -> u64 {
        self.n.fetch_add(1, Ordering::Relaxed)
    }

    fn push(&self, tenant: &str, target: Target, body: Option<&str>) -> pitboss_model::live::Push {
        let mut p = pitboss_testkit::live::push(self.next());
        p.tenant_id = tenant.into();
        p.target = target;
        p.push_id = pitboss_model::live::new_message_id();
        if let Some(b) = body {
            p.body = b.into();
        }
        p
    }

    fn channel(tenant: &str, target: &Target) -> String {
        match target {
            Target::Player(p) => format!("player:{tenant}:{p}"),
            Target::Room(r) => format!("room:{tenant}:{r}"),
        }
    }

    /// A push to `target` as [`Env::publish_push`] sends it, to change before publishing.
    pub fn push_for(&self, tenant: &str, target: Target) -> pitboss_model::live::Push {
        self.push(tenant, target, None)
    }

    /// Publishes a push made by [`Env::push_for`].
    pub async fn publish_built_push(&self, p: &pitboss_model::live::Push) {
        publish_message(&*self.bus.publisher(), "pushes", p)
            .await
            .unwrap();
    }

    /// Publishes a push; (tenant, channel, push id).
    pub async fn publish_push(&self, tenant: &str, target: Target) -> (String, String, String) {
        let p = self.push(tenant, target.clone(), None);
        publish_message(&*self.bus.publisher(), "pushes", &p)
            .await
            .unwrap();
        (tenant.into(), Self::channel(tenant, &target), p.push_id)
    }

    /// Publishes `n` pushes in one batch; their ids in order.
    pub async fn publish_pushes(
        &self,
        tenant: &str,
        target: Target,
        n: usize,
        body: &str,
        _chunk: usize,
    ) -> Vec<String> {
        let pushes: Vec<_> = (0..n)
            .map(|_| self.push(tenant, target.clone(), Some(body)))
            .collect();
        let records = pushes
            .iter()
            .map(|p| {
                pitboss_bus::OutRecord::new(p.bus_key(), p.encode_proto())
                    .with_header(pitboss_bus::header::TYPE, "push")
            })
            .collect();
        self.bus
            .publisher()
            .publish("pushes", records)
            .await
            .unwrap();
        pushes.into_iter().map(|p| p.push_id).collect()
    }

    /// Publishes an alert about `player`; (tenant, channel, alert id).
    pub async fn publish_alert(&self, tenant: &str, player: &str) -> (String, String, String) {
        let mut a = pitboss_testkit::live::alert(self.next());
        a.tenant_id = tenant.into();
        a.player_id = Some(player.into());
        a.group_key = player.into();
        publish_message(&*self.bus.publisher(), "alerts", &a)
            .await
            .unwrap();
        (tenant.into(), format!("operator:{tenant}"), a.alert_id)
    }

    /// Every message on `topic`.
    pub async fn read_all<M: LiveMessage>(&self, topic: &str) -> Vec<M> {
        let mut reader = self
            .bus
            .reader_all(topic, ReadFrom::Earliest)
            .await
            .unwrap();
        let mut out = Vec::new();
        while !reader.caught_up() {
            for r in reader.poll(1000, Duration::from_millis(50)).await.unwrap() {
                out.push(M::decode_proto(&r.value).unwrap());
            }
        }
        out
    }

    /// Polls `check` until it holds (fails the test after 15 s).
    pub async fn wait_until<F, Fut>(&self, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bus whose publishes to one topic go unconfirmed on demand ([`Env::failing`]).
#[derive(Debug)]
struct Failing {
    inner: Arc<dyn Bus>,
    topic: String,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Bus for Failing {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        self.inner.create_topic(topic, partitions).await
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(FailingPublisher {
            inner: self.inner.publisher(),
            topic: self.topic.clone(),
            failing: self.failing.clone(),
        })
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        self.inner.partition_count(topic).await
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.inner.consumer(group, topic, config).await
    }

    async fn reader(
        &self,
        topic: &str,
        starts: Vec<(Partition, ReadFrom)>,
    ) -> Result<Box<dyn Reader>, BusError> {
        self.inner.reader(topic, starts).await
    }
}

#[derive(Debug)]
struct FailingPublisher {
    inner: Arc<dyn Publisher>,
    topic: String,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Publisher for FailingPublisher {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        let acks = self.inner.publish(topic, records).await?;
        if topic == self.topic && self.failing.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable(
                "no broker confirmed the write".into(),
            ));
        }
        Ok(acks)
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.check().await
    }
}

/// A running gateway.
pub struct Gw {
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub shutdown: Shutdown,
    pub state: GatewayState,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gw {
    pub async fn connect(&self, token: &str) -> Client {
        self.try_connect(token).await.expect("connected")
    }

    /// [`Gw::connect`], or `None` when the connection fails (closed unanswered).
    pub async fn try_connect(&self, token: &str) -> Option<Client> {
        let url = format!("ws://{}/v1/ws?token={token}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        Some(Client::welcomed(ws).await)
    }

    /// [`Gw::try_connect`] again every 100 ms until it connects or `within` passed (a place
    /// that frees when another socket closes).
    pub async fn connect_within(&self, token: &str, within: Duration) -> Option<Client> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(c) = self.try_connect(token).await {
                return Some(c);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects as a browser without the token in the URL does: the subprotocols `protocols`
    /// offered (`pitboss.v1`, `pitboss.token.<jwt>`). The client, and the subprotocol the
    /// gateway selected.
    pub async fn connect_offering(&self, protocols: &str) -> (Client, Option<String>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("ws://{}/v1/ws", self.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        (Client::welcomed(ws).await, selected)
    }
}

impl Client {
    async fn welcomed(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Client {
        let mut c = Client {
            ws,
            cursor: None,
            pending: VecDeque::new(),
            notices: VecDeque::new(),
            next_id: 100,
            welcome: Value::Null,
        };
        let welcome = c.next_frame().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["protocol"], 1);
        c.welcome = welcome;
        c
    }
}

impl Gw {
    /// Tries to connect; the refusal's status and error code.
    pub async fn refused(&self, token: Option<&str>) -> (u16, String) {
        let url = match token {
            Some(t) => format!("ws://{}/v1/ws?token={t}", self.addr),
            None => format!("ws://{}/v1/ws", self.addr),
        };
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => panic!("connected"),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let body: Value =
                    serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
                (
                    res.status().as_u16(),
                    body["error"]["code"].as_str().unwrap().to_owned(),
                )
            }
            Err(e) => panic!("{e}"),
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let (status, _, answer) = self.post_full(path, token, body).await;
        (status, answer)
    }

    /// [`Gw::post`] with the answer's headers.
    pub async fn post_full(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}{path}", self.addr))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path` without following redirects: status, headers, body.
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client.get(format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }

    pub async fn ready(&self) -> u16 {
        match reqwest::get(format!("http://{}/readyz", self.admin_addr)).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn hub_acked(&self, alert_id: &str) -> bool {
        pitboss_gateway::feed::lock(&self.state.hub).is_acked("acme", alert_id)
    }

    /// How many messages the gateway's history holds (alerts, pushes): what it has read.
    pub fn history_len(&self) -> (usize, usize) {
        pitboss_gateway::feed::lock(&self.state.hub).history_len()
    }

    pub fn presence(&self, channel: &str) -> usize {
        pitboss_gateway::feed::lock(&self.state.hub)
            .presence(channel)
            .0
    }

    pub async fn stop(self) {
        self.shutdown.trigger("test");
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stopped")
            .unwrap()
            .unwrap();
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The newest cursor seen (of the last channel that sent one).
    pub cursor: Option<String>,
    pending: VecDeque<Value>,
    /// `alert_acked` frames seen while waiting for something else.
    pub notices: VecDeque<Value>,
    next_id: u64,
    /// The `welcome` frame.
    pub welcome: Value,
}

/// What a subscribe brought.
pub struct Collected {
    pub replayed: Vec<String>,
    pub subscribed: Value,
}

impl Client {
    /// The next frame (None when the connection closed); fails after 15 s.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within 15 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if let Some(c) = v.get("cursor").and_then(Value::as_str) {
                        self.cursor = Some(c.to_owned());
                    }
                    return Some(v);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Sends `request` and returns the first frame that is not a message or cursor (those are
    /// kept for [`Client::messages`]).
    pub async fn request(&mut self, request: Value) -> Value {
        self.raw(&request.to_string()).await
    }

    pub async fn raw(&mut self, text: &str) -> Value {
        self.send(text).await;
        loop {
            let f = self.next_frame().await.expect("an answer");
            match f["type"].as_str() {
                Some("message") => self.pending.push_back(f),
                Some("alert_acked") => self.notices.push_back(f),
                Some("cursor") => {}
                _ => return f,
            }
        }
    }

    /// The next `alert_acked` frame (messages meanwhile are kept for [`Client::messages`]).
    pub async fn next_alert_acked(&mut self) -> Value {
        if let Some(f) = self.notices.pop_front() {
            return f;
        }
        loop {
            let f = self.next_frame().await.expect("a frame");
            match f["type"].as_str() {
                Some("alert_acked") => return f,
                Some("message") => self.pending.push_back(f),
                _ => {}
            }
        }
    }

    /// Sends `request` and returns the frames up to the first of type `until`.
    pub async fn request_all(&mut self, request: Value, until: &str) -> Vec<Value> {
        self.send(&request.to_string()).await;
        let mut out = Vec::new();
        loop {
            let f = self.next_frame().await.expect("an answer");
            let done = f["type"] == until;
            out.push(f);
            if done {
                return out;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> Value {
        self.subscribe_collect(channel, since).await.subscribed
    }

    /// Subscribes; the ids of the messages replayed before `subscribed` (or the error).
    pub async fn subscribe_collect(&mut self, channel: &str, since: Option<&str>) -> Collected {
        self.next_id += 1;
        let mut req = json!({"type": "subscribe", "id": self.next_id, "channel": channel});
        if let Some(s) = since {
            req["since"] = json!(s);
        }
        self.send(&req.to_string()).await;
        let mut replayed = Vec::new();
        loop {
            let f = self.next_frame().await.expect("an answer");
            match f["type"].as_str() {
                Some("message") if f["replayed"] == true => {
                    replayed.push(f["id"].as_str().unwrap().to_owned())
                }
                Some("message") => self.pending.push_back(f),
                Some("alert_acked") => self.notices.push_back(f),
                Some("cursor") => {}
                _ => {
                    return Collected {
                        replayed,
                        subscribed: f,
                    };
                }
            }
        }
    }

    pub async fn next_message(&mut self) -> Value {
        if let Some(f) = self.pending.pop_front() {
            return f;
        }
        loop {
            let f = self.next_frame().await.expect("a message");
            if f["type"] == "message" {
                return f;
            }
        }
    }

    /// The ids of the next `n` messages.
    pub async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_message().await["id"].as_str().unwrap().to_owned());
        }
        out
    }

    /// No message arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        assert!(self.pending.is_empty(), "unexpected: {:?}", self.pending);
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_ne!(v["type"], "message", "unexpected: {v}");
                }
                Ok(_) => {}
            }
        }
    }

    /// Sends `text` up to `n` times, each as soon as the last was answered, until the gateway
    /// closes: (close code, error codes seen).
    pub async fn flood(&mut self, text: &str, n: usize) -> (Option<u16>, Vec<String>) {
        let mut codes = Vec::new();
        for _ in 0..n {
            if self.ws.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            loop {
                match tokio::time::timeout(WAIT, self.ws.next())
                    .await
                    .expect("an answer within 15 s")
                {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if let Some(c) = v["code"].as_str() {
                            codes.push(c.to_owned());
                        }
                        if matches!(v["type"].as_str(), Some("error" | "subscribed")) {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        // The close's reason last, after the answers' codes.
                        if let Some(f) = &f {
                            codes.push(format!("close: {}", f.reason));
                        }
                        return (f.map(|f| u16::from(f.code)), codes);
                    }
                    None | Some(Err(_)) => return (None, codes),
                    Some(Ok(_)) => {}
                }
            }
        }
        (None, codes)
    }

    pub async fn send_and_close_code(&mut self, text: &str) -> Option<u16> {
        let _ = self.ws.send(Message::Text(text.into())).await;
        self.close_code().await.0
    }

    /// Sends a raw frame (one a client library would not send: a control frame over 125
    /// bytes, a text frame that is not UTF-8) and reads to the close: (code, reason).
    pub async fn send_frame_and_close(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) -> (Option<u16>, String) {
        let _ = self.ws.send(Message::Frame(frame)).await;
        self.close_code().await
    }

    /// Reads to the close: (code, reason).
    pub async fn close_code(&mut self) -> (Option<u16>, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closed within 15 s")
            {
                Some(Ok(Message::Close(f))) => {
                    return (
                        f.as_ref().map(|f| u16::from(f.code)),
                        f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                None | Some(Err(_)) => return (None, String::new()),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Keeps the socket open without reading it.
    pub fn stop_reading(self) -> Stalled {
        Stalled(self)
    }
}

/// A client that does not read.
pub struct Stalled(Client);

impl Stalled {
    /// Reads what is buffered, then the close: (code, reason).
    pub async fn close_code(mut self) -> (Option<u16>, String) {
        self.0.close_code().await
    }
}
