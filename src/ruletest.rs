//! `pitboss rules check` (a rule set loaded and summarised, or refused with file, line and
//! reason) and `pitboss rules test` (rule test files played through a fresh engine; docs/rules.md,
//! "Checking and testing rules").

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use pitboss_antifraud::ruletest;
use pitboss_antifraud::stream::RulesSource;
use pitboss_antifraud::{AntifraudError, RuleSet};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of rule files (`*.toml`); the shipped packs without it.
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories of them (`*.toml`, not recursive).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The rule directory for test files that name none (`rules = "…"`); the shipped packs
    /// without it.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Also list every hit of the cases that passed.
    #[arg(long, short)]
    verbose: bool,
}

fn source(dir: &Option<PathBuf>) -> Result<RulesSource> {
    Ok(match dir {
        Some(d) if !d.is_dir() => bail!("--rules {}: not a directory", d.display()),
        Some(d) => RulesSource::Dir(d.clone()),
        None => RulesSource::Shipped,
    })
}

fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// `pitboss rules check`: every rule with what it reads and does, or every problem.
pub fn check(args: CheckArgs) -> Result<()> {
    let src = source(&args.rules)?;
    let what = match &args.rules {
        Some(d) => d.display().to_string(),
        None => "the shipped packs".into(),
    };
    let set = match src.load() {
        Ok(set) => set,
        Err(AntifraudError::Rules(errors)) => {
            let mut err = std::io::stderr().lock();
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            writeln!(
                err,
                "the rule set in {what} is refused: {} problem{}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            )?;
            // The list says what is wrong; the status that something is (no backtrace).
            drop(err);
            std::process::exit(1);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {what}")),
    };
    let mut out = std::io::stdout().lock();
    let d = |ms: i64| ruletest::fmt_offset(ms);
    let width = set
        .rules
        .iter()
        .map(|r| r.id.len() + r.version.to_string().len() + 2)
        .max()
        .unwrap_or(0);
    for r in &set.rules {
        let window = match (r.duration_ms, r.bucket_ms) {
            (Some(w), Some(b)) => format!("{}, {} events, buckets of {}", d(w), r.cap, d(b)),
            (Some(w), None) => format!("{}, {} events", d(w), r.cap),
            (None, _) => format!("{} events", r.cap),
        };
        let push = r.push_kind().map(|(kind, room)| {
            format!(
                "push {kind} to the {}",
                if room { "room" } else { "player" }
            )
        });
        let action = match (r.alert, push) {
            (true, Some(p)) => format!("alert + {p}"),
            (true, None) => "alert".into(),
            (false, Some(p)) => p,
            (false, None) => "nothing".into(),
        };
        writeln!(
            out,
            "{:width$}  {} {}, score {}; by {}; window {}; cooldown {}; {} ({}:{})",
            format!("{} v{}", r.id, r.version),
            name(&r.category),
            name(&r.severity),
            r.score,
            name(&r.group_by),
            window,
            if r.cooldown_ms > 0 {
                d(r.cooldown_ms)
            } else {
                "none".into()
            },
            action,
            r.file,
            r.line,
        )?;
    }
    for l in set.lists() {
        let mut held = vec![format!("{} for every tenant", l.len_global())];
        held.extend(
            l.tenants()
                .into_iter()
                .map(|(t, n)| format!("{n} for {t:?}")),
        );
        // Entries with an end: how many, and how many have ended (events now are not on them).
        let (ending, ended) = l.ending(pitboss_model::Timestamp::now().as_millis());
        if ending > 0 {
            held.push(format!("{ending} with an end, {ended} of them past"));
        }
        let readers: Vec<&str> = set
            .rules
            .iter()
            .filter(|r| r.reads_list(&l.name))
            .map(|r| r.id.as_str())
            .collect();
        writeln!(
            out,
            "list  {} ({}): {} entr{} ({}); read by {} ({}:{})",
            l.name,
            l.kind.as_str(),
            l.len(),
            if l.len() == 1 { "y" } else { "ies" },
            held.join(", "),
            if readers.is_empty() {
                "no rule".to_owned()
            } else {
                readers.join(", ")
            },
            l.file,
            l.line,
        )?;
    }
    // `[money]`: what the rules' money values are in, and which currencies convert.
    if let Some(c) = set.money.currency() {
        let rates: Vec<String> = set
            .money
            .rates()
            .iter()
            .map(|(code, rate)| format!("1 {code} = {rate} {c}"))
            .collect();
        writeln!(
            out,
            "money  values in minor units of {c}; {}; other currencies compared as written",
            if rates.is_empty() {
                "no rates".to_owned()
            } else {
                format!("converted for {}", rates.join(", "))
            }
        )?;
    }
    // Snoozes end by the engine's clock (the triggers' time); a past one silences nothing
    // live, and is listed so it can be removed.
    let now = pitboss_model::Timestamp::now();
    let mut ended = 0;
    for z in set.snoozes() {
        let past = z.until <= now;
        ended += usize::from(past);
        writeln!(
            out,
            "snooze  {} for tenant {:?}, key {:?}, until {}{}{}: {} ({}:{})",
            z.rule_id,
            z.tenant_id,
            z.key,
            z.until.to_rfc3339().unwrap_or_default(),
            match (past, set.rule(&z.rule_id).is_some()) {
                (true, false) => " (ended; its rule is no longer in the set)",
                (true, true) => " (ended)",
                _ => "",
            },
            z.by.as_deref()
                .map(|b| format!(", by {b}"))
                .unwrap_or_default(),
            z.reason,
            z.file,
            z.line,
        )?;
    }
    let snoozes = match (set.snoozes().len(), ended) {
        (0, _) => String::new(),
        (n, 0) => format!(", {n} snooze{}", if n == 1 { "" } else { "s" }),
        (n, e) => format!(", {n} snooze{} ({e} ended)", if n == 1 { "" } else { "s" }),
    };
    let lists = match set.lists().len() {
        0 => String::new(),
        n => format!(", {n} list{}", if n == 1 { "" } else { "s" }),
    };
    writeln!(
        out,
        "{what}: {} rule{}{lists}{snoozes}, ok (scoring: review at {}, block at {}, within {})",
        set.rules.len(),
        if set.rules.len() == 1 { "" } else { "s" },
        set.scoring.review,
        set.scoring.block,
        d(set.scoring.window_ms)
    )?;
    Ok(())
}

fn late(n: u64) -> String {
    format!(
        "{n} trigger{} read later than {} window, not evaluated (docs/rules.md, \"Windows\")",
        if n == 1 { "" } else { "s" },
        if n == 1 { "its" } else { "their" }
    )
}

fn snoozed(n: u64) -> String {
    format!(
        "{n} hit{} silenced by a [[snooze]] of the rule set (docs/rules.md, \"Snoozes\")",
        if n == 1 { "" } else { "s" }
    )
}

/// `pitboss rules test`: every case of every file, and a summary; fails when one does.
pub fn test(args: TestArgs) -> Result<()> {
    let fallback = source(&args.rules)?;
    let mut files = Vec::new();
    for p in &args.paths {
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
        let found = ruletest::test_files(p).with_context(|| format!("reading {}", p.display()))?;
        if found.is_empty() {
            bail!("{}: no *.toml test files", p.display());
        }
        files.extend(found);
    }
    // By rule directory, and by test file for one with lists of its own.
    let mut sets: HashMap<(Option<PathBuf>, Option<String>), Result<RuleSet, String>> =
        HashMap::new();
    let mut out = std::io::stdout().lock();
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for path in &files {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                writeln!(out, "{shown}: {e}")?;
                broken += 1;
                continue;
            }
        };
        let file = match ruletest::parse(&shown, &text) {
            Ok(f) => f,
            Err(errors) => {
                for e in errors {
                    writeln!(out, "{e}")?;
                }
                broken += 1;
                continue;
            }
        };
        let key = (
            file.rules.clone(),
            file.lists.as_ref().map(|(p, _)| p.clone()),
        );
        let set = sets.entry(key).or_insert_with(|| {
            let src = match &file.rules {
                Some(d) => RulesSource::Dir(d.clone()),
                None => fallback.clone(),
            };
            src.sources()
                .and_then(|files| file.rule_set(&files))
                .map_err(|e| e.to_string())
        });
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                let which = file
                    .rules
                    .as_ref()
                    .map_or("its rule set".to_owned(), |d| d.display().to_string());
                writeln!(out, "{shown}: {which}: {e}")?;
                broken += 1;
                continue;
            }
        };
        let unknown = ruletest::unknown_rules(&file, set);
        if !unknown.is_empty() {
            for e in unknown {
                writeln!(out, "{e}")?;
            }
            broken += 1;
            continue;
        }
        let under = match &file.rules {
            Some(d) => d.display().to_string(),
            None => match &fallback {
                RulesSource::Dir(d) => format!("{} (--rules)", d.display()),
                RulesSource::Shipped => "the shipped packs (built in)".into(),
            },
        };
        writeln!(out, "{shown}  (rules: {under})")?;
        for case in &file.cases {
            let r = ruletest::run_case(set, file.start, case);
            let hits = r.hits.len();
            if r.passed() {
                passed += 1;
                writeln!(
                    out,
                    "  ok    {} ({} event{}, {hits} hit{})",
                    r.name,
                    r.events,
                    if r.events == 1 { "" } else { "s" },
                    if hits == 1 { "" } else { "s" }
                )?;
                if r.late_triggers > 0 {
                    writeln!(out, "        note: {}", late(r.late_triggers))?;
                }
                if r.snoozed > 0 {
                    writeln!(out, "        note: {}", snoozed(r.snoozed))?;
                }
                if args.verbose {
                    for h in &r.hits {
                        writeln!(out, "        {}", h.describe())?;
                    }
                }
            } else {
                failed += 1;
                writeln!(
                    out,
                    "  FAIL  {} (line {}, {} event{}, {hits} hit{})",
                    r.name,
                    r.line,
                    r.events,
                    if r.events == 1 { "" } else { "s" },
                    if hits == 1 { "" } else { "s" }
                )?;
                for f in &r.failures {
                    writeln!(out, "        {f}")?;
                }
                if r.late_triggers > 0 {
                    writeln!(out, "        note: {}", late(r.late_triggers))?;
                }
                if r.snoozed > 0 {
                    writeln!(out, "        note: {}", snoozed(r.snoozed))?;
                }
            }
        }
    }
    writeln!(
        out,
        "{} case{}: {passed} passed, {failed} failed{}",
        passed + failed,
        if passed + failed == 1 { "" } else { "s" },
        if broken > 0 {
            format!(
                "; {broken} file{} refused",
                if broken == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    )?;
    out.flush()?;
    if failed > 0 || broken > 0 {
        // The summary above says what failed; the status says that something did.
        drop(out);
        std::process::exit(1);
    }
    Ok(())
}
