//! The migrations themselves, oldest first (rendered per layout by the parent module).

use super::{Engine, Migration, Statement};

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &[Statement::Table {
            name: "events",
            columns: r"
    tenant_id String,
    event_id String,
    player_id String,
    session_id String,
    type String,
    occurred_at DateTime,
    occurred_at_ms UInt64,
    received_at DateTime,
    received_at_ms UInt64,
    schema_version UInt32,
    late UInt8,
    game_id String,
    bet_id String,
    round_id String,
    transaction_id String,
    result String,
    status String,
    method String,
    channel String,
    device_id String,
    ip String,
    country String,
    success UInt8,
    amount_minor Int64,
    payout_minor Int64,
    currency String,
    payload String,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
",
            engine: Engine::MergeTree,
            partition_by: Some("toYYYYMM(received_at)"),
            order_by: "(tenant_id, occurred_at, player_id, event_id)",
            shard_by: "cityHash64(bus_topic, bus_partition)",
        }],
    },
    Migration {
        version: 2,
        name: "alerts and pushes",
        // Superseded by version 5 before anything wrote these tables: `migrate` skips them
        // when it applies version 5 in the same run (an empty database never has them).
        statements: &[
            Statement::Table {
                name: "alerts",
                columns: r"
    tenant_id String,
    alert_id String,
    rule String,
    severity String,
    player_id String,
    event_id String,
    raised_at DateTime,
    raised_at_ms UInt64,
    details String
",
                engine: Engine::MergeTree,
                partition_by: Some("toYYYYMM(raised_at)"),
                order_by: "(tenant_id, raised_at, rule, player_id)",
                shard_by: "cityHash64(tenant_id, player_id)",
            },
            Statement::Table {
                name: "pushes",
                columns: r"
    tenant_id String,
    push_id String,
    player_id String,
    kind String,
    created_at DateTime,
    created_at_ms UInt64,
    delivered_at_ms UInt64,
    outcome String
",
                engine: Engine::MergeTree,
                partition_by: Some("toYYYYMM(created_at)"),
                order_by: "(tenant_id, created_at, player_id)",
                shard_by: "cityHash64(tenant_id, player_id)",
            },
        ],
    },
    Migration {
        version: 3,
        name: "per-minute rollups",
        statements: &[
            Statement::Table {
                name: "bets_per_minute",
                columns: r"
    tenant_id String,
    minute DateTime,
    game_id String,
    currency String,
    bets UInt64,
    settlements UInt64,
    stakes_minor Int64,
    payouts_minor Int64,
    ggr_minor Int64
",
                engine: Engine::SummingMergeTree,
                partition_by: Some("toYYYYMM(minute)"),
                order_by: "(tenant_id, minute, game_id, currency)",
                // Filled on each shard by the view; never inserted into directly.
                shard_by: "rand()",
            },
            Statement::View {
                name: "bets_per_minute_mv",
                to: "bets_per_minute",
                from: "events",
                select: r"SELECT
    tenant_id,
    toStartOfMinute(occurred_at) AS minute,
    game_id,
    currency,
    toUInt64(sum(type = 'bet_placed')) AS bets,
    toUInt64(sum(type = 'bet_settled')) AS settlements,
    sum(if(type = 'bet_placed', amount_minor, 0)) AS stakes_minor,
    sum(if(type = 'bet_settled', payout_minor, 0)) AS payouts_minor,
    sum(if(type = 'bet_placed', amount_minor, 0)) - sum(if(type = 'bet_settled', payout_minor, 0)) AS ggr_minor
FROM {from}
WHERE type IN ('bet_placed', 'bet_settled')
GROUP BY tenant_id, minute, game_id, currency",
            },
            Statement::Table {
                name: "players_per_minute",
                columns: r"
    tenant_id String,
    minute DateTime,
    players AggregateFunction(uniq, String)
",
                engine: Engine::AggregatingMergeTree,
                partition_by: Some("toYYYYMM(minute)"),
                order_by: "(tenant_id, minute)",
                shard_by: "rand()",
            },
            Statement::View {
                name: "players_per_minute_mv",
                to: "players_per_minute",
                from: "events",
                select: r"SELECT tenant_id, toStartOfMinute(occurred_at) AS minute, uniqState(player_id) AS players
FROM {from}
GROUP BY tenant_id, minute",
            },
        ],
    },
    Migration {
        version: 4,
        name: "batch intents",
        statements: &[Statement::Table {
            // The offset range of each partition's batch about to be inserted, written before
            // the insert (run.rs): a member replaying the partition after a crash cuts the
            // same batch, which a replicated table then drops if the first insert landed.
            // One row per partition after merges.
            name: "pitboss_batches",
            columns: r"
    bus_topic String,
    bus_partition UInt32,
    first_offset UInt64,
    last_offset UInt64
",
            engine: Engine::ReplacingMergeTree {
                version: "last_offset",
            },
            partition_by: None,
            order_by: "(bus_topic, bus_partition)",
            shard_by: "cityHash64(bus_topic, bus_partition)",
        }],
    },
    Migration {
        version: 5,
        name: "alerts, pushes, deliveries and alert acks",
        // The live path (docs/alerts.md). Version 2's `alerts` and `pushes` predate its
        // contract and nothing ever wrote them: they are dropped (only while they still have
        // version 2's shape, so a second `migrate` running at once never drops the new ones)
        // and created anew, with every field of the message as a column and the bus position,
        // sharded like `events` (a batch, one bus partition, is one block on one shard).
        //
        // A message id is deterministic (a replay, or a second rules engine, writes the same
        // one), so each table is a ReplacingMergeTree ordered by the id: copies of a message —
        // separate bus records, each stored once — collapse to the latest by its stamp in
        // merges (`FINAL`, `LIMIT 1 BY`, or `uniqExact(id)` read it exactly before that). The
        // stamp (when the publisher made the record) partitions the table and bounds the
        // high-water query, as `received_at` does for `events`.
        statements: &[
            Statement::Drop {
                name: "alerts",
                old_column: "raised_at",
            },
            Statement::Drop {
                name: "pushes",
                old_column: "outcome",
            },
            Statement::Table {
                name: "alerts",
                columns: r"
    tenant_id String,
    alert_id String,
    player_id String,
    rule_id String,
    rule_version UInt32,
    category String,
    severity String,
    score UInt32,
    total_score UInt32,
    recommendation String,
    group_by String,
    group_key String,
    related_player_ids Array(String),
    reason String,
    measures String,
    trigger_event_id String,
    evidence_event_ids Array(String),
    event_time DateTime,
    event_time_ms UInt64,
    received_at DateTime,
    received_at_ms UInt64,
    detected_at DateTime,
    detected_at_ms UInt64,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
",
                engine: Engine::ReplacingMergeTree {
                    version: "detected_at_ms",
                },
                partition_by: Some("toYYYYMM(detected_at)"),
                // The rule derives from the alert id: one key per alert.
                order_by: "(tenant_id, rule_id, alert_id)",
                shard_by: "cityHash64(bus_topic, bus_partition)",
            },
            Statement::Table {
                name: "pushes",
                columns: r"
    tenant_id String,
    push_id String,
    target_type String,
    target_id String,
    kind String,
    title String,
    body String,
    data String,
    source_type String,
    rule_id String,
    rule_version UInt32,
    alert_id String,
    trigger_event_id String,
    operator_id String,
    event_time DateTime,
    event_time_ms UInt64,
    received_at DateTime,
    received_at_ms UInt64,
    created_at DateTime,
    created_at_ms UInt64,
    expires_at_ms UInt64,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
",
                engine: Engine::ReplacingMergeTree {
                    version: "created_at_ms",
                },
                partition_by: Some("toYYYYMM(created_at)"),
                order_by: "(tenant_id, push_id)",
                shard_by: "cityHash64(bus_topic, bus_partition)",
            },
            Statement::Table {
                name: "deliveries",
                columns: r"
    tenant_id String,
    message_type String,
    message_id String,
    channel String,
    subscriber String,
    gateway_id String,
    connection_id String,
    delivered_at DateTime,
    delivered_at_ms UInt64,
    received_at DateTime,
    received_at_ms UInt64,
    replayed UInt8,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
",
                engine: Engine::ReplacingMergeTree {
                    version: "delivered_at_ms",
                },
                partition_by: Some("toYYYYMM(delivered_at)"),
                order_by: "(tenant_id, message_id, connection_id)",
                shard_by: "cityHash64(bus_topic, bus_partition)",
            },
            Statement::Table {
                name: "alert_acks",
                columns: r"
    tenant_id String,
    ack_id String,
    alert_id String,
    operator_id String,
    outcome String,
    note String,
    acked_at DateTime,
    acked_at_ms UInt64,
    bus_topic String,
    bus_partition UInt32,
    bus_offset UInt64
",
                engine: Engine::ReplacingMergeTree {
                    version: "acked_at_ms",
                },
                partition_by: Some("toYYYYMM(acked_at)"),
                order_by: "(tenant_id, ack_id)",
                shard_by: "cityHash64(bus_topic, bus_partition)",
            },
            Statement::Table {
                // Distinct alerts per rule and minute of their triggering event's arrival
                // (deterministic per alert, so copies of one alert count once): read with
                // `uniqExactMerge(alerts)`.
                name: "alerts_per_minute",
                columns: r"
    tenant_id String,
    minute DateTime,
    rule_id String,
    alerts AggregateFunction(uniqExact, String)
",
                engine: Engine::AggregatingMergeTree,
                partition_by: Some("toYYYYMM(minute)"),
                order_by: "(tenant_id, minute, rule_id)",
                shard_by: "rand()",
            },
            Statement::View {
                name: "alerts_per_minute_mv",
                to: "alerts_per_minute",
                from: "alerts",
                select: r"SELECT tenant_id, toStartOfMinute(received_at) AS minute, rule_id, uniqExactState(alert_id) AS alerts
FROM {from}
GROUP BY tenant_id, minute, rule_id",
            },
        ],
    },
    Migration {
        version: 6,
        name: "events keep utc_offset_min",
        // The player's offset from UTC when the event happened (docs/events.md), for what
        // reads local time: a replay of the rules (`rules backtest`) reads it as the live
        // engine did. NULL: sent without one, or stored before this version.
        statements: &[Statement::AddColumn {
            table: "events",
            column: "utc_offset_min",
            ty: "Nullable(Int16)",
        }],
    },
    Migration {
        version: 7,
        name: "rows keep the Kinesis sequence number",
        // A Kinesis record's position is a sequence number (decimal text, up to 128 digits),
        // which `bus_offset` cannot hold: kept here, it is the high-water mark a processor
        // taking a shard over skips what is stored by (docs/processor.md, "Effectively
        // once"). Empty on Kafka and the embedded log, and in rows stored before this version.
        statements: &[
            Statement::AddColumn {
                table: "events",
                column: "bus_sequence",
                ty: "String",
            },
            Statement::AddColumn {
                table: "alerts",
                column: "bus_sequence",
                ty: "String",
            },
            Statement::AddColumn {
                table: "pushes",
                column: "bus_sequence",
                ty: "String",
            },
            Statement::AddColumn {
                table: "deliveries",
                column: "bus_sequence",
                ty: "String",
            },
            Statement::AddColumn {
                table: "alert_acks",
                column: "bus_sequence",
                ty: "String",
            },
        ],
    },
];

