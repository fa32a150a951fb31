//! `pitboss rules backtest`: stored history (the embedded store of `pitboss up`, or ClickHouse)
//! replayed through a rule set, with what it would have raised (docs/rules.md, "Backtest").

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use pitboss_antifraud::backtest::{Backtest, Report};
use pitboss_antifraud::stream::RulesSource;
use pitboss_model::Timestamp;

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Replay stored events through a rule set and report hits per rule, example alerts and
    /// the score distribution.
    Backtest(BacktestArgs),
    /// Load a rule set and list its rules, or every problem with file, line and reason (exit
    /// status 1).
    Check(crate::ruletest::CheckArgs),
    /// Run rule test files: each case's events through a fresh engine, its expected hits
    /// compared with what fired (docs/rules.md, "Checking and testing rules"); exit status 1 when one fails.
    Test(crate::ruletest::TestArgs),
    /// Build an engine's state file from stored history, so `pitboss antifraud` (or `pitboss
    /// up`) starts with full windows instead of empty ones (docs/rules.md, "Starting warm").
    Warm(WarmArgs),
    /// Silence a rule for one player, device, address… of a tenant until a time: a
    /// `[[snooze]]` added to the rules directory's snoozes.toml, checked with the whole set
    /// first; a running engine takes it on its next reload (docs/rules.md, "Snoozes").
    Snooze(crate::snooze::SnoozeArgs),
    /// Put values on a `[[list]]` of the rules directory, or take them off, in its
    /// lists.toml, checked with the whole set first; a running engine takes it on its next
    /// reload (docs/rules.md, "Lists").
    #[command(subcommand)]
    List(crate::lists::ListCommand),
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The engine the state is for: its rules (the set it will run), state directory (its
    /// `antifraud.db` is written), events topic and group, as `pitboss antifraud` is given them.
    #[command(flatten)]
    engine: crate::EngineArgs,
    /// Evaluate the events received from this time on (RFC 3339); by default the set's longest
    /// window (at most 7 days) before where the engine resumes.
    #[arg(long)]
    from: Option<String>,
    /// Replace the state the file holds for the group (refused without it).
    #[arg(long)]
    replace: bool,
    /// Warm even where the group has committed past the stored events (the records in between
    /// would be read by neither; by default refused, naming them).
    #[arg(long)]
    allow_gap: bool,
    /// The bus the engine reads (where its group's commits are read; `--bus embedded` for
    /// `pitboss up`'s log, whose `--data-dir` holds the embedded store too).
    #[command(flatten)]
    bus: crate::BusArgs,
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    /// Output: a text report, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Directory of rule files (`*.toml`); the shipped packs without it.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Start of the range (RFC 3339, e.g. 2026-11-01T00:00:00Z), by when events were received.
    /// Windows are warmed up with the events before it (the longest window, at most 7 days).
    #[arg(long)]
    from: String,
    /// End of the range (RFC 3339), exclusive.
    #[arg(long)]
    to: String,
    /// Only this tenant's events.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    tenant: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Example alerts per rule.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Output: a text report, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Where stored events are read: the embedded store of `pitboss up`, or ClickHouse.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The data directory of `pitboss up` (its embedded store, `pitboss.db`), read unless
    /// `--clickhouse-url` is given.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
}

/// ClickHouse, when stored events are read from it.
#[derive(Debug, Args)]
pub struct ClickHouseArgs {
    /// Read the events from ClickHouse at this HTTP URL instead of the embedded store.
    #[arg(long, visible_alias = "clickhouse")]
    clickhouse_url: Option<String>,
    /// ClickHouse database of the Pitboss tables.
    #[arg(
        long,
        visible_alias = "clickhouse-database",
        env = "PITBOSS_CLICKHOUSE_DATABASE",
        default_value = "pitboss"
    )]
    database: String,
    /// Seconds one ClickHouse query may take to answer in full (a page of `--page-rows`): a
    /// server that takes the connection and never answers fails the run.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    query_timeout_secs: u64,
    /// Rows per ClickHouse query (keyset pages; ClickHouse only).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    page_rows: u64,
}

