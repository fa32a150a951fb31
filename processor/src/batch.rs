//! The pure batcher: rows per partition, cut into batches on max rows, max bytes, max age, a
//! change of month (one batch, one ClickHouse partition, one part: all or nothing) and
//! rebalances. Each batch knows the bus position to store once it is durable.
//!
//! A partition replaying a batch that a crashed member had begun to insert
//! ([`Batcher::replay_until`]) is cut exactly where that batch ended, whatever the limits say,
//! so the replay inserts the same block.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pitboss_bus::{Partition, Position};

use crate::rows::EventRow;

/// When a batch is flushed. Defaults follow ClickHouse's guidance: large inserts (>= 1,000
/// rows), about one per second per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(1),
        }
    }
}

/// Rows of one partition, ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub topic: String,
    pub partition: Partition,
    pub rows: Vec<EventRow>,
    /// Offset range of the rows (None for a batch of skipped records only).
    pub offsets: Option<(u64, u64)>,
    /// Position of the last record covered (rows and skipped records): stored after insert.
    pub last: Position,
    pub bytes: usize,
    /// When its first record arrived (for the batch-age metric).
    pub opened: Instant,
}

#[derive(Debug)]
struct Open {
    batch: Batch,
    month: Option<u32>,
}

/// Open batches by partition.
#[derive(Debug)]
pub struct Batcher {
    config: BatchConfig,
    topic: String,
    open: BTreeMap<Partition, Open>,
    /// Partitions replaying an intended batch: its first and last row offsets.
    replay: BTreeMap<Partition, (u64, u64)>,
}

/// `YYYYMM` of a UTC epoch second, as ClickHouse's `toYYYYMM` computes it.
pub fn month(epoch_seconds: u32) -> u32 {
    let days = i64::from(epoch_seconds) / 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y * 100 + m) as u32
}

impl Batcher {
    pub fn new(topic: &str, config: BatchConfig) -> Self {
        Batcher {
            config,
            topic: topic.to_owned(),
            open: BTreeMap::new(),
            replay: BTreeMap::new(),
        }
    }

    /// The partition's next batch is the rows `first..=last`: it ends at `last` — no sooner
    /// for max rows, bytes or age, and no later — re-cutting a batch whose insert may have
    /// landed. A row outside the range (a log that is not the one the range came from) ends
    /// the replay, and the usual limits apply again.
    pub fn replay(&mut self, partition: Partition, first: u64, last: u64) {
        self.replay.insert(partition, (first, last));
    }

    fn entry(&mut self, partition: Partition, position: &Position, now: Instant) -> &mut Open {
        self.open.entry(partition).or_insert_with(|| Open {
            batch: Batch {
                topic: self.topic.clone(),
                partition,
                rows: Vec::new(),
                offsets: None,
                last: position.clone(),
                bytes: 0,
                opened: now,
            },
            month: None,
        })
    }

    /// Adds a row; returns the batches it completed (the open one when a month changes first,
    /// and this one when it is full).
    pub fn push(
        &mut self,
        partition: Partition,
        position: Position,
        offset: Option<u64>,
        row: EventRow,
        now: Instant,
    ) -> Vec<Batch> {
        let mut done = Vec::new();
        if let (Some((first, last)), Some(o)) = (self.replay.get(&partition).copied(), offset) {
            if o > last {
                done.extend(self.take(partition));
            } else if o < first {
                self.replay.remove(&partition);
            }
        }
        let row_month = month(row.received_at);
        if let Some(open) = self.open.get(&partition)
            && open.month.is_some_and(|m| m != row_month)
        {
            done.extend(self.take(partition));
        }
        let max_rows = self.config.max_rows;
        let max_bytes = self.config.max_bytes;
        let open = self.entry(partition, &position, now);
        open.month = Some(row_month);
        open.batch.bytes += row.size();
        open.batch.rows.push(row);
        if let Some(o) = offset {
            open.batch.offsets = Some(match open.batch.offsets {
                Some((first, _)) => (first, o),
                None => (o, o),
            });
        }
        open.batch.last = position;
        let full = open.batch.rows.len() >= max_rows || open.batch.bytes >= max_bytes;
        let cut = match self.replay.get(&partition) {
            Some((_, last)) => offset.is_some_and(|o| o >= *last),
            None => full,
        };
        if cut {
            done.extend(self.take(partition));
        }
        done
    }

    /// A record that yields no row (dead-lettered, or already stored): its position is
    /// stored with the partition's next flush.
    pub fn skip(&mut self, partition: Partition, position: Position, now: Instant) {
        if let (Some((_, last)), Position::Offset(o)) = (self.replay.get(&partition), &position)
            && u64::try_from(*o).is_ok_and(|o| o >= *last)
        {
            // The intended range ended in records that yield no row now: nothing to re-cut.
            self.replay.remove(&partition);
        }
        let open = self.entry(partition, &position, now);
        open.batch.last = position;
    }

