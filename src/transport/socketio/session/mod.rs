//! One Engine.IO session's task: heartbeats, Socket.IO namespaces, events from the
//! hub out, emits and acknowledgements in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::http::RequestHeader;
use serde_json::{Value, json};

use super::{Ended, Engine, Inbound, Mode, OUTBOX_HIGH, SioRoute};

mod events;
use crate::app::Connecting;
use crate::hub::direct::Registration;
use crate::hub::{ClientQueue, Closed, Membership};
use crate::limits::Bucket;
use crate::transport::{Conn, Outcome, RouteContext};
use crate::wire::engineio::{Kind as EioKind, Packet};
use crate::wire::socketio::{self, Arg, Decoder, Kind};

/// The HTTP request that opened the session (its headers authenticate the namespace
/// connects, and go to the app's callbacks).
pub struct Handshake {
    /// The request head.
    pub request: RequestHeader,
    /// The client's address.
    pub remote: Option<IpAddr>,
}

impl Handshake {
    /// Keeps a copy of `req` that owns its bytes. pingora's header values are slices
    /// of the connection's read buffer (4 KiB), so a plain clone would hold that buffer
    /// for as long as the session lives.
    pub fn new(req: &RequestHeader, remote: Option<IpAddr>) -> Handshake {
        let uri = req.uri.to_string();
        let Ok(mut request) = RequestHeader::build_no_case(
            req.method.clone(),
            uri.as_bytes(),
            Some(req.headers.len()),
        ) else {
            // Not reached (the URI was parsed once already); the clone is still right.
            return Handshake {
                request: req.clone(),
                remote,
            };
        };
        for (name, value) in &req.headers {
            if let Ok(v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                let _ = request.append_header(name.clone(), v);
            }
        }
        Handshake { request, remote }
    }
}

/// One connected namespace: a fanfare connection of its own.
struct Socket {
    nsp: String,
    queue: Arc<ClientQueue>,
    _memberships: Vec<(String, Membership)>,
    _registration: Registration,
    conn: Arc<Conn>,
    claims: HashMap<String, String>,
    publish: Vec<String>,
    bucket: Option<Box<Bucket>>,
}

/// Starts a session: registers it and spawns its task, which holds `slot` (the
/// connection's place in the limits) for as long as it runs.
pub fn start(
    ctx: Arc<RouteContext>,
    sio: Arc<SioRoute>,
    handshake: Handshake,
    mode: Mode,
    slot: crate::limits::Slot,
) -> Arc<Engine> {
    let id = ctx.hub.client_id();
    let engine = Engine::new(ctx.directory.id(id), mode);
    sio.registry.insert(engine.clone());
    let mut s = Session {
        ctx,
        sio,
        engine: engine.clone(),
        handshake,
        sockets: Vec::new(),
        decoder: Decoder::default(),
        id,
        pong: false,
        engine_headers: None,
    };
    tokio::spawn(async move {
        let ctx = s.ctx.clone();
        let counting = ctx.counting("socketio");
        let outcome = counting.end(s.run().await);
        s.finish(outcome);
        drop(slot);
    });
    engine
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
}

