//! The state file mirrored onto a compacted Kafka topic, so that the engine that takes a group
//! over on another machine (a stand-by, a replaced container) starts from the windows of the
//! engine it replaces instead of empty ones (docs/rules.md, "The state changelog").
//!
//! Every write to the state file is also published, in the same order, to one partition of the
//! changelog topic, under keys prefixed by the group (`<group>/…`), before what depends on it
//! happens: a logged batch before the batch's alerts are published, a save's units and
//! positions before the positions are committed to the group. Keys are
//! `<length of the group name>:<group>/<record>`, so no group's keys are another's. Records:
//!
//! - `u/<unit>`: a unit's bytes; a tombstone when the unit is gone. A unit larger than
//!   [`CHUNK`] is split: its parts go first as `c/<unit>/<version>/<i>` (i ≥ 1), then `u/<unit>`
//!   with the first part and the headers `chunks` (how many) and `version`;
//! - `b/<seq>`: a logged batch (`seq`, `logged_at_ms`, ends, writer); a tombstone once a save
//!   covers it;
//! - `full`: a full save begins: units not written again before its `meta` are dropped when
//!   that `meta` arrives (a full save cut short drops nothing);
//! - `meta`: a save finished: its sequence, writer, time, positions, engine-wide values and the
//!   last batch it covers.
//!
//! Reading the partition from its start and folding the records in order gives the state file
//! as its writer had it ([`Image`]); compaction keeps the last record of each key, which folds
//! to the same image.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pitboss_bus::{Bus, BusError, OutRecord, ReadFrom, header};

use crate::Change;
use crate::state::{LoggedBatch, Positions, StateError};

/// Largest piece of a unit in one record (Kafka's default `max.message.bytes` is ~1 MB).
pub const CHUNK: usize = 500_000;

const CHUNKS: &str = "chunks";
const VERSION: &str = "version";

/// Units written in parts: name → (version, parts).
pub type Chunked = HashMap<String, (u64, u32)>;

/// A finished save, as the `meta` record carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveMark {
    /// Saves of the group, counted across every engine that ran it.
    pub save_seq: u64,
    /// The state file (instance id) of the engine that wrote it.
    pub writer: String,
    pub taken_at_ms: i64,
    pub positions: Positions,
    /// [`crate::Engine::meta`].
    pub meta: Vec<u8>,
    pub covers_seq: Option<u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MarkWire {
    save_seq: u64,
    writer: String,
    taken_at_ms: i64,
    positions: Vec<u8>,
    meta: Vec<u8>,
    covers_seq: Option<u64>,
}

/// The state file as the changelog holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// Unit name → bytes.
    pub units: BTreeMap<String, Vec<u8>>,
    pub batches: BTreeMap<u64, LoggedBatch>,
    /// The last finished save (none: the group never saved).
    pub mark: Option<SaveMark>,
    /// The state file that wrote the last save or logged batch.
    pub last_writer: Option<String>,
    /// Units left out: a record that could not be read, a split unit missing a part (the
    /// engine starts those keys empty, as for an unreadable unit in the file).
    pub skipped: usize,
    /// A full save began and its mark never came (its writer stopped between slices): the
    /// next mark of any save would drop every unit not written since, so the next save must
    /// be a full one.
    pub full_open: bool,
}

/// Writes the changelog records of one group.
#[derive(Debug)]
pub struct Changelog {
    pub topic: String,
    group: String,
    /// Units written in parts: the version and part count of their last write, so a later write
    /// or delete also deletes those parts.
    chunked: Chunked,
    /// Batches logged and not yet covered by a save.
    logged: Vec<u64>,
    version: u64,
    /// The state file (instance id) writing.
    writer: String,
}

impl Changelog {
    pub fn new(
        topic: impl Into<String>,
        group: impl Into<String>,
        writer: impl Into<String>,
    ) -> Changelog {
        Changelog {
            topic: topic.into(),
            group: group.into(),
            chunked: HashMap::new(),
            logged: Vec::new(),
            version: 0,
            writer: writer.into(),
        }
    }

    /// Continues after `image` (read at start): its split units and logged batches.
    pub fn resume(&mut self, image_chunked: Chunked, logged: Vec<u64>) {
        self.version = image_chunked.values().map(|(v, _)| *v).max().unwrap_or(0);
        self.chunked = image_chunked;
        self.logged = logged;
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", prefix(&self.group))
    }

