//! A diagnostic echo session for the Autobahn conformance suite (`ws.echo: true`):
//! every data message is sent back as is, compressed when the client negotiated
//! permessage-deflate (with the window it allowed).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::WsSocket;
use crate::wire::ws::{always_deflated_frame, binary_frame, text_frame};

/// A test-only echo session for the Autobahn conformance suite: every data message is
/// sent back as is.
pub async fn echo<S>(mut ws: Box<WebSocketStream<WsSocket<S>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let window = ws.get_ref().deflate_window();
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                super::ws_socket::close_for_error(&mut ws, &e).await;
                return;
            }
        };
        let sent = match (msg, window) {
            (Message::Close(_), _) => {
                let _ = ws.flush().await;
                return;
            }
            (Message::Text(t), Some(bits)) => {
                write_frame(
                    &mut ws,
                    always_deflated_frame(&text_frame(t.as_bytes()), bits),
                )
                .await
            }
            (Message::Binary(b), Some(bits)) => {
                write_frame(&mut ws, always_deflated_frame(&binary_frame(&b), bits)).await
            }
            (m @ (Message::Text(_) | Message::Binary(_)), None) => ws.send(m).await.is_ok(),
            _ => true,
        };
        if !sent {
            return;
        }
    }
}

/// Writes a frame fanfare built, after anything tungstenite has pending (a pong).
async fn write_frame<S>(ws: &mut WebSocketStream<WsSocket<S>>, frame: Bytes) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.flush().await.is_err() {
        return false;
    }
    let socket = ws.get_mut();
    socket.write_all(&frame).await.is_ok() && socket.flush().await.is_ok()
}
