//! One Engine.IO session's task: heartbeats, Socket.IO namespaces, events from the
//! hub out, emits and acknowledgements in.

use std::sync::Arc;

use super::{Ended, Engine, Inbound, Mode, OUTBOX_HIGH, SioRoute};

mod connect;
mod direct;
mod events;
mod handshake;
mod out;
mod socket;
use direct::{Direct, next_frame};
pub use handshake::Handshake;
use socket::{Socket, any_ready};

use super::ws::Inbound as WsInbound;
use crate::transport::{Outcome, RouteContext};
use crate::wire::engineio::{self, Kind as EioKind, Packet};
use crate::wire::socketio::{self, Arg, Decoder, Kind};

/// Starts a session: registers it and spawns its task, which holds `slot` (the
/// connection's place in the limits) for as long as it runs.
pub fn start(
    ctx: Arc<RouteContext>,
    sio: Arc<SioRoute>,
    handshake: Handshake,
    mode: Mode,
    slot: crate::limits::Slot,
) -> Arc<Engine> {
    let mut s = Session::new(ctx, sio, handshake, mode);
    let engine = s.engine.clone();
    tokio::spawn(async move {
        s.serve().await;
        drop(slot);
    });
    engine
}

/// Starts a session opened over WebSocket: one task writes the `101` on `stream`, then
/// the open packet, then runs the session with the socket in hand.
pub fn start_ws(
    ctx: Arc<RouteContext>,
    sio: Arc<SioRoute>,
    handshake: Handshake,
    slot: crate::limits::Slot,
    stream: tokio::net::TcpStream,
    accept: String,
    ws_config: crate::config::WsConfig,
) {
    let mut s = Session::new(ctx, sio, handshake, Mode::Websocket);
    // A frame, moved into the socket's queue: nothing of it stays in the task.
    let open = crate::wire::ws::text_frame(
        engineio::encode_text(EioKind::Open, &s.sio.open_json(&s.engine.sid, &[])).as_bytes(),
    );
    tokio::spawn(async move {
        let Some(ws) = crate::transport::ws::accept(stream, &accept, &ws_config, None).await else {
            s.engine.end(Ended::ByClient);
            s.finish(Outcome::ClientClosed);
            return;
        };
        let mut direct = Direct::new(ws);
        direct.push_frame(open);
        if !direct.write().await {
            s.engine.end(Ended::ByClient);
            s.finish(Outcome::ClientClosed);
            return;
        }
        s.direct = Some(direct);
        s.serve().await;
        drop(slot);
    });
}

struct Session {
    ctx: Arc<RouteContext>,
    sio: Arc<SioRoute>,
    engine: Arc<Engine>,
    handshake: Handshake,
    sockets: Vec<Socket>,
    decoder: Decoder,
    id: u64,
    /// A pong arrived since the last look.
    pong: bool,
    /// `engine_only`: the forwarded handshake headers, captured at the first message.
    engine_headers: Option<crate::app::Headers>,
    /// A session opened over WebSocket: its socket.
    direct: Option<Direct>,
}

impl Session {
    /// A new session, registered.
    fn new(
        ctx: Arc<RouteContext>,
        sio: Arc<SioRoute>,
        handshake: Handshake,
        mode: Mode,
    ) -> Session {
        let id = ctx.hub.client_id();
        let engine = Engine::new(ctx.directory.id(id), mode);
        sio.registry.insert(engine.clone());
        Session {
            ctx,
            sio,
            engine,
            handshake,
            sockets: Vec::new(),
            decoder: Decoder::default(),
            id,
            pong: false,
            engine_headers: None,
            direct: None,
        }
    }

    /// Runs the session, counted in the connection metrics, and ends it.
    async fn serve(&mut self) {
        let ctx = self.ctx.clone();
        let counting = ctx.counting(crate::config::Transport::SocketIo);
        let outcome = counting.end(&ctx.metrics, self.run().await);
        self.finish(outcome);
        if let Some(direct) = self.direct.take() {
            direct.end(&self.engine).await;
        }
    }

