//! Draining held connections on shutdown without a reconnect storm.
//!
//! When shutdown begins every held connection gets its own turn, spread evenly over
//! `shutdown.drain` (a golden-ratio sequence over client ids: deterministic, jitter-like,
//! and even for consecutive ids), so reconnects reach the other pods gradually instead
//! of all at once. A session keeps serving until its turn.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A session's view of the drain.
#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    started: Arc<OnceLock<Instant>>,
    window: Duration,
}

/// The side that starts the drain.
pub struct DrainControl {
    signal: watch::Sender<bool>,
    started: Arc<OnceLock<Instant>>,
}

/// A drain over `window`; the control starts it.
pub fn channel(window: Duration) -> (DrainControl, Drain) {
    let (tx, rx) = watch::channel(false);
    let started = Arc::new(OnceLock::new());
    (
        DrainControl {
            signal: tx,
            started: started.clone(),
        },
        Drain {
            signal: rx,
            started,
            window,
        },
    )
}

impl DrainControl {
    /// Starts the drain now (idempotent).
    pub fn start(&self) {
        let _ = self.started.set(Instant::now());
        self.signal.send_replace(true);
    }

    /// A receiver that turns true when the drain starts (for accept loops).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }
}

/// Where in the window client `client` closes: a fraction in [0, 1).
pub fn slot(client: u64) -> f64 {
    let mixed = client.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

impl Drain {
    /// Resolves at `client`'s turn to close (never, while not draining). Cancel-safe:
    /// calling it again computes the same deadline.
    pub async fn turn(&self, client: u64) {
        let mut signal = self.signal.clone();
        if signal.wait_for(|s| *s).await.is_err() {
            return std::future::pending().await;
        }
        let start = *self.started.get_or_init(Instant::now);
        // Boxed: every held connection waits on this future, and an inline `Sleep`
        // (about 110 bytes) would sit in each one for a drain that rarely comes.
        Box::pin(tokio::time::sleep_until(
            start + self.window.mul_f64(slot(client)),
        ))
        .await;
    }

    /// Resolves as soon as the drain starts.
    pub async fn started(&self) {
        let mut signal = self.signal.clone();
        if signal.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_evenly() {
        let mut buckets = [0u32; 10];
        for id in 1..=1000u64 {
            buckets[(slot(id) * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((80..=120).contains(&b), "{buckets:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn turns_wait_for_the_drain_then_the_slot() {
        let (control, drain) = channel(Duration::from_secs(10));
        let d = drain.clone();
        let t = tokio::spawn(async move { d.turn(3).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!t.is_finished(), "no turn before the drain");
        control.start();
        let started = Instant::now();
        t.await.unwrap();
        let waited = started.elapsed();
        let expected = Duration::from_secs(10).mul_f64(slot(3));
        assert!(waited >= expected && waited < expected + Duration::from_millis(5));
    }
}
