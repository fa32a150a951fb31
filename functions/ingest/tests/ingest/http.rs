//! The HTTP API through `Router::oneshot`: happy paths over the embedded log, and every bad
//! input of the issue — each gets a precise status and error code, and nothing acknowledged is
//! lost. Bus failures are injected with the in-memory bus.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::memory::MemoryPublisher;
use pitboss_bus::{Bus, BusError, ConsumerConfig, Delivery, Publisher};
use pitboss_ingest::auth::hash_key;
use pitboss_ingest::core::Outcome;
use pitboss_ingest::http::{ErrorBody, IngestResponse, admin_router, router};
use pitboss_ingest::{IngestConfig, TenantConfig};
use pitboss_model::{ViolationCode, decode_proto};
use tower::ServiceExt;

use crate::common;

const ACME_KEY: &str = "pk_test_acme_7f3a9c";
const LUCKY_KEY: &str = "pk_test_lucky_1b2c3d";

fn config() -> IngestConfig {
    IngestConfig {
        tenants: vec![
            TenantConfig {
                id: "acme".into(),
                api_key_sha256: vec![hash_key(ACME_KEY)],
                events_per_second: None,
            },
            TenantConfig {
                id: "lucky".into(),
                api_key_sha256: vec![hash_key(LUCKY_KEY)],
                events_per_second: Some(5),
            },
        ],
        ..IngestConfig::default()
    }
}

