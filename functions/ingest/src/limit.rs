//! Per-tenant event-rate limits (governor's keyed GCRA limiter): a request is admitted when the
//! tenant has budget for all its events; otherwise the caller gets the wait before a retry.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Rate limits by tenant.
#[derive(Debug, Clone)]
pub struct TenantLimits {
    limiters: Arc<std::collections::HashMap<String, DefaultDirectRateLimiter>>,
    default: Arc<DefaultKeyedRateLimiter<String>>,
}

fn quota(per_second: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl TenantLimits {
    /// `overrides` are (tenant, events per second); others get `default_per_second`.
    pub fn new(
        default_per_second: u32,
        overrides: impl IntoIterator<Item = (String, u32)>,
    ) -> Self {
        let limiters = overrides
            .into_iter()
            .map(|(t, r)| (t, RateLimiter::direct(quota(r))))
            .collect();
        TenantLimits {
            limiters: Arc::new(limiters),
            default: Arc::new(RateLimiter::keyed(quota(default_per_second))),
        }
    }

    /// Takes `events` from the tenant's budget, or says how many seconds to wait.
    pub fn admit(&self, tenant: &str, events: usize) -> Result<(), u64> {
        let Some(n) = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let result = match self.limiters.get(tenant) {
            Some(l) => l.check_n(n),
            None => self.default.check_key_n(&tenant.to_owned(), n),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            // More events than one second's budget: never admissible in one request.
            Err(_) => Err(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_per_tenant() {
        let l = TenantLimits::new(100, [("small".to_owned(), 10)]);
        assert_eq!(l.admit("small", 10), Ok(()));
        assert!(l.admit("small", 5).is_err_and(|wait| wait >= 1));
        assert_eq!(l.admit("big", 100), Ok(()), "another tenant is unaffected");
        assert!(l.admit("big", 1).is_err());
        assert_eq!(l.admit("other", 0), Ok(()));
    }
}
