#!/usr/bin/env python3
"""Pitboss Grafana dashboards as code: writes deploy/grafana/dashboards/*.json.

    python3 deploy/grafana/dashboards.py            # (re)write the JSON files
    python3 deploy/grafana/dashboards.py --check    # exit 1 if a JSON file differs from this
    python3 deploy/grafana/dashboards.py --queries  # every panel query as JSON lines (the checks)

Each ClickHouse query names the columns its panel reads (`cols`); scripts/deploy-check.sh
runs every query against the real schema on ClickHouse 18.16 and on current ClickHouse (chDB)
and compares the columns it gets. The SQL keeps to what both understand: no
toStartOfInterval, explicit join strictness, GLOBAL for subqueries over Distributed tables.
Grafana ClickHouse plugin macros: $__timeFilter(col), $__interval_s; the dashboard variables
${tenant} and, on the dashboards that show money, ${currency} (several at once, or all);
their own queries are checked too. Prometheus panels query the admin /metrics of every component.
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
CH = {"type": "grafana-clickhouse-datasource", "uid": "pitboss-clickhouse"}
PROM = {"type": "prometheus", "uid": "pitboss-prometheus"}
TENANT = "tenant_id = '${tenant}'"
# The money panels' currencies (amounts of two currencies are never added: each panel groups by
# currency, and this narrows which it shows). As a comma-separated list split in SQL, not
# `IN (…)`: with nothing to choose from Grafana writes an empty list, and `IN ()` is a syntax
# error on ClickHouse 18.16 where this is "no rows".
# "All" is the value `__all` (the variable's allValue), every currency whatever the list held
# when it was read: the list is read when the dashboard loads, and a currency that appeared
# since, or only in a range chosen later, was left out of "All" until a reload.
CURRENCY = ("('${currency:csv}' = '__all' OR"
            " has(splitByChar(',', '${currency:csv}'), currency))")
VARIABLES = {
    "tenant": ("Tenant", "SELECT DISTINCT tenant_id FROM players_per_minute ORDER BY tenant_id",
               False, 2),
    # Every currency of the range's bets, deposits and withdrawals (one column of the events
    # in the range: "All" then leaves none out), read when the dashboard loads (refresh 1), not
    # at every auto-refresh.
    "currency": ("Currency", "SELECT DISTINCT currency FROM events WHERE tenant_id = '${tenant}'"
                 " AND $__timeFilter(occurred_at) AND currency != '' ORDER BY currency", True, 1),
}


def bucket(col):
    """Start of the panel's interval (at least a minute) containing `col` (a DateTime)."""
    return f"toDateTime(intDiv(toUInt32({col}), $__interval_s) * $__interval_s)"


def ch(title, sql, cols, kind="timeseries", unit=None, w=12, h=8, description=None):
    return {"title": title, "ds": "ch", "sql": " ".join(sql.split()), "cols": cols, "kind": kind,
            "unit": unit, "w": w, "h": h, "description": description}


def prom(title, exprs, kind="timeseries", unit=None, w=12, h=8, thresholds=None, description=None):
    return {"title": title, "ds": "prom", "exprs": exprs, "kind": kind, "unit": unit, "w": w,
            "h": h, "thresholds": thresholds, "description": description}


SLO_10S = [("green", None), ("red", 10)]

