//! Where batches go, behind one small trait generic over the row type ([`Sink<R>`]):
//! ClickHouse in production ([`ClickHouseSink`]), the embedded SQLite store of `pitboss up`
//! ([`crate::SqliteSink`]), an in-memory table in tests with failure injection
//! ([`MemorySink`]). One ClickHouse or SQLite sink stores every table: it implements
//! `Sink<R>` for each [`StoredRow`].

mod clickhouse;
mod memory;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::clickhouse::{
    ClickHouseClient, ClickHouseSink, DEFAULT_TIMEOUT, EventCursor, alert_origins, check_url,
    client, count_events, events_page, no_answer, redacted_url, replicas_cluster, stored_ends,
    stored_event_columns, stored_received_at, within,
};
pub use self::memory::MemorySink;

use crate::ProcessorError;
use crate::batch::Batch;
use crate::rows::StoredRow;

/// A store for batches of rows of one table (`R::TABLE`).
#[async_trait]
pub trait Sink<R: StoredRow>: Send + Sync + std::fmt::Debug {
    /// The highest bus offset stored for (topic, partition), if any: everything at or below it
    /// is already in the store (inserts are all-or-nothing), so a replay skips it. Rows stored
    /// from Kinesis (a `bus_sequence`, offset 0) do not count.
    ///
    /// `since_ms`: rows stamped (`R::STAMP_COLUMN`) before it cannot hold a higher offset, so
    /// a store may leave them unread (ClickHouse skips whole parts by their stamp range; without
    /// it the query reads the `bus_*` columns of the whole table).
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError>;

    /// The highest Kinesis sequence number stored for (topic, shard), if any: as
    /// [`Sink::high_water`], for records whose position is a sequence number (they do not fit
    /// `bus_offset`). Rows keep `<shard id>:<sequence number>` in `bus_sequence`: a shard's
    /// number moves when a reshard's closed parents leave the list, its id does not, and
    /// sequence numbers of two shards do not compare. Ordered as numbers: the longer is the
    /// higher, then the text. The sequence number alone is returned. A store that keeps no
    /// sequence numbers answers `None` (nothing is skipped: at-least-once).
    async fn high_water_sequence(
        &self,
        _topic: &str,
        _shard: &str,
        _since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        Ok(None)
    }

    /// The id ([`StoredRow::id`]) of the row stored from (topic, partition, offset), stamped
    /// since `since_ms`, if the store can tell cheaply; `None` when it holds none or cannot
    /// tell. The processor compares it with the record at that offset on the bus before it
    /// skips anything: another record there means the topic was made anew.
    async fn id_at(
        &self,
        _topic: &str,
        _partition: u32,
        _offset: u64,
        _since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        Ok(None)
    }

    /// Inserts the batch, all or nothing. [`ProcessorError::Refused`] when the store refuses
    /// values of its rows (the same rows fail again; the caller splits the batch);
    /// [`ProcessorError::Schema`] when the store cannot take such rows at all.
    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError>;

    /// Records the offset range of `batch` ([`Batch::intent`]) before it is inserted, for
    /// [`Sink::intended`].
    /// A store that drops a block it has seen (ClickHouse's replicated tables) needs it: a
    /// member that replays the partition after a crash then cuts the very same batch, and a
    /// first insert that lands late — after the replaying member read the high-water mark —
    /// makes the replayed one a duplicate block, which the store drops. Stores that cannot
    /// drop duplicates, or that commit their position with the rows, do nothing.
    async fn intend(&self, _batch: &Batch<R>) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// Whether [`Sink::intend`] and [`Sink::intended`] reach the store (false: they answer at
    /// once, so the processor does not call them, and they do not count as the store answering).
    fn records_intents(&self) -> bool {
        true
    }

    /// The offset range (first, last row) of the partition's last recorded batch, if any.
    async fn intended(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        Ok(None)
    }
}
