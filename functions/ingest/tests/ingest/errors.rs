//! The error table (`pitboss_ingest::codes::ERROR_CODES`) is the one source of every error
//! code: the code maps status, gRPC code and retry advice from it; the docs are generated from
//! it; and every code in it is produced by a concrete input — over HTTP, and over gRPC and
//! WebSocket where the code applies there — with every answer checked against it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use pitboss_bus::BusError;
use pitboss_bus::memory::MemoryPublisher;
use pitboss_ingest::auth::hash_key;
use pitboss_ingest::codes::{self, ERROR_CODES, Level, RequestCode, Retry, event_doc, lookup};
use pitboss_ingest::core::CoreConfig;
use pitboss_ingest::{IngestConfig, TenantConfig};
use pitboss_model::ViolationCode;
use pitboss_proto::v1 as pb;
use tower::ServiceExt;

use crate::common;

const KEY: &str = "pk_test_errors_acme";
const SLOW_KEY: &str = "pk_test_errors_slow";

fn config() -> IngestConfig {
    IngestConfig {
        tenants: vec![
            TenantConfig {
                id: "acme".into(),
                api_key_sha256: vec![hash_key(KEY)],
                events_per_second: None,
            },
            TenantConfig {
                id: "slow".into(),
                api_key_sha256: vec![hash_key(SLOW_KEY)],
                events_per_second: Some(2),
            },
        ],
        // Small limits, so that each is reached by a small input.
        max_body_bytes: 64 * 1024,
        core: CoreConfig {
            max_event_bytes: 4096,
            max_events: 5,
            ..CoreConfig::default()
        },
        // Also how long a body may stall.
        header_read_timeout_ms: 300,
        ..IngestConfig::default()
    }
}

#[test]
fn the_table_is_consistent_and_every_mapping_comes_from_it() {
    // Request-level rows first, in RequestCode order; then the events', in ViolationCode order.
    for (i, code) in RequestCode::ALL.iter().enumerate() {
        assert_eq!(*code as usize, i, "{code:?}");
        let doc = code.doc();
        assert_eq!(doc.level, Level::Request, "{}", doc.code);
        assert!(doc.http.is_some_and(|s| s >= 400), "{}", doc.code);
    }
    for code in ViolationCode::ALL {
        let doc = event_doc(code);
        assert_eq!((doc.code, doc.level), (code.as_str(), Level::Event));
        assert_eq!((doc.http, doc.grpc, doc.retry), (None, None, Retry::No));
    }
    assert_eq!(
        ERROR_CODES.len(),
        RequestCode::ALL.len() + ViolationCode::ALL.len(),
        "a row that is neither a RequestCode nor a ViolationCode"
    );
    let mut codes: Vec<&str> = ERROR_CODES.iter().map(|d| d.code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), ERROR_CODES.len(), "a code is listed twice");
    for d in ERROR_CODES {
        assert!(
            !d.meaning.is_empty() && !d.meaning.contains('|'),
            "{}",
            d.code
        );
    }

    // Every error of the code takes its code, status, gRPC code and retry advice from its row.
    for e in common::every_error() {
        let doc = e.kind().doc();
        assert_eq!(e.code(), doc.code);
        assert_eq!(Some(e.status().as_u16()), doc.http, "{}", doc.code);
        assert_eq!(
            e.retry_after().is_some(),
            doc.retry == Retry::AfterRetryAfter,
            "{}",
            doc.code
        );
        let status = pitboss_ingest::grpc::status(e);
        assert_eq!(
            status.code(),
            doc.grpc.unwrap_or(tonic::Code::InvalidArgument)
        );
        assert!(status.message().starts_with(&format!("{}: ", doc.code)));
        if doc.grpc.is_some() {
            common::check_grpc_status(&status);
        }
    }
    // The gRPC codec's code for a message that is not protobuf is a row too.
    let doc = common::documented(pitboss_proto::codec::UNREADABLE_CODE, Level::Request);
    assert_eq!(doc.grpc, Some(tonic::Code::InvalidArgument));
    common::check_grpc_status(&pitboss_proto::codec::unreadable("x"));
}

/// docs/api.md and docs/events.md carry the table between their markers, as generated.
/// `PITBOSS_UPDATE_SCHEMA=1 cargo test -p pitboss-ingest --test ingest -- errors::` rewrites them.
#[test]
fn the_markdown_docs_carry_the_table() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for (file, table) in [
        ("api.md", codes::request_table_markdown()),
        ("events.md", codes::event_table_markdown()),
    ] {
        let path = docs.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let generated = codes::splice(&text, &table).unwrap_or_else(|| {
            panic!(
                "docs/{file} has no {} … {} markers",
                codes::BEGIN_MARKER,
                codes::END_MARKER
            )
        });
        if std::env::var_os("PITBOSS_UPDATE_SCHEMA").is_some() && text != generated {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        assert!(
            text == generated,
            "docs/{file}'s error table is stale: rerun with PITBOSS_UPDATE_SCHEMA=1"
        );
    }
}

