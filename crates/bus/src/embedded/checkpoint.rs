//! WAL checkpoints off the writer's thread.
//!
//! SQLite copies a WAL database's log back into the database ("checkpoints") in the commit
//! that takes the log past 1,000 pages, on the committing thread: every few megabytes one
//! commit also writes the pages back and syncs the database. On the embedded log that commit
//! held every publish waiting behind it (ingest's acknowledgements, the rules engine's
//! output). A [`Checkpointer`] turns the commit-time checkpoints off on the writer's
//! connection ([`Checkpointer::writer_pragmas`]) and runs them on a thread of its own, with its
//! own connection, in `PASSIVE` mode: it does not wait for the writer or the readers.
//! Durability is unchanged: a commit is in the log when it returns (synced as `synchronous`
//! says), and the checkpoint syncs the database before the log is reused (`synchronous` as on
//! the writer). (Tried on the rules engine's state file too and not kept there: its batch
//! log's small commits then stalled behind the checkpoint's sync; docs/benchmarks.md.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Checkpoints one database every `every` until dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often a [`Checkpointer`] runs by default: at ~3 MB/s of commits (10,000 events/s on the
/// log) a checkpoint copies ~0.8 MB.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

impl Checkpointer {
    /// What the writer's connection needs: no checkpoints of its own, and a log file cut back
    /// to 64 MB when it is reset (it can grow past that while readers hold old pages).
    pub fn writer_pragmas(conn: &Connection) -> rusqlite::Result<()> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
    }

    /// Starts checkpointing the WAL database at `path` (already in WAL mode) every `every`,
    /// syncing as `synchronous` says (the writer's setting).
    pub fn spawn(path: &Path, synchronous: &str, every: Duration) -> std::io::Result<Self> {
        let conn = open(path, synchronous).map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = path
            .file_name()
            .map_or_else(|| "db".to_owned(), |n| n.to_string_lossy().into_owned());
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint {name}"))
            .spawn({
                let stop = stop.clone();
                let path = path.to_path_buf();
                move || run(&conn, &path, &stop, every)
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

fn open(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

fn run(conn: &Connection, path: &Path, stop: &AtomicBool, every: Duration) {
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(every);
        // (busy, log pages, pages checkpointed): PASSIVE copies what no reader still needs.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed; retrying");
            }
            Err(_) => {}
        }
    }
    // A last one, so a clean stop leaves a short log behind (the next open copies it back
    // otherwise: nothing is lost either way).
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
        tracing::warn!(path = %path.display(), error = %e, "last WAL checkpoint failed");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                tracing::error!("the WAL checkpoint thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// With the writer's checkpoints off, every write adds to the log; once the checkpointer
    /// has copied the log back, the writer's next transaction starts it again from the top
    /// (the file stops growing), and nothing written is lost.
    #[test]
    fn the_checkpointer_copies_the_log_back_so_the_writer_restarts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        Checkpointer::writer_pragmas(&conn).unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let write = || {
            conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                .unwrap();
        };
        let size = || {
            std::fs::metadata(dir.path().join("db.sqlite-wal"))
                .unwrap()
                .len()
        };
        for _ in 0..1500 {
            write();
        }
        let grown = size();
        assert!(
            grown > 1500 * 4000,
            "no checkpoint on the writer: {grown} bytes"
        );
        let cp = Checkpointer::spawn(&path, "NORMAL", Duration::from_millis(5)).unwrap();
        let mut writes = 1500;
        let restarted = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            let before = size();
            write();
            writes += 1;
            size() == before
        });
        drop(cp);
        assert!(restarted, "the log kept growing: {} bytes", size());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, writes);
    }
}
