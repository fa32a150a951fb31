//! A bound, not the engine: the work the shipped packs ask of the bench's stream, written by
//! hand for these rules alone (no rule files, no filters or measures read from data), next to
//! the same decode baseline in the same run. It says how fast any engine running these rules
//! could go on this machine, and so how much of the engine's time is its store and how much its
//! generic path (docs/benchmarks.md, "The bound"):
//!
//! ```sh
//! cargo bench -p pitboss-antifraud --bench engine_bound
//! PITBOSS_BENCH_PER_RULE=1 cargo bench -p pitboss-antifraud --bench engine_bound
//! ```
//!
//! By default a player's events go once into one log, each rule keeping a cursor and its
//! totals beside the others'; `PITBOSS_BENCH_PER_RULE=1` gives each rule its own window of
//! 64-byte entries instead (the engine's layout), the rest unchanged.
//!
//! What it does per event, as the packs do: the event id parsed, the player's state found
//! with one probe, the stake join (a bet's stake kept by `bet_id` until its settlement),
//! duplicates recognised (an event not newer than the player's newest is looked for among
//! those of its time), and each rule's window moved and judged: bets in the last minute
//! (`fraud.bet_velocity`), the last 51 bets and their median when the stake is high
//! (`fraud.stake_spike`), the gaps of the last 31 hand-placed bets (`fraud.bot_regular_betting`),
//! the hour's bets, stakes and losses (`rg.loss_chasing`), stakes in 5 min buckets over 72 h and
//! deposits one by one (`fraud.deposit_withdrawal_no_play`), stakes after a cancelled withdrawal
//! (`rg.cancelled_withdrawal_gambled`), late-night bets (`rg.late_night`), a session's length
//! (`rg.long_session`), distinct players per device and address over 24 h
//! (`fraud.multi_accounting.*`), deposits over 7 days (`rg.deposit_frequency_rising`), failed
//! logins over an hour (`fraud.account_takeover`); each with its threshold and cooldown. Not
//! done: alerts and pushes (a count of hits instead), the score, evidence, persistence. Before
//! timing, its hits over 48 laps of the stream (one with `PITBOSS_BENCH_QUICK=1`) are checked to
//! be the engine's, rule by rule.
//! The stream has no withdrawals and no bonuses (a player's 50 events a lap never reach them),
//! so the rules they trigger keep their windows here but are never judged; neither are they in
//! the engine's bench.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use common::{lap_digits, lapped, stream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitboss_antifraud::{Engine, Output, RuleSet};
use pitboss_model::live::PushSource;
use pitboss_model::{Event, Payload, decode_proto};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Seeded = foldhash::fast::FixedState;

type Map<V> = HashMap<u128, V, Seeded>;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

const BET: u8 = 1;
const AUTOPLAY: u8 = 2;

/// One event in a player's log: what the rules read of it.
#[derive(Clone, Copy)]
struct Logged {
    id: u128,
    t: i64,
    /// A bet's stake, a settlement's loss (stake less payout).
    v: f64,
    kind: u8,
}

/// An entry as the engine's windows hold one (64 bytes), for the per-rule layout.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Wide {
    id: u128,
    t: i64,
    kind: u32,
    cur: u32,
    vals: [f64; 2],
    tag: u64,
    more: usize,
}

impl Wide {
    fn new(id: u128, t: i64, v: f64, kind: u8) -> Wide {
        Wide {
            id,
            t,
            kind: u32::from(kind),
            cur: 1,
            vals: [v, f64::NAN],
            tag: 0,
            more: 0,
        }
    }
}

/// A rule's hits, by rule.
#[derive(Default, Debug)]
struct Hits {
    velocity: u64,
    spike: u64,
    bot: u64,
    loss_chasing: u64,
    long_session: u64,
    late_night: u64,
    device: u64,
    ip: u64,
    deposits: u64,
}

impl Hits {
    /// By rule id, the rules that hit.
    fn by_rule(&self) -> BTreeMap<String, u64> {
        [
            ("fraud.bet_velocity", self.velocity),
            ("fraud.stake_spike", self.spike),
            ("fraud.bot_regular_betting", self.bot),
            ("rg.loss_chasing", self.loss_chasing),
            ("rg.long_session", self.long_session),
            ("rg.late_night", self.late_night),
            ("fraud.multi_accounting.device", self.device),
            ("fraud.multi_accounting.ip", self.ip),
            ("rg.deposit_frequency_rising", self.deposits),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.to_string(), n))
        .collect()
    }
}

