//! The embedded broker: in-process publish/subscribe with NATS subject matching.
//! One process only: it exists so that fanfare runs end to end on a laptop with no
//! NATS, and says so in its log at start-up.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::message::Message;
use crate::routing::subject;

/// Messages buffered per subscription before the embedded broker drops (like a NATS
/// slow consumer). The hub drains its subscriptions without awaiting clients, so
/// this bound is only reached when the process is overloaded.
const SUBSCRIPTION_BUFFER: usize = 65_536;

struct Entry {
    id: u64,
    pattern: String,
    tx: mpsc::Sender<Message>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: Vec<Entry>,
}

/// The embedded broker. Cloning shares it.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Mutex<Inner>>,
    connected: watch::Receiver<bool>,
    _connected_tx: Arc<watch::Sender<bool>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A new, empty broker (always connected).
    pub fn new() -> MemoryBroker {
        let (tx, rx) = watch::channel(true);
        MemoryBroker {
            inner: Arc::default(),
            connected: rx,
            _connected_tx: Arc::new(tx),
        }
    }

    pub(super) fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    pub(super) fn subscribe(&self, pattern: &str) -> MemorySubscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.entries.push(Entry {
            id,
            pattern: pattern.to_string(),
            tx,
        });
        MemorySubscription {
            id,
            rx,
            broker: self.inner.clone(),
        }
    }

    pub(super) fn publish(&self, msg: &Message) {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in inner
            .entries
            .iter()
            .filter(|e| subject::matches(&e.pattern, &msg.subject))
        {
            if e.tx.try_send(msg.clone()).is_err() {
                tracing::warn!(subject = %msg.subject, "embedded broker: subscription full, message dropped");
            }
        }
    }

    /// Subscriptions currently open (for tests and metrics).
    pub fn subscription_count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len()
    }
}

/// One subscription; dropping it removes it from the broker.
pub struct MemorySubscription {
    id: u64,
    rx: mpsc::Receiver<Message>,
    broker: Arc<Mutex<Inner>>,
}

impl MemorySubscription {
    pub(super) async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let mut inner = self
            .broker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.entries.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_by_pattern_and_unsubscribes_on_drop() {
        let b = MemoryBroker::new();
        let mut exact = b.subscribe("orders.1");
        let mut wild = b.subscribe("orders.*");
        b.publish(&Message::new("orders.1", "a"));
        b.publish(&Message::new("orders.2", "b"));
        assert_eq!(exact.next().await.unwrap().payload, "a");
        assert_eq!(wild.next().await.unwrap().payload, "a");
        assert_eq!(wild.next().await.unwrap().payload, "b");
        assert!(exact.rx.try_recv().is_err());
        drop(exact);
        assert_eq!(b.subscription_count(), 1);
    }
}
