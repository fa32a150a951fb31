//! The crate's one error type, and the located reason a rule file is refused.

use std::fmt;
use std::path::PathBuf;

/// Why a rule file (or a whole rule set) was refused: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file, as given to the loader.
    pub file: String,
    /// 1-based line; 0 when the error is about the whole file or set.
    pub line: usize,
    /// 1-based column (characters); 0 when unknown.
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.reason),
            (l, 0) => write!(f, "{}:{l}: {}", self.file, self.reason),
            (l, c) => write!(f, "{}:{l}:{c}: {}", self.file, self.reason),
        }
    }
}

/// Everything that can go wrong in the engine crate. Each variant says whether retrying helps.
#[derive(Debug, thiserror::Error)]
pub enum AntifraudError {
    /// A rule set was refused; the running set stays in force. Retrying the same files does not
    /// help: they must be fixed.
    #[error("rule set refused:\n{}", list(.0))]
    Rules(Vec<LoadError>),
    /// The rules directory could not be read (missing, permissions): retrying may help.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An event the engine cannot evaluate (no or a malformed `event_id`): it belongs on the
    /// dead-letter topic; retrying does not help.
    #[error("event refused: {0}")]
    Event(String),
    /// A saved engine state that cannot be restored (corrupt, or written by another format):
    /// the engine starts from empty windows instead.
    #[error("engine snapshot refused: {0}")]
    Snapshot(String),
}

impl AntifraudError {
    /// Whether trying the same operation again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, AntifraudError::Io { .. })
    }
}

fn list(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
