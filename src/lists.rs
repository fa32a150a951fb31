//! `pitboss rules list add|remove`: values put on or taken off a `[[list]]` of a rules
//! directory, in its `lists.toml` (comments and layout kept), once the whole set with the
//! change loads (docs/rules.md, "Lists").

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pitboss_antifraud::lists::{NamedList, canonical, check_value};
use pitboss_antifraud::{AntifraudError, RuleSet};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// The file of a rules directory these commands write.
pub const LISTS_FILE: &str = "lists.toml";

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Put values on a list (for one tenant with --tenant, else for every tenant), for ever or
    /// with --for / --until for events before a time.
    Add(AddArgs),
    /// Take values off a list: from the blocks of lists.toml of that list and tenant.
    Remove(ListArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    list: ListArgs,
    /// Listed for events within this long from now: 30m, 12h, 30d… (else for ever).
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
    duration: Option<String>,
    /// Listed for events before this time (RFC 3339), instead of --for.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The rules directory the engine runs (`pitboss antifraud --rules`, `pitboss up
    /// --rules`); the change is written to its lists.toml.
    #[arg(long, env = "PITBOSS_RULES")]
    rules: PathBuf,
    /// The list: a `[[list]]` name the set declares (`blocked_devices`, `blocked_ips`…).
    #[arg(long)]
    list: String,
    /// The tenant whose events the values hold for; without it, every tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// Values read from a file too, one a line (`#` comments and blank lines left out; `-`:
    /// standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The values (devices, addresses or networks, payment instruments…).
    values: Vec<String>,
}

pub fn run(cmd: ListCommand) -> Result<()> {
    let (args, until) = match cmd {
        ListCommand::Add(a) => {
            let until = end(
                a.duration.as_deref(),
                a.until.as_deref(),
                ("--for", "--until"),
            )?;
            (a.list, Some(until))
        }
        ListCommand::Remove(a) => (a, None),
    };
    let values = values(&args)?;
    let said = change(
        &Change {
            rules: args.rules,
            list: args.list,
            tenant: args.tenant,
            values,
            max_tenant_entries: None,
        },
        until,
    )?;
    for line in said {
        println!("{line}");
    }
    Ok(())
}

/// A change to one list of a rules directory: what `pitboss rules list add|remove` and the
/// gateway's `POST /v1/lists/{list}/add|remove` (docs/gateway.md, "Lists") ask for.
#[derive(Debug, Clone)]
pub struct Change {
    pub rules: PathBuf,
    pub list: String,
    /// `None`: for every tenant.
    pub tenant: Option<String>,
    pub values: Vec<String>,
    /// The most entries the tenant may hold in the set's lists after the change (the gateway's
    /// bound, so that one tenant cannot fill the set's 1,000,000 for all); `None`: the set's
    /// bound alone.
    pub max_tenant_entries: Option<usize>,
}

/// The end a duration (`30d`) or a time (RFC 3339) gives, as it is written in the file, or
/// `None`: for ever. `names` are what the caller calls the two (`--for`, `--until`).
pub fn end(
    duration: Option<&str>,
    until: Option<&str>,
    names: (&str, &str),
) -> Result<Option<String>> {
    if duration.is_none() && until.is_none() {
        return Ok(None);
    }
    let at = crate::snooze::until(duration, until, names, "list nothing")?;
    Ok(crate::snooze::rfc3339(at))
}

/// A value of a `values` array: a string, or `{ value = …, until = … }` (its end as written).
fn entry(v: &Value) -> Option<(&str, Option<String>)> {
    match v {
        Value::String(s) => Some((s.value(), None)),
        Value::InlineTable(t) => Some((
            t.get("value")?.as_str()?,
            Some(t.get("until").map(|u| match u {
                Value::String(s) => s.value().clone(),
                other => other.to_string().trim().to_owned(),
            })?),
        )),
        _ => None,
    }
}

/// `{ value = "v", until = <until> }`, the end a TOML date-time.
fn ending(v: &str, until: &str) -> Result<Value> {
    let mut t = toml_edit::InlineTable::new();
    t.insert("value", Value::from(v));
    let at: toml_edit::Datetime = until
        .parse()
        .with_context(|| format!("{until} as a TOML date-time"))?;
    t.insert("until", Value::from(at));
    Ok(Value::InlineTable(t))
}

