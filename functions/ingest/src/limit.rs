//! Per-tenant event-rate limits (governor's keyed GCRA limiter): a request is admitted when the
//! tenant has budget for all its events; otherwise the caller gets the wait before a retry, or,
//! for more events than one second's budget (which no wait makes admissible), that limit.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Why a request's events were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The budget is used up: seconds until it allows them.
    Wait(u64),
    /// More events than the tenant's events per second, its whole burst: never admitted in
    /// one request.
    OverBurst { per_second: u32 },
}

/// Rate limits by tenant.
#[derive(Debug, Clone)]
pub struct TenantLimits {
    limiters: Arc<std::collections::HashMap<String, (DefaultDirectRateLimiter, u32)>>,
    default: Arc<DefaultKeyedRateLimiter<String>>,
    default_per_second: u32,
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
            .map(|(t, r)| (t, (RateLimiter::direct(quota(r)), r.max(1))))
            .collect();
        TenantLimits {
            limiters: Arc::new(limiters),
            default: Arc::new(RateLimiter::keyed(quota(default_per_second))),
            default_per_second: default_per_second.max(1),
        }
    }

    /// Takes `events` from the tenant's budget, or says how many seconds to wait — or that
    /// no wait helps.
    pub fn admit(&self, tenant: &str, events: usize) -> Result<(), Refused> {
        let Some(n) = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let (result, per_second) = match self.limiters.get(tenant) {
            Some((l, r)) => (l.check_n(n), *r),
            None => (
                self.default.check_key_n(&tenant.to_owned(), n),
                self.default_per_second,
            ),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(Refused::Wait(
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                ))
            }
            // More events than one second's budget: never admissible in one request.
            Err(_) => Err(Refused::OverBurst { per_second }),
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
        assert!(
            l.admit("small", 5)
                .is_err_and(|r| matches!(r, Refused::Wait(w) if w >= 1))
        );
        assert_eq!(l.admit("big", 100), Ok(()), "another tenant is unaffected");
        assert!(l.admit("big", 1).is_err());
        assert_eq!(l.admit("other", 0), Ok(()));
    }

    #[test]
    fn more_events_than_one_second_s_budget_are_refused_as_such_not_told_to_wait() {
        let l = TenantLimits::new(100, [("small".to_owned(), 10)]);
        assert_eq!(
            l.admit("small", 11),
            Err(Refused::OverBurst { per_second: 10 })
        );
        assert_eq!(
            l.admit("big", 101),
            Err(Refused::OverBurst { per_second: 100 })
        );
        assert_eq!(l.admit("small", 10), Ok(()), "the budget was not touched");
    }
}
