//! An in-memory table for tests, with failure injection: failed, lost, hanging and refused
//! inserts, a schema that breaks, and the duplicate-block drop of a replicated ClickHouse table.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::Sink;
use crate::ProcessorError;
use crate::batch::Batch;
use crate::rows::StoredRow;

/// What tells a row from another in a block: bus topic, partition, offset and id.
type RowId = (String, u32, u64, String);

/// An in-memory table of `R` rows for tests, with failure injection.
#[derive(Debug)]
pub struct MemorySink<R> {
    inner: Arc<Mutex<MemoryInner<R>>>,
}

impl<R> Clone for MemorySink<R> {
    fn clone(&self) -> Self {
        MemorySink {
            inner: self.inner.clone(),
        }
    }
}

impl<R> Default for MemorySink<R> {
    fn default() -> Self {
        MemorySink {
            inner: Arc::new(Mutex::new(MemoryInner {
                rows: Vec::new(),
                fail_next: 0,
                lose_answer_next: 0,
                hang_after_store_next: 0,
                inserts: 0,
                intents: std::collections::HashMap::new(),
                refused_ids: std::collections::HashSet::new(),
                seen_blocks: None,
                broken_schema: None,
                attempts: Vec::new(),
            })),
        }
    }
}

#[derive(Debug)]
struct MemoryInner<R> {
    /// Each row with the bus topic and partition of its batch.
    rows: Vec<(String, u32, R)>,
    fail_next: usize,
    /// Fail after storing (the insert landed but the answer was lost).
    lose_answer_next: usize,
    /// Never answer after storing (the process dies before it hears back).
    hang_after_store_next: usize,
    inserts: usize,
    /// Last intended (first, last) per (topic, partition).
    intents: std::collections::HashMap<(String, u32), (u64, u64)>,
    /// Inserts holding a row with one of these ids ([`StoredRow::id`]) are refused, as ClickHouse refuses
    /// a value: nothing of them is stored, and the answer does not say which row it was.
    refused_ids: std::collections::HashSet<String>,
    /// Drop a block stored before, as a replicated ClickHouse table does: every block stored.
    seen_blocks: Option<std::collections::HashSet<Vec<RowId>>>,
    /// Every call fails with this schema error.
    broken_schema: Option<String>,
    /// The rows of every insert attempt, in order (refused ones included).
    attempts: Vec<Vec<u64>>,
}

impl<R: StoredRow> MemorySink<R> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner<R>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `n` inserts fail without storing anything.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// The next `n` inserts store their rows and then report a failure.
    pub fn lose_answer_next(&self, n: usize) {
        self.lock().lose_answer_next = n;
    }

    /// The next `n` inserts store their rows and then never answer.
    pub fn hang_after_store_next(&self, n: usize) {
        self.lock().hang_after_store_next = n;
    }

    /// Every row stored, in the order stored.
    pub fn rows(&self) -> Vec<R> {
        self.lock().rows.iter().map(|(_, _, r)| r.clone()).collect()
    }

    /// Successful or answer-lost inserts so far.
    pub fn inserts(&self) -> usize {
        self.lock().inserts
    }

    /// Inserts holding a row with one of these ids ([`StoredRow::id`]) are refused for their
    /// data.
    pub fn refuse(&self, ids: impl IntoIterator<Item = String>) {
        self.lock().refused_ids.extend(ids);
    }

    /// From now on a block identical to one stored before is dropped (and the insert
    /// succeeds), as a replicated ClickHouse table drops it.
    pub fn drop_seen_blocks(&self) {
        self.lock()
            .seen_blocks
            .get_or_insert_with(std::collections::HashSet::new);
    }

    /// From now on every call fails with a schema error.
    pub fn break_schema(&self, reason: &str) {
        self.lock().broken_schema = Some(reason.to_owned());
    }

    /// The bus offsets of every insert attempt so far, in order.
    pub fn attempts(&self) -> Vec<Vec<u64>> {
        self.lock().attempts.clone()
    }
}

