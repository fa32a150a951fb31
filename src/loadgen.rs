//! `pitboss loadgen`: sustained HTTP load against `POST /v1/events`, reporting accepted
//! events/s and request latency percentiles, next to the raw JSON decode rate of the very same
//! bodies measured in the same run (the ceiling a single core could parse).
//!
//! Bodies are generated before the clock starts: realistic mixed events (bets, settlements,
//! deposits, logins; `pitboss_ingest::sample`) without `event_id`, so the server assigns ids
//! and every event is new. With `--client-ids` every event carries its own fresh UUIDv7, written
//! into a copy of the body just before it is sent, as an idempotent client does; the server
//! then checks each id against its dedup window.
//!
//! Only events the server reports accepted count: the `accepted` figure is read from the head
//! of each response (`{"accepted":N,…`, the documented field order).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use pitboss_ingest::sample;

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Base URL of the ingest API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// API key (or use --key-file).
    #[arg(long, env = "PITBOSS_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// File holding the API key (e.g. .pitboss/demo-api-key).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Tenant of the key.
    #[arg(long, default_value = "demo")]
    pub(crate) tenant: String,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Distinct players the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) players: usize,
    /// Send a fresh client-chosen `event_id` (UUIDv7) with every event.
    #[arg(long)]
    client_ids: bool,
    /// Drive the live path instead: the demo simulator's events (normal play with injected
    /// fraud and risky play) at --rate events/s with WebSocket clients connected to
    /// --gateway; reports time to notify and lost or duplicated pushes and alerts.
    #[arg(long)]
    pub(crate) live: bool,
    /// Events per second to send (with --live).
    #[arg(long, default_value_t = 1000.0, requires = "live")]
    pub(crate) rate: f64,
    #[command(flatten)]
    pub(crate) live_args: crate::loadgen_live::LiveArgs,
    /// Broadcast to one room instead: --sockets clients of a Pitboss gateway or a Socket.IO 4
    /// server (at --gateway) join it, pushes go to it at each of --rates messages/s for
    /// --seconds; reports deliveries/s, lost ones and latency (scripts/bench-broadcast.sh).
    #[arg(long, value_enum, conflicts_with = "live")]
    pub(crate) broadcast: Option<crate::loadgen_broadcast::Server>,
    #[command(flatten)]
    pub(crate) broadcast_args: crate::loadgen_broadcast::BroadcastArgs,
}

/// A body whose events' ids are rewritten before each send (`--client-ids`): the template and
/// where each 36-character id sits in it.
struct IdTemplate {
    body: Vec<u8>,
    offsets: Vec<usize>,
}

/// The id every template event carries until it is rewritten.
const PLACEHOLDER_ID: &str = "00000000-0000-7000-8000-000000000000";

impl IdTemplate {
    fn new(mut events: Vec<sample::SampleEvent>) -> Result<Self> {
        for e in &mut events {
            e.event_id = Some(PLACEHOLDER_ID.into());
        }
        let body = serde_json::to_vec(&events)?;
        let needle = format!("\"{PLACEHOLDER_ID}\"");
        let offsets: Vec<usize> = body
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle.as_bytes())
            .map(|(i, _)| i + 1)
            .collect();
        Ok(IdTemplate { body, offsets })
    }

    /// The body with a fresh UUIDv7 in every event.
    fn fresh(&self) -> bytes::Bytes {
        let mut body = self.body.clone();
        for &at in &self.offsets {
            uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut body[at..at + PLACEHOLDER_ID.len()]);
        }
        body.into()
    }
}