#[derive(Default)]
struct Player {
    /// The shared log: `base` is the number of events dropped from its front.
    log: VecDeque<Logged>,
    base: u64,
    newest: i64,
    // fraud.bet_velocity: bets in the last minute.
    vel_from: u64,
    vel_n: u32,
    vel_hit: i64,
    // fraud.stake_spike: the last 51 bets.
    spike_from: u64,
    spike_n: u32,
    spike_hit: i64,
    // fraud.bot_regular_betting: the last 31 hand-placed bets, their gaps' sum and squares.
    bot_from: u64,
    bot_n: u32,
    bot_last: i64,
    bot_gaps: f64,
    bot_squares: f64,
    bot_hit: i64,
    // rg.loss_chasing: the hour's bets, stakes and losses.
    lc_from: u64,
    lc_bets: u32,
    lc_stakes: f64,
    lc_lost: f64,
    lc_hit: i64,
    // fraud.deposit_withdrawal_no_play: stakes in 5 min buckets, deposits one by one, 72 h.
    wagered: VecDeque<(i64, f64)>,
    deposits: VecDeque<(i64, f64)>,
    // rg.cancelled_withdrawal_gambled: stakes since the last cancelled withdrawal (24 h).
    cancelled_at: i64,
    since_cancelled: f64,
    // rg.late_night: late bets in the last hour.
    late: VecDeque<i64>,
    late_hit: i64,
    // rg.deposit_frequency_rising: deposits over 7 days.
    week: VecDeque<i64>,
    week_hit: i64,
    // fraud.account_takeover: failed logins over the hour.
    failed: VecDeque<i64>,
    // The per-rule layout (`PITBOSS_BENCH_PER_RULE`): a window each.
    w_vel: VecDeque<Wide>,
    w_spike: VecDeque<Wide>,
    w_bot: VecDeque<Wide>,
    w_lc: VecDeque<Wide>,
}

/// A device's or an address's players over 24 h.
#[derive(Default)]
struct Shared {
    /// Time, player hash, player id (an alert names the related players).
    seen: VecDeque<(i64, u64, Box<str>)>,
    hit: i64,
}

#[derive(Default)]
struct Session {
    start: i64,
    hit: i64,
}

struct Bound {
    keys: (Seeded, Seeded),
    players: Map<Player>,
    sessions: Map<Session>,
    devices: Map<Shared>,
    ips: Map<Shared>,
    stakes: Map<(i64, i64)>,
    /// The join's order (time, key): it keeps bets 7 days or 2,000,000 bets, as the engine's.
    placed: VecDeque<(i64, u128)>,
    newest_bet: i64,
    hits: Hits,
    per_rule: bool,
}

fn cooled(last: &mut i64, t: i64, cooldown: i64) -> bool {
    if t - *last >= cooldown {
        *last = t;
        true
    } else {
        false
    }
}

fn trail(q: &mut VecDeque<i64>, t: i64, span: i64) {
    q.push_back(t);
    while q.front().is_some_and(|x| *x <= t - span) {
        q.pop_front();
    }
}

impl Bound {
    fn new(per_rule: bool) -> Bound {
        Bound {
            keys: (Seeded::with_seed(1), Seeded::with_seed(2)),
            players: Map::default(),
            sessions: Map::default(),
            devices: Map::default(),
            ips: Map::default(),
            stakes: Map::default(),
            placed: VecDeque::new(),
            newest_bet: 0,
            hits: Hits::default(),
            per_rule,
        }
    }

    fn key(&self, tenant: &str, group: &str) -> u128 {
        (u128::from(self.keys.0.hash_one((tenant, group))) << 64)
            | u128::from(self.keys.1.hash_one((tenant, group)))
    }

    /// Distinct players of a device or address over 24 h, at least `min`.
    fn shared(
        map: &mut Map<Shared>,
        k: u128,
        (t, who, name): (i64, u64, &str),
        (min, cap): (usize, usize),
    ) -> bool {
        let s = map.entry(k).or_default();
        s.seen.push_back((t, who, name.into()));
        while s.seen.front().is_some_and(|x| x.0 <= t - DAY) || s.seen.len() > cap {
            s.seen.pop_front();
        }
        let mut distinct: Vec<u64> = Vec::with_capacity(min);
        for (_, p, _) in &s.seen {
            if !distinct.contains(p) {
                distinct.push(*p);
                if distinct.len() >= min {
                    break;
                }
            }
        }
        distinct.len() >= min && cooled(&mut s.hit, t, HOUR)
    }