DASHBOARDS = {
    "live-betting": ("Pitboss · Live betting", [
        ch("Bets and settlements", f"""
            SELECT {bucket('minute')} AS t, sum(bets) AS bets, sum(settlements) AS settlements
            FROM bets_per_minute WHERE {TENANT} AND $__timeFilter(minute)
            GROUP BY t ORDER BY t""", ["t", "bets", "settlements"]),
        ch("Stakes and payouts by currency (minor units)", f"""
            SELECT {bucket('minute')} AS t, currency, sum(stakes_minor) AS stakes_minor,
                   sum(payouts_minor) AS payouts_minor
            FROM bets_per_minute WHERE {TENANT} AND {CURRENCY} AND $__timeFilter(minute)
            GROUP BY t, currency ORDER BY t""", ["t", "currency", "stakes_minor", "payouts_minor"]),
        ch("GGR by currency (minor units)", f"""
            SELECT {bucket('minute')} AS t, currency, sum(ggr_minor) AS ggr_minor
            FROM bets_per_minute WHERE {TENANT} AND {CURRENCY} AND $__timeFilter(minute)
            GROUP BY t, currency ORDER BY t""", ["t", "currency", "ggr_minor"]),
        ch("GGR by game and currency", f"""
            SELECT game_id, currency, sum(bets) AS bets, sum(stakes_minor) AS stakes_minor,
                   sum(payouts_minor) AS payouts_minor, sum(ggr_minor) AS ggr_minor
            FROM bets_per_minute WHERE {TENANT} AND {CURRENCY} AND $__timeFilter(minute)
            GROUP BY game_id, currency ORDER BY ggr_minor DESC LIMIT 100""",
           ["game_id", "currency", "bets", "stakes_minor", "payouts_minor", "ggr_minor"], kind="table"),
    ]),
    "players": ("Pitboss · Players", [
        ch("Active players", f"""
            SELECT {bucket('minute')} AS t, uniqMerge(players) AS active_players
            FROM players_per_minute WHERE {TENANT} AND $__timeFilter(minute)
            GROUP BY t ORDER BY t""", ["t", "active_players"],
           description="Players with any stored event in the interval: logins (failed ones too), "
                       "sessions, money movements, bets. Bettors: the next panels."),
        ch("Active players in the range", f"""
            SELECT uniqMerge(players) AS active_players
            FROM players_per_minute WHERE {TENANT} AND $__timeFilter(minute)""",
           ["active_players"], kind="stat", w=6,
           description="Players with any stored event in the range (failed logins included)."),
        ch("Bettors and depositors in the range", f"""
            SELECT uniqExactIf(player_id, type = 'bet_placed') AS bettors,
                   uniqExactIf(player_id, type = 'deposit') AS depositors
            FROM events WHERE {TENANT} AND $__timeFilter(occurred_at)
              AND type IN ('bet_placed', 'deposit')""",
           ["bettors", "depositors"], kind="stat", w=6,
           description="Players who placed a bet, and who made a deposit, in the range (scans the tenant's events)."),
        ch("New players (first event in the range)", f"""
            SELECT count() AS new_players FROM (
                SELECT player_id, min(occurred_at) AS first_seen FROM events
                WHERE {TENANT} GROUP BY player_id)
            WHERE $__timeFilter(first_seen)""", ["new_players"], kind="stat", w=6,
           description="Players whose first stored event falls in the range (scans the tenant's events)."),
        ch("Sessions and logins", f"""
            SELECT {bucket('occurred_at')} AS t,
                   countIf(type = 'session_started') AS sessions_started,
                   countIf(type = 'login' AND success = 1) AS logins,
                   countIf(type = 'login' AND success = 0) AS failed_logins
            FROM events WHERE {TENANT} AND $__timeFilter(occurred_at)
              AND type IN ('session_started', 'login')
            GROUP BY t ORDER BY t""", ["t", "sessions_started", "logins", "failed_logins"],
           description="Logins that succeeded, and failed attempts apart (a burst of them is credential stuffing, not traffic)."),
        ch("Deposits and withdrawals by currency", f"""
            SELECT currency, countIf(type = 'deposit') AS deposits,
                   sumIf(amount_minor, type = 'deposit') AS deposits_minor,
                   countIf(type = 'withdrawal' AND status = 'approved') AS withdrawals_paid,
                   sumIf(amount_minor, type = 'withdrawal' AND status = 'approved') AS withdrawals_paid_minor,
                   countIf(type = 'withdrawal' AND status = 'requested') AS withdrawals_requested,
                   countIf(type = 'withdrawal' AND status = 'cancelled') AS withdrawals_cancelled
            FROM events WHERE {TENANT} AND $__timeFilter(occurred_at)
              AND type IN ('deposit', 'withdrawal') AND {CURRENCY}
            GROUP BY currency ORDER BY deposits_minor DESC""",
           ["currency", "deposits", "deposits_minor", "withdrawals_paid", "withdrawals_paid_minor",
            "withdrawals_requested", "withdrawals_cancelled"], kind="table",
           description="A withdrawal is a request, then its approval (paid) or cancellation, under one transaction_id (docs/events.md): paid money is the approved ones."),
    ]),
    "antifraud": ("Pitboss · Antifraud", [
        ch("Alerts by rule", f"""
            SELECT {bucket('minute')} AS t, rule_id, uniqExactMerge(alerts) AS alerts
            FROM alerts_per_minute WHERE {TENANT} AND $__timeFilter(minute)
            GROUP BY t, rule_id ORDER BY t""", ["t", "rule_id", "alerts"]),
        ch("Alerts by severity", f"""
            SELECT severity, count() AS alerts FROM (
                SELECT alert_id, any(severity) AS severity FROM alerts
                WHERE {TENANT} AND $__timeFilter(detected_at) GROUP BY alert_id)
            GROUP BY severity ORDER BY alerts DESC""", ["severity", "alerts"], kind="table"),
        ch("Top risky players", f"""
            SELECT player_id, max(total_score) AS max_score, uniqExact(alert_id) AS alerts,
                   arrayStringConcat(groupUniqArray(rule_id), ', ') AS rules
            FROM alerts WHERE {TENANT} AND $__timeFilter(detected_at)
            GROUP BY player_id ORDER BY max_score DESC, alerts DESC LIMIT 20""",
           ["player_id", "max_score", "alerts", "rules"], kind="table"),
        ch("Time to acknowledge by rule (seconds)", f"""
            SELECT rule_id, count() AS acknowledged,
                   quantile(0.5)(ack_seconds) AS p50_seconds, quantile(0.95)(ack_seconds) AS p95_seconds
            FROM (
                SELECT rule_id, (toInt64(acked_ms) - toInt64(detected_ms)) / 1000 AS ack_seconds
                FROM (
                    SELECT alert_id, any(rule_id) AS rule_id, min(detected_at_ms) AS detected_ms
                    FROM alerts WHERE {TENANT} AND $__timeFilter(detected_at) GROUP BY alert_id) AS a
                GLOBAL ALL INNER JOIN (
                    SELECT alert_id, min(acked_at_ms) AS acked_ms
                    FROM alert_acks WHERE {TENANT} GROUP BY alert_id) AS k
                USING alert_id)
            GROUP BY rule_id ORDER BY p95_seconds DESC""",
           ["rule_id", "acknowledged", "p50_seconds", "p95_seconds"], kind="table"),
        ch("Operators' conclusions by rule (tuning: false positives)", f"""
            SELECT rule_id, count() AS concluded,
                   countIf(outcome = 'false_positive') AS false_positives,
                   countIf(outcome = 'confirmed') AS confirmed,
                   countIf(outcome = 'escalated') AS escalated,
                   round(false_positives / concluded, 3) AS false_positive_share
            FROM (
                SELECT alert_id, argMax(outcome, acked_at_ms) AS outcome
                FROM alert_acks WHERE {TENANT} GROUP BY alert_id) AS k
            GLOBAL ALL INNER JOIN (
                SELECT alert_id, any(rule_id) AS rule_id
                FROM alerts WHERE {TENANT} AND $__timeFilter(detected_at) GROUP BY alert_id) AS a
            USING alert_id
            GROUP BY rule_id ORDER BY false_positive_share DESC, concluded DESC""",
           ["rule_id", "concluded", "false_positives", "confirmed", "escalated", "false_positive_share"],
           kind="table",
           description="Each alert detected in the range counted once, by its operators' latest conclusion "
                       "(the latest ack): a rule with a high false-positive share is one to tune "
                       "(`pitboss rules backtest`, docs/rules.md)."),
        prom("Hits silenced by snoozes, by rule (/s)", [
            ("{{rule}}", "sum by (rule) (rate(pitboss_antifraud_snoozed_total[$__rate_interval]))")],
             description="Hits of a rule a [[snooze]] silenced for a player, device or address an "
                         "operator cleared (`pitboss rules snooze --alert ID`, docs/rules.md "
                         "\"Snoozes\"): no alert, no push, no points. All tenants (Prometheus has "
                         "no tenant label). A rule silenced often for many keys is one to tune "
                         "rather than snooze."),
        prom("Values on lists, by list", [
            ("{{list}}", "max by (list) (pitboss_antifraud_list_entries)")],
             description="The values each [[list]] of the engine's rule set holds, every tenant's "
                         "counted (`pitboss rules list add`, docs/rules.md \"Lists\"): a block list "
                         "that drops to 0 after a reload lost its file."),
        ch("Alerts not acknowledged", f"""
            SELECT alert_id, any(rule_id) AS rule_id, any(severity) AS severity,
                   any(player_id) AS player_id, min(detected_at) AS first_detected_at, any(reason) AS reason
            FROM alerts WHERE {TENANT} AND $__timeFilter(detected_at)
              AND alert_id GLOBAL NOT IN (SELECT alert_id FROM alert_acks WHERE {TENANT})
            GROUP BY alert_id ORDER BY first_detected_at DESC LIMIT 100""",
           ["alert_id", "rule_id", "severity", "player_id", "first_detected_at", "reason"], kind="table", w=24),
    ]),
    "responsible-gambling": ("Pitboss · Responsible gambling", [
        ch("Pushes by marker", f"""
            SELECT {bucket('created_at')} AS t, kind, uniqExact(push_id) AS pushes
            FROM pushes WHERE {TENANT} AND $__timeFilter(created_at) AND kind LIKE 'rg.%'
              AND source_type = 'rule'
            GROUP BY t, kind ORDER BY t""", ["t", "kind", "pushes"],
           description="The rules' interventions only: an operator may publish a push of any kind."),
        ch("Markers in the range, and whether the player saw them", f"""
            SELECT kind, uniqExact(push_id) AS pushes, uniqExact(target_id) AS players,
                   uniqExactIf(push_id, delivered = 1) AS delivered
            FROM (
                SELECT tenant_id, push_id, kind, target_id FROM pushes
                WHERE {TENANT} AND $__timeFilter(created_at) AND kind LIKE 'rg.%'
                  AND source_type = 'rule') AS p
            ALL LEFT JOIN (
                SELECT DISTINCT tenant_id, message_id AS push_id, toUInt8(1) AS delivered
                FROM deliveries WHERE {TENANT} AND message_type = 'push') AS d
            USING (tenant_id, push_id)
            GROUP BY kind ORDER BY pushes DESC""", ["kind", "pushes", "players", "delivered"],
           kind="table",
           description="Rule pushes, and how many reached a player's screen (a delivery receipt, "
                       "docs/gateway.md): the rest found the player offline."),
        ch("Responsible-gambling alerts by rule", f"""
            SELECT rule_id, uniqExact(alert_id) AS alerts, uniqExact(player_id) AS players
            FROM alerts WHERE {TENANT} AND $__timeFilter(detected_at)
              AND category = 'responsible_gambling'
            GROUP BY rule_id ORDER BY alerts DESC""", ["rule_id", "alerts", "players"], kind="table"),
    ]),
    "slo": ("Pitboss · SLO", [
        prom("Time to notify p95 / p99 (objective: 95% within 10 s)", [
            ("p95", "histogram_quantile(0.95, sum by (le) (rate(pitboss_time_to_notify_seconds_bucket[$__rate_interval])))"),
            ("p99", "histogram_quantile(0.99, sum by (le) (rate(pitboss_time_to_notify_seconds_bucket[$__rate_interval])))"),
        ], unit="s", thresholds=SLO_10S),
        prom("Notified within 10 s", [
            ("within 10 s", "sum(rate(pitboss_time_to_notify_seconds_bucket{le=~\"10(\\\\.0)?\"}[$__rate_interval])) / sum(rate(pitboss_time_to_notify_seconds_count[$__rate_interval]))"),
        ], kind="stat", unit="percentunit", w=6, thresholds=[("red", None), ("green", 0.95)]),
        prom("Ingest to stored, p95 (processor freshness)", [
            ("p95", "histogram_quantile(0.95, sum by (le) (rate(pitboss_processor_freshness_seconds_bucket[$__rate_interval])))"),
        ], kind="stat", unit="s", w=6, thresholds=SLO_10S,
            description="Per stored batch, how long its oldest row waited between ingest accepting it and the store holding it: the p95 over batches. A processor that stores nothing shows no data here: the age of the newest stored event is the next panel."),
        ch("Time to notify from stored deliveries", f"""
            SELECT {bucket('delivered_at')} AS t,
                   quantile(0.95)((toInt64(delivered_at_ms) - toInt64(received_at_ms)) / 1000) AS p95_seconds,
                   quantile(0.99)((toInt64(delivered_at_ms) - toInt64(received_at_ms)) / 1000) AS p99_seconds
            FROM deliveries WHERE {TENANT} AND $__timeFilter(delivered_at) AND replayed = 0
            GROUP BY t ORDER BY t""", ["t", "p95_seconds", "p99_seconds"], unit="s"),
        ch("Freshness in ClickHouse (seconds since the newest event)", f"""
            SELECT if(count() = 0, NULL, toInt64(now()) - toInt64(max(received_at))) AS freshness_seconds
            FROM events WHERE {TENANT} AND received_at >= now() - 86400""",
           ["freshness_seconds"], kind="stat", unit="s", w=6),
        prom("Consumer lag by group and topic (records)", [
            ("{{group}} {{topic}}", "sum by (group, topic) (pitboss_consumer_lag_records)"),
        ], w=18),
        prom("Consumer lag on Kinesis (seconds behind the newest record)", [
            ("{{group}} {{topic}}", "max by (group, topic) (pitboss_consumer_lag_seconds)"),
        ], unit="s", w=24,
            description="Kinesis members: how far behind each shard's newest record their reads are (GetRecords' MillisBehindLatest), the worst shard per group and stream. Kafka and the embedded log report records instead (the panel above)."),
    ]),
    "platform-health": ("Pitboss · Platform health", [
        prom("Targets up", [("{{job}} {{instance}}", "up")], kind="stat", w=24, h=5,
             thresholds=[("red", None), ("green", 1)]),
        prom("Ingest requests/s by status", [
            ("{{status}}", "sum by (status) (rate(pitboss_ingest_requests_total[$__rate_interval]))")]),
        prom("Ingest events/s by outcome", [
            ("{{outcome}}", "sum by (outcome) (rate(pitboss_ingest_events_total[$__rate_interval]))")]),
        prom("Bus acknowledgement p99 (ingest)", [
            ("p99", "histogram_quantile(0.99, sum by (le) (rate(pitboss_ingest_bus_ack_seconds_bucket[$__rate_interval])))")],
             unit="s"),
        prom("Ingest request bodies held", [
            ("{{instance}}", "sum by (instance) (pitboss_ingest_body_bytes_held)")], unit="bytes",
             description="Bytes of request bodies each ingest instance holds at once (at most "
                         "max_inflight_body_bytes, 256 MiB; one tenant's requests at most their share, "
                         "64 MiB; docs/api.md, \"Operations\")."),
        prom("Ingest bodies refused/s for a full body budget", [
            ("{{instance}} ({{bound}})",
             "sum by (instance, bound) (rate(pitboss_ingest_body_budget_refused_total[$__rate_interval]))")],
             description="Bodies answered 503 overloaded: the instance's whole budget (process) or "
                         "one tenant's share (tenant) was full (alert PitbossIngestOverloaded)."),
        prom("Processor rows inserted/s", [
            ("{{instance}}", "sum by (instance) (rate(pitboss_processor_rows_inserted_total[$__rate_interval]))")]),
        prom("ClickHouse insert p95", [
            ("p95", "histogram_quantile(0.95, sum by (le) (rate(pitboss_processor_insert_seconds_bucket[$__rate_interval])))")],
             unit="s"),
        prom("Processor: oldest row not stored yet, by topic", [
            ("{{instance}} {{topic}}", "max by (instance, topic) (pitboss_processor_unstored_seconds)")],
             unit="s", thresholds=[("green", None), ("red", 300)],
             description="Age of the oldest row a processor took from the bus and has not stored yet, "
                         "set every second: it climbs while the store hangs or fails (docs/processor.md, "
                         "\"Health\"); under load it stays near the batch age plus the insert time."),
        prom("Dead letters/s", [
            ("processor", "sum(rate(pitboss_processor_dead_letters_total[$__rate_interval]))"),
            ("antifraud", "sum(rate(pitboss_antifraud_dead_letters_total[$__rate_interval]))")]),
        prom("Antifraud events/s and alerts/s", [
            ("events", "sum(rate(pitboss_antifraud_events_total[$__rate_interval]))"),
            ("alerts", "sum(rate(pitboss_antifraud_alerts_total[$__rate_interval]))")]),
        prom("Gateway connections", [
            ("{{instance}}", "sum by (instance) (pitboss_gateway_connections)")]),
        prom("Connections refused/s (limits)", [
            ("{{job}}", "sum by (job) (rate(pitboss_http_connections_refused_total[$__rate_interval]))")]),
        prom("ClickHouse rows inserted/s", [
            ("{{instance}}", "sum by (instance) (rate(ClickHouseProfileEvents_InsertedRows[$__rate_interval]))")]),
        prom("Rules engines: running the group / standing by", [
            ("running", "count(pitboss_antifraud_standby == 0) or vector(0)"),
            ("standing by", "count(pitboss_antifraud_standby == 1) or vector(0)")], kind="stat", w=6,
             description="One engine runs the consumer group, others stand by until it leaves "
                         "(docs/rules.md, \"One engine per group\"); running should be 1."),
        prom("Kafka brokers and under-replicated partitions", [
            ("brokers", "max(kafka_brokers)"),
            ("under-replicated", "sum(kafka_topic_partition_under_replicated_partition)")],
             kind="stat", w=6),
        prom("Kafka consumer group lag (records)", [
            ("{{consumergroup}}", "sum by (consumergroup) (kafka_consumergroup_lag_sum)")]),
        prom("nginx active connections", [
            ("{{instance}}", "sum by (instance) (nginx_connections_active)")], w=24),
    ]),
}


