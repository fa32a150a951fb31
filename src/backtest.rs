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
    /// The data directory of `pitboss up` (its embedded store, `pitboss.db`), read unless
    /// `--clickhouse-url` is given.
    #[arg(long, env = "PITBOSS_DATA_DIR", default_value = ".pitboss")]
    data_dir: PathBuf,
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
    /// Example alerts per rule.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Output: a text report, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
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
    }
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
    let source = match &args.rules {
        Some(d) => {
            if !d.is_dir() {
                bail!("--rules {}: not a directory", d.display());
            }
            RulesSource::Dir(d.clone())
        }
        None => RulesSource::Shipped,
    };
    let set = source.load().with_context(|| match &args.rules {
        Some(d) => format!("the rule set in {} is refused", d.display()),
        None => "the shipped rule set is refused".to_owned(),
    })?;
    let mut bt = Backtest::new(set, from, to, args.examples);
    let start = bt.start().as_millis();
    let tenant = args.tenant.as_deref();
    let feed = |bt: &mut Backtest, row: Result<pitboss_model::Event, String>| match row {
        Ok(e) => bt.push(&e),
        Err(why) => bt.unreadable(why),
    };
    match &args.clickhouse_url {
        None => {
            let path = args.data_dir.join("pitboss.db");
            if !path.exists() {
                bail!(
                    "no embedded store at {} (give the --data-dir of `pitboss up`, or \
                     --clickhouse-url)",
                    path.display()
                );
            }
            let total =
                pitboss_processor::sqlite::count_events(&path, start, to.as_millis(), tenant)?;
            let bar = progress(total);
            pitboss_processor::sqlite::scan_events(&path, start, to.as_millis(), tenant, |row| {
                bar.inc(1);
                feed(&mut bt, row);
            })?;
            bar.finish_and_clear();
        }
        Some(url) => {
            if !pitboss_processor::schema::valid_identifier(&args.database) {
                bail!("--database must be letters, digits and '_' (not starting with a digit)");
            }
            pitboss_processor::sink::check_url(url)
                .map_err(|e| anyhow::anyhow!("--clickhouse-url: {e}"))?;
            let client = pitboss_processor::sink::client(url, &args.database);
            // Printed without its password; a server that takes the connection but never
            // answers (stopped, or behind a proxy that holds it) fails the run, not hangs it.
            let at = pitboss_processor::sink::redacted_url(url);
            let (lo, hi) = (start.max(0) as u64, to.as_millis().max(0) as u64);
            let wait = std::time::Duration::from_secs(args.query_timeout_secs);
            let total = answered(
                wait,
                pitboss_processor::sink::count_events(&client, lo, hi, tenant),
                || format!("counting the events in ClickHouse at {at}"),
            )
            .await?;
            let bar = progress(total);
            let columns = answered(
                wait,
                pitboss_processor::sink::stored_event_columns(&client),
                || format!("reading the events' columns from ClickHouse at {at}"),
            )
            .await?;
            let mut after: Option<pitboss_processor::sink::EventCursor> = None;
            // The events of the millisecond being read, to drop a copy the table has not
            // merged away yet (a publish retried: the same event, received at the same time,
            // at another offset).
            let mut this_ms: (u64, std::collections::HashSet<(String, String)>) =
                (u64::MAX, std::collections::HashSet::new());
            loop {
                let page = answered(
                    wait,
                    pitboss_processor::sink::events_page(
                        &client,
                        &columns,
                        lo,
                        hi,
                        tenant,
                        after.as_ref(),
                        args.page_rows.max(1),
                    ),
                    || format!("reading the events from ClickHouse at {at}"),
                )
                .await?;
                let Some(last) = page.last() else { break };
                let next = pitboss_processor::sink::EventCursor::after(last);
                for row in &page {
                    bar.inc(1);
                    if this_ms.0 != row.received_at_ms {
                        this_ms = (row.received_at_ms, std::collections::HashSet::new());
                    }
                    if !this_ms
                        .1
                        .insert((row.tenant_id.clone(), row.event_id.clone()))
                    {
                        continue;
                    }
                    feed(&mut bt, row.to_event());
                }
                after = Some(next);
            }
            bar.finish_and_clear();
        }
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
        "{} events read: {} counted, {} warm-up, {} unreadable; {} alerts, {} pushes{}",
        r.events_read,
        r.events_counted,
        r.events_warmup,
        r.events_unreadable,
        r.alerts,
        r.pushes,
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
    writeln!(
        out,
        "{:<w$}  {:>3}  {:>5}  {:>8}  {:>7}  {:>6}  {:>6}  {:>5}",
        "RULE", "VER", "SCORE", "HITS", "PLAYERS", "KEYS", "ALERTS", "PUSHES"
    )?;
    for x in &r.rules {
        writeln!(
            out,
            "{:<w$}  {:>3}  {:>5}  {:>8}  {:>7}  {:>6}  {:>6}  {:>5}",
            x.id, x.version, x.score, x.hits, x.players, x.keys, x.alerts, x.pushes
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
