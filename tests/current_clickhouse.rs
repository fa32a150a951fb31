//! The schema on current ClickHouse, next to the 18.16 the other tests use: `pitboss migrate
//! --print-sql` (what `migrate` runs on an empty database, ledger included) applied twice to
//! chDB — the ClickHouse engine in-process, 26.x (scripts/stack.sh install) — whose
//! materialized views must then fill the rollups exactly and whose live-path tables keep one row
//! per message id (scripts/current_clickhouse.py); the cluster layout's script, which needs a
//! cluster to run, parsed there statement by statement.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn print_sql(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["migrate", "--print-sql"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_schema_applies_and_fills_its_rollups_on_current_clickhouse() {
    let report = current_clickhouse(&print_sql(&[]), &[]);
    assert_eq!(report["statements"], 20, "ledger + 12 objects + 7 records");
}

/// Runs scripts/current_clickhouse.py on `sql` with `args`; its report.
fn current_clickhouse(sql: &str, args: &[&str]) -> serde_json::Value {
    let mut check = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/current_clickhouse.py"
        ))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let version = report["clickhouse"].as_str().unwrap();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 24, "not a current ClickHouse: {version}");
    report
}

#[test]
fn the_cluster_script_shards_the_live_tables_by_bus_partition_and_parses_on_current_clickhouse() {
    let sql = print_sql(&["--clickhouse-cluster", "analytics", "--database", "games"]);
    for table in ["alerts", "pushes", "deliveries", "alert_acks"] {
        assert!(
            sql.contains(&format!(
                "CREATE TABLE IF NOT EXISTS games.{table} ON CLUSTER analytics AS games.{table}_local \
                 ENGINE = Distributed(analytics, games, {table}_local, cityHash64(bus_topic, bus_partition))"
            )),
            "{table}"
        );
        assert!(sql.contains(&format!(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/games/{table}_local', '{{replica}}', "
        )));
    }
    assert!(sql.contains(
        "TO games.alerts_per_minute_local AS\nSELECT tenant_id, toStartOfMinute(received_at) AS minute, rule_id, uniqExactState(alert_id) AS alerts\nFROM games.alerts_local\n"
    ));
    assert!(
        !sql.contains("DROP") && !sql.contains("raised_at"),
        "an empty database never gets version 2's tables"
    );
    let report = current_clickhouse(&sql, &["--parse-only"]);
    assert_eq!(report["parsed"], true);
    assert_eq!(report["statements"], 29, "ledger + 21 objects + 7 records");
}

#[test]
fn the_printed_cluster_script_names_the_cluster_and_refuses_unsafe_names() {
    let sql = print_sql(&["--clickhouse-cluster", "analytics", "--database", "games"]);
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS games.events_local ON CLUSTER analytics"));
    assert!(sql.contains("Distributed(analytics, games, events_local"));
    let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args(["migrate", "--print-sql", "--clickhouse-cluster", "a;b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster name \"a;b\" must be"));
}
