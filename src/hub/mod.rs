//! The fan-out hub: subject → subscribed clients.
//!
//! Invariants:
//! - one broker subscription per distinct topic (a subject, or a subject in a JetStream
//!   stream), created by the first client and dropped when the last one leaves (after the
//!   route's `history.linger`, so a quick reconnect can resume); joins and leaves are
//!   serialized by the topic map's lock, so a leave never drops a topic someone joined;
//! - each message is turned into one shared [`Event`] (encoded at most once per transport,
//!   on first use by a client of that transport) and
//!   pushed to every client's [`ClientQueue`] without awaiting any client;
//! - a memory topic's ring is appended in the same critical section as the pushes, so
//!   "join, then read the ring" can neither miss nor repeat an event (the queue drops
//!   replayed duplicates by sequence);
//! - no lock is held across an `.await`.
//!
//! Files: this one is the `Hub` handle (join, resume, cursors); `topic` the registry,
//! the subscription task and the fan-out; `event` the shared encodings; `history`
//! cursors and the ring; [`queue`] the client queue; [`gate`] the hub writing to a
//! WebSocket client's socket itself.

pub mod direct;
mod event;
pub mod gate;
mod history;
mod pace;
pub mod queue;
mod topic;

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

pub use event::{Event, SioEncoded};
pub use history::{Cursor, Replayed};
pub use queue::{Batch, Bound, ClientQueue, Closed, Policy, Pushed};
pub use topic::TopicSpec;

use crate::broker::{Broker, BrokerError, Replay, ReplayFrom};
use crate::metrics::Metrics;
use history::to_base36;
use topic::Inner;

/// Why a client could not join a topic.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The broker refused or is unreachable.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The process holds `limits.max_topics` topics already (lingering ones included).
    #[error("fanfare holds its maximum of {0} subjects")]
    TooManyTopics(usize),
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

impl Hub {
    /// A hub on `broker`.
    /// `max_topics` bounds the topics (subscribed subjects, lingering ones included) it
    /// holds at once.
    pub fn new(broker: Broker, metrics: Metrics, max_topics: usize) -> Hub {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Hub {
            inner: Arc::new(Inner::new(broker, metrics, to_base36(started), max_topics)),
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
        history::parse_cursor(&self.inner.epoch, spec.stream.is_some(), text)
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
    ) -> Result<Membership, JoinError> {
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
    ) -> Result<Membership, JoinError> {
        let key = spec.key();
        let mut ready = {
            let mut topics = self.inner.topics();
            if !topics.contains_key(&key) && topics.len() >= self.inner.max_topics {
                return Err(JoinError::TooManyTopics(self.inner.max_topics));
            }
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
            Some(Err(e)) => Err(BrokerError::Nats(e).into()),
            None => unreachable!("wait_for returned before a value was set"),
        }
    }

    /// Whether the broker is connected now, as a watch.
    pub fn connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.broker.connected()
    }

    /// Replays what was stored on the JetStream topic `spec` since `since` into `queue`
    /// (a client admitted while the broker was unreachable, without a cursor). Live
    /// events already queued are spliced after it, as for a cursor. Without a stream
    /// there is nothing to replay (what came during the outage never reached fanfare):
    /// the queue, held for the replay, is released as it is.
    pub async fn resume_since(
        &self,
        spec: &TopicSpec,
        since: std::time::SystemTime,
        queue: &ClientQueue,
    ) -> Result<(), BrokerError> {
        let Some(stream) = &spec.stream else {
            queue.splice(Vec::new(), None);
            return Ok(());
        };
        let fits = queue.bound();
        let budget = Bound {
            messages: spec.max_replay.min(fits.messages),
            bytes: spec.max_replay_bytes.min(fits.bytes),
        };
        let replay = self
            .inner
            .broker
            .replay_stream(
                stream,
                &spec.subjects,
                ReplayFrom::Since(since),
                budget.messages,
                budget.bytes,
            )
            .await?;
        let (events, reset) = match replay {
            Replay::Reset(r) => (Vec::new(), Some(r)),
            Replay::Messages(msgs) => (stream_events(msgs), None),
        };
        queue.splice(events, reset);
        Ok(())
    }