#[async_trait]
impl<R: StoredRow> Sink<R> for MemorySink<R> {
    async fn high_water(
        &self,
        topic: &str,
        partition: u32,
        since_ms: Option<i64>,
    ) -> Result<Option<u64>, ProcessorError> {
        let since = since_ms.unwrap_or(i64::MIN);
        let inner = self.lock();
        if let Some(reason) = &inner.broken_schema {
            return Err(ProcessorError::Schema(reason.clone()));
        }
        Ok(inner
            .rows
            .iter()
            .filter(|(t, p, r)| {
                t == topic
                    && *p == partition
                    && r.stamped_at_ms() as i64 >= since
                    && r.bus_sequence().is_empty()
            })
            .map(|(_, _, r)| r.bus_offset())
            .max())
    }

    async fn id_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        let since = since_ms.unwrap_or(i64::MIN);
        Ok(self
            .lock()
            .rows
            .iter()
            .find(|(t, p, r)| {
                t == topic
                    && *p == partition
                    && r.bus_offset() == offset
                    && r.bus_sequence().is_empty()
                    && r.stamped_at_ms() as i64 >= since
            })
            .map(|(_, _, r)| r.id()))
    }

    async fn high_water_sequence(
        &self,
        topic: &str,
        shard: &str,
        since_ms: Option<i64>,
    ) -> Result<Option<String>, ProcessorError> {
        let since = since_ms.unwrap_or(i64::MIN);
        let prefix = crate::rows::tag_sequence(shard, "");
        let inner = self.lock();
        if let Some(reason) = &inner.broken_schema {
            return Err(ProcessorError::Schema(reason.clone()));
        }
        Ok(inner
            .rows
            .iter()
            .filter(|(t, _, r)| t == topic && r.stamped_at_ms() as i64 >= since)
            .filter_map(|(_, _, r)| r.bus_sequence().strip_prefix(&prefix))
            .max_by_key(|s| (s.len(), *s))
            .map(str::to_owned))
    }

    async fn insert(&self, batch: &Arc<Batch<R>>) -> Result<(), ProcessorError> {
        let hang = {
            let mut inner = self.lock();
            inner
                .attempts
                .push(batch.rows.iter().map(StoredRow::bus_offset).collect());
            if let Some(reason) = &inner.broken_schema {
                return Err(ProcessorError::Schema(reason.clone()));
            }
            if inner.fail_next > 0 {
                inner.fail_next -= 1;
                return Err(ProcessorError::Store("injected failure".into()));
            }
            if batch
                .rows
                .iter()
                .any(|r| inner.refused_ids.contains(&r.id()))
            {
                return Err(ProcessorError::Refused("injected refusal".into()));
            }
            let block: Vec<_> = batch
                .rows
                .iter()
                .map(|r| (batch.topic.clone(), batch.partition, r.bus_offset(), r.id()))
                .collect();
            let seen = inner
                .seen_blocks
                .as_mut()
                .is_some_and(|seen| !seen.insert(block));
            if seen {
                return Ok(());
            }
            inner.rows.extend(
                batch
                    .rows
                    .iter()
                    .map(|r| (batch.topic.clone(), batch.partition, r.clone())),
            );
            inner.inserts += 1;
            if inner.lose_answer_next > 0 {
                inner.lose_answer_next -= 1;
                return Err(ProcessorError::Store("injected lost answer".into()));
            }
            let hang = inner.hang_after_store_next > 0;
            inner.hang_after_store_next = inner.hang_after_store_next.saturating_sub(1);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn intend(&self, batch: &Batch<R>) -> Result<(), ProcessorError> {
        if let Some(range) = batch.intent() {
            self.lock()
                .intents
                .insert((batch.topic.clone(), batch.partition), range);
        }
        Ok(())
    }

    async fn intended(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, ProcessorError> {
        Ok(self
            .lock()
            .intents
            .get(&(topic.to_owned(), partition))
            .copied())
    }
}
