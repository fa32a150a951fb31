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

/// `pitboss rules backtest --clickhouse-url` on events in ClickHouse (small pages, copies not
/// merged away) reports exactly what it reports on the same events in the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_backtest_reads_clickhouse_in_pages_as_it_reads_the_embedded_store() {
    use pitboss_model::Timestamp;

    let db = pitboss_testkit::unique_name("backtest");
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (events, rows) = scripted_day();
    // ClickHouse: every row, a second copy of the first 30 in another insert (two parts, not
    // merged yet), and a third at other offsets (a publish retried: the same events received
    // in the same millisecond, later in the partition), read pages apart.
    let url = pitboss_testkit::clickhouse();
    let moved: Vec<_> = rows[..30]
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.bus_offset += 1_000_000;
            r
        })
        .collect();
    insert_apart(&url, &db, &[&rows[..], &rows[..30], &moved[..]]).await;
    // The embedded store: the same rows.
    let dir = tempfile::tempdir().unwrap();
    embedded_store(dir.path(), &rows);

    let first = events.iter().filter_map(|e| e.received_at).min().unwrap();
    let from = first.to_rfc3339().unwrap();
    let to = Timestamp::from_millis(Timestamp::now().as_millis() + 20_000)
        .to_rfc3339()
        .unwrap();
    let run = |store: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args([
                "rules", "backtest", "--from", &from, "--to", &to, "--format", "json",
            ])
            .args(store)
            .env_remove("PITBOSS_DATA_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let clickhouse = run(&[
        "--clickhouse-url",
        &url,
        "--database",
        &db,
        "--page-rows",
        "7",
    ]);
    let embedded = run(&["--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(clickhouse["events_counted"], events.len() as u64);
    assert_eq!(clickhouse["events_unreadable"], 0);
    assert_eq!(clickhouse["rules"], embedded["rules"]);
    assert_eq!(
        clickhouse["score_distribution"],
        embedded["score_distribution"]
    );
    let fired = embedded["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["hits"].as_u64().unwrap() > 0)
        .count();
    assert!(fired >= 7, "{embedded}");
}

/// The scripted day (10 normal players, one of each pattern) sent in requests (each received
/// in one millisecond, ids in the reverse of the order sent: pages must end and resume inside
/// a request, in bus order), and its rows at offsets 0.. of `events` partition 0.
fn scripted_day() -> (Vec<pitboss_model::Event>, Vec<pitboss_processor::EventRow>) {
    let now = pitboss_model::Timestamp::now().as_millis();
    let mut events: Vec<pitboss_model::Event> =
        pitboss_antifraud::scenario::script("demo", now, 10, 1)
            .into_iter()
            .flat_map(|p| p.events)
            .map(|e| pitboss_model::decode_event(e.to_string().as_bytes()).unwrap())
            .collect();
    pitboss_testkit::sent_in_requests(&mut events);
    let rows = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            pitboss_processor::rows::from_event(e.clone(), "events", 0, i as u64).unwrap()
        })
        .collect();
    (events, rows)
}

/// Each of `parts` inserted into `db.events` on its own (parts ClickHouse has not merged).
async fn insert_apart(url: &str, db: &str, parts: &[&[pitboss_processor::EventRow]]) {
    let http = reqwest::Client::new();
    for part in parts {
        let body: String = part
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        let answer = http
            .post(url)
            .query(&[(
                "query",
                format!("INSERT INTO {db}.events FORMAT JSONEachRow"),
            )])
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            answer.text().await.unwrap()
        );
    }
}

/// `rows` in the embedded store of `dir`.
fn embedded_store(dir: &std::path::Path, rows: &[pitboss_processor::EventRow]) {
    use pitboss_processor::sqlite::SqliteRow;
    let (mut conn, _) = pitboss_processor::sqlite::open(&dir.join("pitboss.db")).unwrap();
    let tx = conn.transaction().unwrap();
    pitboss_processor::EventRow::write(&tx, rows).unwrap();
    tx.commit().unwrap();
}

