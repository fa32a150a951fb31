//! The pure ingest core on the load generator's bodies (batches of 100 mixed events), next to
//! the baseline of parsing the same bodies into `serde_json::Value` in the same run:
//!
//! ```sh
//! cargo bench -p pitboss-ingest --bench plan
//! ```
//!
//! - `plan`: split, decode, validate, stamp, encode for the bus (server-assigned ids);
//! - `plan_payload_first`: the same events with every object's keys sorted, so `payload` comes
//!   before `type` and has to be kept raw until its type is known;
//! - `plan_client_ids`: the same with client ids, each checked against a warm dedup window
//!   (1,000,000 ids) and remembered, as `POST /v1/events` does;
//! - `response`: serializing the per-event answer of one request.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pitboss_ingest::core::{BodyFormat, CoreConfig, NoDedup, fingerprint, plan};
use pitboss_ingest::dedup::DedupWindow;
use pitboss_ingest::sample;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 100;

fn bench(c: &mut Criterion) {
    let now = pitboss_model::Timestamp::now();
    let at = now.to_rfc3339().unwrap();
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|b| sample::body("demo", b * BATCH, BATCH, 10_000, &at))
        .collect();
    // The same events with the keys of every object sorted (`payload` before `type`), as a
    // client serializing a generic JSON map sends them.
    let sorted: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| {
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(b).unwrap()).unwrap()
        })
        .collect();
    let config = CoreConfig::default();

    let mut g = c.benchmark_group("ingest_core");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(5));
    let mut i = 0;
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            i += 1;
            let v: serde_json::Value = serde_json::from_slice(&bodies[i % 64]).unwrap();
            v
        })
    });
    for (name, set) in [("plan", &bodies), ("plan_payload_first", &sorted)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let (body, ms) = (&set[i % 64], now.as_millis());
                plan(body, BodyFormat::Json, "demo", &config, ms, &NoDedup).unwrap()
            })
        });
    }
    // A window as full as a busy server's: 1,000,000 ids of the last minutes.
    let window = DedupWindow::new(Duration::from_secs(900), 1_000_000);
    window.remember(
        (0..1_000_000).map(|_| fingerprint("demo", &pitboss_model::new_event_id())),
        now.as_millis(),
    );
    g.bench_function("plan_client_ids", |b| {
        b.iter_batched(
            // Fresh ids each time (not timed), or every event would be a duplicate.
            || {
                i += 1;
                let first = (i % 64) * BATCH;
                let events = sample::events("demo", first, BATCH, 10_000, &at);
                serde_json::to_vec(&sample::with_client_ids(events)).unwrap()
            },
            |body| {
                let p = plan(
                    &body,
                    BodyFormat::Json,
                    "demo",
                    &config,
                    now.as_millis(),
                    &window,
                )
                .unwrap();
                assert_eq!(p.publish.len(), BATCH);
                window.remember(
                    p.publish.iter().filter_map(|r| r.client_id),
                    now.as_millis(),
                );
                p
            },
            BatchSize::SmallInput,
        )
    });
    let answer = plan(
        &bodies[0],
        BodyFormat::Json,
        "demo",
        &config,
        now.as_millis(),
        &NoDedup,
    )
    .unwrap();
    g.bench_function("response", |b| {
        b.iter(|| serde_json::to_vec(&answer.outcomes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
