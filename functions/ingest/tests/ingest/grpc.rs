//! gRPC ingest through a real tonic client (HTTP/2 over the same port as the HTTP API):
//! unary batches, client streaming, auth, tenant isolation, and a bus that cannot accept.

#![allow(clippy::unwrap_used)]

use pitboss_bus::BusError;
use pitboss_bus::memory::MemoryPublisher;
use pitboss_ingest::auth::hash_key;
use pitboss_ingest::{IngestConfig, TenantConfig};
use pitboss_model::{BetPlaced, Event, Money, Payload, Timestamp};
use pitboss_proto::v1 as pb;
use pitboss_proto::v1::ingest_client::IngestClient;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::common;

const KEY: &str = "pk_test_grpc_0a1b2c3d4e5f";

async fn serve(bus: &MemoryPublisher) -> String {
    serve_until(bus, pitboss_runtime::Shutdown::new()).await
}

async fn serve_until(bus: &MemoryPublisher, stop: pitboss_runtime::Shutdown) -> String {
    let config = IngestConfig {
        tenants: vec![TenantConfig {
            id: "acme".into(),
            api_key_sha256: vec![hash_key(KEY)],
            events_per_second: None,
        }],
        ..IngestConfig::default()
    };
    let state = pitboss_ingest::state(config, bus.publisher()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pitboss_ingest::serve(state, listener, stop));
    format!("http://{addr}")
}

/// On SIGTERM a stream reads no further batch (as a WebSocket reads no further frame): the
/// client gets `UNAVAILABLE` `draining` with how many batches were written, and resends the
/// rest on a new connection. It read batches for the whole drain, then was cut without it.
#[tokio::test]
async fn a_stream_open_at_shutdown_stops_reading_and_says_which_batches_were_written() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let stop = pitboss_runtime::Shutdown::new();
    let mut client = IngestClient::connect(serve_until(&bus, stop.clone()).await)
        .await
        .unwrap();
    use futures::SinkExt as _;
    let (mut tx, rx) = futures::channel::mpsc::channel::<pb::EventBatch>(4);
    let call = tokio::spawn(async move { client.ingest_stream(authed(rx)).await });
    for i in 0..2 {
        tx.send(pb::EventBatch {
            events: vec![event("acme", i)],
        })
        .await
        .unwrap();
    }
    // Both written before the signal.
    for _ in 0..100 {
        if bus.len("events") == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(bus.len("events"), 2);
    stop.trigger("test");
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(common::check_grpc_status(&err), "draining");
    assert_eq!(
        err.metadata()
            .get("pitboss-batches-written")
            .map(|v| v.to_str().unwrap()),
        Some("2")
    );
    assert!(err.message().contains("resend from batch 3"), "{err:?}");
    assert_eq!(bus.len("events"), 2);
    drop(tx);
}

fn event(tenant: &str, amount: i64) -> pb::Event {
    let e = Event {
        event_id: None,
        tenant_id: tenant.into(),
        player_id: "p-1".into(),
        session_id: None,
        occurred_at: Timestamp::now(),
        received_at: None,
        schema_version: 1,
        late: false,
        utc_offset_min: None,
        payload: Payload::BetPlaced(BetPlaced {
            bet_id: "b-1".into(),
            game_id: "roulette".into(),
            round_id: None,
            stake: Money::new(amount, "EUR"),
            odds: None,
            bet_type: None,
            channel: None,
            device_id: None,
            autoplay: false,
        }),
    };
    pb::Event::from(&e)
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {KEY}")).unwrap(),
    );
    request
}

#[tokio::test]
async fn unary_batches_get_per_event_results() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let mut client = IngestClient::connect(serve(&bus).await).await.unwrap();
    let batch = pb::EventBatch {
        events: vec![event("acme", 100), event("acme", -1), event("acme", 300)],
    };
    let reply = client
        .ingest_batch(authed(batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.accepted, reply.duplicates, reply.rejected),
        (2, 0, 1)
    );
    assert_eq!(common::check_grpc_reply(&reply), ["negative_amount"]);
    let rejected = &reply.results[1];
    assert_eq!(rejected.status, pb::EventStatus::Rejected as i32);
    assert_eq!(rejected.errors[0].path, "payload.stake.amount_minor");
    assert_eq!(rejected.errors[0].code, "negative_amount");
    assert_eq!(
        uuid::Uuid::parse_str(&reply.results[0].event_id)
            .unwrap()
            .get_version_num(),
        7
    );
    assert_eq!(bus.len("events"), 2);
}

