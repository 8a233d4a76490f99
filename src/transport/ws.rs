//! The WebSocket session: fanfare's JSON protocol over one client's connection.
//!
//! The session reads with tokio-tungstenite (frame parsing, masking, fragmentation,
//! UTF-8 checks, ping/pong and close) and writes data frames itself: a server frame is
//! unmasked, so the bytes of a message frame are the same for every client and are
//! encoded once per message ([`crate::hub::Event::ws_frame`]); a client's queued frames
//! go out in one write.
//!
//! Invariant: raw writes never interleave with tungstenite's own frames. Before a raw
//! write the session flushes tungstenite (so no partial pong/close is pending), and
//! while a raw write is under way nothing else touches the socket.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub use super::ws_socket::accept;
use super::ws_socket::{CLOSE_TIMEOUT, assemble, close_for_error};
use super::{Joined, Outcome, RouteContext, SET_SEPARATOR};
use crate::auth::Permissions;
use crate::broker::Message as BrokerMessage;
use crate::hub::{ClientQueue, JoinError, Membership};
use crate::limits::Bucket;
use crate::routing::subject;
use crate::wire::protocol::{self, Code, Failure, Request};
use crate::wire::ws::close;

/// A connection's subscriptions: a few at most (`ws.max_subscriptions`), so a vector
/// (one small allocation) beats a hash map (a bucket array) for every held connection.
/// Each entry is one topic, labelled by its subjects joined by [`SET_SEPARATOR`]: the
/// route's subjects are one entry (one topic, one order), a run-time subscribe another.
struct Subscriptions(Vec<(String, Membership)>);

/// Why an unsubscribe cannot be done.
enum Leave {
    /// The connection does not hold the subject.
    NotSubscribed,
    /// The subject is one of the route's several subjects, which form one topic.
    PartOfRoute,
}