fn event(id: Option<&str>, tenant: &str, player: &str) -> String {
    let id = id
        .map(|i| format!(r#""event_id":"{i}","#))
        .unwrap_or_default();
    let now = chrono_now();
    format!(
        r#"{{{id}"tenant_id":"{tenant}","player_id":"{player}","type":"deposit","occurred_at":"{now}","payload":{{"transaction_id":"tx-1","amount":{{"amount_minor":5000,"currency":"EUR"}},"method":"card"}}}}"#
    )
}

fn chrono_now() -> String {
    pitboss_model::Timestamp::now().to_rfc3339().unwrap()
}

fn uuid7() -> String {
    uuid::Uuid::now_v7().to_string()
}

struct Api {
    app: axum::Router,
    admin: axum::Router,
}

impl Api {
    fn new(config: IngestConfig, publisher: Arc<dyn Publisher>) -> Api {
        let state = pitboss_ingest::state(config, publisher).unwrap();
        Api {
            app: router(state.clone()),
            admin: admin_router(state),
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        Self::call(&self.app, req).await
    }

    /// A request to the admin listener.
    async fn admin(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        Self::call(&self.admin, req).await
    }

    async fn call(
        app: &axum::Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"))
        {
            // Every code this suite sees is a row of the error table, with its status.
            common::check_json_answer(Some(status.as_u16()), &body);
        }
        (status, headers, body)
    }

    async fn post(
        &self,
        key: Option<&str>,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, content_type);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        self.send(req.body(body.into()).unwrap()).await
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn ok(body: &[u8]) -> IngestResponse {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn err(body: &[u8]) -> String {
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    e.error.code
}

async fn embedded() -> (EmbeddedBus, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), EmbeddedConfig::default()).unwrap();
    bus.create_topic("events", 4).await.unwrap();
    // Co-partitioned with `events` (docs/bus.md, "Hot keys").
    bus.create_topic("events_overflow", 4).await.unwrap();
    (bus, dir)
}

async fn read_back(bus: &EmbeddedBus, n: usize) -> Vec<pitboss_model::Event> {
    read_topic(bus, "events", n).await
}

async fn read_topic(bus: &EmbeddedBus, topic: &str, n: usize) -> Vec<pitboss_model::Event> {
    let mut c = bus
        .consumer("verify", topic, ConsumerConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    while out.len() < n && start.elapsed() < Duration::from_secs(10) {
        if let Delivery::Records(rs) = c.poll(1000, Duration::from_millis(200)).await.unwrap() {
            out.extend(rs.iter().map(|r| decode_proto(&r.value).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn accepted_events_are_on_the_bus_when_the_answer_comes() {
    let (bus, _dir) = embedded().await;
    let api = Api::new(config(), bus.publisher());
    let (id1, id2) = (uuid7(), uuid7());
    let body = format!(
        "[{},{},{}]",
        event(Some(&id1), "acme", "p1"),
        event(None, "acme", "p2"),
        event(Some(&id2), "acme", "p1")
    );
    let (status, _, body) = api.post(Some(ACME_KEY), "application/json", body).await;
    assert_eq!(status, StatusCode::OK);
    let r = ok(&body);
    assert_eq!((r.accepted, r.duplicates, r.rejected), (3, 0, 0));
    let stored = read_back(&bus, 3).await;
    assert_eq!(stored.len(), 3);
    let ids: Vec<_> = stored.iter().map(|e| e.event_id.clone().unwrap()).collect();
    assert!(ids.contains(&id1) && ids.contains(&id2));
    assert!(
        stored
            .iter()
            .all(|e| e.received_at.is_some() && e.tenant_id == "acme")
    );
}

#[tokio::test]
async fn a_hot_key_is_rerouted_to_the_overflow_topic_and_nothing_is_lost() {
    let (bus, _dir) = embedded().await;
    let api = Api::new(
        IngestConfig {
            hot_key_events_per_second: 5,
            ..config()
        },
        bus.publisher(),
    );
    let mut events: Vec<String> = (0..20).map(|_| event(None, "acme", "bot")).collect();
    events.push(event(None, "acme", "calm"));
    let (status, _, body) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            format!("[{}]", events.join(",")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok(&body).accepted, 21, "rerouted events are accepted too");
    let main = read_topic(&bus, "events", 6).await;
    let overflow = read_topic(&bus, "events_overflow", 15).await;
    let players =
        |es: &[pitboss_model::Event], p: &str| es.iter().filter(|e| e.player_id == p).count();
    assert_eq!(
        (players(&main, "bot"), players(&main, "calm")),
        (5, 1),
        "the burst stays"
    );
    assert_eq!(overflow.len(), 15);
    assert_eq!(players(&overflow, "bot"), 15, "only the hot key moved");
    // The hot key stays rerouted: its next event goes to the overflow topic at once.
    let (status, _, _) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            event(None, "acme", "bot"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read_topic(&bus, "events_overflow", 16).await.len(), 16);
    let (_, _, metrics) = api.admin(get("/metrics")).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("pitboss_ingest_overflow_events_total"),
        "{metrics}"
    );
}

/// A hot player is split over `events` and `events_overflow` by the real ingest; a group
/// member following `events` with the overflow topic as its companion reads all of that
/// player's events, and ordering them by the received-at header (then `events` before the
/// overflow, then position) gives back the order they were sent in. Every record carries the
/// type, tenant, event-time and received-at headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_players_events_on_both_topics_reach_one_member_in_order() {
    let (bus, _dir) = embedded().await;
    let api = Api::new(
        IngestConfig {
            hot_key_events_per_second: 5,
            ..config()
        },
        bus.publisher(),
    );
    let companions = ConsumerConfig {
        companions: vec!["events_overflow".into()],
        ..ConsumerConfig::default()
    };
    let mut members = Vec::new();
    for _ in 0..2 {
        members.push(
            bus.consumer("rules", "events", companions.clone())
                .await
                .unwrap(),
        );
    }
    // Let the group settle: two members, four partitions between them.
    let start = std::time::Instant::now();
    while members.iter().any(|m| m.assignment().is_empty())
        || members.iter().map(|m| m.assignment().len()).sum::<usize>() != 4
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "group never settled"
        );
        for m in &mut members {
            if let Delivery::Revoking(parts) = m.poll(10, Duration::from_millis(50)).await.unwrap()
            {
                assert!(!parts.is_empty());
            }
        }
    }
    let mut sent = Vec::new();
    for round in 0..3 {
        let mut events = Vec::new();
        for _ in 0..(12 - round * 3) {
            let id = uuid7();
            events.push(event(Some(&id), "acme", "bot"));
            sent.push(id);
        }
        events.push(event(None, "acme", &format!("calm-{round}")));
        let (status, _, body) = api
            .post(
                Some(ACME_KEY),
                "application/json",
                format!("[{}]", events.join(",")),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ok(&body).accepted, events.len());
    }
    let mut got: Vec<Vec<pitboss_bus::Record>> = vec![Vec::new(), Vec::new()];
    let start = std::time::Instant::now();
    while got.iter().map(Vec::len).sum::<usize>() < sent.len() + 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "not all read");
        for (m, out) in members.iter_mut().zip(got.iter_mut()) {
            if let Delivery::Records(rs) = m.poll(1000, Duration::from_millis(50)).await.unwrap() {
                out.extend(rs);
            }
        }
    }
    let topics_of_bot: std::collections::BTreeSet<&str> = got
        .iter()
        .flatten()
        .filter(|r| r.key == "acme:bot")
        .map(|r| &*r.topic)
        .collect();
    assert_eq!(
        topics_of_bot.len(),
        2,
        "the hot player was split over both topics"
    );
    let readers: Vec<usize> = (0..2)
        .filter(|&i| got[i].iter().any(|r| r.key == "acme:bot"))
        .collect();
    assert_eq!(
        readers.len(),
        1,
        "one member reads the hot player on both topics"
    );
    let mut bot: Vec<&pitboss_bus::Record> = got[readers[0]]
        .iter()
        .filter(|r| r.key == "acme:bot")
        .collect();
    for r in got.iter().flatten() {
        let h = &r.headers;
        assert_eq!(h.get_str(pitboss_bus::header::TYPE), Some("deposit"));
        assert_eq!(h.get_str(pitboss_bus::header::TENANT), Some("acme"));
        assert!(h.get_i64(pitboss_bus::header::EVENT_TIME).is_some());
        assert!(h.get_i64(pitboss_bus::header::RECEIVED_AT).is_some());
    }
    bot.sort_by_key(|r| {
        (
            r.headers.get_i64(pitboss_bus::header::RECEIVED_AT),
            &*r.topic == "events_overflow",
            r.position.clone(),
        )
    });
    let order: Vec<String> = bot
        .iter()
        .map(|r| decode_proto(&r.value).unwrap().event_id.unwrap())
        .collect();
    assert_eq!(order, sent);
}

#[tokio::test]
async fn ndjson_gzip_and_x_api_key() {
    let (bus, _dir) = embedded().await;
    let api = Api::new(config(), bus.publisher());
    let text = format!(
        "{}\n{}\n",
        event(None, "acme", "p1"),
        event(None, "acme", "p2")
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CONTENT_ENCODING, "gzip")
        .header("x-api-key", ACME_KEY)
        .body(Body::from(gz.finish().unwrap()))
        .unwrap();
    let (status, _, body) = api.send(req).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ok(&body).accepted, 2);
    assert_eq!(read_back(&bus, 2).await.len(), 2);
}

#[tokio::test]
async fn a_retry_is_answered_duplicate_and_written_once() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let api = Api::new(config(), bus.publisher());
    let body = format!(
        "[{},{}]",
        event(Some(&uuid7()), "acme", "p1"),
        event(Some(&uuid7()), "acme", "p1")
    );
    let (s1, _, b1) = api
        .post(Some(ACME_KEY), "application/json", body.clone())
        .await;
    let (s2, _, b2) = api.post(Some(ACME_KEY), "application/json", body).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(ok(&b1).accepted, 2);
    let second = ok(&b2);
    assert_eq!((second.accepted, second.duplicates), (0, 2));
    assert!(matches!(second.results[0], Outcome::Duplicate { .. }));
    assert_eq!(bus.len("events"), 2, "written once");
    // The same id from another tenant is not a duplicate: tenants are isolated.
    let id = uuid7();
    let (_, _, a) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            event(Some(&id), "acme", "p"),
        )
        .await;
    let (_, _, b) = api
        .post(
            Some(LUCKY_KEY),
            "application/json",
            event(Some(&id), "lucky", "p"),
        )
        .await;
    assert_eq!((ok(&a).accepted, ok(&b).accepted), (1, 1));
}

