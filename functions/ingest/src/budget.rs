//! The request-body bytes the process holds at once, across every request, gRPC call and
//! WebSocket frame: one budget (`max_inflight_body_bytes`, 256 MiB by default), of which one
//! tenant's requests hold at most a share (`max_inflight_body_bytes_per_tenant`, 64 MiB). Each
//! bound alone (`max_body_bytes` per body, `max_connections`) let 10,000 connections each hold
//! a 20 MiB body: 200 GB; and without the share, one tenant's stalled bodies could take the
//! whole budget and every other tenant's requests with it.
//!
//! A body is charged chunk by chunk as it is read (after decompression) and holds its bytes
//! until its answer is made; a chunk that finds no room ends the body with [`OverBudget`]
//! (answered `overloaded`, 503, retry after a second; nothing of it written). A body that holds
//! bytes and sends nothing for the stall bound (`header_read_timeout_ms`) is cut with
//! [`Stalled`] (`body_timeout`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The process's budget of body bytes, and each tenant's share of it.
#[derive(Debug)]
pub struct BodyBudget {
    process: Arc<Semaphore>,
    bytes: usize,
    per_tenant: usize,
    /// Every configured tenant's share (a tenant not listed has none: the process's bound
    /// alone).
    tenants: HashMap<String, Arc<Semaphore>>,
    stall: Duration,
}

/// A body (or frame) found no room. Carried as the body's error, so the handler that reads it
/// can tell this refusal from a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "the server holds its {0} bytes of request bodies (all tenants together) and has no room for this one now"
    )]
    Process(usize),
    #[error(
        "this tenant's requests hold their share of {0} bytes of request bodies and there is no room for this one now"
    )]
    Tenant(usize),
}

/// A body held bytes of the budget and sent nothing for the stall bound.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body sent nothing for {0} ms while part of it was held")]
pub struct Stalled(pub u64);

/// What one request, stream or frame holds of the budget: given back when the last clone is
/// dropped, or by [`Held::release`].
#[derive(Debug, Clone, Default)]
pub struct Held(Arc<Mutex<HeldInner>>);

#[derive(Debug, Default)]
struct HeldInner {
    process: Option<OwnedSemaphorePermit>,
    tenant: Option<OwnedSemaphorePermit>,
    refused: Option<OverBudget>,
    stalled: bool,
    /// The budget's semaphore and size, to show what is held once this gives its bytes back.
    gauge: Option<(Arc<Semaphore>, usize)>,
}

impl HeldInner {
    fn give_back(&mut self) {
        let had = self.process.take().is_some();
        self.tenant = None;
        if had && let Some((sem, bytes)) = &self.gauge {
            set_gauge(sem, *bytes);
        }
    }
}

impl Drop for HeldInner {
    fn drop(&mut self) {
        self.give_back();
    }
}

fn set_gauge(sem: &Semaphore, bytes: usize) {
    metrics::gauge!("pitboss_ingest_body_bytes_held")
        .set(bytes.saturating_sub(sem.available_permits()) as f64);
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back what it holds (a gRPC stream, after each batch is written).
    pub fn release(&self) {
        self.lock().give_back();
    }

    /// Whether a charge to it was refused.
    pub fn refused(&self) -> bool {
        self.lock().refused.is_some()
    }

    /// Why a charge to it was refused.
    pub fn refusal(&self) -> Option<OverBudget> {
        self.lock().refused
    }

    /// Whether its body was cut for stalling.
    pub fn stalled(&self) -> bool {
        self.lock().stalled
    }

    /// What it holds, moved into a new `Held`; this one holds nothing after and takes further
    /// charges (a socket's reads: the frame read takes them over).
    pub fn take(&self) -> Held {
        let mut h = self.lock();
        Held(Arc::new(Mutex::new(HeldInner {
            process: h.process.take(),
            tenant: h.tenant.take(),
            refused: None,
            stalled: false,
            gauge: h.gauge.clone(),
        })))
    }

    /// Gives back `n` of the bytes it holds (all it holds, if fewer): a socket's reads that
    /// were a ping or a pong, not part of a frame.
    pub fn give_back_bytes(&self, n: usize) {
        let mut h = self.lock();
        let n = n.min(h.process.as_ref().map_or(0, |p| p.num_permits()));
        if n == 0 {
            return;
        }
        if let Some(p) = h.process.as_mut() {
            drop(p.split(n));
        }
        if let Some(t) = h.tenant.as_mut() {
            drop(t.split(n.min(t.num_permits())));
        }
        if let Some((sem, bytes)) = &h.gauge {
            set_gauge(sem, *bytes);
        }
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.lock().process.as_ref().map_or(0, |p| p.num_permits())
    }
}