impl Subscriptions {
    fn subjects(label: &str) -> impl Iterator<Item = &str> {
        label.split(SET_SEPARATOR)
    }
    fn contains_key(&self, subject: &str) -> bool {
        self.0
            .iter()
            .any(|(l, _)| Self::subjects(l).any(|s| s == subject))
    }
    fn insert(&mut self, subject: String, m: Membership) {
        self.0.push((subject, m));
    }
    fn remove(&mut self, subject: &str) -> Result<Membership, Leave> {
        if let Some(i) = self.0.iter().position(|(l, _)| l == subject) {
            return Ok(self.0.swap_remove(i).1);
        }
        if self.contains_key(subject) {
            return Err(Leave::PartOfRoute);
        }
        Err(Leave::NotSubscribed)
    }
    /// Subjects held (what `ws.max_subscriptions` counts).
    fn len(&self) -> usize {
        self.0.iter().map(|(l, _)| Self::subjects(l).count()).sum()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs a client's connection after its `101`: counted in the connection metrics.
pub async fn serve<S>(
    ws: Box<WebSocketStream<S>>,
    ctx: Arc<RouteContext>,
    joined: Joined,
    permissions: Permissions,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = Session::new(ws, ctx.clone(), joined, permissions);
    ctx.counted("ws", session.run()).await;
}

/// One client's session.
pub struct Session<S> {
    ws: Box<WebSocketStream<S>>,
    ctx: Arc<RouteContext>,
    queue: Arc<ClientQueue>,
    client: u64,
    subscriptions: Subscriptions,
    permissions: Permissions,
    /// Created on the first publish / (un)subscribe: most connections never make
    /// one, and an empty box costs 8 bytes of every held connection.
    publish_bucket: Option<Box<Bucket>>,
    subscribe_bucket: Option<Box<Bucket>>,
}

enum Wake {
    Queue,
    Frame(Option<Result<Message, WsError>>),
    Tick,
    Shutdown,
    Expired,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A session that already holds the route's subscriptions.
    pub fn new(
        ws: Box<WebSocketStream<S>>,
        ctx: Arc<RouteContext>,
        joined: Joined,
        permissions: Permissions,
    ) -> Session<S> {
        Session {
            ws,
            ctx,
            queue: joined.queue,
            client: joined.client,
            subscriptions: Subscriptions(joined.memberships),
            permissions,
            publish_bucket: None,
            subscribe_bucket: None,
        }
    }

    /// Runs until the client leaves or is closed. Borrows the session for the same
    /// reason as `sse::Session::run`: a by-value argument is stored twice.
    pub async fn run(&mut self) -> Outcome {
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["ws"]);
        let ping_every = self.ctx.ws.ping_interval.0;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut idle_since = self.subscriptions.is_empty().then(Instant::now);
        let mut expiry = super::expiry_timer(self.permissions.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                f = self.ws.next() => Wake::Frame(f),
                _ = tick.tick() => Wake::Tick,
                _ = self.ctx.drain.turn(self.client) => Wake::Shutdown,
                _ = super::expired(expiry.as_mut()) => Wake::Expired,
            };
            match wake {
                Wake::Queue => {
                    let batch = self.queue.take();
                    let closed = batch.closed.is_some();
                    let buf = assemble(&batch);
                    if !buf.is_empty() {
                        let queue = self.queue.clone();
                        let ok = tokio::select! {
                            ok = self.write_raw(buf) => ok,
                            _ = queue.closed(), if !closed => false,
                        };
                        if !ok {
                            return if self.queue.is_closed() {
                                Outcome::SlowConsumer
                            } else {
                                Outcome::WriteError
                            };
                        }
                        deliveries.inc_by(batch.events.len() as u64);
                        if let Some(first) = batch.events.front() {
                            self.ctx
                                .metrics
                                .delivery_lag
                                .observe(first.received.elapsed().as_secs_f64());
                        }
                    }
                    if closed {
                        return self
                            .close(close::TRY_AGAIN, "slow consumer", Outcome::SlowConsumer)
                            .await;
                    }
                }
                Wake::Frame(None) => return Outcome::ClientClosed,
                Wake::Frame(Some(Err(e))) => return self.on_error(e).await,
                Wake::Frame(Some(Ok(msg))) => {
                    last_heard = Instant::now();
                    match msg {
                        Message::Text(t) => self.on_text(t.as_str()).await,
                        Message::Binary(_) => {
                            let e = protocol::error(
                                None,
                                Code::BinaryNotSupported,
                                "send JSON text frames",
                            );
                            self.send_text(e).await;
                        }
                        Message::Close(_) => {
                            // tungstenite queued the reply; flushing completes the handshake.
                            let _ = self.ws.flush().await;
                            return Outcome::ClientClosed;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                    idle_since = match (self.subscriptions.is_empty(), idle_since) {
                        (true, None) => Some(Instant::now()),
                        (true, since) => since,
                        (false, _) => None,
                    };
                }
                Wake::Tick => {
                    if last_heard.elapsed() > ping_every + self.ctx.ws.pong_timeout.0 {
                        return self
                            .close(close::PING_TIMEOUT, "ping timeout", Outcome::PingTimeout)
                            .await;
                    }
                    if idle_since.is_some_and(|t| t.elapsed() >= self.ctx.ws.idle_timeout.0) {
                        return self
                            .close(close::IDLE, "no subscriptions", Outcome::Idle)
                            .await;
                    }
                    if self.ws.send(Message::Ping(Bytes::new())).await.is_err() {
                        return Outcome::WriteError;
                    }
                }
                Wake::Shutdown => {
                    return self
                        .close(close::RESTART, "fanfare is restarting", Outcome::Shutdown)
                        .await;
                }
                Wake::Expired => {
                    return self
                        .close(close::TOKEN_EXPIRED, "token_expired", Outcome::Expired)
                        .await;
                }
            }
        }
    }

    /// Writes pre-encoded frames after flushing anything tungstenite has pending.
    async fn write_raw(&mut self, buf: Bytes) -> bool {
        if self.ws.flush().await.is_err() {
            return false;
        }
        let socket = self.ws.get_mut();
        socket.write_all(&buf).await.is_ok() && socket.flush().await.is_ok()
    }

    async fn send_text(&mut self, text: String) {
        let _ = self.ws.send(Message::text(text)).await;
    }

    async fn on_error(&mut self, e: WsError) -> Outcome {
        match e {
            WsError::Capacity(_) => {
                self.ctx
                    .metrics
                    .rejected
                    .with_label_values(&["message_too_big"])
                    .inc();
                self.close(close::TOO_BIG, "message too big", Outcome::TooBig)
                    .await
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed => Outcome::ClientClosed,
            WsError::Io(_) | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Outcome::ClientClosed
            }
            e => {
                close_for_error(&mut self.ws, &e).await;
                Outcome::WriteError
            }
        }
    }

    /// Sends a close frame and waits (bounded) for the client's reply.
    async fn close(&mut self, code: u16, reason: &'static str, outcome: Outcome) -> Outcome {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
        outcome
    }

    async fn on_text(&mut self, text: &str) {
        let reply = match protocol::parse(text) {
            Err(e) => protocol::error(e.reference.as_ref(), e.code, &e.reason),
            // Boxed: handling a request (a subscribe may replay from JetStream) needs far
            // more future state than an idle session; boxing keeps that out of every
            // held connection's task (measured: ~7 KiB per idle WebSocket).
            Ok((request, reference)) => match Box::pin(self.handle(request)).await {
                Ok(subject) => protocol::ack(reference.as_ref(), subject.as_deref()),
                Err(f) => protocol::error(reference.as_ref(), f.code, &f.reason),
            },
        };
        self.send_text(reply).await;
    }

    /// Takes a token for a run-time subscribe or unsubscribe: each one may create or
    /// drop a broker subscription, so a connection cannot churn them without bound.
    fn churn(&mut self) -> Result<(), Failure> {
        let ws = &self.ctx.ws;
        if self
            .subscribe_bucket
            .get_or_insert_with(|| Box::new(Bucket::new(ws.subscribe_rate, ws.subscribe_burst)))
            .take()
        {
            return Ok(());
        }
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["rate_limited"])
            .inc();
        Err(Failure::new(
            Code::RateLimited,
            format!(
                "at most {} subscribes and unsubscribes per second",
                ws.subscribe_rate
            ),
        ))
    }

    /// A `forbidden` answer, counted in `fanfare_rejected_total`.
    fn forbidden(&self, action: &str) -> Failure {
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["forbidden"])
            .inc();
        Failure::new(
            Code::Forbidden,
            format!("this connection may not {action} that subject"),
        )
    }

