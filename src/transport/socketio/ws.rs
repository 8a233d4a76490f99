//! Engine.IO over WebSocket upgraded to from long-polling (`2probe` / `3probe`, the
//! pending poll ended with a noop, `5`): a pump between the socket and the session's
//! outbox. A session opened over WebSocket holds its socket itself
//! (`session::direct`).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Ended, Engine, Mode};

/// Batches of at most this many packets are written a packet at a time, as the
/// reference server writes them (a client reading frame by frame, like the protocol's
/// own test suite, sees them apart); more go out in one write.
pub(super) const SEPARATE_WRITES: usize = 4;
use crate::wire::engineio::{self, Kind, Packet};

/// An upgrade of a polling session: the probe, then `5`, then the pump. A second
/// WebSocket for a session already upgraded is closed, the session left alone.
pub async fn serve_upgrade<S>(mut ws: Box<WebSocketStream<S>>, engine: Arc<Engine>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if !engine.attach_ws() {
        let _ = ws.close().await;
        return;
    }
    let mut probed = false;
    loop {
        let Some(Ok(msg)) = ws.next().await else {
            // The probe failed: the session goes on over polling.
            engine.abandon_upgrade();
            return;
        };
        let Message::Text(t) = msg else {
            continue;
        };
        match engineio::decode_text(t.as_str()) {
            Ok(Packet::Text(Kind::Ping, p)) if p == "probe" && !probed => {
                if !engine.begin_upgrade() {
                    engine.abandon_upgrade();
                    let _ = ws.close().await;
                    return;
                }
                probed = true;
                if ws
                    .send(Message::text(engineio::encode_text(Kind::Pong, "probe")))
                    .await
                    .is_err()
                {
                    engine.abandon_upgrade();
                    return;
                }
                // Ends the poll the client holds, so it can finish the upgrade.
                engine.send(Packet::bare(Kind::Noop));
            }
            Ok(Packet::Text(Kind::Upgrade, _)) if probed => {
                engine.set_mode(Mode::Websocket);
                pump(ws, &engine).await;
                return;
            }
            _ => {
                engine.abandon_upgrade();
                let _ = ws.close().await;
                return;
            }
        }
    }
}

/// Moves packets both ways until the session or the socket ends.
async fn pump<S>(mut ws: Box<WebSocketStream<S>>, engine: &Arc<Engine>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        tokio::select! {
            frame = ws.next() => {
                let packet = match packet_of(frame) {
                    Inbound::Packet(p) => p,
                    Inbound::Control => continue,
                    Inbound::Invalid => {
                        engine.end(Ended::ByServer);
                        let _ = ws.close().await;
                        return;
                    }
                    Inbound::Gone => {
                        engine.end(Ended::ByClient);
                        let _ = ws.flush().await;
                        return;
                    }
                };
                if !engine.deliver(packet).await {
                    let _ = ws.close().await;
                    return;
                }
            }
            () = engine.wait(Mode::Websocket) => {
                let packets = engine.take();
                // A few packets (the common case: a handshake answer, then the app's
                // first event) go out one write each, as the reference server writes
                // them, so a client reading frame by frame sees them apart; a burst
                // goes out in one write.
                let one_by_one = packets.len() <= SEPARATE_WRITES;
                let written = async {
                    for p in packets {
                        let Some(m) = frame_of(p) else { continue };
                        let sent = if one_by_one { ws.send(m).await } else { ws.feed(m).await };
                        if sent.is_err() {
                            return false;
                        }
                    }
                    ws.flush().await.is_ok()
                };
                // A client that stopped reading holds this write; once its outbox
                // overflows the session is over, and so is the write.
                let ok = tokio::select! {
                    ok = written => ok,
                    () = engine.overflowed() => false,
                };
                if !ok {
                    engine.end(Ended::ByClient);
                    return;
                }
                if engine.ended().is_some() {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ws.close()).await;
                    return;
                }
            }
        }
    }
}

/// What a client's WebSocket frame is to Engine.IO.
pub(super) enum Inbound {
    /// A packet.
    Packet(Packet),
    /// A WebSocket control frame (tungstenite answers pings itself).
    Control,
    /// Not an Engine.IO packet: the session is closed.
    Invalid,
    /// The socket closed or failed.
    Gone,
}

/// Reads a frame as an Engine.IO packet.
pub(super) fn packet_of(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Inbound {
    match frame {
        Some(Ok(Message::Text(t))) => match engineio::decode_text(t.as_str()) {
            Ok(p) => Inbound::Packet(p),
            Err(_) => Inbound::Invalid,
        },
        Some(Ok(Message::Binary(b))) => Inbound::Packet(Packet::Binary(b)),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Control,
        Some(Ok(Message::Close(_)) | Err(_)) | None => Inbound::Gone,
    }
}

/// A packet as a WebSocket frame; `None` for a noop (an upgrade's leftover: nothing to
/// say over WebSocket).
pub(super) fn frame_of(p: Packet) -> Option<Message> {
    match p {
        Packet::Text(Kind::Noop, _) => None,
        Packet::Text(kind, data) => Some(Message::text(engineio::encode_text(kind, &data))),
        Packet::Binary(b) => Some(Message::Binary(b)),
    }
}
