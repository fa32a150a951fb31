//! Where the streaming engine keeps what must survive a crash: the engine's last snapshot with
//! the bus positions it covers, and the log of batches processed since — each batch as the
//! position every partition had reached at its end. After a restart the snapshot is restored
//! and the logged batches are replayed with exactly the same boundaries (and so in exactly the
//! same order), which makes every alert and push come out with the same id as before the
//! crash, however the bus interleaves partitions this time.
//!
//! The engine's state is kept as its **units** (one rule's window of one key, one placed bet,
//! one player's hits: [`crate::Unit`]), one row each, and a save writes only the units that
//! changed since the previous one ([`crate::Engine::take_changes`]), so its cost follows the
//! activity since the last save, not every player ever seen. The snapshot row holds the
//! positions, the engine-wide values ([`crate::Changes::meta`]) and a format marker. A file
//! written before units existed holds the whole state as one blob ([`Saved::Whole`],
//! [`crate::Engine::restore`]); it is still read, and the next save replaces it with units.
//!
//! A SQLite file (WAL, one writer): `pitboss up` keeps it in its data directory; a standalone
//! `pitboss antifraud` in `--state-dir`. It belongs to one instance: with several instances in
//! one group each keeps its own (docs/rules.md, "Running the engine").

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pitboss_bus::{Partition, Position};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Change, Changes};

/// `snapshots.format` of a snapshot whose engine state is the whole-engine blob in
/// `snapshots.engine` (files written before units; the column's default).
const FORMAT_WHOLE: i64 = 0;
/// `snapshots.format` of a snapshot whose engine state is the group's rows in `units` plus the
/// engine-wide values in `snapshots.meta`.
const FORMAT_UNITS: i64 = 1;

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

/// Positions as the state file and the changelog write them.
pub(crate) fn encode_positions(positions: &Positions) -> Result<Vec<u8>, StateError> {
    encode(positions)
}

/// Positions written by [`encode_positions`].
pub(crate) fn decode_positions(bytes: &[u8]) -> Result<Positions, StateError> {
    decode(bytes)
}

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

/// The engine's state as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// [`crate::Engine::snapshot`]'s bytes: a file written before units (read, never written).
    Whole(Vec<u8>),
    /// The group's units ([`StateStore::for_each_unit`]) and these engine-wide values
    /// ([`crate::Engine::set_meta`]).
    Units { meta: Vec<u8> },
}

/// The last snapshot of one consumer group.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (ms since the epoch, wall clock).
    pub taken_at_ms: i64,
    /// Per topic and partition, the last record whose effect it holds.
    pub positions: Positions,
    pub engine: Saved,
}

/// What one [`StateStore::save`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Units written (inserted or replaced).
    pub upserted: usize,
    /// Units deleted one by one (gone from the engine).
    pub deleted: usize,
    /// Whether every unit of the group was dropped first (a full save).
    pub full: bool,
    /// Bytes written: the units' values, the engine-wide values and the positions.
    pub bytes: usize,
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
    /// Written with the next [`StateStore::save`]: the save's sequence and writer.
    next_mark: Option<(u64, String)>,
}

/// Takes the lock beside the state file (`<state>.lock`, made with its directory when
/// missing): one process per state file — the engine's, or `pitboss rules warm` writing it.
/// Held while the returned file is open.
pub fn lock(state_path: &Path) -> Result<std::fs::File, StateError> {
    let lock_path = state_path.with_extension("lock");
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StateError(format!("{}: {e}", dir.display())))?;
    }
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| StateError(format!("{}: {e}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError(format!(
            "{} is in use by another rules engine process (one process per state directory)",
            state_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StateError(format!(
            "{}: taking its lock: {e}",
            lock_path.display()
        ))),
    }
}

impl StateStore {
    /// Opens (creating) the state of `group` in `path`; a file written before units gets the
    /// new columns and table (its blob snapshot stays readable).
    pub fn open(path: &Path, group: &str) -> Result<StateStore, StateError> {
        Self::open_file(path, group).map_err(|e| {
            StateError(format!(
                "{}: {} (a damaged file can be moved aside: the engine then starts with empty \
                 windows from the bus's commits, docs/rules.md \"A damaged state file\")",
                path.display(),
                e.0
            ))
        })
    }