/// A ClickHouse server to read stored events from.
pub(crate) struct Stored {
    pub(crate) client: pitboss_processor::sink::ClickHouseClient,
    /// The URL without its password, for messages.
    at: String,
    wait: std::time::Duration,
    page_rows: u64,
}

impl StoreArgs {
    pub(crate) fn embedded(&self) -> Result<Option<PathBuf>> {
        self.clickhouse.embedded(&self.data_dir)
    }

    pub(crate) fn clickhouse(&self) -> Result<Option<Stored>> {
        self.clickhouse.open()
    }
}

impl ClickHouseArgs {
    /// The embedded store's file in `data_dir`, when ClickHouse is not named; refused when it
    /// is not there.
    fn embedded(&self, data_dir: &std::path::Path) -> Result<Option<PathBuf>> {
        if self.clickhouse_url.is_some() {
            return Ok(None);
        }
        let path = data_dir.join("pitboss.db");
        if !path.exists() {
            bail!(
                "no embedded store at {} (give the --data-dir of `pitboss up`, or \
                 --clickhouse-url)",
                path.display()
            );
        }
        Ok(Some(path))
    }

    fn open(&self) -> Result<Option<Stored>> {
        let Some(url) = &self.clickhouse_url else {
            return Ok(None);
        };
        if !pitboss_processor::schema::valid_identifier(&self.database) {
            bail!("--database must be letters, digits and '_' (not starting with a digit)");
        }
        pitboss_processor::sink::check_url(url)
            .map_err(|e| anyhow::anyhow!("--clickhouse-url: {e}"))?;
        Ok(Some(Stored {
            client: pitboss_processor::sink::client(url, &self.database),
            // Printed without its password; a server that takes the connection but never
            // answers (stopped, or behind a proxy that holds it) fails the run, not hangs it.
            at: pitboss_processor::sink::redacted_url(url),
            wait: std::time::Duration::from_secs(self.query_timeout_secs),
            page_rows: self.page_rows.max(1),
        }))
    }
}

impl Stored {
    pub(crate) async fn ask<T, E>(
        &self,
        query: impl std::future::Future<Output = std::result::Result<T, E>>,
        what: &str,
    ) -> Result<T>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        answered(self.wait, query, || {
            format!("{what} in ClickHouse at {}", self.at)
        })
        .await
    }

    /// Each event received in `[lo, hi)` (of `tenant`, or all), in replay order, a copy the
    /// table has not merged away yet left out.
    async fn scan(
        &self,
        lo: u64,
        hi: u64,
        tenant: Option<&str>,
        mut f: impl FnMut(&pitboss_processor::rows::StoredEvent),
    ) -> Result<()> {
        let columns = self
            .ask(
                pitboss_processor::sink::stored_event_columns(&self.client),
                "reading the events' columns",
            )
            .await?;
        let mut after: Option<pitboss_processor::sink::EventCursor> = None;
        // The events of the millisecond being read, to drop a copy the table has not
        // merged away yet (a publish retried: the same event, received at the same time,
        // at another offset).
        let mut this_ms: (u64, std::collections::HashSet<(String, String)>) =
            (u64::MAX, std::collections::HashSet::new());
        loop {
            let page = self
                .ask(
                    pitboss_processor::sink::events_page(
                        &self.client,
                        &columns,
                        lo,
                        hi,
                        tenant,
                        after.as_ref(),
                        self.page_rows,
                    ),
                    "reading the events",
                )
                .await?;
            let Some(last) = page.last() else { break };
            let next = pitboss_processor::sink::EventCursor::after(last);
            for row in &page {
                if this_ms.0 != row.received_at_ms {
                    this_ms = (row.received_at_ms, std::collections::HashSet::new());
                }
                if this_ms
                    .1
                    .insert((row.tenant_id.clone(), row.event_id.clone()))
                {
                    f(row);
                }
            }
            after = Some(next);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn time(flag: &str, text: &str) -> Result<Timestamp> {
    Timestamp::parse_rfc3339(text).map_err(|e| {
        anyhow::anyhow!(
            "{flag} {text:?} is not an RFC 3339 time (e.g. 2026-11-28T00:00:00Z or \
             2026-11-28T01:00:00+01:00): {e}"
        )
    })
}

fn progress(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {rate} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            // Whole events a second (indicatif's `{per_sec}` prints 29,912.4928/s).
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", s.per_sec());
                },
            ),
    )
}