    /// Carries out a request; `Ok(Some(subject))` acks with the subject.
    async fn handle(&mut self, request: Request) -> Result<Option<String>, Failure> {
        match request {
            Request::Subscribe { subject, since } => {
                self.churn()?;
                if !subject::is_valid_subscribe_subject(&subject) {
                    return Err(Failure::new(
                        Code::InvalidSubject,
                        "not a valid NATS subject",
                    ));
                }
                if !self
                    .permissions
                    .subscribe
                    .iter()
                    .any(|p| subject::covers(p, &subject))
                {
                    return Err(self.forbidden("subscribe to"));
                }
                if self.subscriptions.contains_key(&subject) {
                    return Ok(Some(subject));
                }
                if self.subscriptions.len() >= self.ctx.ws.max_subscriptions {
                    self.ctx
                        .metrics
                        .rejected
                        .with_label_values(&["too_many_subscriptions"])
                        .inc();
                    return Err(Failure::new(
                        Code::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions per connection",
                            self.ctx.ws.max_subscriptions
                        ),
                    ));
                }
                let spec = self.ctx.topic(std::slice::from_ref(&subject));
                let m = self
                    .ctx
                    .hub
                    .join_spec(&spec, self.client, self.queue.clone())
                    .await
                    .map_err(|e| match e {
                        JoinError::TooManyTopics(_) => {
                            self.ctx
                                .metrics
                                .rejected
                                .with_label_values(&["too_many_topics"])
                                .inc();
                            Failure::new(Code::TooManyTopics, e.to_string())
                        }
                        JoinError::Broker(e) => Failure::new(Code::Unavailable, e.to_string()),
                    })?;
                if let Some(cursor) = since {
                    self.ctx
                        .hub
                        .resume(&[spec], &cursor, &self.queue)
                        .await
                        .map_err(|e| Failure::new(Code::Unavailable, e.to_string()))?;
                }
                self.subscriptions.insert(subject.clone(), m);
                Ok(Some(subject))
            }
            Request::Unsubscribe { subject } => {
                self.churn()?;
                match self.subscriptions.remove(&subject) {
                    Ok(_) => Ok(Some(subject)),
                    Err(Leave::NotSubscribed) => Err(Failure::new(
                        Code::NotSubscribed,
                        "not subscribed to that subject",
                    )),
                    Err(Leave::PartOfRoute) => Err(Failure::new(
                        Code::BadRequest,
                        "this subject is one of the route's subjects, which are one subscription; it cannot be left alone",
                    )),
                }
            }
            Request::Publish {
                subject,
                payload,
                event,
            } => {
                let result = self.publish(subject, payload, event).await;
                let label = match &result {
                    Ok(()) => "ok",
                    Err(f) => match f.code {
                        Code::Forbidden => "forbidden",
                        Code::RateLimited => "rate_limited",
                        Code::Unavailable => "unavailable",
                        _ => "invalid",
                    },
                };
                self.ctx
                    .metrics
                    .client_publish
                    .with_label_values(&[label])
                    .inc();
                result.map(|()| None)
            }
        }
    }

    /// Publishes for the client, within its grant and its rate.
    async fn publish(
        &mut self,
        subject: String,
        payload: Bytes,
        event: Option<String>,
    ) -> Result<(), Failure> {
        if !subject::is_valid_publish_subject(&subject) {
            return Err(Failure::new(
                Code::InvalidSubject,
                "publish needs a subject without wildcards",
            ));
        }
        if subject::is_reserved(&subject)
            || !self
                .permissions
                .publish
                .iter()
                .any(|p| subject::matches(p, &subject))
        {
            return Err(self.forbidden("publish to"));
        }
        let ws = &self.ctx.ws;
        if !self
            .publish_bucket
            .get_or_insert_with(|| Box::new(Bucket::new(ws.publish_rate, ws.publish_burst)))
            .take()
        {
            self.ctx
                .metrics
                .rejected
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(Failure::new(
                Code::RateLimited,
                format!("at most {} publishes per second", self.ctx.ws.publish_rate),
            ));
        }
        let mut msg = BrokerMessage::new(subject, payload);
        msg.event = event;
        msg.headers.push(("Fanfare-Route", self.ctx.path.clone()));
        msg.headers
            .push(("Fanfare-Connection", format!("{:x}", self.client)));
        self.ctx
            .broker
            .publish(msg)
            .await
            .map_err(|e| Failure::new(Code::Unavailable, e.to_string()))?;
        Ok(())
    }
}
