//! Which table a topic's records are stored in, and the processor of a topic run for the row
//! type of its table ([`run_table`]), for binaries that choose the table at run time.
//!
//! The well-known topics name their table: `alerts`, `pushes`, `deliveries` and `alert_acks`
//! (`LiveMessage::TOPIC`) hold those messages; any other topic holds events (`events`, its
//! hot-key overflow `events_overflow`, or a topic of another name). `NAME=TABLE` names the
//! table of a topic explicitly (`alerts_eu=alerts`).

use std::future::Future;
use std::sync::Arc;

use pitboss_bus::Bus;
use pitboss_model::live::{Alert, AlertAck, Delivery, LiveMessage, Push};

use crate::ProcessorError;
use crate::rows::{AckRow, AlertRow, DeliveryRow, EventRow, PushRow, StoredRow};
use crate::run::{ProcessorConfig, RunStats, run};
use crate::sink::Sink;

/// A table the processor stores records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Events,
    Alerts,
    Pushes,
    Deliveries,
    AlertAcks,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Events,
        Table::Alerts,
        Table::Pushes,
        Table::Deliveries,
        Table::AlertAcks,
    ];

    /// Its name in both stores.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => EventRow::TABLE,
            Table::Alerts => AlertRow::TABLE,
            Table::Pushes => PushRow::TABLE,
            Table::Deliveries => DeliveryRow::TABLE,
            Table::AlertAcks => AckRow::TABLE,
        }
    }

    /// The table called `name`.
    pub fn named(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table of a topic by its name: the live-path topics' own, events for any other.
    pub fn for_topic(topic: &str) -> Table {
        match topic {
            Alert::TOPIC => Table::Alerts,
            Push::TOPIC => Table::Pushes,
            Delivery::TOPIC => Table::Deliveries,
            AlertAck::TOPIC => Table::AlertAcks,
            _ => Table::Events,
        }
    }

    /// The topic and table of a `--topic` argument: `NAME` (table by [`Table::for_topic`]) or
    /// `NAME=TABLE`.
    pub fn parse_topic(arg: &str) -> Result<(String, Table), ProcessorError> {
        let (topic, table) = match arg.split_once('=') {
            None => (arg, Table::for_topic(arg)),
            Some((topic, table)) => {
                let table = Table::named(table).ok_or_else(|| {
                    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
                    ProcessorError::Config(format!(
                        "--topic {arg}: no table {table:?} (one of {})",
                        names.join(", ")
                    ))
                })?;
                (topic, table)
            }
        };
        if topic.is_empty() {
            return Err(ProcessorError::Config(format!(
                "--topic {arg}: no topic name"
            )));
        }
        Ok((topic.to_owned(), table))
    }
}

/// A store of every table (the ClickHouse and SQLite sinks are).
pub trait AnySink:
    Sink<EventRow> + Sink<AlertRow> + Sink<PushRow> + Sink<DeliveryRow> + Sink<AckRow> + 'static
{
}

impl<S> AnySink for S where
    S: Sink<EventRow> + Sink<AlertRow> + Sink<PushRow> + Sink<DeliveryRow> + Sink<AckRow> + 'static
{
}

/// [`run`] for the rows of `table`.
pub async fn run_table<S: AnySink>(
    table: Table,
    bus: Arc<dyn Bus>,
    sink: Arc<S>,
    config: ProcessorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunStats, ProcessorError> {
    match table {
        Table::Events => run::<EventRow>(bus, sink, config, shutdown).await,
        Table::Alerts => run::<AlertRow>(bus, sink, config, shutdown).await,
        Table::Pushes => run::<PushRow>(bus, sink, config, shutdown).await,
        Table::Deliveries => run::<DeliveryRow>(bus, sink, config, shutdown).await,
        Table::AlertAcks => run::<AckRow>(bus, sink, config, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_topics_name_their_table_and_others_hold_events() {
        let t = |arg: &str| Table::parse_topic(arg).map_err(|e| e.to_string());
        assert_eq!(t("alerts"), Ok(("alerts".into(), Table::Alerts)));
        assert_eq!(t("pushes"), Ok(("pushes".into(), Table::Pushes)));
        assert_eq!(
            t("deliveries"),
            Ok(("deliveries".into(), Table::Deliveries))
        );
        assert_eq!(t("alert_acks"), Ok(("alert_acks".into(), Table::AlertAcks)));
        assert_eq!(t("events"), Ok(("events".into(), Table::Events)));
        assert_eq!(
            t("events_overflow"),
            Ok(("events_overflow".into(), Table::Events))
        );
        assert_eq!(
            t("alerts_eu=alerts"),
            Ok(("alerts_eu".into(), Table::Alerts))
        );
        assert_eq!(t("x=alert_acks"), Ok(("x".into(), Table::AlertAcks)));
        assert_eq!(
            t("x=alert"),
            Err("--topic x=alert: no table \"alert\" (one of events, alerts, pushes, deliveries, alert_acks)".into())
        );
        assert!(t("=alerts").is_err());
        for table in Table::ALL {
            assert_eq!(Table::named(table.name()), Some(table));
        }
    }
}