    /// `fraud.multi_accounting.device` (3 players, 1,000 events) and `.ip` (5, 2,000).
    fn multi_accounting(&mut self, e: &Event, device: Option<&str>, ip: Option<&str>, who: u64) {
        let at = (e.occurred_at.as_millis(), who, e.player_id.as_str());
        if let Some(dev) = device {
            let k = self.key(&e.tenant_id, dev);
            self.hits.device += u64::from(Self::shared(&mut self.devices, k, at, (3, 1000)));
        }
        if let Some(ip) = ip {
            let k = self.key(&e.tenant_id, ip);
            self.hits.ip += u64::from(Self::shared(&mut self.ips, k, at, (5, 2000)));
        }
    }

    #[inline(never)]
    fn process(&mut self, e: &Event) {
        let id = uuid::Uuid::try_parse(e.event_id.as_deref().unwrap())
            .unwrap()
            .as_u128();
        let t = e.occurred_at.as_millis();
        let pk = self.key(&e.tenant_id, &e.player_id);
        let who = pk as u64;
        match &e.payload {
            Payload::BetPlaced(b) => {
                let jk = self.key(&e.tenant_id, &b.bet_id);
                match self.stakes.get_mut(&jk) {
                    Some(x) => x.0 = b.stake.amount_minor,
                    None => {
                        self.stakes.insert(jk, (b.stake.amount_minor, t));
                        self.placed.push_back((t, jk));
                    }
                }
                self.newest_bet = self.newest_bet.max(t);
                while let Some(&(ot, k)) = self.placed.front() {
                    if self.placed.len() <= 2_000_000 && ot >= self.newest_bet - 7 * DAY {
                        break;
                    }
                    self.placed.pop_front();
                    self.stakes.remove(&k);
                }
                let stake = b.stake.amount_minor as f64;
                let sk = self.key(&e.tenant_id, e.session_id.as_deref().unwrap_or(""));
                let s = self.sessions.entry(sk).or_default();
                // `age` of the session's newest `session_started`: none, no check.
                if s.start > 0 && t - s.start >= 3 * HOUR && cooled(&mut s.hit, t, HOUR) {
                    self.hits.long_session += 1;
                }
                let p = self.players.entry(pk).or_default();
                if !fresh(p, id, t) {
                    return;
                }
                let kind = BET | if b.autoplay { AUTOPLAY } else { 0 };
                if self.per_rule {
                    bet_per_rule(p, &mut self.hits, Wide::new(id, t, stake, kind));
                } else {
                    p.log.push_back(Logged {
                        id,
                        t,
                        v: stake,
                        kind,
                    });
                    bet_in_log(p, &mut self.hits, t, stake, b.autoplay);
                }
                let bucket = t - t.rem_euclid(5 * MINUTE);
                match p.wagered.back_mut() {
                    Some(x) if x.0 == bucket => x.1 += stake,
                    _ => p.wagered.push_back((bucket, stake)),
                }
                while p.wagered.front().is_some_and(|x| x.0 <= t - 3 * DAY) {
                    p.wagered.pop_front();
                }
                if p.cancelled_at > 0 && t - p.cancelled_at < DAY {
                    p.since_cancelled += stake;
                }
                if (t / HOUR).rem_euclid(24) < 5 {
                    trail(&mut p.late, t, HOUR);
                    if p.late.len() >= 20 && cooled(&mut p.late_hit, t, 6 * HOUR) {
                        self.hits.late_night += 1;
                    }
                }
            }
            Payload::BetSettled(b) => {
                let jk = self.key(&e.tenant_id, &b.bet_id);
                let Some(stake) = b
                    .stake
                    .as_ref()
                    .map(|s| s.amount_minor)
                    .or_else(|| self.stakes.get(&jk).map(|x| x.0))
                else {
                    return;
                };
                // The rule's `loss`: stake less payout, whatever the result (a win's is negative).
                let loss = (stake - b.payout.amount_minor) as f64;
                let p = self.players.entry(pk).or_default();
                if !fresh(p, id, t) {
                    return;
                }
                p.lc_lost += loss;
                if self.per_rule {
                    p.w_lc.push_back(Wide::new(id, t, loss, 0));
                } else {
                    p.log.push_back(Logged {
                        id,
                        t,
                        v: loss,
                        kind: 0,
                    });
                    trim(p);
                }
            }
            Payload::Deposit(d) => {
                self.multi_accounting(e, d.device_id.as_deref(), d.ip.as_deref(), who);
                let p = self.players.entry(pk).or_default();
                p.newest = p.newest.max(t);
                p.deposits.push_back((t, d.amount.amount_minor as f64));
                while p.deposits.front().is_some_and(|x| x.0 <= t - 3 * DAY) {
                    p.deposits.pop_front();
                }
                trail(&mut p.week, t, 7 * DAY);
                if p.week.len() > 500 {
                    p.week.pop_front();
                }
                let day = p.week.iter().filter(|x| **x > t - DAY).count();
                if day >= 4
                    && day as f64 >= 0.6 * p.week.len() as f64
                    && cooled(&mut p.week_hit, t, DAY)
                {
                    self.hits.deposits += 1;
                }
            }
            Payload::Login(l) => {
                self.multi_accounting(e, l.device_id.as_deref(), Some(&l.ip), who);
                let p = self.players.entry(pk).or_default();
                p.newest = p.newest.max(t);
                if !l.success {
                    trail(&mut p.failed, t, HOUR);
                }
            }
            Payload::SessionStarted(_) => {
                let sk = self.key(&e.tenant_id, e.session_id.as_deref().unwrap_or(""));
                self.sessions.entry(sk).or_default().start = t;
            }
            _ => {}
        }
    }
}

