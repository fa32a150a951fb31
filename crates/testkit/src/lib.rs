//! Test support: where the real services started by `scripts/stack.sh` listen, unique names
//! for test topics and tables, and events and live-path messages to publish ([`live`]).
//!
//! Tests that need a service call [`kafka`], [`clickhouse`] or [`kinesis`]; when the variable
//! is missing they fail with a message that says how to start the stack. Nothing skips.

pub mod lambda;
pub mod live;
pub mod metrics;

use rand::Rng;

fn required(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs {what}. Run the suite with ./scripts/test.sh, \
             which installs and starts the services and exports their addresses \
             (or `source .stack/env` after `./scripts/stack.sh start`)."
        ),
    }
}

/// A loopback port free now, for a process a test starts on it (or restarts on it), below the
/// kernel's ephemeral range and never handed out twice by this process. A port the kernel
/// hands out for `127.0.0.1:0` (the usual pick) can be handed out again, between its release
/// and the child's bind, to anything that binds port 0 meanwhile (another test's server: one
/// CI run's gateway found another test's server on its port and got 404), or be taken by an
/// outgoing connection.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let range: Vec<u16> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (low, high) = match range[..] {
        [low, high] => (low, high),
        _ => (32_768, 60_999),
    };
    // Below the range, or above it where a tuned range starts low.
    let band = if low > 12_000 {
        10_000..low
    } else {
        high.saturating_add(1).min(64_000)..65_535
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let port = rand::rng().random_range(band.clone());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {band:?} in 1,000 tries")
}

/// Kafka bootstrap servers (one broker).
pub fn kafka() -> String {
    required("PITBOSS_TEST_KAFKA", "a Kafka broker")
}

/// Bootstrap servers of the 3-broker cluster (RF 3, min.insync.replicas 2), for fault tests.
pub fn kafka_cluster() -> String {
    required("PITBOSS_TEST_KAFKA_CLUSTER", "the 3-broker Kafka cluster")
}

/// ClickHouse HTTP URL.
pub fn clickhouse() -> String {
    required("PITBOSS_TEST_CLICKHOUSE", "a ClickHouse server")
}

/// The same ClickHouse server's HTTPS URL, and the file of the test CA its certificate comes
/// from (for `SSL_CERT_FILE`).
pub fn clickhouse_https() -> (String, String) {
    (
        required("PITBOSS_TEST_CLICKHOUSE_HTTPS", "ClickHouse's HTTPS port"),
        required(
            "PITBOSS_TEST_CLICKHOUSE_CA",
            "ClickHouse's HTTPS port (its test CA)",
        ),
    )
}

/// HTTP URLs of the 2-shard x 2-replica ClickHouse cluster, in the order shard 1 replica 1,
/// shard 1 replica 2, shard 2 replica 1, shard 2 replica 2; and the cluster's name.
pub fn clickhouse_cluster() -> (Vec<String>, String) {
    let urls = required(
        "PITBOSS_TEST_CLICKHOUSE_CLUSTER",
        "the 2x2 ClickHouse cluster (scripts/stack.sh start --cluster)",
    );
    let name = required(
        "PITBOSS_TEST_CLICKHOUSE_CLUSTER_NAME",
        "the 2x2 ClickHouse cluster (scripts/stack.sh start --cluster)",
    );
    (urls.split(',').map(str::to_owned).collect(), name)
}

/// Interserver (replication) HTTP URLs of the cluster's servers, in [`clickhouse_cluster`] order:
/// replicas fetch parts there only with the cluster's interserver credentials.
pub fn clickhouse_cluster_interserver() -> Vec<String> {
    required(
        "PITBOSS_TEST_CLICKHOUSE_CLUSTER_INTERSERVER",
        "the 2x2 ClickHouse cluster (scripts/stack.sh start --cluster)",
    )
    .split(',')
    .map(str::to_owned)
    .collect()
}

/// Kinesis endpoint (moto server).
pub fn kinesis() -> String {
    required("PITBOSS_TEST_KINESIS", "a Kinesis endpoint (moto)")
}

/// A name unique to this test run: `prefix_<random>`, safe for topics and tables.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}_{suffix:016x}")
}

/// The last `lines` lines of every file in `dir` (logs of processes a test ran), each under a
/// `--- path` header: for assertion messages.
pub fn log_tails(dir: &std::path::Path, lines: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("(no logs in {})", dir.display());
    };
    for path in entries.flatten().map(|e| e.path()) {
        // Lossy: a log that quotes a server's binary answer must still show.
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        out += &format!("--- {}\n", path.display());
        for l in tail.into_iter().rev() {
            out += l;
            out.push('\n');
        }
    }
    out
}

