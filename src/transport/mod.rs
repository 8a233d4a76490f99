//! Per-client sessions only: SSE, WebSocket, long-poll and the diagnostic echo. The
//! edge decides (match, authorize, admit) and hands each admitted connection here; the
//! bytes on the wire come from `wire`, the events from `hub`.
//!
//! Every session of one route shares one [`RouteContext`] (an `Arc`: 8 bytes of a
//! held connection).

pub mod echo;
pub mod poll;
pub mod rpc;
pub mod socketio;
pub mod sse;
pub mod ws;
mod ws_io;
mod ws_socket;
pub use ws_io::Socket as WsSocket;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use tokio::sync::Notify;

use crate::app::{Admission, App, Ended, Headers};
use crate::broker::Message;
use crate::config::{PollConfig, Transport, WsConfig};
use crate::drain::Drain;
use crate::hub::direct::Directory;
use crate::hub::{Bound, ClientQueue, Event, Hub, JoinError, Membership, Policy, TopicSpec};
use crate::metrics::Metrics;
use crate::routing::path::Params;
use crate::routing::subject::CONNECTION_PREFIX;

/// What every session of one route shares.
pub struct RouteContext {
    /// The hub.
    pub hub: Hub,
    /// The broker, for client publishes.
    pub broker: crate::broker::Broker,
    /// Metrics.
    pub metrics: Metrics,
    /// The shutdown drain; each session closes at its turn.
    pub drain: Drain,
    /// The route's path pattern (sent as `Fanfare-Route` on publishes).
    pub path: String,
    /// The route's topic settings (history); `subject` is filled per subscription.
    pub topic: TopicSpec,
    /// A client queue's bound on this route.
    pub bound: Bound,
    /// The slow-consumer policy on this route.
    pub policy: Policy,
    /// WebSocket settings.
    pub ws: WsConfig,
    /// Long-polling settings.
    pub poll: PollConfig,
    /// Beats at the route's SSE heartbeat interval (`notify_waiters`).
    pub heartbeat: Arc<Notify>,
    /// The SSE `retry:` hint in milliseconds (the mean; see [`RouteContext::retry_hint`]).
    pub retry_ms: u128,
    /// How far one connection's hint may stray from `retry_ms`, as a fraction.
    pub retry_jitter: f64,
    /// The app's callbacks on this route, if any.
    pub app: Option<App>,
    /// This instance's connections (addressing one, control messages).
    pub directory: Directory,
    /// The route's topic settings, shared by every connection's directory entry.
    pub spec: Arc<TopicSpec>,
}

/// What a connection of a route with app callbacks (or a raw `publish_to`) carries:
/// made once at the handshake, shared with its rpcs under way.
pub struct Conn {
    /// Its id, `<instance>.<n>`.
    pub id: String,
    /// The route's path parameters.
    pub params: Params,
    /// The handshake headers forwarded with every callback.
    pub headers: Headers,
    /// When it was admitted.
    pub started: Instant,
    /// rpcs under way.
    pub in_flight: AtomicUsize,
    /// Raw mode: the subject every client frame is published to.
    pub publish_to: Option<String>,
}

/// Joins the subjects of one topic in a membership's label (a NUL never occurs in a
/// subject).
pub const SET_SEPARATOR: &str = "\u{0}";

/// A client's places in its topics, held for as long as the client is: joined at
/// once, or filled in once the broker is back ([`RouteContext::join_later`]).
pub enum Held {
    /// Joined during the handshake.
    Now(Vec<(String, Membership)>),
    /// To be joined once the broker is back.
    Later(Arc<std::sync::Mutex<Vec<(String, Membership)>>>),
}

/// A client admitted while the broker was unreachable ([`RouteContext::join_later`]).
pub struct Deferred {
    /// The client's id.
    pub client: u64,
    /// Its queue.
    pub queue: Arc<ClientQueue>,
    /// Its memberships, filled once the broker is back; hold it as long as the client.
    pub memberships: Arc<std::sync::Mutex<Vec<(String, Membership)>>>,
}

/// A new client's queue, subscribed to its subjects.
pub struct Joined {
    /// The client's id (its drain turn).
    pub client: u64,
    /// Its queue.
    pub queue: Arc<ClientQueue>,
    /// Its places in the topics, labelled by their subjects (joined by
    /// [`SET_SEPARATOR`]); dropping one leaves that topic.
    pub memberships: Vec<(String, Membership)>,
}

impl RouteContext {
    /// One connection's `retry:` hint: uniform in `retry_ms × [1 - j, 1 + j]`, so the
    /// clients of a restarted instance come back spread over a window, not at once.
    pub fn retry_hint(&self) -> u128 {
        let spread = self.retry_jitter * (2.0 * fastrand::f64() - 1.0);
        // Within 0.5-1.5x of a retry validated above 0 and far below u64::MAX ms.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let ms = (self.retry_ms as f64 * (1.0 + spread)).round() as u128;
        ms.max(1)
    }