/// Whether the event is new to the player (a duplicate has the same time as its first).
fn fresh(p: &mut Player, id: u128, t: i64) -> bool {
    if t <= p.newest
        && (p
            .log
            .iter()
            .rev()
            .take_while(|x| x.t >= t)
            .any(|x| x.id == id)
            || p.w_lc
                .iter()
                .rev()
                .take_while(|x| x.t >= t)
                .any(|x| x.id == id))
    {
        return false;
    }
    p.newest = p.newest.max(t);
    true
}

/// A bet, the shared log's way: the log has it; each rule moves its cursor.
fn bet_in_log(p: &mut Player, hits: &mut Hits, t: i64, stake: f64, autoplay: bool) {
    let end = p.base + p.log.len() as u64;
    let at = |p: &Player, i: u64| p.log[(i - p.base) as usize];
    p.vel_n += 1;
    while p.vel_from < end {
        let x = at(p, p.vel_from);
        if x.t > t - MINUTE {
            break;
        }
        if x.kind & BET != 0 {
            p.vel_n -= 1;
        }
        p.vel_from += 1;
    }
    if p.vel_n >= 30 && cooled(&mut p.vel_hit, t, 10 * MINUTE) {
        hits.velocity += 1;
    }
    // The last 51 bets within 30 days.
    p.spike_n += 1;
    while p.spike_from < end {
        let x = at(p, p.spike_from);
        if x.kind & BET != 0 {
            if p.spike_n <= 51 && x.t > t - 30 * DAY {
                break;
            }
            p.spike_n -= 1;
        }
        p.spike_from += 1;
    }
    if p.spike_n > 10 && stake >= 10_000.0 && t - p.spike_hit >= HOUR {
        let from = (p.spike_from - p.base) as usize;
        let mut earlier: Vec<f64> = p
            .log
            .range(from..p.log.len() - 1)
            .filter(|x| x.kind & BET != 0)
            .map(|x| x.v)
            .collect();
        let m = earlier.len() / 2;
        earlier.select_nth_unstable_by(m, f64::total_cmp);
        if stake >= 10.0 * earlier[m] && cooled(&mut p.spike_hit, t, HOUR) {
            hits.spike += 1;
        }
    }
    if !autoplay {
        let by_hand = |x: &Logged| x.kind & BET != 0 && x.kind & AUTOPLAY == 0;
        if p.bot_n > 0 {
            let g = (t - p.bot_last) as f64;
            p.bot_gaps += g;
            p.bot_squares += g * g;
        }
        p.bot_n += 1;
        p.bot_last = t;
        // The last 31 hand-placed bets within 2 hours.
        while p.bot_from < end {
            let i = (p.bot_from - p.base) as usize;
            let x = p.log[i];
            if by_hand(&x) {
                if p.bot_n <= 31 && x.t > t - 2 * HOUR {
                    break;
                }
                p.bot_n -= 1;
                let next = p.log.range(i + 1..).find(|y| by_hand(y)).map_or(t, |y| y.t);
                let g = (next - x.t) as f64;
                p.bot_gaps -= g;
                p.bot_squares -= g * g;
            }
            p.bot_from += 1;
        }
        if p.bot_n >= 31 {
            let n = f64::from(p.bot_n - 1);
            let mean = p.bot_gaps / n;
            let sd = (p.bot_squares / n - mean * mean).max(0.0).sqrt();
            if sd / mean < 0.05 && cooled(&mut p.bot_hit, t, HOUR) {
                hits.bot += 1;
            }
        }
    }
    p.lc_bets += 1;
    p.lc_stakes += stake;
    while p.lc_from < end {
        let x = at(p, p.lc_from);
        if in_the_hour(x.t, t) {
            break;
        }
        if x.kind & BET != 0 {
            p.lc_bets -= 1;
            p.lc_stakes -= x.v;
        } else {
            p.lc_lost -= x.v;
        }
        p.lc_from += 1;
    }
    let earlier = p.lc_bets - 1;
    let avg = (p.lc_stakes - stake) / f64::from(earlier.max(1));
    if earlier >= 5 && p.lc_lost >= 20_000.0 && stake >= 2.0 * avg && cooled(&mut p.lc_hit, t, HOUR)
    {
        hits.loss_chasing += 1;
    }
    trim(p);
}

