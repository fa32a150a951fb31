//! The rule file format as serde reads it: every table refuses unknown keys, and the parts
//! that are checked after parsing keep their position (`Spanned`) so an error names the line.

use serde::Deserialize;
use toml::Spanned;

/// One `*.toml` file of a rule set: rules, snoozes, lists, and at most once in the whole set
/// the `[scoring]`, `[engine]` and `[money]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    #[serde(default)]
    pub rule: Vec<Spanned<RuleSpec>>,
    pub scoring: Option<Spanned<ScoringSpec>>,
    pub engine: Option<Spanned<LimitsSpec>>,
    pub money: Option<Spanned<MoneySpec>>,
    #[serde(default)]
    pub snooze: Vec<Spanned<SnoozeSpec>>,
    #[serde(default)]
    pub list: Vec<Spanned<ListSpec>>,
}

/// The `[[list]]` blocks of a file holding other tables too (a test file's).
#[derive(Debug, Deserialize)]
pub struct ListsOnly {
    #[serde(default)]
    pub list: Vec<Spanned<ListSpec>>,
}

/// `[[list]]`: values filters test membership of (`in_list`, `not_in_list`). Blocks of one
/// name are one list; a block with a `tenant` holds entries for that tenant's events alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    pub name: Spanned<String>,
    /// `text` (the default) or `ip`.
    pub kind: Option<Spanned<String>>,
    pub tenant: Option<Spanned<String>>,
    #[serde(default)]
    pub description: String,
    /// Each a string, or `{ value = "…", until = <RFC 3339 date-time> }` (an entry that holds
    /// for events before that time): read by the loader, which says what is wrong with one.
    pub values: Spanned<Vec<Spanned<toml::Value>>>,
}

/// `[[snooze]]`: one rule silenced for one group value of one tenant until a time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozeSpec {
    pub rule: Spanned<String>,
    pub tenant: Spanned<String>,
    /// The group value, as the alert's `group_key` gives it.
    pub key: Spanned<String>,
    /// RFC 3339, as a string or a TOML date-time.
    pub until: Spanned<toml::Value>,
    pub reason: Spanned<String>,
    /// Who decided it (an operator id); free text.
    pub by: Option<String>,
    /// The alert that led to it.
    pub alert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: Spanned<String>,
    pub version: Spanned<u32>,
    pub category: CategorySpec,
    #[serde(default)]
    pub description: String,
    pub severity: SeveritySpec,
    pub score: u32,
    pub events: Spanned<Vec<String>>,
    pub group_by: Spanned<GroupBySpec>,
    pub window: Spanned<WindowSpec>,
    pub cooldown: Option<Spanned<String>>,
    pub trigger: Option<Spanned<FilterSpec>>,
    #[serde(default)]
    pub measure: Vec<Spanned<MeasureSpec>>,
    #[serde(default)]
    pub when: Vec<Spanned<CondSpec>>,
    pub reason: Spanned<String>,
    #[serde(default = "yes")]
    pub alert: bool,
    pub push: Option<Spanned<PushSpec>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategorySpec {
    Fraud,
    ResponsibleGambling,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeveritySpec {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBySpec {
    Player,
    Device,
    Ip,
    PaymentInstrument,
    Game,
    Session,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub duration: Option<Spanned<String>>,
    pub max_events: Option<Spanned<usize>>,
    /// Width of the buckets events older than it are folded into (docs/rules.md, "Buckets").
    pub bucket: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub events: Option<Vec<String>>,
    #[serde(rename = "where")]
    pub filter: Option<toml::Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggSpec {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Last,
    Median,
    Stddev,
    CountDistinct,
    Ratio,
    IntervalMean,
    IntervalCv,
    Age,
    Current,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    pub name: String,
    pub agg: AggSpec,
    pub field: Option<String>,
    pub events: Option<Vec<String>>,
    #[serde(rename = "where")]
    pub filter: Option<toml::Table>,
    pub within: Option<String>,
    pub last: Option<usize>,
    #[serde(default)]
    pub exclude_trigger: bool,
    /// In a bucketed window: keep this measure's events one by one, never folded (few events
    /// whose ids an alert should list as evidence: the deposits of a laundering pattern).
    #[serde(default)]
    pub exact: bool,
    pub since: Option<String>,
    pub of: Option<Vec<String>>,
    pub default: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpSpec {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondSpec {
    pub measure: String,
    pub op: CmpSpec,
    pub value: Option<f64>,
    pub baseline: Option<String>,
    pub factor: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushTo {
    Player,
    Room,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    pub to: PushTo,
    pub room: Option<String>,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub expires_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSpec {
    pub window: Spanned<String>,
    pub review: Spanned<u32>,
    pub block: Spanned<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub max_entries: Option<Spanned<usize>>,
    pub max_events_per_key: Option<Spanned<usize>>,
    pub idle_after: Option<Spanned<String>>,
    pub sweep_every: Option<Spanned<String>>,
    pub join_max_bets: Option<Spanned<usize>>,
    pub join_horizon: Option<Spanned<String>>,
    pub max_scored_players: Option<Spanned<usize>>,
    pub default_utc_offset_min: Option<Spanned<i32>>,
}

/// `[money]`: the currency the set's money values are written in, and what other currencies
/// are worth in it (docs/rules.md, "Money in several currencies").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneySpec {
    pub currency: Spanned<String>,
    /// One unit of each currency, in units of `currency`.
    pub rates: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
}
