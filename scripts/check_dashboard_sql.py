#!/usr/bin/env python3
"""Runs every ClickHouse panel query of deploy/grafana/dashboards.py against the real Pitboss
schema and checks that it returns the columns its panel reads, on two engines:

    python3 scripts/check_dashboard_sql.py --chdb SCHEMA.sql
        current ClickHouse in-process (chDB): the DDL of `pitboss migrate --print-sql` applied
        to a scratch directory;
    python3 scripts/check_dashboard_sql.py --server URL --database DB [--cluster]
        a ClickHouse server (18.16 from the test stack) whose database DB was migrated with
        `pitboss migrate` (scripts/deploy-check.sh makes a scratch one and drops it); with
        --cluster, one node of a cluster migrated with `--clickhouse-cluster` (Distributed
        tables over Replicated ones, as compose deploys it): the sample rows are inserted
        through the Distributed tables synchronously. URL may carry ?user=…&password=….

Grafana's macros are expanded the way the ClickHouse plugin does ($__timeFilter(c) ->
c >= toDateTime(from) AND c <= toDateTime(to); $__interval_s -> 60), ${tenant} -> 'acme',
${currency:csv} -> EUR (then also EUR,USD and nothing, which must run, and __all, the
"All" value, which must return rows too); the dashboards'
variable queries are run too. A
few rows are inserted first (events, which fill the rollups through their materialized views,
alerts, an ack, pushes, deliveries) so every query also has to return at least one row.
Prints one line per query; exits 1 naming every query that failed.
"""
import json
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy" / "grafana"))
import dashboards  # noqa: E402

NOW = int(time.time())
FROM, TO = NOW - 86400, NOW + 86400
NUMERIC = ("UInt", "Int", "Float", "Decimal")

SAMPLE = [
    "INSERT INTO events (tenant_id, event_id, player_id, type, occurred_at, occurred_at_ms, received_at,"
    " received_at_ms, game_id, currency, amount_minor, payout_minor) VALUES"
    " ('acme', 'e1', 'p1', 'bet_placed', {t}, {ms}, {t}, {ms}, 'roulette', 'EUR', 2500, 0),"
    " ('acme', 'e2', 'p1', 'bet_settled', {t}, {ms}, {t}, {ms}, 'roulette', 'EUR', 0, 5000),"
    " ('acme', 'e3', 'p2', 'login', {t}, {ms}, {t}, {ms}, '', '', 0, 0),"
    " ('acme', 'e4', 'p2', 'session_started', {t}, {ms}, {t}, {ms}, '', '', 0, 0),"
    " ('acme', 'e5', 'p2', 'deposit', {t}, {ms}, {t}, {ms}, '', 'EUR', 10000, 0),"
    " ('acme', 'e6', 'p1', 'withdrawal', {t}, {ms}, {t}, {ms}, '', 'EUR', 3000, 0)",
    "INSERT INTO alerts (tenant_id, alert_id, player_id, rule_id, category, severity, score, total_score,"
    " reason, detected_at, detected_at_ms, received_at, received_at_ms) VALUES"
    " ('acme', 'a1', 'p1', 'rg.loss_chasing', 'responsible_gambling', 'medium', 30, 30, 'r', {t}, {ms}, {t}, {ms}),"
    " ('acme', 'a2', 'p2', 'fraud.stake_spike', 'fraud', 'high', 60, 90, 'r', {t}, {ms}, {t}, {ms})",
    "INSERT INTO alert_acks (tenant_id, ack_id, alert_id, operator_id, outcome, acked_at, acked_at_ms) VALUES"
    " ('acme', 'k1', 'a2', 'ops', 'confirmed', {t}, {ms_later})",
    "INSERT INTO pushes (tenant_id, push_id, target_type, target_id, kind, source_type, rule_id, created_at,"
    " created_at_ms) VALUES ('acme', 'u1', 'player', 'p1', 'rg.loss_chasing', 'rule', 'rg.loss_chasing', {t}, {ms})",
    "INSERT INTO deliveries (tenant_id, message_type, message_id, channel, subscriber, gateway_id, connection_id,"
    " delivered_at, delivered_at_ms, received_at, received_at_ms, replayed) VALUES"
    " ('acme', 'push', 'u1', 'player:acme:p1', 'p1', 'gateway-1', 'c1', {t}, {ms_later}, {t}, {ms}, 0)",
]