    async fn run(&mut self) -> Outcome {
        let c = &self.sio.config;
        let (every, timeout) = (c.ping_interval.0, c.ping_timeout.0);
        let now = tokio::time::Instant::now();
        // One timer for the ping, its pong and the namespace connect: a held session
        // keeps one `Sleep`, not three.
        let mut next_ping = now + every;
        let mut pong_due: Option<tokio::time::Instant> = None;
        let mut connect_by = (!c.engine_only).then_some(now + c.connect_timeout.0);
        loop {
            let engine = self.engine.clone();
            let direct = self.direct.is_some();
            let room = direct || engine.queued() < OUTBOX_HIGH;
            let deadline = match (pong_due, connect_by) {
                (Some(p), Some(c)) => p.min(c),
                (Some(p), None) => p,
                (None, Some(c)) => c.min(next_ping),
                (None, None) => next_ping,
            };
            tokio::select! {
                p = engine.next(!room, direct) => match p {
                    Some(Inbound::Handled(done)) => {
                        let _ = done.send(());
                    }
                    Some(Inbound::Packet(p)) => {
                        if let Err(o) = self.on_packet(p).await {
                            return o;
                        }
                    }
                    // The outbox has room again, or something for a direct session's
                    // socket came from outside its task (an ack from the app).
                    None if !engine.has_ended() => {}
                    None => return ended_outcome(engine.ended()),
                },
                f = next_frame(&mut self.direct) => match f {
                    WsInbound::Packet(p) => {
                        if let Err(o) = self.on_packet(p).await {
                            return o;
                        }
                    }
                    WsInbound::Control => {}
                    WsInbound::Invalid => {
                        self.engine.end(Ended::ByServer);
                        return self.invalid();
                    }
                    WsInbound::Gone => {
                        self.engine.end(Ended::ByClient);
                        return Outcome::ClientClosed;
                    }
                },
                i = any_ready(&self.sockets), if room && !self.sockets.is_empty() => {
                    if let Some(o) = self.flush(i) {
                        return o;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let now = tokio::time::Instant::now();
                    if pong_due.is_some_and(|d| now >= d) {
                        return Outcome::PingTimeout;
                    }
                    if connect_by.is_some_and(|d| now >= d) {
                        return Outcome::Idle;
                    }
                    if pong_due.is_none() && now >= next_ping {
                        self.engine.send(Packet::bare(EioKind::Ping));
                        pong_due = Some(now + timeout);
                        next_ping = now + every;
                        self.engine.set_pong_due(pong_due);
                    }
                }
                why = self.ctx.drain.turn(self.id) => return why.into(),
            }
            if !self.sockets.is_empty() {
                connect_by = None;
            }
            if std::mem::take(&mut self.pong) {
                pong_due = None;
                self.engine.set_pong_due(None);
            }
            if direct {
                if let Some(e) = engine.ended() {
                    return ended_outcome(Some(e));
                }
                if let Some(o) = self.write_direct().await {
                    return o;
                }
            }
        }
    }

    /// After the session: the client learns it is closed, the registry forgets it, and
    /// the app hears of every namespace socket that ended.
    fn finish(&mut self, outcome: Outcome) {
        if !self.engine.has_ended() {
            self.engine.close();
        }
        self.engine.close_inbox();
        if self.engine.noop_owed() {
            // A poll may still be on its way to collect its noop: forget the session
            // a moment later.
            let (sio, sid) = (self.sio.clone(), self.engine.sid.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                sio.registry.remove(&sid);
            });
        } else {
            self.sio.registry.remove(&self.engine.sid);
        }
        for s in std::mem::take(&mut self.sockets) {
            self.ctx.ended(Some(&s.conn), "socketio", outcome, &s.queue);
        }
    }