    /// Replays what a client missed on the topics of `specs` since `cursor` into
    /// `queue`, ahead of the live events it already receives. What is replayed must
    /// fit the queue's bound and each route's `max_replay` / `max_replay_bytes`; when
    /// it does not, the client gets a reset (`too_much_to_replay`) instead of a flood
    /// that its slow-consumer policy would cut anyway.
    pub async fn resume(
        &self,
        specs: &[TopicSpec],
        cursor: &str,
        queue: &ClientQueue,
    ) -> Result<(), BrokerError> {
        let fits = queue.bound();
        let mut events = Vec::new();
        let mut reset = None;
        for spec in specs {
            let parsed = self.parse_cursor(spec, cursor);
            let budget = Bound {
                messages: spec.max_replay.min(fits.messages),
                bytes: spec.max_replay_bytes.min(fits.bytes),
            };
            match self.replay(spec, parsed, budget).await? {
                Replayed::Events(e) => events.extend(e),
                Replayed::Reset(r) => reset = Some(r),
            }
        }
        let bytes: usize = events.iter().map(|e| e.cost()).sum();
        if reset.is_none() && (events.len() > fits.messages || bytes > fits.bytes) {
            reset = Some("too_much_to_replay");
        }
        events.sort_by_key(|e| e.seq);
        if reset.is_some() {
            // The client refetches its state; replaying part of the gap would mislead it.
            events.clear();
        }
        queue.splice(events, reset);
        Ok(())
    }

    /// What a client that joined `spec` must be replayed from `cursor`. Call it after
    /// the join, then hand the result to [`ClientQueue::splice`].
    /// At most `budget` is replayed; more is a reset.
    pub async fn replay(
        &self,
        spec: &TopicSpec,
        cursor: Cursor,
        budget: Bound,
    ) -> Result<Replayed, BrokerError> {
        let outcome = match (cursor, &spec.stream) {
            (Cursor::Foreign, _) => Replayed::Reset("cursor_unknown"),
            (Cursor::Stream(after), Some(stream)) => {
                match self
                    .inner
                    .broker
                    .replay_stream(
                        stream,
                        &spec.subjects,
                        ReplayFrom::After(after),
                        budget.messages,
                        budget.bytes,
                    )
                    .await?
                {
                    Replay::Reset(r) => Replayed::Reset(r),
                    Replay::Messages(msgs) => Replayed::Events(stream_events(msgs)),
                }
            }
            (Cursor::Memory(after), None) => self.replay_ring(spec, after, budget),
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

    fn replay_ring(&self, spec: &TopicSpec, after: u64, budget: Bound) -> Replayed {
        let topics = self.inner.topics();
        let Some(topic) = topics.get(&spec.key()) else {
            return Replayed::Reset("cursor_too_old");
        };
        let mut m = topic.members();
        let Some(ring) = m.ring.as_mut() else {
            return Replayed::Reset("no_history");
        };
        history::replay_ring(ring, after, spec.max_age, budget)
    }
}

/// Replayed JetStream messages as events (their cursor is the stream sequence),
/// leaving out what fan-out would refuse.
fn stream_events(msgs: Vec<crate::broker::Message>) -> Vec<Arc<Event>> {
    msgs.into_iter()
        .filter(|m| topic::refuse_reason(m).is_none())
        .filter_map(|m| {
            let seq = m.seq?;
            Some(Arc::new(Event::new(m, seq, seq.to_string())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{MemoryBroker, Message};

    fn hub() -> (Hub, MemoryBroker) {
        let broker = MemoryBroker::new();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        (
            Hub::new(Broker::Memory(broker.clone()), metrics, 100),
            broker,
        )
    }

    fn queue() -> Arc<ClientQueue> {
        Arc::new(ClientQueue::new(
            Bound {
                messages: 256,
                bytes: 1 << 20,
            },
            Policy::DropOldest,
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

    /// The fan-out walks a topic's clients in the order of their ids (the order they
    /// connected in), which is the order the kernel made their sockets in: writing one
    /// message to 10,000 sockets in that order costs about 15% less than in a hash
    /// map's order (docs/performance.md).
    #[tokio::test]
    async fn the_fan_out_visits_clients_in_the_order_they_joined() {
        let (hub, _broker) = hub();
        let mut held = Vec::new();
        for client in 1..=200u64 {
            held.push(hub.join("s.1", client, queue()).await.unwrap());
        }
        let topics = hub.inner.topics();
        let order: Vec<u64> = topics[&TopicSpec::live("s.1").key()]
            .members()
            .clients
            .keys()
            .copied()
            .collect();
        assert_eq!(order, (1..=200).collect::<Vec<_>>());
    }
}
