//! Topics: the registry of subscribed subjects, one broker subscription per topic,
//! its members, its ring, and the task that fans each message out to every member's
//! queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::watch;

use super::event::Event;
use super::gate::FrameKind;
use super::history::{Ring, expire};
use super::pace::Pace;
use super::queue::{ClientQueue, Pushed};
use crate::broker::{Broker, Message};
use crate::metrics::Metrics;
use crate::routing::subject::is_connection_subject;
use crate::wire::sse::is_safe_field;

/// How many clients the fan-out writes to before it looks again for a message
/// waiting behind the one it delivers (about 0.3 ms of sends).
const RECHECK_EVERY: usize = 64;

/// How far a fan-out got writing directly.
struct Reach {
    /// The share of the clients it reached before another message came (1 when
    /// none did).
    reached: f64,
    /// The share of those it could not write to (queued instead).
    held_back: f64,
}

impl Default for Reach {
    fn default() -> Reach {
        Reach {
            reached: 1.0,
            held_back: 0.0,
        }
    }
}

/// Why a message was refused before fan-out.
pub(super) fn refuse_reason(msg: &Message) -> Option<&'static str> {
    match &msg.event {
        Some(e) if !is_safe_field(e) => Some("bad_event_name"),
        _ => None,
    }
}

/// What to subscribe to, and how much history to keep.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// The subjects (or patterns) of the topic: one for a run-time subscription, a
    /// route's subjects for its clients. One topic delivers them in one order (the
    /// stream's with JetStream), so a client's cursor increases across all of them.
    pub subjects: Vec<String>,
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
    /// The most bytes one resume replays (by [`Event::cost`]).
    pub max_replay_bytes: usize,
}

impl TopicSpec {
    /// A live-only topic on `subject` (no history, no linger).
    pub fn live(subject: &str) -> TopicSpec {
        TopicSpec {
            subjects: vec![subject.to_string()],
            stream: None,
            ring: 0,
            max_age: Duration::ZERO,
            linger: Duration::ZERO,
            max_replay: 0,
            max_replay_bytes: 0,
        }
    }

    pub(super) fn key(&self) -> String {
        match &self.stream {
            Some(s) => format!("{s}\u{0}{}", self.subjects.join("\u{0}")),
            None => self.subjects.join("\u{0}"),
        }
    }
}

pub(super) struct Members {
    /// By client id, so the fan-out walks clients in the order they connected: the
    /// order the kernel made their sockets (descriptors and socket memory) in. A
    /// lone message's fan-out is one `send` per client, and in a hash map's order
    /// each of them missed the cache on the descriptor table and the socket; in this
    /// order one message at a time costs about 15% less per delivery
    /// (docs/performance.md).
    pub(super) clients: BTreeMap<u64, Arc<ClientQueue>>,
    pub(super) ring: Option<Ring>,
    /// Bumped on every join, so a lingering removal knows it was overtaken.
    pub(super) generation: u64,
}