    fn open_file(path: &Path, group: &str) -> Result<StateStore, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StateError(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk when it returns. The bus offsets are committed up to a
        // save's positions right after the save, and a batch's output is published right after
        // its log row: with NORMAL an OS crash or power cut could roll either back while the
        // offsets or the output stayed (the bus never delivers those records again; a batch
        // cut differently on replay raises its alerts on other events). One fsync per batch
        // read and per save slice, ~0.3 ms each here.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A lock held a while by another connection (an operator's `sqlite3` on the file)
        // makes a save wait, rather than stop the engine (and with it `pitboss up`).
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
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
                 PRIMARY KEY (group_id, seq));
             CREATE TABLE IF NOT EXISTS units (
                 group_id TEXT NOT NULL,
                 unit TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (group_id, unit)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS instance (
                 id TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS marks (
                 group_id TEXT PRIMARY KEY,
                 save_seq INTEGER NOT NULL,
                 writer TEXT NOT NULL);",
        )?;
        // Columns added with units (a file from before has neither).
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('snapshots')")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        if !columns.iter().any(|c| c == "format") {
            conn.execute_batch(&format!(
                "ALTER TABLE snapshots ADD COLUMN format INTEGER NOT NULL DEFAULT {FORMAT_WHOLE};
                 ALTER TABLE snapshots ADD COLUMN meta BLOB;"
            ))?;
        }
        Ok(StateStore {
            conn,
            group: group.to_owned(),
            next_mark: None,
        })
    }

    /// The sequence and writer of the group's last save as the changelog counts them (none:
    /// no save was marked in this file).
    pub fn mark(&self) -> Result<Option<(u64, String)>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT save_seq, writer FROM marks WHERE group_id = ?1",
                params![self.group],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(s, w)| (u64::try_from(s).unwrap_or(0), w)))
    }

    /// Marks the next [`StateStore::save`] (in its transaction) with this sequence and writer.
    pub fn mark_next_save(&mut self, save_seq: u64, writer: &str) {
        self.next_mark = Some((save_seq, writer.to_owned()));
    }

    /// Replaces the group's state in this file with `image` (read from the changelog), in one
    /// transaction.
    pub fn import(&mut self, image: &crate::changelog::Image) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        for table in ["units", "snapshots", "batches", "marks"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE group_id = ?1"),
                params![self.group],
            )?;
        }
        {
            let mut unit =
                tx.prepare_cached("INSERT INTO units (group_id, unit, value) VALUES (?1, ?2, ?3)")?;
            for (name, value) in &image.units {
                unit.execute(params![self.group, name, value])?;
            }
            let mut batch = tx.prepare_cached(
                "INSERT INTO batches (group_id, seq, logged_at_ms, ends) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for b in image.batches.values() {
                batch.execute(params![
                    self.group,
                    i64::try_from(b.seq).unwrap_or(i64::MAX),
                    b.logged_at_ms,
                    encode(&b.ends)?
                ])?;
            }
        }
        if let Some(m) = &image.mark {
            tx.execute(
                "INSERT INTO snapshots (group_id, taken_at_ms, positions, engine, format, meta)
                 VALUES (?1, ?2, ?3, X'', ?4, ?5)",
                params![
                    self.group,
                    m.taken_at_ms,
                    encode(&m.positions)?,
                    FORMAT_UNITS,
                    m.meta
                ],
            )?;
            tx.execute(
                "INSERT INTO marks (group_id, save_seq, writer) VALUES (?1, ?2, ?3)",
                params![
                    self.group,
                    i64::try_from(m.save_seq).unwrap_or(i64::MAX),
                    m.writer
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// This state file's instance id, made (random) the first time it is asked for: the
    /// engine that runs on this file names itself with it in its group, so a restart on the
    /// same file is recognised as the same engine and any other member as another one.
    pub fn instance_id(&self) -> Result<String, StateError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT id FROM instance LIMIT 1", [], |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            return Ok(id);
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        self.conn
            .execute("INSERT INTO instance (id) VALUES (?1)", params![id])?;
        Ok(id)
    }

    /// The group's last snapshot, if any (its units: [`StateStore::for_each_unit`]).
    pub fn snapshot(&self) -> Result<Option<Snapshot>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT taken_at_ms, positions, format, engine, meta FROM snapshots WHERE group_id = ?1",
                params![self.group],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((taken_at_ms, positions, format, engine, meta)) = row else {
            return Ok(None);
        };
        let engine = match (format, meta) {
            (FORMAT_WHOLE, _) => Saved::Whole(engine),
            (FORMAT_UNITS, Some(meta)) => Saved::Units { meta },
            (FORMAT_UNITS, None) => {
                return Err(StateError("a snapshot of units without its meta".into()));
            }
            (f, _) => {
                return Err(StateError(format!(
                    "snapshot format {f} (this build reads {FORMAT_WHOLE} and {FORMAT_UNITS})"
                )));
            }
        };
        Ok(Some(Snapshot {
            taken_at_ms,
            positions: decode(&positions)?,
            engine,
        }))
    }

    /// The names of the group's stored units.
    pub fn unit_names(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT unit FROM units WHERE group_id = ?1")?;
        let names = stmt
            .query_map(params![self.group], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    /// Calls `f` with the name ([`crate::Unit::name`]) and bytes of every unit of the group, in
    /// name order, without holding them all in memory; stops at `f`'s first error.
    pub fn for_each_unit<E: From<StateError>>(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .conn
            .prepare("SELECT unit, value FROM units WHERE group_id = ?1 ORDER BY unit")
            .map_err(StateError::from)?;
        let mut rows = stmt.query(params![self.group]).map_err(StateError::from)?;
        while let Some(row) = rows.next().map_err(StateError::from)? {
            let name = row
                .get_ref(0)
                .map_err(StateError::from)?
                .as_str()
                .map_err(|e| StateError(format!("unreadable unit name: {e}")))?;
            let value = row
                .get_ref(1)
                .map_err(StateError::from)?
                .as_blob()
                .map_err(|e| StateError(format!("unreadable unit {name}: {e}")))?;
            f(name, value)?;
        }
        Ok(())
    }

    /// How many units the group has saved.
    pub fn unit_count(&self) -> Result<usize, StateError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM units WHERE group_id = ?1",
            params![self.group],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
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

    /// Saves what changed in the engine ([`crate::Engine::take_changes`]) with the positions it
    /// covers and drops the batches it covers, in one transaction: on `changes.full` every unit
    /// of the group is dropped first; units with a value are written, units without one
    /// deleted; the snapshot row gets the positions and the engine-wide values (and, for a file
    /// that held a whole-engine blob, becomes a snapshot of units).
    pub fn save(
        &mut self,
        taken_at_ms: i64,
        positions: &Positions,
        changes: &Changes,
        covers_seq: Option<u64>,
    ) -> Result<SaveStats, StateError> {
        self.save_dropping(taken_at_ms, positions, changes, &[], covers_seq)
    }

    /// [`StateStore::save`] that also deletes the units named in `drop` (the last slice of a
    /// full save written in slices: what the file held that the engine does not).
    pub fn save_dropping(
        &mut self,
        taken_at_ms: i64,
        positions: &Positions,
        changes: &Changes,
        drop: &[String],
        covers_seq: Option<u64>,
    ) -> Result<SaveStats, StateError> {
        let positions = encode(positions)?;
        let tx = self.conn.transaction()?;
        let mut stats = write_units(&tx, &self.group, changes.full, &changes.units)?;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM units WHERE group_id = ?1 AND unit = ?2")?;
            for name in drop {
                stats.deleted += delete.execute(params![self.group, name])?;
            }
        }
        stats.bytes += positions.len() + changes.meta.len();
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (group_id, taken_at_ms, positions, engine, format, meta)
             VALUES (?1, ?2, ?3, X'', ?4, ?5)",
            params![self.group, taken_at_ms, positions, FORMAT_UNITS, changes.meta],
        )?;
        if let Some(seq) = covers_seq {
            tx.execute(
                "DELETE FROM batches WHERE group_id = ?1 AND seq <= ?2",
                params![self.group, i64::try_from(seq).unwrap_or(i64::MAX)],
            )?;
        }
        if let Some((seq, writer)) = self.next_mark.take() {
            tx.execute(
                "INSERT OR REPLACE INTO marks (group_id, save_seq, writer) VALUES (?1, ?2, ?3)",
                params![self.group, i64::try_from(seq).unwrap_or(i64::MAX), writer],
            )?;
        }
        tx.commit()?;
        Ok(stats)
    }

    /// Writes a slice of a save's units (one transaction) without touching the snapshot's
    /// positions: the units may hold events after those positions, which a restart then
    /// replays onto them harmlessly (a window counts an event id once, a score hit counts once;
    /// docs/rules.md, "Across crashes").
    pub fn save_units(&mut self, units: &[Change]) -> Result<SaveStats, StateError> {
        let tx = self.conn.transaction()?;
        let stats = write_units(&tx, &self.group, false, units)?;
        tx.commit()?;
        Ok(stats)
    }
}

