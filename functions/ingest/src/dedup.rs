//! The edge dedup window: event ids accepted in the last few minutes, per tenant, bounded in
//! memory (moka evicts by size and age). A client retry inside the window is answered
//! "duplicate"; the durable dedup happens downstream (ClickHouse insert tokens, id keys).

use std::time::Duration;

use moka::sync::Cache;

use crate::core::SeenIds;

/// Recently accepted (tenant, event id) pairs.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    ids: Cache<(String, String), ()>,
}

impl DedupWindow {
    /// Keeps ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: u64) -> Self {
        DedupWindow {
            ids: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(window)
                .build(),
        }
    }

    /// Records ids the bus has acknowledged.
    pub fn remember<'a>(&self, tenant: &str, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.ids.insert((tenant.to_owned(), id.to_owned()), ());
        }
    }
}

impl SeenIds for DedupWindow {
    fn seen(&self, tenant: &str, event_id: &str) -> bool {
        self.ids
            .contains_key(&(tenant.to_owned(), event_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_tenant_and_forgets_after_the_window() {
        let w = DedupWindow::new(Duration::from_millis(200), 1000);
        w.remember("acme", ["id-1"]);
        assert!(w.seen("acme", "id-1"));
        assert!(!w.seen("other", "id-1"), "tenants are isolated");
        std::thread::sleep(Duration::from_millis(400));
        assert!(!w.seen("acme", "id-1"));
    }

    #[test]
    fn bounded_in_memory() {
        let w = DedupWindow::new(Duration::from_secs(60), 100);
        for i in 0..10_000 {
            w.remember("t", [format!("id-{i}").as_str()]);
        }
        w.ids.run_pending_tasks();
        assert!(w.ids.entry_count() <= 100, "{}", w.ids.entry_count());
    }
}