#[tokio::test]
async fn no_or_bad_api_key_is_401() {
    let api = Api::new(config(), MemoryPublisher::new().publisher());
    for key in [None, Some("wrong"), Some("")] {
        let (status, headers, body) = api
            .post(key, "application/json", event(None, "acme", "p"))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(err(&body), "unauthorized");
    }
}

#[tokio::test]
async fn another_tenants_events_are_403_and_nothing_is_written() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let api = Api::new(config(), bus.publisher());
    let body = format!(
        "[{},{}]",
        event(None, "acme", "p1"),
        event(None, "lucky", "p1")
    );
    let (status, _, body) = api.post(Some(ACME_KEY), "application/json", body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err(&body), "forbidden_tenant");
    assert_eq!(bus.len("events"), 0);
}

#[tokio::test]
async fn limits_are_413() {
    let api = Api::new(
        IngestConfig {
            max_body_bytes: 64 * 1024,
            ..config()
        },
        MemoryPublisher::new().publisher(),
    );
    // A body over the request limit.
    let big = format!("[{}]", vec![event(None, "acme", "p"); 400].join(","));
    let (status, _, body) = api.post(Some(ACME_KEY), "application/json", big).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    let api = Api::new(config(), MemoryPublisher::new().publisher());
    // A 10 MB single event.
    let huge = event(None, "acme", "p").replace("tx-1", &"x".repeat(10 * 1024 * 1024));
    let (status, _, body) = api.post(Some(ACME_KEY), "application/json", huge).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large")
    );
    // 100k events in one request.
    let many = vec![r#"{"a":1}"#; 100_000].join("\n");
    let (status, _, body) = api.post(Some(ACME_KEY), "application/x-ndjson", many).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events")
    );
}