/// Whether an event at `x` is in `rg.loss_chasing`'s hour before `t`: the rule's window has
/// 2 min buckets, and an event that old is folded into its bucket, which counts whole while
/// any part of it lies within the hour (docs/rules.md, "Buckets").
fn in_the_hour(x: i64, t: i64) -> bool {
    x - x.rem_euclid(2 * MINUTE) + 2 * MINUTE > t - HOUR + 1
}

/// Drops the log's events that no rule's cursor reaches any more.
fn trim(p: &mut Player) {
    let keep = p.vel_from.min(p.spike_from).min(p.bot_from).min(p.lc_from);
    while p.base < keep {
        p.log.pop_front();
        p.base += 1;
    }
}

/// A bet, the per-rule way: every window gets its own 64-byte entry.
fn bet_per_rule(p: &mut Player, hits: &mut Hits, w: Wide) {
    let (t, stake) = (w.t, w.vals[0]);
    p.w_vel.push_back(w);
    while p.w_vel.front().is_some_and(|x| x.t <= t - MINUTE) {
        p.w_vel.pop_front();
    }
    if p.w_vel.len() >= 30 && cooled(&mut p.vel_hit, t, 10 * MINUTE) {
        hits.velocity += 1;
    }
    p.w_spike.push_back(w);
    while p.w_spike.len() > 51 || p.w_spike.front().is_some_and(|x| x.t <= t - 30 * DAY) {
        p.w_spike.pop_front();
    }
    if p.w_spike.len() > 10 && stake >= 10_000.0 && t - p.spike_hit >= HOUR {
        let mut earlier: Vec<f64> = p
            .w_spike
            .range(..p.w_spike.len() - 1)
            .map(|x| x.vals[0])
            .collect();
        let m = earlier.len() / 2;
        earlier.select_nth_unstable_by(m, f64::total_cmp);
        if stake >= 10.0 * earlier[m] && cooled(&mut p.spike_hit, t, HOUR) {
            hits.spike += 1;
        }
    }
    if w.kind & u32::from(AUTOPLAY) == 0 {
        if let Some(last) = p.w_bot.back() {
            let g = (t - last.t) as f64;
            p.bot_gaps += g;
            p.bot_squares += g * g;
        }
        p.w_bot.push_back(w);
        while p.w_bot.len() > 31 || p.w_bot.front().is_some_and(|x| x.t <= t - 2 * HOUR) {
            let x = p.w_bot.pop_front().unwrap();
            let g = (p.w_bot.front().map_or(t, |y| y.t) - x.t) as f64;
            p.bot_gaps -= g;
            p.bot_squares -= g * g;
        }
        if p.w_bot.len() >= 31 {
            let n = (p.w_bot.len() - 1) as f64;
            let mean = p.bot_gaps / n;
            let sd = (p.bot_squares / n - mean * mean).max(0.0).sqrt();
            if sd / mean < 0.05 && cooled(&mut p.bot_hit, t, HOUR) {
                hits.bot += 1;
            }
        }
    }
    p.w_lc.push_back(w);
    p.lc_bets += 1;
    p.lc_stakes += stake;
    while p.w_lc.front().is_some_and(|x| !in_the_hour(x.t, t)) {
        let x = p.w_lc.pop_front().unwrap();
        if x.kind & u32::from(BET) != 0 {
            p.lc_bets -= 1;
            p.lc_stakes -= x.vals[0];
        } else {
            p.lc_lost -= x.vals[0];
        }
    }
    let earlier = p.lc_bets - 1;
    let avg = (p.lc_stakes - stake) / f64::from(earlier.max(1));
    if earlier >= 5 && p.lc_lost >= 20_000.0 && stake >= 2.0 * avg && cooled(&mut p.lc_hit, t, HOUR)
    {
        hits.loss_chasing += 1;
    }
}

