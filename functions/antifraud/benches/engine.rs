//! The engine with both shipped packs on one core, next to the baseline of merely decoding the
//! same bus records (protobuf) in the same run:
//!
//! ```sh
//! cargo bench -p pitboss-antifraud --bench engine
//! ```
//!
//! - `decode`: protobuf bytes → `Event` (what the consumer adapter does anyway);
//! - `decode_and_evaluate`: the same, then `Engine::process` with every shipped rule, over
//!   windows warmed by a first pass over the stream;
//! - after the run: memory per tracked player (`Engine::stats`), printed.
//! - the ratio again with decode and decode-and-evaluate timed in turns (printed; alone with
//!   `PITBOSS_BENCH_INTERLEAVED=1`): steadier than criterion's one-after-the-other on a
//!   shared machine.
//!
//! `engine_bound` runs the same stream (`common`) through the packs written by hand: the bound
//! the engine is measured against (docs/benchmarks.md, "The bound").
//!
//! The stream: 2,000 players, each a login, a deposit, then bets and their settlements (no
//! stake on the settlement: the join supplies it), sessions, the odd withdrawal and bonus;
//! 100,000 events, in time order, 0.5 s apart per player on average.
//!
//! `PITBOSS_BENCH_RULES=DIR` runs another rule directory (the packs without one rule, to weigh
//! it); `PITBOSS_BENCH_QUICK=1` skips the printed figures but the first pass and the sweep;
//! `PITBOSS_BENCH_PLAYERS=N` plays the same number of events with N players instead of 2,000.
//! `PITBOSS_BENCH_CRAFTED=N` times logins from N device ids searched to collide, alone
//! ([`crafted`]).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitboss_antifraud::{Engine, Output, RuleSet};
use pitboss_model::{Event, Timestamp, decode_proto};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::{EVENTS, T0, players, stream};

/// The shipped packs, or the rule directory in `PITBOSS_BENCH_RULES` (to weigh a rule: the
/// packs without it).
fn rules() -> RuleSet {
    let dir = match std::env::var_os("PITBOSS_BENCH_RULES") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules"),
    };
    RuleSet::load_dir(&dir).unwrap()
}

fn bench(c: &mut Criterion) {
    let records = stream();
    let mut engine = Engine::new(rules());
    let mut out = Output::default();
    // Warm the windows with one pass (and count what the stream raises).
    for r in &records {
        let e = decode_proto(r).unwrap();
        engine.process(&e, e.occurred_at, &mut out).unwrap();
    }
    let stats = engine.stats();
    println!(
        "after one pass: {} alerts, {} pushes; {} keys, {} entries, {} joined bets, {} bytes = {} bytes per tracked player",
        out.alerts.len(),
        out.pushes.len(),
        stats.keys,
        stats.entries,
        stats.joined_bets,
        stats.bytes,
        stats.bytes / players() as usize
    );

    if let Some(n) = std::env::var("PITBOSS_BENCH_CRAFTED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        crafted(n);
        return;
    }
    // `PITBOSS_BENCH_INTERLEAVED=1`: that figure alone.
    if std::env::var_os("PITBOSS_BENCH_INTERLEAVED").is_some() {
        interleaved(&records);
        return;
    }
    // `PITBOSS_BENCH_QUICK=1`: the criterion figures alone.
    let quick = std::env::var_os("PITBOSS_BENCH_QUICK").is_some();
    if !quick {
        lambda_store_calls(&records, 100, 1);
        lambda_store_calls(&records, 100, 4);
        memory_after_laps(&records, 9);
        evaluation_percentiles(&mut engine, &records);
        interleaved(&records);
        shard_scaling(&records);
    }
    // One sweep of idle keys over the warm windows (it runs every `sweep_every` of engine
    // time, on the event that finds it due): what it costs that event.
    let mut sweeps: Vec<u64> = (0..5)
        .map(|k| {
            let now = Timestamp::from_millis(T0 + 3 * EVENTS as i64 * 10 + k * 60_000);
            let started = std::time::Instant::now();
            engine.sweep(now);
            started.elapsed().as_nanos() as u64
        })
        .collect();
    sweeps.sort_unstable();
    println!(
        "a sweep of idle keys over {} keys: median {:.1} µs, max {:.1} µs (5 sweeps)",
        engine.stats().keys,
        sweeps[2] as f64 / 1000.0,
        sweeps[4] as f64 / 1000.0
    );

    let mut g = c.benchmark_group("antifraud_engine");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    common::decode_baseline(&mut g, &records);
    // Replays of the stream, shifted by its length each lap so the windows move forward and
    // ids stay new (a replay of the same ids would be dropped as duplicates: too cheap).
    common::decode_and_evaluate(&mut g, &records, |e| {
        out.clear();
        engine.process(e, e.occurred_at, &mut out).unwrap();
        out.alerts.len()
    });
    g.finish();
    let stats = engine.stats();
    println!(
        "after the run: {} keys, {} entries, {} bytes = {} bytes per tracked player",
        stats.keys,
        stats.entries,
        stats.bytes,
        stats.bytes / players() as usize
    );
}

