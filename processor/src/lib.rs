//! The Pitboss processor: a long-running consumer-group member that batches events from the
//! bus into ClickHouse, effectively once (see [`run`]), with the schema as versioned
//! migrations ([`schema`]); and the embedded store of `pitboss up` ([`sqlite`]).

pub mod batch;
pub mod rows;
pub mod run;
pub mod schema;
pub mod sink;
pub mod sqlite;

pub use batch::{Batch, BatchConfig};
pub use run::{ProcessorConfig, RunStats, run};
pub use sink::{ClickHouseSink, MemorySink, Sink};
pub use sqlite::SqliteSink;

/// Errors of the processor; each knows whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("bus: {0}")]
    Bus(#[from] pitboss_bus::BusError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("migration {0}")]
    Migration(String),
    /// A setting that cannot work (retrying does not help).
    #[error("{0}")]
    Config(String),
}

impl ProcessorError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessorError::Bus(e) => e.is_retryable(),
            ProcessorError::ClickHouse(_) | ProcessorError::Store(_) => true,
            ProcessorError::Migration(_) | ProcessorError::Config(_) => false,
        }
    }
}