/// Laps of the stream the bound is checked over: 13.3 h of stream time from 12:00 UTC, so
/// hour-long windows expire and cooldowns re-arm many times, and the late-night hours come;
/// one with `PITBOSS_BENCH_QUICK=1` (a count under valgrind, say).
fn checked_laps() -> i64 {
    if std::env::var_os("PITBOSS_BENCH_QUICK").is_some() {
        1
    } else {
        48
    }
}

/// The bound's hits and the engine's (with the shipped packs), rule by rule, over
/// [`checked_laps`]: they must be the same, or the bound no longer does the packs' work.
fn same_hits_as_the_engine(records: &[Vec<u8>], per_rule: bool) -> BTreeMap<String, u64> {
    let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let mut engine = Engine::new(RuleSet::load_dir(&packs).unwrap());
    let (mut alerts, mut pushes) = (BTreeMap::new(), BTreeMap::new());
    let mut out = Output::default();
    // The engine's laps, then the bound's (not interleaved: each runs with its own code and
    // state in the caches, so a count of the bound's instructions and misses is its own).
    for lap in 0..checked_laps() {
        let digits = lap_digits(lap);
        for r in records {
            let e = lapped(r, lap, &digits);
            out.clear();
            engine.process(&e, e.occurred_at, &mut out).unwrap();
            for a in &out.alerts {
                *alerts.entry(a.rule_id.clone()).or_insert(0u64) += 1;
            }
            for p in &out.pushes {
                if let PushSource::Rule(r) = &p.source {
                    *pushes.entry(r.rule_id.clone()).or_insert(0u64) += 1;
                }
            }
        }
    }
    drop(engine);
    let mut bound = Bound::new(per_rule);
    for lap in 0..checked_laps() {
        let digits = lap_digits(lap);
        for r in records {
            bound.process(&lapped(r, lap, &digits));
        }
    }
    // A hit is an alert, or a push for a rule that raises no alert.
    let mut found = alerts;
    for (rule, n) in pushes {
        found.entry(rule).or_insert(n);
    }
    assert_eq!(
        bound.hits.by_rule(),
        found,
        "the bound's hits (left) are not the engine's (right): it no longer does the packs' work"
    );
    found
}

fn bench(c: &mut Criterion) {
    let per_rule = std::env::var_os("PITBOSS_BENCH_PER_RULE").is_some();
    let records = stream();
    let mut bound = Bound::new(per_rule);
    for r in &records {
        bound.process(&decode_proto(r).unwrap());
    }
    let layout = if per_rule {
        "a window per rule"
    } else {
        "one log per player"
    };
    let found = same_hits_as_the_engine(&records, per_rule);
    println!(
        "the bound ({layout}): over {} lap(s) the engine's hits, {found:?}",
        checked_laps()
    );
    let mut g = c.benchmark_group("antifraud_bound");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    common::decode_baseline(&mut g, &records);
    common::decode_and_evaluate(&mut g, &records, |e| {
        bound.process(e);
        bound.hits.velocity
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
