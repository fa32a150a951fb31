#!/usr/bin/env python3
"""Runs the Pitboss schema on a current ClickHouse engine (chDB, ClickHouse in-process) and checks
that it works there as it does on 18.16: every migration applies, twice without harm, the
materialized views fill the per-minute rollups from inserted events and alerts, and the live
path's tables keep one row per message id (FINAL).

    pitboss migrate --print-sql | python3 scripts/current_clickhouse.py
    pitboss migrate --print-sql --clickhouse-cluster c --database d \
        | python3 scripts/current_clickhouse.py --parse-only

With --parse-only (the cluster layout, which needs servers, ZooKeeper and macros to run) every
statement is only parsed (EXPLAIN AST). Prints one JSON line with the engine's version and what
was checked; exits non-zero on the first statement or check that fails. tests/current_clickhouse.rs
runs it.
"""
import json
import sys
import tempfile

try:
    from chdb import session
except ImportError:
    sys.exit("chdb is not installed: scripts/stack.sh install (pip install chdb-core)")


def main():
    script = sys.stdin.read()
    statements = [s.strip() for s in script.split(";\n") if s.strip()]
    statements = ["\n".join(l for l in s.splitlines() if not l.startswith("--")).strip() for s in statements]
    statements = [s for s in statements if s]
    if not statements:
        sys.exit("no SQL on stdin")
    with tempfile.TemporaryDirectory() as path:
        db = session.Session(path)
        version = db.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
        if "--parse-only" in sys.argv[1:]:
            for sql in statements:
                try:
                    db.query("EXPLAIN AST " + sql)
                except Exception as e:  # chdb raises its own error types
                    sys.exit(f"does not parse: {e}\n--- statement:\n{sql}")
            print(json.dumps({"clickhouse": version, "statements": len(statements), "parsed": True}))
            return
        db.query("CREATE DATABASE IF NOT EXISTS pitboss")
        db.query("USE pitboss")
        for attempt in range(2):  # every statement is idempotent (the ledger gets two rows)
            for sql in statements:
                try:
                    db.query(sql)
                except Exception as e:  # chdb raises its own error types
                    sys.exit(f"attempt {attempt + 1}: {e}\n--- statement:\n{sql}")

        def scalar(sql):
            return db.query(sql, "CSV").bytes().decode().strip()

        now = 1_790_000_000  # 2026-09-21, whole minutes apart below
        rows = []
        for i in range(120):
            t = now + (i % 2) * 60
            kind = "bet_placed" if i % 3 == 0 else ("bet_settled" if i % 3 == 1 else "deposit")
            rows.append(
                f"('acme', 'e{i}', 'p{i % 7}', '{kind}', {t}, {t * 1000}, {t}, {t * 1000}, "
                f"'slot-1', 'EUR', {100 if kind != 'bet_settled' else 0}, {40 if kind == 'bet_settled' else 0}, "
                f"'t', {i % 4}, {i})"
            )
        db.query(
            "INSERT INTO events (tenant_id, event_id, player_id, type, occurred_at, occurred_at_ms, "
            "received_at, received_at_ms, game_id, currency, amount_minor, payout_minor, "
            "bus_topic, bus_partition, bus_offset) VALUES " + ", ".join(rows)
        )
        # Rows from Kinesis (schema version 7): a shard's sequence numbers, another shard's.
        db.query(
            "INSERT INTO events (tenant_id, event_id, player_id, type, occurred_at, occurred_at_ms, "
            "received_at, received_at_ms, bus_topic, bus_partition, bus_sequence) VALUES "
            + ", ".join(
                f"('acme', 'k{n}', 'p1', 'login', {now}, {now * 1000}, {now}, {now * 1000}, 'k', 0, '{s}')"
                for n, s in enumerate(
                    ["shardId-000000000000:9", "shardId-000000000000:10", "shardId-000000000001:99"]
                )
            )
        )
        # Alerts: a1 twice (a second rules engine, detected later), a2 and a3 of another rule.
        alerts = []
        for n, (alert, rule, detected) in enumerate(
            [("a1", "r.one", now), ("a2", "r.one", now + 1), ("a3", "r.two", now), ("a1", "r.one", now + 5)]
        ):
            alerts.append(
                f"('acme', '{alert}', '{rule}', 'high', ['p1', 'p2'], '[]', "
                f"{now}, {now * 1000}, {detected}, {detected * 1000}, 'alerts', 2, {n})"
            )
        # The copy in an insert of its own (within one block, ReplacingMergeTree collapses at once).
        for block in (alerts[:3], alerts[3:]):
            db.query(
                "INSERT INTO alerts (tenant_id, alert_id, rule_id, severity, related_player_ids, "
                "measures, received_at, received_at_ms, detected_at, detected_at_ms, bus_topic, "
                "bus_partition, bus_offset) VALUES " + ", ".join(block)
            )
        checks = {
            "events": scalar("SELECT count() FROM events"),
            "bets": scalar("SELECT sum(bets) FROM bets_per_minute"),
            "settlements": scalar("SELECT sum(settlements) FROM bets_per_minute"),
            "stakes_minor": scalar("SELECT sum(stakes_minor) FROM bets_per_minute"),
            "ggr_minor": scalar("SELECT sum(ggr_minor) FROM bets_per_minute"),
            "minutes": scalar("SELECT uniqExact(minute) FROM bets_per_minute"),
            "players": scalar("SELECT uniqMerge(players) FROM players_per_minute"),
            # The processor's high-water query, as sink/clickhouse.rs sends it.
            "high_water": scalar(
                "SELECT count() AS rows, max(bus_offset) AS top FROM events "
                "WHERE bus_topic = 't' AND bus_partition = 3 AND received_at >= toDateTime(0) "
                "AND bus_sequence = ''"
            ),
            # The Kinesis one (high_water_sequence): the shard's greatest sequence number.
            "high_water_sequence": scalar(
                "SELECT bus_sequence FROM events WHERE bus_topic = 'k' "
                "AND startsWith(bus_sequence, 'shardId-000000000000:') AND received_at >= toDateTime(0) "
                "ORDER BY length(bus_sequence) DESC, bus_sequence DESC LIMIT 1"
            ),
            # And the row at an offset (id_at), before anything is skipped.
            "id_at": scalar(
                "SELECT event_id FROM events WHERE bus_topic = 't' AND bus_partition = 3 "
                "AND bus_offset = 119 AND bus_sequence = '' AND received_at >= toDateTime(0) LIMIT 1"
            ),
            "rollup_objects": scalar(
                "SELECT count() FROM system.tables WHERE database = 'pitboss' AND name LIKE '%per_minute%'"
            ),
            "alerts": scalar("SELECT count() FROM alerts"),
            "alerts_final": scalar("SELECT count() FROM alerts FINAL"),
            "a1_kept": scalar("SELECT detected_at_ms FROM alerts FINAL WHERE alert_id = 'a1'"),
            "alerts_per_minute": scalar(
                "SELECT groupArray(n) FROM (SELECT rule_id, uniqExactMerge(alerts) AS n "
                "FROM alerts_per_minute GROUP BY rule_id ORDER BY rule_id)"
            ),
            "alerts_high_water": scalar(
                "SELECT count() AS rows, max(bus_offset) AS top FROM alerts "
                "WHERE bus_topic = 'alerts' AND bus_partition = 2 AND detected_at >= toDateTime(0)"
            ),
            "live_tables": scalar(
                "SELECT groupArray(engine) FROM (SELECT engine FROM system.tables WHERE database = 'pitboss' "
                "AND name IN ('alerts', 'pushes', 'deliveries', 'alert_acks') ORDER BY name)"
            ),
            "ledger": scalar("SELECT groupArray(version) FROM (SELECT DISTINCT version FROM pitboss_migrations ORDER BY version)"),
            # Version 7's column, last, in the table's CREATE (no ALTER on an empty database).
            "last_column": scalar(
                "SELECT concat(name, ' ', type) FROM system.columns WHERE database = 'pitboss' "
                "AND table = 'events' ORDER BY position DESC LIMIT 1"
            ),
        }
        expected = {
            "events": "123",
            "bets": "40",
            "settlements": "40",
            "stakes_minor": "4000",
            "ggr_minor": str(4000 - 40 * 40),
            "minutes": "2",
            "players": "7",
            "high_water": "30,119",
            "high_water_sequence": '"shardId-000000000000:10"',
            "id_at": '"e119"',
            "rollup_objects": "6",
            "alerts": "4",
            "alerts_final": "3",
            "a1_kept": str((now + 5) * 1000),
            "alerts_per_minute": '"[2,1]"',
            "alerts_high_water": "4,3",
            "live_tables": "\"['ReplacingMergeTree','ReplacingMergeTree','ReplacingMergeTree','ReplacingMergeTree']\"",
            "ledger": '"[1,2,3,4,5,6,7]"',
            "last_column": '"bus_sequence String"',
        }
        failed = {k: (checks[k], v) for k, v in expected.items() if checks[k] != v}
        print(json.dumps({"clickhouse": version, "statements": len(statements), "checks": checks}))
        if failed:
            sys.exit(f"checks failed (got, expected): {failed}")


if __name__ == "__main__":
    main()