#[tokio::test]
async fn client_streaming_adds_up_every_batch() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let mut client = IngestClient::connect(serve(&bus).await).await.unwrap();
    let batches = (0..3).map(|i| pb::EventBatch {
        events: vec![event("acme", i); 4],
    });
    let reply = client
        .ingest_stream(authed(futures::stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 12);
    assert_eq!(reply.results.len(), 12);
    assert_eq!(bus.len("events"), 12);
}

/// A batch that fails after earlier ones were written: the status says how many were, so
/// the client resends from the failed one (not "nothing was written").
#[tokio::test]
async fn a_stream_that_fails_midway_says_which_batches_were_written() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let mut client = IngestClient::connect(serve(&bus).await).await.unwrap();
    let batches = [
        pb::EventBatch {
            events: vec![event("acme", 1); 4],
        },
        pb::EventBatch {
            events: vec![event("acme", 2), event("other", 3)],
        },
        pb::EventBatch {
            events: vec![event("acme", 4)],
        },
    ];
    let err = client
        .ingest_stream(authed(futures::stream::iter(batches)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(common::check_grpc_status(&err), "forbidden_tenant");
    let meta = |k: &str| {
        err.metadata()
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(meta("pitboss-batches-written").as_deref(), Some("1"));
    assert_eq!(meta("pitboss-events-accepted").as_deref(), Some("4"));
    assert!(err.message().contains("resend from batch 2"), "{err:?}");
    assert_eq!(
        bus.len("events"),
        4,
        "the first batch is written, nothing after it"
    );
    // Failing in the first batch: the plain whole-request error, nothing written.
    let err = client
        .ingest_stream(authed(futures::stream::iter([pb::EventBatch {
            events: vec![event("other", 5)],
        }])))
        .await
        .unwrap_err();
    assert_eq!(common::check_grpc_status(&err), "forbidden_tenant");
    assert!(err.metadata().get("pitboss-batches-written").is_none());
    assert_eq!(bus.len("events"), 4);
}

#[tokio::test]
async fn auth_tenants_and_bus_failures_map_to_grpc_codes() {
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 1);
    let mut client = IngestClient::connect(serve(&bus).await).await.unwrap();
    let err = client
        .ingest_batch(tonic::Request::new(pb::EventBatch {
            events: vec![event("acme", 1)],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(common::check_grpc_status(&err), "unauthorized");
    let err = client
        .ingest_batch(authed(pb::EventBatch {
            events: vec![event("other", 1)],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(common::check_grpc_status(&err), "forbidden_tenant");
    let err = client
        .ingest_batch(authed(pb::EventBatch { events: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(common::check_grpc_status(&err), "empty_body");
    bus.fail_publishes(Some(BusError::Unavailable("broker down".into())));
    let err = client
        .ingest_batch(authed(pb::EventBatch {
            events: vec![event("acme", 1)],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(common::check_grpc_status(&err), "bus_unavailable");
    assert!(
        err.message().contains("bus_unavailable"),
        "{}",
        err.message()
    );
    assert_eq!(bus.len("events"), 0);
}

/// The standard health service (`grpc.health.v1.Health`), without a key: `Check` and `Watch`
/// say SERVING while `/readyz` would say ready, NOT_SERVING while the bus fails and once the
/// ingest drains; an unknown service name is NOT_FOUND (`Check`) or SERVICE_UNKNOWN (`Watch`).
#[tokio::test]
async fn the_health_service_follows_readiness_without_a_key() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let stop = pitboss_runtime::Shutdown::new();
    // As `pitboss ingest` runs it: readiness turns to draining on the shutdown signal.
    let mut state = pitboss_ingest::state(IngestConfig::default(), bus.publisher()).unwrap();
    state.readiness = state.readiness.draining_on(stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(pitboss_ingest::serve(state, listener, stop.clone()));
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "pitboss.v1.Ingest"] {
        let status = health
            .check(ask(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health.check(ask("pitboss.v1.Nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut unknown = health
        .watch(ask("pitboss.v1.Nope"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unknown.message().await.unwrap().unwrap().status,
        ServingStatus::ServiceUnknown as i32
    );

    let mut watch = health.watch(ask("")).await.unwrap().into_inner();
    async fn next(w: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
        tokio::time::timeout(std::time::Duration::from_secs(10), w.message())
            .await
            .expect("a change within 10 s")
            .unwrap()
            .unwrap()
            .status
    }
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    bus.fail_publishes(Some(BusError::Unavailable("broker down".into())));
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    let status = health.check(ask("")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    bus.fail_publishes(None);
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    let mut second = health.watch(ask("")).await.unwrap().into_inner();
    assert_eq!(next(&mut second).await, ServingStatus::Serving as i32);
    // An unknown name's call stays open: nothing more within two checks.
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(2), unknown.message())
            .await
            .is_err()
    );
    // On SIGTERM every watch says NOT_SERVING and ends (an unknown name's too), so a load
    // balancer's watch does not hold the drain up.
    stop.trigger("test");
    for w in [&mut watch, &mut second] {
        assert_eq!(next(w).await, ServingStatus::NotServing as i32);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), w.message()).await;
        assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    }
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), unknown.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
}

/// At most `MAX_HEALTH_WATCHERS` watches are open at once (they need no key): one more is
/// RESOURCE_EXHAUSTED, and a place freed is taken again.
#[tokio::test]
async fn health_watches_are_bounded() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let url = serve(&bus).await;
    let max = pitboss_ingest::grpc::MAX_HEALTH_WATCHERS;
    let mut open = Vec::new();
    // A connection carries up to 100 streams here (below the server's per-connection bound).
    for _ in 0..max.div_ceil(100) + 1 {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        for _ in 0..100 {
            if open.len() == max {
                break;
            }
            let request = HealthCheckRequest {
                service: String::new(),
            };
            open.push(health.watch(request).await.unwrap().into_inner());
        }
        if open.len() == max {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let err = health.watch(request).await.unwrap_err();
            assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
            // One leaves: its place is free again (once the server sees the call gone).
            drop(open.pop());
            let mut again = None;
            for _ in 0..100 {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                match health.watch(request).await {
                    Ok(w) => {
                        again = Some(w);
                        break;
                    }
                    Err(e) => {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
            }
            assert!(again.is_some(), "the freed place was not taken again");
            return;
        }
    }
    panic!("never reached {max} watches");
}

/// The reflection service (`grpc.reflection.v1`, and `v1alpha` for older tools), without a
/// key: it lists the ingest, health and reflection (v1) services, and gives the file that defines
/// `pitboss.v1.Ingest` and every file it imports — what `grpcurl` needs without the .proto
/// files.
#[tokio::test]
async fn reflection_lists_the_services_and_describes_the_ingest() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let bus = MemoryPublisher::new();
    bus.create_topic("events", 2);
    let channel = tonic::transport::Channel::from_shared(serve(&bus).await)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel.clone());
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = futures::stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "pitboss.v1.Ingest".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "pitboss.v1.Nope".into(),
        )),
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "pitboss.v1.Ingest"
        ]
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a file descriptor");
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).unwrap())
        .collect();
    let ingest = files
        .iter()
        .find(|f| f.name() == "pitboss/v1/ingest.proto")
        .expect("the file of the service");
    let service = &ingest.service[0];
    assert_eq!(service.name(), "Ingest");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["IngestBatch", "IngestStream"]);
    // An unknown symbol ends the call with NOT_FOUND (tonic's reflection, rather than an error
    // message on the stream).
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Every file it imports is there too, by name (as a client asks for them next).
    assert!(!ingest.dependency.is_empty());
    let requests = futures::stream::iter(
        ingest
            .dependency
            .clone()
            .into_iter()
            .map(move |d| ask(MessageRequest::FileByFilename(d))),
    );
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    for dep in &ingest.dependency {
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("{dep} missing");
        };
        let file: prost_types::FileDescriptorProto =
            prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
        assert_eq!(file.name(), dep);
    }

    // A request over the tools' bound (64 KiB) gets no answer: the call ends (tonic's
    // reflection stops reading at a message it cannot decode), nothing of it echoed.
    let mut client = ServerReflectionClient::new(channel.clone());
    let huge = "x".repeat(pitboss_ingest::grpc::MAX_TOOL_MESSAGE + 1);
    let requests = futures::stream::iter([ask(MessageRequest::FileContainingSymbol(huge.clone()))]);
    let end = match client.server_reflection_info(requests).await {
        Ok(r) => r.into_inner().message().await,
        Err(e) => Err(e),
    };
    match end {
        Ok(None) => {}
        Err(e) => assert!(
            e.message().len() < 1_000,
            "echoed: {} bytes",
            e.message().len()
        ),
        Ok(Some(m)) => panic!("answered: {:?}", m.message_response.map(|_| ())),
    }
    // A health request over it is refused as any oversized body is, with that bound.
    let err = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: huge })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(common::check_grpc_status(&err), "body_too_large");
    assert!(err.message().contains("65536"), "{}", err.message());

    // The older version, as some tools ask it first.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = Alpha::new(channel);
    let requests =
        futures::stream::iter([tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        }]);
    let mut answers = alpha
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services");
    };
    assert!(list.service.iter().any(|s| s.name == "pitboss.v1.Ingest"));
}