    /// The topic of `subject` on this route.
    pub fn topic(&self, subjects: &[String]) -> TopicSpec {
        TopicSpec {
            subjects: subjects.to_vec(),
            ..self.topic.clone()
        }
    }

    /// Subscribes client `client`'s new queue to the route's `subjects` (one topic for
    /// all of them, so they arrive in one order and the cursor is exact across them)
    /// and, with a `cursor`, splices in what it missed (or a reset) ahead of the live
    /// events. What the app's connect answer added (`opening`) comes on top: its
    /// subjects as topics of their own, its events before everything else.
    pub async fn join(
        &self,
        client: u64,
        subjects: &[String],
        cursor: Option<&str>,
        opening: Option<&Admission>,
    ) -> Result<Joined, JoinError> {
        let queue = Arc::new(ClientQueue::new(self.bound, self.policy));
        let mut memberships = Vec::with_capacity(1);
        if !subjects.is_empty() {
            let spec = self.topic(subjects);
            let m = self.hub.join_spec(&spec, client, queue.clone()).await?;
            memberships.push((subjects.join(SET_SEPARATOR), m));
            if let Some(cursor) = cursor {
                self.hub.resume(&[spec], cursor, &queue).await?;
            }
        }
        if let Some(opening) = opening {
            for subject in &opening.subscribe {
                if subjects.contains(subject) || memberships.iter().any(|(l, _)| l == subject) {
                    continue;
                }
                let spec = self.topic(std::slice::from_ref(subject));
                let m = self.hub.join_spec(&spec, client, queue.clone()).await?;
                memberships.push((subject.clone(), m));
            }
            queue.prepend(self.first_events(client, opening));
        }
        Ok(Joined {
            client,
            queue,
            memberships,
        })
    }

    /// The connect answer's `events`, as messages to this one connection.
    fn first_events(&self, client: u64, opening: &Admission) -> Vec<Arc<Event>> {
        let subject = format!("{CONNECTION_PREFIX}{}", self.directory.id(client));
        opening
            .events
            .iter()
            .map(|e| {
                let mut msg = Message::new(subject.clone(), e.payload());
                msg.event.clone_from(&e.event);
                Arc::new(Event::direct(msg))
            })
            .collect()
    }

    /// After a held connection ended: tells the app (queued, never waited for).
    pub fn ended(
        &self,
        conn: Option<&Conn>,
        transport: &'static str,
        outcome: Outcome,
        queue: &ClientQueue,
    ) {
        if let (Some(app), Some(conn)) = (&self.app, conn) {
            app.disconnected(
                &Ended {
                    id: &conn.id,
                    params: &conn.params,
                    transport,
                    reason: outcome.label(),
                    duration: conn.started.elapsed(),
                    delivered: queue.delivered(),
                },
                &conn.headers,
            );
        }
    }