/// Waits until a process just started has stored rows of its own: `count()` above `before`
/// (the count when it started), or at `all` (everything was stored already: nothing is left
/// to catch it in the middle of). A fault test's kill that follows lands on a process at work,
/// not on one still joining its group (a member taking over waits out a killed one's session
/// first). Panics after `within`, with `context()` (the processes' logs, say).
pub async fn until_storing<C, F>(
    mut count: C,
    before: u64,
    all: u64,
    within: std::time::Duration,
    context: impl Fn() -> String,
) where
    C: FnMut() -> F,
    F: std::future::Future<Output = u64>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = count().await;
        if now > before || now >= all {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stored nothing within {within:?} (still {now})\n{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Event `i` as a client posts it (JSON) for tenant `demo`, with its own event id
/// `0193735a-0000-7000-8000-{i:012x}`, occurred `at` (RFC 3339), player `p{i % 50}`: even `i`
/// bet `100 + i` minor units of EUR on roulette, odd `i` settle the previous bet with a payout
/// of 40. So `0..2n` holds `n` bets staking `sum(100 + 2k)` and `n` settlements paying `40 n`.
pub fn client_bet(i: u64, at: &str) -> serde_json::Value {
    let payload = if i.is_multiple_of(2) {
        serde_json::json!({"bet_id": format!("b{i}"), "game_id": "roulette",
            "stake": {"amount_minor": 100 + i, "currency": "EUR"}})
    } else {
        serde_json::json!({"bet_id": format!("b{}", i - 1), "game_id": "roulette",
            "result": "win", "payout": {"amount_minor": 40, "currency": "EUR"}})
    };
    serde_json::json!({
        "event_id": format!("0193735a-0000-7000-8000-{i:012x}"),
        "tenant_id": "demo", "player_id": format!("p{}", i % 50), "occurred_at": at,
        "type": if i.is_multiple_of(2) { "bet_placed" } else { "bet_settled" },
        "payload": payload,
    })
}

/// A stamped deposit of 1.00 EUR by tenant `acme`, player `p{i % players}`, with the event id
/// `0193735a-0000-7000-8000-{i:012x}` (so ids 0..n are distinct and gaps are visible), as
/// ingest would have put it on the bus.
pub fn deposit(i: u64, players: u64) -> pitboss_model::Event {
    let now = pitboss_model::Timestamp::now();
    pitboss_model::Event {
        event_id: Some(format!("0193735a-0000-7000-8000-{i:012x}")),
        tenant_id: "acme".into(),
        player_id: format!("p{}", i % players),
        session_id: None,
        occurred_at: now,
        received_at: Some(now),
        schema_version: 1,
        late: false,
        utc_offset_min: None,
        payload: pitboss_model::Payload::Deposit(pitboss_model::Deposit {
            transaction_id: format!("tx{i}"),
            amount: pitboss_model::Money::new(100, "EUR"),
            method: None,
            device_id: None,
            ip: None,
            payment_instrument: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe() {
        let a = unique_name("events");
        let b = unique_name("events");
        assert_ne!(a, b);
        assert!(a.starts_with("events_"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    #[should_panic(expected = "PITBOSS_TEST_NOPE is not set")]
    fn missing_service_fails_loudly() {
        required("PITBOSS_TEST_NOPE", "nothing");
    }
}

/// A clickhouse-server of `scripts/stack.sh`, stopped and started the way the stack does it
/// (for fault tests; `stack.sh stop` ends it via its pid file either way).
#[derive(Debug, Clone)]
pub struct ClickHouseProcess {
    pub pid_file: String,
    pub config: String,
}

impl ClickHouseProcess {
    /// The single server.
    pub fn single() -> Self {
        ClickHouseProcess {
            pid_file: required("PITBOSS_TEST_CLICKHOUSE_PIDFILE", "the ClickHouse pid file"),
            config: required("PITBOSS_TEST_CLICKHOUSE_CONFIG", "the ClickHouse config"),
        }
    }

    /// Server `i` (0-based, in [`clickhouse_cluster`] order) of the cluster.
    pub fn cluster_member(i: usize) -> Self {
        let dir = required(
            "PITBOSS_TEST_CLICKHOUSE_CLUSTER_STACK",
            "the 2x2 ClickHouse cluster (scripts/stack.sh start --cluster)",
        );
        ClickHouseProcess {
            pid_file: format!("{dir}/pids/clickhouse-cluster-{}.pid", i + 1),
            config: format!("{dir}/clickhouse-cluster-{}/config.xml", i + 1),
        }
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(&self.pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.pid_file))
            .trim()
            .to_owned()
    }

    fn alive(pid: &str) -> bool {
        std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sends `signal` (`TERM`, `KILL`) to the server's process group and waits until it is gone.
    pub fn stop(&self, signal: &str) {
        let pid = self.pid();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pid}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} clickhouse {pid}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Self::alive(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "clickhouse {pid} did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts it again, detached (like scripts/stack.sh), and records the new pid.
    #[allow(clippy::zombie_processes)]
    pub fn start(&self) {
        let child = std::process::Command::new("setsid")
            .args([
                "clickhouse-server",
                &format!("--config-file={}", self.config),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting clickhouse-server: {e}"));
        std::fs::write(&self.pid_file, child.id().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", self.pid_file));
    }
}

/// The single broker's SASL_SSL listener (SCRAM-SHA-512, as MSK serves clients): its address,
/// the password of user `pitboss`, and the file of the CA that signed its certificate.
pub fn kafka_sasl_ssl() -> (String, String, String) {
    (
        required(
            "PITBOSS_TEST_KAFKA_SASL_SSL",
            "the broker's SASL_SSL listener",
        ),
        required(
            "PITBOSS_TEST_KAFKA_SASL_PASSWORD",
            "the broker's SCRAM password",
        ),
        required("PITBOSS_TEST_KAFKA_CA", "the broker's CA certificate"),
    )
}

/// `events` as a game backend sends them in requests of ten seconds' play: in time order, each
/// request's events received in the same millisecond (its `received_at`), their ids UUIDv4s in
/// the reverse of the order sent — so an id order and the order sent (the bus's) disagree
/// within every request.
pub fn sent_in_requests(events: &mut [pitboss_model::Event]) {
    events.sort_by_key(|e| (e.occurred_at, e.event_id.clone()));
    let n = events.len();
    for (i, e) in events.iter_mut().enumerate() {
        let t = e.occurred_at.as_millis();
        e.received_at = Some(pitboss_model::Timestamp::from_millis(
            t - t.rem_euclid(10_000) + 10_000,
        ));
        e.event_id = Some(format!("{:08x}-0000-4000-8000-000000000000", n - i));
    }
}