/// Writes a state file as the build before units did: `blob` ([`crate::Engine::snapshot`]) as
/// the group's snapshot, taken at 5.
/// Upserts and deletes `units` of `group` in `tx` (after dropping all of them when `full`).
fn write_units(
    tx: &rusqlite::Transaction<'_>,
    group: &str,
    full: bool,
    units: &[Change],
) -> Result<SaveStats, StateError> {
    let mut stats = SaveStats {
        full,
        ..SaveStats::default()
    };
    if full {
        tx.execute("DELETE FROM units WHERE group_id = ?1", params![group])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO units (group_id, unit, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id, unit) DO UPDATE SET value = excluded.value",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM units WHERE group_id = ?1 AND unit = ?2")?;
    // In name order, rows that share B-tree pages are written together (a full save takes
    // half the time it takes in the engine's order).
    let mut named: Vec<(String, &Option<Vec<u8>>)> =
        units.iter().map(|c| (c.unit.name(), &c.value)).collect();
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in named {
        match value {
            Some(v) => {
                upsert.execute(params![group, name, v])?;
                stats.upserted += 1;
                stats.bytes += v.len();
            }
            // After a full drop there is nothing to delete.
            None if full => {}
            None => {
                delete.execute(params![group, name])?;
                stats.deleted += 1;
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn write_file_before_units(
    path: &Path,
    group: &str,
    positions: &Positions,
    blob: &[u8],
) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE snapshots (
             group_id TEXT PRIMARY KEY,
             taken_at_ms INTEGER NOT NULL,
             positions BLOB NOT NULL,
             engine BLOB NOT NULL);
         CREATE TABLE batches (
             group_id TEXT NOT NULL,
             seq INTEGER NOT NULL,
             logged_at_ms INTEGER NOT NULL,
             ends BLOB NOT NULL,
             PRIMARY KEY (group_id, seq));",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO snapshots VALUES (?1, 5, ?2, ?3)",
        params![group, encode(positions).unwrap(), blob],
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Change, Engine, EngineStats, Output, RuleSet, Unit};

    const T0: i64 = 1_780_000_000_000;

    fn ends() -> Positions {
        let mut ends = Positions::new();
        ends.insert((Arc::from("events"), 3), Position::Offset(41));
        ends.insert((Arc::from("shards"), 0), Position::Sequence("4955".into()));
        ends
    }

    fn put(unit: Unit, value: &[u8]) -> Change {
        Change {
            unit,
            value: Some(value.to_vec()),
            expires_at_ms: 0,
        }
    }

    fn gone(unit: Unit) -> Change {
        Change {
            unit,
            value: None,
            expires_at_ms: 0,
        }
    }

    fn units(store: &StateStore) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        store
            .for_each_unit(|n, v| {
                out.push((n.to_owned(), v.to_vec()));
                Ok::<_, StateError>(())
            })
            .unwrap();
        out
    }

    fn meta(store: &StateStore) -> Vec<u8> {
        match store.snapshot().unwrap().unwrap().engine {
            Saved::Units { meta } => meta,
            Saved::Whole(_) => panic!("a whole-engine snapshot"),
        }
    }

    /// A commit is on disk when it returns (`synchronous=FULL`, 2): the offsets committed
    /// after a save, and the output published after a batch's log row, cannot outlive them in
    /// an OS crash.
    #[test]
    fn a_damaged_state_file_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("antifraud.db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let e = StateStore::open(&path, "g").err().unwrap().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("moved aside"), "{e}");
    }

    #[test]
    fn commits_are_synced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("antifraud.db"), "g").unwrap();
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous is not FULL");
    }

    #[test]
    fn snapshots_and_batches_round_trip_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut a = StateStore::open(&path, "a").unwrap();
        assert!(a.snapshot().unwrap().is_none());
        let ends = ends();
        for seq in 1..=3 {
            a.log_batch(&LoggedBatch {
                seq,
                logged_at_ms: 7,
                ends: ends.clone(),
            })
            .unwrap();
        }
        let changes = Changes {
            full: true,
            units: vec![put(Unit::Bet(1), &[1, 2])],
            meta: vec![1, 2, 3],
        };
        a.save(9, &ends, &changes, Some(2)).unwrap();
        let b = StateStore::open(&path, "b").unwrap();
        assert!(b.snapshot().unwrap().is_none(), "groups are apart");
        assert!(b.batches().unwrap().is_empty());
        assert!(units(&b).is_empty());
        drop(a);
        let a = StateStore::open(&path, "a").unwrap();
        let s = a.snapshot().unwrap().unwrap();
        assert_eq!(
            (s.taken_at_ms, &s.positions, s.engine),
            (
                9,
                &ends,
                Saved::Units {
                    meta: vec![1, 2, 3]
                }
            )
        );
        assert_eq!(units(&a), [(Unit::Bet(1).name(), vec![1, 2])]);
        let left = a.batches().unwrap();
        assert_eq!(left.len(), 1, "batches the snapshot covers are gone");
        assert_eq!((left[0].seq, &left[0].ends), (3, &ends));
    }

    #[test]
    fn incremental_saves_upsert_and_delete_units_and_a_full_save_replaces_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let window = |k: u128| Unit::Window {
            rule: "fraud.x@1.00000000000000ab".into(),
            key: k,
        };
        let score = Unit::Score("acme\u{1f}p1".into());
        let mut s = StateStore::open(&path, "g").unwrap();
        let mut other = StateStore::open(&path, "other").unwrap();
        let o = Changes {
            full: true,
            units: vec![put(window(1), b"theirs")],
            meta: vec![0],
        };
        other.save(1, &ends(), &o, None).unwrap();

        let first = Changes {
            full: true,
            units: vec![
                put(window(1), b"w1"),
                put(window(2), b"w2"),
                put(Unit::Bet(7), b"b7"),
                put(score.clone(), b"s1"),
            ],
            meta: vec![1],
        };
        let st = s.save(1, &ends(), &first, None).unwrap();
        assert_eq!((st.full, st.upserted, st.deleted), (true, 4, 0));
        assert_eq!(s.unit_count().unwrap(), 4);

        // Partial: one changed, one gone, one new, the rest untouched.
        let second = Changes {
            full: false,
            units: vec![
                put(window(2), b"w2'"),
                gone(Unit::Bet(7)),
                put(Unit::Bet(8), b"b8"),
                gone(Unit::Bet(9)), // never saved: nothing to delete
            ],
            meta: vec![2],
        };
        let st = s.save(2, &ends(), &second, None).unwrap();
        assert_eq!((st.full, st.upserted, st.deleted), (false, 2, 2));
        assert_eq!(st.bytes, 3 + 2 + 1 + encode(&ends()).unwrap().len());
        drop(s);
        let s = StateStore::open(&path, "g").unwrap();
        let mut want = vec![
            (window(1).name(), b"w1".to_vec()),
            (window(2).name(), b"w2'".to_vec()),
            (Unit::Bet(8).name(), b"b8".to_vec()),
            (score.name(), b"s1".to_vec()),
        ];
        want.sort();
        assert_eq!(units(&s), want);
        assert_eq!(meta(&s), vec![2]);

        // Full again (after a reload): whatever is not among the units goes.
        let mut s = s;
        let third = Changes {
            full: true,
            units: vec![put(window(3), b"w3"), gone(window(1))],
            meta: vec![3],
        };
        let st = s.save(3, &ends(), &third, None).unwrap();
        assert_eq!((st.full, st.upserted, st.deleted), (true, 1, 0));
        drop(s);
        let s = StateStore::open(&path, "g").unwrap();
        assert_eq!(units(&s), [(window(3).name(), b"w3".to_vec())]);
        assert_eq!(meta(&s), vec![3]);
        assert_eq!(
            units(&other),
            [(window(1).name(), b"theirs".to_vec())],
            "another group's units are its own"
        );
    }

    fn shipped() -> RuleSet {
        RuleSet::from_sources(&crate::stream::shipped_sources()).unwrap()
    }

    /// The scripted day of play for `normal` normal players (one of each pattern), each player's
    /// events in order.
    fn events(normal: usize) -> Vec<pitboss_model::Event> {
        crate::scenario::script("acme", T0, normal, 1)
            .iter()
            .flat_map(|p| &p.events)
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .collect()
    }

    fn held(s: EngineStats) -> (usize, usize, usize, usize) {
        (s.keys, s.entries, s.joined_bets, s.scored_players)
    }

    /// An engine running the shipped rules with every unit of `store` and its meta.
    fn reloaded(store: &StateStore) -> Engine {
        let mut e = Engine::new(shipped());
        store
            .for_each_unit(|n, v| {
                assert!(e.load_unit(&Unit::parse(n).unwrap(), v).unwrap(), "{n}");
                Ok::<_, StateError>(())
            })
            .unwrap();
        e.set_meta(&meta(store)).unwrap();
        e
    }

    #[test]
    fn a_save_after_a_few_events_writes_only_the_units_they_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut store = StateStore::open(&path, "g").unwrap();
        let now = pitboss_model::Timestamp::from_millis(T0);
        let mut engine = Engine::new(shipped());
        engine.track_changes(true);
        let mut out = Output::default();
        let all = events(300);
        for e in &all {
            engine.process(e, now, &mut out).unwrap();
        }
        let first = store
            .save(1, &ends(), &engine.take_changes().unwrap(), None)
            .unwrap();
        let saved = store.unit_count().unwrap();
        assert!(first.full);
        assert_eq!(first.upserted, saved);
        assert!(saved > 1_000, "{saved} units");

        // One more bet of one normal player: only its units are written.
        let mut bet = all
            .iter()
            .find(|e| {
                e.player_id == "normal-1"
                    && matches!(e.payload, pitboss_model::Payload::BetPlaced(_))
            })
            .unwrap()
            .clone();
        bet.event_id = Some("00000000-0000-8000-8000-00000000beef".into());
        if let pitboss_model::Payload::BetPlaced(b) = &mut bet.payload {
            b.bet_id = "one-more".into();
        }
        engine.process(&bet, now, &mut out).unwrap();
        let mut touched = Vec::new();
        engine.units_for(&bet, &mut touched);
        let changes = engine.take_changes().unwrap();
        assert!(!changes.full);
        let second = store.save(2, &ends(), &changes, None).unwrap();
        assert_eq!(second.upserted + second.deleted, changes.units.len());
        assert!(
            (1..=touched.len()).contains(&changes.units.len()),
            "{} units written for one event ({} it may touch)",
            changes.units.len(),
            touched.len()
        );
        for c in &changes.units {
            assert!(touched.contains(&c.unit), "{:?} was not touched", c.unit);
        }
        assert!(second.bytes * 20 < first.bytes, "{second:?} vs {first:?}");
        assert_eq!(store.unit_count().unwrap(), saved + 1, "the new bet");

        // Nothing happened: nothing is written but the snapshot row.
        let idle = store
            .save(3, &ends(), &engine.take_changes().unwrap(), None)
            .unwrap();
        assert_eq!((idle.upserted, idle.deleted), (0, 0));

        // What the file holds is the engine.
        drop(store);
        let store = StateStore::open(&path, "g").unwrap();
        assert_eq!(held(reloaded(&store).stats()), held(engine.stats()));
    }

    /// The shipped rules as before buckets: the same windows, every event kept.
    fn unbucketed() -> RuleSet {
        let sources: Vec<(String, String)> = crate::stream::shipped_sources()
            .into_iter()
            .map(|(n, t)| {
                let t = t.replace(", bucket = \"5m\"", "");
                (n, t.replace(", bucket = \"2m\"", ""))
            })
            .collect();
        let set = RuleSet::from_sources(&sources).unwrap();
        assert!(set.rules.iter().all(|r| r.bucket_ms.is_none()));
        set
    }

    fn message_ids(out: &Output) -> Vec<String> {
        let mut ids: Vec<String> = out.alerts.iter().map(|a| a.alert_id.clone()).collect();
        ids.extend(out.pushes.iter().map(|p| p.push_id.clone()));
        ids
    }

    #[test]
    fn state_saved_before_buckets_loads_into_the_bucketed_rules_folded() {
        let now = pitboss_model::Timestamp::from_millis(T0);
        let mut all = events(30);
        all.sort_by_key(|e| e.occurred_at.as_millis());
        let (head, tail) = all.split_at(all.len() / 2);
        let mut out = Output::default();
        // A build before buckets: exact windows, saved as units and as a whole snapshot.
        let mut old = Engine::new(unbucketed());
        old.track_changes(true);
        // This build, bucketed from the start.
        let mut new = Engine::new(shipped());
        for e in head {
            old.process(e, now, &mut out).unwrap();
            new.process(e, now, &mut out).unwrap();
        }
        let changes = old.take_changes().unwrap();
        let whole = old.snapshot_format1();
        let mut loaded = Engine::new(shipped());
        for c in &changes.units {
            let bytes = c.value.as_ref().unwrap();
            if matches!(c.unit, Unit::Window { .. }) {
                assert_eq!(bytes[0], 1, "format 1, as before buckets");
            }
            assert!(loaded.load_unit(&c.unit, bytes).unwrap(), "{:?}", c.unit);
        }
        loaded.set_meta(&changes.meta).unwrap();
        let (mut restored, report) = Engine::restore(shipped(), &whole).unwrap();
        assert!(
            report.fresh.is_empty() && report.removed.is_empty(),
            "{report:?}"
        );
        let stats = new.stats();
        assert!(stats.buckets > 10, "{stats:?}");
        // Folded when loaded (one width before each key's newest event; the engine that ran
        // bucketed folds in batches, so more or fewer of the newest events may be exact).
        let (ls, rs) = (loaded.stats(), restored.stats());
        assert_eq!(
            (ls.keys, ls.entries, ls.buckets),
            (rs.keys, rs.entries, rs.buckets)
        );
        assert_eq!(ls.keys, stats.keys);
        assert!(
            ls.buckets > 10 && ls.entries < old.stats().entries,
            "{ls:?}"
        );
        // What the bucketed engine writes now is format 2 for windows with buckets, and it
        // loads back.
        new.track_changes(true);
        let saved = new.take_changes().unwrap();
        let mut again = Engine::new(shipped());
        let mut formats = [0usize; 3];
        for c in &saved.units {
            let bytes = c.value.as_ref().unwrap();
            if matches!(c.unit, Unit::Window { .. }) {
                formats[usize::from(bytes[0]).min(2)] += 1;
            }
            assert!(again.load_unit(&c.unit, bytes).unwrap());
        }
        assert!(formats[1] > 0 && formats[2] > 0, "{formats:?}");
        again.set_meta(&saved.meta).unwrap();
        let counts = |s: EngineStats| (s.keys, s.entries, s.buckets, s.joined_bets);
        assert_eq!(counts(again.stats()), counts(new.stats()));
        // The rest of the stream raises the same on all of them.
        let mut want = Output::default();
        for e in tail {
            new.process(e, now, &mut want).unwrap();
        }
        for engine in [&mut loaded, &mut restored, &mut again] {
            let mut got = Output::default();
            for e in tail {
                engine.process(e, now, &mut got).unwrap();
            }
            assert_eq!(message_ids(&got), message_ids(&want));
        }
        assert!(message_ids(&want).len() >= 3, "{:?}", message_ids(&want));
    }

    #[test]
    fn a_reload_that_adds_or_removes_buckets_keeps_the_state_converted() {
        let now = pitboss_model::Timestamp::from_millis(T0);
        let mut all = events(20);
        all.sort_by_key(|e| e.occurred_at.as_millis());
        let (head, tail) = all.split_at(all.len() / 2);
        let mut out = Output::default();
        let mut e = Engine::new(unbucketed());
        let mut bucketed = Engine::new(shipped());
        for x in head {
            e.process(x, now, &mut out).unwrap();
            bucketed.process(x, now, &mut out).unwrap();
        }
        assert_eq!(e.stats().buckets, 0);
        let report = e.replace_rules(shipped());
        assert!(
            report.fresh.is_empty() && report.removed.is_empty(),
            "{report:?}"
        );
        assert!(e.stats().buckets > 0);
        let (mut want, mut got) = (Output::default(), Output::default());
        for x in tail {
            bucketed.process(x, now, &mut want).unwrap();
            e.process(x, now, &mut got).unwrap();
        }
        assert_eq!(message_ids(&got), message_ids(&want));
        // Without buckets again: they cannot be split, so they go; the rest stays.
        let entries = e.stats().entries;
        let report = e.replace_rules(unbucketed());
        assert!(report.fresh.is_empty(), "{report:?}");
        // Said in the reload's log line: their folded events are gone.
        let mut refolded = report.refolded.clone();
        refolded.sort();
        assert_eq!(
            refolded,
            [
                "fraud.deposit_withdrawal_no_play",
                "rg.cancelled_withdrawal_gambled",
                "rg.loss_chasing"
            ]
        );
        let s = e.stats();
        assert_eq!((s.buckets, s.entries), (0, entries));
        // Back to buckets, then a deposit rule that folds its deposits too (no `exact`): the
        // change of folded measures is reported as well.
        e.replace_rules(shipped());
        let folding: Vec<(String, String)> = crate::stream::shipped_sources()
            .into_iter()
            .map(|(n, t)| (n, t.replace("  exact = true\n", "")))
            .collect();
        let report = e.replace_rules(RuleSet::from_sources(&folding).unwrap());
        assert_eq!(report.refolded, ["fraud.deposit_withdrawal_no_play"]);
    }

    #[test]
    fn window_units_of_any_bytes_load_or_fail_without_panicking() {
        // Bucketed windows as saved, then damaged byte by byte, loaded and run on.
        let now = pitboss_model::Timestamp::from_millis(T0);
        let all = events(3);
        let mut e = Engine::new(shipped());
        e.track_changes(true);
        let mut out = Output::default();
        for ev in &all {
            e.process(ev, now, &mut out).unwrap();
        }
        let saved: Vec<Change> = e
            .take_changes()
            .unwrap()
            .units
            .into_iter()
            .filter(|c| c.value.as_ref().is_some_and(|v| v[0] == 2))
            .collect();
        assert!(!saved.is_empty());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400 {
            let c = &saved[round % saved.len()];
            let mut bytes = c.value.clone().unwrap();
            for _ in 0..1 + round % 4 {
                let i = 1 + (next() as usize) % (bytes.len() - 1);
                bytes[i] = next() as u8;
            }
            if round % 7 == 0 {
                bytes.truncate(1 + (next() as usize) % bytes.len());
            }
            let mut engine = Engine::new(shipped());
            let _ = engine.load_unit(&c.unit, &bytes);
            engine.track_changes(true);
            for ev in &all {
                engine.process(ev, now, &mut out).unwrap();
            }
            engine.take_changes().unwrap();
        }
    }

    #[test]
    fn a_whole_engine_snapshot_from_before_units_is_still_read_and_replaced_by_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = pitboss_model::Timestamp::from_millis(T0);
        let mut engine = Engine::new(shipped());
        let mut out = Output::default();
        for e in &events(20) {
            engine.process(e, now, &mut out).unwrap();
        }
        let blob = engine.snapshot().unwrap();
        write_file_before_units(&path, "g", &ends(), &blob);
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO batches VALUES ('g', 4, 6, ?1)",
                params![encode(&ends()).unwrap()],
            )
            .unwrap();
        let mut store = StateStore::open(&path, "g").unwrap();
        let s = store.snapshot().unwrap().unwrap();
        assert_eq!((s.taken_at_ms, &s.positions), (5, &ends()));
        assert_eq!(s.engine, Saved::Whole(blob.clone()));
        assert_eq!(store.batches().unwrap().len(), 1);
        assert_eq!(store.unit_count().unwrap(), 0);
        let Saved::Whole(bytes) = s.engine else {
            unreachable!()
        };
        let (mut restored, report) = Engine::restore(shipped(), &bytes).unwrap();
        assert!(report.fresh.is_empty() && report.removed.is_empty());
        assert_eq!(held(restored.stats()), held(engine.stats()));

        // The first save after it writes the whole state as units.
        restored.track_changes(true);
        let st = store
            .save(7, &s.positions, &restored.take_changes().unwrap(), Some(4))
            .unwrap();
        assert!(st.full && st.upserted > 50, "{st:?}");
        drop(store);
        let store = StateStore::open(&path, "g").unwrap();
        assert!(matches!(
            store.snapshot().unwrap().unwrap().engine,
            Saved::Units { .. }
        ));
        assert_eq!(store.unit_count().unwrap(), st.upserted);
        assert!(store.batches().unwrap().is_empty());
        assert_eq!(held(reloaded(&store).stats()), held(engine.stats()));
    }

    /// A whole-engine blob of format 2 (before hits kept their tags in it) is still restored:
    /// windows, cooldowns, the join and the scores, each hit tagged 0 (so one applied again
    /// after such a restore counts again, as that format could not tell). Format 3 keeps the
    /// tags (what they do across a restore — a shared device's finding raised again adds no
    /// points — is `random_streams_restored_at_random_points_raise_what_one_engine_raises`).
    #[test]
    fn a_format_2_blob_is_still_restored_and_format_3_keeps_the_hits_tags() {
        let events = crate::scenario::script("acme", T0, 4, 1);
        let events: Vec<pitboss_model::Event> = events
            .iter()
            .flat_map(|p| p.events.iter())
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .collect();
        let now = pitboss_model::Timestamp::from_millis(T0);
        let mut engine = Engine::new(shipped());
        let mut out = Output::default();
        for e in &events {
            engine.process(e, now, &mut out).unwrap();
        }
        assert!(engine.stats().scored_players > 0);
        for (blob, tagged) in [
            (engine.snapshot_format2(), false),
            (engine.snapshot().unwrap(), true),
        ] {
            let (restored, report) = Engine::restore(shipped(), &blob).unwrap();
            assert!(
                report.fresh.is_empty() && report.removed.is_empty(),
                "{report:?}"
            );
            let (a, b) = (restored.stats(), engine.stats());
            assert_eq!(
                (a.keys, a.entries, a.joined_bets, a.scored_players),
                (b.keys, b.entries, b.joined_bets, b.scored_players)
            );
            let tags = restored.hit_tags();
            assert!(!tags.is_empty());
            assert_eq!(tags.iter().all(|t| *t == 0), !tagged, "{tags:?}");
        }
    }
}