    /// Batches older than `max_age` at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Batch> {
        let age = self.config.max_age;
        let due: Vec<Partition> = self
            .open
            .iter()
            .filter(|(p, o)| {
                !self.replay.contains_key(p) && now.duration_since(o.batch.opened) >= age
            })
            .map(|(p, _)| *p)
            .collect();
        due.into_iter().filter_map(|p| self.take(p)).collect()
    }

    /// When the oldest open batch becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.open
            .iter()
            .filter(|(p, _)| !self.replay.contains_key(p))
            .map(|(_, o)| o.batch.opened + self.config.max_age)
            .min()
    }

    /// Closes the partition's open batch.
    pub fn take(&mut self, partition: Partition) -> Option<Batch> {
        self.replay.remove(&partition);
        self.open.remove(&partition).map(|o| o.batch)
    }

    /// Closes every open batch.
    pub fn take_all(&mut self) -> Vec<Batch> {
        self.replay.clear();
        std::mem::take(&mut self.open)
            .into_values()
            .map(|o| o.batch)
            .collect()
    }

    /// Drops the partition's open batch (its records will be delivered again).
    pub fn abandon(&mut self, partition: Partition) {
        self.replay.remove(&partition);
        self.open.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(received_at: u32, offset: u64) -> EventRow {
        EventRow {
            event_id: format!("e{offset}"),
            received_at,
            bus_offset: offset,
            ..EventRow::default()
        }
    }

    const NOV_28: u32 = 1_795_870_800; // 2026-11-28T13:00:00Z
    const DEC_1: u32 = 1_796_083_200; // 2026-12-01T00:00:00Z

    #[test]
    fn months_match_clickhouse() {
        assert_eq!(month(0), 197_001);
        assert_eq!(month(NOV_28), 202_611);
        assert_eq!(month(DEC_1 - 1), 202_611);
        assert_eq!(month(DEC_1), 202_612);
        assert_eq!(month(951_782_400), 200_002); // 2000-02-29
    }

    #[test]
    fn full_batches_are_cut_at_max_rows_with_their_offset_range() {
        let mut b = Batcher::new(
            "events",
            BatchConfig {
                max_rows: 3,
                ..BatchConfig::default()
            },
        );
        let now = Instant::now();
        let mut done = Vec::new();
        for o in 10..17 {
            done.extend(b.push(0, Position::Offset(o as i64), Some(o), row(NOV_28, o), now));
        }
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].offsets, Some((10, 12)));
        assert_eq!(done[1].offsets, Some((13, 15)));
        assert_eq!(done[1].last, Position::Offset(15));
        let rest = b.take_all();
        assert_eq!(rest[0].offsets, Some((16, 16)));
    }

    #[test]
    fn a_new_month_starts_a_new_batch() {
        let mut b = Batcher::new("events", BatchConfig::default());
        let now = Instant::now();
        assert!(
            b.push(0, Position::Offset(1), Some(1), row(DEC_1 - 1, 1), now)
                .is_empty()
        );
        let done = b.push(0, Position::Offset(2), Some(2), row(DEC_1, 2), now);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].offsets, Some((1, 1)));
        assert_eq!(b.take(0).expect("open").offsets, Some((2, 2)));
    }

    #[test]
    fn skipped_records_move_the_stored_position_and_age_flushes() {
        let mut b = Batcher::new(
            "events",
            BatchConfig {
                max_age: Duration::from_millis(100),
                ..BatchConfig::default()
            },
        );
        let t0 = Instant::now();
        b.push(0, Position::Offset(5), Some(5), row(NOV_28, 5), t0);
        b.skip(0, Position::Offset(6), t0);
        b.skip(1, Position::Offset(9), t0);
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(100)));
        assert!(b.due(t0 + Duration::from_millis(50)).is_empty());
        let due = b.due(t0 + Duration::from_millis(100));
        assert_eq!(due.len(), 2);
        assert_eq!(
            (due[0].offsets, due[0].last.clone()),
            (Some((5, 5)), Position::Offset(6))
        );
        assert_eq!(
            (due[1].rows.len(), due[1].last.clone()),
            (0, Position::Offset(9))
        );
        assert_eq!(due[1].offsets, None);
    }

    #[test]
    fn a_replayed_batch_ends_exactly_where_the_intended_one_did() {
        let mut b = Batcher::new(
            "events",
            BatchConfig {
                max_rows: 3,
                max_age: Duration::from_millis(10),
                ..BatchConfig::default()
            },
        );
        let t0 = Instant::now();
        b.replay(0, 10, 16);
        let mut done = Vec::new();
        for o in 10..16 {
            done.extend(b.push(0, Position::Offset(o as i64), Some(o), row(NOV_28, o), t0));
        }
        // Neither max rows nor age cut it.
        assert!(done.is_empty());
        assert_eq!(b.next_due(), None);
        assert!(b.due(t0 + Duration::from_secs(60)).is_empty());
        let done = b.push(0, Position::Offset(16), Some(16), row(NOV_28, 16), t0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].offsets, Some((10, 16)));
        // Then the limits apply again.
        let mut done = Vec::new();
        for o in 17..20 {
            done.extend(b.push(0, Position::Offset(o as i64), Some(o), row(NOV_28, o), t0));
        }
        assert_eq!(done[0].offsets, Some((17, 19)));
    }

    #[test]
    fn a_replay_whose_last_row_never_comes_ends_at_the_first_row_past_it() {
        let mut b = Batcher::new("events", BatchConfig::default());
        let t0 = Instant::now();
        b.replay(0, 10, 12);
        assert!(
            b.push(0, Position::Offset(10), Some(10), row(NOV_28, 10), t0)
                .is_empty()
        );
        let done = b.push(0, Position::Offset(14), Some(14), row(NOV_28, 14), t0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].offsets, Some((10, 10)));
        assert_eq!(b.take(0).expect("open").offsets, Some((14, 14)));

        // Skipped records past the end stop the replay too: age applies again.
        b.replay(1, 4, 5);
        b.push(1, Position::Offset(4), Some(4), row(NOV_28, 4), t0);
        b.skip(1, Position::Offset(5), t0);
        assert_eq!(b.due(t0 + Duration::from_secs(2)).len(), 1);

        // A row before the range: not the log the range came from; limits apply.
        b.replay(2, 100, 200);
        b.push(2, Position::Offset(0), Some(0), row(NOV_28, 0), t0);
        assert_eq!(b.due(t0 + Duration::from_secs(2)).len(), 1);
    }
}
