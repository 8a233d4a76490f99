//! No sticky sessions: a session stays with the instance that opened it (its sid
//! starts with that instance's id), and a request that lands on another instance is
//! relayed to it over NATS request-reply (`fanfare.eio.<instance>`).
//!
//! Operations (header `Fanfare-Eio-Op`): `get` (a poll), `post` (a payload), and for
//! an upgrade that lands elsewhere, `probe` (ends the pending poll), `upgrade` (the
//! session is on WebSocket now), `take` (what is queued for the WebSocket, held like a
//! poll) and `post_ws` (what the client sent over it). The answer's `Fanfare-Eio-Status` is `200`, or `400` for a refused
//! request or an unknown session (the client then reconnects by itself).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::polling::{self, Refused};
use super::ws::Inbound;
use super::{Mode, SioRoute};
use crate::broker::{Broker, Relayed};
use crate::wire::engineio::{self, Kind, Packet};

const OP: &str = "Fanfare-Eio-Op";
const SID: &str = "Fanfare-Eio-Sid";
const ROUTE: &str = "Fanfare-Eio-Route";
const STATUS: &str = "Fanfare-Eio-Status";

/// The subject an instance serves relays on.
pub fn subject(instance: &str) -> String {
    format!("fanfare.eio.{instance}")
}

/// The instance that owns `sid` (the part before its first dot).
pub fn owner(sid: &str) -> &str {
    sid.split('.').next().unwrap_or(sid)
}

/// How long a relayed poll may be held: past the heartbeat, something was sent or the
/// session has ended.
fn hold(sio: &SioRoute) -> Duration {
    sio.config.ping_interval.0 + sio.config.ping_timeout.0
}

/// This instance's Socket.IO routes by path; a reload swaps the map.
pub type SioRoutes = Arc<arc_swap::ArcSwap<HashMap<String, Arc<SioRoute>>>>;

