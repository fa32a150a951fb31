//! What the operator console shows besides the live alerts: `GET /v1/stats` (operators only,
//! their own tenant) answers the gateway's own time-to-notify percentiles and, when the
//! gateway is given a [`StatsSource`] (the embedded store in `pitboss up`), the tenant's
//! traffic: events/s, active players, GGR by game, recent pushes, pipeline lag.

use std::collections::HashMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The tenant's traffic, from wherever the events are stored.
#[async_trait::async_trait]
pub trait StatsSource: Send + Sync + 'static {
    /// A JSON object for `tenant` (merged into the `/v1/stats` answer); an error is reported in
    /// the answer's `store_error`, not as a failed request.
    async fn tenant_stats(&self, tenant: &str) -> Result<serde_json::Value, String>;
}

/// How long one window of the time-to-notify percentiles covers; the answer merges the current
/// window and the one before, so it covers the last one to two minutes.
const WINDOW_MS: i64 = 60_000;

/// Time from ingest to the socket write, per tenant, over the last minute or two.
#[derive(Debug, Default)]
pub struct NotifyLatency {
    tenants: Mutex<HashMap<String, Windows>>,
}

#[derive(Debug)]
struct Windows {
    started_ms: i64,
    current: Histogram<u64>,
    previous: Histogram<u64>,
}

/// Percentiles of the time to notify, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 ms to 1 hour, 2 significant digits.
    Histogram::new_with_bounds(1, 3_600_000, 2).expect("constant bounds are valid")
}

impl NotifyLatency {
    /// Records one delivery to a connection of `tenant` that took `ms` from ingest.
    pub fn record(&self, tenant: &str, ms: i64, now_ms: i64) {
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let w = match map.get_mut(tenant) {
            Some(w) => w,
            None => map.entry(tenant.to_owned()).or_insert_with(|| Windows {
                started_ms: now_ms,
                current: histogram(),
                previous: histogram(),
            }),
        };
        w.rotate(now_ms);
        w.current.saturating_record(ms.clamp(1, 3_600_000) as u64);
    }

    /// The last minute or two of `tenant`, if anything was delivered.
    pub fn summary(&self, tenant: &str, now_ms: i64) -> Option<LatencySummary> {
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.get_mut(tenant)?;
        w.rotate(now_ms);
        let mut h = w.current.clone();
        // Same bounds: adding cannot fail.
        let _ = h.add(&w.previous);
        (!h.is_empty()).then(|| LatencySummary {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.50),
            p95_ms: h.value_at_quantile(0.95),
            p99_ms: h.value_at_quantile(0.99),
            max_ms: h.max(),
        })
    }
}

impl Windows {
    fn rotate(&mut self, now_ms: i64) {
        let age = now_ms - self.started_ms;
        if age < WINDOW_MS {
            return;
        }
        if age < 2 * WINDOW_MS {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.started_ms += WINDOW_MS;
        } else {
            self.current.reset();
            self.previous.reset();
            self.started_ms = now_ms;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_last_two_windows_per_tenant() {
        let l = NotifyLatency::default();
        assert_eq!(l.summary("a", 0), None);
        for ms in 1..=100 {
            l.record("a", ms, 1_000);
        }
        l.record("b", 5_000, 1_000);
        let a = l.summary("a", 1_000).unwrap();
        assert_eq!((a.count, a.max_ms), (100, 100));
        assert!((49..=51).contains(&a.p50_ms), "{a:?}");
        assert!((94..=96).contains(&a.p95_ms), "{a:?}");
        let b = l.summary("b", 1_000).unwrap();
        assert_eq!(b.count, 1);
        assert!((4_950..=5_050).contains(&b.p50_ms), "{b:?}");
        // A minute later the old window is still counted…
        l.record("a", 1_000, 61_500);
        assert_eq!(l.summary("a", 61_500).unwrap().count, 101);
        // …two minutes later only the newer one, and after a long pause nothing.
        assert_eq!(l.summary("a", 121_500).unwrap().count, 1);
        assert_eq!(l.summary("a", 400_000), None);
        // Nonsense times are clamped, not refused.
        l.record("a", -5, 400_000);
        assert_eq!(l.summary("a", 400_000).unwrap().max_ms, 1);
    }
}
