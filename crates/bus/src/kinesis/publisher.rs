//! Publishing to Kinesis: PutRecords calls that keep per-key order, the header envelope, and
//! retries of the records that fail inside a successful response.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::{KinesisBus, MAX_RECORD_BYTES, envelope, sdk, stream_error, unavailable};
use crate::{Ack, BusError, OutRecord, Partition, Position, Publisher};

/// Most records in one PutRecords call.
const MAX_PUT_RECORDS: usize = 500;
/// Most bytes in one PutRecords call.
const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// Longest partition key Kinesis accepts.
const MAX_KEY_CHARS: usize = 256;

/// A record as it goes to Kinesis: its key and its data blob (header envelope included).
#[derive(Debug)]
struct Entry {
    key: String,
    data: Vec<u8>,
}

impl Entry {
    /// Bytes Kinesis counts against its limits.
    fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

/// Checks every record against Kinesis's limits, then wraps its headers into its blob.
fn entries(records: Vec<OutRecord>) -> Result<Vec<Entry>, BusError> {
    for (i, r) in records.iter().enumerate() {
        let size = r.key.len() + envelope::encoded_len(&r.headers, &r.value);
        if size > MAX_RECORD_BYTES {
            return Err(BusError::Rejected(format!(
                "record {i} has {size} bytes (key, headers and value); Kinesis accepts at most \
                 {MAX_RECORD_BYTES}"
            )));
        }
        let chars = r.key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(BusError::Rejected(format!(
                "record {i}: a partition key needs 1 to {MAX_KEY_CHARS} characters"
            )));
        }
    }
    Ok(records
        .into_iter()
        .map(|r| Entry {
            data: envelope::encode(&r.headers, r.value),
            key: r.key,
        })
        .collect())
}

#[async_trait]
impl Publisher for KinesisBus {
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Ack>, BusError> {
        let entries = entries(records)?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shard_ids = self.shared.shard_ids(topic).await?;
        let mut acks: Vec<Option<Ack>> = vec![None; entries.len()];
        for call in rounds(&entries) {
            self.put_with_retries(topic, &entries, &call, &shard_ids, &mut acks)
                .await?;
        }
        acks.into_iter()
            .map(|a| a.ok_or_else(|| BusError::Unavailable("a record was not acknowledged".into())))
            .collect()
    }

    async fn check(&self) -> Result<(), BusError> {
        self.shared
            .kinesis
            .list_streams()
            .limit(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(sdk(e)))
    }
}

/// Splits a batch into PutRecords calls, in order, with at most one record per key per call
/// (and within the count and size limits), so per-key order survives partial failures.
fn rounds(entries: &[Entry]) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut keys = HashSet::new();
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        let size = e.size();
        if keys.contains(e.key.as_str())
            || current.len() == MAX_PUT_RECORDS
            || bytes + size > MAX_PUT_BYTES
        {
            calls.push(std::mem::take(&mut current));
            keys.clear();
            bytes = 0;
        }
        keys.insert(e.key.as_str());
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

impl KinesisBus {
    /// One PutRecords call of `call` (indexes into `entries`), then again for the records that
    /// failed inside the response, until all have sequence numbers or the attempts run out.
    async fn put_with_retries(
        &self,
        stream: &str,
        entries: &[Entry],
        call: &[usize],
        shard_ids: &[String],
        acks: &mut [Option<Ack>],
    ) -> Result<(), BusError> {
        let mut todo: Vec<usize> = call.to_vec();
        let mut backoff = Duration::from_millis(50);
        let attempts = self.shared.config.max_put_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            let request = todo
                .iter()
                .map(|&i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&entries[i].key)
                        .data(Blob::new(entries[i].data.clone()))
                        .build()
                        .map_err(unavailable)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .shared
                .kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(request))
                .send()
                .await
                .map_err(|e| stream_error(stream, e))?;
            let mut failed = Vec::new();
            for (&i, entry) in todo.iter().zip(out.records()) {
                match (
                    entry.error_code(),
                    entry.shard_id(),
                    entry.sequence_number(),
                ) {
                    (None, Some(shard), Some(seq)) => {
                        let partition =
                            shard_ids.iter().position(|s| s == shard).unwrap_or(0) as Partition;
                        acks[i] = Some(Ack {
                            partition,
                            position: Position::Sequence(seq.to_owned()),
                        });
                    }
                    (code, _, _) => {
                        last_error = format!(
                            "{}: {}",
                            code.unwrap_or("no sequence number"),
                            entry.error_message().unwrap_or_default()
                        );
                        failed.push(i);
                    }
                }
            }
            if out.records().len() < todo.len() {
                last_error = "the response has fewer entries than the request".into();
                failed.extend(todo.iter().skip(out.records().len()).copied());
            }
            if failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(stream, failed = failed.len(), attempt, error = %last_error, "PutRecords partially failed; retrying the failed records");
            todo = failed;
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        Err(BusError::Unavailable(format!(
            "{} records still failing after {attempts} attempts: {last_error}",
            todo.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(keys: &[&str], size: usize) -> Vec<Entry> {
        keys.iter()
            .map(|k| Entry {
                key: (*k).to_owned(),
                data: vec![0; size],
            })
            .collect()
    }

    #[test]
    fn rounds_keep_one_record_per_key_per_call_and_preserve_order() {
        let entries = entries_of(&["a", "b", "a", "c", "a", "b"], 1);
        let calls = rounds(&entries);
        assert_eq!(calls, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        let flat: Vec<usize> = calls.concat();
        assert_eq!(flat, (0..entries.len()).collect::<Vec<_>>());
    }

    #[test]
    fn rounds_respect_count_and_size_limits() {
        let keys: Vec<String> = (0..1200).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert!(
            rounds(&entries_of(&keys, 10))
                .iter()
                .all(|c| c.len() <= MAX_PUT_RECORDS)
        );
        assert!(
            rounds(&entries_of(&keys[..12], 1_000_000))
                .iter()
                .all(|c| c.len() <= 5)
        );
    }

    #[test]
    fn the_envelope_counts_against_the_record_limit() {
        let value = vec![b'x'; MAX_RECORD_BYTES - 3];
        assert!(entries(vec![OutRecord::new("k", value.clone())]).is_ok());
        let err = entries(vec![OutRecord::new("k", value).with_header("h", "v")])
            .expect_err("over the limit with its envelope");
        assert!(matches!(err, BusError::Rejected(_)), "{err:?}");
    }

    #[test]
    fn entries_carry_headers_in_the_blob_and_bare_values_unchanged() {
        let out = entries(vec![
            OutRecord::new("a", "plain"),
            OutRecord::new("b", "body").with_header("pitboss-type", "bet_placed"),
        ])
        .expect("valid");
        assert_eq!(out[0].data, b"plain");
        assert!(out[1].data.starts_with(&envelope::MAGIC));
        let (headers, at) = envelope::decode(&out[1].data)
            .expect("valid envelope")
            .expect("an envelope");
        assert_eq!(headers.get_str("pitboss-type"), Some("bet_placed"));
        assert_eq!(&out[1].data[at..], b"body");
    }

    #[test]
    fn partition_keys_are_checked_in_characters() {
        assert!(entries(vec![OutRecord::new("é".repeat(256), "v")]).is_ok());
        for bad in [String::new(), "k".repeat(257)] {
            let err = entries(vec![OutRecord::new(bad, "v")]).expect_err("bad key");
            assert!(matches!(err, BusError::Rejected(_)), "{err:?}");
        }
    }
}