/// What a test input produced, by code.
#[derive(Default)]
struct Seen(BTreeMap<String, Vec<String>>);

impl Seen {
    fn add(&mut self, code: &str, how: impl Into<String>) {
        self.0.entry(code.to_owned()).or_default().push(how.into());
    }
}

struct Http {
    app: axum::Router,
}

impl Http {
    fn new(config: IngestConfig, bus: &MemoryPublisher) -> Http {
        let state = pitboss_ingest::state(config, bus.publisher()).unwrap();
        Http {
            app: pitboss_ingest::http::router(state),
        }
    }

    /// Sends `req` and returns (status, body as JSON), checking the answer against the table.
    async fn send(&self, req: Request<Body>) -> (u16, serde_json::Value) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        common::check_json_answer(Some(status), &body);
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }
}

fn post(key: Option<&str>, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, content_type);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    req.body(body.into()).unwrap()
}

fn now() -> String {
    pitboss_model::Timestamp::now().to_rfc3339().unwrap()
}

/// A valid deposit of `tenant`, as a JSON object to modify.
fn deposit(tenant: &str) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": tenant, "player_id": "p1", "type": "deposit", "occurred_at": now(),
        "payload": {"transaction_id": "tx-1", "amount": {"amount_minor": 5000, "currency": "EUR"}}
    })
}

fn with(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut e = deposit("acme");
    f(&mut e);
    e.to_string()
}

fn event(kind: &str, payload: serde_json::Value) -> String {
    with(|e| {
        e["type"] = kind.into();
        e["payload"] = payload;
    })
}

/// Inputs that make each event-level code: (what, the event's text, expected path).
fn event_cases() -> Vec<(ViolationCode, &'static str, String, &'static str)> {
    use ViolationCode as V;
    let bet = |odds: &str| {
        event(
            "bet_placed",
            serde_json::json!({"bet_id": "b", "game_id": "g", "odds": odds,
                "stake": {"amount_minor": 1, "currency": "EUR"}}),
        )
    };
    let login =
        |ip: &str, country: &str| event("login", serde_json::json!({"ip": ip, "country": country}));
    let props: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("p{i}"), 1.into())).collect();
    let good = deposit("acme").to_string();
    vec![
        (
            V::Malformed,
            "a cut-off event",
            good[..good.len() - 12].to_owned(),
            "",
        ),
        (V::Malformed, "text that is not JSON", "not json".into(), ""),
        (
            V::Required,
            "an empty player id",
            with(|e| e["player_id"] = "".into()),
            "player_id",
        ),
        (
            V::Required,
            "no transaction id",
            with(|e| {
                e["payload"]
                    .as_object_mut()
                    .unwrap()
                    .remove("transaction_id");
            }),
            "payload.transaction_id",
        ),
        (
            V::UnknownField,
            "an unknown field",
            with(|e| e["colour"] = "red".into()),
            "colour",
        ),
        (
            V::InvalidType,
            "a string amount",
            with(|e| {
                e["payload"]["amount"]["amount_minor"] = "5000".into();
            }),
            "payload.amount.amount_minor",
        ),
        (
            V::InvalidType,
            "an object as a custom property value",
            event(
                "custom",
                serde_json::json!({"name": "x", "properties": {"a": {"b": 1}}}),
            ),
            "payload.properties.a",
        ),
        (
            V::InvalidValue,
            "a UTC offset out of range",
            with(|e| e["utc_offset_min"] = 9999.into()),
            "utc_offset_min",
        ),
        (
            V::UnknownEventType,
            "an unknown type",
            with(|e| e["type"] = "jackpot".into()),
            "type",
        ),
        (
            V::UnsupportedSchemaVersion,
            "schema version 99",
            with(|e| e["schema_version"] = 99.into()),
            "schema_version",
        ),
        (
            V::InvalidUuid,
            "an event id that is no UUID",
            with(|e| e["event_id"] = "nope".into()),
            "event_id",
        ),
        (
            V::InvalidCharacters,
            "a colon in a player id",
            with(|e| e["player_id"] = "p:1".into()),
            "player_id",
        ),
        (
            V::TooLong,
            "a long player id",
            with(|e| e["player_id"] = "p".repeat(200).into()),
            "player_id",
        ),
        (
            V::NegativeAmount,
            "a negative amount",
            with(|e| {
                e["payload"]["amount"]["amount_minor"] = (-1).into();
            }),
            "payload.amount.amount_minor",
        ),
        (
            V::AmountTooLarge,
            "a huge amount",
            with(|e| {
                e["payload"]["amount"]["amount_minor"] = 99_999_999_999_999_999_i64.into();
            }),
            "payload.amount.amount_minor",
        ),
        (
            V::InvalidCurrency,
            "an unknown currency",
            with(|e| {
                e["payload"]["amount"]["currency"] = "EURO".into();
            }),
            "payload.amount.currency",
        ),
        (V::InvalidOdds, "odds below 1", bet("0.5"), "payload.odds"),
        (
            V::InvalidIp,
            "an IP that is not one",
            login("x", "DE"),
            "payload.ip",
        ),
        (
            V::InvalidCountry,
            "a lower-case country",
            login("203.0.113.9", "de"),
            "payload.country",
        ),
        (
            V::InvalidTimestamp,
            "an occurred_at that is not RFC 3339",
            with(|e| e["occurred_at"] = "28/11/2026".into()),
            "occurred_at",
        ),
        (
            V::InvalidTimestamp,
            "an occurred_at before 1970",
            with(|e| e["occurred_at"] = "1969-12-31T23:59:59Z".into()),
            "occurred_at",
        ),
        (
            V::FutureTimestamp,
            "an occurred_at in 2999",
            with(|e| e["occurred_at"] = "2999-01-01T00:00:00Z".into()),
            "occurred_at",
        ),
        (
            V::InvalidProperty,
            "65 custom properties",
            event(
                "custom",
                serde_json::json!({"name": "x", "properties": props}),
            ),
            "payload.properties",
        ),
    ]
}

