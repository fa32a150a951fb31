//! The pure batcher: rows (of any table, [`StoredRow`]) per partition, cut into batches on max
//! rows, max bytes, max age, a change of month of the rows' stamp (one batch, one ClickHouse
//! partition, one part: all or nothing) and rebalances. Each batch knows the bus position to
//! store once it is durable.
//!
//! A partition replaying a batch that a crashed member had begun to insert
//! ([`Batcher::replay`]) is cut exactly where that batch ended, whatever the limits say, so
//! the replay inserts the same block — and, should the store refuse some of its rows, splits it
//! the same way (the batch carries the recorded range as [`Batch::recut`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pitboss_bus::{Partition, Position};

use crate::rows::{StoredRow, offset_of};

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
pub struct Batch<R> {
    pub topic: String,
    pub partition: Partition,
    pub rows: Vec<R>,
    /// Offset range of the rows (None for a batch of skipped records only).
    pub offsets: Option<(u64, u64)>,
    /// Position of the last record covered (rows and skipped records): stored after insert.
    pub last: Position,
    pub bytes: usize,
    /// When its first record arrived (for the batch-age metric).
    pub opened: Instant,
    /// The bus record each row was decoded from, row for row: what the dead-letter topic
    /// gets if the store refuses the row (empty where nobody kept them).
    pub values: Vec<Vec<u8>>,
    /// Set when the batch re-cuts a range a member recorded before it died (see
    /// [`Batcher::replay`]).
    pub recut: Option<Recut>,
    /// An earlier insert of these rows may have landed unseen: a retry after a failed or
    /// unanswered insert (run.rs), or a piece of a re-cut batch. The store then looks every row
    /// up for a stored copy, not only rows whose id a client chose, so the retry inserts
    /// nothing that landed (see [`crate::Sink::insert`]).
    pub uncertain: bool,
}

/// A batch's offset range as a member recorded it before inserting it, met again by the
/// member that took the partition over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recut {
    pub first: u64,
    pub last: u64,
    /// The store's high-water mark when the partition was taken over: the rows of the range
    /// at or below it had landed (the first member got that far into a split of the batch),
    /// so the re-cut batch holds only the rows above it.
    pub floor: Option<u64>,
}

impl<R: StoredRow> Batch<R> {
    /// The rows `range` as a batch of their own: a piece of a split (run.rs), with the offsets
    /// of its rows and neither record values nor a re-cut range.
    pub fn piece(&self, range: std::ops::Range<usize>) -> Batch<R> {
        let rows = self.rows[range].to_vec();
        let offsets = self
            .offsets
            .and(rows.first().zip(rows.last()))
            .map(|(first, last)| (first.bus_offset(), last.bus_offset()));
        Batch {
            topic: self.topic.clone(),
            partition: self.partition,
            offsets,
            last: offsets.map_or_else(
                || self.last.clone(),
                |(_, last)| Position::Offset(last as i64),
            ),
            bytes: rows.iter().map(R::size).sum(),
            opened: self.opened,
            values: Vec::new(),
            recut: None,
            uncertain: self.uncertain || self.recut.is_some(),
            rows,
        }
    }

    /// The offset range recorded before the batch is inserted ([`crate::Sink::intend`]): the
    /// range it re-cuts, if it re-cuts one (so the next member after a crash meets the same
    /// range again), else its own.
    pub fn intent(&self) -> Option<(u64, u64)> {
        self.recut.map(|r| (r.first, r.last)).or(self.offsets)
    }
}

#[derive(Debug)]
struct Open<R> {
    batch: Batch<R>,
    month: Option<u32>,
    /// The stamp of its oldest row (`u64::MAX`: none yet).
    oldest_ms: u64,
}

/// Open batches by partition.
#[derive(Debug)]
pub struct Batcher<R> {
    config: BatchConfig,
    topic: String,
    open: BTreeMap<Partition, Open<R>>,
    /// Partitions replaying an intended batch.
    replay: BTreeMap<Partition, Recut>,
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

impl<R: StoredRow> Batcher<R> {
    pub fn new(topic: &str, config: BatchConfig) -> Self {
        Batcher {
            config,
            topic: topic.to_owned(),
            open: BTreeMap::new(),
            replay: BTreeMap::new(),
        }
    }

    /// The partition's next batch is the rows `first..=last` above `floor`: it ends at `last`
    /// — no sooner for max rows, bytes or age, and no later — re-cutting a batch whose insert
    /// may have landed. Rows before `first` (ones the crashed member dead-lettered, or a log
    /// that is not the one the range came from) form batches of their own under the usual
    /// limits, closed before the row at `first`; a row past `last` ends the replay.
    pub fn replay(&mut self, partition: Partition, recut: Recut) {
        self.replay.insert(partition, recut);
    }

    /// Whether the partition's open batch is a re-cut one (its rows lie in the replayed range).
    fn recutting(&self, partition: Partition) -> bool {
        self.replay.get(&partition).is_some_and(|r| {
            self.open
                .get(&partition)
                .and_then(|o| o.batch.offsets)
                .is_none_or(|(first, _)| first >= r.first)
        })
    }