pub async fn rules(args: RulesArgs) -> Result<()> {
    match args.command {
        RulesCommand::Backtest(args) => backtest(args).await,
        RulesCommand::Check(args) => crate::ruletest::check(args),
        RulesCommand::Test(args) => crate::ruletest::test(args),
        RulesCommand::Warm(args) => warm(args).await,
        RulesCommand::Snooze(args) => crate::snooze::snooze(args).await,
        RulesCommand::List(cmd) => crate::lists::run(cmd),
    }
}

/// The rule set `--rules` names (the shipped packs without it), refused with why.
fn load_rules(rules: Option<&PathBuf>) -> Result<(RulesSource, pitboss_antifraud::RuleSet)> {
    let source = match rules {
        Some(d) => {
            if !d.is_dir() {
                bail!("--rules {}: not a directory", d.display());
            }
            RulesSource::Dir(d.clone())
        }
        None => RulesSource::Shipped,
    };
    let set = source.load().with_context(|| match rules {
        Some(d) => format!("the rule set in {} is refused", d.display()),
        None => "the shipped rule set is refused".to_owned(),
    })?;
    Ok((source, set))
}

/// Where the engine's group resumes: per `(topic, partition)` of the events topic and its
/// overflow topic, the next offset it committed.
type Commits = std::collections::BTreeMap<(String, u32), i64>;

/// What a warm state covers: per `(topic, partition)` of the topics the engine reads, the last
/// offset, and the gaps found.
struct Cover {
    upto: pitboss_antifraud::state::Positions,
    gaps: Vec<String>,
}

/// The positions a warm state covers, per stored partition of `topics` (the events topic the
/// engine reads and its overflow topic; other topics the store holds are not the engine's):
/// up to the offset before the group's commit where the store holds that far (the stored
/// events after it are the engine's to read), else the newest stored — a gap, refused unless
/// `allow_gap` (then reported). Refused for a store that keeps no offsets (fed from Kinesis).
fn covered(
    ends: &[pitboss_processor::rows::StoredEnd],
    topics: &[String],
    commits: &Commits,
    allow_gap: bool,
) -> Result<Cover> {
    let ends: Vec<_> = ends.iter().filter(|e| topics.contains(&e.topic)).collect();
    let mut upto = pitboss_antifraud::state::Positions::new();
    let mut gaps = Vec::new();
    let mut gap = |topic: &str, partition: u32, committed: i64, stored: Option<i64>| {
        let held = stored.map_or_else(
            || "no events of it".to_owned(),
            |s| format!("its events up to offset {s}"),
        );
        let missing = committed - 1 - stored.unwrap_or(-1);
        gaps.push(format!(
            "{topic}:{partition}: the group committed offset {committed} and the store holds \
             {held}: {missing} records would be read by neither the warm start nor the engine"
        ));
    };
    for ((topic, partition), committed) in commits {
        if *committed > 0
            && !ends
                .iter()
                .any(|e| &e.topic == topic && e.partition == *partition)
        {
            gap(topic, *partition, *committed, None);
            // Covered up to nothing: the engine's first record there shows the gap too.
            upto.insert(
                (std::sync::Arc::from(topic.as_str()), *partition),
                pitboss_bus::Position::Offset(-1),
            );
        }
    }
    for e in ends {
        if e.newest == 0 && e.events > 1 {
            bail!(
                "the store keeps no bus offsets for {}:{} ({} events, all at offset 0: a store \
                 fed from Kinesis, whose positions are sequence numbers); a warm start needs \
                 events stored from Kafka or the embedded log",
                e.topic,
                e.partition,
                e.events
            );
        }
        let newest = i64::try_from(e.newest).unwrap_or(i64::MAX);
        let last = match commits.get(&(e.topic.clone(), e.partition)) {
            // The group read nothing here: the engine reads it all.
            Some(0) => continue,
            Some(c) if newest >= c - 1 => c - 1,
            Some(c) => {
                gap(&e.topic, e.partition, *c, Some(newest));
                newest
            }
            None => newest,
        };
        upto.insert(
            (std::sync::Arc::from(e.topic.as_str()), e.partition),
            pitboss_bus::Position::Offset(last),
        );
    }
    if !gaps.is_empty() && !allow_gap {
        bail!(
            "{}\nLet the processor store what the group has read (its lag: \
             pitboss_processor_unstored_seconds) and run again, or give --allow-gap to warm \
             without those records",
            gaps.join("\n")
        );
    }
    Ok(Cover { upto, gaps })
}