/// Takes `n` permits of `sem` (in pieces of at most `u32::MAX`), or none.
fn take(sem: &Arc<Semaphore>, n: usize) -> Option<Option<OwnedSemaphorePermit>> {
    let mut got: Option<OwnedSemaphorePermit> = None;
    let mut left = n;
    while left > 0 {
        let k = left.min(u32::MAX as usize);
        let p = Arc::clone(sem).try_acquire_many_owned(k as u32).ok()?;
        match &mut got {
            Some(g) => g.merge(p),
            None => got = Some(p),
        }
        left -= k;
    }
    Some(got)
}

fn keep(slot: &mut Option<OwnedSemaphorePermit>, p: Option<OwnedSemaphorePermit>) {
    if let Some(p) = p {
        match slot {
            Some(mine) => mine.merge(p),
            None => *slot = Some(p),
        }
    }
}

impl BodyBudget {
    /// A budget of `bytes` for the process and `per_tenant` for each of `tenants`; a body
    /// holding bytes may pause `stall` between its pieces.
    pub fn new<'a>(
        bytes: usize,
        per_tenant: usize,
        tenants: impl IntoIterator<Item = &'a str>,
        stall: Duration,
    ) -> BodyBudget {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        let per_tenant = per_tenant.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            process: Arc::new(Semaphore::new(bytes)),
            bytes,
            per_tenant,
            tenants: tenants
                .into_iter()
                .map(|t| (t.to_owned(), Arc::new(Semaphore::new(per_tenant))))
                .collect(),
            stall,
        }
    }

    /// The process's budget, bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes held now, all tenants.
    pub fn held(&self) -> usize {
        self.bytes.saturating_sub(self.process.available_permits())
    }

    /// Bytes `tenant`'s requests hold now.
    pub fn held_by(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |s| self.per_tenant.saturating_sub(s.available_permits()))
    }

    /// Takes `n` more bytes for `tenant` into `held`, or refuses, takes nothing and marks
    /// `held`.
    pub fn charge(&self, held: &Held, tenant: &str, n: usize) -> Result<(), OverBudget> {
        let refuse = |why: OverBudget| {
            held.lock().refused = Some(why);
            let bound = match why {
                OverBudget::Process(_) => "process",
                OverBudget::Tenant(_) => "tenant",
            };
            metrics::counter!("pitboss_ingest_body_budget_refused_total", "bound" => bound)
                .increment(1);
            Err(why)
        };
        let share = match self.tenants.get(tenant) {
            Some(sem) => match take(sem, n) {
                Some(p) => p,
                None => return refuse(OverBudget::Tenant(self.per_tenant)),
            },
            None => None,
        };
        let Some(mine) = take(&self.process, n) else {
            return refuse(OverBudget::Process(self.bytes));
        };
        {
            let mut h = held.lock();
            keep(&mut h.tenant, share);
            keep(&mut h.process, mine);
            if h.gauge.is_none() {
                h.gauge = Some((Arc::clone(&self.process), self.bytes));
            }
        }
        set_gauge(&self.process, self.bytes);
        Ok(())
    }

    /// `body`, each chunk charged for `tenant` to `held` as it is read: a chunk that finds no
    /// room ends it with [`OverBudget`] as its error, and while it holds bytes, a pause longer
    /// than the stall bound ends it with [`Stalled`].
    pub fn body(
        self: &Arc<Self>,
        body: axum::body::Body,
        tenant: String,
        held: Held,
    ) -> axum::body::Body {
        let budget = Arc::clone(self);
        let chunks = body.into_data_stream();
        let stream =
            futures::stream::unfold(Some((chunks, budget, tenant, held)), |state| async move {
                let (mut chunks, budget, tenant, held) = state?;
                let next = if held.bytes() > 0 {
                    match tokio::time::timeout(budget.stall, chunks.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            held.lock().stalled = true;
                            let ms = budget.stall.as_millis() as u64;
                            return Some((Err(axum::Error::new(Stalled(ms))), None));
                        }
                    }
                } else {
                    chunks.next().await
                };
                match next? {
                    Err(e) => Some((Err(e), None)),
                    Ok(chunk) => match budget.charge(&held, &tenant, chunk.len()) {
                        Ok(()) => Some((Ok(chunk), Some((chunks, budget, tenant, held)))),
                        Err(e) => Some((Err(axum::Error::new(e)), None)),
                    },
                }
            });
        axum::body::Body::from_stream(stream)
    }
}

/// The ingest WebSockets each tenant holds open, bounded per tenant.
#[derive(Debug)]
pub struct SocketSlots {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One socket's place: given back when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    slots: Arc<SocketSlots>,
    tenant: String,
}