def expand(sql, currency="EUR"):
    sql = sql.replace("${tenant}", "acme").replace("$__interval_s", "60")
    # A multi-value variable as the plugin writes it with the csv format.
    sql = sql.replace("${currency:csv}", currency)
    while "$__timeFilter(" in sql:
        start = sql.index("$__timeFilter(")
        end = sql.index(")", start)
        col = sql[start + len("$__timeFilter("):end]
        sql = sql[:start] + f"{col} >= toDateTime({FROM}) AND {col} <= toDateTime({TO})" + sql[end + 1:]
    return sql


def sample_rows():
    # A whole second later for the ack and the delivery: time to acknowledge/notify is 1.5 s.
    return [s.format(t=NOW, ms=NOW * 1000, ms_later=NOW * 1000 + 1500) for s in SAMPLE]


def check(result, q):
    """Problems with one query's JSONCompact result (column names, types, rows)."""
    meta = [(c["name"], c["type"]) for c in result["meta"]]
    names = [n for n, _ in meta]
    problems = []
    if names != q["cols"]:
        problems.append(f"columns {names}, the panel reads {q['cols']}")
    types = dict(meta)
    numeric = [n for n, t in meta if t.replace("Nullable(", "").startswith(NUMERIC)]
    if q["kind"] == "timeseries":
        if not types.get("t", "").startswith("DateTime"):
            problems.append(f"time column t is {types.get('t')}, not DateTime")
        if not numeric:
            problems.append("no numeric column to plot")
    if q["kind"] == "stat" and len(numeric) != len(meta):
        problems.append(f"a stat panel needs numeric columns only: {meta}")
    if not result["data"]:
        problems.append("no rows from the sample data")
    return problems


def run_all(execute, engine):
    failures = 0
    queries = [q for q in dashboards.queries() if "sql" in q]
    for q in queries:
        label = f"{q['dashboard']} / {q['panel']}"
        try:
            problems = check(execute(expand(q["sql"])), q)
            # Other selections must run too: several currencies, and none (no currency in the
            # range: Grafana writes an empty list).
            if "${currency:csv}" in q["sql"]:
                for other in ("EUR,USD", ""):
                    execute(expand(q["sql"], other))
                # "All" (the variable's allValue): every currency, rows and all.
                problems += check(execute(expand(q["sql"], "__all")), q)
        except Exception as e:  # server errors and chDB's own error types
            problems = [str(e).strip().splitlines()[0][:400]]
        if problems:
            failures += 1
            print(f"[{engine}] FAIL {label}: {'; '.join(problems)}")
        else:
            print(f"[{engine}] ok   {label}")
    print(f"[{engine}] {len(queries) - failures}/{len(queries)} panel queries return their columns")
    return failures


def chdb_engine(schema_path):
    from chdb import session
    statements = []
    for s in Path(schema_path).read_text().split(";\n"):
        s = "\n".join(line for line in s.splitlines() if not line.startswith("--")).strip()
        if s:
            statements.append(s)
    tmp = tempfile.TemporaryDirectory()
    db = session.Session(tmp.name)
    db.query("CREATE DATABASE IF NOT EXISTS pitboss")
    db.query("USE pitboss")
    for s in statements + sample_rows():
        db.query(s)
    version = db.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')

    def execute(sql):
        return json.loads(db.query(sql, "JSONCompact").bytes())
    return execute, f"chdb {version}", tmp


def server_engine(url, database, cluster=False):
    parts = urllib.parse.urlsplit(url)
    base = dict(urllib.parse.parse_qsl(parts.query))

    def post(sql, fmt=True, extra=None):
        params = {**base, "database": database, "max_execution_time": "30", **(extra or {})}
        full = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path or "/", urllib.parse.urlencode(params), "")
        )
        body = (sql + (" FORMAT JSONCompact" if fmt else "")).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(full, data=body), timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(e.read().decode(errors="replace")) from None
    for s in sample_rows():
        post(s, fmt=False, extra={"insert_distributed_sync": "1"} if cluster else None)
    version = post("SELECT version()", fmt=False).decode().strip()
    if cluster:
        version += ", cluster"


    def execute(sql):
        return json.loads(post(sql))
    return execute, f"clickhouse {version}", None


def main():
    args = sys.argv[1:]
    if args[:1] == ["--chdb"] and len(args) == 2:
        execute, engine, keep = chdb_engine(args[1])
    elif args[:1] == ["--server"] and len(args) in (4, 5) and args[2] == "--database":
        if len(args) == 5 and args[4] != "--cluster":
            sys.exit(__doc__)
        execute, engine, keep = server_engine(args[1], args[3], cluster=len(args) == 5)
    else:
        sys.exit(__doc__)
    sys.exit(1 if run_all(execute, engine) else 0)


if __name__ == "__main__":
    main()