#[tokio::test]
async fn every_code_is_produced_by_some_input() {
    let mut seen = Seen::default();
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let http = Http::new(config(), &bus);
    let json = "application/json";
    let good = deposit("acme").to_string();

    // Request-level, over HTTP: (expected code, what, request).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"[1,").unwrap();
    let broken_gzip = {
        let mut r = post(Some(KEY), json, "not gzip at all");
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        r
    };
    let gzip_not_json = {
        let mut r = post(Some(KEY), json, gz.finish().unwrap());
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, "GZIP".parse().unwrap());
        r
    };
    let encoded = |key: Option<&str>, encoding: &str| {
        let mut r = post(key, json, good.clone());
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, encoding.parse().unwrap());
        r
    };
    // A body that sends a byte and stalls: cut, not held for ever, plain and gzip alike.
    let stalled = |gzip: bool| {
        let first: Vec<u8> = if gzip {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut z, good.as_bytes()).unwrap();
            let all = z.finish().unwrap();
            all[..all.len() / 2].to_vec()
        } else {
            b"[".to_vec()
        };
        let chunks = futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(first)]),
            futures::stream::pending(),
        );
        let mut r = post(Some(KEY), json, Body::from_stream(chunks));
        if gzip {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        }
        r
    };
    let cases: Vec<(&str, &str, Request<Body>)> = vec![
        ("body_timeout", "a body that stalls", stalled(false)),
        ("body_timeout", "a gzip body that stalls", stalled(true)),
        ("empty_body", "an empty body", post(Some(KEY), json, "")),
        ("empty_body", "[]", post(Some(KEY), json, "[]")),
        (
            "empty_body",
            "blank NDJSON",
            post(Some(KEY), "application/x-ndjson", "\n \n"),
        ),
        (
            "unreadable_body",
            "a cut-off array",
            post(Some(KEY), json, "[1,"),
        ),
        (
            "unreadable_body",
            "a JSON string",
            post(Some(KEY), json, "\"x\""),
        ),
        ("unreadable_body", "a broken gzip stream", broken_gzip),
        (
            "unreadable_body",
            "gzip (upper case) of a cut-off array",
            gzip_not_json,
        ),
        ("unauthorized", "no key", post(None, json, good.clone())),
        (
            "unauthorized",
            "no key and an unsupported encoding",
            encoded(None, "br"),
        ),
        (
            "forbidden_tenant",
            "another tenant's event",
            post(Some(KEY), json, deposit("lucky").to_string()),
        ),
        (
            "body_too_large",
            "a 90 KB body",
            post(
                Some(KEY),
                json,
                format!("[{}]", vec![good.as_str(); 450].join(",")),
            ),
        ),
        (
            "event_too_large",
            "a 5 KB event",
            post(
                Some(KEY),
                json,
                with(|e| e["payload"]["transaction_id"] = "x".repeat(5000).into()),
            ),
        ),
        (
            "too_many_events",
            "six events",
            post(
                Some(KEY),
                json,
                format!("[{}]", [good.as_str(); 6].join(",")),
            ),
        ),
        (
            "unsupported_media_type",
            "text/plain",
            post(Some(KEY), "text/plain", good.clone()),
        ),
        (
            "unsupported_encoding",
            "Content-Encoding: br",
            encoded(Some(KEY), "br"),
        ),
        (
            "unsupported_encoding",
            "Content-Encoding: gzip, br",
            encoded(Some(KEY), "gzip, br"),
        ),
    ];
    for (code, what, req) in cases {
        let (status, body) = http.send(req).await;
        assert_eq!(body["error"]["code"], code, "{what}: {status} {body}");
        seen.add(code, format!("HTTP: {what}"));
    }
    // identity is no encoding at all.
    let (status, body) = http.send(encoded(Some(KEY), "identity")).await;
    assert_eq!((status, &body["accepted"]), (200, &1.into()), "{body}");

    // The tenant's rate: 2 events/s, then 429 with Retry-After.
    let slow = |n: usize| {
        post(
            Some(SLOW_KEY),
            json,
            format!("[{}]", vec![deposit("slow").to_string(); n].join(",")),
        )
    };
    assert_eq!(http.send(slow(2)).await.0, 200);
    let (_, body) = http.send(slow(2)).await;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    seen.add("rate_limited", "HTTP: over the tenant's rate");
    let (status, body) = http.send(slow(3)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &"batch_over_rate_limit".into()),
        "{body}"
    );
    seen.add(
        "batch_over_rate_limit",
        "HTTP: more events at once than the tenant's rate",
    );

    bus.fail_publishes(Some(BusError::Unavailable("broker down".into())));
    let (_, body) = http.send(post(Some(KEY), json, good.clone())).await;
    assert_eq!(body["error"]["code"], "bus_unavailable", "{body}");
    seen.add("bus_unavailable", "HTTP: the bus is down");
    bus.fail_publishes(None);

    let no_topic = MemoryPublisher::new();
    let (_, body) = Http::new(config(), &no_topic)
        .send(post(Some(KEY), json, good.clone()))
        .await;
    assert_eq!(body["error"]["code"], "bus_rejected", "{body}");
    seen.add("bus_rejected", "HTTP: the topic does not exist");

    // Event-level, over HTTP: each case as an NDJSON line beside a good event, whose results
    // say exactly that code at that path.
    for (code, what, text, path) in event_cases() {
        let (status, body) = http
            .send(post(
                Some(KEY),
                "application/x-ndjson",
                format!("{good}\n{text}\n"),
            ))
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        let errors = body["results"][1]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: not rejected: {body}"));
        assert!(
            errors
                .iter()
                .any(|e| e["code"] == code.as_str() && e["path"] == path),
            "{what}: expected {} at {path:?}, got {body}",
            code.as_str()
        );
        seen.add(code.as_str(), format!("HTTP: {what}"));
    }

    // WebSocket frames (the frame loop, as the socket runs it).
    let state = pitboss_ingest::state(config(), bus.publisher()).unwrap();
    let frames = [
        "[]",
        "[1,",
        &format!("[{}]", deposit("lucky")),
        &format!("[{good}]"),
    ];
    let (tx, rx) = futures::channel::mpsc::unbounded::<String>();
    pitboss_ingest::ws::serve_frames(
        &state,
        "acme",
        futures::stream::iter(frames.map(|f| f.as_bytes().to_vec())),
        tx,
    )
    .await
    .unwrap();
    let replies: Vec<String> = futures::StreamExt::collect(rx).await;
    let codes: Vec<Vec<String>> = replies
        .iter()
        .map(|r| common::check_json_answer(None, r.as_bytes()))
        .collect();
    assert_eq!(
        codes,
        [
            vec!["empty_body".to_owned()],
            vec!["unreadable_body".to_owned()],
            vec!["forbidden_tenant".to_owned()],
            vec![]
        ],
        "{replies:?}"
    );
    for c in codes.iter().flatten() {
        seen.add(c, "WebSocket frame");
    }

    // gRPC, through a real client.
    for (code, how) in grpc_cases().await {
        seen.add(&code, format!("gRPC: {how}"));
    }
    for (code, how) in overloaded_cases().await {
        seen.add(&code, how);
    }
    for (code, how) in websocket_cases().await {
        seen.add(&code, how);
    }

    let missing: Vec<&str> = ERROR_CODES
        .iter()
        .map(|d| d.code)
        .filter(|c| !seen.0.contains_key(*c))
        .collect();
    assert!(missing.is_empty(), "no input produced {missing:?}");
    for code in seen.0.keys() {
        assert!(lookup(code).is_some(), "{code} is not in the table");
    }
}

