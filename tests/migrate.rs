//! `pitboss migrate` as an operator runs it, against the real ClickHouse of scripts/stack.sh:
//! the first run applies every migration, the second applies none, both exit 0; a database
//! name that could inject SQL is refused.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn migrate(database: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pitboss"))
        .args([
            "migrate",
            "--clickhouse",
            &pitboss_testkit::clickhouse(),
            "--database",
            database,
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn migrate_applies_everything_once() {
    let db = pitboss_testkit::unique_name("cli");
    let first = migrate(&db);
    let log = String::from_utf8_lossy(&first.stderr).to_string()
        + &String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{log}");
    let all: Vec<u32> = pitboss_processor::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(log.contains(&format!("applied={all:?}")), "{log}");
    let second = migrate(&db);
    let log = String::from_utf8_lossy(&second.stderr).to_string()
        + &String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{log}");
    assert!(log.contains("applied=[]"), "{log}");
}

#[test]
fn a_hostile_database_name_is_refused() {
    let out = migrate("x; DROP DATABASE default");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database must be"));
}
