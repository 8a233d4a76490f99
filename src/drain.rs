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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
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

/// One drain's state, shared by its control and every session waiting on it.
///
/// A `Notify` rather than a watch: every held connection waits on its drain, and a
/// `Notified` (one waiter node) is less than half of a watch receiver's clone and its
/// `wait_for` future (200 bytes per connection, for a drain that rarely comes).
struct Signal {
    /// Set once, when the drain starts: the reason and the start of the window.
    started: OnceLock<(Why, Instant)>,
    /// The control is gone without starting the drain: it never will.
    ended: AtomicBool,
    notify: Notify,
}

impl Signal {
    fn new() -> Arc<Signal> {
        Arc::new(Signal {
            started: OnceLock::new(),
            ended: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Resolves when the drain starts (its reason and start), or with `None` once it
    /// never will.
    async fn fired(&self) -> Option<(Why, Instant)> {
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified` from its
            // creation on, so a start between the check and the wait is not missed.
            let notified = self.notify.notified();
            if let Some(s) = self.started.get() {
                return Some(*s);
            }
            if self.ended.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }
}

/// A session's view of the drain.
#[derive(Clone)]
pub struct Drain {
    signal: Arc<Signal>,
    window: Duration,
}

/// The side that starts the drain.
pub struct DrainControl {
    signal: Arc<Signal>,
    /// Turns true when the drain starts, whatever the reason (for accept loops).
    stopping: watch::Sender<bool>,
    window: Duration,
}

/// A drain over `window`; the control starts it.
pub fn channel(window: Duration) -> (DrainControl, Drain) {
    let signal = Signal::new();
    (
        DrainControl {
            signal: signal.clone(),
            stopping: watch::channel(false).0,
            window,
        },
        Drain { signal, window },
    )
}

impl DrainControl {
    /// Starts the drain now for a shutdown (idempotent).
    pub fn start(&self) {
        self.start_for(Why::Shutdown);
    }

    /// Starts the drain now for `why`; a drain already started keeps its reason.
    pub fn start_for(&self, why: Why) {
        if self.signal.started.set((why, Instant::now())).is_ok() {
            self.signal.notify.notify_waiters();
        }
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
        let shutdown = self.signal.clone();
        let retired = drain.signal.clone();
        tokio::spawn(async move {
            tokio::select! {
                s = shutdown.fired() => {
                    if s.is_some() && let Some(c) = weak.upgrade() {
                        c.start_for(Why::Shutdown);
                    }
                }
                _ = retired.fired() => {}
            }
        });
        (control, drain)
    }
}

impl Drop for DrainControl {
    fn drop(&mut self) {
        self.signal.ended.store(true, Ordering::Release);
        self.signal.notify.notify_waiters();
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
        let Some((why, start)) = self.signal.fired().await else {
            return std::future::pending().await;
        };
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
        if self.signal.fired().await.is_none() {
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

    #[tokio::test(start_paused = true)]
    async fn a_route_dropped_without_a_drain_ends_its_link_and_never_drains() {
        let (shutdown, _) = channel(Duration::from_secs(10));
        let alone = Arc::strong_count(&shutdown.signal);
        let (control, drain) = shutdown.route();
        assert_eq!(Arc::strong_count(&shutdown.signal), alone + 1, "the link");
        let waiting = tokio::spawn(async move { drain.turn(1).await });
        tokio::task::yield_now().await;
        drop(control);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&shutdown.signal) > alone {
            assert!(Instant::now() < deadline, "the link outlived its route");
            tokio::task::yield_now().await;
        }
        shutdown.start();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "a dropped route never drains");
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
