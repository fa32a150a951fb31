//! How each table's rows are written into the embedded store, inside the transaction of their
//! batch: events with their per-minute rollups folded in; alerts, pushes, deliveries and acks
//! upserted by their id, keeping the row with the latest stamp — what ClickHouse's
//! `ReplacingMergeTree` keeps after merges, here at once.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{Transaction, params, params_from_iter};
use serde::Serialize;

use super::store;
use crate::ProcessorError;
use crate::rows::{AckRow, AlertRow, DeliveryRow, EventRow, PushRow, StoredRow};

/// A row the embedded store can write.
pub trait SqliteRow: Sized {
    /// Writes `rows` (one batch, in order) and whatever they roll up into, in `tx`.
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError>;
}

/// Start of the minute of an epoch second.
fn minute(epoch_seconds: u32) -> i64 {
    i64::from(epoch_seconds) / 60 * 60
}

#[derive(Default)]
struct BetSums {
    bets: i64,
    settlements: i64,
    stakes: i64,
    payouts: i64,
}

impl SqliteRow for EventRow {
    /// Every event is a new row (one per bus record: the batch's position commits with it),
    /// unless its tenant's event id is stored already (a client's retry the ingest edge did
    /// not recognise, e.g. after a restart): then it is dropped, here and from the rollups.
    /// Stored rows are folded into `bets_per_minute` (upserted by tenant, minute, game and
    /// currency) and `player_minutes` (inserted or ignored).
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError> {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                 ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30,
                 ?31)
                 ON CONFLICT (tenant_id, event_id) DO NOTHING",
            )
            .map_err(store)?;
        let mut bets: HashMap<(&str, i64, &str, &str), BetSums> = HashMap::new();
        let mut players: HashSet<(&str, i64, &str)> = HashSet::new();
        let mut copies = 0u64;
        for r in rows {
            let stored = insert
                .execute(params![
                    r.tenant_id,
                    r.event_id,
                    r.player_id,
                    r.session_id,
                    r.kind,
                    r.occurred_at,
                    r.occurred_at_ms as i64,
                    r.received_at,
                    r.received_at_ms as i64,
                    r.schema_version,
                    r.late,
                    r.game_id,
                    r.bet_id,
                    r.round_id,
                    r.transaction_id,
                    r.result,
                    r.status,
                    r.method,
                    r.channel,
                    r.device_id,
                    r.ip,
                    r.country,
                    r.success,
                    r.amount_minor,
                    r.payout_minor,
                    r.currency,
                    r.payload,
                    r.bus_topic,
                    r.bus_partition,
                    r.bus_offset as i64,
                    r.utc_offset_min,
                ])
                .map_err(store)?;
            if stored == 0 {
                copies += 1;
                continue;
            }
            let m = minute(r.occurred_at);
            players.insert((&r.tenant_id, m, &r.player_id));
            // The same rollup as ClickHouse's bets_per_minute_mv.
            match r.kind.as_str() {
                "bet_placed" => {
                    let s = bets
                        .entry((&r.tenant_id, m, &r.game_id, &r.currency))
                        .or_default();
                    s.bets += 1;
                    s.stakes += r.amount_minor;
                }
                "bet_settled" => {
                    let s = bets
                        .entry((&r.tenant_id, m, &r.game_id, &r.currency))
                        .or_default();
                    s.settlements += 1;
                    s.payouts += r.payout_minor;
                }
                _ => {}
            }
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO bets_per_minute VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (tenant_id, minute, game_id, currency) DO UPDATE SET
                    bets = bets + excluded.bets,
                    settlements = settlements + excluded.settlements,
                    stakes_minor = stakes_minor + excluded.stakes_minor,
                    payouts_minor = payouts_minor + excluded.payouts_minor,
                    ggr_minor = ggr_minor + excluded.ggr_minor",
            )
            .map_err(store)?;
        for ((tenant, m, game, currency), s) in bets {
            upsert
                .execute(params![
                    tenant,
                    m,
                    game,
                    currency,
                    s.bets,
                    s.settlements,
                    s.stakes,
                    s.payouts,
                    s.stakes - s.payouts
                ])
                .map_err(store)?;
        }
        let mut seen = tx
            .prepare_cached("INSERT OR IGNORE INTO player_minutes VALUES (?1, ?2, ?3)")
            .map_err(store)?;
        for (tenant, m, player) in players {
            seen.execute(params![tenant, m, player]).map_err(store)?;
        }
        crate::rows::count_copies::<Self>(copies);
        Ok(())
    }
}