/// Where the engine's group resumes in `topics`, read from the bus without joining it; refused
/// while the group has members (an engine running: its commits move, and its state file is
/// its own). A topic the bus does not have yet (the overflow topic) has no commits.
async fn commits(bus: &crate::BusArgs, group: &str, topics: &[String]) -> Result<Commits> {
    let spec = bus.existing_spec()?;
    let at = format!("{spec:?}");
    let bus = spec
        .open()
        .await
        .with_context(|| format!("opening the bus ({at}) to read group {group}'s commits"))?;
    if let Some(members) = bus
        .group_members(group)
        .await
        .with_context(|| format!("asking the bus ({at}) who is in group {group}"))?
        && !members.is_empty()
    {
        bail!(
            "group {group} has {} member(s) ({}): stop the engine before warming its state",
            members.len(),
            members
                .iter()
                .map(|m| format!("{} on {}", m.client_id, m.host))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut out = Commits::new();
    for (i, t) in topics.iter().enumerate() {
        match bus.committed_offsets(group, t).await {
            Ok(Some(c)) => out.extend(c.into_iter().map(|(p, o)| ((t.clone(), p), o))),
            Ok(None) => bail!(
                "this bus does not tell a group's commits (Kinesis): a warm start needs Kafka or \
                 the embedded log"
            ),
            Err(pitboss_bus::BusError::UnknownTopic(_)) if i > 0 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading group {group}'s commits on {t}"));
            }
        }
    }
    Ok(out)
}

/// Takes `path`'s lock when the file is there (`pitboss up`'s data directory lock): refused
/// while another process holds it.
fn lock_if_there(path: &std::path::Path, who: &str) -> Result<Option<std::fs::File>> {
    if !path.exists() {
        return Ok(None);
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is held by a running {who}: stop it before warming its engine's state",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("taking the lock {}", path.display()))
        }
    }
}

/// The earliest `received_at` among the events a state covers (where the engine resumes, at
/// the latest): the default `--from` counts back from it.
fn resume_time(received: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    received.into_iter().flatten().min()
}

