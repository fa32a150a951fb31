//! `[[list]]` at the sizes operators load (docs/benchmarks.md, "Lists"), each next to a
//! baseline in the same run:
//!
//! ```sh
//! MIMALLOC_PURGE_DELAY=0 cargo bench -p pitboss-antifraud --bench lists
//! ```
//!
//! - `load`: a rule set whose lists hold 1,000,000 values (500,000 devices for every tenant,
//!   400,000 addresses and 100,000 networks of both families for one tenant) loaded from its TOML, against the
//!   baseline of parsing the same text into `toml::Value` (what reading the file costs at
//!   least);
//! - `text_lookup` / `ip_lookup`: one filter test of a device / an address against those lists
//!   (half the values tested are on them), against `HashSet<String>::contains` of the same
//!   values in a set of the same devices (for addresses: parsing the address, the least an
//!   address lookup does).
//!
//! Also printed: the resident memory a loaded set holds (a second set's growth beside the first).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitboss_antifraud::RuleSet;
use pitboss_antifraud::lists::NamedList;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 500_000;
const ADDRS: usize = 400_000;
const NETS: usize = 100_000;

fn device(i: usize) -> String {
    format!(
        "dev-{:016x}",
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn addr(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Distinct networks: /28s of 172.16.0.0/12 and 100.64.0.0/10, /48s of 2001:db8::/32.
fn net(i: usize) -> String {
    format!("{}/{}", host(i, 0), if i % 3 == 2 { 48 } else { 28 })
}

/// Address `n` of network `i` (0: the network's own).
fn host(i: usize, n: usize) -> String {
    let (a, b, c) = ((i >> 12) & 63, (i >> 4) & 255, (i & 15) << 4);
    match i % 3 {
        0 => format!("172.{}.{b}.{}", 16 + (a & 15), c + n),
        1 => format!("100.{}.{b}.{}", 64 + a, c + n),
        _ if n == 0 => format!("2001:db8:{:x}::", i & 0xffff),
        _ => format!("2001:db8:{:x}:1::{n:x}", i & 0xffff),
    }
}

fn text() -> String {
    let quoted = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("  \"{s}\","))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "{}\n[[list]]\nname = \"blocked_devices\"\nvalues = [\n{}\n]\n\n\
         [[list]]\nname = \"blocked_ips\"\nkind = \"ip\"\ntenant = \"acme\"\nvalues = [\n{}\n{}\n]\n",
        include_str!("../../../rules/fraud.toml"),
        quoted((0..DEVICES).map(device).collect()),
        quoted((0..ADDRS).map(addr).collect()),
        quoted((0..NETS).map(net).collect()),
    )
}

fn resident() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn bench(c: &mut Criterion) {
    let text = text();
    let files = vec![("lists.toml".to_owned(), text.clone())];
    // The first load's growth is the lists held plus the parse's transient memory; a second
    // set loaded beside it reuses that transient memory, so its growth is what a set holds.
    let before = resident();
    let set = RuleSet::from_sources(&files).unwrap();
    let first = resident();
    let second_set = RuleSet::from_sources(&files).unwrap();
    let second = resident();
    let lists: Vec<Arc<NamedList>> = set.lists().into_iter().cloned().collect();
    let devices = lists.iter().find(|l| l.name == "blocked_devices").unwrap();
    let ips = lists.iter().find(|l| l.name == "blocked_ips").unwrap();
    assert_eq!(devices.len() + ips.len(), DEVICES + ADDRS + NETS);
    let n = (DEVICES + ADDRS + NETS) as f64;
    // Run with MIMALLOC_PURGE_DELAY=0 (freed memory returned at once) for figures of what is
    // held; otherwise the parse's freed memory counts in the first and is reused by the second.
    println!(
        "lists: {n} values, {} bytes of TOML; resident growth: first load {:.0} MB (with the \
         parse), a second set beside it {:.0} MB ({:.0} B a value held)",
        text.len(),
        first.saturating_sub(before) as f64 / 1e6,
        second.saturating_sub(first) as f64 / 1e6,
        second.saturating_sub(first) as f64 / n
    );
    drop(second_set);

    let mut g = c.benchmark_group("lists");
    g.sample_size(10);
    g.bench_function("load_baseline_toml_parse", |b| {
        b.iter(|| black_box(toml::from_str::<toml::Value>(&text).unwrap()))
    });
    g.bench_function("load", |b| {
        b.iter(|| black_box(RuleSet::from_sources(&files).unwrap()))
    });
    g.finish();

    // Half on the lists, half not, in an order no cache predicts.
    let probes: Vec<String> = (0..4096)
        .map(|i| device(if i % 2 == 0 { i * 97 } else { DEVICES + i * 97 }))
        .collect();
    let plain: HashSet<String> = (0..DEVICES).map(device).collect();
    let addrs: Vec<String> = (0..4096)
        .map(|i| match i % 4 {
            0 => addr(i * 83),
            // Inside a listed network of either family.
            1 => host(3 * i, 9),
            2 => host(3 * i + 2, 5),
            _ => format!("192.0.{}.{}", (i >> 8) & 0xff, i & 0xff),
        })
        .collect();
    let hits = addrs.iter().filter(|a| ips.contains("acme", a, 0)).count();
    assert_eq!(hits, 3 * 4096 / 4, "three in four probes are on the list");
    let mut g = c.benchmark_group("lists");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("text_lookup_baseline_hashset", |b| {
        b.iter(|| probes.iter().filter(|p| plain.contains(p.as_str())).count())
    });
    g.bench_function("text_lookup", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|p| devices.contains("acme", p, 0))
                .count()
        })
    });
    g.bench_function("ip_lookup_baseline_parse", |b| {
        b.iter(|| {
            addrs
                .iter()
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                .count()
        })
    });
    g.bench_function("ip_lookup", |b| {
        b.iter(|| addrs.iter().filter(|a| ips.contains("acme", a, 0)).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