#[tokio::test]
async fn unreadable_bodies_are_400_and_wrong_content_type_415() {
    let api = Api::new(config(), MemoryPublisher::new().publisher());
    for (body, code) in [
        (b"".to_vec(), "empty_body"),
        (b" [ ] ".to_vec(), "empty_body"),
        (b"[{\"tenant_id\":".to_vec(), "unreadable_body"),
        (b"[1, 2".to_vec(), "unreadable_body"),
        (
            [b"[\"".as_slice(), &[0xff, 0xfe], b"\"]"].concat(),
            "unreadable_body",
        ),
    ] {
        let (status, _, resp) = api.post(Some(ACME_KEY), "application/json", body).await;
        assert_eq!(
            (status, err(&resp)),
            (StatusCode::BAD_REQUEST, code.to_owned())
        );
    }
    let (status, _, resp) = api
        .post(Some(ACME_KEY), "text/plain", event(None, "acme", "p"))
        .await;
    assert_eq!(
        (status, err(&resp).as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let req = Request::post("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {ACME_KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from("not gzip at all"))
        .unwrap();
    let (status, _, _) = api.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a broken gzip stream");
}

#[tokio::test]
async fn bad_events_get_precise_reasons_and_good_ones_in_the_same_batch_are_kept() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let api = Api::new(config(), bus.publisher());
    let good = event(None, "acme", "p1");
    let id = uuid7();
    let cases = [
        (
            good.replace("5000", "-1"),
            "payload.amount.amount_minor",
            ViolationCode::NegativeAmount,
        ),
        (
            good.replace("5000", "99999999999999999"),
            "payload.amount.amount_minor",
            ViolationCode::AmountTooLarge,
        ),
        (
            good.replace("\"EUR\"", "\"EURO\""),
            "payload.amount.currency",
            ViolationCode::InvalidCurrency,
        ),
        (
            good.replace("5000", "\"5000\""),
            "payload.amount.amount_minor",
            ViolationCode::InvalidType,
        ),
        (
            good.replace("\"deposit\"", "\"jackpot\""),
            "type",
            ViolationCode::UnknownEventType,
        ),
        (
            good.replace("\"player_id\":\"p1\"", "\"player_id\":\"\""),
            "player_id",
            ViolationCode::Required,
        ),
        (
            good.replace("\"transaction_id\":\"tx-1\",", ""),
            "payload.transaction_id",
            ViolationCode::Required,
        ),
        (
            good.replace(&chrono_now()[..4], "2999"),
            "occurred_at",
            ViolationCode::FutureTimestamp,
        ),
        (
            format!(
                r#"{{"event_id":"{id}","tenant_id":"acme","player_id":"p","type":"custom","occurred_at":"{}","payload":{{"name":"x","properties":{{"a":{}1{}}}}}}}"#,
                chrono_now(),
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            "payload.properties.a",
            ViolationCode::InvalidType,
        ),
    ];
    let mut events: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    events.push(good.clone());
    let (status, _, body) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            format!("[{}]", events.join(",")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the good event was accepted");
    let r = ok(&body);
    assert_eq!((r.accepted, r.rejected), (1, cases.len()));
    for (i, (_, path, code)) in cases.iter().enumerate() {
        let Outcome::Rejected { errors, .. } = &r.results[i] else {
            panic!("event {i} not rejected: {:?}", r.results[i])
        };
        let hit = errors.iter().any(|e| {
            e.code == *code && (e.path == *path || e.path.starts_with(&format!("{path}[")))
        });
        assert!(hit, "event {i}: expected {path} {code:?}, got {errors:?}");
    }
    assert_eq!(bus.len("events"), 1);

    // Every event refused: 400 with the same per-event results.
    let (status, _, body) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            format!("[{}]", cases[0].0),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ok(&body).rejected, 1);
}

#[tokio::test]
async fn over_the_tenant_rate_is_429_with_retry_after() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let api = Api::new(config(), bus.publisher());
    let five = format!("[{}]", vec![event(None, "lucky", "p"); 5].join(","));
    let (status, _, _) = api
        .post(Some(LUCKY_KEY), "application/json", five.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = api.post(Some(LUCKY_KEY), "application/json", five).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(
        headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another tenant is not affected.
    let (status, _, _) = api
        .post(Some(ACME_KEY), "application/json", event(None, "acme", "p"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // More events in one request than the tenant's rate allows at once: no wait would let it
    // pass, so it is not told to wait (it was 429 with `Retry-After: 1`, for ever).
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let six = format!("[{}]", vec![event(None, "lucky", "p"); 6].join(","));
    let (status, headers, body) = api.post(Some(LUCKY_KEY), "application/json", six).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "batch_over_rate_limit")
    );
    assert!(!headers.contains_key(header::RETRY_AFTER));
    let said = String::from_utf8_lossy(&body);
    assert!(
        said.contains("6 events") && said.contains("at most 5 per request"),
        "{said}"
    );
    assert_eq!(bus.len("events"), 6, "nothing of it published");
    // Refused events count against the rate too (uncounted, a flood of invalid events was
    // never limited); a client's retry answered `duplicate` does not.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let bad = event(None, "lucky", "p").replace("\"type\"", "\"kind\"");
    let five_bad = format!("[{}]", vec![bad; 5].join(","));
    let (status, _, body) = api
        .post(Some(LUCKY_KEY), "application/json", five_bad)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ok(&body).rejected, 5);
    // Five more need the whole budget back: a second, which no loaded machine takes between
    // two local requests (a token comes back every 200 ms; a full budget after 1 s).
    let five = format!("[{}]", vec![event(None, "lucky", "p"); 5].join(","));
    let (status, _, body) = api.post(Some(LUCKY_KEY), "application/json", five).await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "5 refused, then 5 within the same second"
    );
}

#[tokio::test]
async fn a_bus_that_cannot_accept_is_503_and_nothing_counts_as_accepted() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let api = Api::new(config(), bus.publisher());
    bus.fail_publishes(Some(BusError::Unavailable("broker down".into())));
    let id = uuid7();
    let (status, headers, body) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            event(Some(&id), "acme", "p"),
        )
        .await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable")
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(bus.len("events"), 0);
    // The retry after recovery is accepted, not "duplicate": the failed attempt was not remembered.
    bus.fail_publishes(None);
    let (status, _, body) = api
        .post(
            Some(ACME_KEY),
            "application/json",
            event(Some(&id), "acme", "p"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok(&body).accepted, 1);
    assert_eq!(bus.len("events"), 1);
}

#[tokio::test]
async fn a_bus_that_refuses_for_good_is_500_not_a_client_error() {
    let api = Api::new(config(), MemoryPublisher::new().publisher()); // no "events" topic
    let (status, headers, body) = api
        .post(Some(ACME_KEY), "application/json", event(None, "acme", "p"))
        .await;
    assert_eq!(
        (status, err(&body).as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "bus_rejected")
    );
    assert!(headers.get(header::RETRY_AFTER).is_none());
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let bus = MemoryPublisher::new();
    let api = Api::new(config(), bus.publisher());
    assert_eq!(api.send(get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(api.send(get("/readyz")).await.0, StatusCode::OK);
    // Probes share the bus's answer for a second: a flood of them (the public /readyz needs no
    // key) asks the bus once, not once each.
    let asked = bus.checks();
    let api = &api;
    let probes = futures::future::join_all((0..50).map(|i| async move {
        if i % 2 == 0 {
            api.send(get("/readyz")).await
        } else {
            api.admin(get("/readyz")).await
        }
    }))
    .await;
    assert!(probes.iter().all(|(s, _, _)| *s == StatusCode::OK));
    assert!(bus.checks() - asked <= 1, "{} checks", bus.checks() - asked);
    bus.fail_publishes(Some(BusError::Unavailable(
        "sasl_ssl://b-1.internal:9096: Authentication failed".into(),
    )));
    // The failure shows once the answer is a second old.
    tokio::time::sleep(pitboss_ingest::http::BUS_CHECK_EVERY).await;
    let (status, _, body) = api.send(get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("bus: unavailable") && !body.contains("b-1.internal"),
        "the public listener keeps the bus's error text to itself: {body}"
    );
    // The admin listener says why.
    let (status, _, body) = api.admin(get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("Authentication failed"), "{body}");
    bus.fail_publishes(None);
    bus.create_topic("events", 1);
    api.post(Some(ACME_KEY), "application/json", event(None, "acme", "p"))
        .await;
    assert_eq!(
        api.send(get("/metrics")).await.0,
        StatusCode::NOT_FOUND,
        "metrics are not on the public listener"
    );
    let (status, _, body) = api.admin(get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("pitboss_ingest_events_total"), "{text}");
    assert!(
        text.contains("pitboss_ingest_bus_ack_seconds_bucket"),
        "{text}"
    );
}