    fn entry(&mut self, partition: Partition, position: &Position, now: Instant) -> &mut Open<R> {
        self.open.entry(partition).or_insert_with(|| Open {
            batch: Batch {
                topic: self.topic.clone(),
                partition,
                rows: Vec::new(),
                offsets: None,
                last: position.clone(),
                bytes: 0,
                opened: now,
                values: Vec::new(),
                recut: None,
                uncertain: false,
            },
            month: None,
            oldest_ms: u64::MAX,
        })
    }

    /// Adds a row and the record value it came from; returns the batches it completed (the
    /// open one when a month changes first, and this one when it is full).
    pub fn push(
        &mut self,
        partition: Partition,
        position: Position,
        row: R,
        value: Vec<u8>,
        now: Instant,
    ) -> Vec<Batch<R>> {
        let mut done = Vec::new();
        let offset = offset_of(&position);
        if let (Some(r), Some(o)) = (self.replay.get(&partition).copied(), offset) {
            if o > r.last {
                done.extend(self.take(partition));
            } else if o >= r.first && !self.recutting(partition) {
                // Rows before the range: their own batch.
                done.extend(self.close(partition));
            }
        }
        // One batch, one month of the table's partition key (the stamp), one part.
        let row_month = month((row.stamped_at_ms() / 1000) as u32);
        if let Some(open) = self.open.get(&partition)
            && open.month.is_some_and(|m| m != row_month)
        {
            done.extend(self.close(partition));
        }
        let max_rows = self.config.max_rows;
        let max_bytes = self.config.max_bytes;
        let open = self.entry(partition, &position, now);
        open.month = Some(row_month);
        open.oldest_ms = open.oldest_ms.min(row.stamped_at_ms());
        open.batch.bytes += row.size();
        open.batch.rows.push(row);
        open.batch.values.push(value);
        if let Some(o) = offset {
            open.batch.offsets = Some(match open.batch.offsets {
                Some((first, _)) => (first, o),
                None => (o, o),
            });
        }
        open.batch.last = position;
        let full = open.batch.rows.len() >= max_rows || open.batch.bytes >= max_bytes;
        if self.recutting(partition) {
            let last = self.replay.get(&partition).map(|r| r.last);
            if offset.zip(last).is_some_and(|(o, last)| o >= last) {
                done.extend(self.take(partition));
            }
        } else if full {
            done.extend(self.close(partition));
        }
        done
    }

    /// A record that yields no row (dead-lettered, or already stored): its position is
    /// stored with the partition's next flush.
    pub fn skip(&mut self, partition: Partition, position: Position, now: Instant) {
        if let (Some(r), Some(o)) = (self.replay.get(&partition), offset_of(&position))
            && o >= r.last
        {
            // The intended range ended in records that yield no row now: nothing to re-cut.
            self.replay.remove(&partition);
        }
        let open = self.entry(partition, &position, now);
        open.batch.last = position;
    }

    /// Batches older than `max_age` at `now` (a re-cut one waits for its last row).
    pub fn due(&mut self, now: Instant) -> Vec<Batch<R>> {
        let age = self.config.max_age;
        let due: Vec<Partition> = self
            .open
            .iter()
            .filter(|(p, o)| !self.recutting(**p) && now.duration_since(o.batch.opened) >= age)
            .map(|(p, _)| *p)
            .collect();
        due.into_iter().filter_map(|p| self.close(p)).collect()
    }

    /// The stamp of the oldest row of the open batches, if they hold any.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.open
            .values()
            .map(|o| o.oldest_ms)
            .min()
            .filter(|&ms| ms != u64::MAX)
    }

