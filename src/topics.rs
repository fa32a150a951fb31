//! `pitboss topics`: every topic the Pitboss roles read and write, created where missing and
//! checked where present — what `pitboss up` does for itself, for a bus whose brokers do not
//! create topics on first use (MSK, compose's cluster: `auto.create.topics.enable=false`).
//! Idempotent, so several processes may run it at once (every task of a deployment on MSK does
//! as it starts); each topic is reported `created` by the one run that made it.

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use clap::Args;
use pitboss_bus::Bus;
use pitboss_model::live::{Alert, AlertAck, Delivery, LiveMessage, Push};

use crate::{BusArgs, BusKind, check_companion, check_copartitioned};

#[derive(Debug, Args)]
pub(crate) struct TopicsArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// Partitions of the keyed topics (events and their overflow, alerts, pushes, deliveries,
    /// acks, presence; Kinesis: shards); dead-letter topics get one. On Kafka the replication
    /// factor and `min.insync.replicas` are the brokers' defaults. A topic that exists keeps
    /// what it has. Without it: the partitions of `events` when it exists (the topics read
    /// beside it must match it: `pitboss up` makes 8), else 12.
    #[arg(long, env = "PITBOSS_PARTITIONS",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    partitions: Option<u32>,
    /// Prefix of every topic name (as `pitboss up --topic-prefix`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Leave out the rules engine's compacted state topic (`antifraud_state`, Kafka only).
    #[arg(long)]
    no_state_topic: bool,
    /// Kinesis only: how long the streams it makes keep their records, hours (24 to 8760;
    /// Kinesis makes them with 24, which a processor stopped over a weekend outlives). The
    /// terraform module's `retention_hours` is 168 too. Streams that exist keep theirs.
    #[arg(long, env = "PITBOSS_RETENTION_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u32).range(24..=8760))]
    retention_hours: u32,
}

/// What one topic is for, and how it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Keyed by `tenant:player` (or room): `--partitions`.
    Keyed,
    /// Where a reader puts what it cannot handle: one partition.
    DeadLetter,
    /// The rules engine's state changelog: one partition, compacted.
    Compacted,
}

/// The topics, in the order they are made (events first: the overflow is checked against it).
fn topics(prefix: &str, state_topic: bool) -> Vec<(String, Kind)> {
    let named = |t: &str| format!("{prefix}{t}");
    // What the processor stores; each has a dead-letter topic.
    let stored = [
        "events",
        "events_overflow",
        Alert::TOPIC,
        Push::TOPIC,
        Delivery::TOPIC,
        AlertAck::TOPIC,
    ];
    let mut out: Vec<(String, Kind)> = stored.iter().map(|t| (named(t), Kind::Keyed)).collect();
    out.push((named("presence"), Kind::Keyed));
    // Hits between split rules engines (`pitboss antifraud --shard i/N`), co-partitioned with
    // the events.
    out.push((named("antifraud_forwards"), Kind::Keyed));
    out.extend(
        stored
            .iter()
            .map(|t| (named(&format!("{t}_dead_letter")), Kind::DeadLetter)),
    );
    out.push((named("antifraud_dead_letter"), Kind::DeadLetter));
    if state_topic {
        out.push((named("antifraud_state"), Kind::Compacted));
    }
    out
}

pub(crate) async fn run(args: TopicsArgs) -> Result<()> {
    let TopicsArgs {
        bus: bus_args,
        partitions,
        prefix,
        no_state_topic,
        retention_hours,
    } = args;
    let retention = matches!(bus_args.kind, BusKind::Kinesis).then_some(retention_hours);
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!("--prefix {prefix:?}: topic names take a-z, A-Z, 0-9, '.', '_' and '-' only");
    }
    // Only Kafka compacts (Kinesis and the embedded log have no state topic to make).
    let state_topic = matches!(bus_args.kind, BusKind::Kafka) && !no_state_topic;
    let spec = bus_args.spec()?;
    let bus = spec.open().await?;
    // New topics match the events topic that is there (the overflow and the forwards topic
    // are read beside it, partition by partition).
    let partitions = match partitions {
        Some(n) => n,
        None => match bus.partition_count(&format!("{prefix}events")).await {
            Ok(n) if n > 0 => n,
            Ok(_) | Err(pitboss_bus::BusError::UnknownTopic(_)) => 12,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "looking up topic {prefix}events (its partitions size the new topics)"
                )));
            }
        },
    };
    for (topic, kind) in topics(&prefix, state_topic) {
        let line = ensure(&*bus, &topic, kind, partitions, retention).await?;
        // Not `println!`: a closed stdout (`pitboss topics | head -3`) must not stop the run
        // half way through the topics.
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    let events = format!("{prefix}events");
    check_copartitioned(&*bus, &events, &format!("{events}_overflow")).await?;
    check_companion(
        &*bus,
        &events,
        &format!("{prefix}antifraud_forwards"),
        pitboss_antifraud::stream::FORWARDS_COPARTITIONED,
    )
    .await?;
    Ok(())
}

/// Creates `topic` unless it exists; returns the line that says which, and its partitions
/// (`created` only from the run that made it: another run at the same time says `exists`).
async fn ensure(
    bus: &dyn Bus,
    topic: &str,
    kind: Kind,
    partitions: u32,
    retention: Option<u32>,
) -> Result<String> {
    let want = match kind {
        Kind::Keyed => partitions,
        Kind::DeadLetter | Kind::Compacted => 1,
    };
    let made = if kind == Kind::Compacted {
        // Creates it, or checks that the one there has one partition and compacts.
        bus.create_compacted_topic(topic)
            .await
            .with_context(|| format!("state topic {topic}"))?
    } else {
        bus.create_topic_if_missing(topic, want)
            .await
            .with_context(|| format!("creating topic {topic}"))?
    };
    let note = if kind == Kind::Compacted {
        ", compacted"
    } else {
        ""
    };
    if made {
        let kept = match retention {
            Some(hours) => {
                bus.set_retention_hours(topic, hours)
                    .await
                    .with_context(|| format!("setting the retention of {topic}"))?;
                format!(", {hours} h")
            }
            None => String::new(),
        };
        return Ok(format!(
            "created {topic} ({want} partition{}{note}{kept})",
            plural(want)
        ));
    }
    let n = match bus.partition_count(topic).await {
        Ok(n) => n,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("looking up topic {topic}")));
        }
    };
    Ok(if n == want || kind != Kind::Keyed {
        format!("exists  {topic} ({n} partition{}{note})", plural(n))
    } else {
        format!(
            "exists  {topic} ({n} partition{}, kept; --partitions {want} applies to new topics)",
            plural(n)
        )
    })
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_a_role_reads_or_writes_is_listed_once() {
        let all = topics("t_", true);
        let names: std::collections::BTreeSet<_> = all.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names.len(), all.len(), "a topic twice: {all:?}");
        for t in [
            "t_events",
            "t_events_overflow",
            "t_alerts",
            "t_pushes",
            "t_deliveries",
            "t_alert_acks",
            "t_presence",
            "t_antifraud_forwards",
            "t_events_dead_letter",
            "t_alert_acks_dead_letter",
            "t_antifraud_dead_letter",
        ] {
            assert!(names.contains(t), "{t} missing from {all:?}");
        }
        assert_eq!(
            all.last(),
            Some(&("t_antifraud_state".to_owned(), Kind::Compacted))
        );
        assert!(!topics("", false).iter().any(|(_, k)| *k == Kind::Compacted));
        assert_eq!(all.len(), 16);
    }
}