fn values(args: &ListArgs) -> Result<Vec<String>> {
    let mut out = args.values.clone();
    if let Some(path) = &args.file {
        let read: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?,
            ))
        };
        for line in read.lines() {
            let line = line.with_context(|| format!("--file {}", path.display()))?;
            let v = line.trim();
            if !v.is_empty() && !v.starts_with('#') {
                out.push(v.to_owned());
            }
        }
    }
    if out.is_empty() {
        bail!("no values: give them after the options, or --file");
    }
    Ok(out)
}

/// Writes a change to the directory's lists.toml once the whole set with it loads; the lines
/// returned say what was done. `until`: `None` to remove, `Some(None)` to add for ever,
/// `Some(Some(end))` until `end` (RFC 3339, [`end`]).
pub fn change(args: &Change, until: Option<Option<String>>) -> Result<Vec<String>> {
    let add = until.is_some();
    if args.values.is_empty() {
        bail!("no values: give them after the options, or --file");
    }
    let until = until.flatten();
    if !args.rules.is_dir() {
        bail!(
            "--rules {}: not a directory (lists live beside the rules an engine runs: copy the \
             shipped packs, rules/, and run the engine with --rules DIR)",
            args.rules.display()
        );
    }
    if let Some(t) = &args.tenant
        && let Some(v) = pitboss_model::validate::id_violation(
            "tenant",
            t,
            pitboss_model::validate::MAX_TENANT_ID,
        )
    {
        bail!("--tenant {}", v.message);
    }
    let wanted = &args.values;
    let _lock = crate::snooze::lock_beside(&args.rules, LISTS_FILE)?;
    let mut sources =
        RuleSet::read_dir(&args.rules).map_err(|e| crate::snooze::refused(&args.rules, e))?;
    let set =
        RuleSet::from_sources(&sources).map_err(|e| crate::snooze::refused(&args.rules, e))?;
    let lists = set.lists();
    let Some(list) = lists.iter().find(|l| l.name == args.list) else {
        let names: Vec<&str> = lists.iter().map(|l| l.name.as_str()).collect();
        bail!(
            "the rule set in {} has no list {:?}{}: a list is declared by a [[list]] block beside \
             the rules that read it (docs/rules.md, \"Lists\")",
            args.rules.display(),
            args.list,
            if names.is_empty() {
                String::new()
            } else {
                format!("; its lists are {}", names.join(", "))
            }
        );
    };
    let mut bad = Vec::new();
    for v in wanted {
        if let Err(e) = check_value(list.kind, v) {
            bad.push(format!("  {e}"));
        }
    }
    if !bad.is_empty() {
        bail!(
            "list {} ({}) cannot hold {} of these values; nothing is written:\n{}",
            args.list,
            list.kind.as_str(),
            bad.len(),
            bad.join("\n")
        );
    }

    let path = args.rules.join(LISTS_FILE);
    let name = path.display().to_string();
    let old = match sources.iter().position(|(n, _)| Path::new(n) == path) {
        Some(i) => sources.remove(i).1,
        None => String::new(),
    };
    let mut doc: DocumentMut = old
        .parse()
        .with_context(|| format!("{name} is not TOML; fix it first"))?;
    let blocks = match doc
        .entry("list")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
    {
        Item::ArrayOfTables(a) => a,
        _ => bail!("{name}: its `list` is not [[list]] blocks; write them as [[list]] first"),
    };
    let ours = |t: &Table| {
        t.get("name").and_then(Item::as_str) == Some(args.list.as_str())
            && t.get("tenant").and_then(Item::as_str) == args.tenant.as_deref()
    };
    // Values compare as the list reads them: `2001:0DB8::1` is `2001:db8::1`.
    let same = |v: &str| canonical(list.kind, v).unwrap_or_else(|| v.to_owned());
    let held = |t: &Table| -> Vec<String> {
        t.get("values")
            .and_then(Item::as_array)
            .map(|a| a.iter().filter_map(entry).map(|(v, _)| same(v)).collect())
            .unwrap_or_default()
    };
    let scope = match &args.tenant {
        Some(t) => format!("tenant {t:?}"),
        None => "every tenant".to_owned(),
    };
    let said = if add {
        // Values already in these blocks get the end asked for (or lose theirs): one entry a
        // value, as `pitboss rules check` counts it.
        let mut changed = 0usize;
        for t in blocks.iter_mut().filter(|t| ours(t)) {
            let Some(values) = t.get_mut("values").and_then(Item::as_array_mut) else {
                continue;
            };
            for v in values.iter_mut() {
                let Some((value, end)) = entry(v) else {
                    continue;
                };
                if !wanted.iter().any(|w| same(w) == same(value)) || end == until {
                    continue;
                }
                let decor = v.decor().clone();
                let mut new = match &until {
                    Some(u) => ending(value, u)?,
                    None => Value::from(value),
                };
                *new.decor_mut() = decor;
                *v = new;
                changed += 1;
            }
        }
        let already: std::collections::HashSet<String> =
            blocks.iter().filter(|t| ours(t)).flat_map(held).collect();
        let mut seen = std::collections::HashSet::new();
        let new: Vec<&String> = wanted
            .iter()
            .filter(|v| {
                let v = same(v);
                !already.contains(&v) && seen.insert(v)
            })
            .collect();
        let there = wanted.len() - new.len();
        if new.is_empty() && changed == 0 {
            return Ok(vec![format!(
                "list {} already holds {} for {scope} in {name}: nothing to write",
                args.list,
                if wanted.len() == 1 {
                    format!("{:?}", wanted[0])
                } else {
                    format!("these {} values", wanted.len())
                }
            )]);
        }
        if !blocks.iter().any(&ours) {
            let mut t = Table::new();
            t.insert("name", toml_edit::value(args.list.as_str()));
            if list.kind == pitboss_antifraud::lists::ListKind::Ip {
                t.insert("kind", toml_edit::value("ip"));
            }
            if let Some(tenant) = &args.tenant {
                t.insert("tenant", toml_edit::value(tenant.as_str()));
            }
            t.insert("values", Item::Value(Value::Array(Array::new())));
            blocks.push(t);
        }
        let block = blocks
            .iter_mut()
            .find(|t| ours(t))
            .context("the list's block")?;
        let Some(values) = block.get_mut("values").and_then(Item::as_array_mut) else {
            bail!(
                "{name}: a [[list]] block of {} for {scope} has no `values` array",
                args.list
            );
        };
        for v in &new {
            // A value a line; the values already there keep their layout and comments.
            let value = match &until {
                Some(u) => ending(v, u)?,
                None => Value::from(v.as_str()),
            };
            values.push_formatted(value.decorated("\n  ", ""));
        }
        close(values);
        let mut lines = Vec::new();
        if !new.is_empty() {
            lines.push(format!(
                "added {} value{} to list {} for {scope}{}{}: {name}",
                new.len(),
                if new.len() == 1 { "" } else { "s" },
                args.list,
                match &until {
                    Some(u) => format!(", for events before {u}"),
                    None => String::new(),
                },
                if there > changed {
                    format!(" ({} listed already)", there - changed)
                } else {
                    String::new()
                }
            ));
        }
        if changed > 0 {
            lines.push(format!(
                "{changed} value{} of list {} for {scope} listed already now {}: {name}",
                if changed == 1 { "" } else { "s" },
                args.list,
                match (&until, changed) {
                    (Some(u), 1) => format!("ends at {u}"),
                    (Some(u), _) => format!("end at {u}"),
                    (None, 1) => "ends no more".to_owned(),
                    (None, _) => "end no more".to_owned(),
                }
            ));
        }
        lines.join("\n")
    } else {
        let drop: std::collections::HashSet<String> = wanted.iter().map(|v| same(v)).collect();
        let mut removed = std::collections::HashSet::new();
        for t in blocks.iter_mut().filter(|t| ours(t)) {
            if let Some(values) = t.get_mut("values").and_then(Item::as_array_mut) {
                let before = values.len();
                values.retain(|v| match entry(v).map(|(v, _)| same(v)) {
                    Some(s) if drop.contains(&s) => {
                        removed.insert(s);
                        false
                    }
                    _ => true,
                });
                if values.len() != before {
                    close(values);
                }
            }
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|v| !removed.contains(&same(v)))
            .collect();
        let elsewhere: Vec<&&String> = missing
            .iter()
            .filter(|v| list.holds(args.tenant.as_deref().unwrap_or(""), v))
            .collect();
        if removed.is_empty() {
            bail!(
                "list {} holds none of these values for {scope} in {name}{}; nothing is written",
                args.list,
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} still listed by another file of the set, or for every tenant: \
                         `pitboss rules check` says where each list is declared)",
                        elsewhere
                            .iter()
                            .map(|v| format!("{v:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
        }
        let mut said = format!(
            "removed {} value{} from list {} for {scope}: {name}",
            removed.len(),
            if removed.len() == 1 { "" } else { "s" },
            args.list
        );
        if !missing.is_empty() {
            said.push_str(&format!(
                "\nnot in {name} for {scope}, left as they are: {}",
                missing
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        said
    };

    let text = if old.is_empty() {
        format!(
            "# Values of the rule set's lists, per tenant or for every tenant (docs/rules.md,\n\
             # \"Lists\"). Written by `pitboss rules list add|remove` and the gateway's\n\
             # POST /v1/lists/…/add|remove (docs/gateway.md); edit by hand if you like.\n\n{doc}"
        )
    } else {
        doc.to_string()
    };
    sources.push((name.clone(), text.clone()));
    sources.sort();
    let changed = RuleSet::from_sources(&sources).map_err(|e| match e {
        AntifraudError::Rules(errors) => anyhow::anyhow!(
            "the change is refused; {name} is left as it was:\n{}",
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        other => other.into(),
    })?;
    if let (Some(most), Some(tenant)) = (args.max_tenant_entries, &args.tenant) {
        let held: usize = changed
            .lists()
            .iter()
            .flat_map(|l| l.tenants())
            .filter(|(t, _)| t == tenant)
            .map(|(_, n)| n)
            .sum();
        if held > most && add {
            bail!(
                "tenant {tenant:?} would hold {held} list entries, past the {most} a tenant may \
                 hold through the gateway (the set's lists hold {MAX_LIST_ENTRIES} for all \
                 tenants); nothing is written: remove some, or add them where the rules are \
                 (pitboss rules list add)",
                MAX_LIST_ENTRIES = pitboss_antifraud::rules::MAX_LIST_ENTRIES,
            );
        }
    }
    crate::snooze::write_atomically(&args.rules, &path, &text)?;
    let mut lines = vec![said];
    // A value another block keeps on the list: past the end given here (for ever, or until
    // later), or after it was taken off here.
    let tenant = args.tenant.as_deref().unwrap_or("");
    let still = |on: &dyn Fn(&NamedList, &str) -> bool| -> String {
        changed
            .lists()
            .iter()
            .find(|l| l.name == args.list)
            .map(|l| {
                wanted
                    .iter()
                    .filter(|v| on(l, v))
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let (longer, how) = match (add, until.as_deref()) {
        (false, _) => (still(&|l, v| l.holds(tenant, v)), ""),
        (true, Some(u)) => match pitboss_model::Timestamp::parse_rfc3339(u) {
            Ok(end) => (
                still(&|l, v| l.contains(tenant, v, end.as_millis())),
                " after that",
            ),
            Err(_) => (String::new(), ""),
        },
        (true, None) => (String::new(), ""),
    };
    if !longer.is_empty() {
        lines.push(format!(
            "still on list {} for {scope}{how}: {longer} (listed {}by another block: another \
             file's, or one for every tenant; `pitboss rules check` says where the list is \
             declared)",
            args.list,
            if add { "for ever or until later " } else { "" },
        ));
    }
    lines.push(format!(
        "an engine running {} (`pitboss antifraud`, `pitboss up`) takes it on its next reload \
         (within about 4 s by default: it loads a change two checks 2 s apart agree on); a \
         Lambda's bundled rules, on its next deploy. Events are judged against the lists as they \
         arrive",
        args.rules.display()
    ));
    Ok(lines)
}

/// Ends an array laid out a value a line: a trailing comma and the bracket on its own line
/// (none for an empty one).
fn close(values: &mut Array) {
    // A comment after the last value (`# "b", disabled`) stays.
    if !values.trailing().as_str().is_some_and(|t| t.contains('#')) {
        values.set_trailing(if values.is_empty() { "" } else { "\n" });
    }
    values.set_trailing_comma(!values.is_empty());
}