/// The SQLite value of each column of `row`, in `columns` order, from its serde form: text,
/// integers, and lists as JSON text.
fn values<R: Serialize>(row: &R, columns: &[&str]) -> Result<Vec<Value>, ProcessorError> {
    let unexpected = |what: &str| ProcessorError::Store(format!("sqlite: {what}"));
    let serde_json::Value::Object(mut fields) =
        serde_json::to_value(row).map_err(|e| unexpected(&e.to_string()))?
    else {
        return Err(unexpected("a row that is not a struct"));
    };
    columns
        .iter()
        .map(|column| match fields.remove(*column) {
            Some(serde_json::Value::String(s)) => Ok(Value::Text(s)),
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Value::Integer)
                .ok_or_else(|| unexpected(&format!("column {column}: {n} is not an INTEGER"))),
            Some(list @ serde_json::Value::Array(_)) => Ok(Value::Text(list.to_string())),
            Some(other) => Err(unexpected(&format!("column {column}: unexpected {other}"))),
            None => Err(unexpected(&format!("no column {column} in the row"))),
        })
        .collect()
}

/// `INSERT` every row of `R` into its table (columns: `R`'s fields); a row whose `key` is
/// there already replaces it when its `version` is at least as high — so the table keeps one
/// row per key, the latest by `version`, whatever order the copies come in.
fn upsert<R: StoredRow + Serialize>(
    tx: &Transaction<'_>,
    key: &[&str],
    version: &str,
    rows: &[R],
) -> Result<(), ProcessorError> {
    let table = R::TABLE;
    let columns = <R as clickhouse::Row>::COLUMN_NAMES;
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} \
         WHERE excluded.{version} >= {table}.{version}",
        columns.join(", "),
        placeholders.join(", "),
        key.join(", "),
        updates.join(", "),
    );
    let mut statement = tx.prepare_cached(&sql).map_err(store)?;
    for row in rows {
        statement
            .execute(params_from_iter(values(row, columns)?))
            .map_err(store)?;
    }
    Ok(())
}

impl SqliteRow for AlertRow {
    /// One row per alert id: a replayed or re-raised alert keeps the latest detection.
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError> {
        upsert(tx, &["tenant_id", "alert_id"], "detected_at_ms", rows)
    }
}

impl SqliteRow for PushRow {
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError> {
        upsert(tx, &["tenant_id", "push_id"], "created_at_ms", rows)
    }
}

impl SqliteRow for DeliveryRow {
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError> {
        upsert(
            tx,
            &["tenant_id", "message_id", "connection_id"],
            "delivered_at_ms",
            rows,
        )
    }
}

impl SqliteRow for AckRow {
    fn write(tx: &Transaction<'_>, rows: &[Self]) -> Result<(), ProcessorError> {
        upsert(tx, &["tenant_id", "ack_id"], "acked_at_ms", rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_columns_with_lists_as_json_text() {
        let row = AlertRow {
            alert_id: "a".into(),
            rule_version: 3,
            related_player_ids: vec!["p1".into(), "p2".into()],
            ..AlertRow::default()
        };
        let v = values(&row, &["rule_version", "alert_id", "related_player_ids"]).expect("values");
        assert_eq!(
            v,
            [
                Value::Integer(3),
                Value::Text("a".into()),
                Value::Text(r#"["p1","p2"]"#.into())
            ]
        );
        assert!(values(&row, &["nope"]).is_err());
    }
}