    fn tombstone(&self, rest: &str) -> OutRecord {
        OutRecord::new(self.key(rest), Vec::new()).with_header(header::TOMBSTONE, "1")
    }

    /// The records of units written (a full save first drops every unit: `full`).
    pub fn units(&mut self, full: bool, changes: &[Change], save_seq: u64) -> Vec<OutRecord> {
        let mut out = Vec::with_capacity(changes.len() + usize::from(full));
        if full {
            out.push(OutRecord::new(self.key("full"), save_seq.to_string()));
        }
        for c in changes {
            let name = c.unit.name();
            // Parts of its previous write go once the new write is in (a new write has a new
            // version, so nothing read before then lacks a part).
            let old = self.chunked.remove(&name);
            match &c.value {
                None => out.push(self.tombstone(&format!("u/{name}"))),
                Some(v) if v.len() <= CHUNK => {
                    out.push(OutRecord::new(self.key(&format!("u/{name}")), v.clone()));
                }
                Some(v) => {
                    self.version += 1;
                    let version = self.version;
                    let parts: Vec<&[u8]> = v.chunks(CHUNK).collect();
                    for (i, p) in parts.iter().enumerate().skip(1) {
                        out.push(OutRecord::new(
                            self.key(&format!("c/{name}/{version}/{i}")),
                            p.to_vec(),
                        ));
                    }
                    out.push(
                        OutRecord::new(self.key(&format!("u/{name}")), parts[0].to_vec())
                            .with_header(CHUNKS, parts.len().to_string())
                            .with_header(VERSION, version.to_string()),
                    );
                    self.chunked.insert(
                        name.clone(),
                        (version, u32::try_from(parts.len()).unwrap_or(0)),
                    );
                }
            }
            if let Some((v, n)) = old {
                for i in 1..n {
                    out.push(self.tombstone(&format!("c/{name}/{v}/{i}")));
                }
            }
        }
        out
    }

    /// The record of a logged batch.
    pub fn batch(&mut self, b: &LoggedBatch) -> Result<OutRecord, StateError> {
        self.logged.push(b.seq);
        let wire = (
            b.seq,
            b.logged_at_ms,
            crate::state::encode_positions(&b.ends)?,
            self.writer.as_str(),
        );
        let bytes = postcard::to_stdvec(&wire)
            .map_err(|e| StateError(format!("encoding a logged batch: {e}")))?;
        Ok(OutRecord::new(self.key(&format!("b/{}", b.seq)), bytes))
    }

    /// Tombstones of logged batches `seqs` (stale ones: logged by a run whose file this
    /// writer did not take).
    pub fn forget_batches(&mut self, seqs: &[u64]) -> Vec<OutRecord> {
        self.logged.retain(|s| !seqs.contains(s));
        seqs.iter()
            .map(|s| self.tombstone(&format!("b/{s}")))
            .collect()
    }

    /// The records that finish a save: the batches it covers deleted, then its mark.
    pub fn finish(&mut self, mark: &SaveMark) -> Result<Vec<OutRecord>, StateError> {
        let mut out = Vec::new();
        if let Some(c) = mark.covers_seq {
            let (gone, kept): (Vec<u64>, Vec<u64>) = self.logged.iter().partition(|s| **s <= c);
            for s in gone {
                out.push(self.tombstone(&format!("b/{s}")));
            }
            self.logged = kept;
        }
        let wire = MarkWire {
            save_seq: mark.save_seq,
            writer: mark.writer.clone(),
            taken_at_ms: mark.taken_at_ms,
            positions: crate::state::encode_positions(&mark.positions)?,
            meta: mark.meta.clone(),
            covers_seq: mark.covers_seq,
        };
        let bytes = postcard::to_stdvec(&wire)
            .map_err(|e| StateError(format!("encoding a save mark: {e}")))?;
        out.push(OutRecord::new(self.key("meta"), bytes));
        Ok(out)
    }
}

/// The key prefix of `group`'s records.
fn prefix(group: &str) -> String {
    format!("{}:{group}/", group.len())
}