/// Serves relayed requests for this instance's Socket.IO routes (by path, looked up
/// in `routes` as it is when each request arrives).
pub fn serve(broker: Broker, instance: &str, routes: SioRoutes, metrics: crate::metrics::Metrics) {
    let subject = subject(instance);
    tokio::spawn(async move {
        let mut connected = broker.connected();
        loop {
            if connected.wait_for(|c| *c).await.is_err() {
                return;
            }
            let mut requests = match broker.serve(&subject).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "Engine.IO relay subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(req) = requests.next().await {
                let (broker, routes, held) = (
                    broker.clone(),
                    routes.load_full(),
                    metrics.socketio_polls.clone(),
                );
                metrics.socketio_relays.with_label_values(&["served"]).inc();
                tokio::spawn(async move {
                    let Some(reply) = req.reply.clone() else {
                        return;
                    };
                    let (status, body) = answer(&routes, &req, &held).await;
                    let _ = broker.respond(reply, &[(STATUS, status)], body).await;
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn answer(
    routes: &HashMap<String, Arc<SioRoute>>,
    req: &Relayed,
    held: &prometheus::IntGauge,
) -> (&'static str, Bytes) {
    let unknown = || ("400", polling::error_body(1, "Session ID unknown"));
    let Some(sio) = req.header(ROUTE).and_then(|r| routes.get(r)) else {
        return unknown();
    };
    let Some(engine) = req.header(SID).and_then(|s| sio.registry.get(s)) else {
        return unknown();
    };
    let bad = ("400", polling::error_body(3, "Bad request"));
    match req.header(OP) {
        Some("get") => match polling::poll(&engine, tokio::time::sleep(hold(sio)), held).await {
            Ok(Some(body)) => ("200", body),
            Ok(None) => (
                "200",
                Bytes::from(engineio::encode_payload(&[Packet::bare(Kind::Noop)])),
            ),
            Err(Refused) => bad,
        },
        Some("post") => match polling::push(&engine, &req.payload, sio.config.max_payload).await {
            Ok(()) => ("200", Bytes::from_static(b"ok")),
            Err(Refused) => bad,
        },
        Some("post_ws") if engine.mode() == Mode::Websocket => {
            match engineio::decode_payload(&req.payload, sio.config.max_payload) {
                Ok(packets) => {
                    for p in packets {
                        if !engine.deliver(p).await {
                            break;
                        }
                    }
                    ("200", Bytes::from_static(b"ok"))
                }
                Err(_) => bad,
            }
        }
        Some("probe") if engine.begin_upgrade() => {
            engine.send(Packet::bare(Kind::Noop));
            ("200", Bytes::new())
        }
        Some("upgrade") if engine.mode() == Mode::Polling => {
            engine.set_mode(Mode::Websocket);
            ("200", Bytes::new())
        }
        Some("take") if engine.mode() == Mode::Websocket => {
            let _ = tokio::time::timeout(hold(sio), engine.wait(Mode::Websocket)).await;
            let mut packets = engine.take();
            if engine.ended().is_some() && packets.is_empty() {
                packets.push(Packet::bare(Kind::Close));
            }
            ("200", Bytes::from(engineio::encode_payload(&packets)))
        }
        _ => bad,
    }
}

/// A relayed request to the session's owner; `Err` (the owner is gone, or refused):
/// a `400`'s body.
pub async fn request(
    broker: &Broker,
    sio: &SioRoute,
    route: &str,
    sid: &str,
    op: &str,
    body: Bytes,
) -> Result<Bytes, Bytes> {
    let timeout = hold(sio) + Duration::from_secs(5);
    let headers = [(OP, op), (SID, sid), (ROUTE, route)];
    match broker
        .request(subject(owner(sid)), &headers, body, timeout)
        .await
    {
        Ok(r) if r.header(STATUS) == Some("200") => Ok(r.payload),
        Ok(r) => Err(r.payload),
        Err(e) => {
            tracing::debug!(error = %e, "Engine.IO relay failed");
            Err(polling::error_body(1, "Session ID unknown"))
        }
    }
}

/// An upgrade that landed away from the session's owner: the probe answered here,
/// then packets relayed both ways (`post` in, `take` out) until either side ends.
pub async fn remote_upgrade<S>(
    mut ws: Box<WebSocketStream<S>>,
    broker: Broker,
    sio: Arc<SioRoute>,
    route: String,
    sid: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let call = |op: &'static str, body: Bytes| {
        let (broker, sio, route, sid) = (broker.clone(), sio.clone(), route.clone(), sid.clone());
        async move { request(&broker, &sio, &route, &sid, op, body).await }
    };
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            return;
        };
        match engineio::decode_text(t.as_str()) {
            Ok(Packet::Text(Kind::Ping, p)) if p == "probe" => {
                if call("probe", Bytes::new()).await.is_err()
                    || ws
                        .send(Message::text(engineio::encode_text(Kind::Pong, "probe")))
                        .await
                        .is_err()
                {
                    let _ = ws.close().await;
                    return;
                }
            }
            Ok(Packet::Text(Kind::Upgrade, _)) => {
                if call("upgrade", Bytes::new()).await.is_err() {
                    let _ = ws.close().await;
                    return;
                }
                break;
            }
            _ => {
                let _ = ws.close().await;
                return;
            }
        }
    }
    let mut take = Box::pin(call("take", Bytes::new()));
    loop {
        tokio::select! {
            frame = ws.next() => {
                let packet = match super::ws::packet_of(frame) {
                    Inbound::Packet(p) => p,
                    Inbound::Control => continue,
                    Inbound::Invalid => break,
                    Inbound::Gone => {
                        // The client left: the owner hears it as a close.
                        let close = engineio::encode_payload(&[Packet::bare(Kind::Close)]);
                        let _ = call("post_ws", Bytes::from(close)).await;
                        return;
                    }
                };
                let body = Bytes::from(engineio::encode_payload(&[packet]));
                if call("post_ws", body).await.is_err() {
                    break;
                }
            }
            taken = &mut take => {
                let Ok(payload) = taken else { break };
                let Ok(packets) = engineio::decode_payload(&payload, usize::MAX) else { break };
                let mut closed = false;
                for p in packets {
                    closed |= matches!(p, Packet::Text(Kind::Close, _));
                    let Some(m) = super::ws::frame_of(p) else { continue };
                    if ws.feed(m).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() || closed {
                    break;
                }
                take = Box::pin(call("take", Bytes::new()));
            }
        }
    }
    let _ = ws.close().await;
}
