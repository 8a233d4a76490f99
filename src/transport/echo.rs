//! A diagnostic echo session for the Autobahn conformance suite (`ws.echo: true`):
//! every data message is sent back as is.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A test-only echo session for the Autobahn conformance suite: every data message is
/// sent back as is.
pub async fn echo<S>(mut ws: Box<WebSocketStream<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                super::ws_socket::close_for_error(&mut ws, &e).await;
                return;
            }
        };
        if let Message::Close(_) = msg {
            let _ = ws.flush().await;
            return;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
