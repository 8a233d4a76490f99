//! Addressing one connection: `fanfare.connection.<id>`.
//!
//! A connection's id is `<instance>.<n>`: the instance part is random per process, so
//! one wildcard subscription per instance (`fanfare.connection.<instance>.*`) carries
//! every message addressed to its connections, and no connection costs a broker
//! subscription of its own.
//!
//! A message there is delivered to that connection alone (no cursor: it is not part of
//! any topic's history). With the header `Fanfare-Control` it acts on the connection
//! instead: `subscribe` / `unsubscribe` (body: the subject) join or leave a topic for
//! it, as Socket.IO's `socket.join(room)` does; `close` (body: the reason) closes it
//! after what is already queued.
//!
//! Invariants: no lock is held across an `.await` (a control subscribe joins the topic
//! with the directory unlocked, then keeps the membership only if the connection is
//! still there); messages for one instance are handled in arrival order.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{ClientQueue, Event, Hub, Membership, TopicSpec};
use crate::broker::{Broker, CONTROL_HEADER, Message};
use crate::metrics::Metrics;
use crate::routing::subject::{self, CONNECTION_PREFIX};

/// Subjects a connection may be given by control messages at most.
pub const MAX_CONTROL_SUBJECTS: usize = 100;

/// The connections of this instance, by client id. Cloning shares it.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    instance: String,
    hub: Hub,
    metrics: Metrics,
    conns: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    queue: Arc<ClientQueue>,
    /// The route's topic settings (a control subscribe uses them).
    spec: Arc<TopicSpec>,
    /// Topics joined by control messages.
    joined: Vec<(String, Membership)>,
}

/// A connection's place in the directory; dropping it removes the connection (and
/// leaves what control messages joined).
pub struct Registration {
    dir: Weak<Inner>,
    client: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.upgrade() {
            let entry = dir.lock().remove(&self.client);
            // Memberships leave their topics outside the directory's lock.
            drop(entry);
        }
    }
}

/// A random instance id: 8 base-36 characters.
fn instance_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let mut n = h.finish();
    let mut id = String::with_capacity(8);
    for _ in 0..8 {
        id.push(char::from(
            b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize],
        ));
        n /= 36;
    }
    id
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // Every update is one map operation: a panic cannot leave it half-done.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Directory {
    /// The directory, subscribed to this instance's connection subjects (again and
    /// again while the broker is away).
    pub fn start(hub: Hub, broker: Broker, metrics: &Metrics) -> Directory {
        let dir = Directory {
            inner: Arc::new(Inner {
                instance: instance_id(),
                hub,
                metrics: metrics.clone(),
                conns: Mutex::default(),
            }),
        };
        let weak = Arc::downgrade(&dir.inner);
        let pattern = format!("{CONNECTION_PREFIX}{}.*", dir.inner.instance);
        tokio::spawn(async move {
            let mut connected = broker.connected();
            loop {
                if connected.wait_for(|c| *c).await.is_err() {
                    return;
                }
                let mut sub = match broker.subscribe(std::slice::from_ref(&pattern)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection subject subscribe failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(msg) = sub.next().await {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    Directory { inner }.on_message(msg).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        dir
    }

    /// This instance's id (the first part of every connection id).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The id of client `client`: `<instance>.<n>`, addressed at
    /// `fanfare.connection.<id>`.
    pub fn id(&self, client: u64) -> String {
        format!("{}.{client:x}", self.inner.instance)
    }

    /// Adds a connection; it stays addressable while the registration is held.
    pub fn register(
        &self,
        client: u64,
        queue: Arc<ClientQueue>,
        spec: Arc<TopicSpec>,
    ) -> Registration {
        self.inner.lock().insert(
            client,
            Entry {
                queue,
                spec,
                joined: Vec::new(),
            },
        );
        Registration {
            dir: Arc::downgrade(&self.inner),
            client,
        }
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, result: &str) {
        self.inner
            .metrics
            .direct_messages
            .with_label_values(&[result])
            .inc();
    }

    async fn on_message(&self, msg: Message) {
        let client = msg
            .subject
            .strip_prefix(CONNECTION_PREFIX)
            .and_then(|rest| rest.strip_prefix(self.inner.instance.as_str()))
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        let Some(client) = client else {
            self.count("invalid");
            return;
        };
        let control = msg
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(CONTROL_HEADER))
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        let Some(control) = control else {
            let queue = self.inner.lock().get(&client).map(|e| e.queue.clone());
            match queue {
                Some(q) => {
                    q.push(Arc::new(Event::direct(msg)));
                    self.count("delivered");
                }
                None => self.count("unknown_connection"),
            }
            return;
        };
        let body = String::from_utf8_lossy(&msg.payload).trim().to_string();
        let done = match control.as_str() {
            "subscribe" => self.control_subscribe(client, body).await,
            "unsubscribe" => {
                let left = self.inner.lock().get_mut(&client).map(|e| {
                    let before = e.joined.len();
                    let kept: Vec<_> = std::mem::take(&mut e.joined)
                        .into_iter()
                        .filter(|(s, _)| *s != body)
                        .collect();
                    let gone = kept.len() < before;
                    e.joined = kept;
                    gone
                });
                left.ok_or("unknown_connection")
                    .and_then(|gone| if gone { Ok(()) } else { Err("invalid") })
            }
            "close" => {
                let queue = self.inner.lock().get(&client).map(|e| e.queue.clone());
                queue.ok_or("unknown_connection").map(|q| {
                    let reason = if body.is_empty() {
                        "closed_by_app"
                    } else {
                        &body
                    };
                    q.close_by_app(reason);
                })
            }
            _ => Err("invalid"),
        };
        match done {
            Ok(()) => self.count("control"),
            Err(result) => {
                tracing::debug!(control, result, "control message not carried out");
                self.count(result);
            }
        }
    }

    async fn control_subscribe(&self, client: u64, subject: String) -> Result<(), &'static str> {
        if !subject::is_valid_subscribe_subject(&subject) || subject.starts_with(CONNECTION_PREFIX)
        {
            return Err("invalid");
        }
        let (queue, spec) = {
            let conns = self.inner.lock();
            let e = conns.get(&client).ok_or("unknown_connection")?;
            if e.joined.iter().any(|(s, _)| *s == subject) {
                return Ok(());
            }
            if e.joined.len() >= MAX_CONTROL_SUBJECTS {
                return Err("invalid");
            }
            (e.queue.clone(), e.spec.clone())
        };
        let spec = TopicSpec {
            subjects: vec![subject.clone()],
            ..(*spec).clone()
        };
        let m = self
            .inner
            .hub
            .join_spec(&spec, client, queue)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "control subscribe failed");
                "invalid"
            })?;
        let mut conns = self.inner.lock();
        match conns.get_mut(&client) {
            Some(e) => {
                e.joined.push((subject, m));
                Ok(())
            }
            None => {
                drop(conns);
                drop(m);
                Err("unknown_connection")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_one_subject_token_and_differ() {
        let a = instance_id();
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, instance_id());
    }
}