/// Folds records of the changelog, in order, into the image of one group's state file.
#[derive(Debug)]
pub struct Folder {
    prefix: String,
    image: Image,
    parts: HashMap<String, Vec<u8>>,
    chunked: Chunked,
    /// A full save began and its mark has not come: the units written since.
    full: Option<std::collections::HashSet<String>>,
}

impl Folder {
    pub fn new(group: &str) -> Folder {
        Folder {
            prefix: prefix(group),
            image: Image::default(),
            parts: HashMap::new(),
            chunked: HashMap::new(),
            full: None,
        }
    }

    /// Whether the record is this group's.
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    /// Applies one record (another group's is ignored). A record that cannot be read is left
    /// out and counted in [`Image::skipped`].
    pub fn push(&mut self, key: &str, value: &[u8], headers: &pitboss_bus::Headers) {
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return;
        };
        let gone = headers.get(header::TOMBSTONE).is_some() || value.is_empty();
        if rest == "full" {
            self.full = Some(std::collections::HashSet::new());
        } else if rest == "meta" {
            self.mark(value);
        } else if let Some(seq) = rest.strip_prefix("b/") {
            self.batch(seq, gone, value);
        } else if let Some(part) = rest.strip_prefix("c/") {
            if gone {
                self.parts.remove(part);
            } else {
                self.parts.insert(part.to_owned(), value.to_vec());
            }
        } else if let Some(name) = rest.strip_prefix("u/") {
            self.unit(name, gone, value, headers);
        } else {
            self.image.skipped += 1;
        }
    }

    fn mark(&mut self, value: &[u8]) {
        let Ok(w) = postcard::from_bytes::<MarkWire>(value) else {
            self.image.skipped += 1;
            return;
        };
        let Ok(positions) = crate::state::decode_positions(&w.positions) else {
            self.image.skipped += 1;
            return;
        };
        if let Some(kept) = self.full.take() {
            // The full save is complete: what it did not write again is gone.
            self.image.units.retain(|name, _| kept.contains(name));
            self.chunked.retain(|name, _| kept.contains(name));
        }
        self.image.last_writer = Some(w.writer.clone());
        self.image.mark = Some(SaveMark {
            save_seq: w.save_seq,
            writer: w.writer,
            taken_at_ms: w.taken_at_ms,
            positions,
            meta: w.meta,
            covers_seq: w.covers_seq,
        });
    }

    fn batch(&mut self, seq: &str, gone: bool, value: &[u8]) {
        let Ok(seq) = seq.parse::<u64>() else {
            self.image.skipped += 1;
            return;
        };
        if gone {
            self.image.batches.remove(&seq);
            return;
        }
        let Ok((s, logged_at_ms, ends, writer)) =
            postcard::from_bytes::<(u64, i64, Vec<u8>, String)>(value)
        else {
            self.image.skipped += 1;
            return;
        };
        let Ok(ends) = crate::state::decode_positions(&ends) else {
            self.image.skipped += 1;
            return;
        };
        self.image.last_writer = Some(writer);
        self.image.batches.insert(
            seq,
            LoggedBatch {
                seq: s,
                logged_at_ms,
                ends,
            },
        );
    }

    fn unit(&mut self, name: &str, gone: bool, value: &[u8], headers: &pitboss_bus::Headers) {
        self.chunked.remove(name);
        if let Some(kept) = &mut self.full {
            kept.insert(name.to_owned());
        }
        if gone {
            self.image.units.remove(name);
            return;
        }
        let n: u32 = headers
            .get_str(CHUNKS)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        if n <= 1 {
            self.image.units.insert(name.to_owned(), value.to_vec());
            return;
        }
        let version: u64 = headers
            .get_str(VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut whole = value.to_vec();
        for i in 1..n {
            let Some(p) = self.parts.get(&format!("{name}/{version}/{i}")) else {
                // Parts are written before their record and deleted only after a newer one,
                // so this is a topic that lost records (not compacted, expired): the key
                // starts empty, as for an unreadable unit in the file.
                self.image.units.remove(name);
                self.image.skipped += 1;
                return;
            };
            whole.extend_from_slice(p);
        }
        self.chunked.insert(name.to_owned(), (version, n));
        self.image.units.insert(name.to_owned(), whole);
    }

    /// The image, and the split units' versions and part counts (for [`Changelog::resume`]).
    pub fn finish(mut self) -> (Image, Chunked) {
        self.image.full_open = self.full.is_some();
        (self.image, self.chunked)
    }
}