/// `pitboss rules warm` reads ClickHouse (in pages, copies not merged away yet left out) as it
/// reads the embedded store: the same report and the same state, unit for unit, covering the
/// newest offset stored.
#[tokio::test]
async fn rules_warm_reads_clickhouse_as_it_reads_the_embedded_store() {
    let db = pitboss_testkit::unique_name("warm");
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (events, rows) = scripted_day();
    // ClickHouse: every row, and a second copy of the first 30 in another insert (two parts,
    // not merged yet).
    let url = pitboss_testkit::clickhouse();
    insert_apart(&url, &db, &[&rows[..], &rows[..30]]).await;
    let dir = tempfile::tempdir().unwrap();
    embedded_store(dir.path(), &rows);
    // The engine's bus (where its group's commits are read): an embedded log whose group has
    // committed nothing.
    {
        use pitboss_bus::Bus;
        let bus = pitboss_bus::embedded::EmbeddedBus::open(
            dir.path().join("log"),
            pitboss_bus::embedded::EmbeddedConfig::default(),
        )
        .unwrap();
        bus.create_topic("events", 1).await.unwrap();
    }

    let from = events
        .iter()
        .filter_map(|e| e.received_at)
        .min()
        .unwrap()
        .to_rfc3339()
        .unwrap();
    let run = |state: &str, store: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["rules", "warm", "--from", &from, "--format", "json"])
            .args([
                "--bus",
                "embedded",
                "--data-dir",
                dir.path().to_str().unwrap(),
            ])
            .args(["--state-dir", dir.path().join(state).to_str().unwrap()])
            .args(store)
            .env_remove("PITBOSS_DATA_DIR")
            .env_remove("PITBOSS_BUS")
            .env_remove("PITBOSS_ANTIFRAUD_STATE_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let clickhouse = run(
        "ch",
        &[
            "--clickhouse-url",
            &url,
            "--database",
            &db,
            "--page-rows",
            "7",
        ],
    );
    let embedded = run("embedded", &[]);
    assert_eq!(
        clickhouse["events_warmed"],
        events.len() as u64,
        "{clickhouse}"
    );
    assert_eq!(
        clickhouse["positions"],
        serde_json::json!({"events:0": events.len() - 1})
    );
    assert_eq!(clickhouse, embedded);
    let state = |name: &str| {
        let store = pitboss_antifraud::state::StateStore::open(
            &dir.path().join(name).join("antifraud.db"),
            "pitboss-antifraud",
        )
        .unwrap();
        let mut units = std::collections::BTreeMap::new();
        store
            .for_each_unit::<pitboss_antifraud::state::StateError>(|name, value| {
                units.insert(name.to_owned(), value.to_vec());
                Ok(())
            })
            .unwrap();
        (store.snapshot().unwrap().unwrap().positions, units)
    };
    let (ch, embedded) = (state("ch"), state("embedded"));
    assert!(ch.1.len() > 50, "{}", ch.1.len());
    assert!(ch == embedded, "the two states differ");
}

