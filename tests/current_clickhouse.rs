//! The schema on current ClickHouse, next to the 18.16 the other tests use: `pitboss migrate
//! --print-sql` (what `migrate` runs on an empty database, ledger included) applied twice to
//! chDB — the ClickHouse engine in-process, 26.x (scripts/stack.sh install) — whose
//! materialized views must then fill the rollups exactly (scripts/current_clickhouse.py).

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
    let sql = print_sql(&[]);
    let mut check = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/current_clickhouse.py"
        ))
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
    assert_eq!(report["statements"], 13, "ledger + 8 objects + 4 records");
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
