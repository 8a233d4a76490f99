//! A session opened over WebSocket holds its socket in its own task: one task per
//! connection, as fanfare's own WebSocket has, instead of a session task and a pump
//! task with the outbox between them. An event goes out as a frame encoded once and
//! shared by every socket of its namespace, written by the task that took it from the
//! queue.
//!
//! Invariant (as in `transport::ws`): raw writes never interleave with tungstenite's
//! own frames. tungstenite writes only the pong or close answer to a frame it read,
//! so after such a frame it is flushed before the next raw write; nothing else
//! touches the socket while a raw write is under way.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::super::ws::{Inbound, SEPARATE_WRITES, packet_of};
use super::super::{Ended, Engine};
use crate::transport::WsSocket;
use crate::transport::ws_socket::CLOSE_TIMEOUT;
use crate::wire::engineio::{self, Kind, Packet};
use crate::wire::ws::{binary_frame, text_frame};

/// The session's WebSocket and the frames waiting for it, in order.
pub(super) struct Direct {
    ws: Box<WebSocketStream<WsSocket<TcpStream>>>,
    flush_first: bool,
    frames: Vec<Bytes>,
}

impl Direct {
    pub(super) fn new(ws: Box<WebSocketStream<WsSocket<TcpStream>>>) -> Direct {
        Direct {
            ws,
            flush_first: false,
            frames: Vec::new(),
        }
    }

    /// The next client frame, as Engine.IO sees it.
    pub(super) async fn next(&mut self) -> Inbound {
        let frame = self.ws.next().await;
        if matches!(frame, Some(Ok(Message::Ping(_) | Message::Close(_)))) {
            self.flush_first = true;
        }
        packet_of(frame)
    }

    /// Moves what the session queued in the engine's outbox (answers, pings, acks from
    /// the app) behind the frames already waiting, keeping their order.
    pub(super) fn take_outbox(&mut self, engine: &Engine) {
        for p in engine.take() {
            self.push_packet(p);
        }
    }

    /// Queues a packet's frame (a noop has none over WebSocket).
    pub(super) fn push_packet(&mut self, p: Packet) {
        match p {
            Packet::Text(Kind::Noop, _) => {}
            Packet::Text(kind, data) => self
                .frames
                .push(text_frame(engineio::encode_text(kind, &data).as_bytes())),
            Packet::Binary(b) => self.frames.push(binary_frame(&b)),
        }
    }

    /// Queues an encoded frame.
    pub(super) fn push_frame(&mut self, frame: Bytes) {
        self.frames.push(frame);
    }

    /// Whether frames wait.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes the waiting frames; `false` when the socket failed.
    pub(super) async fn write(&mut self) -> bool {
        let frames = std::mem::take(&mut self.frames);
        if std::mem::take(&mut self.flush_first) && self.ws.flush().await.is_err() {
            return false;
        }
        let socket = self.ws.get_mut();
        if frames.len() <= SEPARATE_WRITES {
            for f in &frames {
                if socket.write_all(f).await.is_err() {
                    return false;
                }
            }
        } else {
            let mut buf = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in &frames {
                buf.extend_from_slice(f);
            }
            if socket.write_all(&buf).await.is_err() {
                return false;
            }
        }
        socket.flush().await.is_ok()
    }

    /// The session is over: what is left (the server's close packet) is written and
    /// the socket closed, unless the client went first.
    pub(super) async fn end(mut self, engine: &Engine) {
        if engine.ended() == Some(Ended::ByClient) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
            return;
        }
        self.take_outbox(engine);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.write().await {
                let _ = self.ws.close().await;
            }
        })
        .await;
    }
}

/// A direct session's next client frame; never, for a session without a socket.
pub(super) async fn next_frame(direct: &mut Option<Direct>) -> Inbound {
    match direct {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}
