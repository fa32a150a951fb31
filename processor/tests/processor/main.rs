//! The processor's integration tests in one binary (linked once, not once per suite): the loop
//! over the embedded log and an in-memory sink, SQLite, ClickHouse (one server, live, and the
//! 2×2 cluster) and Kafka. Every suite names its topics and databases uniquely, so suites run
//! side by side.

mod clickhouse;
mod clickhouse_cluster;
mod clickhouse_live;
mod common;
mod live;
mod memory;
mod sqlite;