impl SocketSlots {
    /// At most `max` sockets a tenant.
    pub fn new(max: usize) -> Arc<SocketSlots> {
        Arc::new(SocketSlots {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more socket of `tenant`, or none.
    pub fn take(self: &Arc<Self>, tenant: &str) -> Option<SocketSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(tenant.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            slots: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }

    /// Sockets `tenant` holds open.
    pub fn open(&self, tenant: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn budget(bytes: usize, per_tenant: usize) -> BodyBudget {
        BodyBudget::new(bytes, per_tenant, ["a", "b"], Duration::from_secs(10))
    }

    #[test]
    fn charges_add_up_to_the_budget_and_come_back_when_dropped_or_released() {
        let b = budget(100, 100);
        let one = Held::default();
        b.charge(&one, "a", 60).unwrap();
        let two = Held::default();
        assert_eq!(b.charge(&two, "b", 41), Err(OverBudget::Process(100)));
        assert!(two.refused() && !one.refused());
        assert_eq!(two.bytes(), 0, "a refused charge takes nothing");
        assert_eq!(b.held_by("b"), 0, "nor the tenant's share");
        b.charge(&two, "b", 40).unwrap();
        assert_eq!((b.held(), one.bytes(), two.bytes()), (100, 60, 40));
        let clone = one.clone();
        drop(one);
        assert_eq!(b.held(), 100, "a clone still holds it");
        drop(clone);
        assert_eq!((b.held(), b.held_by("a")), (40, 0));
        two.release();
        assert_eq!((b.held(), two.bytes(), b.held_by("b")), (0, 0, 0));
        b.charge(&two, "b", 0).unwrap();
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_tenant_holds_at_most_its_sockets_and_a_closed_one_frees_its_place() {
        let slots = SocketSlots::new(2);
        let a1 = slots.take("a").unwrap();
        let _a2 = slots.take("a").unwrap();
        assert!(slots.take("a").is_none());
        let _b = slots.take("b").unwrap();
        assert_eq!((slots.open("a"), slots.open("b")), (2, 1));
        drop(a1);
        assert_eq!(slots.open("a"), 1);
        assert!(slots.take("a").is_some());
    }

    #[test]
    fn one_tenant_holds_its_share_and_leaves_the_rest_to_the_others() {
        let b = budget(100, 60);
        let a = Held::default();
        b.charge(&a, "a", 50).unwrap();
        assert_eq!(
            b.charge(&Held::default(), "a", 11),
            Err(OverBudget::Tenant(60))
        );
        let other = Held::default();
        b.charge(&other, "b", 50).unwrap();
        assert_eq!(b.held_by("b"), 50);
        // A tenant the configuration does not list: the process's bound alone.
        assert_eq!(
            b.charge(&Held::default(), "unlisted", 1),
            Err(OverBudget::Process(100))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_room_left_ends_with_the_refusal_and_gives_back_its_part() {
        let b = Arc::new(budget(10, 10));
        let held = Held::default();
        let body = b.body(
            axum::body::Body::from("0123456789"),
            "a".into(),
            held.clone(),
        );
        assert_eq!(
            axum::body::to_bytes(body, usize::MAX).await.unwrap().len(),
            10
        );
        assert_eq!(b.held(), 10, "held until the request's answer");
        drop(held);
        assert_eq!(b.held(), 0);
        // Two chunks: the first fits, the second does not; the first goes back with the body.
        let other = Held::default();
        let chunks = futures::stream::iter([
            Ok::<_, std::io::Error>(b"012345".to_vec()),
            Ok(b"6789ab".to_vec()),
        ]);
        let e = axum::body::to_bytes(
            b.body(
                axum::body::Body::from_stream(chunks),
                "a".into(),
                other.clone(),
            ),
            100,
        )
        .await
        .unwrap_err();
        assert!(
            pitboss_runtime::http::caused_by::<OverBudget>(&e),
            "found in the error's chain: {e}"
        );
        assert!(other.refused());
        assert_eq!(b.held(), 6, "the first chunk, until the answer");
        drop(other);
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn a_body_that_holds_bytes_and_stalls_is_cut_one_that_holds_none_waits() {
        let b = Arc::new(BodyBudget::new(100, 100, ["a"], Duration::from_millis(300)));
        let stalls = || {
            futures::StreamExt::chain(
                futures::stream::iter([Ok::<_, std::io::Error>(b"01".to_vec())]),
                futures::stream::pending(),
            )
        };
        let held = Held::default();
        let body = b.body(
            axum::body::Body::from_stream(stalls()),
            "a".into(),
            held.clone(),
        );
        let e = axum::body::to_bytes(body, 100).await.unwrap_err();
        assert!(pitboss_runtime::http::caused_by::<Stalled>(&e), "{e}");
        assert!(held.stalled());
        // Released (a stream between batches): nothing held, so it may wait.
        let idle = Held::default();
        let mut body = b.body(
            axum::body::Body::from_stream(stalls()),
            "a".into(),
            idle.clone(),
        );
        use http_body_util::BodyExt;
        assert!(body.frame().await.is_some());
        idle.release();
        // Three times the stall bound: still waiting.
        let waited = tokio::time::timeout(Duration::from_millis(900), body.frame()).await;
        assert!(waited.is_err(), "still waiting");
        assert!(!idle.stalled());
    }
}
