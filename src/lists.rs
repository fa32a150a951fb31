//! `pitboss rules list add|remove`: values put on or taken off a `[[list]]` of a rules
//! directory, in its `lists.toml` (comments and layout kept), once the whole set with the
//! change loads (docs/rules.md, "Lists").

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pitboss_antifraud::lists::{canonical, check_value};
use pitboss_antifraud::{AntifraudError, RuleSet};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// The file of a rules directory these commands write.
pub const LISTS_FILE: &str = "lists.toml";

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Put values on a list (for one tenant with --tenant, else for every tenant).
    Add(ListArgs),
    /// Take values off a list: from the blocks of lists.toml of that list and tenant.
    Remove(ListArgs),
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
    match cmd {
        ListCommand::Add(a) => change(a, true),
        ListCommand::Remove(a) => change(a, false),
    }
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

fn change(args: ListArgs, add: bool) -> Result<()> {
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
    let wanted = values(&args)?;
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
    for v in &wanted {
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
            .map(|a| a.iter().filter_map(Value::as_str).map(same).collect())
            .unwrap_or_default()
    };
    let scope = match &args.tenant {
        Some(t) => format!("tenant {t:?}"),
        None => "every tenant".to_owned(),
    };
    let said = if add {
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
        if new.is_empty() {
            println!(
                "list {} already holds {} for {scope} in {name}: nothing to write",
                args.list,
                if wanted.len() == 1 {
                    format!("{:?}", wanted[0])
                } else {
                    format!("these {} values", wanted.len())
                }
            );
            return Ok(());
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
            values.push_formatted(Value::from(v.as_str()).decorated("\n  ", ""));
        }
        close(values);
        format!(
            "added {} value{} to list {} for {scope}{}: {name}",
            new.len(),
            if new.len() == 1 { "" } else { "s" },
            args.list,
            if there > 0 {
                format!(" ({there} listed already)")
            } else {
                String::new()
            }
        )
    } else {
        let drop: std::collections::HashSet<String> = wanted.iter().map(|v| same(v)).collect();
        let mut removed = std::collections::HashSet::new();
        for t in blocks.iter_mut().filter(|t| ours(t)) {
            if let Some(values) = t.get_mut("values").and_then(Item::as_array_mut) {
                let before = values.len();
                values.retain(|v| match v.as_str().map(same) {
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
             # \"Lists\"). Written by `pitboss rules list add|remove`; edit by hand if you like.\n\n{doc}"
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
    crate::snooze::write_atomically(&args.rules, &path, &text)?;
    println!("{said}");
    if !add {
        // Taken off here, still on there: another file's block, or one for every tenant.
        let tenant = args.tenant.as_deref().unwrap_or("");
        let still: Vec<String> = changed
            .lists()
            .iter()
            .find(|l| l.name == args.list)
            .map(|l| {
                wanted
                    .iter()
                    .filter(|v| l.holds(tenant, v))
                    .map(|v| format!("{v:?}"))
                    .collect()
            })
            .unwrap_or_default();
        if !still.is_empty() {
            println!(
                "still on list {} for {scope}: {} (listed by another block: another file's, or \
                 one for every tenant; `pitboss rules check` says where the list is declared)",
                args.list,
                still.join(", ")
            );
        }
    }
    println!(
        "an engine running {} (`pitboss antifraud`, `pitboss up`) takes it on its next reload \
         (within about 4 s by default: it loads a change two checks 2 s apart agree on); a \
         Lambda's bundled rules, on its next deploy. Events are judged against the lists as they \
         arrive",
        args.rules.display()
    );
    Ok(())
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