/// The stream `laps` times over (each lap shifted forward in time with new ids, as the timed
/// benchmark does, so ~1,000 s of stream time a lap): memory per tracked player after a fixed
/// span of play, which the timed run's (as many laps as criterion runs) is not.
fn memory_after_laps(records: &[Vec<u8>], laps: i64) {
    let span = EVENTS as i64 * 10;
    let mut engine = Engine::new(rules());
    let mut out = Output::default();
    for lap in 0..laps {
        for r in records {
            let mut e = decode_proto(r).unwrap();
            e.occurred_at = Timestamp::from_millis(e.occurred_at.as_millis() + lap * span);
            let id = e.event_id.as_mut().unwrap();
            id.replace_range(19..23, &format!("{:04x}", 0x8000 + lap as u16));
            out.clear();
            engine.process(&e, e.occurred_at, &mut out).unwrap();
        }
    }
    let stats = engine.stats();
    println!(
        "after {laps} laps ({:.1} h of stream time): {} keys, {} entries ({} allocated), {} bytes = {} bytes per tracked player (join {}, scores {})",
        (laps * span) as f64 / 3_600_000.0,
        stats.keys,
        stats.entries,
        stats.entry_slots,
        stats.bytes,
        stats.bytes / players() as usize,
        stats.join_bytes / players() as usize,
        stats.score_bytes / players() as usize,
    );
}

