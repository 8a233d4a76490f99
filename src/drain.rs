//! Draining held connections on shutdown, or off a route a reload changed, without a
//! reconnect storm.
//!
//! When a drain begins every held connection gets its own turn, spread evenly over
//! `shutdown.drain` (a golden-ratio sequence over client ids: deterministic, jitter-like,
//! and even for consecutive ids), so reconnects reach the other pods (or the new route)
//! gradually instead of all at once. A session keeps serving until its turn, and then
//! closes with the drain's [`Why`].
//!
//! The process has one drain (shutdown); each route has its own ([`DrainControl::route`]),
//! started by the shutdown or by a reload that removes or changes the route: a session
//! waits on one drain whatever the reason.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Why a drain closes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// fanfare shuts down (WebSocket 1012, SSE `fanfare.drain`).
    Shutdown,
    /// A reload removed or changed the connection's route (WebSocket 4004, SSE
    /// `fanfare.route_changed`).
    RouteChanged,
}

/// A session's view of the drain.
#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<Option<Why>>,
    started: Arc<OnceLock<Instant>>,
    window: Duration,
}

/// The side that starts the drain.
pub struct DrainControl {
    signal: watch::Sender<Option<Why>>,
    /// Turns true when the drain starts, whatever the reason (for accept loops).
    stopping: watch::Sender<bool>,
    started: Arc<OnceLock<Instant>>,
    window: Duration,
}

/// A drain over `window`; the control starts it.
pub fn channel(window: Duration) -> (DrainControl, Drain) {
    let (tx, rx) = watch::channel(None);
    let started = Arc::new(OnceLock::new());
    (
        DrainControl {
            signal: tx,
            stopping: watch::channel(false).0,
            started: started.clone(),
            window,
        },
        Drain {
            signal: rx,
            started,
            window,
        },
    )
}

impl DrainControl {
    /// Starts the drain now for a shutdown (idempotent).
    pub fn start(&self) {
        self.start_for(Why::Shutdown);
    }

    /// Starts the drain now for `why`; a drain already started keeps its reason.
    pub fn start_for(&self, why: Why) {
        let _ = self.started.set(Instant::now());
        self.signal.send_if_modified(|w| {
            if w.is_some() {
                return false;
            }
            *w = Some(why);
            true
        });
        self.stopping.send_replace(true);
    }

    /// A receiver that turns true when the drain starts (for accept loops).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// A route's own drain over the same window: started by this one (the shutdown)
    /// or by its own control (a reload that retires the route). The link is one task
    /// per route, which ends with the route's control.
    pub fn route(&self) -> (Arc<DrainControl>, Drain) {
        let (control, drain) = channel(self.window);
        let control = Arc::new(control);
        let weak = Arc::downgrade(&control);
        let mut shutdown = self.signal.subscribe();
        let mut retired = drain.signal.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = shutdown.wait_for(Option::is_some) => {
                    if r.is_ok() && let Some(c) = weak.upgrade() {
                        c.start_for(Why::Shutdown);
                    }
                }
                _ = retired.wait_for(Option::is_some) => {}
            }
        });
        (control, drain)
    }
}

/// Where in the window client `client` closes: a fraction in [0, 1).
pub fn slot(client: u64) -> f64 {
    let mixed = client.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

impl Drain {
    /// Resolves at `client`'s turn to close (never, while not draining), with the
    /// drain's reason. Cancel-safe: calling it again computes the same deadline.
    pub async fn turn(&self, client: u64) -> Why {
        let mut signal = self.signal.clone();
        // The watch's read guard is not Send: it is gone before anything else awaits.
        let seen = signal.wait_for(Option::is_some).await.map(|w| *w);
        let Ok(Some(why)) = seen else {
            return std::future::pending().await;
        };
        let start = *self.started.get_or_init(Instant::now);
        // Boxed: every held connection waits on this future, and an inline `Sleep`
        // (about 110 bytes) would sit in each one for a drain that rarely comes.
        Box::pin(tokio::time::sleep_until(
            start + self.window.mul_f64(slot(client)),
        ))
        .await;
        why
    }

    /// Resolves as soon as the drain starts.
    pub async fn started(&self) {
        let mut signal = self.signal.clone();
        if signal.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_route_drains_with_the_shutdown_or_alone_with_its_own_reason() {
        let (shutdown, _) = channel(Duration::from_secs(10));
        let (a, drain_a) = shutdown.route();
        let (b, drain_b) = shutdown.route();
        b.start_for(Why::RouteChanged);
        assert_eq!(drain_b.turn(1).await, Why::RouteChanged);
        let waiting = tokio::spawn(async move { drain_a.turn(1).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "retiring b left a alone");
        shutdown.start();
        assert_eq!(waiting.await.unwrap(), Why::Shutdown);
        // A route retired before the shutdown keeps its reason.
        b.start();
        assert_eq!(drain_b.turn(2).await, Why::RouteChanged);
        drop(a);
    }

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
        assert_eq!(t.await.unwrap(), Why::Shutdown);
        let waited = started.elapsed();
        let expected = Duration::from_secs(10).mul_f64(slot(3));
        assert!(waited >= expected && waited < expected + Duration::from_millis(5));
    }
}
