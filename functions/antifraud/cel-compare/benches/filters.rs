//! Per event, every `where` filter of the shipped packs: the engine's predicates against CEL
//! (the context built from the event, then each program run). Events: the scripted day of
//! `pitboss_antifraud::scenario` (normal play and every pattern the packs detect), decoded once.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitboss_antifraud::field::Extra;
use pitboss_antifraud::scenario;
use pitboss_cel_compare::Filters;
use pitboss_model::Event;

fn events() -> Vec<Event> {
    let end = 1_767_787_200_000; // 2026-01-07T12:00:00Z
    scenario::script("acme", end, 200, 2)
        .into_iter()
        .flat_map(|p| p.events)
        .map(|v| pitboss_model::decode_event_str(&v.to_string()).expect("a scripted event"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let f = Filters::new();
    let extra = Extra::default();
    let mut ctx = cel::Context::default();
    let mut passed = 0;
    for e in &events {
        f.agree(&mut ctx, e, &extra).expect("both forms agree");
        passed += f.native(e, &extra);
    }
    println!(
        "{} events, {} filters: every answer equal in both forms ({passed} passes)",
        events.len(),
        f.native.len()
    );
    let mut g = c.benchmark_group("filters_per_event");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    let mut i = 0;
    g.bench_function("native", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            f.native(&events[i], &extra)
        })
    });
    let mut j = 0;
    g.bench_function("cel_context_only", |b| {
        b.iter(|| {
            j = (j + 1) % events.len();
            f.context(&events[j], &extra)
        })
    });
    let mut k = 0;
    g.bench_function("cel", |b| {
        b.iter(|| {
            k = (k + 1) % events.len();
            f.cel(&mut ctx, &events[k], &extra)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