    /// Admits a client while the broker is unreachable: returns at once, and joins its
    /// subjects once the broker is back, replaying from its cursor, or (without one,
    /// on a JetStream route) everything stored since it was admitted, so an
    /// EventSource opened during an outage misses nothing and is never refused.
    pub fn join_later(
        self: &Arc<Self>,
        client: u64,
        mut subjects: Vec<String>,
        cursor: Option<String>,
        opening: Option<&Admission>,
    ) -> Deferred {
        let queue = Arc::new(ClientQueue::new(self.bound, self.policy));
        let mut extra = Vec::new();
        if let Some(opening) = opening {
            queue.prepend(self.first_events(client, opening));
            extra = opening.subscribe.clone();
            extra.retain(|s| !subjects.contains(s));
        }
        let memberships = Arc::new(std::sync::Mutex::new(Vec::new()));
        let since = std::time::SystemTime::now();
        let (ctx, weak_queue, weak_slot) = (
            self.clone(),
            Arc::downgrade(&queue),
            Arc::downgrade(&memberships),
        );
        tokio::spawn(async move {
            let mut connected = ctx.hub.connected();
            if subjects.is_empty() {
                // Only what the app added: one topic each is not needed here, the
                // set of them is joined as one (no cursor applies to them).
                subjects = std::mem::take(&mut extra);
            }
            loop {
                if subjects.is_empty() || connected.wait_for(|c| *c).await.is_err() {
                    return;
                }
                // The client may have left while the broker was away.
                let Some(queue) = weak_queue.upgrade() else {
                    return;
                };
                let spec = ctx.topic(&subjects);
                // The session is already writing: live events wait until the replay
                // is spliced in front of them (the splice releases them).
                queue.hold();
                let m = match ctx.hub.join_spec(&spec, client, queue.clone()).await {
                    Ok(m) => m,
                    Err(JoinError::TooManyTopics(_)) => {
                        queue.splice(Vec::new(), Some("too_many_topics"));
                        return;
                    }
                    Err(JoinError::Broker(e)) => {
                        tracing::debug!(error = %e, "deferred join failed; retrying");
                        let backoff = std::time::Duration::from_secs(1);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                let resumed = match &cursor {
                    Some(c) => ctx.hub.resume(std::slice::from_ref(&spec), c, &queue).await,
                    None => ctx.hub.resume_since(&spec, since, &queue).await,
                };
                if let Err(e) = resumed {
                    tracing::warn!(error = %e, "replay after an outage failed: the client gets a reset");
                    queue.splice(Vec::new(), Some("replay_failed"));
                }
                let mut joined = vec![(subjects.join(SET_SEPARATOR), m)];
                for subject in &extra {
                    let spec = ctx.topic(std::slice::from_ref(subject));
                    match ctx.hub.join_spec(&spec, client, queue.clone()).await {
                        Ok(m) => joined.push((subject.clone(), m)),
                        Err(e) => {
                            tracing::warn!(error = %e, "joining a subject the app added failed");
                        }
                    }
                }
                if let Some(slot) = weak_slot.upgrade() {
                    slot.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(joined);
                }
                return;
            }
        });
        Deferred {
            client,
            queue,
            memberships,
        }
    }

    /// Counts `n` events written to a client (`deliveries` is the transport's
    /// series), and the lag of the oldest, received at `oldest`.
    pub fn delivered(&self, deliveries: &prometheus::IntCounter, n: u64, oldest: Option<Instant>) {
        deliveries.inc_by(n);
        if let Some(t) = oldest {
            self.metrics
                .delivery_lag_queue
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// Counts a held connection of `transport` from now until the returned guard
    /// ends (or is dropped).
    ///
    /// A guard rather than an async wrapper around the session's future: an async fn
    /// that takes a future and awaits it stores it twice (as its argument and as the
    /// awaited future), and every held connection paid that, about 740 bytes for SSE.
    pub fn counting(&self, transport: Transport) -> Counting {
        let gauge = self
            .metrics
            .connections
            .with_label_values(&[transport.name()]);
        gauge.inc();
        Counting { gauge, transport }
    }
}

/// A held connection counted in `fanfare_connections{transport}`; dropping it takes
/// the connection off the gauge. 16 bytes: it sits in every held connection's future.
pub struct Counting {
    gauge: prometheus::IntGauge,
    transport: Transport,
}

impl Counting {
    /// The connection ended with `outcome`: counted in `connections_closed_total`.
    pub fn end(self, metrics: &Metrics, outcome: Outcome) -> Outcome {
        metrics
            .connections_closed
            .with_label_values(&[self.transport.name(), outcome.label()])
            .inc();
        outcome
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// How a held connection ended, for `fanfare_connections_closed_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client went away (close frame, EOF).
    ClientClosed,
    /// A read or write failed, or the client broke the protocol.
    WriteError,
    /// The client sent a message over the limit (WebSocket 1009).
    TooBig,
    /// The client stopped answering pings (WebSocket 4002).
    PingTimeout,
    /// No subscription for too long (WebSocket 4003).
    Idle,
    /// The client fell behind under the `disconnect` policy.
    SlowConsumer,
    /// fanfare is shutting down (drain).
    Shutdown,
    /// A reload removed or changed the connection's route.
    RouteChanged,
    /// The client's token expired.
    Expired,
    /// The app closed it (`Fanfare-Control: close`).
    ClosedByApp,
    /// A poll answered with messages.
    Delivered,
    /// A poll answered empty after its wait.
    Timeout,
}

impl From<crate::drain::Why> for Outcome {
    fn from(why: crate::drain::Why) -> Outcome {
        match why {
            crate::drain::Why::Shutdown => Outcome::Shutdown,
            crate::drain::Why::RouteChanged => Outcome::RouteChanged,
        }
    }
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::ClientClosed => "client_closed",
            Outcome::WriteError => "write_error",
            Outcome::TooBig => "too_big",
            Outcome::PingTimeout => "ping_timeout",
            Outcome::Idle => "idle",
            Outcome::SlowConsumer => "slow_consumer",
            Outcome::Shutdown => "shutdown",
            Outcome::RouteChanged => "route_changed",
            Outcome::Expired => "expired",
            Outcome::ClosedByApp => "closed_by_app",
            Outcome::Delivered => "delivered",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The timer of a credential's expiry, made once per connection: boxed, so a
/// connection without an expiry carries no `Sleep`, and held outside the session's
/// loop, so its timer is not registered again on every wake-up.
pub fn expiry_timer(at: Option<tokio::time::Instant>) -> Option<Pin<Box<tokio::time::Sleep>>> {
    at.map(|t| Box::pin(tokio::time::sleep_until(t)))
}

/// Waits for the expiry timer, or forever when there is none.
pub async fn expired(timer: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}
