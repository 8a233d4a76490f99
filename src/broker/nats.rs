//! The NATS broker (async-nats). Connection runs in the background with retry and
//! backoff; async-nats restores subscriptions itself after a reconnect.

use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, HeaderMap};
use tokio::sync::watch;

use super::message::{
    ARGS_HEADER, BrokerError, CONTROL_HEADER, EVENT_HEADER, MSG_ID_HEADER, Message, Relayed,
    Replay, ReplayFrom,
};
use crate::config::NatsConfig;
use crate::metrics::Metrics;

/// A NATS connection. Cloning shares it.
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    connected: watch::Receiver<bool>,
    /// Bounds the JetStream replays running at once (`nats.max_concurrent_replays`).
    replays: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Messages fetched per JetStream pull while replaying.
const REPLAY_BATCH: usize = 256;
/// Bytes fetched per JetStream pull while replaying.
const REPLAY_BATCH_BYTES: usize = 256 * 1024;
/// What a replayed message counts against the byte budget besides its payload (the
/// same overhead the hub charges a queued event).
pub const REPLAY_OVERHEAD: usize = 64;

/// A consumer's `filter_subject`: the subject when there is one.
fn filter_one(subjects: &[String]) -> String {
    match subjects {
        [one] => one.clone(),
        _ => String::new(),
    }
}

/// A consumer's `filter_subjects` (NATS 2.10): the subjects when there are several.
fn filter_many(subjects: &[String]) -> Vec<String> {
    match subjects {
        [_] => Vec::new(),
        many => many.to_vec(),
    }
}

