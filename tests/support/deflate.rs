//! A WebSocket client written frame by frame that may offer permessage-deflate (RFC
//! 7692), for tests that look at the bytes on the wire: which extension the `101`
//! names, which frames carry RSV1, what a compressed frame holds, and whether every
//! frame arrived whole.

use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;

/// One frame as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct WsFrame {
    /// FIN, RSV1-3 and the opcode.
    pub first: u8,
    /// The payload as sent (compressed when RSV1 is set).
    pub payload: Vec<u8>,
}

impl WsFrame {
    /// RSV1: the message is compressed.
    pub fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }
    /// The payload, inflated when compressed.
    pub fn text(&self) -> String {
        let bytes = if self.compressed() {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).unwrap_or_else(|e| {
            panic!(
                "not UTF-8 from byte {} (a frame cut or mixed with another)",
                e.utf8_error().valid_up_to()
            )
        })
    }
}

/// A client socket after the `101`.
pub struct DeflateWs {
    /// The socket.
    pub socket: TcpStream,
    /// The `101` response head, lowercased.
    pub head: String,
    buf: Vec<u8>,
}

impl DeflateWs {
    /// Upgrades at `path` with `offer` as `Sec-WebSocket-Extensions` (none if empty).
    pub async fn connect(addr: SocketAddr, path: &str, offer: &str) -> DeflateWs {
        let socket = TcpStream::connect(addr).await.unwrap();
        DeflateWs::upgrade(socket, addr, path, offer).await
    }

    /// Like [`DeflateWs::connect`], with a receive buffer of `bytes` (a client that
    /// stops reading fills it, and then fanfare's send buffer, quickly).
    pub async fn connect_small(addr: SocketAddr, path: &str, bytes: u32) -> DeflateWs {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(bytes).unwrap();
        let socket = s.connect(addr).await.unwrap();
        DeflateWs::upgrade(socket, addr, path, "").await
    }

    async fn upgrade(
        mut socket: TcpStream,
        addr: SocketAddr,
        path: &str,
        offer: &str,
    ) -> DeflateWs {
        let ext = if offer.is_empty() {
            String::new()
        } else {
            format!("Sec-WebSocket-Extensions: {offer}\r\n")
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        socket.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = tokio::time::timeout(DEADLINE, socket.read(&mut b))
                .await
                .expect("the 101 within the deadline")
                .unwrap();
            assert!(n > 0, "closed before the 101");
            buf.extend_from_slice(&b[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        buf.drain(..end);
        DeflateWs { socket, head, buf }
    }

    /// The negotiated `Sec-WebSocket-Extensions`, if any.
    pub fn extensions(&self) -> Option<String> {
        self.head.lines().find_map(|l| {
            l.strip_prefix("sec-websocket-extensions:")
                .map(|v| v.trim().to_string())
        })
    }

    /// The next frame (panics at the deadline or when the connection ends).
    pub async fn frame(&mut self) -> WsFrame {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return frame;
            }
            let mut b = [0u8; 16 * 1024];
            let n = tokio::time::timeout(DEADLINE, self.socket.read(&mut b))
                .await
                .expect("a frame within the deadline")
                .unwrap();
            assert!(n > 0, "the connection ended");
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// The next data frame, past pings.
    pub async fn data(&mut self) -> WsFrame {
        loop {
            let f = self.frame().await;
            if f.first & 0x0f != 0x9 {
                return f;
            }
        }
    }

    /// The close code of the next close frame.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.first & 0x0f == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    /// Sends a masked frame.
    pub async fn send(&mut self, first: u8, payload: &[u8]) {
        self.socket
            .write_all(&masked(first, payload))
            .await
            .unwrap();
    }

    /// Sends `text` as one compressed text message.
    pub async fn send_compressed(&mut self, text: &str) {
        self.send(0xc1, &deflate(text.as_bytes())).await;
    }
}

/// A client frame, masked.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x11, 0xc3, 0x07];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// A server frame at the start of `buf`, and its length on the wire.
fn parse(buf: &[u8]) -> Option<(WsFrame, usize)> {
    let (first, b1) = (*buf.first()?, *buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((WsFrame { first, payload }, at + len))
}

/// A message compressed as permessage-deflate sends it (no context, tail stripped).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(c.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A compressed message's payload inflated (the stripped tail added back).
pub fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "inflated whole");
    out
}
