//! The fan-out hub: subject → subscribed clients.
//!
//! Invariants:
//! - one broker subscription per distinct subject, created by the first client and
//!   dropped (unsubscribed) when the last one leaves; joins and leaves of a subject are
//!   serialized by the topic map's lock, so a leave can never drop a topic another
//!   client just joined;
//! - each message is turned into one shared [`Event`] (encoded once per transport) and
//!   pushed to every client's [`ClientQueue`] without awaiting any client;
//! - no lock is held across an `.await`.

pub mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

pub use queue::{Batch, ClientQueue, Closed, Pushed};

use crate::broker::{Broker, BrokerError, Message};
use crate::metrics::Metrics;
use crate::transport::sse;

/// Bytes counted per event on top of its payload (framing, id, event name).
const EVENT_OVERHEAD: usize = 64;

/// One message as delivered to clients: its cursor, and its encodings, made once and
/// shared by every client.
pub struct Event {
    /// The concrete subject.
    pub subject: String,
    /// The event name (`Fanfare-Event`, default `message`).
    pub name: String,
    /// The cursor: `<epoch>-<seq>`.
    pub id: String,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// When fanfare received it.
    pub received: Instant,
    sse: Bytes,
    ws: OnceLock<Bytes>,
}

impl Event {
    /// Builds the event for `msg`, numbered `seq` in `epoch`.
    pub fn new(msg: Message, seq: u64, epoch: &str) -> Event {
        let id = format!("{epoch}-{seq}");
        let name = msg.event.unwrap_or_else(|| "message".to_string());
        let sse = sse::encode_event(&id, &name, &msg.payload);
        Event {
            subject: msg.subject,
            name,
            id,
            payload: msg.payload,
            received: msg.received,
            sse,
            ws: OnceLock::new(),
        }
    }

    /// The SSE encoding.
    pub fn sse(&self) -> &Bytes {
        &self.sse
    }

    /// An encoding made on first use and then shared (the WebSocket frame).
    pub fn ws_or_init(&self, f: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.ws.get_or_init(|| f(self))
    }

    /// What the event counts against a client's byte bound.
    pub fn cost(&self) -> usize {
        self.payload.len() + EVENT_OVERHEAD
    }
}

/// Why a message was refused before fan-out.
fn refuse_reason(msg: &Message) -> Option<&'static str> {
    match &msg.event {
        Some(e) if !crate::publish::is_safe_field(e) => Some("bad_event_name"),
        _ => None,
    }
}

struct Topic {
    clients: Mutex<HashMap<u64, Arc<ClientQueue>>>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    task: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Topic {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientQueue>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    broker: Broker,
    metrics: Metrics,
    epoch: String,
    seq: AtomicU64,
    next_client: AtomicU64,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

/// The hub. Cloning shares it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A client's place in one subject; dropping it leaves the subject.
pub struct Membership {
    hub: Weak<Inner>,
    subject: String,
    client: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.leave(&self.subject, self.client);
        }
    }
}

impl Hub {
    /// A hub on `broker`.
    pub fn new(broker: Broker, metrics: Metrics) -> Hub {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Hub {
            inner: Arc::new(Inner {
                broker,
                metrics,
                epoch: to_base36(started),
                seq: AtomicU64::new(0),
                next_client: AtomicU64::new(1),
                topics: Mutex::default(),
            }),
        }
    }

