//! The request-body bytes the process holds at once, across every request, gRPC stream and
//! WebSocket frame: one budget (`max_inflight_body_bytes`, 256 MiB by default). Each bound
//! alone (`max_body_bytes` per body, `max_connections`) let 10,000 connections each hold a
//! 20 MiB body: 200 GB. A body is charged chunk by chunk as it is read (after decompression),
//! and holds its bytes until its answer is made; one that finds no room is refused with
//! `overloaded` (503, retry after a second) and nothing of it is written.

use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The process's budget of body bytes.
#[derive(Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    bytes: usize,
}

/// A body (or frame) found the budget used up. Carried as the body's error, so the handler
/// that reads it can tell this refusal from a broken connection.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server holds {0} bytes of request bodies already")]
pub struct OverBudget(pub usize);

/// What one request, stream or frame holds of the budget: given back when the last clone is
/// dropped, or by [`Held::release`].
#[derive(Debug, Clone, Default)]
pub struct Held(Arc<Mutex<HeldInner>>);

#[derive(Debug, Default)]
struct HeldInner {
    permit: Option<OwnedSemaphorePermit>,
    refused: bool,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back what it holds (a gRPC stream, after each batch is written).
    pub fn release(&self) {
        self.lock().permit = None;
    }

    /// Whether a charge to it was refused.
    pub fn refused(&self) -> bool {
        self.lock().refused
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.lock().permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl BodyBudget {
    /// A budget of `bytes` (at least 1).
    pub fn new(bytes: usize) -> BodyBudget {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            sem: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// The budget, bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.bytes.saturating_sub(self.sem.available_permits())
    }

    /// Takes `n` more bytes into `held`, or refuses and takes nothing (and marks `held`).
    pub fn charge(&self, held: &Held, n: usize) -> Result<(), OverBudget> {
        let mut got: Option<OwnedSemaphorePermit> = None;
        let mut left = n;
        while left > 0 {
            let k = left.min(u32::MAX as usize);
            match Arc::clone(&self.sem).try_acquire_many_owned(k as u32) {
                Ok(p) => match &mut got {
                    Some(g) => g.merge(p),
                    None => got = Some(p),
                },
                Err(_) => {
                    held.lock().refused = true;
                    metrics::counter!("pitboss_ingest_body_budget_refused_total").increment(1);
                    return Err(OverBudget(self.bytes));
                }
            }
            left -= k;
        }
        if let Some(p) = got {
            let mut h = held.lock();
            match &mut h.permit {
                Some(mine) => mine.merge(p),
                None => h.permit = Some(p),
            }
        }
        metrics::gauge!("pitboss_ingest_body_bytes_held").set(self.held() as f64);
        Ok(())
    }

    /// `body`, each chunk charged to `held` as it is read; a chunk that finds no room ends it
    /// with [`OverBudget`] as its error.
    pub fn body(self: &Arc<Self>, body: axum::body::Body, held: Held) -> axum::body::Body {
        let budget = Arc::clone(self);
        axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
            let chunk = chunk?;
            budget
                .charge(&held, chunk.len())
                .map_err(axum::Error::new)?;
            Ok::<_, axum::Error>(chunk)
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn charges_add_up_to_the_budget_and_come_back_when_dropped_or_released() {
        let b = BodyBudget::new(100);
        let one = Held::default();
        b.charge(&one, 60).unwrap();
        let two = Held::default();
        assert!(b.charge(&two, 41).is_err(), "60 + 41 > 100");
        assert!(two.refused() && !one.refused());
        assert_eq!(two.bytes(), 0, "a refused charge takes nothing");
        b.charge(&two, 40).unwrap();
        assert_eq!((b.held(), one.bytes(), two.bytes()), (100, 60, 40));
        let clone = one.clone();
        drop(one);
        assert_eq!(b.held(), 100, "a clone still holds it");
        drop(clone);
        assert_eq!(b.held(), 40);
        two.release();
        assert_eq!((b.held(), two.bytes()), (0, 0));
        b.charge(&two, 0).unwrap();
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_room_left_ends_with_the_refusal_as_its_error() {
        let b = Arc::new(BodyBudget::new(10));
        let held = Held::default();
        let body = b.body(axum::body::Body::from("0123456789"), held.clone());
        assert_eq!(
            axum::body::to_bytes(body, usize::MAX).await.unwrap().len(),
            10
        );
        assert_eq!(b.held(), 10, "held until the request's answer");
        let other = Held::default();
        let e = axum::body::to_bytes(b.body(axum::body::Body::from("x"), other.clone()), 100)
            .await
            .unwrap_err();
        assert!(
            pitboss_runtime::http::caused_by::<OverBudget>(&e),
            "found in the error's chain: {e}"
        );
        assert!(other.refused());
        drop(held);
        assert_eq!(b.held(), 0);
    }
}
