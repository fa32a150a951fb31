//! The Pitboss rules engine: a pure function from player events to explainable alerts (for
//! operators) and pushes (for players and rooms). No I/O and no clock of its own: events and the
//! current time go in, messages come out; the bus, Lambda and file-watching adapters wrap it.
//!
//! - [`rules`]: the rule language (TOML files), loaded and validated with file, line and reason;
//! - [`engine::Engine`]: per-key windows in memory, bounded, evaluated on each event; scoring,
//!   cooldowns, the `bet_settled` → `bet_placed` stake join, and hot reload
//!   ([`engine::Engine::replace_rules`]) that keeps the state of unchanged rules.
//!
//! The language, the shipped packs (`rules/` at the repository root) and the limits are
//! described in `docs/rules.md`.

pub mod backtest;
pub mod changelog;
pub mod duration;
pub mod engine;
pub mod error;
pub mod field;
pub mod filter;
mod join;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod lists;
pub mod money;
pub mod rules;
pub mod ruletest;
pub mod scenario;
mod scoring;
pub mod shard;
pub mod state;
pub mod stream;
pub mod template;
pub mod warm;
mod window;

pub use engine::{
    Change, Changes, Engine, EngineStats, Output, Pending, Rejected, ReloadReport, Snoozed,
    StatsWalk, Unit,
};
pub use error::{AntifraudError, LoadError};
pub use rules::{CompiledRule, RuleSet, SNOOZES_FILE, Snooze};
pub use shard::{Forward, Shard};