/// acme's share of the body budget (`max_inflight_body_bytes_per_tenant`, 100 KiB here, of
/// 200 KiB) held by one request that sent 60 KiB and stalls: acme's next 50 KiB body is
/// `overloaded` (503, retry after a second) over HTTP, a WebSocket frame and gRPC (unary, and
/// a stream after its batches that fit, each giving its bytes back once written), while another
/// tenant's body of the same size is read; once the stalled request is gone, acme's bodies are
/// read again. Returns (code, how).
async fn overloaded_cases() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let cfg = IngestConfig {
        max_inflight_body_bytes: 200 * 1024,
        max_inflight_body_bytes_per_tenant: 100 * 1024,
        header_read_timeout_ms: 30_000,
        ..config()
    };
    let state = pitboss_ingest::state(cfg, bus.publisher()).unwrap();
    let app = pitboss_ingest::http::router(state.clone());
    let json = "application/json";
    // 60 KiB of a body, then nothing: the request holds them while it waits for the rest.
    let stalled = post(
        Some(KEY),
        json,
        Body::from_stream(futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(vec![b' '; 60 * 1024])]),
            futures::stream::pending(),
        )),
    );
    let holder = tokio::spawn(app.clone().oneshot(stalled));
    let start = std::time::Instant::now();
    while state.body_budget.held_by("acme") < 60 * 1024 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // One event with a 50 KiB player id: event_too_large once read, overloaded before.
    let big_event = with(|e| e["player_id"] = "p".repeat(50 * 1024).into());
    let big = format!("[{big_event}]");
    let answer = |r: axum::response::Response| async move {
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        (
            status,
            retry,
            common::check_json_answer(Some(status), &body),
            text,
        )
    };
    // A body with `key` read whole: its 50 KiB event is then too large.
    let read_whole = |key: &'static str, body: String| {
        let app = app.clone();
        async move {
            let (status, _, codes, text) =
                answer(app.oneshot(post(Some(key), json, body)).await.unwrap()).await;
            assert_eq!(
                (status, codes),
                (413, vec!["event_too_large".to_owned()]),
                "{text}"
            );
        }
    };
    // Sent in two pieces: the first (30 KiB) fits, the second does not; both go back.
    let halves = Body::from_stream(futures::stream::iter([
        Ok::<_, std::io::Error>(big.as_bytes()[..30 * 1024].to_vec()),
        Ok(big.as_bytes()[30 * 1024..].to_vec()),
    ]));
    let (status, retry, codes, text) = answer(
        app.clone()
            .oneshot(post(Some(KEY), json, halves))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, retry.as_deref(), codes),
        (503, Some("1"), vec!["overloaded".to_owned()]),
        "{text}"
    );
    assert!(
        text.contains("this tenant's requests hold their share"),
        "{text}"
    );
    out.push((
        "overloaded".into(),
        "HTTP: a 50 KiB body while another request of the tenant holds 60 KiB of its 100 KiB"
            .into(),
    ));
    assert_eq!(
        state.body_budget.held(),
        60 * 1024,
        "the refused body gave back the piece it had taken"
    );
    // Another tenant's body of the same size is read (and answered for what it is).
    read_whole(SLOW_KEY, big.replace("\"acme\"", "\"slow\"")).await;

    let (tx, rx) = futures::channel::mpsc::unbounded::<String>();
    pitboss_ingest::ws::serve_frames(
        &state,
        "acme",
        futures::stream::iter([big.clone().into_bytes()]),
        tx,
    )
    .await
    .unwrap();
    let replies: Vec<String> = futures::StreamExt::collect(rx).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(
        common::check_json_answer(None, replies[0].as_bytes()),
        ["overloaded"]
    );
    let reply: serde_json::Value = serde_json::from_str(&replies[0]).unwrap();
    assert_eq!(reply["retry_after_secs"], 1, "{reply}");
    out.push((
        "overloaded".into(),
        "WebSocket: a 50 KiB frame, the same".into(),
    ));

    // gRPC on a listener sharing the state (and so the budget).
    let (_, channel) = serve_grpc(state.clone()).await;
    let mut client = pb::ingest_client::IngestClient::new(channel);
    let event = |player: String| {
        let mut e = pitboss_model::decode_event(deposit("acme").to_string().as_bytes()).unwrap();
        e.player_id = player;
        pb::Event::from(&e)
    };
    let keyed = |events: Vec<pb::Event>| {
        let mut r = tonic::Request::new(pb::EventBatch { events });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        r
    };
    let status = client
        .ingest_batch(keyed(vec![event("p".repeat(50 * 1024))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(common::check_grpc_status(&status), "overloaded");
    out.push((
        "overloaded".into(),
        "gRPC: a 50 KiB message, the same".into(),
    ));
    // A stream of four batches of about 16 KiB (five events with a 3,200-byte player id, each
    // refused for it, which ends nothing): 40 KiB of room take them only if each gives its
    // bytes back once written. Then a 62 KiB batch finds no room.
    let small = || pb::EventBatch {
        events: vec![event("p".repeat(3200)); 5],
    };
    let large = pb::EventBatch {
        events: vec![event("p".repeat(62 * 1024))],
    };
    let status = stream_refusal(
        &mut client,
        vec![small(), small(), small(), small(), large],
        tonic::Code::Unavailable,
        "overloaded",
        4,
    )
    .await;
    assert!(status.message().contains("their share"), "{status:?}");
    out.push((
        "overloaded".into(),
        "gRPC: a stream's 62 KiB batch, the same".into(),
    ));

    // Seen by the operator: the refusals by bound, and the bytes held.
    let text = state.metrics.render();
    let series = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(
        series("pitboss_ingest_body_budget_refused_total{bound=\"tenant\"}") >= Some(4.0),
        "{text}"
    );
    assert!(
        series("pitboss_ingest_body_budget_refused_total{bound=\"process\"}").is_some(),
        "there at 0 from the start: {text}"
    );
    assert!(series("pitboss_ingest_body_bytes_held").is_some(), "{text}");

    // The stalled request gone, its bytes are given back and the same bodies are read.
    holder.abort();
    let _ = holder.await;
    let start = std::time::Instant::now();
    while state.body_budget.held() > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    read_whole(KEY, big.clone()).await;
    let status = client
        .ingest_batch(keyed(vec![event("p".repeat(50 * 1024))]))
        .await
        .unwrap_err();
    assert_eq!(common::check_grpc_status(&status), "event_too_large");
    out
}

/// A tenant holds at most `max_websockets_per_tenant` (2 here) ingest sockets: the third is
/// refused before the upgrade (`429 too_many_websockets`, retry after 5 s), another tenant's
/// is not, and a closed socket frees its place. Returns (code, how).
async fn websocket_cases() -> Vec<(String, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let state = pitboss_ingest::state(
        IngestConfig {
            max_websockets_per_tenant: 2,
            ..config()
        },
        bus.publisher(),
    )
    .unwrap();
    let (addr, _) = serve_grpc(state.clone()).await;
    let connect = |key: &'static str| async move {
        let mut request = format!("ws://{addr}/v1/ingest/ws")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        tokio_tungstenite::connect_async(request).await
    };
    let first = connect(KEY).await.unwrap().0;
    let _second = connect(KEY).await.unwrap().0;
    let refused = match connect(KEY).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r,
        other => panic!("the third socket: {other:?}"),
    };
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    assert_eq!(
        common::check_json_answer(Some(429), refused.body().as_deref().unwrap_or_default()),
        ["too_many_websockets"]
    );
    let _other_tenant = connect(SLOW_KEY).await.unwrap().0;
    // One closed: once the server has seen it go, its place is free.
    drop(first);
    let start = std::time::Instant::now();
    while state.sockets.open("acme") > 1 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the closed socket's place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _third = connect(KEY).await.unwrap().0;
    vec![(
        "too_many_websockets".into(),
        "WebSocket: a tenant's third socket with max_websockets_per_tenant 2".into(),
    )]
}

