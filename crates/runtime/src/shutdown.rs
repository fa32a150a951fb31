//! One stop signal per process. SIGINT or SIGTERM triggers it, and so does a part that fails
//! (so the others stop too); every part waits on it, stops taking new work, and finishes what
//! it holds within the drain deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A cloneable stop signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<String>>>,
    rx: watch::Receiver<Option<String>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A signal nothing has triggered yet.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(None);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// A signal that SIGINT or SIGTERM triggers.
    pub fn on_signals() -> Self {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let why = signal().await;
            trigger.trigger(why);
        });
        shutdown
    }

    /// Stops the process; the first reason given is kept.
    pub fn trigger(&self, why: &str) {
        self.tx.send_if_modified(|reason| {
            if reason.is_some() {
                return false;
            }
            tracing::info!(reason = why, "shutting down: draining");
            *reason = Some(why.to_owned());
            true
        });
    }

    /// Whether the process is stopping.
    pub fn is_triggered(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Why the process is stopping (None while it is not).
    pub fn reason(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Resolves once the signal is triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Runs `work` to completion, or until `deadline` after the signal: what a part holding
    /// work (a processor flushing, a server answering requests already read) is given to finish.
    /// `Err(Elapsed)` when the deadline cut it short.
    pub async fn drain<T>(
        &self,
        deadline: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => Ok(out),
            () = self.wait() => tokio::time::timeout(deadline, work).await,
        }
    }
}

async fn signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => "SIGINT", () = term => "SIGTERM" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_first_reason() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait().await }
        });
        a.trigger("SIGTERM");
        a.trigger("later");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(b.reason().as_deref(), Some("SIGTERM"));
        // Waiting after the fact returns at once.
        tokio::time::timeout(Duration::from_secs(5), b.wait())
            .await
            .expect("already triggered");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_work_the_deadline_after_the_signal_and_no_more() {
        let s = Shutdown::new();
        // Work that finishes before any signal is not cut.
        assert_eq!(
            s.drain(Duration::from_secs(1), async { 7 }).await.ok(),
            Some(7)
        );
        s.trigger("test");
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert!(s.drain(Duration::from_secs(2), slow).await.is_err());
        let quick = tokio::time::sleep(Duration::from_secs(1));
        assert!(s.drain(Duration::from_secs(2), quick).await.is_ok());
    }
}