pub(super) struct Topic {
    pub(super) spec: TopicSpec,
    members: Mutex<Members>,
    pub(super) ready: watch::Receiver<Option<Result<(), String>>>,
    task: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Topic {
    pub(super) fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

pub(super) struct Inner {
    pub(super) max_topics: usize,
    pub(super) broker: Broker,
    pub(super) metrics: Metrics,
    pub(super) epoch: String,
    pub(super) seq: AtomicU64,
    pub(super) next_client: AtomicU64,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

impl Inner {
    pub(super) fn new(broker: Broker, metrics: Metrics, epoch: String, max_topics: usize) -> Inner {
        Inner {
            max_topics,
            broker,
            metrics,
            epoch,
            seq: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
            topics: Mutex::default(),
        }
    }

    pub(super) fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Creates the topic and starts its subscription task. Called with the topic map
    /// locked.
    pub(super) fn open(this: &Arc<Inner>, spec: TopicSpec) -> Arc<Topic> {
        let (ready_tx, ready_rx) = watch::channel(None);
        let ring = (spec.stream.is_none() && spec.ring > 0).then(|| Ring {
            events: VecDeque::new(),
            since: this.seq.load(Ordering::Acquire),
            evicted: 0,
        });
        let topic = Arc::new(Topic {
            spec: spec.clone(),
            members: Mutex::new(Members {
                clients: BTreeMap::new(),
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
                            .subscribe_stream(stream, &spec.subjects, last.map(|l| l + 1))
                            .await
                    }
                    None => broker.subscribe(&spec.subjects).await,
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
                // A message read ahead: it shows the one before was not alone.
                let mut ahead: Option<Option<Message>> = None;
                let mut pace = Pace::default();
                let resubscribe = loop {
                    let mut idle = Duration::ZERO;
                    let msg = match ahead.take() {
                        Some(m) => m,
                        None => {
                            let since = Instant::now();
                            let msg = tokio::select! {
                                msg = sub.next() => msg,
                                _ = reconnected(&mut connected), if spec.stream.is_some() => break true,
                            };
                            idle = since.elapsed();
                            msg
                        }
                    };
                    let Some(msg) = msg else {
                        break spec.stream.is_some();
                    };
                    let (Some(hub), Some(topic)) = (hub.upgrade(), weak_topic.upgrade()) else {
                        break false;
                    };
                    if let Some(seq) = msg.seq {
                        if last.is_some_and(|l| seq <= l) {
                            continue;
                        }
                        last = Some(seq);
                    }
                    // Another message already waiting makes this one part of a burst,
                    // from the client the fan-out has reached when it comes; a hub
                    // that fell behind queues too (hub::pace). `next` is cancel-safe:
                    // an unready poll takes nothing.
                    ahead = sub.next().now_or_never();
                    let direct = ahead.is_none() && pace.direct(idle);
                    let started = Instant::now();
                    // Asked only while nothing was waiting, so `ahead` is empty here.
                    let reached = hub.fan_out(&topic, msg, direct, || {
                        ahead = sub.next().now_or_never();
                        ahead.is_none()
                    });
                    if direct {
                        // What writing to every client would have taken, when the
                        // next message cut it short.
                        let whole = started.elapsed().div_f64(reached.reached.max(0.01));
                        pace.wrote(whole, ahead.is_some(), reached.held_back);
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

    /// Delivers one message to every client of `topic`. With `direct` (no other
    /// message waiting behind it, the hub keeping up), clients with nothing queued are
    /// written to right away ([`ClientQueue::push_or_write`]); otherwise every
    /// client's writer batches. While it writes directly, `still_alone` is asked every
    /// [`RECHECK_EVERY`] clients: a long fan-out of writes (about 5 µs each) gives way
    /// to queueing as soon as the next message comes, so a backlog batches instead of
    /// growing.
    fn fan_out(
        &self,
        topic: &Topic,
        msg: Message,
        direct: bool,
        mut still_alone: impl FnMut() -> bool,
    ) -> Reach {
        // A message addressed to one connection reaches it through the directory
        // only, never through a topic whose pattern happens to cover it (`>`).
        if is_connection_subject(&msg.subject) {
            return Reach::default();
        }
        self.metrics.messages_received.inc();
        if let Some(reason) = refuse_reason(&msg) {
            tracing::warn!(reason, "message refused");
            self.metrics.dropped.with_label_values(&[reason]).inc();
            return Reach::default();
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
        // Deliveries the hub wrote itself, WebSocket and SSE.
        let mut written = [0u64; 2];
        let mut now_alone = direct;
        let clients = m.clients.len();
        let mut reached = clients;
        // Clients the fan-out could not write to while it wrote directly (something
        // queued, their task writing, their socket full).
        let mut held_back = 0usize;
        let mut queues = m.clients.values().enumerate().peekable();
        while let Some((i, queue)) = queues.next() {
            // The next client's queue is asked for now, to be in the cache when its
            // turn comes after this client's send.
            if let Some((_, next)) = queues.peek() {
                super::queue::prefetch(next);
            }
            if now_alone && i % RECHECK_EVERY == RECHECK_EVERY - 1 {
                now_alone = still_alone();
                if !now_alone {
                    reached = i;
                }
            }
            let pushed = if now_alone {
                queue.push_or_write(&event)
            } else {
                queue.push(event.clone())
            };
            match pushed {
                Pushed::Queued if now_alone => held_back += 1,
                Pushed::Queued | Pushed::AlreadyClosed => {}
                Pushed::Written(kind) => written[usize::from(kind == FrameKind::SseChunk)] += 1,
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
        if written != [0, 0] {
            // Counted once per message, not per socket: the lag is the last write's.
            let m = &self.metrics;
            for (transport, n) in ["ws", "sse"].into_iter().zip(written) {
                if n > 0 {
                    m.deliveries.with_label_values(&[transport]).inc_by(n);
                }
            }
            m.fanout_writes.inc_by(written[0] + written[1]);
            m.delivery_lag_fanout
                .observe(event.received.elapsed().as_secs_f64());
        }
        Reach {
            reached: reached as f64 / clients.max(1) as f64,
            held_back: held_back as f64 / reached.max(1) as f64,
        }
    }

    pub(super) fn leave(this: &Arc<Inner>, key: &str, client: u64) {
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
