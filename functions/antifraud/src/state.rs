//! Where the streaming engine keeps what must survive a crash: the engine's last snapshot with
//! the bus positions it covers, and the log of batches processed since — each batch as the
//! position every partition had reached at its end. After a restart the snapshot is restored
//! and the logged batches are replayed with exactly the same boundaries (and so in exactly the
//! same order), which makes every alert and push come out with the same id as before the
//! crash, however the bus interleaves partitions this time.
//!
//! A SQLite file (WAL, one writer): `pitboss up` keeps it in its data directory; a standalone
//! `pitboss antifraud` in `--state-dir`. It belongs to one instance: with several instances in
//! one group each keeps its own (docs/rules.md, "Running the engine").

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pitboss_bus::{Partition, Position};
use rusqlite::{Connection, OptionalExtension, params};

/// A bus position as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Pos {
    O(i64),
    S(String),
}

impl From<&Position> for Pos {
    fn from(p: &Position) -> Self {
        match p {
            Position::Offset(o) => Pos::O(*o),
            Position::Sequence(s) => Pos::S(s.clone()),
        }
    }
}

impl From<Pos> for Position {
    fn from(p: Pos) -> Self {
        match p {
            Pos::O(o) => Position::Offset(o),
            Pos::S(s) => Position::Sequence(s),
        }
    }
}

/// Per `(topic, partition)`: a position.
pub type Positions = BTreeMap<(Arc<str>, Partition), Position>;

fn encode(positions: &Positions) -> Result<Vec<u8>, StateError> {
    let rows: Vec<(&str, Partition, Pos)> = positions
        .iter()
        .map(|((t, p), pos)| (&**t, *p, Pos::from(pos)))
        .collect();
    postcard::to_stdvec(&rows).map_err(|e| StateError(format!("encoding positions: {e}")))
}

fn decode(bytes: &[u8]) -> Result<Positions, StateError> {
    let rows: Vec<(String, Partition, Pos)> = postcard::from_bytes(bytes)
        .map_err(|e| StateError(format!("unreadable positions: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(t, p, pos)| ((Arc::from(t.as_str()), p), pos.into()))
        .collect())
}

/// The state file failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("antifraud state: {0}")]
pub struct StateError(pub String);

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError(e.to_string())
    }
}

/// The last snapshot of one consumer group.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (ms since the epoch, wall clock).
    pub taken_at_ms: i64,
    /// Per topic and partition, the last record whose effect it holds.
    pub positions: Positions,
    /// [`crate::Engine::snapshot`]'s bytes.
    pub engine: Vec<u8>,
}

/// A batch processed after the snapshot: where each of its partitions ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedBatch {
    pub seq: u64,
    pub logged_at_ms: i64,
    pub ends: Positions,
}

/// The state file.
#[derive(Debug)]
pub struct StateStore {
    conn: Connection,
    group: String,
}

impl StateStore {
    /// Opens (creating) the state of `group` in `path`.
    pub fn open(path: &Path, group: &str) -> Result<StateStore, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StateError(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A process kill loses nothing committed with NORMAL; a power cut may lose the last
        // transactions, which the bus replays.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS snapshots (
                 group_id TEXT PRIMARY KEY,
                 taken_at_ms INTEGER NOT NULL,
                 positions BLOB NOT NULL,
                 engine BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS batches (
                 group_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 logged_at_ms INTEGER NOT NULL,
                 ends BLOB NOT NULL,
                 PRIMARY KEY (group_id, seq));",
        )?;
        Ok(StateStore {
            conn,
            group: group.to_owned(),
        })
    }

    /// The group's last snapshot, if any.
    pub fn snapshot(&self) -> Result<Option<Snapshot>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT taken_at_ms, positions, engine FROM snapshots WHERE group_id = ?1",
                params![self.group],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(taken_at_ms, positions, engine)| {
            Ok(Snapshot {
                taken_at_ms,
                positions: decode(&positions)?,
                engine,
            })
        })
        .transpose()
    }

    /// The batches logged since the snapshot, in order.
    pub fn batches(&self) -> Result<Vec<LoggedBatch>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, logged_at_ms, ends FROM batches WHERE group_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![self.group], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, logged_at_ms, ends) = row?;
            out.push(LoggedBatch {
                seq: u64::try_from(seq).unwrap_or(0),
                logged_at_ms,
                ends: decode(&ends)?,
            });
        }
        Ok(out)
    }

    /// Logs a batch before its output is published.
    pub fn log_batch(&self, batch: &LoggedBatch) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO batches (group_id, seq, logged_at_ms, ends) VALUES (?1, ?2, ?3, ?4)",
            params![
                self.group,
                i64::try_from(batch.seq).unwrap_or(i64::MAX),
                batch.logged_at_ms,
                encode(&batch.ends)?
            ],
        )?;
        Ok(())
    }

    /// Replaces the snapshot and drops the batches it covers, in one transaction.
    pub fn save(&mut self, snapshot: &Snapshot, covers_seq: Option<u64>) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (group_id, taken_at_ms, positions, engine) VALUES (?1, ?2, ?3, ?4)",
            params![
                self.group,
                snapshot.taken_at_ms,
                encode(&snapshot.positions)?,
                snapshot.engine
            ],
        )?;
        if let Some(seq) = covers_seq {
            tx.execute(
                "DELETE FROM batches WHERE group_id = ?1 AND seq <= ?2",
                params![self.group, i64::try_from(seq).unwrap_or(i64::MAX)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn snapshots_and_batches_round_trip_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut a = StateStore::open(&path, "a").unwrap();
        assert!(a.snapshot().unwrap().is_none());
        let mut ends = Positions::new();
        ends.insert((Arc::from("events"), 3), Position::Offset(41));
        ends.insert((Arc::from("shards"), 0), Position::Sequence("4955".into()));
        for seq in 1..=3 {
            a.log_batch(&LoggedBatch {
                seq,
                logged_at_ms: 7,
                ends: ends.clone(),
            })
            .unwrap();
        }
        a.save(
            &Snapshot {
                taken_at_ms: 9,
                positions: ends.clone(),
                engine: vec![1, 2, 3],
            },
            Some(2),
        )
        .unwrap();
        let b = StateStore::open(&path, "b").unwrap();
        assert!(b.snapshot().unwrap().is_none(), "groups are apart");
        assert!(b.batches().unwrap().is_empty());
        drop(a);
        let a = StateStore::open(&path, "a").unwrap();
        let s = a.snapshot().unwrap().unwrap();
        assert_eq!(
            (s.taken_at_ms, &s.positions, s.engine),
            (9, &ends, vec![1, 2, 3])
        );
        let left = a.batches().unwrap();
        assert_eq!(left.len(), 1, "batches the snapshot covers are gone");
        assert_eq!((left[0].seq, &left[0].ends), (3, &ends));
    }
}