/// ClickHouse over HTTPS (ClickHouse Cloud answers nothing else; docs/deploy.md): `migrate`
/// creates the schema through a certificate the client trusts (a private CA given by
/// `SSL_CERT_FILE`, as the system's roots would be), and the backtest reads through it; a
/// certificate it does not trust is refused, saying so. (The client had no TLS at all:
/// "invalid URL, scheme is not http".)
#[test]
fn migrate_and_backtest_reach_clickhouse_over_https_and_refuse_an_untrusted_certificate() {
    let (https, ca) = pitboss_testkit::clickhouse_https();
    let db = pitboss_testkit::unique_name("https");
    let run = |args: &[&str], ca: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pitboss"));
        c.args(args)
            .env_remove("PITBOSS_DATA_DIR")
            .env_remove("SSL_CERT_DIR")
            .env("RUST_LOG", "warn");
        match ca {
            Some(ca) => c.env("SSL_CERT_FILE", ca),
            None => c.env_remove("SSL_CERT_FILE"),
        };
        c.output().unwrap()
    };
    let out = run(
        &["migrate", "--clickhouse", &https, "--database", &db],
        Some(&ca),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = std::process::Command::new("curl")
        .args(["-sf", "--cacert", &ca])
        .arg(format!("{https}/?query=SHOW+TABLES+FROM+{db}"))
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(tables.lines().any(|t| t == "events"), "{tables}");
    // A few events (inserted over plain HTTP), read back over HTTPS by the backtest.
    let now = pitboss_model::Timestamp::now().as_millis();
    let rows: Vec<_> = pitboss_antifraud::scenario::script("demo", now, 2, 1)
        .into_iter()
        .flat_map(|p| p.events)
        .enumerate()
        .map(|(i, e)| {
            let mut e = pitboss_model::decode_event(e.to_string().as_bytes()).unwrap();
            e.received_at = Some(pitboss_model::Timestamp::from_millis(
                e.occurred_at.as_millis() + 250,
            ));
            pitboss_processor::rows::from_event(e, "events", 0, i as u64).unwrap()
        })
        .collect();
    let body: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let inserted = std::process::Command::new("curl")
        .args(["-sf", "--data-binary", &body])
        .arg(format!(
            "{}/?query=INSERT+INTO+{db}.events+FORMAT+JSONEachRow",
            pitboss_testkit::clickhouse()
        ))
        .status()
        .unwrap();
    assert!(inserted.success());
    let first = rows.iter().map(|r| r.received_at_ms).min().unwrap();
    let ts = |ms: u64| {
        pitboss_model::Timestamp::from_millis(ms as i64)
            .to_rfc3339()
            .unwrap()
    };
    let out = run(
        &[
            "rules",
            "backtest",
            "--clickhouse-url",
            &https,
            "--database",
            &db,
            "--from",
            &ts(first),
            "--to",
            &ts(now as u64 + 1000),
            "--page-rows",
            "5",
            "--format",
            "json",
        ],
        Some(&ca),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events_counted"], rows.len() as u64, "{report}");
    assert!(rows.len() > 10, "{}", rows.len());

    // A trust store that cannot be read (a wrong SSL_CERT_FILE, a host without a CA bundle)
    // costs nothing to `http://` (the client panicked at start while building its TLS) and
    // leaves Mozilla's roots for `https://`.
    let out = run(
        &[
            "migrate",
            "--clickhouse",
            &pitboss_testkit::clickhouse(),
            "--database",
            &db,
        ],
        Some("/nonexistent/ca.pem"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not trusted: refused at once, naming the certificate.
    let out = run(
        &["migrate", "--clickhouse", &https, "--database", &db],
        None,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("invalid peer certificate"),
        "{said}"
    );
}

/// `pitboss rules snooze --alert` reads the alert from ClickHouse as from the embedded store
/// (a copy not merged away yet counted once) and writes the same snooze; an alert id two
/// tenants hold (ids derive from event ids, unique within a tenant) needs `--tenant`.
#[tokio::test]
async fn rules_snooze_reads_an_alert_from_clickhouse_as_from_the_embedded_store() {
    let db = pitboss_testkit::unique_name("snooze");
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The alerts the shipped packs raise on the scripted day; the first.
    let (events, _) = scripted_day();
    let mut engine = pitboss_antifraud::Engine::new(
        pitboss_antifraud::stream::RulesSource::Shipped
            .load()
            .unwrap(),
    );
    let mut out = pitboss_antifraud::Output::default();
    for e in &events {
        engine.process(e, e.received_at.unwrap(), &mut out).unwrap();
    }
    let alert = out.alerts.first().expect("the scripted day fires").clone();
    let row = |tenant: &str| {
        let mut a = alert.clone();
        a.tenant_id = tenant.into();
        pitboss_processor::AlertRow::from_alert(a, "alerts", 0, 1).unwrap()
    };
    let url = pitboss_testkit::clickhouse();
    let http = reqwest::Client::new();
    for rows in [vec![row("demo")], vec![row("demo"), row("other")]] {
        let body: String = rows
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        let answer = http
            .post(&url)
            .query(&[(
                "query",
                format!("INSERT INTO {db}.alerts FORMAT JSONEachRow"),
            )])
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{}",
            answer.text().await.unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    {
        use pitboss_processor::sqlite::SqliteRow;
        let (mut conn, _) =
            pitboss_processor::sqlite::open(&dir.path().join("pitboss.db")).unwrap();
        let tx = conn.transaction().unwrap();
        pitboss_processor::AlertRow::write(&tx, &[row("demo")]).unwrap();
        tx.commit().unwrap();
    }
    let snooze = |name: &str, store: &[&str]| {
        let rules = dir.path().join(name);
        std::fs::create_dir_all(&rules).unwrap();
        for f in ["fraud.toml", "responsible_gambling.toml", "scoring.toml"] {
            std::fs::copy(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("rules")
                    .join(f),
                rules.join(f),
            )
            .unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_pitboss"))
            .args(["rules", "snooze", "--until", "2099-01-01T00:00:00Z"])
            .args(["--reason", "a family tablet", "--alert", &alert.alert_id])
            .arg("--rules")
            .arg(&rules)
            .args(store)
            .env_remove("PITBOSS_DATA_DIR")
            .env_remove("PITBOSS_RULES")
            .output()
            .unwrap();
        let text = std::fs::read_to_string(rules.join("snoozes.toml")).unwrap_or_default();
        (out, text)
    };
    let ch = ["--clickhouse-url", &url, "--database", &db];
    let (out, text) = snooze("ch-any", &ch);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "Error: alerts of several tenants have the id {} (demo, other): give --tenant",
            alert.alert_id
        ),
    );
    assert_eq!(text, "", "nothing written");
    let (out, from_clickhouse) = snooze("ch", &[&ch[..], &["--tenant", "demo"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, from_embedded) = snooze("embedded", &["--data-dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(from_clickhouse, from_embedded);
    let expected = format!(
        "[[snooze]]\nrule = \"{}\"\ntenant = \"demo\"\nkey = \"{}\"\n\
         until = \"2099-01-01T00:00:00Z\"\nreason = \"a family tablet\"\nalert = \"{}\"\n",
        alert.rule_id, alert.group_key, alert.alert_id
    );
    assert!(from_embedded.ends_with(&expected), "{from_embedded}");
    // And the set with it loads.
    let set = pitboss_antifraud::RuleSet::load_dir(&dir.path().join("embedded")).unwrap();
    assert_eq!(set.snoozes().len(), 1);
}
