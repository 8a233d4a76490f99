//! The fan-out hub: subject → subscribed clients.
//!
//! Invariants:
//! - one broker subscription per distinct topic (a subject, or a subject in a JetStream
//!   stream), created by the first client and dropped when the last one leaves (after the
//!   route's `history.linger`, so a quick reconnect can resume); joins and leaves are
//!   serialized by the topic map's lock, so a leave never drops a topic someone joined;
//! - each message is turned into one shared [`Event`] (encoded once per transport) and
//!   pushed to every client's [`ClientQueue`] without awaiting any client;
//! - a memory topic's ring is appended in the same critical section as the pushes, so
//!   "join, then read the ring" can neither miss nor repeat an event (the queue drops
//!   replayed duplicates by sequence);
//! - no lock is held across an `.await`.

pub mod queue;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

pub use queue::{Batch, ClientQueue, Closed, Pushed};

use crate::broker::{Broker, BrokerError, Message, Replay};
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
    /// The cursor: `<epoch>-<seq>` in memory, the stream sequence with JetStream.
    pub id: String,
    /// The sequence behind the cursor (process-wide, or the stream's).
    pub seq: u64,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// When fanfare received it.
    pub received: Instant,
    sse: Bytes,
    ws: OnceLock<Bytes>,
}

impl Event {
    /// Builds the event for `msg` with sequence `seq` and cursor `id`.
    pub fn new(msg: Message, seq: u64, id: String) -> Event {
        let name = msg.event.unwrap_or_else(|| "message".to_string());
        let sse = sse::encode_event(&id, &name, &msg.payload);
        Event {
            subject: msg.subject,
            name,
            id,
            seq,
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

/// What to subscribe to, and how much history to keep.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// The subject (or pattern).
    pub subject: String,
    /// The JetStream stream to follow, if the route has one.
    pub stream: Option<String>,
    /// Memory history: events kept (0: none).
    pub ring: usize,
    /// Memory history: how long an event is kept.
    pub max_age: Duration,
    /// How long the topic outlives its last client.
    pub linger: Duration,
    /// The most events one resume replays.
    pub max_replay: usize,
}

impl TopicSpec {
    /// A live-only topic on `subject` (no history, no linger).
    pub fn live(subject: &str) -> TopicSpec {
        TopicSpec {
            subject: subject.to_string(),
            stream: None,
            ring: 0,
            max_age: Duration::ZERO,
            linger: Duration::ZERO,
            max_replay: 0,
        }
    }

    fn key(&self) -> String {
        match &self.stream {
            Some(s) => format!("{s}\u{0}{}", self.subject),
            None => self.subject.clone(),
        }
    }
}

/// A memory topic's recent events.
struct Ring {
    events: VecDeque<Arc<Event>>,
    /// The process sequence when the topic started recording: nothing before is known.
    since: u64,
    /// The highest sequence dropped from the ring.
    evicted: u64,
}

struct Members {
    clients: HashMap<u64, Arc<ClientQueue>>,
    ring: Option<Ring>,
    /// Bumped on every join, so a lingering removal knows it was overtaken.
    generation: u64,
}

struct Topic {
    spec: TopicSpec,
    members: Mutex<Members>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    task: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Topic {
    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
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

/// A client's place in one topic; dropping it leaves the topic.
pub struct Membership {
    hub: Weak<Inner>,
    key: String,
    client: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            Inner::leave(&hub, &self.key, self.client);
        }
    }
}

/// A parsed resume cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// A memory cursor of this process.
    Memory(u64),
    /// A JetStream stream sequence.
    Stream(u64),
    /// From another process (restart) or not understood: the client must refetch.
    Foreign,
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

    /// This process's epoch (the first part of every memory cursor).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// A fresh client id.
    pub fn client_id(&self) -> u64 {
        self.inner.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Topics subscribed at the broker now.
    pub fn subject_count(&self) -> usize {
        self.inner.topics().len()
    }

    /// Parses a cursor for a topic of `spec`.
    pub fn parse_cursor(&self, spec: &TopicSpec, text: &str) -> Cursor {
        let text = text.trim();
        if spec.stream.is_some() {
            return text.parse().map_or(Cursor::Foreign, Cursor::Stream);
        }
        match text.split_once('-') {
            Some((epoch, seq)) if epoch == self.inner.epoch => {
                seq.parse().map_or(Cursor::Foreign, Cursor::Memory)
            }
            _ => Cursor::Foreign,
        }
    }

    /// The cursor that means "now" for `spec` (for a poll that returns nothing).
    pub async fn cursor_now(&self, spec: &TopicSpec) -> Result<String, BrokerError> {
        match &spec.stream {
            Some(stream) => Ok(self.inner.broker.stream_last_seq(stream).await?.to_string()),
            None => Ok(format!(
                "{}-{}",
                self.inner.epoch,
                self.inner.seq.load(Ordering::Acquire)
            )),
        }
    }

    /// Adds `queue` (client `client`) to the live subject `subject` (no history).
    pub async fn join(
        &self,
        subject: &str,
        client: u64,
        queue: Arc<ClientQueue>,
    ) -> Result<Membership, BrokerError> {
        self.join_spec(&TopicSpec::live(subject), client, queue)
            .await
    }

    /// Adds `queue` to the topic of `spec`, subscribing at the broker if it is the first
    /// client, and returns once the subscription is in place.
    pub async fn join_spec(
        &self,
        spec: &TopicSpec,
        client: u64,
        queue: Arc<ClientQueue>,
    ) -> Result<Membership, BrokerError> {
        let key = spec.key();
        let mut ready = {
            let mut topics = self.inner.topics();
            let topic = topics
                .entry(key.clone())
                .or_insert_with(|| Inner::open(&self.inner, spec.clone()));
            let mut m = topic.members();
            m.clients.insert(client, queue);
            m.generation += 1;
            drop(m);
            topic.ready.clone()
        };
        let membership = Membership {
            hub: Arc::downgrade(&self.inner),
            key,
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

    /// What a client that joined `spec` must be replayed from `cursor`. Call it after
    /// the join, then hand the result to [`ClientQueue::splice`].
    pub async fn replay(&self, spec: &TopicSpec, cursor: Cursor) -> Result<Replayed, BrokerError> {
        let outcome = match (cursor, &spec.stream) {
            (Cursor::Foreign, _) => Replayed::Reset("cursor_unknown"),
            (Cursor::Stream(after), Some(stream)) => {
                match self
                    .inner
                    .broker
                    .replay_stream(stream, &spec.subject, after, spec.max_replay)
                    .await?
                {
                    Replay::Reset(r) => Replayed::Reset(r),
                    Replay::Messages(msgs) => Replayed::Events(
                        msgs.into_iter()
                            .filter(|m| refuse_reason(m).is_none())
                            .filter_map(|m| {
                                let seq = m.seq?;
                                Some(Arc::new(Event::new(m, seq, seq.to_string())))
                            })
                            .collect(),
                    ),
                }
            }
            (Cursor::Memory(after), None) => self.replay_ring(spec, after),
            _ => Replayed::Reset("cursor_unknown"),
        };
        let label = match &outcome {
            Replayed::Events(e) => {
                self.inner.metrics.replayed.inc_by(e.len() as u64);
                "replayed"
            }
            Replayed::Reset(_) => "reset",
        };
        self.inner.metrics.resumes.with_label_values(&[label]).inc();
        Ok(outcome)
    }

    fn replay_ring(&self, spec: &TopicSpec, after: u64) -> Replayed {
        let topics = self.inner.topics();
        let Some(topic) = topics.get(&spec.key()) else {
            return Replayed::Reset("cursor_too_old");
        };
        let mut m = topic.members();
        let Some(ring) = m.ring.as_mut() else {
            return Replayed::Reset("no_history");
        };
        expire(ring, spec.max_age);
        if after < ring.since || after < ring.evicted {
            return Replayed::Reset("cursor_too_old");
        }
        let events: Vec<Arc<Event>> = ring
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        if events.len() > spec.max_replay {
            return Replayed::Reset("too_many_to_replay");
        }
        Replayed::Events(events)
    }
}

/// The outcome of a resume.
pub enum Replayed {
    /// Events to deliver before the live ones (possibly none).
    Events(Vec<Arc<Event>>),
    /// The client missed too much (or the cursor is unknown): it gets a reset.
    Reset(&'static str),
}

fn expire(ring: &mut Ring, max_age: Duration) {
    while let Some(front) = ring.events.front() {
        if front.received.elapsed() <= max_age {
            break;
        }
        ring.evicted = ring.evicted.max(front.seq);
        ring.events.pop_front();
    }
}

impl Inner {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the topic and starts its subscription task. Called with the topic map
    /// locked.
    fn open(this: &Arc<Inner>, spec: TopicSpec) -> Arc<Topic> {
        let (ready_tx, ready_rx) = watch::channel(None);
        let ring = (spec.stream.is_none() && spec.ring > 0).then(|| Ring {
            events: VecDeque::new(),
            since: this.seq.load(Ordering::Acquire),
            evicted: 0,
        });
        let topic = Arc::new(Topic {
            spec: spec.clone(),
            members: Mutex::new(Members {
                clients: HashMap::new(),
                ring,
                generation: 0,
            }),
            ready: ready_rx,
            task: OnceLock::new(),
        });
        let weak_topic = Arc::downgrade(&topic);
        let hub = Arc::downgrade(this);
        let broker = this.broker.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            // JetStream topics remember the last stream sequence delivered, so after a
            // NATS outage the consumer is re-created right after it: nothing lost, nothing
            // twice (async-nats' own ordered-consumer recovery does not survive a server
            // restart, whose in-memory consumers are gone).
            let mut last: Option<u64> = None;
            let mut connected = broker.connected();
            let mut gauge = None;
            loop {
                let sub = match &spec.stream {
                    Some(stream) => {
                        broker
                            .subscribe_stream(stream, &spec.subject, last.map(|l| l + 1))
                            .await
                    }
                    None => broker.subscribe(&spec.subject).await,
                };
                let mut sub = match sub {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribe failed");
                        if let Some(tx) = ready_tx.take() {
                            tx.send_replace(Some(Err(e.to_string())));
                            if let Some(hub) = hub.upgrade() {
                                hub.close_failed(&spec.key(), &weak_topic);
                            }
                            return;
                        }
                        // A re-subscription after an outage: try again shortly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Some(tx) = ready_tx.take() {
                    if let Some(hub) = hub.upgrade() {
                        hub.metrics.subscriptions.inc();
                    }
                    tx.send_replace(Some(Ok(())));
                    gauge = Some(SubscriptionGauge(hub.clone()));
                }
                let resubscribe = loop {
                    tokio::select! {
                        msg = sub.next() => {
                            let Some(msg) = msg else { break spec.stream.is_some() };
                            let (Some(hub), Some(topic)) = (hub.upgrade(), weak_topic.upgrade()) else {
                                break false;
                            };
                            if let Some(seq) = msg.seq {
                                if last.is_some_and(|l| seq <= l) {
                                    continue;
                                }
                                last = Some(seq);
                            }
                            hub.fan_out(&topic, msg);
                        }
                        _ = reconnected(&mut connected), if spec.stream.is_some() => break true,
                    }
                };
                if !resubscribe {
                    break;
                }
                tracing::info!("re-creating a JetStream consumer after a reconnect");
            }
            drop(gauge);
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
        let mut m = topic.members();
        let event = match msg.seq {
            Some(seq) => Arc::new(Event::new(msg, seq, seq.to_string())),
            None => {
                // Numbered under the topic lock, so a ring is always in sequence order.
                let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
                Arc::new(Event::new(msg, seq, format!("{}-{seq}", self.epoch)))
            }
        };
        if let Some(ring) = m.ring.as_mut() {
            ring.events.push_back(event.clone());
            while ring.events.len() > topic.spec.ring {
                if let Some(old) = ring.events.pop_front() {
                    ring.evicted = ring.evicted.max(old.seq);
                }
            }
            expire(ring, topic.spec.max_age);
        }
        for queue in m.clients.values() {
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

    fn leave(this: &Arc<Inner>, key: &str, client: u64) {
        let mut topics = this.topics();
        let Some(topic) = topics.get(key) else {
            return;
        };
        let (empty, generation) = {
            let mut m = topic.members();
            m.clients.remove(&client);
            (m.clients.is_empty(), m.generation)
        };
        if !empty {
            return;
        }
        let linger = topic.spec.linger;
        if linger.is_zero() {
            if let Some(topic) = topics.remove(key) {
                topic.abort();
            }
            return;
        }
        // Keep the subscription (and its ring) for a quick reconnect.
        let hub = Arc::downgrade(this);
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let Some(hub) = hub.upgrade() else { return };
            let mut topics = hub.topics();
            let idle = topics.get(&key).is_some_and(|t| {
                let m = t.members();
                m.clients.is_empty() && m.generation == generation
            });
            if idle && let Some(topic) = topics.remove(&key) {
                topic.abort();
            }
        });
    }

    /// Removes a topic whose subscription failed, if it is still the current one.
    fn close_failed(&self, key: &str, topic: &Weak<Topic>) {
        let mut topics = self.topics();
        if let Some(current) = topics.get(key)
            && Weak::ptr_eq(&Arc::downgrade(current), topic)
        {
            topics.remove(key);
        }
    }
}

impl Topic {
    /// Ends the subscription task: the broker unsubscribes.
    fn abort(&self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}

/// Resolves when the broker connection has dropped and come back.
async fn reconnected(connected: &mut watch::Receiver<bool>) {
    if connected.wait_for(|c| !*c).await.is_err() {
        return std::future::pending().await;
    }
    if connected.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
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