/// Time of each `Engine::process` call over one more lap of the stream (shifted forward in
/// time with new ids, as the timed benchmark does), on warm windows: percentiles, which
/// criterion's means do not give.
fn evaluation_percentiles(engine: &mut Engine, records: &[Vec<u8>]) {
    let span = EVENTS as i64 * 10;
    let mut out = Output::default();
    let mut times: Vec<u64> = Vec::with_capacity(records.len());
    for r in records {
        let mut e = decode_proto(r).unwrap();
        e.occurred_at = Timestamp::from_millis(e.occurred_at.as_millis() + span);
        let id = e.event_id.as_mut().unwrap();
        id.replace_range(19..23, "9999");
        out.clear();
        let started = std::time::Instant::now();
        engine.process(&e, e.occurred_at, &mut out).unwrap();
        times.push(started.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "evaluation per event (one lap, {} events): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs",
        times.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

/// The ratio again, timed in turns: criterion times `decode` for its whole measurement, then
/// `decode_and_evaluate`, and a neighbour's load on this shared machine that comes or goes in
/// between moves the ratio by a third. Here both run in turns of 20,000 events (30 rounds, the
/// order alternating), on an engine of their own warmed by one pass and playing the stream lap
/// after lap as the timed loop does; each round's ratio is taken within the round.
fn interleaved(records: &[Vec<u8>]) {
    const TURN: usize = 20_000;
    const ROUNDS: usize = 30;
    let mut engine = Engine::new(rules());
    let mut out = Output::default();
    for r in records {
        let e = decode_proto(r).unwrap();
        engine.process(&e, e.occurred_at, &mut out).unwrap();
    }
    let (mut lap, mut j, mut k) = (1i64, 0usize, 0usize);
    let mut digits = common::lap_digits(lap);
    let (mut decode, mut both, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut ns = [0.0f64; 2];
        for which in [round % 2, 1 - round % 2] {
            let started = std::time::Instant::now();
            for _ in 0..TURN {
                if which == 0 {
                    k = (k + 1) % records.len();
                    std::hint::black_box(decode_proto(&records[k]).unwrap());
                } else {
                    j += 1;
                    if j == records.len() {
                        j = 0;
                        lap += 1;
                        digits = common::lap_digits(lap);
                    }
                    let e = common::lapped(&records[j], lap, &digits);
                    out.clear();
                    engine.process(&e, e.occurred_at, &mut out).unwrap();
                    std::hint::black_box(out.alerts.len());
                }
            }
            ns[which] = started.elapsed().as_nanos() as f64 / TURN as f64;
        }
        decode.push(ns[0]);
        both.push(ns[1]);
        ratios.push(ns[0] / ns[1]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, b, r) = (median(&mut decode), median(&mut both), median(&mut ratios));
    println!(
        "in turns ({ROUNDS} rounds of {TURN} events each): decode {d:.0} ns, decode and evaluate {b:.0} ns (medians); ratio median {r:.3}, rounds {:.3}–{:.3}",
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

/// `PITBOSS_BENCH_CRAFTED=N`: what device ids chosen to collide cost the engine. Device ids
/// come from clients, and a window's key is a hash with fixed seeds ([`window_key`]: it names
/// saved state), so anyone can search for ids whose keys share bits. Searched here (on two
/// threads): N ids whose keys fall into one of the 256 parts of a map of windows and share the
/// low 12 bits of `low half ^ high half`, which the tables took as their hash before they were
/// seeded at random — about 2²⁰ tries an id. N players then log in twice (a minute apart, new
/// event ids), on a fresh engine each with plain ids (`dev-N`) and with the searched ones; the
/// time per login of each pass is printed (the first puts each device's windows in, the second
/// finds them), the median of 5 runs.
///
/// What more such ids cost grows with their number, which a search here cannot reach in a
/// bench's time. So the table alone follows: a `HashMap` as the engine's (128-bit keys) filled
/// with 1,000, 10,000 and 100,000 keys whose folded halves share their low 20 bits — what a
/// longer search gives — hashed as the tables did (the halves folded) and as they do now
/// (foldhash, seeded at random), in the same run.
fn crafted(n: usize) {
    use pitboss_antifraud::engine::window_key;
    let started = std::time::Instant::now();
    let wanted = |k: u128| k >> 120 == 0x5a && ((k as u64) ^ ((k >> 64) as u64)) & 0xfff == 0;
    let searched: Vec<String> = std::thread::scope(|s| {
        let halves: Vec<_> = (0..2u64)
            .map(|h| {
                s.spawn(move || {
                    let mut found = Vec::new();
                    let mut id = String::new();
                    for i in (h..).step_by(2) {
                        use std::fmt::Write as _;
                        id.clear();
                        write!(id, "d{i:x}").unwrap();
                        if wanted(window_key("acme", &id)) {
                            found.push(id.clone());
                            if found.len() == n.div_ceil(2) {
                                return found;
                            }
                        }
                    }
                    found
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .take(n)
            .collect()
    });
    println!(
        "searched {n} colliding device ids in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let logins = |devices: &[String], pass: i64| -> Vec<Event> {
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let t = T0 + pass * 60_000 + i as i64;
                let json = format!(
                    r#"{{"event_id":"0193735a-0000-7000-{pass:04x}-{i:012x}","tenant_id":"acme","player_id":"p-{i}","type":"login","occurred_at":"{}","payload":{{"ip":"10.{}.{}.9","device_id":"{d}"}}}}"#,
                    Timestamp::from_millis(t).to_rfc3339().unwrap(),
                    i / 250,
                    i % 250
                );
                pitboss_model::decode_event(json.as_bytes()).unwrap()
            })
            .collect()
    };
    let plain: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
    for (name, devices) in [("plain", &plain), ("searched", &searched)] {
        let passes = [logins(devices, 0), logins(devices, 1)];
        let mut ns = [Vec::new(), Vec::new()];
        for _ in 0..5 {
            let mut engine = Engine::new(rules());
            let mut out = Output::default();
            for (p, events) in passes.iter().enumerate() {
                let started = std::time::Instant::now();
                for e in events {
                    out.clear();
                    engine.process(e, e.occurred_at, &mut out).unwrap();
                }
                ns[p].push(started.elapsed().as_nanos() as f64 / n as f64);
            }
        }
        for v in &mut ns {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{n} logins, {name} device ids: {:.0} ns a login putting the devices in, {:.0} ns finding them (medians of 5)",
            ns[0][2], ns[1][2]
        );
    }
    colliding_keys_in_one_table();
}

/// The hash the engine's tables took of a key until they were seeded at random: its halves
/// folded, kept here to compare against.
#[derive(Default)]
struct FoldedHalves(u64);

impl std::hash::Hasher for FoldedHalves {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only 128-bit keys")
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

fn colliding_keys_in_one_table() {
    fn time<S: std::hash::BuildHasher + Default>(keys: &[u128]) -> (f64, f64) {
        let mut m: std::collections::HashMap<u128, u64, S> = Default::default();
        let started = std::time::Instant::now();
        for (i, k) in keys.iter().enumerate() {
            m.insert(*k, i as u64);
        }
        let put = started.elapsed().as_nanos() as f64 / keys.len() as f64;
        let started = std::time::Instant::now();
        let found: u64 = keys.iter().map(|k| m[k]).sum();
        std::hint::black_box(found);
        (put, started.elapsed().as_nanos() as f64 / keys.len() as f64)
    }
    for n in [1_000u64, 10_000, 100_000] {
        // Folded, the halves of every key share their low 20 bits (0), the bits a table of up
        // to 2²⁰ slots starts its probe from; the rest differ.
        let keys: Vec<u128> = (1..=n)
            .map(|i| {
                let hi = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let lo = hi ^ (i.wrapping_mul(0xbf58_476d_1ce4_e5b9) << 20);
                (u128::from(hi) << 64) | u128::from(lo)
            })
            .collect();
        let (fp, ff) = time::<std::hash::BuildHasherDefault<FoldedHalves>>(&keys);
        let (rp, rf) = time::<foldhash::fast::RandomState>(&keys);
        println!(
            "{n} keys chosen to collide in one table: halves folded {fp:.0} ns an insert, {ff:.0} ns a lookup; seeded at random {rp:.0} / {rf:.0} ns"
        );
    }
}

/// The rules split over N engines (`--shard i/N`): each shard reads every event, skips
/// undecoded those of players it does not own that no rule keyed otherwise reads (told from the
/// record's type and tenant headers and its `tenant:player` key, as the bus adapter does), and
/// evaluates the keys it owns. For each N, every shard warmed by one pass, then timed over three
/// more laps (decode and evaluate, shifted forward in time with new ids, as the timed benchmark
/// does): its time per event of the stream, the slowest shard's (which bounds the group) and
/// the speed-up of the group against one engine measured the same way in the same run; with the
/// hits forwarded between shards and each shard's memory.
fn shard_scaling(records: &[Vec<u8>]) {
    use pitboss_antifraud::Shard;
    let span = EVENTS as i64 * 10;
    // What the record's headers and key say (the adapter reads them; no decoding).
    let meta: Vec<(pitboss_model::EventType, String, String)> = records
        .iter()
        .map(|r| {
            let e = decode_proto(r).unwrap();
            (e.event_type(), e.tenant_id.clone(), e.bus_key())
        })
        .collect();
    let mut one = None;
    for n in [1u32, 2, 4, 8] {
        let mut per = Vec::new();
        let (mut forwards, mut bytes, mut raised) = (0usize, 0usize, 0usize);
        for i in 0..n {
            let mut engine = Engine::with_shard(rules(), Shard::new(i, n).unwrap());
            let mut out = Output::default();
            for r in records {
                let e = decode_proto(r).unwrap();
                engine.process(&e, e.occurred_at, &mut out).unwrap();
            }
            let mut best = f64::MAX;
            for lap in 1..=3i64 {
                out.clear();
                let started = std::time::Instant::now();
                for (r, (t, tenant, key)) in records.iter().zip(&meta) {
                    let player = key
                        .strip_prefix(tenant.as_str())
                        .unwrap()
                        .strip_prefix(':')
                        .unwrap();
                    if !engine.reads_unowned(*t) && !engine.shard().owns(tenant, player) {
                        continue;
                    }
                    let mut e = decode_proto(r).unwrap();
                    e.occurred_at = Timestamp::from_millis(e.occurred_at.as_millis() + lap * span);
                    let id = e.event_id.as_mut().unwrap();
                    id.replace_range(19..23, &format!("{:04x}", 0x7000 + lap as u16));
                    engine.process(&e, e.occurred_at, &mut out).unwrap();
                }
                let ns = started.elapsed().as_nanos() as f64 / records.len() as f64;
                best = best.min(ns);
                if lap == 3 {
                    forwards += out.forwards.len();
                    raised += out.alerts.len() + out.pushes.len() + out.forwards.len();
                }
            }
            per.push(best);
            bytes += engine.stats().bytes;
        }
        let slowest = per.iter().copied().fold(0.0, f64::max);
        let base = *one.get_or_insert(slowest);
        println!(
            "{n} shard(s): per event of the stream, slowest shard {:.0} ns (shards {}); group {:.2}x one engine (ideal {n}x); {raised} messages a lap, {forwards} forwarded; memory {:.1} MB in all",
            slowest,
            per.iter()
                .map(|ns| format!("{ns:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            base / slowest,
            bytes as f64 / 1e6
        );
    }
}

/// The Lambda adapter's cost in store calls: the stream in batches of `batch` (the Kinesis
/// event source mapping's default), each evaluated by a fresh engine loaded with the units its
/// events read from a store (a map here; DynamoDB in the function), then written back in
/// transactions of up to 100 units. With `laps` > 1 the stream runs that many times (shifted
/// forward in time with new ids) and the figures are those of the last lap: windows that have
/// seen ~1,000 s of play a lap before it.
fn lambda_store_calls(records: &[Vec<u8>], batch: usize, laps: i64) {
    let mut store: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let (mut asked, mut found, mut written, mut bytes, mut gets, mut txs) =
        (0usize, 0usize, 0usize, 0, 0, 0);
    let mut out = Output::default();
    let span = EVENTS as i64 * 10;
    let last_lap = laps - 1;
    for (lap, chunk) in (0..laps).flat_map(|lap| records.chunks(batch).map(move |c| (lap, c))) {
        if lap != last_lap {
            // Only the last lap is counted.
            (asked, found, written, bytes, gets, txs) = (0, 0, 0, 0, 0, 0);
        }
        let events: Vec<Event> = chunk
            .iter()
            .map(|r| {
                let mut e = decode_proto(r).unwrap();
                e.occurred_at = Timestamp::from_millis(e.occurred_at.as_millis() + lap * span);
                let id = e.event_id.as_mut().unwrap();
                id.replace_range(19..23, &format!("{:04x}", 0xa000 + lap as u16));
                e
            })
            .collect();
        let mut engine = Engine::new(rules());
        let mut units = Vec::new();
        for e in &events {
            engine.units_for(e, &mut units);
        }
        units.sort();
        units.dedup();
        asked += units.len();
        gets += units.len().div_ceil(100);
        for u in &units {
            if let Some(b) = store.get(&u.name()) {
                found += 1;
                engine.load_unit(u, b).unwrap();
            }
        }
        engine.track_changes_from_here();
        for e in &events {
            engine.process(e, e.occurred_at, &mut out).unwrap();
        }
        let changes = engine.take_changes().unwrap().units;
        txs += changes.len().div_ceil(100);
        for c in changes {
            written += 1;
            match c.value {
                Some(v) => {
                    bytes += v.len();
                    store.insert(c.unit.name(), v);
                }
                None => {
                    store.remove(&c.unit.name());
                }
            }
        }
    }
    let n = records.len() as f64;
    println!(
        "lambda, batches of {batch}, lap {laps} of {laps}: per event {:.2} units asked ({:.2} found), {:.2} written ({:.0} bytes); store calls per event: {:.3} BatchGetItem + {:.3} TransactWriteItems (of up to 100 writes) = {:.3}",
        asked as f64 / n,
        found as f64 / n,
        written as f64 / n,
        bytes as f64 / n,
        gets as f64 / n,
        txs as f64 / n,
        (gets + txs) as f64 / n
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