async fn warm(args: WarmArgs) -> Result<()> {
    let (source, set) = load_rules(args.engine.rules.as_ref())?;
    let given_from = args
        .from
        .as_deref()
        .map(|t| time("--from", t))
        .transpose()?;
    let span = pitboss_antifraud::backtest::warmup_ms(&set);
    let from_before = |resume: Option<i64>| {
        given_from.unwrap_or_else(|| {
            let at = resume.unwrap_or_else(|| pitboss_model::Timestamp::now().as_millis());
            pitboss_model::Timestamp::from_millis(at.saturating_sub(span))
        })
    };
    let embedded = args.clickhouse.embedded(&args.bus.data_dir)?;
    let clickhouse = args.clickhouse.open()?;
    let topics = [
        args.engine.topic.clone(),
        format!("{}_overflow", args.engine.topic),
    ];
    // Nothing else writes the state file meanwhile: neither `pitboss up` on its data directory
    // nor an engine on its state directory.
    let _up = lock_if_there(&args.engine.state_dir.join("up.lock"), "`pitboss up`")?;
    let path = args.engine.state_dir.join("antifraud.db");
    let _engine = pitboss_antifraud::state::lock(&path)?;
    crate::keep_private(std::slice::from_ref(&args.engine.state_dir));
    let mut state = pitboss_antifraud::state::StateStore::open(&path, &args.engine.group)?;
    let held = match (state.snapshot()?, state.batches()?.len()) {
        (Some(s), _) => Some(format!(
            "the state of group {} saved at {}",
            args.engine.group,
            ts(pitboss_model::Timestamp::from_millis(s.taken_at_ms))
        )),
        (None, 0) => None,
        (None, n) => Some(format!(
            "{n} batches group {} logged before its first save",
            args.engine.group
        )),
    };
    if let Some(held) = held.filter(|_| !args.replace) {
        bail!(
            "{} already holds {held}: an engine's state is replaced only with --replace (stop \
             the engine first)",
            path.display()
        );
    }
    // Where the group resumes, read before the store; no engine is in the group, so it stays.
    let commits = commits(&args.bus, &args.engine.group, &topics).await?;
    let committed: std::collections::BTreeMap<String, i64> = commits
        .iter()
        .map(|((t, p), o)| (format!("{t}:{p}"), *o))
        .collect();
    let push = |warm: &mut pitboss_antifraud::warm::Warm,
                row: Result<&pitboss_processor::rows::StoredEvent, String>| {
        match row.and_then(|r| r.to_event().map(|e| (r, e))) {
            Ok((r, e)) => warm.push(
                &r.bus_topic,
                r.bus_partition,
                i64::try_from(r.bus_offset).unwrap_or(i64::MAX),
                &e,
            ),
            Err(why) => warm.unreadable(why),
        }
    };
    let ours = |r: &pitboss_processor::rows::StoredEvent| topics.contains(&r.bus_topic);
    let warm = if let Some(db) = embedded {
        let view = pitboss_processor::sqlite::ReadView::open(&db)?;
        let cover = covered(&view.ends()?, &topics, &commits, args.allow_gap)?;
        let mut resumes = Vec::new();
        for ((t, p), pos) in &cover.upto {
            if let pitboss_bus::Position::Offset(o) = pos
                && let Ok(o) = u64::try_from(*o)
            {
                resumes.push(view.received_at(t, *p, o)?);
            }
        }
        let from = from_before(resume_time(resumes));
        let mut w = pitboss_antifraud::warm::Warm::new(set.clone(), from, cover.upto);
        w.commits(committed, cover.gaps);
        view.scan(from.as_millis(), |row| match row {
            Ok(r) if !ours(&r) => {}
            Ok(r) => push(&mut w, Ok(&r)),
            Err(why) => push(&mut w, Err(why)),
        })?;
        w
    } else if let Some(ch) = clickhouse {
        let ends = ch
            .ask(
                pitboss_processor::sink::stored_ends(&ch.client),
                "reading where the stored events end",
            )
            .await?;
        let cover = covered(&ends, &topics, &commits, args.allow_gap)?;
        let mut resumes = Vec::new();
        for ((t, p), pos) in &cover.upto {
            if let pitboss_bus::Position::Offset(o) = pos
                && let Ok(o) = u64::try_from(*o)
            {
                let at = ch
                    .ask(
                        pitboss_processor::sink::stored_received_at(&ch.client, t, *p, o),
                        "reading when the last covered event was received",
                    )
                    .await?;
                resumes.push(at.and_then(|a| i64::try_from(a).ok()));
            }
        }
        let from = from_before(resume_time(resumes));
        let mut w = pitboss_antifraud::warm::Warm::new(set.clone(), from, cover.upto);
        w.commits(committed, cover.gaps);
        ch.scan(from.as_millis().max(0) as u64, u64::MAX, None, |row| {
            if ours(row) {
                push(&mut w, Ok(row));
            }
        })
        .await?;
        w
    } else {
        bail!("no store to read: give the --data-dir of an embedded store, or --clickhouse-url");
    };
    let report = warm.save(&mut state)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Format::Text => {
            let rules = match &source {
                RulesSource::Shipped => "the shipped packs".to_owned(),
                RulesSource::Dir(d) => d.display().to_string(),
            };
            writeln!(
                out,
                "Warmed {} (group {}) with {rules} from the events received since {}",
                path.display(),
                args.engine.group,
                ts(report.from)
            )?;
            writeln!(
                out,
                "{} events read: {} evaluated, {} stored after the positions below (left to \
                 the engine), {} received before {}, {} unreadable",
                report.events_read,
                report.events_warmed,
                report.events_after,
                report.events_before,
                ts(report.from),
                report.events_unreadable
            )?;
            for p in &report.problems {
                writeln!(out, "  unreadable: {p}")?;
            }
            writeln!(
                out,
                "state: {} windows holding {} events, {} placed bets, {} players with a score \
                 ({} units); {} alerts and {} pushes the replay raised were not published",
                report.windows,
                report.entries,
                report.joined_bets,
                report.scored_players,
                report.units,
                report.alerts_withheld,
                report.pushes_withheld
            )?;
            for (tp, offset) in &report.positions {
                let resumes = report
                    .committed
                    .get(tp)
                    .map(|c| format!(" (the group resumes at {c})"))
                    .unwrap_or_default();
                writeln!(out, "covers {tp} up to offset {offset}{resumes}")?;
            }
            for g in &report.gaps {
                writeln!(out, "gap: {g}")?;
            }
            writeln!(
                out,
                "Start the engine on it (--state-dir {} --group {}): it skips the records up to \
                 those offsets and evaluates the ones after.",
                args.engine.state_dir.display(),
                args.engine.group
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn backtest(args: BacktestArgs) -> Result<()> {
    let from = time("--from", &args.from)?;
    let to = time("--to", &args.to)?;
    if from >= to {
        bail!(
            "--from {} is not before --to {}: the range is empty",
            args.from,
            args.to
        );
    }
    let (source, set) = load_rules(args.rules.as_ref())?;
    let mut bt = Backtest::new(set, from, to, args.examples);
    let start = bt.start().as_millis();
    let tenant = args.tenant.as_deref();
    let feed = |bt: &mut Backtest, row: Result<pitboss_model::Event, String>| match row {
        Ok(e) => bt.push(&e),
        Err(why) => bt.unreadable(why),
    };
    if let Some(path) = args.store.embedded()? {
        let total = pitboss_processor::sqlite::count_events(&path, start, to.as_millis(), tenant)?;
        let bar = progress(total);
        pitboss_processor::sqlite::scan_events(&path, start, to.as_millis(), tenant, |row| {
            bar.inc(1);
            feed(&mut bt, row);
        })?;
        bar.finish_and_clear();
    } else if let Some(ch) = args.store.clickhouse()? {
        let (lo, hi) = (start.max(0) as u64, to.as_millis().max(0) as u64);
        let total = ch
            .ask(
                pitboss_processor::sink::count_events(&ch.client, lo, hi, tenant),
                "counting the events",
            )
            .await?;
        let bar = progress(total);
        let mut read = 0;
        ch.scan(lo, hi, tenant, |row| {
            read += 1;
            bar.set_position(read);
            feed(&mut bt, row.to_event());
        })
        .await?;
        bar.finish_and_clear();
    }
    let report = bt.finish();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Format::Text => text(&mut out, &report, &source)?,
    }
    out.flush()?;
    Ok(())
}

fn ts(t: Timestamp) -> String {
    t.to_rfc3339().unwrap_or_else(|| t.as_millis().to_string())
}

fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn text(out: &mut impl Write, r: &Report, source: &RulesSource) -> Result<()> {
    let rules = match source {
        RulesSource::Shipped => "the shipped packs".to_owned(),
        RulesSource::Dir(d) => d.display().to_string(),
    };
    writeln!(
        out,
        "Backtest of {rules} over events received {} .. {} (windows warmed up from {})",
        ts(r.from),
        ts(r.to),
        ts(r.warmup_from)
    )?;
    writeln!(
        out,
        "{} events read: {} counted, {} warm-up, {} unreadable; {} alerts, {} pushes{}{}",
        r.events_read,
        r.events_counted,
        r.events_warmup,
        r.events_unreadable,
        r.alerts,
        r.pushes,
        if r.snoozed > 0 {
            format!(", {} hits snoozed", r.snoozed)
        } else {
            String::new()
        },
        if r.rejected > 0 {
            format!(", {} withheld (broke the contract)", r.rejected)
        } else {
            String::new()
        }
    )?;
    for warning in &r.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    writeln!(out)?;
    let w = r.rules.iter().map(|x| x.id.len()).max().unwrap_or(4).max(4);
    // A SNOOZED column when the set's snoozes silenced something.
    let snoozed = |n: u64| {
        if r.snoozed > 0 {
            format!("  {n:>7}")
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{:<w$}  {:>3}  {:>5}  {:>8}  {:>7}  {:>6}  {:>6}  {:>5}{}",
        "RULE",
        "VER",
        "SCORE",
        "HITS",
        "PLAYERS",
        "KEYS",
        "ALERTS",
        "PUSHES",
        if r.snoozed > 0 { "  SNOOZED" } else { "" }
    )?;
    for x in &r.rules {
        writeln!(
            out,
            "{:<w$}  {:>3}  {:>5}  {:>8}  {:>7}  {:>6}  {:>6}  {:>5}{}",
            x.id,
            x.version,
            x.score,
            x.hits,
            x.players,
            x.keys,
            x.alerts,
            x.pushes,
            snoozed(x.snoozed)
        )?;
    }
    let fired: Vec<_> = r.rules.iter().filter(|x| !x.examples.is_empty()).collect();
    if !fired.is_empty() {
        writeln!(out, "\nExamples")?;
    }
    for x in fired {
        writeln!(out, "  {} v{}", x.id, x.version)?;
        for e in &x.examples {
            let score = match (e.total_score, e.recommendation) {
                (Some(s), Some(rec)) => format!(" score {s} ({})", name(&rec)),
                _ => String::new(),
            };
            writeln!(
                out,
                "    {} tenant {} player {} key {}{score}: {}",
                ts(e.event_time),
                e.tenant_id,
                e.player_id,
                e.group_key,
                e.reason
            )?;
            for m in &e.measures {
                writeln!(
                    out,
                    "        {} = {} ({} {}{})",
                    m.name,
                    m.value,
                    name(&m.comparison),
                    m.threshold,
                    m.currency
                        .as_deref()
                        .map(|c| format!(" {c} minor units"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    let rec = &r.recommendations;
    writeln!(
        out,
        "\nRecommendations: none {}, review {}, block {}",
        rec.none, rec.review, rec.block
    )?;
    writeln!(
        out,
        "Score after each alert (review from {}, block from {}):",
        r.review, r.block
    )?;
    for b in &r.score_distribution {
        let range = match b.to {
            Some(to) => format!("{}-{}", b.from, to.saturating_sub(1)),
            None => format!("{}+", b.from),
        };
        writeln!(out, "  {range:>9}  {}", b.alerts)?;
    }
    if !r.problems.is_empty() {
        writeln!(out, "\nNot evaluated ({}):", r.events_unreadable)?;
        for p in &r.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(())
}

/// `query`'s answer within `wait` (`--query-timeout-secs`), its failure or the wait named by
/// `what`.
async fn answered<T, E>(
    wait: std::time::Duration,
    query: impl std::future::Future<Output = std::result::Result<T, E>>,
    what: impl Fn() -> String,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(wait, query).await {
        Ok(answer) => answer.with_context(what),
        Err(_) => Err(anyhow::anyhow!(
            "{}: no answer within {} s (--query-timeout-secs)",
            what(),
            wait.as_secs()
        )),
    }
}
