//! The Pitboss processor: a long-running consumer-group member that batches records from the
//! bus into ClickHouse, effectively once (see [`run`]) — events, and the live path's alerts,
//! pushes, deliveries and alert acks, each into its table along the same path ([`rows`],
//! [`table`]) — with the schema as versioned migrations ([`schema`]); and the embedded store of
//! `pitboss up` ([`sqlite`]).

pub mod batch;
pub mod classify;
pub mod health;
pub mod rows;
pub mod run;
pub mod schema;
pub mod sink;
pub mod split;
pub mod sqlite;
pub mod table;

pub use batch::{Batch, BatchConfig, Recut};
pub use health::StoreHealth;
pub use rows::{AckRow, AlertRow, DeliveryRow, EventRow, Poison, PushRow, StoredEvent, StoredRow};
pub use run::{ProcessorConfig, RunStats, run};
pub use sink::{ClickHouseSink, MemorySink, Sink};
pub use sqlite::SqliteSink;
pub use table::{AnySink, Table, run_table};

/// Errors of the processor; each knows whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("bus: {0}")]
    Bus(#[from] pitboss_bus::BusError),
    /// ClickHouse unreachable, overloaded or busy, or an answer without an exception code
    /// (see [`classify`]): the same call may succeed later.
    #[error("clickhouse: {}", classify::with_causes(.0))]
    ClickHouse(clickhouse::error::Error),
    /// ClickHouse refused values of the rows of an insert (the server's answer): the same rows
    /// are refused again, so the batch is split to find them (run.rs).
    #[error("clickhouse refused the rows: {0}")]
    Refused(String),
    /// The statement does not fit the server's schema, settings or grants — an unknown table
    /// or column, a column whose type changed, a type mismatch of the whole insert, access
    /// denied: neither a retry nor a split helps, so the processor stops with this message.
    #[error("clickhouse schema: {0}")]
    Schema(String),
    #[error("store: {0}")]
    Store(String),
    #[error("migration {0}")]
    Migration(String),
    /// A setting that cannot work (retrying does not help).
    #[error("{0}")]
    Config(String),
}

impl From<clickhouse::error::Error> for ProcessorError {
    /// Sorted by the exception code of the server's answer ([`classify`]).
    fn from(error: clickhouse::error::Error) -> Self {
        match classify::classify(&error) {
            classify::Class::Transient => ProcessorError::ClickHouse(error),
            classify::Class::Data => ProcessorError::Refused(classify::reason(&error)),
            classify::Class::Schema => ProcessorError::Schema(classify::reason(&error)),
        }
    }
}

impl ProcessorError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessorError::Bus(e) => e.is_retryable(),
            ProcessorError::ClickHouse(_) | ProcessorError::Store(_) => true,
            ProcessorError::Refused(_)
            | ProcessorError::Schema(_)
            | ProcessorError::Migration(_)
            | ProcessorError::Config(_) => false,
        }
    }
}