    /// A client packet; `Err` ends the session.
    async fn on_packet(&mut self, p: Packet) -> Result<(), Outcome> {
        let decoded = match p {
            Packet::Text(EioKind::Pong, _) => {
                self.pong = true;
                return Ok(());
            }
            Packet::Text(EioKind::Close, _) => {
                self.engine.end(Ended::ByClient);
                return Err(Outcome::ClientClosed);
            }
            // An upgrade's probe and finish are the WebSocket pump's business.
            Packet::Text(EioKind::Ping | EioKind::Upgrade | EioKind::Noop, _) => return Ok(()),
            Packet::Text(EioKind::Open, _) => return Err(self.invalid()),
            Packet::Text(EioKind::Message, t) if self.sio.config.engine_only => {
                Box::pin(self.engine_message(bytes::Bytes::from(t), true)).await;
                return Ok(());
            }
            Packet::Binary(b) if self.sio.config.engine_only => {
                Box::pin(self.engine_message(b, false)).await;
                return Ok(());
            }
            Packet::Text(EioKind::Message, t) => self.decoder.text(&t),
            Packet::Binary(b) => self.decoder.binary(b),
        };
        match decoded {
            // Boxed: its answer's writing and waiting would otherwise sit in every held
            // session's future.
            Ok(Some(packet)) => Box::pin(self.on_sio(packet)).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "closing a Socket.IO session");
                Err(self.invalid())
            }
        }
    }

    /// `socketio.engine_only`: a bare Engine.IO message goes to `app.message` (text
    /// as `text/plain`, binary as `application/octet-stream`), in order, and a
    /// non-empty 2xx answer comes back as a message (text when it is UTF-8 and the
    /// message was text).
    async fn engine_message(&mut self, body: bytes::Bytes, text: bool) {
        let Some(app) = self.ctx.app.as_ref() else {
            return;
        };
        let headers = self
            .engine_headers
            .get_or_insert_with(|| app.capture(&self.handshake.header_map()))
            .clone();
        let content_type = if text {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        let Some(crate::app::Answer::Reply(_, answer)) = app
            .message(&self.engine.sid, &headers, None, body, content_type)
            .await
        else {
            return;
        };
        if answer.is_empty() {
            return;
        }
        match (text, std::str::from_utf8(&answer)) {
            (true, Ok(t)) => self.engine.send(Packet::message(t)),
            _ => self.engine.send(Packet::Binary(answer)),
        }
    }

    fn invalid(&self) -> Outcome {
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["invalid_packet"])
            .inc();
        Outcome::WriteError
    }

    fn send_sio(&self, kind: Kind, nsp: &str, id: Option<u64>, args: &[Arg]) {
        send_sio(&self.engine, kind, nsp, id, args);
    }

    async fn on_sio(&mut self, p: socketio::Packet) -> Result<(), Outcome> {
        let at = self.sockets.iter().position(|s| s.nsp == p.nsp);
        match (p.kind, at) {
            (Kind::Connect, Some(_)) => Ok(()),
            (Kind::Connect, None) => {
                Box::pin(self.connect(p.nsp, p.data)).await;
                // The namespace's answer goes out on its own, before the socket's first
                // events, as the reference server writes it (a client reading frame by
                // frame, like the protocol's own test suite, sees them apart).
                if self.direct.is_some() {
                    if let Some(o) = self.write_direct().await {
                        return Err(o);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    return Ok(());
                }
                let written = async {
                    while self.engine.queued() > 0 && self.engine.ended().is_none() {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                };
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), written).await;
                Ok(())
            }
            (Kind::Disconnect, Some(i)) => {
                let s = self.sockets.swap_remove(i);
                self.ctx
                    .ended(Some(&s.conn), "socketio", Outcome::ClientClosed, &s.queue);
                Ok(())
            }
            (Kind::Event, Some(i)) => {
                Box::pin(self.on_event(i, p)).await;
                Ok(())
            }
            // Events on a namespace not connected, and client acks (fanfare asks for
            // none), are ignored, as the reference server does.
            _ => Ok(()),
        }
    }
}

/// Queues a Socket.IO packet (and its attachments) for the client.
fn send_sio(engine: &Engine, kind: Kind, nsp: &str, id: Option<u64>, args: &[Arg]) {
    let (text, attachments) = socketio::encode(kind, nsp, id, args);
    engine.send(Packet::message(text));
    for a in attachments {
        engine.send(Packet::Binary(a));
    }
}

/// How a session whose end was recorded by another party ended.
fn ended_outcome(e: Option<Ended>) -> Outcome {
    if e == Some(Ended::Overflow) {
        Outcome::SlowConsumer
    } else {
        Outcome::ClientClosed
    }
}