#[cfg(test)]
mod tests {
    use clickhouse::Row;

    use super::*;
    use crate::rows::{AckRow, AlertRow, DeliveryRow, PushRow};
    use crate::schema::{Layout, columns};

    #[test]
    fn each_live_tables_columns_are_the_ones_its_row_writes() {
        let names = |table| -> Vec<&str> {
            columns(table)
                .expect(table)
                .iter()
                .map(|(name, _)| *name)
                .collect()
        };
        assert_eq!(names("alerts"), AlertRow::COLUMN_NAMES);
        assert_eq!(names("pushes"), PushRow::COLUMN_NAMES);
        assert_eq!(names("deliveries"), DeliveryRow::COLUMN_NAMES);
        assert_eq!(names("alert_acks"), AckRow::COLUMN_NAMES);
        let alerts = columns("alerts").expect("alerts");
        assert_eq!(alerts[12], ("related_player_ids", "Array(String)"));
        assert_eq!(alerts[21], ("detected_at", "DateTime"));
    }

    #[test]
    fn version_5_on_a_cluster_drops_both_old_tables_and_shards_by_bus_partition() {
        let layout = Layout::cluster("pitboss", "analytics").expect("valid names");
        let v5 = MIGRATIONS[4].sql(&layout);
        assert_eq!(v5.len(), 15);
        assert_eq!(
            v5[..4],
            [
                "DROP TABLE IF EXISTS analytics.alerts ON CLUSTER pitboss",
                "DROP TABLE IF EXISTS analytics.alerts_local ON CLUSTER pitboss",
                "DROP TABLE IF EXISTS analytics.pushes ON CLUSTER pitboss",
                "DROP TABLE IF EXISTS analytics.pushes_local ON CLUSTER pitboss",
            ]
        );
        assert!(
            v5[4].starts_with(
                "CREATE TABLE IF NOT EXISTS analytics.alerts_local ON CLUSTER pitboss ("
            )
        );
        assert!(v5[4].ends_with(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/alerts_local', '{replica}', detected_at_ms)\n\
             PARTITION BY toYYYYMM(detected_at)\nORDER BY (tenant_id, rule_id, alert_id)"
        ));
        for (i, table) in [
            (5, "alerts"),
            (7, "pushes"),
            (9, "deliveries"),
            (11, "alert_acks"),
        ] {
            assert_eq!(
                v5[i],
                format!(
                    "CREATE TABLE IF NOT EXISTS analytics.{table} ON CLUSTER pitboss AS analytics.{table}_local \
                     ENGINE = Distributed(pitboss, analytics, {table}_local, cityHash64(bus_topic, bus_partition))"
                )
            );
        }
        assert!(v5[10].contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/alert_acks_local', '{replica}', acked_at_ms)"
        ));
        assert!(v5[12].contains(
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/analytics/alerts_per_minute_local', '{replica}')"
        ));
        assert!(v5[14].starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.alerts_per_minute_mv ON CLUSTER pitboss \
             TO analytics.alerts_per_minute_local AS\nSELECT"
        ));
        assert!(
            v5[14].contains("uniqExactState(alert_id) AS alerts\nFROM analytics.alerts_local\n")
        );

        let single = MIGRATIONS[4].sql(&Layout::Single);
        assert_eq!(single.len(), 8);
        assert!(single[2].ends_with(
            "ENGINE = ReplacingMergeTree(detected_at_ms)\nPARTITION BY toYYYYMM(detected_at)\nORDER BY (tenant_id, rule_id, alert_id)"
        ));
        assert!(
            single[7].contains("TO alerts_per_minute AS") && single[7].contains("FROM alerts\n")
        );
    }
}
