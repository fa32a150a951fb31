//! `pitboss rules snooze`: a rule silenced for one group value (a player, a device, an
//! address…) of a tenant until a time, written as a `[[snooze]]` to the rules directory's
//! `snoozes.toml` once the whole set with it loads (docs/rules.md, "Snoozes").

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use pitboss_antifraud::{AntifraudError, RuleSet, SNOOZES_FILE};
use pitboss_model::Timestamp;

#[derive(Debug, Args)]
pub struct SnoozeArgs {
    /// The rules directory the engine runs (`pitboss antifraud --rules`, `pitboss up
    /// --rules`); the snooze is added to its snoozes.toml.
    #[arg(long, env = "PITBOSS_RULES")]
    rules: PathBuf,
    /// The alert whose rule to silence for its group value (its player, device, address…),
    /// read from the store.
    #[arg(long, required_unless_present = "rule", conflicts_with_all = ["rule", "key"])]
    alert: Option<String>,
    /// The rule to silence (with --tenant and --key), instead of --alert.
    #[arg(long, requires_all = ["tenant", "key"])]
    rule: Option<String>,
    /// The group value: the alert's `group_key` (a player id for rules grouped by player).
    #[arg(long)]
    key: Option<String>,
    /// The tenant; with --alert, needed only when alerts of several tenants have its id.
    #[arg(long)]
    tenant: Option<String>,
    /// For how long from now: 30m, 12h, 30d…
    #[arg(
        long = "for",
        value_name = "DURATION",
        required_unless_present = "until",
        conflicts_with = "until"
    )]
    duration: Option<String>,
    /// Until this time (RFC 3339), instead of --for.
    #[arg(long)]
    until: Option<String>,
    /// Why (kept with the snooze, for whoever reads the set next).
    #[arg(long)]
    reason: String,
    /// Who decided it (an operator id).
    #[arg(long)]
    by: Option<String>,
    /// Where --alert is read from.
    #[command(flatten)]
    store: crate::backtest::StoreArgs,
}

/// What a snooze names.
pub(crate) struct Target {
    pub tenant: String,
    pub rule: String,
    pub key: String,
    /// `player`, `device`… when known (from the alert).
    pub group_by: Option<String>,
    pub alert: Option<String>,
}

pub async fn snooze(args: SnoozeArgs) -> Result<()> {
    if !args.rules.is_dir() {
        bail!(
            "--rules {}: not a directory (snoozes live beside the rules an engine runs: copy the \
             shipped packs, rules/, and run the engine with --rules DIR)",
            args.rules.display()
        );
    }
    let until = until(
        args.duration.as_deref(),
        args.until.as_deref(),
        ("--for", "--until"),
        "silence nothing",
    )?;
    let target = target(&args).await?;
    for line in write(
        &args.rules,
        &target,
        until,
        &args.reason,
        args.by.as_deref(),
        None,
    )? {
        println!("{line}");
    }
    Ok(())
}

/// The end a duration (`30d`, from now, rounded up to the second: a time someone reads and
/// edits) or a time (RFC 3339) gives; `names` are what the caller calls the two (`--for`,
/// `--until`), `nothing` what an end already past would do (`silence nothing`). One of the two
/// is needed unless the caller handles neither first.
pub(crate) fn until(
    duration: Option<&str>,
    until: Option<&str>,
    names: (&str, &str),
    nothing: &str,
) -> Result<Timestamp> {
    let (for_, until_) = names;
    let now = Timestamp::now();
    let until = match (duration, until) {
        (Some(_), Some(_)) => bail!("{for_} or {until_}, not both"),
        (Some(d), _) => {
            let ms = pitboss_antifraud::duration::parse_duration_ms(d)
                .map_err(|e| anyhow::anyhow!("{for_} {d:?}: {e}"))?;
            if ms <= 0 {
                bail!("{for_} {d:?}: must be longer than 0");
            }
            let at = now.as_millis().saturating_add(ms);
            Timestamp::from_millis(at.saturating_add((1000 - at.rem_euclid(1000)) % 1000))
        }
        (None, Some(u)) => Timestamp::parse_rfc3339(u).map_err(|e| {
            anyhow::anyhow!(
                "{until_} {u:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): {e}"
            )
        })?,
        (None, None) => bail!("give {for_} or {until_}"),
    };
    let Some(text) = rfc3339(until) else {
        bail!("{for_} or {until_}: past the year 9999");
    };
    if until <= now {
        bail!("{until_} {text}: already past, it would {nothing}");
    }
    Ok(until)
}