/// Folds records (in order) into the image of `group`'s state file.
pub fn fold<'a>(
    group: &str,
    records: impl IntoIterator<Item = (&'a str, &'a [u8], &'a pitboss_bus::Headers)>,
) -> (Image, Chunked) {
    let mut f = Folder::new(group);
    for (k, v, h) in records {
        f.push(k, v, h);
    }
    f.finish()
}

/// Reads the whole changelog `topic` (to where it ended when the read began), folding
/// `group`'s records as they come. `Ok(None)`: the topic has nothing of the group.
pub async fn read(
    bus: &Arc<dyn Bus>,
    topic: &str,
    group: &str,
) -> Result<Option<(Image, Chunked)>, ReadError> {
    let mut reader = bus.reader_all(topic, ReadFrom::Earliest).await?;
    let mut folder = Folder::new(group);
    let mut any = false;
    while !reader.caught_up() {
        for r in reader.poll(10_000, Duration::from_millis(500)).await? {
            any |= folder.owns(&r.key);
            folder.push(&r.key, &r.value, &r.headers);
        }
    }
    Ok(any.then(|| folder.finish()))
}

/// Reading the changelog failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Unit;
    use pitboss_bus::Position;

    fn unit(n: u8) -> Unit {
        Unit::Bet(u64::from(n))
    }

    fn put(n: u8, v: Vec<u8>) -> Change {
        Change {
            unit: unit(n),
            value: Some(v),
            expires_at_ms: 0,
        }
    }

    fn gone(n: u8) -> Change {
        Change {
            unit: unit(n),
            value: None,
            expires_at_ms: 0,
        }
    }

    fn batch(seq: u64) -> LoggedBatch {
        let mut ends = Positions::new();
        ends.insert((Arc::from("events"), 1), Position::Offset(seq as i64 * 10));
        LoggedBatch {
            seq,
            logged_at_ms: 7,
            ends,
        }
    }

    fn mark(save_seq: u64, covers: Option<u64>) -> SaveMark {
        let mut positions = Positions::new();
        positions.insert((Arc::from("events"), 1), Position::Offset(save_seq as i64));
        SaveMark {
            save_seq,
            writer: "a".into(),
            taken_at_ms: 5,
            positions,
            meta: vec![1, 2],
            covers_seq: covers,
        }
    }

    fn image(group: &str, records: &[OutRecord]) -> (Image, Chunked) {
        fold(
            group,
            records
                .iter()
                .map(|r| (r.key.as_str(), r.value.as_slice(), &r.headers)),
        )
    }

    fn names(img: &Image) -> Vec<String> {
        img.units.keys().cloned().collect()
    }

    /// Keeps the last record of each key, in the order of those last records (what Kafka's
    /// compaction leaves).
    fn compacted(records: &[OutRecord]) -> Vec<OutRecord> {
        let last: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key.as_str(), i))
            .collect();
        records
            .iter()
            .enumerate()
            .filter(|(i, r)| last[r.key.as_str()] == *i)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn no_live_parts(records: &[OutRecord]) -> bool {
        compacted(records)
            .iter()
            .filter(|r| r.key.contains("/c/"))
            .all(|r| r.headers.get(header::TOMBSTONE).is_some())
    }

    #[test]
    fn the_folded_changelog_is_the_state_file_its_writer_had_and_compaction_keeps_it() {
        let mut log = Changelog::new("state", "g", "a");
        let big: Vec<u8> = (0..(2 * CHUNK + 7)).map(|i| (i % 251) as u8).collect();
        let mut rec = log.units(true, &[put(1, vec![1]), put(2, vec![2]), put(3, big)], 1);
        rec.push(log.batch(&batch(1)).unwrap());
        rec.push(log.batch(&batch(2)).unwrap());
        rec.extend(log.finish(&mark(1, Some(1))).unwrap());
        // The next save: 1 changed, 2 gone, the big one rewritten smaller, batch 3 logged.
        rec.extend(log.units(false, &[put(1, vec![9]), gone(2), put(3, vec![3])], 2));
        rec.push(log.batch(&batch(3)).unwrap());
        // Groups whose names extend this one's, on the same topic, are not this group's.
        rec.extend(Changelog::new("state", "g/b", "x").units(false, &[put(4, vec![4])], 1));
        rec.push(
            Changelog::new("state", "g/b", "x")
                .batch(&batch(9))
                .unwrap(),
        );
        let (img, chunked) = image("g", &rec);
        assert_eq!(
            img.units.clone().into_iter().collect::<Vec<_>>(),
            vec![(unit(1).name(), vec![9]), (unit(3).name(), vec![3])]
        );
        assert_eq!(img.batches.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(img.mark, Some(mark(1, Some(1))));
        assert_eq!((img.last_writer.as_deref(), img.skipped), (Some("a"), 0));
        assert!(chunked.is_empty());
        // The rewrite deleted the big unit's parts: nothing of it is left after compaction.
        assert!(no_live_parts(&rec));
        assert_eq!(image("g", &compacted(&rec)).0, img);
    }

    #[test]
    fn a_split_unit_is_put_back_together_and_its_parts_go_after_its_next_write() {
        let mut log = Changelog::new("state", "g", "a");
        let big: Vec<u8> = (0..(CHUNK + 1)).map(|i| (i % 7) as u8).collect();
        let mut rec = log.units(false, &[put(1, vec![1]), put(2, big.clone())], 1);
        let (img, chunked) = image("g", &rec);
        assert_eq!(img.units[&unit(2).name()], big);
        assert_eq!(chunked[&unit(2).name()].1, 2);
        assert!(img.mark.is_none());
        // Another writer resuming after this image deletes the parts when it rewrites the
        // unit; a reader that stops anywhere in between never lacks a part.
        let mut resumed = Changelog::new("state", "g", "b");
        resumed.resume(chunked, vec![]);
        let rewrite = resumed.units(false, &[put(2, big[..10].to_vec())], 2);
        assert!(
            rewrite
                .first()
                .unwrap()
                .key
                .ends_with("/u/b|0000000000000002")
        );
        for cut in 0..=rewrite.len() {
            let mut partial = rec.clone();
            partial.extend(rewrite[..cut].iter().cloned());
            let (img, _) = image("g", &partial);
            assert_eq!(img.skipped, 0, "cut after {cut}");
            assert_eq!(img.units.len(), 2, "cut after {cut}");
        }
        rec.extend(rewrite);
        assert!(no_live_parts(&rec));
    }

    #[test]
    fn a_full_save_drops_what_it_did_not_write_only_once_its_mark_is_in() {
        let mut log = Changelog::new("state", "g", "a");
        let mut rec = log.units(false, &[put(1, vec![1]), put(2, vec![2])], 1);
        rec.extend(log.finish(&mark(1, None)).unwrap());
        // A full save that writes only unit 3, cut short before its mark: nothing dropped.
        let full = log.units(true, &[put(3, vec![3])], 2);
        let mut cut = rec.clone();
        cut.extend(full.iter().cloned());
        let (img, _) = image("g", &cut);
        assert_eq!(
            names(&img),
            [unit(1).name(), unit(2).name(), unit(3).name()]
        );
        assert_eq!(img.mark, Some(mark(1, None)));
        assert!(
            img.full_open,
            "the cut-short full save is reported: the next save is full"
        );
        // With its mark: only what it wrote is left, before and after compaction.
        rec.extend(full);
        rec.extend(log.finish(&mark(2, None)).unwrap());
        let (img, _) = image("g", &rec);
        assert_eq!(names(&img), [unit(3).name()]);
        assert!(!img.full_open);
        assert_eq!(image("g", &compacted(&rec)).0, img);
    }

    #[test]
    fn unreadable_records_and_a_unit_missing_a_part_are_left_out_not_fatal() {
        let mut log = Changelog::new("state", "g", "a");
        let mut rec: Vec<OutRecord> = log
            .units(false, &[put(1, vec![5u8; CHUNK + 1]), put(2, vec![2])], 1)
            .into_iter()
            .filter(|r| !r.key.contains("/c/"))
            .collect();
        rec.push(OutRecord::new("1:g/b/x", vec![1]));
        rec.push(OutRecord::new("1:g/meta", vec![0xff]));
        rec.push(OutRecord::new("1:g/what", vec![1]));
        let (img, _) = image("g", &rec);
        assert_eq!(names(&img), [unit(2).name()]);
        assert_eq!(img.skipped, 4);
        assert!(img.mark.is_none());
    }
}