/// `nats://user:pass@host:4222` → `nats://host:4222`, for logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***@{}", &u[..s + 3], &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsBroker {
    pub(super) async fn connect(
        config: &NatsConfig,
        metrics: &Metrics,
    ) -> Result<NatsBroker, BrokerError> {
        let (tx, rx) = watch::channel(false);
        let gauge = metrics.nats_connected.clone();
        gauge.set(0);
        let url = redact_url(&config.url);
        let mut options = ConnectOptions::new()
            .name(&config.name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let tx = tx.clone();
                let gauge = gauge.clone();
                let url = url.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!(url = %url, "nats connected");
                            gauge.set(1);
                            tx.send_replace(true);
                        }
                        Event::Disconnected => {
                            tracing::warn!(url = %url, "nats disconnected; reconnecting");
                            gauge.set(0);
                            tx.send_replace(false);
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            });
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
        let client = options
            .connect(servers)
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?;
        Ok(NatsBroker {
            client,
            connected: rx,
            replays: std::sync::Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_replays,
            )),
        })
    }

    pub(super) fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    pub(super) async fn subscribe(
        &self,
        subject: &str,
    ) -> Result<async_nats::Subscriber, BrokerError> {
        self.client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))
    }

    fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    async fn stream(
        &self,
        name: &str,
    ) -> Result<async_nats::jetstream::stream::Stream, BrokerError> {
        self.js()
            .get_stream(name)
            .await
            .map_err(|e| BrokerError::Nats(format!("stream {name}: {e}")))
    }

    /// Checks that `name` exists.
    pub async fn check_stream(&self, name: &str) -> Result<(), BrokerError> {
        self.stream(name).await.map(|_| ())
    }

    pub(super) async fn follow(
        &self,
        stream: &str,
        subjects: &[String],
        from: Option<u64>,
    ) -> Result<async_nats::jetstream::consumer::pull::Ordered, BrokerError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let s = self.stream(stream).await?;
        let deliver_policy = match from {
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            None => DeliverPolicy::New,
        };
        let consumer = s
            .create_consumer(OrderedConfig {
                filter_subject: filter_one(subjects),
                filter_subjects: filter_many(subjects),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| BrokerError::Nats(format!("ordered consumer: {e}")))?;
        consumer
            .messages()
            .await
            .map_err(|e| BrokerError::Nats(format!("ordered consumer: {e}")))
    }

    pub(super) async fn last_seq(&self, stream: &str) -> Result<u64, BrokerError> {
        let s = self.stream(stream).await?;
        let info = s
            .get_info()
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    pub(super) async fn replay(
        &self,
        stream: &str,
        subjects: &[String],
        from: ReplayFrom,
        max: usize,
        max_bytes: usize,
    ) -> Result<Replay, BrokerError> {
        use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
        use futures::StreamExt;
        // Waits its turn: at most `nats.max_concurrent_replays` run at once.
        let _turn = self
            .replays
            .acquire()
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?;
        let s = self.stream(stream).await?;
        let state = s
            .get_info()
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?
            .state;
        let deliver_policy = match from {
            ReplayFrom::After(after) => {
                if after > state.last_sequence {
                    return Ok(Replay::Reset("cursor_unknown"));
                }
                if state.messages > 0 && after + 1 < state.first_sequence {
                    return Ok(Replay::Reset("cursor_too_old"));
                }
                if after == state.last_sequence {
                    return Ok(Replay::Messages(Vec::new()));
                }
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            }
            ReplayFrom::Since(at) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(at),
            },
        };
        let consumer = s
            .create_consumer(pull::Config {
                deliver_policy,
                filter_subject: filter_one(subjects),
                filter_subjects: filter_many(subjects),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| BrokerError::Nats(format!("replay consumer: {e}")))?;
        let pending = consumer
            .get_info()
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?
            .num_pending as usize;
        let name = consumer.cached_info().name.clone();
        if pending > max {
            let _ = s.delete_consumer(&name).await;
            return Ok(Replay::Reset("too_many_to_replay"));
        }
        // Fetched in batches, counting bytes as they arrive: a replay that would not
        // fit stops at the budget (plus one batch at most), never after the whole gap.
        let mut out = Vec::with_capacity(pending.min(REPLAY_BATCH));
        let mut bytes = 0usize;
        let mut stalled = false;
        let outcome = loop {
            if out.len() >= pending {
                break Ok(Replay::Messages(out));
            }
            let want = (pending - out.len()).min(REPLAY_BATCH);
            // A batch is capped in bytes too; the server ends it with a 409 when the
            // next message would pass the cap. A message larger than the cap alone is
            // fetched by itself, uncapped (NATS bounds it by max_payload).
            let alone = stalled;
            let fetch = consumer.fetch().expires(Duration::from_secs(5));
            let fetch = if alone {
                fetch.max_messages(1)
            } else {
                fetch.max_messages(want).max_bytes(REPLAY_BATCH_BYTES)
            };
            let mut batch = match fetch.messages().await {
                Ok(b) => b,
                Err(e) => break Err(BrokerError::Nats(format!("replay fetch: {e}"))),
            };
            let before = out.len();
            let mut failed = None;
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => {
                        bytes += m.payload.len() + REPLAY_OVERHEAD;
                        out.push(convert_js(m));
                    }
                    Err(e) => {
                        failed = Some(BrokerError::Nats(format!("replay: {e}")));
                        break;
                    }
                }
                if bytes > max_bytes {
                    break;
                }
            }
            if bytes > max_bytes {
                break Ok(Replay::Reset("too_much_to_replay"));
            }
            let got = out.len() - before;
            match (got, failed) {
                // Progress: the next batch goes on from here (an error after messages
                // is the byte cap ending the batch).
                (1.., _) => stalled = false,
                (0, Some(e)) if alone => break Err(e),
                (0, Some(_)) => stalled = true,
                (0, None) => break Err(BrokerError::Nats("replay ended early".into())),
            }
        };
        let _ = s.delete_consumer(&name).await;
        outcome
    }

    /// A request to another instance, answered within `timeout`.
    pub(super) async fn request(
        &self,
        subject: String,
        headers: &[(&str, &str)],
        payload: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> Result<Relayed, BrokerError> {
        let request = async_nats::Request::new()
            .headers(header_map(headers))
            .payload(payload)
            .timeout(Some(timeout));
        let m = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?;
        Ok(relayed(m))
    }

    /// Answers a request.
    pub(super) async fn respond(
        &self,
        reply: String,
        headers: &[(&str, &str)],
        payload: bytes::Bytes,
    ) -> Result<(), BrokerError> {
        self.client
            .publish_with_headers(reply, header_map(headers), payload)
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))
    }

    pub(super) async fn publish(&self, msg: Message) -> Result<(), BrokerError> {
        if !*self.connected.borrow() {
            return Err(BrokerError::Disconnected);
        }
        let mut headers = HeaderMap::new();
        if let Some(e) = &msg.event {
            headers.insert(EVENT_HEADER, e.as_str());
        }
        if let Some(id) = &msg.msg_id {
            headers.insert(MSG_ID_HEADER, id.as_str());
        }
        for (name, value) in &msg.headers {
            headers.insert(*name, value.as_str());
        }
        self.client
            .publish_with_headers(msg.subject, headers, msg.payload)
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))?;
        self.client
            .flush()
            .await
            .map_err(|e| BrokerError::Nats(e.to_string()))
    }
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

/// A request or answer between instances → [`Relayed`].
pub(super) fn relayed(m: async_nats::Message) -> Relayed {
    Relayed {
        headers: m
            .headers
            .iter()
            .flat_map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.first()?.as_str().to_string())))
                    .collect::<Vec<_>>()
            })
            .collect(),
        payload: m.payload,
        reply: m.reply.map(|r| r.to_string()),
    }
}

/// A JetStream message → [`Message`] with its stream sequence.
pub(super) fn convert_js(m: async_nats::jetstream::Message) -> Message {
    let seq = m.info().ok().map(|i| i.stream_sequence);
    let mut msg = convert(m.message);
    msg.seq = seq;
    msg
}

/// async-nats message → [`Message`].
pub(super) fn convert(m: async_nats::Message) -> Message {
    let header = |name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    Message {
        event: header(EVENT_HEADER),
        msg_id: header(MSG_ID_HEADER),
        subject: m.subject.to_string(),
        headers: [CONTROL_HEADER, ARGS_HEADER]
            .into_iter()
            .filter_map(|name| header(name).map(|v| (name, v)))
            .collect(),
        payload: m.payload,
        seq: None,
        received: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact_url("nats://h:4222,nats://t@g:1"),
            "nats://h:4222,nats://***@g:1"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }
}
