//! The WebSocket socket side: tungstenite's buffers, the `101` and wrapping, a batch
//! of pre-encoded frames, and the close frame that answers a protocol error.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::ws_io::{Socket, is_corrupt};
use crate::config::WsConfig;
use crate::hub::gate::FrameKind;
use crate::hub::{Batch, Event};
use crate::wire::deflate::Agreed;
use crate::wire::protocol;
use crate::wire::ws::{close, close_frame, switching_protocols, text_frame};

/// Bytes tungstenite reads at once. Small: an idle connection keeps this buffer, and
/// what clients send (subscribe, publish, pong) is mostly under 256 bytes; a larger
/// frame grows the buffer to its size (up to `ws.max_message`).
const READ_BUFFER: usize = 256;
/// How long a closing handshake may take before the socket is dropped.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A batch's frames in one buffer: resets first, then the events, each as its `kind`
/// frame (shared by every client of that kind, compressed ones included). A lone
/// event's shared frame is written as is, without a copy (the common case at a steady
/// rate). In raw mode the frames carry the payloads alone, and resets have no frame;
/// resets always go plain.
pub(super) fn assemble(batch: &Batch, kind: FrameKind) -> Bytes {
    let frame = |e: &Event| kind.frame(e).clone();
    let raw = matches!(kind, FrameKind::Raw | FrameKind::RawDeflated);
    if raw {
        if batch.events.len() == 1 {
            return frame(&batch.events[0]);
        }
        let mut buf = BytesMut::new();
        for e in &batch.events {
            buf.put_slice(&frame(e));
        }
        return buf.freeze();
    }
    if batch.events.len() == 1 && batch.reset.is_none() && batch.dropped == 0 {
        return frame(&batch.events[0]);
    }
    let mut buf = BytesMut::new();
    if let Some(reason) = batch.reset {
        buf.put_slice(&text_frame(protocol::reset_reason(reason).as_bytes()));
    }
    if batch.dropped > 0 {
        buf.put_slice(&text_frame(protocol::reset(batch.dropped).as_bytes()));
    }
    for e in &batch.events {
        buf.put_slice(&frame(e));
    }
    buf.freeze()
}

fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Writes the `101` on a socket taken out of pingora and wraps it; `None` when the
/// client is already gone. With `deflate` (an offer the route accepted) the `101`
/// names the extension and the socket inflates what the client compresses.
pub async fn accept<S>(
    mut stream: S,
    accept_key: &str,
    config: &WsConfig,
    deflate: Option<&Agreed>,
) -> Option<Box<WebSocketStream<Socket<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let extensions = deflate.map(|a| a.response.as_str());
    stream
        .write_all(&switching_protocols(accept_key, extensions))
        .await
        .ok()?;
    stream.flush().await.ok()?;
    let socket = Socket::new(stream, deflate, config.max_message);
    Some(Box::new(
        WebSocketStream::from_raw_socket(socket, Role::Server, Some(ws_config(config.max_message)))
            .await,
    ))
}

/// Writes frames fanfare built (`buf`) straight to the socket, after flushing what
/// tungstenite may hold (a pong or close answer to a frame it read) when
/// `flush_first`, so the two never interleave.
pub(super) async fn write_frames<S>(
    ws: &mut WebSocketStream<Socket<S>>,
    buf: &[u8],
    flush_first: bool,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if flush_first && ws.flush().await.is_err() {
        return false;
    }
    let socket = ws.get_mut();
    socket.write_all(buf).await.is_ok() && socket.flush().await.is_ok()
}

/// Answers a protocol error with its close frame (1002, or 1007 for invalid UTF-8)
/// written straight to the socket, so the client sees why instead of 1006.
/// tungstenite does not send one itself, and its state after a read error refuses
/// further sends.
pub(super) async fn close_for_error<S>(ws: &mut WebSocketStream<S>, e: &WsError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match e {
        WsError::Utf8(_) => close_frame(close::INVALID_DATA, "invalid UTF-8"),
        WsError::Io(io) if is_corrupt(io) => {
            close_frame(close::INVALID_DATA, "invalid compressed data")
        }
        // A client that vanished without a close frame cannot read one.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return,
        WsError::Protocol(p) => close_frame(close::PROTOCOL, &p.to_string()),
        _ => return,
    };
    let socket = ws.get_mut();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.write_all(&frame).await.is_ok() {
            let _ = socket.flush().await;
            let _ = socket.shutdown().await;
        }
    })
    .await;
}
