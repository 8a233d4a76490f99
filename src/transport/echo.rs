//! A diagnostic echo session for the Autobahn conformance suite (`ws.echo: true`):
//! every data message is sent back as is, compressed when the client negotiated
//! permessage-deflate (with the window it allowed).

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::WsSocket;
use super::ws_socket::write_frames;
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
                write_frames(
                    &mut ws,
                    &always_deflated_frame(&text_frame(t.as_bytes()), bits),
                    true,
                )
                .await
            }
            (Message::Binary(b), Some(bits)) => {
                write_frames(
                    &mut ws,
                    &always_deflated_frame(&binary_frame(&b), bits),
                    true,
                )
                .await
            }
            (m @ (Message::Text(_) | Message::Binary(_)), None) => ws.send(m).await.is_ok(),
            _ => true,
        };
        if !sent {
            return;
        }
    }
}