/// `state` served on a loopback port; its address and a channel to it.
async fn serve_grpc(
    state: pitboss_ingest::http::AppState,
) -> (std::net::SocketAddr, tonic::transport::Channel) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pitboss_ingest::serve(
        state,
        listener,
        pitboss_runtime::Shutdown::new(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (addr, channel)
}

/// `batches` sent as one keyed `IngestStream`, refused with `grpc` and `code` after `written`
/// batches were written (its `pitboss-batches-written`); the status.
async fn stream_refusal(
    client: &mut pb::ingest_client::IngestClient<tonic::transport::Channel>,
    batches: Vec<pb::EventBatch>,
    grpc: tonic::Code,
    code: &str,
    written: u32,
) -> tonic::Status {
    let mut stream = tonic::Request::new(futures::stream::iter(batches));
    stream
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let status = client.ingest_stream(stream).await.unwrap_err();
    assert_eq!(status.code(), grpc, "{status:?}");
    assert_eq!(common::check_grpc_status(&status), code);
    assert_eq!(
        status
            .metadata()
            .get("pitboss-batches-written")
            .and_then(|v| v.to_str().ok()),
        Some(written.to_string().as_str()),
        "{status:?}"
    );
    status
}

/// A message the client encodes that is not an `EventBatch`: field 1 (`events`, a
/// length-delimited message) as a varint.
#[derive(Clone, PartialEq, prost::Message)]
struct NotABatch {
    #[prost(uint64, tag = "1")]
    events: u64,
}

/// An `EventBatch` as the wire has it: each event as its bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    events: Vec<Vec<u8>>,
}

