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

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::ws_io::is_corrupt;
pub use super::ws_socket::accept;
use super::ws_socket::{CLOSE_TIMEOUT, assemble, close_for_error, write_frames};
use super::{Conn, Joined, Outcome, RouteContext, SET_SEPARATOR, WsSocket};
use crate::auth::Permissions;
use crate::config::{Transport, WsProtocol};
use crate::drain::Why;
use crate::hub::gate::FrameKind;
use crate::hub::{ClientQueue, Closed, Membership};
use crate::limits::Bucket;
use crate::wire::deflate;
use crate::wire::protocol::{self, Code};
use crate::wire::ws::close;

mod requests;

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

/// Runs a client's connection after its `101`: counted in the connection metrics;
/// the app is told when it ends.
///
/// Not an async fn: one would keep its arguments in its future next to the session
/// built from them, for the connection's life; the session is built first here.
pub fn serve<S>(
    ws: Box<WebSocketStream<WsSocket<S>>>,
    ctx: Arc<RouteContext>,
    joined: Joined,
    permissions: Permissions,
    conn: Option<Arc<Conn>>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send,
{
    let mut session = Session::new(ws, ctx, joined, permissions);
    session.conn = conn;
    async move {
        let counting = session.ctx.counting(Transport::Ws);
        let outcome = session.run().await;
        let outcome = counting.end(&session.ctx.metrics, outcome);
        session
            .ctx
            .ended(session.conn.as_deref(), "ws", outcome, &session.queue);
    }
}

/// One client's session.
pub struct Session<S> {
    ws: Box<WebSocketStream<WsSocket<S>>>,
    ctx: Arc<RouteContext>,
    queue: Arc<ClientQueue>,
    client: u64,
    subscriptions: Subscriptions,
    permissions: Permissions,
    /// Created on the first publish / (un)subscribe: most connections never make
    /// one, and an empty box costs 8 bytes of every held connection.
    publish_bucket: Option<Box<Bucket>>,
    subscribe_bucket: Option<Box<Bucket>>,
    /// tungstenite may hold a frame of its own to write (the pong or close answer to a
    /// frame it read): flush it before the next raw write. Nothing else leaves
    /// tungstenite unflushed (its sends complete), so most raw writes skip the flush.
    flush_first: bool,
    /// On a route with app callbacks (or a raw `publish_to`): the connection's id and
    /// forwarded headers, shared with its rpcs under way.
    conn: Option<Arc<Conn>>,
}

enum Wake {
    Queue,
    Frame(Option<Result<Message, WsError>>),
    Tick,
    Drain(Why),
    Expired,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send,
{
    /// A session that already holds the route's subscriptions.
    pub fn new(
        ws: Box<WebSocketStream<WsSocket<S>>>,
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
            flush_first: false,
            conn: None,
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
        // A connection the app can address (it has callbacks) is never idle.
        let can_idle = self.conn.is_none();
        let raw = self.ctx.ws.protocol == WsProtocol::Raw;
        // Shared compressed frames use the full window: a client that asked for a
        // smaller one gets events uncompressed (allowed message by message).
        let deflated = self.ws.get_ref().deflate_window() == Some(deflate::MAX_WINDOW_BITS);
        // The hub writes a lone message to this socket itself when nothing is queued
        // (hub::gate); the session releases the socket after each of its writes.
        let kind = match (raw, deflated) {
            (false, false) => FrameKind::Json,
            (false, true) => FrameKind::JsonDeflated,
            (true, false) => FrameKind::Raw,
            (true, true) => FrameKind::RawDeflated,
        };
        self.ws.get_mut().share(self.queue.clone(), kind);
        let mut idle_since = (can_idle && self.subscriptions.is_empty()).then(Instant::now);
        let mut expiry = super::expiry_timer(self.permissions.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                f = self.ws.next() => Wake::Frame(f),
                _ = tick.tick() => Wake::Tick,
                why = self.ctx.drain.turn(self.client) => Wake::Drain(why),
                _ = super::expired(expiry.as_mut()) => Wake::Expired,
            };
            match wake {
                Wake::Queue => {
                    let batch = self.queue.take();
                    let closed = batch.closed.is_some();
                    let buf = assemble(&batch, kind);
                    // With nothing else to write, the rest of a frame the hub started
                    // still goes out (the socket's flush writes it).
                    if !buf.is_empty() || self.queue.gate.has_rest() {
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
                        self.ctx.delivered(
                            &deliveries,
                            batch.events.len() as u64,
                            batch.events.front().map(|e| e.received),
                        );
                    }
                    self.queue.gate.release();
                    match batch.closed {
                        Some(Closed::SlowConsumer) => {
                            return self
                                .close(close::TRY_AGAIN, "slow consumer", Outcome::SlowConsumer)
                                .await;
                        }
                        Some(Closed::ByApp(reason)) => {
                            return self
                                .close(close::BY_APP, &reason, Outcome::ClosedByApp)
                                .await;
                        }
                        None => {}
                    }
                }
                Wake::Frame(None) => return Outcome::ClientClosed,
                Wake::Frame(Some(Err(e))) => return self.on_error(e).await,
                Wake::Frame(Some(Ok(msg))) => {
                    self.flush_first = true;
                    last_heard = Instant::now();
                    match msg {
                        Message::Text(t) if raw => {
                            if !Box::pin(self.on_raw(Bytes::from(t), true)).await {
                                return self.unrouted().await;
                            }
                        }
                        Message::Binary(b) if raw => {
                            if !Box::pin(self.on_raw(b, false)).await {
                                return self.unrouted().await;
                            }
                        }
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
                    idle_since = match (can_idle && self.subscriptions.is_empty(), idle_since) {
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
                Wake::Drain(Why::Shutdown) => {
                    return self
                        .close(close::RESTART, "fanfare is restarting", Outcome::Shutdown)
                        .await;
                }
                Wake::Drain(Why::RouteChanged) => {
                    return self
                        .close(close::ROUTE_CHANGED, "route_changed", Outcome::RouteChanged)
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
        let flush_first = std::mem::take(&mut self.flush_first);
        write_frames(&mut self.ws, &buf, flush_first).await
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
            WsError::Io(io) if is_corrupt(&io) => {
                close_for_error(&mut self.ws, &WsError::Io(io)).await;
                Outcome::WriteError
            }
            WsError::Io(_) | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Outcome::ClientClosed
            }
            e => {
                close_for_error(&mut self.ws, &e).await;
                Outcome::WriteError
            }
        }
    }

    /// Sends a close frame and waits (bounded) for the client's reply. The reason is
    /// cut to the 123 bytes a close frame holds.
    async fn close(&mut self, code: u16, reason: &str, outcome: Outcome) -> Outcome {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason[..end].to_string().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
        outcome
    }
}