    /// This process's epoch (the first part of every cursor).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// A fresh client id.
    pub fn client_id(&self) -> u64 {
        self.inner.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Subjects subscribed at the broker now.
    pub fn subject_count(&self) -> usize {
        self.inner.topics().len()
    }

    /// Adds `queue` (client `client`) to `subject`, subscribing at the broker if it is the
    /// first, and returns once the broker subscription is in place.
    pub async fn join(
        &self,
        subject: &str,
        client: u64,
        queue: Arc<ClientQueue>,
    ) -> Result<Membership, BrokerError> {
        let mut ready = {
            let mut topics = self.inner.topics();
            let topic = topics
                .entry(subject.to_string())
                .or_insert_with(|| Inner::open(&self.inner, subject));
            topic.clients().insert(client, queue);
            topic.ready.clone()
        };
        let membership = Membership {
            hub: Arc::downgrade(&self.inner),
            subject: subject.to_string(),
            client,
        };
        let outcome = ready
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .unwrap_or_else(|_| Some(Err("subscription task ended".into())));
        match outcome {
            Some(Ok(())) => Ok(membership),
            Some(Err(e)) => Err(BrokerError::Nats(e)),
            None => unreachable!("wait_for returned before a value was set"),
        }
    }
}

impl Inner {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the topic for `subject` and starts its subscription task. Called with
    /// the topic map locked.
    fn open(this: &Arc<Inner>, subject: &str) -> Arc<Topic> {
        let (ready_tx, ready_rx) = watch::channel(None);
        let topic = Arc::new(Topic {
            clients: Mutex::default(),
            ready: ready_rx,
            task: OnceLock::new(),
        });
        let weak_topic = Arc::downgrade(&topic);
        let hub = Arc::downgrade(this);
        let broker = this.broker.clone();
        let subject = subject.to_string();
        let task = tokio::spawn(async move {
            let mut sub = match broker.subscribe(&subject).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribe failed");
                    ready_tx.send_replace(Some(Err(e.to_string())));
                    if let Some(hub) = hub.upgrade() {
                        hub.close_failed(&subject, &weak_topic);
                    }
                    return;
                }
            };
            if let Some(hub) = hub.upgrade() {
                hub.metrics.subscriptions.inc();
            }
            ready_tx.send_replace(Some(Ok(())));
            let _gauge = SubscriptionGauge(hub.clone());
            while let Some(msg) = sub.next().await {
                let (Some(hub), Some(topic)) = (hub.upgrade(), weak_topic.upgrade()) else {
                    break;
                };
                hub.fan_out(&topic, msg);
            }
        });
        let _ = topic.task.set(task);
        topic
    }

    /// Delivers one message to every client of `topic`.
    fn fan_out(&self, topic: &Topic, msg: Message) {
        self.metrics.messages_received.inc();
        if let Some(reason) = refuse_reason(&msg) {
            tracing::warn!(reason, "message refused");
            self.metrics.dropped.with_label_values(&[reason]).inc();
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = Arc::new(Event::new(msg, seq, &self.epoch));
        let clients = topic.clients();
        for queue in clients.values() {
            match queue.push(event.clone()) {
                Pushed::Queued | Pushed::AlreadyClosed => {}
                Pushed::DroppedOldest(n) => {
                    self.metrics
                        .dropped
                        .with_label_values(&["slow_consumer"])
                        .inc_by(n);
                }
                Pushed::Disconnected => {
                    self.metrics
                        .dropped
                        .with_label_values(&["slow_consumer_disconnect"])
                        .inc();
                }
            }
        }
    }

    fn leave(&self, subject: &str, client: u64) {
        let mut topics = self.topics();
        let Some(topic) = topics.get(subject) else {
            return;
        };
        let empty = {
            let mut clients = topic.clients();
            clients.remove(&client);
            clients.is_empty()
        };
        if empty && let Some(topic) = topics.remove(subject) {
            // Aborting the task drops the subscription: the broker unsubscribes.
            if let Some(t) = topic.task.get() {
                t.abort();
            }
        }
    }

    /// Removes a topic whose subscription failed, if it is still the current one.
    fn close_failed(&self, subject: &str, topic: &Weak<Topic>) {
        let mut topics = self.topics();
        if let Some(current) = topics.get(subject)
            && Weak::ptr_eq(&Arc::downgrade(current), topic)
        {
            topics.remove(subject);
        }
    }
}

/// Decrements `fanfare_subscriptions` when the subscription task ends (or is aborted).
struct SubscriptionGauge(Weak<Inner>);

impl Drop for SubscriptionGauge {
    fn drop(&mut self) {
        if let Some(hub) = self.0.upgrade() {
            hub.metrics.subscriptions.dec();
        }
    }
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::config::{QueueConfig, SlowConsumer};

    fn hub() -> (Hub, MemoryBroker) {
        let broker = MemoryBroker::new();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        (Hub::new(Broker::Memory(broker.clone()), metrics), broker)
    }

    fn queue() -> Arc<ClientQueue> {
        Arc::new(ClientQueue::new(
            &QueueConfig::default(),
            SlowConsumer::DropOldest,
        ))
    }

    #[tokio::test]
    async fn one_subscription_per_subject_refcounted() {
        let (hub, broker) = hub();
        let (a, b) = (queue(), queue());
        let ma = hub.join("s.1", 1, a.clone()).await.unwrap();
        let mb = hub.join("s.1", 2, b.clone()).await.unwrap();
        assert_eq!(broker.subscription_count(), 1);
        drop(ma);
        assert_eq!(hub.subject_count(), 1);
        drop(mb);
        assert_eq!(hub.subject_count(), 0);
        // The aborted task drops its subscription.
        for _ in 0..100 {
            if broker.subscription_count() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the broker subscription outlived its last client");
    }

    #[tokio::test]
    async fn one_event_shared_by_all_clients() {
        let (hub, broker) = hub();
        let (a, b) = (queue(), queue());
        let _ma = hub.join("s.1", 1, a.clone()).await.unwrap();
        let _mb = hub.join("s.1", 2, b.clone()).await.unwrap();
        Broker::Memory(broker)
            .publish(Message::new("s.1", "x"))
            .await
            .unwrap();
        a.ready().await;
        b.ready().await;
        let (ea, eb) = (a.take().events, b.take().events);
        assert!(Arc::ptr_eq(&ea[0], &eb[0]), "each message is encoded once");
        assert!(ea[0].id.starts_with(hub.epoch()));
    }

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }
}