/// The `accepted` count at the head of an ingest response, if it has one.
fn accepted_count(response: &[u8]) -> Option<u64> {
    let rest = response.strip_prefix(b"{\"accepted\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Events/s at which one core parses `bodies` into `serde_json::Value`, over about a second.
fn raw_decode_rate(bodies: &[Vec<u8>], batch: usize) -> f64 {
    let start = Instant::now();
    let mut events = 0usize;
    while start.elapsed() < Duration::from_secs(1) {
        for b in bodies {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap_or(serde_json::Value::Null);
            std::hint::black_box(&v);
            events += batch;
        }
    }
    events as f64 / start.elapsed().as_secs_f64()
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Events the server reported accepted, over all 2xx answers.
    accepted: u64,
    throttled: u64,
    unavailable: u64,
    other: u64,
    transport: u64,
}

pub async fn run(args: LoadgenArgs) -> Result<()> {
    if let Some(server) = args.broadcast {
        return crate::loadgen_broadcast::run(&args, server).await;
    }
    let key = match (&args.key, &args.key_file) {
        (Some(k), _) => k.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        (None, None) => bail!("pass --key, --key-file or PITBOSS_API_KEY"),
    };
    if args.live {
        return crate::loadgen_live::run(&args, key).await;
    }
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be positive");
    }
    let now = pitboss_model::Timestamp::now()
        .to_rfc3339()
        .unwrap_or_default();
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|b| sample::body(&args.tenant, b * args.batch, args.batch, args.players, &now))
        .collect();
    let decode = raw_decode_rate(&bodies, args.batch);
    let templates = if args.client_ids {
        Some(Arc::new(
            (0..bodies.len())
                .map(|b| {
                    let first = b * args.batch;
                    IdTemplate::new(sample::events(
                        &args.tenant,
                        first,
                        args.batch,
                        args.players,
                        &now,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        ))
    } else {
        None
    };
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(bodies.into_iter().map(Into::into).collect());
    let next_body = move |i: usize| match &templates {
        Some(t) => t[i % t.len()].fresh(),
        None => bodies[i % bodies.len()].clone(),
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{}/v1/events", args.url.trim_end_matches('/'));
    // One request first: the bodies must be accepted whole, or the figures mean nothing.
    let probe = client
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(next_body(0))
        .send()
        .await?;
    let status = probe.status();
    let answer: serde_json::Value = probe.json().await.unwrap_or_default();
    if !status.is_success() || answer["accepted"] != args.batch {
        bail!("the server did not accept a probe batch ({status}): {answer}");
    }

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let (client, url, key, next_body) =
                (client.clone(), url.clone(), key.clone(), next_body.clone());
            tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut tally = Tally::default();
                let mut i = t;
                while Instant::now() < deadline {
                    let body = next_body(i);
                    i += 1;
                    let sent = Instant::now();
                    let result = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let micros = sent.elapsed().as_micros() as u64;
                    match result {
                        Ok(resp) => {
                            let code = resp.status().as_u16();
                            // Read the answer fully, as a client must.
                            let answer = resp.bytes().await.unwrap_or_default();
                            match code {
                                200..=299 => {
                                    tally.ok += 1;
                                    tally.accepted += accepted_count(&answer).unwrap_or(0);
                                    hist.saturating_record(micros);
                                }
                                429 => tally.throttled += 1,
                                503 => tally.unavailable += 1,
                                _ => tally.other += 1,
                            }
                        }
                        Err(_) => tally.transport += 1,
                    }
                }
                (hist, tally)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await?;
        hist.add(&h).ok();
        tally.ok += t.ok;
        tally.accepted += t.accepted;
        tally.throttled += t.throttled;
        tally.unavailable += t.unavailable;
        tally.other += t.other;
        tally.transport += t.transport;
    }
    let secs = started.elapsed().as_secs_f64();
    let events_per_sec = tally.accepted as f64 / secs;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "batch {} x concurrency {} for {:.1} s against {}",
        args.batch, args.concurrency, secs, args.url
    );
    println!(
        "requests: {} ok, {} throttled (429), {} unavailable (503), {} other, {} transport errors",
        tally.ok, tally.throttled, tally.unavailable, tally.other, tally.transport
    );
    println!("accepted events/s: {events_per_sec:.0}");
    println!(
        "latency ms (2xx): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    println!(
        "baseline: raw JSON decode of the same bodies, 1 core: {decode:.0} events/s; ratio {:.3}",
        events_per_sec / decode
    );
    println!(
        "{}",
        serde_json::json!({
            "batch": args.batch, "concurrency": args.concurrency, "seconds": secs,
            "client_ids": args.client_ids, "accepted": tally.accepted,
            "ok": tally.ok, "throttled": tally.throttled, "unavailable": tally.unavailable,
            "other": tally.other, "transport_errors": tally.transport,
            "events_per_sec": events_per_sec.round(), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
            "raw_decode_events_per_sec": decode.round(), "ratio": events_per_sec / decode
        })
    );
    let refused = (tally.ok * args.batch as u64).saturating_sub(tally.accepted);
    if refused > 0 {
        bail!("{refused} events in 2xx answers were not accepted (duplicates or rejected)");
    }
    if tally.other + tally.transport > 0 {
        bail!(
            "{} requests failed unexpectedly",
            tally.other + tally.transport
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_send_carries_fresh_valid_ids() {
        let t = IdTemplate::new(sample::events(
            "demo",
            0,
            50,
            10,
            "2026-12-01T10:00:00.000Z",
        ))
        .expect("template");
        assert_eq!(t.offsets.len(), 50);
        let ids = |body: &[u8]| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_slice(body).expect("still JSON");
            v.as_array()
                .expect("array")
                .iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned())
                .collect()
        };
        let (a, b) = (ids(&t.fresh()), ids(&t.fresh()));
        let distinct: std::collections::HashSet<&String> = a.iter().chain(&b).collect();
        assert_eq!(distinct.len(), 100, "no id repeats within or across sends");
        for id in &a {
            let u = uuid::Uuid::parse_str(id).expect("uuid");
            assert_eq!(u.get_version_num(), 7);
        }
    }

    #[test]
    fn accepted_is_read_from_the_head_of_the_answer() {
        assert_eq!(
            accepted_count(br#"{"accepted":100,"duplicates":0,"rejected":0,"results":[]}"#),
            Some(100)
        );
        assert_eq!(accepted_count(br#"{"error":{"code":"x"}}"#), None);
    }
}