    /// When the oldest open batch becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.open
            .iter()
            .filter(|(p, _)| !self.recutting(**p))
            .map(|(_, o)| o.batch.opened + self.config.max_age)
            .min()
    }

    /// Closes the partition's open batch, ending a replay.
    pub fn take(&mut self, partition: Partition) -> Option<Batch<R>> {
        let batch = self.close(partition);
        self.replay.remove(&partition);
        batch
    }

    /// Closes the partition's open batch; a replay goes on (the batch held rows before its
    /// range) unless this was the re-cut batch, marked as such.
    fn close(&mut self, partition: Partition) -> Option<Batch<R>> {
        let recut = self.recutting(partition);
        let mut batch = self.open.remove(&partition)?.batch;
        if recut && batch.offsets.is_some() {
            batch.recut = self.replay.remove(&partition);
        }
        Some(batch)
    }

    /// Closes every open batch.
    pub fn take_all(&mut self) -> Vec<Batch<R>> {
        let partitions: Vec<Partition> = self.open.keys().copied().collect();
        let batches = partitions
            .into_iter()
            .filter_map(|p| self.close(p))
            .collect();
        self.replay.clear();
        batches
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
    use crate::rows::EventRow;

    fn row(received_at: u32, offset: u64) -> EventRow {
        EventRow {
            event_id: format!("e{offset}"),
            received_at,
            received_at_ms: u64::from(received_at) * 1000,
            bus_offset: offset,
            ..EventRow::default()
        }
    }

    fn recut(first: u64, last: u64) -> Recut {
        Recut {
            first,
            last,
            floor: None,
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
            done.extend(b.push(
                0,
                Position::Offset(o as i64),
                row(NOV_28, o),
                Vec::new(),
                now,
            ));
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
            b.push(0, Position::Offset(1), row(DEC_1 - 1, 1), Vec::new(), now)
                .is_empty()
        );
        let done = b.push(0, Position::Offset(2), row(DEC_1, 2), Vec::new(), now);
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
        b.push(0, Position::Offset(5), row(NOV_28, 5), Vec::new(), t0);
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
        b.replay(0, recut(10, 16));
        let mut done = Vec::new();
        for o in 10..16 {
            done.extend(b.push(
                0,
                Position::Offset(o as i64),
                row(NOV_28, o),
                Vec::new(),
                t0,
            ));
        }
        // Neither max rows nor age cut it.
        assert!(done.is_empty());
        assert_eq!(b.next_due(), None);
        assert!(b.due(t0 + Duration::from_secs(60)).is_empty());
        let done = b.push(0, Position::Offset(16), row(NOV_28, 16), Vec::new(), t0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].offsets, Some((10, 16)));
        assert_eq!(done[0].recut, Some(recut(10, 16)));
        // Then the limits apply again.
        let mut done = Vec::new();
        for o in 17..20 {
            done.extend(b.push(
                0,
                Position::Offset(o as i64),
                row(NOV_28, o),
                Vec::new(),
                t0,
            ));
        }
        assert_eq!(done[0].offsets, Some((17, 19)));
    }

    #[test]
    fn a_replay_whose_last_row_never_comes_ends_at_the_first_row_past_it() {
        let mut b = Batcher::new("events", BatchConfig::default());
        let t0 = Instant::now();
        b.replay(0, recut(10, 12));
        assert!(
            b.push(0, Position::Offset(10), row(NOV_28, 10), Vec::new(), t0)
                .is_empty()
        );
        let done = b.push(0, Position::Offset(14), row(NOV_28, 14), Vec::new(), t0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].offsets, Some((10, 10)));
        assert_eq!(b.take(0).expect("open").offsets, Some((14, 14)));

        // Skipped records past the end stop the replay too: age applies again.
        b.replay(1, recut(4, 5));
        b.push(1, Position::Offset(4), row(NOV_28, 4), Vec::new(), t0);
        b.skip(1, Position::Offset(5), t0);
        assert_eq!(b.due(t0 + Duration::from_secs(2)).len(), 1);

        // A row before the range (here: not the log the range came from): limits apply.
        b.replay(2, recut(100, 200));
        b.push(2, Position::Offset(0), row(NOV_28, 0), Vec::new(), t0);
        assert_eq!(b.due(t0 + Duration::from_secs(2)).len(), 1);
    }

    #[test]
    fn rows_before_the_replayed_range_are_batched_on_their_own_and_the_range_is_still_recut() {
        // A member dead-lettered rows 5 and 6 (refused by the store), then recorded [7, 12]
        // and died with part of it landed (the mark: 9). The next member meets 5 and 6 again.
        let mut b = Batcher::new(
            "events",
            BatchConfig {
                max_rows: 2,
                max_age: Duration::from_millis(10),
                ..BatchConfig::default()
            },
        );
        let t0 = Instant::now();
        let range = Recut {
            first: 7,
            last: 12,
            floor: Some(9),
        };
        b.replay(0, range);
        let push = |b: &mut Batcher<EventRow>, o: u64| {
            b.push(
                0,
                Position::Offset(o as i64),
                row(NOV_28, o),
                vec![o as u8],
                t0,
            )
        };
        assert!(push(&mut b, 5).is_empty());
        // Age applies to them: the range has not begun.
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(10)));
        let done = push(&mut b, 6);
        assert_eq!(done.len(), 1, "max rows applies to them");
        assert_eq!((done[0].offsets, done[0].recut), (Some((5, 6)), None));
        assert_eq!(
            done[0].values,
            vec![vec![5], vec![6]],
            "each row's record value"
        );
        let mut done = Vec::new();
        for o in 10..12 {
            done.extend(push(&mut b, o));
        }
        assert!(done.is_empty(), "the range is cut at its end only");
        assert!(b.due(t0 + Duration::from_secs(60)).is_empty());
        let done = push(&mut b, 12);
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].offsets, done[0].recut),
            (Some((10, 12)), Some(range))
        );
        assert_eq!(
            done[0].intent(),
            Some((7, 12)),
            "recorded as the range it re-cuts"
        );

        // Rows before the range, then the range: the first batch is closed before it.
        b.replay(1, recut(3, 4));
        b.push(1, Position::Offset(2), row(NOV_28, 2), Vec::new(), t0);
        let done = b.push(1, Position::Offset(3), row(NOV_28, 3), Vec::new(), t0);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].offsets, done[0].recut), (Some((2, 2)), None));
        let done = b.push(1, Position::Offset(4), row(NOV_28, 4), Vec::new(), t0);
        assert_eq!(done[0].offsets, Some((3, 4)));
        assert_eq!(done[0].intent(), Some((3, 4)));
    }
}
