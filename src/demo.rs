//! The traffic simulator of `pitboss up --demo` and `pitboss loadgen --demo`: thousands of
//! players across several games and tenants, with realistic stakes, session lengths, return to
//! player per game, deposits, withdrawals and bonuses, and a configurable share of injected
//! fraud and risky play — a pattern for every shipped rule — so alerts and pushes appear within
//! seconds.
//!
//! The simulator is pure: it runs on a virtual clock from `start_ms` and [`Simulator::advance`]
//! returns the events due by a given time, in time order. The same seed and start time give the
//! same players, the same events and the same ids; a later start gives other ids, so a restarted
//! demo never collides with the events it sent before. Every injected pattern is recorded with
//! the rule it must fire ([`Simulator::take_expected`]).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const S: i64 = 1000;
const MIN: i64 = 60 * S;
const H: i64 = 60 * MIN;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub seed: u64,
    /// Tenants (operators); the first gets the largest share of the traffic.
    pub tenants: Vec<String>,
    pub players_per_tenant: usize,
    /// Events per second, normal and injected together.
    pub events_per_second: f64,
    /// Share (0–1) of the events that belong to injected fraud and risky-play patterns.
    pub risky_share: f64,
}

impl DemoConfig {
    /// Refuses a configuration that cannot run, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.tenants.is_empty() {
            return Err("the demo needs at least one tenant".into());
        }
        if !(1..=MAX_PLAYERS).contains(&self.players_per_tenant) {
            return Err(format!(
                "players per tenant (--demo-players, --players) must be 1 to {MAX_PLAYERS}"
            ));
        }
        if !(self.events_per_second.is_finite()
            && self.events_per_second > 0.0
            && self.events_per_second <= MAX_RATE)
        {
            return Err(format!(
                "the rate (--demo-rate, --rate) must be a number of events per second above 0 and at most {MAX_RATE}"
            ));
        }
        let players = self.players_per_tenant * self.tenants.len();
        if self.events_per_second > players as f64 / 10.0 {
            return Err(format!(
                "a rate of {} events/s is more than {players} players can play (one event every 10 s each, on average): raise the players (--demo-players, --players)",
                self.events_per_second
            ));
        }
        if !(0.0..=0.5).contains(&self.risky_share) {
            return Err(
                "the risky share (--demo-risky-share, --risky-share) must be between 0 and 0.5"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A rule an injected pattern must fire, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub tenant: String,
    pub player: String,
    pub rule: &'static str,
    /// Whether the rule pushes a notification to the player (the responsible-gambling pack).
    pub push: bool,
    /// Virtual time of the pattern's last event.
    pub due_ms: i64,
    /// The other players whose events the pattern needs (the accounts sharing a device or an
    /// address with `player`).
    pub others: Vec<String>,
}

/// The patterns, one per shipped rule (`rules/`): the rule each must fire and whether it pushes.
pub const PATTERNS: [(&str, bool); 14] = [
    ("fraud.bet_velocity", false),
    ("fraud.stake_spike", false),
    ("fraud.deposit_withdrawal_no_play", false),
    ("fraud.multi_accounting.device", false),
    ("fraud.multi_accounting.ip", false),
    ("fraud.bonus_withdrawal_before_wagering", false),
    ("fraud.bot_regular_betting", false),
    ("fraud.win_rate_high_stakes", false),
    ("fraud.account_takeover", false),
    ("rg.loss_chasing", true),
    ("rg.long_session", true),
    ("rg.late_night", true),
    ("rg.deposit_frequency_rising", true),
    ("rg.cancelled_withdrawal_gambled", true),
];

/// The most players per tenant and events per second the simulator takes (memory bounds).
const MAX_PLAYERS: usize = 5_000_000;
const MAX_RATE: f64 = 1_000_000.0;

/// Events per injected pattern, on average (sets how often one is injected).
const EVENTS_PER_PATTERN: f64 = 16.0;

#[derive(Debug, Clone, Copy)]
enum GameKind {
    /// Even-money bets: win probability, payout twice the stake.
    EvenMoney { p_win: f64 },
    /// Spins: a win with probability `p_hit` pays `rtp / p_hit` times the stake on average.
    Slot { p_hit: f64 },
    /// Decimal odds drawn in a range; the win probability is `rtp / odds`.
    Odds { low: f64, high: f64 },
}

#[derive(Debug, Clone, Copy)]
struct Game {
    id: &'static str,
    kind: GameKind,
    rtp: f64,
    bet_type: &'static str,
    /// How long until the bet settles (milliseconds).
    settle_ms: (i64, i64),
    rounds: bool,
}

const GAMES: [Game; 6] = [
    Game {
        id: "roulette-eu",
        kind: GameKind::EvenMoney { p_win: 18.0 / 37.0 },
        rtp: 36.0 / 37.0,
        bet_type: "single",
        settle_ms: (2_000, 4_000),
        rounds: true,
    },
    Game {
        id: "blackjack-classic",
        kind: GameKind::EvenMoney { p_win: 0.4975 },
        rtp: 0.995,
        bet_type: "hand",
        settle_ms: (3_000, 8_000),
        rounds: true,
    },
    Game {
        id: "slot-book-of-gold",
        kind: GameKind::Slot { p_hit: 0.28 },
        rtp: 0.96,
        bet_type: "spin",
        settle_ms: (300, 1_000),
        rounds: false,
    },
    Game {
        id: "slot-mega-spins",
        kind: GameKind::Slot { p_hit: 0.22 },
        rtp: 0.945,
        bet_type: "spin",
        settle_ms: (300, 1_000),
        rounds: false,
    },
    Game {
        id: "football-live",
        kind: GameKind::Odds {
            low: 1.3,
            high: 6.0,
        },
        rtp: 0.95,
        bet_type: "single",
        settle_ms: (20_000, 90_000),
        rounds: false,
    },
    Game {
        id: "crash-rocket",
        kind: GameKind::Odds {
            low: 1.1,
            high: 10.0,
        },
        rtp: 0.97,
        bet_type: "other",
        settle_ms: (1_000, 10_000),
        rounds: true,
    },
];

const CHANNELS: [&str; 4] = ["web", "mobile_web", "ios", "android"];

#[derive(Debug, Clone)]
struct Player {
    tenant: usize,
    id: String,
    currency: &'static str,
    /// The player's typical stake (minor units).
    median_stake: i64,
    favourite: usize,
    utc_offset_min: i64,
    device: String,
    ip: String,
    channel: &'static str,
    balance: i64,
    deposited: i64,
    wagered: i64,
    session: Option<Session>,
    sessions: u32,
    bets: u32,
}

#[derive(Debug, Clone)]
struct Session {
    id: String,
    started_ms: i64,
    bets_left: u32,
}

/// The traffic simulator (see the module docs).
#[derive(Debug)]
pub struct Simulator {
    cfg: DemoConfig,
    rng: StdRng,
    start_ms: i64,
    /// Virtual time (ms after start) of the next normal action and of the next injection.
    next_normal: f64,
    normal_every: f64,
    next_pattern: f64,
    pattern_every: f64,
    players: Vec<Player>,
    /// Players created for patterns so far, per tenant (their ids follow the normal ones).
    extra_players: Vec<usize>,
    /// Events scheduled, by (virtual ms, sequence).
    queue: BTreeMap<(i64, u64), Value>,
    seq: u64,
    /// Patterns still to inject in this round (a shuffled cycle over all of them).
    cycle: Vec<usize>,
    expected: Vec<Expected>,
    unique: u64,
    /// Addresses handed to patterns so far: each pattern's address is its own, so one
    /// pattern's shared address never joins another's (which would put the second under the
    /// first's cooldown, and its expected alert would never come).
    addresses: u64,
    /// This run's tag (its start, in seconds): in every id it makes besides the normal players'
    /// own, so a restarted demo's bets, transactions, sessions, devices and pattern players are
    /// not the previous run's.
    run: u64,
}

impl Simulator {
    pub fn new(cfg: DemoConfig, start_ms: i64) -> Simulator {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let utc_hour = (start_ms.div_euclid(H)).rem_euclid(24);
        let mut players = Vec::with_capacity(cfg.tenants.len() * cfg.players_per_tenant);
        for tenant in 0..cfg.tenants.len() {
            for n in 0..cfg.players_per_tenant {
                let p = new_player(&mut rng, tenant, n, utc_hour);
                players.push(p);
            }
        }
        // The players are the seed's; what they do is the seed's and the start's, so a
        // restarted demo does not play the previous run's patterns again in the same order.
        let run = start_ms.div_euclid(1000) as u64;
        let rng = StdRng::seed_from_u64(cfg.seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let risky = cfg.risky_share.clamp(0.0, 0.5);
        let normal_rate = (cfg.events_per_second * (1.0 - risky)).max(1e-6);
        let pattern_rate = cfg.events_per_second * risky / EVENTS_PER_PATTERN;
        Simulator {
            extra_players: vec![0; cfg.tenants.len()],
            rng,
            start_ms,
            next_normal: 0.0,
            normal_every: 1000.0 / normal_rate,
            // The first pattern a second in, so the first alert comes within seconds.
            next_pattern: 1000.0,
            pattern_every: if pattern_rate > 0.0 {
                1000.0 / pattern_rate
            } else {
                f64::INFINITY
            },
            players,
            queue: BTreeMap::new(),
            seq: 0,
            cycle: Vec::new(),
            expected: Vec::new(),
            unique: 0,
            // Pattern addresses from a point of the run's own: a restart does not hand out
            // the previous run's again.
            addresses: run.wrapping_mul(2_654_435_761) % (1 << 22),
            run,
            cfg,
        }
    }

    /// The events due by `now_ms` (wall-clock or virtual), in time order.
    pub fn advance(&mut self, now_ms: i64) -> Vec<Value> {
        let until = (now_ms - self.start_ms) as f64;
        while self.next_normal <= until || self.next_pattern <= until {
            // Each clock moves on by the events its step scheduled, so the rate is events/s.
            let before = self.seq;
            if self.next_pattern <= self.next_normal {
                let t = self.next_pattern as i64;
                self.inject(t);
                let n = (self.seq - before) as f64;
                self.next_pattern += self.pattern_every * n / EVENTS_PER_PATTERN;
            } else {
                let t = self.next_normal as i64;
                self.normal_step(t);
                let n = (self.seq - before).max(1) as f64;
                self.next_normal += self.normal_every * n;
            }
        }
        let due = now_ms - self.start_ms;
        let later = self.queue.split_off(&(due + 1, 0));
        let ready = std::mem::replace(&mut self.queue, later);
        ready.into_values().collect()
    }

    /// The patterns injected since the last call, with the rule each must fire (the caller
    /// keeps what it needs: a long demo does not accumulate them).
    pub fn take_expected(&mut self) -> Vec<Expected> {
        std::mem::take(&mut self.expected)
    }

    fn schedule(&mut self, t: i64, player: usize, kind: &str, payload: Value) {
        self.schedule_stamped(t, t, player, kind, payload);
    }

    /// Sent at `t`, stamped as having happened at `happened` (a late arrival when earlier).
    fn schedule_stamped(
        &mut self,
        t: i64,
        happened: i64,
        player: usize,
        kind: &str,
        payload: Value,
    ) {
        let p = &self.players[player];
        let mut e = json!({
            "tenant_id": self.cfg.tenants[p.tenant],
            "player_id": p.id,
            "type": kind,
            "utc_offset_min": p.utc_offset_min,
            "payload": payload,
        });
        if let Some(s) = &p.session {
            e["session_id"] = s.id.clone().into();
        }
        self.push_event(t, happened, e);
    }

    /// Stamps `e` with the time it happened and an id, and queues it for `t`.
    fn push_event(&mut self, t: i64, happened: i64, mut e: Value) {
        let at = self.start_ms + happened;
        let random: [u8; 10] = self.rng.random();
        let id = uuid::Builder::from_unix_timestamp_millis(at.max(0) as u64, &random).into_uuid();
        e["event_id"] = id.to_string().into();
        e["occurred_at"] = pitboss_model::Timestamp::from_millis(at)
            .to_rfc3339()
            .unwrap_or_default()
            .into();
        self.seq += 1;
        self.queue.insert((t, self.seq), e);
    }

    fn money(&self, player: usize, amount: i64) -> Value {
        json!({"amount_minor": amount.max(0), "currency": self.players[player].currency})
    }

    /// An address of its own for a pattern: `100.64.0.0/10` (shared address space, which no
    /// simulated player uses), about four million before it repeats.
    fn fresh_ip(&mut self) -> String {
        let n = self.addresses % (1 << 22);
        self.addresses += 1;
        format!(
            "100.{}.{}.{}",
            64 + ((n >> 16) & 63),
            (n >> 8) & 255,
            n & 255
        )
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.unique += 1;
        format!(
            "{prefix}-{:x}-{:x}-{}",
            self.cfg.seed & 0xffff,
            self.run,
            self.unique
        )
    }

    // ------------------------------------------------------------------ normal play

    fn pick_player(&mut self) -> usize {
        let n = self.cfg.players_per_tenant;
        let tenants = self.cfg.tenants.len();
        // The first tenant has 60 % of the traffic, the others share the rest.
        let tenant = if tenants == 1 || self.rng.random_bool(0.6) {
            0
        } else {
            self.rng.random_range(1..tenants)
        };
        tenant * n + self.rng.random_range(0..n)
    }

    fn normal_step(&mut self, t: i64) {
        let i = self.pick_player();
        let Some(session) = self.players[i].session.clone() else {
            self.start_session(i, t);
            return;
        };
        if session.bets_left == 0 || t - session.started_ms > 45 * MIN {
            let duration = t - session.started_ms;
            self.schedule(
                t,
                i,
                "session_ended",
                json!({"duration_ms": duration.max(0), "reason": "logout"}),
            );
            self.players[i].session = None;
            self.schedule(t + 150, i, "logout", json!({"reason": "user"}));
            return;
        }
        let stake = self.stake(i);
        if self.players[i].balance < stake {
            self.deposit(i, t, stake);
            return;
        }
        // Now and then, a withdrawal of winnings by a player who has played their deposits.
        let p = &self.players[i];
        if p.balance > 3 * p.median_stake * 20
            && p.wagered >= p.deposited
            && self.rng.random_bool(0.05)
        {
            let amount = p.balance / 2;
            let tx = self.next_id("w");
            let payload = json!({"transaction_id": tx, "amount": self.money(i, amount), "status": "requested", "method": "bank_transfer"});
            self.schedule(t, i, "withdrawal", payload);
            let payload = json!({"transaction_id": tx, "amount": self.money(i, amount), "status": "approved", "method": "bank_transfer"});
            self.schedule(t + 20 * S, i, "withdrawal", payload);
            self.players[i].balance -= amount;
            return;
        }
        self.bet(i, t, stake);
        if let Some(s) = self.players[i].session.as_mut() {
            s.bets_left -= 1;
        }
    }

    fn start_session(&mut self, i: usize, t: i64) {
        // Normal players play in their day or evening, however long the demo runs (late-night
        // play is a pattern of its own).
        let utc_hour = ((self.start_ms + t).div_euclid(H)).rem_euclid(24);
        self.players[i].utc_offset_min = day_offset(&mut self.rng, utc_hour);
        let (ip, device, channel) = {
            let p = &self.players[i];
            (p.ip.clone(), p.device.clone(), p.channel)
        };
        // Now and then a mistyped password first.
        let mut t = t;
        if self.rng.random_bool(0.03) {
            self.schedule(t, i, "login", json!({"ip": ip, "device_id": device, "success": false, "failure_reason": "bad_credentials"}));
            t += 4 * S;
        }
        self.schedule(
            t,
            i,
            "login",
            json!({"ip": ip, "device_id": device, "success": true, "country": "MT"}),
        );
        let p = &mut self.players[i];
        p.sessions += 1;
        let id = format!("s-{}-{:x}-{}", p.id, self.run, p.sessions);
        let bets_left = self.rng.random_range(8..60);
        self.players[i].session = Some(Session {
            id,
            started_ms: t,
            bets_left,
        });
        self.schedule(
            t + 200,
            i,
            "session_started",
            json!({"channel": channel, "device_id": device}),
        );
        // A no-wagering cashback bonus for one session in fifty.
        if self.rng.random_bool(0.02) {
            let bonus = self.next_id("cashback");
            let amount = self.players[i].median_stake * 5;
            let payload = json!({"bonus_id": bonus, "action": "granted", "amount": self.money(i, amount), "wagering_requirement": self.money(i, 0)});
            self.schedule(t + 400, i, "bonus", payload);
            let payload =
                json!({"bonus_id": bonus, "action": "released", "amount": self.money(i, amount)});
            self.schedule(t + 600, i, "bonus", payload);
            self.players[i].balance += amount;
        }
    }

    fn stake(&mut self, i: usize) -> i64 {
        let median = self.players[i].median_stake as f64;
        // Near the player's own typical stake (chasing losses with doubled stakes is a
        // pattern of its own), and below the high-stake thresholds of the fraud pack.
        let s = (median * (0.3 * normal(&mut self.rng)).exp()).clamp(median * 0.6, median * 1.5);
        ((s / 10.0).round() * 10.0).clamp(10.0, 2_000.0) as i64
    }

    fn deposit(&mut self, i: usize, t: i64, stake: i64) {
        let median = self.players[i].median_stake;
        let amount = (median * self.rng.random_range(30..120)).max(stake * 10);
        let amount = (amount / 100).max(1) * 100;
        let tx = self.next_id("d");
        let method = ["card", "ewallet", "bank_transfer"][self.rng.random_range(0..3)];
        let ip = self.players[i].ip.clone();
        let payload = json!({"transaction_id": tx, "amount": self.money(i, amount), "method": method, "ip": ip});
        self.schedule(t, i, "deposit", payload);
        let p = &mut self.players[i];
        p.balance += amount;
        p.deposited += amount;
    }

    fn bet(&mut self, i: usize, t: i64, stake: i64) {
        let game_index = if self.rng.random_bool(0.7) {
            self.players[i].favourite
        } else {
            self.rng.random_range(0..GAMES.len())
        };
        let game = GAMES[game_index];
        let bet_id = self.next_id("b");
        let channel = self.players[i].channel;
        let mut placed = json!({"bet_id": bet_id, "game_id": game.id, "stake": self.money(i, stake), "bet_type": game.bet_type, "channel": channel});
        let round = game
            .rounds
            .then(|| format!("{}-r{}", game.id, (self.start_ms + t) / 5_000));
        if let Some(r) = &round {
            placed["round_id"] = r.clone().into();
        }
        let (won, payout, odds) = match game.kind {
            GameKind::EvenMoney { p_win } => {
                let won = self.rng.random_bool(p_win);
                (won, if won { stake * 2 } else { 0 }, None)
            }
            GameKind::Slot { p_hit } => {
                let won = self.rng.random_bool(p_hit);
                let mean = game.rtp / p_hit;
                // Exponentially distributed multiplier with that mean.
                let u: f64 = self.rng.random_range(1e-9..1.0);
                let payout = (stake as f64 * mean * -u.ln()).round() as i64;
                (won, if won { payout.min(stake * 500) } else { 0 }, None)
            }
            GameKind::Odds { low, high } => {
                let odds = (self.rng.random_range(low..high) * 100.0).round() / 100.0;
                let won = self.rng.random_bool((game.rtp / odds).min(1.0));
                let payout = (stake as f64 * odds).round() as i64;
                (won, if won { payout } else { 0 }, Some(odds))
            }
        };
        if let Some(o) = odds {
            placed["odds"] = format!("{o:.2}").into();
        }
        self.schedule(t, i, "bet_placed", placed);
        let delay = self.rng.random_range(game.settle_ms.0..=game.settle_ms.1);
        let mut settled = json!({"bet_id": bet_id, "game_id": game.id, "result": if won { "win" } else { "loss" }, "payout": self.money(i, payout), "stake": self.money(i, stake)});
        if let Some(r) = round {
            settled["round_id"] = r.into();
        }
        self.schedule(t + delay, i, "bet_settled", settled);
        let p = &mut self.players[i];
        p.balance += payout - stake;
        p.wagered += stake;
        p.bets += 1;
    }

    // ------------------------------------------------------------------ injected patterns

    /// A fresh player of `tenant` for a pattern (ids follow the normal players').
    fn pattern_player(&mut self, tenant: usize, t: i64) -> usize {
        let n = self.cfg.players_per_tenant + self.extra_players[tenant];
        self.extra_players[tenant] += 1;
        let utc_hour = ((self.start_ms + t).div_euclid(H)).rem_euclid(24);
        let mut p = new_player(&mut self.rng, tenant, n, utc_hour);
        p.median_stake = 500;
        // Nobody's before: an id, a device and an address of this run's own (a restarted demo
        // numbers its pattern players from the same point).
        p.id = format!("p-{:x}-{}", self.run, self.extra_players[tenant]);
        p.device = self.next_id("dev");
        p.ip = self.fresh_ip();
        (p.balance, p.deposited) = (0, 0);
        self.players.push(p);
        self.players.len() - 1
    }

    fn expect(&mut self, player: usize, pattern: usize, due: i64) {
        self.expect_with(player, pattern, due, &[]);
    }

    /// [`Self::expect`] of a pattern that also needs `others`' events.
    fn expect_with(&mut self, player: usize, pattern: usize, due: i64, others: &[usize]) {
        let (rule, push) = PATTERNS[pattern];
        let p = &self.players[player];
        self.expected.push(Expected {
            tenant: self.cfg.tenants[p.tenant].clone(),
            player: p.id.clone(),
            rule,
            push,
            due_ms: self.start_ms + due,
            others: others
                .iter()
                .filter(|&&o| o != player)
                .map(|&o| self.players[o].id.clone())
                .collect(),
        });
    }

    fn inject(&mut self, t: i64) {
        if self.cycle.is_empty() {
            self.cycle = (0..PATTERNS.len()).collect();
            // Fisher–Yates with the simulator's generator (deterministic).
            for k in (1..self.cycle.len()).rev() {
                let j = self.rng.random_range(0..=k);
                self.cycle.swap(k, j);
            }
        }
        let pattern = self.cycle.pop().unwrap_or(0);
        let tenant = self.rng.random_range(0..self.cfg.tenants.len());
        self.pattern(pattern, tenant, t);
        // A pattern's events are built when it is injected: its players are not needed after.
        self.players
            .truncate(self.cfg.players_per_tenant * self.cfg.tenants.len());
    }

    fn small_bets(&mut self, i: usize, t: i64, n: usize, gap: (i64, i64), stake: i64) -> i64 {
        let mut t = t;
        for _ in 0..n {
            let b = self.next_id("b");
            let payload = json!({"bet_id": b, "game_id": "slot-book-of-gold", "stake": self.money(i, stake), "bet_type": "spin"});
            self.schedule(t, i, "bet_placed", payload);
            t += if gap.0 == gap.1 {
                gap.0
            } else {
                self.rng.random_range(gap.0..=gap.1)
            };
        }
        t
    }

    /// Schedules pattern `k` for a fresh player of `tenant` from `t`; returns its last time.
    fn pattern(&mut self, k: usize, tenant: usize, t: i64) -> i64 {
        let i = self.pattern_player(tenant, t);
        let end = match PATTERNS[k].0 {
            "fraud.bet_velocity" => {
                // 35 bets in about 17 s, with human jitter (not machine-regular).
                self.small_bets(i, t, 35, (300, 700), 200)
            }
            "fraud.stake_spike" => {
                let t = self.small_bets(i, t, 12, (800, 1_600), 500);
                self.small_bets(i, t, 1, (0, 0), 12_000)
            }
            "fraud.deposit_withdrawal_no_play" => {
                let id = self.next_id("d");
                self.schedule(t, i, "deposit", json!({"transaction_id": id, "amount": self.money(i, 50_000), "method": "card"}));
                let t = self.small_bets(i, t + 2 * S, 2, (2_000, 2_000), 2_000);
                let id = self.next_id("w");
                self.schedule(t, i, "withdrawal", json!({"transaction_id": id, "amount": self.money(i, 45_000), "status": "requested"}));
                t
            }
            "fraud.multi_accounting.device" => {
                // Three accounts on one device.
                let device = self.next_id("dev-shared");
                let mut last = i;
                let mut sharing = Vec::new();
                let mut t = t;
                for n in 0..3 {
                    let j = if n == 0 {
                        i
                    } else {
                        self.pattern_player(tenant, t)
                    };
                    let ip = self.players[j].ip.clone();
                    self.schedule(
                        t,
                        j,
                        "login",
                        json!({"ip": ip, "device_id": device, "success": true}),
                    );
                    last = j;
                    sharing.push(j);
                    t += 2 * S;
                }
                self.expect_with(last, k, t, &sharing);
                return t;
            }
            "fraud.multi_accounting.ip" => {
                // Five accounts from one address.
                let ip = self.fresh_ip();
                let mut last = i;
                let mut sharing = Vec::new();
                let mut t = t;
                for n in 0..5 {
                    let j = if n == 0 {
                        i
                    } else {
                        self.pattern_player(tenant, t)
                    };
                    let device = self.players[j].device.clone();
                    self.schedule(
                        t,
                        j,
                        "login",
                        json!({"ip": ip, "device_id": device, "success": true}),
                    );
                    last = j;
                    sharing.push(j);
                    t += 1_500;
                }
                self.expect_with(last, k, t, &sharing);
                return t;
            }
            "fraud.bonus_withdrawal_before_wagering" => {
                let bonus = self.next_id("welcome");
                self.schedule(t, i, "bonus", json!({"bonus_id": bonus, "action": "granted", "amount": self.money(i, 10_000), "wagering_requirement": self.money(i, 350_000)}));
                self.schedule(t + 2 * S, i, "bonus", json!({"bonus_id": bonus, "action": "wagered", "amount": self.money(i, 10_000), "wagered": self.money(i, 105_000)}));
                let id = self.next_id("w");
                self.schedule(t + 4 * S, i, "withdrawal", json!({"transaction_id": id, "amount": self.money(i, 5_000), "status": "requested"}));
                t + 4 * S
            }
            "fraud.bot_regular_betting" => {
                // 31 bets exactly 2.5 s apart (slower than the velocity rule's 30 a minute).
                self.small_bets(i, t, 31, (2_500, 2_500), 100) - 2_500
            }
            "fraud.win_rate_high_stakes" => {
                let id = self.next_id("d");
                self.schedule(t, i, "deposit", json!({"transaction_id": id, "amount": self.money(i, 300_000), "method": "crypto"}));
                let mut t = t + S;
                for n in 0..20 {
                    let b = self.next_id("b");
                    self.schedule(t, i, "bet_placed", json!({"bet_id": b, "game_id": "blackjack-classic", "stake": self.money(i, 15_000), "bet_type": "hand"}));
                    let won = n % 10 != 3;
                    self.schedule(t + 700, i, "bet_settled", json!({"bet_id": b, "game_id": "blackjack-classic", "result": if won { "win" } else { "loss" }, "payout": self.money(i, if won { 30_000 } else { 0 }), "stake": self.money(i, 15_000)}));
                    t += 1_500;
                }
                t - 800
            }
            "fraud.account_takeover" => {
                let ip = self.fresh_ip();
                let device = self.next_id("dev-unknown");
                let mut t = t;
                for _ in 0..5 {
                    self.schedule(t, i, "login", json!({"ip": ip, "device_id": device, "success": false, "failure_reason": "bad_credentials"}));
                    t += S;
                }
                self.schedule(
                    t,
                    i,
                    "login",
                    json!({"ip": ip, "device_id": device, "success": true}),
                );
                t += 2 * S;
                let id = self.next_id("w");
                self.schedule(t, i, "withdrawal", json!({"transaction_id": id, "amount": self.money(i, 90_000), "status": "requested"}));
                t
            }
            "rg.loss_chasing" => {
                let mut t = t;
                for _ in 0..5 {
                    let b = self.next_id("b");
                    self.schedule(t, i, "bet_placed", json!({"bet_id": b, "game_id": "roulette-eu", "stake": self.money(i, 5_000), "bet_type": "single"}));
                    self.schedule(t + 500, i, "bet_settled", json!({"bet_id": b, "game_id": "roulette-eu", "result": "loss", "payout": self.money(i, 0), "stake": self.money(i, 5_000)}));
                    t += 1_200;
                }
                self.small_bets(i, t, 1, (0, 0), 12_000)
            }
            "rg.long_session" => {
                // A session that began over three hours ago (sent late), then a bet now.
                let began = t - 3 * H - 10 * MIN;
                let session = self.next_id("s-long");
                let ip = self.players[i].ip.clone();
                self.players[i].session = Some(Session {
                    id: session,
                    started_ms: began,
                    bets_left: 0,
                });
                self.schedule_stamped(t, began, i, "login", json!({"ip": ip, "success": true}));
                self.schedule_stamped(
                    t,
                    began + 300,
                    i,
                    "session_started",
                    json!({"channel": "web"}),
                );
                let t = self.small_bets(i, t + 500, 1, (0, 0), 300);
                self.players[i].session = None;
                t
            }
            "rg.late_night" => {
                // 20 bets in the small hours of the player's own time zone.
                let utc_hour = ((self.start_ms + t).div_euclid(H)).rem_euclid(24);
                // 01:00–03:59, so the twenty bets stay before 05:00 even across an hour.
                let local = self.rng.random_range(1..4);
                let mut offset = (local - utc_hour).rem_euclid(24) * 60;
                if offset > 840 {
                    offset -= 1440;
                }
                self.players[i].utc_offset_min = offset;
                self.small_bets(i, t, 20, (1_000, 2_000), 300) - 1_000
            }
            "rg.deposit_frequency_rising" => {
                let mut t = t;
                for _ in 0..4 {
                    let id = self.next_id("d");
                    self.schedule(t, i, "deposit", json!({"transaction_id": id, "amount": self.money(i, 2_000), "method": "card"}));
                    t = self.small_bets(i, t + S, 2, (1_000, 1_000), 500);
                }
                t - 2 * S
            }
            "rg.cancelled_withdrawal_gambled" => {
                let id = self.next_id("d");
                self.schedule(
                    t,
                    i,
                    "deposit",
                    json!({"transaction_id": id, "amount": self.money(i, 9_000), "method": "card"}),
                );
                let tx = self.next_id("w");
                self.schedule(t + S, i, "withdrawal", json!({"transaction_id": tx, "amount": self.money(i, 8_000), "status": "requested"}));
                self.schedule(t + 3 * S, i, "withdrawal", json!({"transaction_id": tx, "amount": self.money(i, 8_000), "status": "cancelled"}));
                self.small_bets(i, t + 4 * S, 3, (1_000, 1_000), 3_000) - 1_000
            }
            other => unreachable!("no pattern for {other}"),
        };
        self.expect(i, k, end);
        end
    }
}

fn new_player(rng: &mut StdRng, tenant: usize, n: usize, utc_hour: i64) -> Player {
    let currency = match (tenant, rng.random_bool(0.75)) {
        (0, true) | (_, false) => "EUR",
        (_, true) => "GBP",
    };
    // Typical stakes: log-normal around 1.50, most between 0.40 and 6.00.
    let median_stake = ((150.0 * (0.7 * normal(rng)).exp()).round() as i64).clamp(10, 1_000);
    let offset = day_offset(rng, utc_hour);
    // Players of a running casino: money in their accounts already (as much as a deposit),
    // so the first thing a (re)started demo has them do is play, not all deposit at once —
    // restarts would otherwise look like rising deposit frequency. Counted as deposited, so
    // they wager it before they withdraw.
    let balance = median_stake * rng.random_range(30..120) / 100 * 100;
    let k = tenant * 1_000_000 + n;
    Player {
        tenant,
        id: format!("p-{n:06}"),
        currency,
        median_stake,
        favourite: rng.random_range(0..GAMES.len()),
        utc_offset_min: offset,
        device: format!("dev-{tenant}-{n:06}"),
        ip: format!(
            "{}.{}.{}.{}",
            11 + (k >> 16) % 150,
            (k >> 8) & 255,
            k & 255,
            10 + tenant
        ),
        channel: CHANNELS[rng.random_range(0..CHANNELS.len())],
        balance,
        deposited: balance,
        wagered: 0,
        session: None,
        sessions: 0,
        bets: 0,
    }
}

/// A UTC offset (minutes) at which it is between 10:00 and 20:59 when it is `utc_hour` in UTC.
fn day_offset(rng: &mut StdRng, utc_hour: i64) -> i64 {
    let local = rng.random_range(10..21);
    let offset = (local - utc_hour).rem_euclid(24) * 60;
    if offset > 840 { offset - 1440 } else { offset }
}

/// A standard normal variate (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Sends the simulator's events to an ingest API (`url` is its `/v1/events`), each tenant's
/// with its own key, every 100 ms until `stop`. Refused events and failed requests are
/// counted (`pitboss_demo_events_total{outcome}`) and reported at most every ten seconds.
pub async fn drive(
    mut sim: Simulator,
    url: String,
    keys: Vec<(String, String)>,
    stop: pitboss_runtime::Shutdown,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warning: Option<std::time::Instant> = None;
    let mut warn = |message: String| {
        let now = std::time::Instant::now();
        if last_warning.is_none_or(|t| now.duration_since(t).as_secs() >= 10) {
            last_warning = Some(now);
            tracing::warn!("demo: {message}");
        }
    };
    loop {
        tokio::select! {
            () = stop.wait() => return Ok(()),
            _ = tick.tick() => {}
        }
        let events = sim.advance(pitboss_model::Timestamp::now().as_millis());
        let mut by_tenant: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for e in events {
            let tenant = e["tenant_id"].as_str().unwrap_or_default().to_owned();
            by_tenant.entry(tenant).or_default().push(e);
        }
        for (tenant, events) in by_tenant {
            let Some((_, key)) = keys.iter().find(|(t, _)| *t == tenant) else {
                continue;
            };
            for batch in events.chunks(1000) {
                let n = batch.len() as u64;
                let sent = client.post(&url).bearer_auth(key).json(batch).send().await;
                match sent {
                    Ok(resp) if resp.status().is_success() => {
                        let answer: Value = resp.json().await.unwrap_or_default();
                        let accepted = answer["accepted"].as_u64().unwrap_or(0);
                        let duplicates = answer["duplicates"].as_u64().unwrap_or(0);
                        let rejected = answer["rejected"].as_u64().unwrap_or(0);
                        metrics::counter!("pitboss_demo_events_total", "outcome" => "accepted")
                            .increment(accepted + duplicates);
                        if rejected > 0 {
                            metrics::counter!("pitboss_demo_events_total", "outcome" => "rejected")
                                .increment(rejected);
                            let why = answer["results"]
                                .as_array()
                                .and_then(|r| r.iter().find(|x| x["status"] == "rejected"))
                                .map(|x| x["errors"].to_string())
                                .unwrap_or_default();
                            warn(format!("{rejected} events of {tenant} refused: {why}"));
                        }
                    }
                    Ok(resp) => {
                        metrics::counter!("pitboss_demo_events_total", "outcome" => "failed")
                            .increment(n);
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        warn(format!("ingest answered {status}: {body}"));
                    }
                    Err(e) => {
                        metrics::counter!("pitboss_demo_events_total", "outcome" => "failed")
                            .increment(n);
                        warn(format!("ingest unreachable: {e}"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use pitboss_antifraud::{Engine, Output, RuleSet};

    fn config(seed: u64) -> DemoConfig {
        DemoConfig {
            seed,
            tenants: vec!["demo".into(), "northbet".into()],
            players_per_tenant: 500,
            events_per_second: 200.0,
            risky_share: 0.05,
        }
    }

    /// 2026-12-03T15:00:00Z: mid-afternoon UTC.
    const T0: i64 = 1_796_310_000_000;

    #[test]
    fn the_same_seed_and_start_give_the_same_events() {
        let mut a = Simulator::new(config(7), T0);
        let mut b = Simulator::new(config(7), T0);
        let mut c = Simulator::new(config(8), T0);
        let (ea, eb, ec) = (
            a.advance(T0 + 60 * S),
            b.advance(T0 + 60 * S),
            c.advance(T0 + 60 * S),
        );
        // 200 events/s for a minute (some of the last ones still scheduled).
        assert!(
            (10_500..=12_100).contains(&ea.len()),
            "{} events in a minute",
            ea.len()
        );
        assert_eq!(ea, eb);
        assert_ne!(ea, ec);
        // A later start: other ids.
        let mut d = Simulator::new(config(7), T0 + H);
        let ed = d.advance(T0 + H + 60 * S);
        assert_ne!(ea[0]["event_id"], ed[0]["event_id"]);
        // Advancing in small steps gives the same as one big step.
        let mut e = Simulator::new(config(7), T0);
        let mut stepped = Vec::new();
        for ms in (0..=60 * S).step_by(97) {
            stepped.extend(e.advance(T0 + ms));
        }
        stepped.extend(e.advance(T0 + 60 * S));
        assert_eq!(stepped, ea);
    }

    /// Each multi-accounting-by-address pattern gets an address of its own, however many ids
    /// were handed out between two of them (they once came from the id counter and repeated
    /// every 65,536 ids: the second pattern fell under the first's cooldown and its expected
    /// alert never came, one in a 10-minute run at 10,000 events/s).
    #[test]
    fn address_patterns_never_share_an_address() {
        let k = PATTERNS
            .iter()
            .position(|(rule, _)| *rule == "fraud.multi_accounting.ip")
            .expect("the pattern exists");
        // No patterns but the two injected here.
        let quiet = DemoConfig {
            risky_share: 0.0,
            ..config(3)
        };
        let mut sim = Simulator::new(quiet, T0);
        let addresses = |sim: &mut Simulator, at: i64| -> BTreeSet<String> {
            sim.pattern(k, 0, at - T0);
            sim.advance(at + 5 * MIN)
                .iter()
                .filter(|e| e["type"] == "login")
                .filter_map(|e| e["payload"]["ip"].as_str().map(str::to_owned))
                .filter(|ip| ip.starts_with("100."))
                .collect()
        };
        let first = addresses(&mut sim, T0 + MIN);
        sim.unique += 1 << 16;
        let second = addresses(&mut sim, T0 + 10 * MIN);
        assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
        assert!(first.is_disjoint(&second), "{first:?} {second:?}");
    }

    #[test]
    fn every_event_is_valid_and_in_time_order() {
        let mut sim = Simulator::new(config(1), T0);
        let events = sim.advance(T0 + 5 * MIN);
        let mut ids = BTreeSet::new();
        let mut types = BTreeSet::new();
        for e in &events {
            let text = e.to_string();
            let decoded = pitboss_model::decode_event(text.as_bytes())
                .unwrap_or_else(|v| panic!("{v}: {text}"));
            assert!(
                ids.insert(decoded.event_id.clone()),
                "duplicate id in {text}"
            );
            assert!(decoded.occurred_at.as_millis() <= T0 + 5 * MIN);
            types.insert(e["type"].as_str().unwrap_or_default().to_owned());
        }
        for t in [
            "bet_placed",
            "bet_settled",
            "deposit",
            "withdrawal",
            "login",
            "logout",
            "session_started",
            "session_ended",
            "bonus",
        ] {
            assert!(types.contains(t), "no {t} in five minutes: {types:?}");
        }
        let tenants: BTreeSet<_> = events.iter().map(|e| e["tenant_id"].to_string()).collect();
        assert_eq!(tenants.len(), 2);
    }

    #[test]
    fn every_rule_fires_for_its_pattern_and_normal_play_raises_nothing() {
        plays_as_expected(&[(T0, T0 + 12 * MIN)], true);
    }

    /// A demo restarted three times (a new simulator at each start, the same rules engine
    /// throughout, as `pitboss up --demo` after a SIGKILL or SIGTERM): the same normal players
    /// carry on without raising anything (they once all deposited again at each start, and
    /// the fourth start looked like rising deposit frequency for hundreds of them), and every
    /// run's patterns fire on players, devices and addresses of their own.
    #[test]
    fn a_restarted_demo_raises_nothing_for_normal_players_and_every_run_s_patterns_fire() {
        let runs: Vec<(i64, i64)> = (0..4)
            .map(|k| (T0 + k * 4 * MIN, T0 + (k + 1) * 4 * MIN))
            .collect();
        plays_as_expected(&runs, false);
    }

    /// Plays a simulator from each start to each end in turn through one rules engine: every
    /// pattern due fires its rule (and push) — with `every_rule`, every shipped rule among them
    /// — and no normal player raises anything.
    fn plays_as_expected(runs: &[(i64, i64)], every_rule: bool) {
        let sources = pitboss_antifraud::stream::shipped_sources();
        let set = RuleSet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
        let mut engine = Engine::new(set);
        let mut out = Output::default();
        let mut fired: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
        let mut pushed: BTreeSet<(String, String)> = BTreeSet::new();
        let mut expected = Vec::new();
        let mut due = Vec::new();
        for &(start, end) in runs {
            let mut sim = Simulator::new(config(42), start);
            let mut this_run = Vec::new();
            for ms in (0..=end - start).step_by(1000) {
                let events = sim.advance(start + ms);
                this_run.extend(sim.take_expected());
                for e in events {
                    let event = pitboss_model::decode_event(e.to_string().as_bytes())
                        .unwrap_or_else(|v| panic!("{v}"));
                    engine
                        .process(
                            &event,
                            pitboss_model::Timestamp::from_millis(start + ms),
                            &mut out,
                        )
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                for a in out.alerts.drain(..) {
                    fired
                        .entry((a.tenant_id.clone(), a.player_id.clone().unwrap_or_default()))
                        .or_default()
                        .insert(a.rule_id.clone());
                }
                for p in out.pushes.drain(..) {
                    if let pitboss_model::live::Target::Player(id) = &p.target {
                        pushed.insert((p.tenant_id.clone(), id.clone()));
                    }
                }
            }
            // A run's patterns are due before it stops (the next run's simulator does not
            // send what this one scheduled later).
            due.extend(this_run.iter().filter(|x| x.due_ms + 2 * S <= end).cloned());
            expected.extend(this_run);
        }
        let due: Vec<&Expected> = due.iter().collect();
        let rules: BTreeSet<_> = due.iter().map(|x| x.rule).collect();
        if every_rule {
            assert_eq!(rules.len(), PATTERNS.len(), "patterns injected: {rules:?}");
        } else {
            assert!(
                rules.len() > PATTERNS.len() / 2,
                "patterns injected: {rules:?}"
            );
        }
        for x in &due {
            let got = fired.get(&(x.tenant.clone(), x.player.clone()));
            assert!(
                got.is_some_and(|r| r.contains(x.rule)),
                "{} of {} should fire {}; fired {got:?}",
                x.player,
                x.tenant,
                x.rule
            );
            if x.push {
                assert!(pushed.contains(&(x.tenant.clone(), x.player.clone())));
            }
        }
        let pattern_players: BTreeSet<_> = expected
            .iter()
            .map(|x| (x.tenant.clone(), x.player.clone()))
            .collect();
        // The multi-accounting patterns involve players besides the one the alert names.
        let normal_alerts: Vec<_> = fired
            .iter()
            .filter(|(k, _)| {
                let n: usize =
                    k.1.strip_prefix("p-")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                n < 500 && !pattern_players.contains(*k)
            })
            .collect();
        assert!(
            normal_alerts.is_empty(),
            "normal players raised alerts: {normal_alerts:?}"
        );
    }
}
