//! The embedded store's schema as versioned migrations (the same logical schema as the
//! ClickHouse one in `crate::schema`), applied by [`super::open`] in one write transaction.

/// One schema version of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: r"
CREATE TABLE IF NOT EXISTS events (
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    late INTEGER NOT NULL,
    game_id TEXT NOT NULL,
    bet_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    result TEXT NOT NULL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    channel TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    country TEXT NOT NULL,
    success INTEGER NOT NULL,
    amount_minor INTEGER NOT NULL,
    payout_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    payload TEXT NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant_time ON events (tenant_id, occurred_at, player_id);
CREATE TABLE IF NOT EXISTS bus_positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    high_water INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;",
    },
    Migration {
        version: 2,
        name: "alerts and pushes",
        // Superseded by version 4 before anything wrote these tables.
        sql: r"
CREATE TABLE IF NOT EXISTS alerts (
    tenant_id TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    player_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    raised_at_ms INTEGER NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_tenant_time ON alerts (tenant_id, raised_at);
CREATE TABLE IF NOT EXISTS pushes (
    tenant_id TEXT NOT NULL,
    push_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pushes_by_tenant_time ON pushes (tenant_id, created_at);",
    },
    Migration {
        version: 3,
        name: "per-minute rollups",
        sql: r"
CREATE TABLE IF NOT EXISTS bets_per_minute (
    tenant_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    game_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    bets INTEGER NOT NULL,
    settlements INTEGER NOT NULL,
    stakes_minor INTEGER NOT NULL,
    payouts_minor INTEGER NOT NULL,
    ggr_minor INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, minute, game_id, currency)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS player_minutes (
    tenant_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    player_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, minute, player_id)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS players_per_minute AS
    SELECT tenant_id, minute, count(*) AS players FROM player_minutes GROUP BY tenant_id, minute;",
    },
    Migration {
        version: 4,
        name: "alerts, pushes, deliveries and alert acks",
        // Replaces version 2's `alerts` and `pushes`, which predate the live-path contract
        // (docs/alerts.md) and which nothing ever wrote: they are dropped, not migrated. One
        // row per message id (a second copy — a replay, a second rules engine — upserts it,
        // keeping the latest stamp); columns as in ClickHouse, arrays as JSON text.
        sql: r"
DROP TABLE IF EXISTS alerts;
DROP TABLE IF EXISTS pushes;
CREATE TABLE IF NOT EXISTS alerts (
    tenant_id TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    rule_version INTEGER NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    score INTEGER NOT NULL,
    total_score INTEGER NOT NULL,
    recommendation TEXT NOT NULL,
    group_by TEXT NOT NULL,
    group_key TEXT NOT NULL,
    related_player_ids TEXT NOT NULL,
    reason TEXT NOT NULL,
    measures TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL,
    evidence_event_ids TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    event_time_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    detected_at INTEGER NOT NULL,
    detected_at_ms INTEGER NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, alert_id)
);
CREATE INDEX IF NOT EXISTS alerts_by_tenant_time ON alerts (tenant_id, detected_at);
CREATE INDEX IF NOT EXISTS alerts_by_rule_minute ON alerts (tenant_id, received_at, rule_id);
CREATE VIEW IF NOT EXISTS alerts_per_minute AS
    SELECT tenant_id, received_at / 60 * 60 AS minute, rule_id, count(*) AS alerts
    FROM alerts GROUP BY tenant_id, minute, rule_id;
CREATE TABLE IF NOT EXISTS pushes (
    tenant_id TEXT NOT NULL,
    push_id TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    source_type TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    rule_version INTEGER NOT NULL,
    alert_id TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL,
    operator_id TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    event_time_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, push_id)
);
CREATE INDEX IF NOT EXISTS pushes_by_tenant_time ON pushes (tenant_id, created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    tenant_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    delivered_at INTEGER NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    replayed INTEGER NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, message_id, connection_id)
);
CREATE INDEX IF NOT EXISTS deliveries_by_tenant_time ON deliveries (tenant_id, delivered_at);
CREATE TABLE IF NOT EXISTS alert_acks (
    tenant_id TEXT NOT NULL,
    ack_id TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    operator_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    note TEXT NOT NULL,
    acked_at INTEGER NOT NULL,
    acked_at_ms INTEGER NOT NULL,
    bus_topic TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    bus_offset INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, ack_id)
);
CREATE INDEX IF NOT EXISTS alert_acks_by_alert ON alert_acks (tenant_id, alert_id, acked_at);",
    },
    Migration {
        version: 5,
        name: "one event per id",
        // An event id is stored once per tenant (docs/api.md, "Duplicates"): a client's retry
        // after a restart, or through another ingest instance, is dropped by the store
        // (`write.rs`: `ON CONFLICT DO NOTHING`, rolled up only when stored). Copies stored
        // before this version keep their first row, and the bets rollup is rebuilt from the
        // remaining events (`player_minutes` is a set: copies never added to it).
        sql: r"
DELETE FROM events WHERE rowid NOT IN (SELECT min(rowid) FROM events GROUP BY tenant_id, event_id);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (tenant_id, event_id);
DELETE FROM bets_per_minute;
INSERT INTO bets_per_minute
    SELECT tenant_id, occurred_at / 60 * 60 AS minute, game_id, currency,
        sum(type = 'bet_placed'),
        sum(type = 'bet_settled'),
        sum(CASE WHEN type = 'bet_placed' THEN amount_minor ELSE 0 END),
        sum(CASE WHEN type = 'bet_settled' THEN payout_minor ELSE 0 END),
        sum(CASE WHEN type = 'bet_placed' THEN amount_minor ELSE 0 END)
            - sum(CASE WHEN type = 'bet_settled' THEN payout_minor ELSE 0 END)
    FROM events WHERE type IN ('bet_placed', 'bet_settled')
    GROUP BY tenant_id, minute, game_id, currency;",
    },
    Migration {
        version: 6,
        name: "events keep utc_offset_min",
        // As ClickHouse's version 6: the player's offset from UTC, for what reads local time
        // (a replay of the rules reads it as the live engine did). NULL: sent without one, or
        // stored before this version.
        sql: r"
ALTER TABLE events ADD COLUMN utc_offset_min INTEGER;",
    },
    Migration {
        version: 7,
        name: "live rows keep the Kinesis sequence number",
        // As ClickHouse's version 7, for the live tables, whose rows are written column by
        // column as ClickHouse's are. Events keep none here: the embedded store commits its
        // positions with its rows and keeps one row per event id. And each partition's mark
        // keeps the id of the record at it, so a log made anew is told from a replay (NULL:
        // marked before this version, cannot tell).
        sql: r"
ALTER TABLE bus_positions ADD COLUMN last_id TEXT;
ALTER TABLE alerts ADD COLUMN bus_sequence TEXT NOT NULL DEFAULT '';
ALTER TABLE pushes ADD COLUMN bus_sequence TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN bus_sequence TEXT NOT NULL DEFAULT '';
ALTER TABLE alert_acks ADD COLUMN bus_sequence TEXT NOT NULL DEFAULT '';",
    },
];
