//! The message broker behind the hub: NATS (async-nats) when `nats.url` is configured,
//! otherwise the embedded in-process broker (one instance only).
//!
//! Both expose the same three calls: [`Broker::subscribe`], [`Broker::publish`] and
//! [`Broker::connected`] (a watch that readiness and `fanfare_nats_connected` follow).

mod memory;
mod message;
mod nats;

use tokio::sync::watch;

pub use memory::MemoryBroker;
pub use message::{
    ARGS_HEADER, BrokerError, CONTROL_HEADER, EVENT_HEADER, MSG_ID_HEADER, Message, Relayed,
    Replay, ReplayFrom,
};
pub use nats::NatsBroker;

use crate::config::NatsConfig;
use crate::metrics::Metrics;

/// The broker in use.
#[derive(Clone)]
pub enum Broker {
    /// A NATS server.
    Nats(NatsBroker),
    /// The embedded single-instance broker.
    Memory(MemoryBroker),
}

/// A subscription to one subject (or pattern).
pub enum Subscription {
    /// A NATS subscription; dropping it unsubscribes.
    Nats(async_nats::Subscriber),
    /// An embedded-broker subscription; dropping it unsubscribes.
    Memory(memory::MemorySubscription),
    /// A JetStream ordered consumer (new messages only); carries stream sequences.
    JetStream(Box<async_nats::jetstream::consumer::pull::Ordered>),
    /// Several subjects of one topic, merged as they arrive.
    Merged(futures::stream::SelectAll<futures::stream::BoxStream<'static, Message>>),
}

impl Subscription {
    /// The next message; `None` when the subscription has ended.
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            Subscription::Nats(s) => {
                use futures::StreamExt;
                s.next().await.map(nats::convert)
            }
            Subscription::Memory(s) => s.next().await,
            Subscription::Merged(s) => {
                use futures::StreamExt;
                s.next().await
            }
            Subscription::JetStream(s) => {
                use futures::StreamExt;
                loop {
                    match s.next().await? {
                        Ok(m) => return Some(nats::convert_js(m)),
                        Err(e) => tracing::warn!(error = %e, "jetstream consumer error"),
                    }
                }
            }
        }
    }
}

/// Requests served on a subject.
pub struct Requests(Option<async_nats::Subscriber>);

impl Requests {
    /// The next request; never, on the embedded broker (one instance relays nothing).
    pub async fn next(&mut self) -> Option<Relayed> {
        use futures::StreamExt;
        match &mut self.0 {
            Some(s) => s.next().await.map(nats::relayed),
            None => std::future::pending().await,
        }
    }
}

impl Broker {
    /// Sends a request to another instance and waits (up to `timeout`) for its answer.
    /// The embedded broker has no other instance.
    pub async fn request(
        &self,
        subject: String,
        headers: &[(&str, &str)],
        payload: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> Result<Relayed, BrokerError> {
        match self {
            Broker::Nats(n) => n.request(subject, headers, payload, timeout).await,
            Broker::Memory(_) => Err(BrokerError::Nats(
                "the embedded broker serves one instance".into(),
            )),
        }
    }

    /// Serves requests sent to `subject`.
    pub async fn serve(&self, subject: &str) -> Result<Requests, BrokerError> {
        match self {
            Broker::Nats(n) => n.subscribe(subject).await.map(|s| Requests(Some(s))),
            Broker::Memory(_) => Ok(Requests(None)),
        }
    }

    /// Answers a request at `reply`.
    pub async fn respond(
        &self,
        reply: String,
        headers: &[(&str, &str)],
        payload: bytes::Bytes,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Nats(n) => n.respond(reply, headers, payload).await,
            Broker::Memory(_) => Ok(()),
        }
    }

    /// Starts the configured broker. NATS connects in the background with retry and
    /// backoff; this returns at once.
    pub async fn start(
        config: Option<&NatsConfig>,
        metrics: &Metrics,
    ) -> Result<Broker, BrokerError> {
        match config {
            Some(c) => NatsBroker::connect(c, metrics).await.map(Broker::Nats),
            None => {
                tracing::warn!(
                    "no nats configured: using the embedded broker, which serves this single instance only (development and demos)"
                );
                metrics.nats_connected.set(1);
                Ok(Broker::Memory(MemoryBroker::new()))
            }
        }
    }

    /// Follows the connection state.
    pub fn connected(&self) -> watch::Receiver<bool> {
        match self {
            Broker::Nats(n) => n.connected(),
            Broker::Memory(m) => m.connected(),
        }
    }

    /// Subscribes to `subjects` (NATS wildcards allowed), merged into one subscription.
    pub async fn subscribe(&self, subjects: &[String]) -> Result<Subscription, BrokerError> {
        use futures::StreamExt;
        if let [subject] = subjects {
            return self.subscribe_one(subject).await;
        }
        let mut all = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let sub = self.subscribe_one(subject).await?;
            all.push(
                futures::stream::unfold(sub, |mut s| async move { s.next().await.map(|m| (m, s)) })
                    .boxed(),
            );
        }
        Ok(Subscription::Merged(futures::stream::select_all(all)))
    }

    async fn subscribe_one(&self, subject: &str) -> Result<Subscription, BrokerError> {
        match self {
            Broker::Nats(n) => n.subscribe(subject).await.map(Subscription::Nats),
            Broker::Memory(m) => Ok(Subscription::Memory(m.subscribe(subject))),
        }
    }

    /// Follows `subjects` in JetStream stream `stream` with one ordered consumer, so
    /// their messages arrive in stream order: from sequence `from`, or from now on.
    pub async fn subscribe_stream(
        &self,
        stream: &str,
        subjects: &[String],
        from: Option<u64>,
    ) -> Result<Subscription, BrokerError> {
        match self {
            Broker::Nats(n) => n
                .follow(stream, subjects, from)
                .await
                .map(|o| Subscription::JetStream(Box::new(o))),
            Broker::Memory(_) => Err(BrokerError::Nats("JetStream needs nats.url".into())),
        }
    }

    /// The messages on `subjects` in `stream` after sequence `after` (in stream order),
    /// at most `max` and `max_bytes`.
    pub async fn replay_stream(
        &self,
        stream: &str,
        subjects: &[String],
        from: ReplayFrom,
        max: usize,
        max_bytes: usize,
    ) -> Result<Replay, BrokerError> {
        match self {
            Broker::Nats(n) => n.replay(stream, subjects, from, max, max_bytes).await,
            Broker::Memory(_) => Err(BrokerError::Nats("JetStream needs nats.url".into())),
        }
    }

    /// The last sequence of `stream` (the cursor of "now").
    pub async fn stream_last_seq(&self, stream: &str) -> Result<u64, BrokerError> {
        match self {
            Broker::Nats(n) => n.last_seq(stream).await,
            Broker::Memory(_) => Err(BrokerError::Nats("JetStream needs nats.url".into())),
        }
    }

    /// Publishes `msg`. Fails with [`BrokerError::Disconnected`] while NATS is down.
    pub async fn publish(&self, msg: Message) -> Result<(), BrokerError> {
        match self {
            Broker::Nats(n) => n.publish(msg).await,
            Broker::Memory(m) => {
                m.publish(&msg);
                Ok(())
            }
        }
    }
}