impl Session {
    async fn run(&mut self) -> Outcome {
        let c = &self.sio.config;
        let (every, timeout) = (c.ping_interval.0, c.ping_timeout.0);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut pong_due: Option<tokio::time::Instant> = None;
        let connect_by = tokio::time::Instant::now() + c.connect_timeout.0;
        let mut ever_connected = false;
        let engine_only = c.engine_only;
        loop {
            let engine = self.engine.clone();
            let room = engine.queued() < OUTBOX_HIGH;
            let queues: Vec<Arc<ClientQueue>> =
                self.sockets.iter().map(|s| s.queue.clone()).collect();
            tokio::select! {
                p = engine.recv() => match p {
                    Inbound::Handled(done) => {
                        let _ = done.send(());
                    }
                    Inbound::Packet(p) => {
                        if let Err(o) = self.on_packet(p).await {
                            return o;
                        }
                        ever_connected |= !self.sockets.is_empty();
                    }
                },
                i = any_ready(&queues), if room && !queues.is_empty() => {
                    if let Some(o) = self.flush(i) {
                        return o;
                    }
                }
                // The outbox was full; the transport took it: look again.
                () = engine.room(), if !room => {}
                _ = ping.tick() => {
                    if pong_due.is_none() {
                        self.engine.send(Packet::bare(EioKind::Ping));
                        pong_due = Some(tokio::time::Instant::now() + timeout);
                        self.engine.set_pong_due(pong_due);
                    }
                }
                () = sleep_until(pong_due) => return Outcome::PingTimeout,
                () = tokio::time::sleep_until(connect_by), if !ever_connected && !engine_only => return Outcome::Idle,
                why = self.ctx.drain.turn(self.id) => return why.into(),
                () = engine.until_ended() => {
                    return if engine.ended() == Some(Ended::Overflow) {
                        Outcome::SlowConsumer
                    } else {
                        Outcome::ClientClosed
                    };
                }
            }
            if std::mem::take(&mut self.pong) {
                pong_due = None;
                self.engine.set_pong_due(None);
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
            Ok(Some(packet)) => self.on_sio(packet).await,
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
            .get_or_insert_with(|| app.capture(&self.handshake.request.headers))
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

    /// A namespace CONNECT: authorize (the handshake's credentials, or the `token` of
    /// the auth payload), ask the app, join the subjects, answer `{sid}`.
    async fn connect(&mut self, nsp: String, auth: Option<Value>) {
        let refuse = |this: &Self, message: &str, data: Option<Value>| {
            let mut body = json!({ "message": message });
            if let Some(d) = data {
                body["data"] = d;
            }
            this.send_sio(Kind::ConnectError, &nsp, None, &[Arg::Json(body)]);
        };
        let Some(ns) = self.sio.namespaces.get(&nsp) else {
            refuse(self, "Invalid namespace", None);
            return;
        };
        let mut request = self.handshake.request.clone();
        if let Some(token) = auth
            .as_ref()
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
        {
            let _ = request.insert_header("authorization", format!("Bearer {token}"));
        }
        let grant = match self.sio.auth.authorize(&request, &self.ctx.metrics).await {
            Ok(g) => g,
            Err(r) => {
                let (message, data) = r.message_and_data();
                refuse(self, &message, data);
                return;
            }
        };
        let subjects: Result<Vec<String>, _> = ns
            .subjects
            .iter()
            .map(|t| t.render(&grant.claims))
            .collect();
        let subjects = match subjects {
            Ok(s) => s,
            Err(e) => {
                refuse(self, &e.to_string(), None);
                return;
            }
        };
        let mut publish = grant.publish.clone();
        publish.extend(
            self.sio
                .allow_publish
                .iter()
                .filter_map(|t| t.render(&grant.claims).ok()),
        );
        let client = self.ctx.hub.client_id();
        let conn = Arc::new(Conn {
            id: self.ctx.directory.id(client),
            params: HashMap::from([("namespace".to_string(), nsp.clone())]),
            headers: self.ctx.app.as_ref().map_or_else(
                || Arc::from([]),
                |a| a.capture(&self.handshake.request.headers),
            ),
            started: Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            publish_to: None,
        });
        let auth_payload = auth.clone().unwrap_or_else(|| json!({}));
        let opening = match &self.ctx.app {
            Some(app) => {
                let connecting = Connecting {
                    id: &conn.id,
                    params: &conn.params,
                    transport: "socketio",
                    subjects: &subjects,
                    remote_addr: self.handshake.remote,
                    user_agent: self
                        .handshake
                        .request
                        .headers
                        .get(http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok()),
                    auth: Some(&auth_payload),
                };
                match app.connect(&connecting, &conn.headers).await {
                    Ok(o) => o,
                    Err(r) => {
                        let (message, data) = r.message_and_data();
                        refuse(self, &message, data);
                        return;
                    }
                }
            }
            None => None,
        };
        // Connection-state recovery: a client back with its pid and last offset is
        // replayed what it missed (its old pid answered: `socket.recovered`).
        let (pid, offset) = match (self.sio.config.recovery, auth.as_ref()) {
            (true, Some(a)) => (
                a.get("pid").and_then(Value::as_str).map(str::to_string),
                a.get("offset").and_then(Value::as_str).map(str::to_string),
            ),
            _ => (None, None),
        };
        let cursor = pid.as_ref().and(offset.as_deref());
        let joined = match self
            .ctx
            .join(client, &subjects, cursor, opening.as_ref())
            .await
        {
            Ok(j) => j,
            Err(e) => {
                refuse(self, &e.to_string(), None);
                return;
            }
        };
        let registration =
            self.ctx
                .directory
                .register(client, joined.queue.clone(), self.ctx.spec.clone());
        let mut answer = json!({ "sid": conn.id });
        if self.sio.config.recovery {
            let recovered = cursor.is_some() && !joined.queue.has_reset();
            answer["pid"] = match (recovered, pid) {
                (true, Some(pid)) => Value::from(pid),
                _ => Value::from(format!("p{}", conn.id)),
            };
        }
        self.send_sio(Kind::Connect, &nsp, None, &[Arg::Json(answer)]);
        // Most sessions connect one namespace: room for exactly one more, not four.
        self.sockets.reserve_exact(1);
        self.sockets.push(Socket {
            nsp,
            queue: joined.queue,
            _memberships: joined.memberships,
            _registration: registration,
            conn,
            claims: grant.claims,
            publish,
            bucket: None,
        });
    }

    /// Moves the events of socket `i`'s queue into the outbox.
    fn flush(&mut self, i: usize) -> Option<Outcome> {
        let s = &self.sockets[i];
        let batch = s.queue.take();
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["socketio"]);
        let recovery = self.sio.config.recovery;
        if batch.dropped > 0 || batch.reset.is_some() {
            // Messages were lost for this socket (it fell behind, or a resume could
            // not replay): the client refetches its state, as `fanfare.reset` says
            // on the other transports.
            let reason = batch.reset.unwrap_or("slow_consumer");
            send_sio(
                &self.engine,
                Kind::Event,
                &s.nsp,
                None,
                &[
                    Arg::Json(Value::from("fanfare:reset")),
                    Arg::Json(json!({ "reason": reason, "dropped": batch.dropped })),
                ],
            );
        }
        for e in &batch.events {
            let offset = (recovery && !e.id.is_empty()).then_some(e.id.as_str());
            // Encoded once per event and namespace, shared by every socket.
            let encoded = e.sio(&s.nsp, offset.is_some(), || {
                socketio::event_from_payload(&s.nsp, &e.name, &e.payload, e.spread, offset)
            });
            self.engine.send(Packet::message(encoded.text.clone()));
            for a in &encoded.attachments {
                self.engine.send(Packet::Binary(a.clone()));
            }
        }
        self.ctx.delivered(
            &deliveries,
            batch.events.len() as u64,
            batch.events.front().map(|e| e.received),
        );
        match batch.closed {
            Some(Closed::SlowConsumer) => Some(Outcome::SlowConsumer),
            Some(Closed::ByApp(_)) => {
                let s = self.sockets.swap_remove(i);
                self.send_sio(Kind::Disconnect, &s.nsp, None, &[]);
                self.ctx
                    .ended(Some(&s.conn), "socketio", Outcome::ClosedByApp, &s.queue);
                None
            }
            None => None,
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The index of a queue with something to take.
async fn any_ready(queues: &[Arc<ClientQueue>]) -> usize {
    let waits = queues.iter().map(|q| Box::pin(q.ready()));
    futures::future::select_all(waits).await.1
}
