//! WebSocket: the RFC 6455 handshake check, server frame encoding, and the per-client
//! session.
//!
//! The session reads with tokio-tungstenite (frame parsing, masking, fragmentation,
//! UTF-8 checks, ping/pong and close) and writes data frames itself: a server frame is
//! unmasked, so the bytes of a message frame are the same for every client and are
//! encoded once per message ([`Event::ws_or_init`]); a client's queued frames go out in
//! one write.
//!
//! Invariant: raw writes never interleave with tungstenite's own frames. Before a raw
//! write the session flushes tungstenite (so no partial pong/close is pending), and
//! while a raw write is under way nothing else touches the socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use pingora::http::RequestHeader;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::broker::{Broker, Message as BrokerMessage};
use crate::config::WsConfig;
use crate::hub::{Batch, ClientQueue, Event, Hub, Membership, TopicSpec};
use crate::metrics::Metrics;
use crate::subject;
use crate::transport::protocol::{self, Code, Request};

/// Bytes tungstenite reads at once. Small: an idle connection keeps this buffer, and
/// what clients send (subscribe, publish, pong) is mostly under 256 bytes; a larger
/// frame grows the buffer to its size (up to `ws.max_message`).
const READ_BUFFER: usize = 256;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Close codes fanfare sends (1xxx from RFC 6455, 4xxx fanfare's own).
pub mod close {
    /// Policy violation (authorization).
    pub const POLICY: u16 = 1008;
    /// A message over `ws.max_message`.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
    /// fanfare is restarting (drain): reconnect elsewhere.
    pub const RESTART: u16 = 1012;
    /// Overload / slow consumer: try again later.
    pub const TRY_AGAIN: u16 = 1013;
    /// The client stopped answering pings.
    pub const PING_TIMEOUT: u16 = 4002;
    /// The client held no subscription for `ws.idle_timeout`.
    pub const IDLE: u16 = 4003;
    /// The client's token expired.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Why an upgrade request is refused: (status, code, reason).
pub type HandshakeError = (u16, &'static str, &'static str);

/// Checks an RFC 6455 upgrade request and returns the `Sec-WebSocket-Accept` value.
pub fn check_handshake(req: &RequestHeader) -> Result<String, HandshakeError> {
    let get = |name: &str| {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let has_token = |name: &str, token: &str| {
        get(name)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.method != http::Method::GET {
        return Err((
            405,
            "method_not_allowed",
            "a WebSocket upgrade must be a GET",
        ));
    }
    if req.version != http::Version::HTTP_11 {
        return Err((400, "bad_handshake", "WebSocket needs HTTP/1.1"));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err((
            400,
            "bad_handshake",
            "missing Upgrade: websocket / Connection: Upgrade",
        ));
    }
    if get("sec-websocket-version").trim() != "13" {
        return Err((
            426,
            "unsupported_version",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = get("sec-websocket-key");
    let key = key.trim();
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => {
            return Err((
                400,
                "bad_handshake",
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ));
        }
    }
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The raw `101 Switching Protocols` response head.
pub fn switching_protocols(accept: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// An unmasked server text frame (FIN set) carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x81);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.put_slice(payload);
    b.freeze()
}

/// The event's shared WebSocket frame.
fn event_frame(e: &Event) -> &Bytes {
    e.ws_or_init(|e| text_frame(&protocol::message(e)))
}

/// A batch's frames in one buffer: resets first, then the events. A lone event's
/// shared frame is written as is, without a copy (the common case at a steady rate).
fn assemble(batch: &Batch) -> Bytes {
    if batch.events.len() == 1 && batch.reset.is_none() && batch.dropped == 0 {
        return event_frame(&batch.events[0]).clone();
    }
    let mut buf = BytesMut::new();
    if let Some(reason) = batch.reset {
        buf.put_slice(&text_frame(protocol::reset_reason(reason).as_bytes()));
    }
    if batch.dropped > 0 {
        buf.put_slice(&text_frame(protocol::reset(batch.dropped).as_bytes()));
    }
    for e in &batch.events {
        buf.put_slice(event_frame(e));
    }
    buf.freeze()
}

/// What a WebSocket session needs besides its socket.
pub struct Context {
    /// The hub.
    pub hub: Hub,
    /// The broker, for client publishes.
    pub broker: Broker,
    /// Metrics.
    pub metrics: Metrics,
    /// The route's settings.
    pub config: WsConfig,
    /// The route's path (sent as `Fanfare-Route` on publishes).
    pub route: String,
    /// The route's topic settings (history); `subject` is filled per subscription.
    pub topic: TopicSpec,
    /// The shutdown drain; each session closes (1012) at its turn.
    pub drain: crate::drain::Drain,
}

/// A connection's subscriptions: a few at most (`ws.max_subscriptions`), so a vector
/// (one small allocation) beats a hash map (a bucket array) for every held connection.
struct Subscriptions(Vec<(String, Membership)>);

impl Subscriptions {
    fn contains_key(&self, subject: &str) -> bool {
        self.0.iter().any(|(s, _)| s == subject)
    }
    fn insert(&mut self, subject: String, m: Membership) {
        self.0.push((subject, m));
    }
    fn remove(&mut self, subject: &str) -> Option<Membership> {
        let i = self.0.iter().position(|(s, _)| s == subject)?;
        Some(self.0.swap_remove(i).1)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one connection may do, from its grant.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// Subject patterns it may subscribe to at run time.
    pub subscribe: Vec<String>,
    /// Subject patterns it may publish to.
    pub publish: Vec<String>,
    /// When its credential expires (closed with 4001 then).
    pub expires: Option<tokio::time::Instant>,
}

/// A token bucket for client publishes.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst.max(1)),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub use super::Outcome;

fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Wraps a socket whose 101 has been written.
pub async fn accept<S>(stream: S, config: &WsConfig) -> Box<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Box::new(
        WebSocketStream::from_raw_socket(stream, Role::Server, Some(ws_config(config.max_message)))
            .await,
    )
}

/// One client's session.
pub struct Session<S> {
    ws: Box<WebSocketStream<S>>,
    ctx: Arc<Context>,
    queue: Arc<ClientQueue>,
    client: u64,
    subscriptions: Subscriptions,
    permissions: Permissions,
    bucket: Bucket,
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
        ctx: Arc<Context>,
        queue: Arc<ClientQueue>,
        client: u64,
        subscriptions: Vec<(String, Membership)>,
        permissions: Permissions,
    ) -> Session<S> {
        let bucket = Bucket::new(ctx.config.publish_rate, ctx.config.publish_burst);
        Session {
            ws,
            ctx,
            queue,
            client,
            subscriptions: Subscriptions(subscriptions),
            permissions,
            bucket,
        }
    }

    /// Runs until the client leaves or is closed. Borrows the session for the same
    /// reason as `sse::Session::run`: a by-value argument is stored twice.
    pub async fn run(&mut self) -> Outcome {
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["ws"]);
        let ping_every = self.ctx.config.ping_interval.0;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut idle_since = self.subscriptions.is_empty().then(Instant::now);
        let drain = self.ctx.drain.clone();
        let mut expiry = super::expiry_timer(self.permissions.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                f = self.ws.next() => Wake::Frame(f),
                _ = tick.tick() => Wake::Tick,
                _ = drain.turn(self.client) => Wake::Shutdown,
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
                    if last_heard.elapsed() > ping_every + self.ctx.config.pong_timeout.0 {
                        return self
                            .close(close::PING_TIMEOUT, "ping timeout", Outcome::PingTimeout)
                            .await;
                    }
                    if idle_since.is_some_and(|t| t.elapsed() >= self.ctx.config.idle_timeout.0) {
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
            WsError::Io(_) => Outcome::ClientClosed,
            // Protocol errors (bad framing, unmasked frames, invalid UTF-8, ...): tungstenite
            // has already queued the matching close frame; send it.
            _ => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
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
                Err((code, reason)) => protocol::error(reference.as_ref(), code, &reason),
            },
        };
        self.send_text(reply).await;
    }

    /// A `forbidden` answer, counted in `fanfare_rejected_total`.
    fn forbidden(&self, action: &str) -> (Code, String) {
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["forbidden"])
            .inc();
        (
            Code::Forbidden,
            format!("this connection may not {action} that subject"),
        )
    }

    /// Carries out a request; `Ok(Some(subject))` acks with the subject.
    async fn handle(&mut self, request: Request) -> Result<Option<String>, (Code, String)> {
        match request {
            Request::Subscribe { subject, since } => {
                if !subject::is_valid_subscribe_subject(&subject) {
                    return Err((Code::InvalidSubject, "not a valid NATS subject".into()));
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
                if self.subscriptions.len() >= self.ctx.config.max_subscriptions {
                    self.ctx
                        .metrics
                        .rejected
                        .with_label_values(&["too_many_subscriptions"])
                        .inc();
                    return Err((
                        Code::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions per connection",
                            self.ctx.config.max_subscriptions
                        ),
                    ));
                }
                let spec = TopicSpec {
                    subject: subject.clone(),
                    ..self.ctx.topic.clone()
                };
                let m = self
                    .ctx
                    .hub
                    .join_spec(&spec, self.client, self.queue.clone())
                    .await
                    .map_err(|e| (Code::Unavailable, e.to_string()))?;
                if let Some(cursor) = since {
                    crate::realtime::resume(&self.ctx.hub, &[spec], &cursor, &self.queue)
                        .await
                        .map_err(|e| (Code::Unavailable, e.to_string()))?;
                }
                self.subscriptions.insert(subject.clone(), m);
                Ok(Some(subject))
            }
            Request::Unsubscribe { subject } => match self.subscriptions.remove(&subject) {
                Some(_) => Ok(Some(subject)),
                None => Err((Code::NotSubscribed, "not subscribed to that subject".into())),
            },
            Request::Publish {
                subject,
                payload,
                event,
            } => {
                if !subject::is_valid_publish_subject(&subject) {
                    return Err((
                        Code::InvalidSubject,
                        "publish needs a subject without wildcards".into(),
                    ));
                }
                if !self
                    .permissions
                    .publish
                    .iter()
                    .any(|p| subject::matches(p, &subject))
                {
                    return Err(self.forbidden("publish to"));
                }
                if !self.bucket.take() {
                    self.ctx
                        .metrics
                        .rejected
                        .with_label_values(&["rate_limited"])
                        .inc();
                    return Err((
                        Code::RateLimited,
                        format!(
                            "at most {} publishes per second",
                            self.ctx.config.publish_rate
                        ),
                    ));
                }
                let mut msg = BrokerMessage::new(subject, payload);
                msg.event = event;
                msg.headers.push(("Fanfare-Route", self.ctx.route.clone()));
                msg.headers
                    .push(("Fanfare-Connection", format!("{:x}", self.client)));
                self.ctx
                    .broker
                    .publish(msg)
                    .await
                    .map_err(|e| (Code::Unavailable, e.to_string()))?;
                Ok(None)
            }
        }
    }
}

/// A test-only echo session for the Autobahn conformance suite: every data message is
/// sent back as is.
pub async fn echo<S>(mut ws: Box<WebSocketStream<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(_) = msg {
            let _ = ws.flush().await;
            return;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const GOOD: &[(&str, &str)] = &[
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_rfc_example() {
        assert_eq!(
            check_handshake(&upgrade(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_bad_handshakes() {
        let without = |skip: &str| {
            upgrade(
                &GOOD
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != skip)
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(check_handshake(&without("Upgrade")).unwrap_err().0, 400);
        assert_eq!(check_handshake(&without("Connection")).unwrap_err().0, 400);
        assert_eq!(
            check_handshake(&without("Sec-WebSocket-Version"))
                .unwrap_err()
                .0,
            426
        );
        assert_eq!(
            check_handshake(&without("Sec-WebSocket-Key"))
                .unwrap_err()
                .0,
            400
        );
        let mut short_key = GOOD.to_vec();
        short_key[3] = ("Sec-WebSocket-Key", "c2hvcnQ=");
        assert_eq!(check_handshake(&upgrade(&short_key)).unwrap_err().0, 400);
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text_frame(&[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
    }
}