/// `t` as written in a rules file: RFC 3339, whole seconds without a fraction; `None` past the
/// year 9999.
pub(crate) fn rfc3339(t: Timestamp) -> Option<String> {
    t.to_rfc3339()
        .filter(|_| t.as_millis() < MAX_UNTIL_MS)
        .map(|text| text.replace(".000Z", "Z"))
}

/// Adds a `[[snooze]]` of `target` until `until` to the directory's snoozes.toml once the whole
/// set with it loads (under the file's lock, replaced atomically); the lines returned say what
/// was done.
pub(crate) fn write(
    rules: &Path,
    target: &Target,
    until: Timestamp,
    reason: &str,
    by: Option<&str>,
    max_tenant_snoozes: Option<usize>,
) -> Result<Vec<String>> {
    let Some(until_text) = rfc3339(until) else {
        bail!("the end is past the year 9999");
    };
    // One writer at a time: two operators snoozing at once would each write the file as they
    // read it, and one snooze would be lost.
    let lock = lock_beside(rules, SNOOZES_FILE)?;

    let mut sources = RuleSet::read_dir(rules).map_err(|e| refused(rules, e))?;
    if let Err(e) = RuleSet::from_sources(&sources) {
        return Err(refused(rules, e));
    }
    let path = rules.join(SNOOZES_FILE);
    let name = path.display().to_string();
    let old = match sources.iter().position(|(n, _)| Path::new(n) == path) {
        Some(i) => sources.remove(i).1,
        None => String::new(),
    };
    let mut text = if old.is_empty() {
        "# Snoozes: rules silenced for one group value of a tenant until a time (docs/rules.md,\n\
         # \"Snoozes\"). Written by `pitboss rules snooze`; edit a block's `until` to change it,\n\
         # delete the block to end it.\n"
            .to_owned()
    } else {
        old.clone()
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    let line = text.lines().count() + 1;
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    text.push_str("[[snooze]]\n");
    text.push_str(&format!("rule = {}\n", q(&target.rule)));
    text.push_str(&format!("tenant = {}\n", q(&target.tenant)));
    text.push_str(&format!("key = {}\n", q(&target.key)));
    text.push_str(&format!("until = {}\n", q(&until_text)));
    text.push_str(&format!("reason = {}\n", q(reason)));
    if let Some(by) = by {
        text.push_str(&format!("by = {}\n", q(by)));
    }
    if let Some(alert) = &target.alert {
        text.push_str(&format!("alert = {}\n", q(alert)));
    }
    sources.push((name.clone(), text.clone()));
    sources.sort();
    let set = RuleSet::from_sources(&sources).map_err(|e| match e {
        AntifraudError::Rules(errors) => anyhow::anyhow!(
            "the snooze is refused; {} is left as it was:\n{}{}",
            name,
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
            if errors.iter().any(|e| e.reason.contains("is already snoozed")) {
                "\n(to lengthen or shorten it, edit that snooze's `until`; delete its block to end it)"
            } else {
                ""
            }
        ),
        other => other.into(),
    })?;
    if let Some(most) = max_tenant_snoozes {
        // Ended ones count too: they stay in the file (and are read at every reload) until
        // someone deletes their blocks.
        let held = set
            .snoozes()
            .iter()
            .filter(|z| z.tenant_id == target.tenant)
            .count();
        if held > most {
            bail!(
                "tenant {:?} would hold {held} snoozes in the rule set (ended ones count until \
                 their blocks are deleted), past the {most} a tenant may hold through the \
                 gateway; nothing is written: ask whoever keeps the rules directory to delete \
                 ended ones",
                target.tenant
            );
        }
    }
    write_atomically(rules, &path, &text)?;
    drop(lock);
    let what = match &target.group_by {
        Some(g) => format!("{g} {:?}", target.key),
        None => format!("key {:?}", target.key),
    };
    Ok(vec![
        format!(
            "snoozed {} for tenant {:?}, {what}, until {until_text}: {name}:{line}",
            target.rule, target.tenant,
        ),
        format!(
            "an engine running {} takes it on its next reload (within about 4 s: it loads a \
             change two checks 2 s apart agree on)",
            rules.display()
        ),
    ])
}

/// Takes the lock of `file` of the rules directory `dir` (a hidden file beside it): the
/// commands that rewrite a file of the set take turns.
pub(crate) fn lock_beside(dir: &Path, file: &str) -> Result<std::fs::File> {
    let lock_path = dir.join(format!(".{file}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(lock)
}

/// A rule set that does not load as it is, before any change: not the asker's doing.
#[derive(Debug)]
pub(crate) struct SetRefused(String);

impl std::fmt::Display for SetRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetRefused {}

pub(crate) fn refused(dir: &Path, e: AntifraudError) -> anyhow::Error {
    match e {
        AntifraudError::Rules(errors) => anyhow::Error::new(SetRefused(format!(
            "the rule set in {} is refused as it is; fix it first:\n{}",
            dir.display(),
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
        other => anyhow::Error::from(other).context(format!("reading {}", dir.display())),
    }
}

/// The rule, tenant and key: given, or read from the stored alert.
async fn target(args: &SnoozeArgs) -> Result<Target> {
    let Some(id) = &args.alert else {
        return Ok(Target {
            tenant: args.tenant.clone().unwrap_or_default(),
            rule: args.rule.clone().unwrap_or_default(),
            key: args.key.clone().unwrap_or_default(),
            group_by: None,
            alert: None,
        });
    };
    let tenant = args.tenant.as_deref();
    let (origins, at) = match args.store.embedded()? {
        Some(path) => (
            pitboss_processor::sqlite::alert_origins(&path, id, tenant)
                .with_context(|| format!("reading alert {id} from {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let Some(stored) = args.store.clickhouse()? else {
                bail!("give --data-dir (the embedded store) or --clickhouse-url");
            };
            let origins = stored
                .ask(
                    pitboss_processor::sink::alert_origins(&stored.client, id, tenant),
                    &format!("reading alert {id}"),
                )
                .await?;
            (origins, "ClickHouse".to_owned())
        }
    };
    let mut tenants: Vec<&str> = origins.iter().map(|o| o.tenant_id.as_str()).collect();
    tenants.dedup();
    match (origins.first(), tenants.len()) {
        (None, _) => bail!(
            "no alert {id}{} in {at}",
            tenant
                .map(|t| format!(" of tenant {t:?}"))
                .unwrap_or_default()
        ),
        (Some(o), 1) => Ok(Target {
            tenant: o.tenant_id.clone(),
            rule: o.rule_id.clone(),
            key: o.group_key.clone(),
            group_by: Some(o.group_by.clone()),
            alert: Some(id.clone()),
        }),
        (Some(_), _) => bail!(
            "alerts of several tenants have the id {id} ({}): give --tenant",
            tenants.join(", ")
        ),
    }
}

/// 10000-01-01T00:00:00Z: RFC 3339 has four digits for the year.
pub(crate) const MAX_UNTIL_MS: i64 = 253_402_300_800_000;

/// Writes `text` to `path` in `dir` so that a reader sees the old file or the new one, never a
/// part (an engine reloading meanwhile), with the old file's permissions, and the new one
/// survives a power cut.
pub(crate) fn write_atomically(dir: &Path, path: &Path, text: &str) -> Result<()> {
    // Hidden: the loader leaves it out while it exists.
    let file = path
        .file_name()
        .map_or_else(|| SNOOZES_FILE.into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Ok(old) = std::fs::metadata(path) {
            f.set_permissions(old.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))?;
    // The rename made durable; the file is in place whatever this says.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        eprintln!(
            "warning: {} is written, but syncing {} failed ({e}): a power cut now could undo it",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}
