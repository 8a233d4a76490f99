//! WebSocket clients (tokio-tungstenite).

use std::net::SocketAddr;

use super::DEADLINE;

/// A WebSocket client connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to `path` with tokio-tungstenite's client handshake.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake to {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends a JSON text frame.
pub async fn ws_send(ws: &mut Ws, v: serde_json::Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .await
        .unwrap();
}

/// The next frame the server sends, within [`DEADLINE`].
pub async fn ws_next(ws: &mut Ws) -> Option<tokio_tungstenite::tungstenite::Message> {
    use futures::StreamExt;
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a WebSocket frame within the deadline")
        .map(|r| r.expect("no WebSocket error"))
}

/// The next JSON text message, skipping pings.
pub async fn ws_json(ws: &mut Ws) -> serde_json::Value {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws_next(ws).await.expect("the connection stays open") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until a close frame and returns its code.
pub async fn ws_close_code(ws: &mut Ws) -> u16 {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws_next(ws).await {
            Some(Message::Close(Some(f))) => return u16::from(f.code),
            Some(Message::Close(None)) => return 1005,
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// Sends a WebSocket handshake by hand (raw TCP) and returns the socket before any
/// answer is read (a test of a refused handshake reads it).
pub async fn raw_ws_request(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// Opens a WebSocket by hand (raw TCP) and returns the socket right after the `101`:
/// for clients that misbehave on purpose (never read, send bad frames).
pub async fn raw_ws(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let mut s = raw_ws_request(addr, path).await;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .expect("the 101 within the deadline")
            .unwrap();
        assert_eq!(n, 1, "the 101 arrives whole");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}
