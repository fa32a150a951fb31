//! The runtime every long-running Pitboss service shares (ingest, processor, and the rules
//! engine and gateway to come), like Centrifugo's `Run(ctx)` services: a new service is a pure
//! core plus its adapters, composed from these parts instead of a copy of another's `main`.
//!
//! - [`telemetry`]: tracing to stderr, the process-wide Prometheus recorder;
//! - [`admin`]: the admin listener's router (`/healthz`, `/readyz`, `/metrics`);
//! - [`http`]: serving a router with bounded connections and a graceful drain;
//! - [`shutdown`]: one stop signal for the whole process (SIGINT, SIGTERM, or a part that
//!   failed), and a drain deadline;
//! - [`worker`]: the partitioned-worker loop of group consumers (offsets stored only for
//!   output that is durable).

pub mod admin;
pub mod http;
pub mod lambda;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

pub use shutdown::Shutdown;

/// Why a process could not start or run, printed as its message when `main` returns it: Rust
/// prints the error `main` returns in its `Debug` form, which for a message is the message
/// quoted with every quote in it escaped (`Error: "overflow_topic \"events_x\": …"`). The
/// Lambda binaries return it.
pub struct Failure(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.into())
    }
}