def thresholds(steps):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def panel(spec, pid, x, y):
    kind = spec["kind"]
    p = {"id": pid, "type": kind, "title": spec["title"],
         "gridPos": {"x": x, "y": y, "w": spec["w"], "h": spec["h"]},
         "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
    if spec.get("description"):
        p["description"] = spec["description"]
    if spec["unit"]:
        p["fieldConfig"]["defaults"]["unit"] = spec["unit"]
    if spec.get("thresholds"):
        p["fieldConfig"]["defaults"]["thresholds"] = thresholds(spec["thresholds"])
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "table":
        p["options"] = {"showHeader": True}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area"}
    if spec["ds"] == "ch":
        p["datasource"] = CH
        p["interval"] = "1m"  # the rollups are per minute: no bucket below that
        p["targets"] = [{"refId": "A", "datasource": CH, "editorType": "sql",
                         "queryType": "timeseries" if kind == "timeseries" else "table",
                         "format": 0 if kind == "timeseries" else 1, "rawSql": spec["sql"]}]
    else:
        p["datasource"] = PROM
        p["targets"] = [{"refId": chr(ord("A") + i), "datasource": PROM, "expr": expr,
                         "legendFormat": legend, "range": True}
                        for i, (legend, expr) in enumerate(spec["exprs"])]
    return p


def used_variables(specs):
    """The variables a dashboard's ClickHouse queries name, in VARIABLES' order; a variable's
    own query may name an earlier one (currency's names the tenant)."""
    sql = " ".join(s["sql"] for s in specs if s["ds"] == "ch")
    return [n for n in VARIABLES if "${" + n + "}" in sql or "${" + n + ":" in sql]


def dashboard(uid, title, specs):
    panels, x, y, row_h = [], 0, 0, 0
    for i, spec in enumerate(specs, 1):
        if x + spec["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(panel(spec, i, x, y))
        x += spec["w"]
        row_h = max(row_h, spec["h"])
    variables = []
    for name in used_variables(specs):
        label, query, multi, refresh = VARIABLES[name]
        variables.append({
            "name": name, "label": label, "type": "query", "datasource": CH, "query": query,
            "refresh": refresh, "multi": multi, "includeAll": multi,
            **({"allValue": "__all"} if multi else {})})
    return {
        "uid": f"pitboss-{uid}", "title": title, "tags": ["pitboss"], "editable": False,
        "schemaVersion": 41, "version": 1, "timezone": "utc", "refresh": "30s",
        "graphTooltip": 1, "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": []}, "links": [],
        "panels": panels,
    }


def render():
    return {f"{uid}.json": json.dumps(dashboard(uid, title, specs), indent=2) + "\n"
            for uid, (title, specs) in DASHBOARDS.items()}


def queries():
    for uid, (_, specs) in DASHBOARDS.items():
        for name in used_variables(specs):
            yield {"dashboard": uid, "panel": f"variable {name}", "kind": "variable",
                   "sql": VARIABLES[name][1], "cols": [VARIABLES[name][1].split()[2]]}
        for spec in specs:
            if spec["ds"] == "ch":
                yield {"dashboard": uid, "panel": spec["title"], "kind": spec["kind"],
                       "sql": spec["sql"], "cols": spec["cols"]}
            else:
                for legend, expr in spec["exprs"]:
                    yield {"dashboard": uid, "panel": spec["title"], "promql": expr}


def main():
    files = render()
    if "--queries" in sys.argv[1:]:
        for q in queries():
            print(json.dumps(q))
    elif "--check" in sys.argv[1:]:
        stale = [n for n, text in files.items()
                 if not (OUT / n).exists() or (OUT / n).read_text() != text]
        extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in files)
        if stale or extra:
            sys.exit(f"dashboards out of date (run python3 deploy/grafana/dashboards.py): {stale + extra}")
        print(f"{len(files)} dashboards match deploy/grafana/dashboards.py")
    else:
        OUT.mkdir(exist_ok=True)
        for n, text in files.items():
            (OUT / n).write_text(text)
        print(f"wrote {len(files)} dashboards to {OUT}")


if __name__ == "__main__":
    main()
