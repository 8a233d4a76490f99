//! SSE clients: frames as a client sees them, a reader over any byte stream, raw GETs,
//! and publishing through the admin endpoint.

use std::net::SocketAddr;

use super::{DEADLINE, http_client, metric, wait_for};

/// One SSE frame as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An event.
    Event {
        /// `id:`
        id: Option<String>,
        /// `event:` (default `message`).
        event: String,
        /// The `data:` lines joined with `\n`.
        data: String,
    },
    /// A comment line (`: heartbeat`).
    Comment(String),
    /// `retry:` alone.
    Retry(u64),
}

/// Parses one SSE block (the text between blank lines).
pub fn parse_block(block: &str) -> Option<Frame> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    let mut retry = None;
    let mut comment = None;
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            comment = Some(c.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => retry = value.parse().ok(),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if !data.is_empty() {
        return Some(Frame::Event {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data: data.join("\n"),
        });
    }
    if let Some(r) = retry {
        return Some(Frame::Retry(r));
    }
    comment.map(Frame::Comment)
}

/// A reader of SSE frames over any byte stream.
pub struct SseReader<S> {
    source: S,
    buf: Vec<u8>,
}

/// Where an [`SseReader`] gets bytes from.
pub trait ByteSource {
    /// The next chunk; `None` at the end of the stream.
    fn chunk(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

impl ByteSource for reqwest::Response {
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        reqwest::Response::chunk(self)
            .await
            .ok()
            .flatten()
            .map(|b| b.to_vec())
    }
}

impl ByteSource for tokio::net::TcpStream {
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut b = vec![0u8; 64 * 1024];
        match self.read(&mut b).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                b.truncate(n);
                Some(b)
            }
        }
    }
}

/// A raw HTTP/1.1 body in chunked transfer encoding, de-chunked (fanfare's SSE over
/// HTTP/1.1 is chunked: one chunk per write).
pub struct Chunked {
    stream: tokio::net::TcpStream,
    raw: Vec<u8>,
}

impl Chunked {
    /// The body of `stream`, whose first `prefix` bytes were already read.
    pub fn new(stream: tokio::net::TcpStream, prefix: Vec<u8>) -> Chunked {
        Chunked {
            stream,
            raw: prefix,
        }
    }

    /// Takes every whole chunk out of `raw`; `None` once the last chunk has come.
    fn decode(&mut self, out: &mut Vec<u8>) -> Option<()> {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return Some(());
            };
            let size = std::str::from_utf8(&self.raw[..line_end]).expect("chunk size line");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if size == 0 {
                return None;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return Some(());
            }
            assert_eq!(
                &self.raw[start + size..start + size + 2],
                b"\r\n",
                "chunk framing"
            );
            out.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }
}

impl ByteSource for Chunked {
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            let mut out = Vec::new();
            let more = self.decode(&mut out);
            if !out.is_empty() {
                return Some(out);
            }
            more?;
            let read = self.stream.chunk().await?;
            self.raw.extend_from_slice(&read);
        }
    }
}

impl<S: ByteSource + Send> SseReader<S> {
    /// Wraps a source positioned at the start of the body.
    pub fn new(source: S) -> Self {
        SseReader {
            source,
            buf: Vec::new(),
        }
    }

    /// Wraps a source whose first bytes (e.g. after an HTTP head) are already read.
    pub fn with_prefix(source: S, prefix: Vec<u8>) -> Self {
        SseReader {
            source,
            buf: prefix,
        }
    }

    /// The next frame; `None` when the stream ends. Panics after [`DEADLINE`].
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(DEADLINE, self.next_inner())
            .await
            .expect("an SSE frame within the deadline")
    }

    /// The next frame without a deadline; `None` when the stream ends.
    pub async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(f) = parse_block(text.trim_end_matches('\n')) {
                    return Some(f);
                }
                continue;
            }
            let chunk = self.source.chunk().await?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event, skipping comments and `retry:` frames.
    pub async fn next_event(&mut self) -> Option<(Option<String>, String, String)> {
        loop {
            match self.next().await? {
                Frame::Event { id, event, data } => return Some((id, event, data)),
                _ => continue,
            }
        }
    }

    /// The underlying source.
    pub fn source(&mut self) -> &mut S {
        &mut self.source
    }
}

/// Opens an SSE stream with reqwest and checks the response head.
pub async fn sse_connect(client: &reqwest::Client, url: &str) -> SseReader<reqwest::Response> {
    let r = client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE request");
    assert_eq!(r.status(), 200, "SSE status for {url}");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    SseReader::new(r)
}

/// Sends a raw HTTP/1.1 GET and returns the stream and the response head (status line
/// and headers), with whatever body bytes arrived with it.
pub async fn raw_get(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .expect("response head within the deadline")
            .unwrap();
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&b[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let rest = buf[pos + 4..].to_vec();
            return (s, head, rest);
        }
    }
}

/// Publishes through fanfare's admin endpoint and checks the 202.
pub async fn publish(
    admin: SocketAddr,
    subject: &str,
    event: Option<&str>,
    body: impl Into<reqwest::Body>,
) {
    let mut req = http_client()
        .post(format!("http://{admin}/publish/{subject}"))
        .body(body);
    if let Some(e) = event {
        req = req.header("fanfare-event", e);
    }
    let r = req.send().await.expect("publish request");
    let status = r.status();
    assert_eq!(
        status,
        202,
        "publish: {}",
        r.text().await.unwrap_or_default()
    );
}

/// Publishes `n` messages of 16 KiB on `subject`, each starting with its number in six
/// digits and a colon (more than kernel buffers and a small queue hold: what the
/// slow-consumer tests need).
pub async fn publish_numbered(admin: SocketAddr, subject: &str, n: usize) {
    for i in 0..n {
        let body = format!("{i:06}:{}", "x".repeat(16 * 1024));
        publish(admin, subject, None, body).await;
    }
}

/// Waits until `series` in `/metrics` equals `value`.
pub async fn wait_metric(admin: SocketAddr, series: &str, value: f64) {
    wait_for(&format!("{series} == {value}"), DEADLINE, || async move {
        (metric(admin, series).await == Some(value)).then_some(())
    })
    .await;
}
