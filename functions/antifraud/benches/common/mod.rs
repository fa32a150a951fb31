//! The bench's stream, shared by `engine` (the engine) and `engine_bound` (the hand-written
//! bound of what the packs' work can cost): the same records in both.

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use pitboss_model::{Event, Timestamp, decode_event, decode_proto, encode_proto};

/// Players in the stream: 2,000, or `PITBOSS_BENCH_PLAYERS` (fewer players, less state: how
/// much of the cost is the memory the state spans).
pub fn players() -> u64 {
    std::env::var("PITBOSS_BENCH_PLAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2_000)
}
pub const EVENTS: u64 = 100_000;
pub const T0: i64 = 1_795_867_200_000;

fn event(n: u64, player: u64, t: i64, kind: &str, payload: String) -> Event {
    let json = format!(
        r#"{{"event_id":"0193735a-0000-7000-8000-{n:012x}","tenant_id":"acme","player_id":"p-{player}","session_id":"s-{player}","type":"{kind}","occurred_at":"{}","received_at":"{}","payload":{payload}}}"#,
        Timestamp::from_millis(t).to_rfc3339().unwrap(),
        Timestamp::from_millis(t + 40).to_rfc3339().unwrap(),
    );
    decode_event(json.as_bytes()).unwrap()
}

/// A realistic mix, deterministic.
pub fn stream() -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(EVENTS as usize);
    let players = players();
    let mut seq = vec![0u64; players as usize];
    let mut x: u64 = 42;
    for n in 0..EVENTS {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let p = (x >> 33) % players;
        let k = seq[p as usize];
        seq[p as usize] += 1;
        let t = T0 + (n as i64) * 10;
        let stake = 100 + ((x >> 20) % 5000) as i64;
        let (kind, payload) = match k {
            0 => (
                "login",
                format!(
                    r#"{{"ip":"10.{}.{}.1","device_id":"dev-{p}"}}"#,
                    p / 250,
                    p % 250
                ),
            ),
            1 => ("session_started", r#"{"channel":"web"}"#.to_string()),
            2 => (
                "deposit",
                format!(
                    r#"{{"transaction_id":"d-{p}-{k}","amount":{{"amount_minor":20000,"currency":"EUR"}},"device_id":"dev-{p}","ip":"10.0.0.1","payment_instrument":"card-{p}"}}"#
                ),
            ),
            k if k % 97 == 0 => (
                "withdrawal",
                format!(
                    r#"{{"transaction_id":"w-{p}-{k}","amount":{{"amount_minor":5000,"currency":"EUR"}},"status":"requested"}}"#
                ),
            ),
            k if k % 89 == 0 => (
                "bonus",
                format!(
                    r#"{{"bonus_id":"b-{p}","action":"granted","amount":{{"amount_minor":1000,"currency":"EUR"}},"wagering_requirement":{{"amount_minor":35000,"currency":"EUR"}}}}"#
                ),
            ),
            k if k % 2 == 1 => (
                "bet_placed",
                format!(
                    r#"{{"bet_id":"bet-{p}-{k}","game_id":"roulette-{}","stake":{{"amount_minor":{stake},"currency":"EUR"}}}}"#,
                    p % 7
                ),
            ),
            k => {
                let (result, payout) = if x.is_multiple_of(3) {
                    ("win", 2 * stake)
                } else {
                    ("loss", 0)
                };
                (
                    "bet_settled",
                    format!(
                        r#"{{"bet_id":"bet-{p}-{}","game_id":"roulette-{}","result":"{result}","payout":{{"amount_minor":{payout},"currency":"EUR"}}}}"#,
                        k - 1,
                        p % 7
                    ),
                )
            }
        };
        out.push(encode_proto(&event(n, p, t, kind, payload)));
    }
    out
}

/// The baseline both benches measure against: `decode`, the stream's records decoded one
/// after another (protobuf bytes → `Event`, what the consumer does anyway).
pub fn decode_baseline(g: &mut BenchmarkGroup<'_, WallTime>, records: &[Vec<u8>]) {
    let mut i = 0usize;
    g.bench_function("decode", |b| {
        b.iter(|| {
            i = (i + 1) % records.len();
            decode_proto(&records[i]).unwrap()
        })
    });
}

/// The stream `lap` times on, as the timed loops play it: shifted by the stream's length and
/// given new ids (`digits`, [`lap_digits`]), so windows keep moving and nothing is a duplicate.
pub fn lapped(record: &[u8], lap: i64, digits: &str) -> Event {
    let mut e = decode_proto(record).unwrap();
    e.occurred_at = Timestamp::from_millis(e.occurred_at.as_millis() + lap * EVENTS as i64 * 10);
    e.event_id.as_mut().unwrap().replace_range(19..23, digits);
    e
}

/// The id digits of lap `lap`, formatted once a lap (not on every event: that is the bench's
/// work, not the engine's).
pub fn lap_digits(lap: i64) -> String {
    format!("{:04x}", 0x8000 + lap as u16 % 0x7fff)
}

/// The timed loop both benches run: the stream lap after lap ([`lapped`]), each event handed
/// to `f` after its decode.
pub fn decode_and_evaluate<R>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    records: &[Vec<u8>],
    mut f: impl FnMut(&Event) -> R,
) {
    let mut lap = 1i64;
    let mut j = 0usize;
    let mut digits = lap_digits(lap);
    g.bench_function("decode_and_evaluate", |b| {
        b.iter(|| {
            j += 1;
            if j == records.len() {
                j = 0;
                lap += 1;
                digits = lap_digits(lap);
            }
            f(&lapped(&records[j], lap, &digits))
        })
    });
}