/// `message` sent with the key to `path` (a unary call, or a stream of it for
/// `IngestStream`), as bytes the server must decode itself; the status it fails with.
async fn keyed_call<M: prost::Message + Send + Sync + 'static>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &str,
    message: M,
) -> tonic::Status {
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let codec = tonic_prost::ProstCodec::<M, pb::IngestReply>::default();
    if path.ends_with("Stream") {
        grpc.client_streaming(
            request.map(|m| futures::stream::iter([m])),
            path.parse().unwrap(),
            codec,
        )
        .await
        .unwrap_err()
    } else {
        grpc.unary(request, path.parse().unwrap(), codec)
            .await
            .unwrap_err()
    }
}

/// gRPC calls that fail, each with the code it must produce; returns (code, how).
async fn grpc_cases() -> Vec<(String, &'static str)> {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let state = pitboss_ingest::state(config(), bus.publisher()).unwrap();
    let (grpc_addr, channel) = serve_grpc(state).await;
    let authed = |key: Option<&str>, events: Vec<pb::Event>| {
        let mut r = tonic::Request::new(pb::EventBatch { events });
        if let Some(key) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        r
    };
    let proto = |tenant: &str| {
        let e: pitboss_model::Event = serde_json::from_value(deposit(tenant)).unwrap();
        pb::Event::from(&e)
    };
    let mut client = pb::ingest_client::IngestClient::new(channel.clone());
    let mut out = Vec::new();
    // The tenant's budget for this second, used up, and straight away asked again.
    client
        .ingest_batch(authed(Some(SLOW_KEY), vec![proto("slow"); 2]))
        .await
        .unwrap();
    let calls: Vec<(&str, &'static str, tonic::Request<pb::EventBatch>)> = vec![
        (
            "rate_limited",
            "over the tenant's rate",
            authed(Some(SLOW_KEY), vec![proto("slow"); 2]),
        ),
        ("unauthorized", "no key", authed(None, vec![proto("acme")])),
        (
            "forbidden_tenant",
            "another tenant's event",
            authed(Some(KEY), vec![proto("lucky")]),
        ),
        ("empty_body", "an empty batch", authed(Some(KEY), vec![])),
        (
            "too_many_events",
            "six events",
            authed(Some(KEY), vec![proto("acme"); 6]),
        ),
        (
            "batch_over_rate_limit",
            "more events at once than the tenant's rate",
            authed(Some(SLOW_KEY), vec![proto("slow"); 3]),
        ),
    ];
    for (code, how, request) in calls {
        let status = client.ingest_batch(request).await.unwrap_err();
        assert_eq!(
            common::check_grpc_status(&status),
            code,
            "{how}: {status:?}"
        );
        out.push((code.to_owned(), how));
    }
    // A per-event refusal travels in the reply.
    let mut bad = proto("acme");
    if let Some(pb::event::Payload::Deposit(d)) = &mut bad.payload {
        d.amount.as_mut().unwrap().amount_minor = -1;
    }
    let reply = client
        .ingest_batch(authed(Some(KEY), vec![proto("acme"), bad]))
        .await
        .unwrap()
        .into_inner();
    for code in common::check_grpc_reply(&reply) {
        out.push((code, "an event with a negative amount"));
    }
    // A message over max_body_bytes: tonic refuses it before the handler (OUT_OF_RANGE); the
    // documented answer is RESOURCE_EXHAUSTED body_too_large, unary and streaming.
    let mut big = proto("acme");
    big.player_id = "p".repeat(70 * 1024);
    let status = client
        .ingest_batch(authed(Some(KEY), vec![big.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(common::check_grpc_status(&status), "body_too_large");
    let mut stream = tonic::Request::new(futures::stream::iter([pb::EventBatch {
        events: vec![big],
    }]));
    stream
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let status = client.ingest_stream(stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(common::check_grpc_status(&status), "body_too_large");
    out.push((
        "body_too_large".into(),
        "a gRPC message over max_body_bytes",
    ));
    // A stream carries at most 10 x max_events (5) events: the eleventh full batch is
    // refused, the ten before written.
    let batches: Vec<pb::EventBatch> = (0..12)
        .map(|_| pb::EventBatch {
            events: vec![proto("acme"); 5],
        })
        .collect();
    let status = stream_refusal(
        &mut client,
        batches,
        tonic::Code::ResourceExhausted,
        "stream_too_long",
        10,
    )
    .await;
    assert!(status.message().contains("take it to 55"), "{status:?}");
    out.push(("stream_too_long".into(), "a stream of more than 50 events"));

    bus.fail_publishes(Some(BusError::Unavailable("broker down".into())));
    let status = client
        .ingest_batch(authed(Some(KEY), vec![proto("acme")]))
        .await
        .unwrap_err();
    assert_eq!(common::check_grpc_status(&status), "bus_unavailable");
    out.push(("bus_unavailable".into(), "the bus is down"));
    bus.fail_publishes(None);

    // Bytes that are not an EventBatch: INVALID_ARGUMENT unreadable_body (tonic-prost says
    // INTERNAL), unary and streaming.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for path in [
        "/pitboss.v1.Ingest/IngestBatch",
        "/pitboss.v1.Ingest/IngestStream",
    ] {
        let status = keyed_call(&mut grpc, path, NotABatch { events: 7 }).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{path}: {status:?}"
        );
        assert_eq!(common::check_grpc_status(&status), "unreadable_body");
        out.push((
            "unreadable_body".into(),
            "a message that is not an EventBatch",
        ));
        // More events than a batch may hold are counted on the wire and refused before any
        // is decoded: six that are not protobuf are too many, not unreadable (decoded first,
        // 20 MiB of empty events took gigabytes before the count was checked).
        for events in [vec![vec![0x07]; 6], vec![Vec::new(); 6]] {
            let status = keyed_call(&mut grpc, path, RawBatch { events }).await;
            assert_eq!(
                common::check_grpc_status(&status),
                "too_many_events",
                "{path}: {status:?}"
            );
            assert!(
                status.message().contains("6 events in one request"),
                "{status:?}"
            );
        }
        // The key is checked before the message is read: without one, the same bytes, or a
        // message over the bound, are UNAUTHENTICATED (they were decoded, or refused for
        // their size, first).
        let mut big = proto("acme");
        big.player_id = "p".repeat(70 * 1024);
        let codec = || tonic_prost::ProstCodec::<NotABatch, pb::IngestReply>::default();
        let batch_codec = || tonic_prost::ProstCodec::<pb::EventBatch, pb::IngestReply>::default();
        grpc.ready().await.unwrap();
        let unkeyed = grpc
            .unary(
                tonic::Request::new(NotABatch { events: 7 }),
                path.parse().unwrap(),
                codec(),
            )
            .await
            .unwrap_err();
        grpc.ready().await.unwrap();
        let unkeyed_big = grpc
            .unary(
                tonic::Request::new(pb::EventBatch { events: vec![big] }),
                path.parse().unwrap(),
                batch_codec(),
            )
            .await
            .unwrap_err();
        for (what, status) in [("not a batch", unkeyed), ("over the bound", unkeyed_big)] {
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{path}, {what}: {status:?}"
            );
            assert_eq!(common::check_grpc_status(&status), "unauthorized");
        }
    }

    // A stream open when the server shuts down reads no further batch.
    let stop = pitboss_runtime::Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = pitboss_ingest::state(config(), bus.publisher()).unwrap();
    tokio::spawn(pitboss_ingest::serve(state, listener, stop.clone()));
    let mut client = pb::ingest_client::IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (mut open, rx) = futures::channel::mpsc::channel::<pb::EventBatch>(1);
    let mut stream = tonic::Request::new(rx);
    stream
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let call = tokio::spawn(async move { client.ingest_stream(stream).await });
    // The stream is open once its first batch is written.
    let before = bus.len("events");
    futures::SinkExt::send(
        &mut open,
        pb::EventBatch {
            events: vec![proto("acme")],
        },
    )
    .await
    .unwrap();
    for _ in 0..200 {
        if bus.len("events") > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(bus.len("events"), before + 1);
    stop.trigger("test");
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(common::check_grpc_status(&status), "draining");
    out.push(("draining".into(), "a stream open at SIGTERM"));

    // Part of a message, then nothing (the connection kept alive by HTTP/2 pings): cut after
    // `header_read_timeout_ms` (300 ms here), unary and streaming, rather than held with its
    // bytes of the body budget for as long as the client likes.
    for path in [
        "/pitboss.v1.Ingest/IngestBatch",
        "/pitboss.v1.Ingest/IngestStream",
    ] {
        let mut first = vec![0u8];
        first.extend_from_slice(&1000u32.to_be_bytes());
        first.extend_from_slice(&[0u8; 100]);
        let body = axum::body::Body::from_stream(futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(first)]),
            futures::stream::pending(),
        ));
        let request = axum::http::Request::post(format!("http://{grpc_addr}{path}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(tonic::body::Body::new(body))
            .unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            channel.clone().oneshot(request),
        )
        .await
        .expect("answered, not held")
        .unwrap();
        let (parts, body) = response.into_parts();
        // The status is in the head (a trailers-only answer) or the trailers.
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default();
        let field = |name: &str| {
            parts
                .headers
                .get(name)
                .or_else(|| trailers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            (
                field("grpc-status").as_deref(),
                field("pitboss-error-code").as_deref()
            ),
            (Some("4"), Some("body_timeout")),
            "{path}: {parts:?} {trailers:?}"
        );
    }
    out.push((
        "body_timeout".into(),
        "part of a message, then nothing for header_read_timeout_ms",
    ));
    out
}

/// The issue's observations, one by one, as a client sees them.
#[tokio::test]
async fn the_issues_observations_get_the_documented_answers() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let http = Http::new(config(), &bus);
    let json = "application/json";

    // `occurred_at` that is not RFC 3339: invalid_timestamp.
    let (status, body) = http
        .send(post(
            Some(KEY),
            json,
            with(|e| e["occurred_at"] = "28/11/2026".into()),
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["results"][0]["errors"][0]["code"], "invalid_timestamp");
    assert_eq!(body["results"][0]["errors"][0]["path"], "occurred_at");

    // `[]`: 400 empty_body.
    let (status, body) = http.send(post(Some(KEY), json, "[]")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &"empty_body".into())
    );

    // An object as a custom property value: invalid_type, in words of the contract.
    let (_, body) = http
        .send(post(
            Some(KEY),
            json,
            event(
                "custom",
                serde_json::json!({"name": "x", "properties": {"a": {"b": 1}}}),
            ),
        ))
        .await;
    let error = &body["results"][0]["errors"][0];
    assert_eq!(error["code"], "invalid_type", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("custom properties are flat") && !message.contains("untagged"),
        "{message}"
    );

    // An unsupported Content-Encoding: authenticated first (401 without a key), then 415
    // unsupported_encoding with a JSON body.
    for (key, expected) in [
        (None, (401, "unauthorized")),
        (Some(KEY), (415, "unsupported_encoding")),
    ] {
        let mut req = post(key, json, "x");
        req.headers_mut()
            .insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let (status, body) = http.send(req).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            expected,
            "{body}"
        );
    }

    // NDJSON: a line cut off inside `payload` and a line that is not JSON are both refused at
    // the empty path (the event is the line), the message saying which line of the body.
    let good = deposit("acme").to_string();
    let cut = &good[..good.len() - 12];
    assert!(cut.contains("\"payload\""));
    let (_, body) = http
        .send(post(
            Some(KEY),
            "application/x-ndjson",
            format!("{good}\n\n{cut}\nnot json\n"),
        ))
        .await;
    for (i, line) in [(1, 3), (2, 4)] {
        let error = &body["results"][i]["errors"][0];
        assert_eq!(
            (&error["code"], &error["path"]),
            (&"malformed".into(), &"".into()),
            "{body}"
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("at line {line} column")),
            "{body}"
        );
    }
}
