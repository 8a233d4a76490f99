//! The Server-Sent Events session: one client's queue written as SSE events to a raw
//! HTTP/1.1 connection (taken out of pingora) or to pingora's HTTP/2 stream.
//!
//! Invariants: the session waits on its queue, the heartbeat, shutdown and the peer
//! going away at once; everything queued is written in one write; a closed queue
//! (slow consumer under `disconnect`) ends the stream, even mid-write.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use pingora::prelude::Session as PingoraSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{Outcome, RouteContext};
use crate::drain::Why;
use crate::hub::{Batch, ClientQueue, Closed};
use crate::wire::sse::{
    EXPIRED, HEARTBEAT, encode_closed, encode_drain, encode_reset, encode_reset_reason,
    encode_retry, encode_route_changed,
};

/// Where an SSE session writes, and how it learns the peer is gone.
pub trait Sink {
    /// Writes `buf` and flushes it.
    fn write(&mut self, buf: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Resolves when the peer has gone away.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// How long the end of a stream may take to write.
const FINISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A raw HTTP/1.1 connection taken out of pingora after the response head (which
/// says `transfer-encoding: chunked`). Each write is one chunk, written with one
/// vectored write (size line, the shared event bytes, CRLF): no copy of the events.
pub struct RawSink<S>(pub S);

impl<S> RawSink<S>
where
    S: tokio::io::AsyncWrite + Unpin + Send,
{
    /// Writes `head` (the response head) as is, unframed.
    pub async fn write_head(&mut self, head: Bytes) -> std::io::Result<()> {
        self.0.write_all(&head).await?;
        self.0.flush().await
    }

    /// Ends the chunked body (the last, empty chunk), so the client sees a clean end.
    /// Bounded: a client that stopped reading (a slow consumer) cannot hold the
    /// connection open by never taking these five bytes.
    pub async fn finish(&mut self) {
        let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
            let _ = self.0.write_all(b"0\r\n\r\n").await;
            let _ = self.0.flush().await;
        })
        .await;
    }
}

/// The size line of a chunk of `len` bytes: lowercase hex and CRLF, on the stack.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

impl<S> Sink for RawSink<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn write(&mut self, buf: Bytes) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut size = [0u8; 18];
        let size = chunk_size_line(buf.len(), &mut size);
        let mut parts = [
            std::io::IoSlice::new(size),
            std::io::IoSlice::new(&buf),
            std::io::IoSlice::new(b"\r\n"),
        ];
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            let n = self.0.write_vectored(parts).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut parts, n);
        }
        self.0.flush().await
    }

    async fn gone(&mut self) {
        // An SSE client sends nothing after its request: EOF or an error means it left.
        let mut scratch = [0u8; 16];
        loop {
            match self.0.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }
}

/// One SSE client: its queue and what it shares with its route.
pub struct Session {
    ctx: Arc<RouteContext>,
    queue: Arc<ClientQueue>,
    heartbeat: watch::Receiver<u64>,
    client: u64,
    expires: Option<tokio::time::Instant>,
}

enum Wake {
    Queue,
    Heartbeat,
    Drain(Why),
    Gone,
    Expired,
}

impl Session {
    /// A session for a client that has joined its topics; `expires` is when its
    /// credential runs out.
    pub fn new(
        ctx: Arc<RouteContext>,
        queue: Arc<ClientQueue>,
        client: u64,
        expires: Option<tokio::time::Instant>,
    ) -> Session {
        Session {
            heartbeat: ctx.heartbeat.clone(),
            ctx,
            queue,
            client,
            expires,
        }
    }

    /// Runs until the client leaves, the queue closes or fanfare shuts down. The
    /// response header has already been written.
    ///
    /// Borrows the session: an async fn taking it by value keeps the argument in its
    /// future next to the copy its body works on, and every held connection would pay
    /// that twice per call level (the task was 2,096 bytes by value, 1,184 borrowed).
    pub async fn run<S: Sink>(&mut self, sink: &mut S) -> Outcome {
        if sink
            .write(encode_retry(self.ctx.retry_hint()))
            .await
            .is_err()
        {
            return Outcome::WriteError;
        }
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["sse"]);
        let mut heartbeat_alive = true;
        let mut expiry = super::expiry_timer(self.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                r = self.heartbeat.changed(), if heartbeat_alive => if r.is_ok() { Wake::Heartbeat } else { heartbeat_alive = false; continue },
                why = self.ctx.drain.turn(self.client) => Wake::Drain(why),
                _ = sink.gone() => Wake::Gone,
                _ = super::expired(expiry.as_mut()) => Wake::Expired,
            };
            match wake {
                Wake::Expired => {
                    let _ = sink.write(Bytes::from_static(EXPIRED)).await;
                    return Outcome::Expired;
                }
                Wake::Gone => return Outcome::ClientClosed,
                Wake::Drain(why) => {
                    let retry = self.ctx.retry_hint();
                    let bye = match why {
                        Why::Shutdown => encode_drain(retry),
                        Why::RouteChanged => encode_route_changed(retry),
                    };
                    let _ = sink.write(bye).await;
                    return why.into();
                }
                Wake::Heartbeat => {
                    if sink.write(Bytes::from_static(HEARTBEAT)).await.is_err() {
                        return Outcome::WriteError;
                    }
                }
                Wake::Queue => {
                    let batch = self.queue.take();
                    let closed = batch.closed.clone();
                    let (buf, n, oldest) = assemble(&batch);
                    if !buf.is_empty() {
                        let queue = self.queue.clone();
                        let written = tokio::select! {
                            r = sink.write(buf) => r.is_ok(),
                            _ = queue.closed(), if closed.is_none() => false,
                        };
                        if !written {
                            return if queue.is_closed() {
                                Outcome::SlowConsumer
                            } else {
                                Outcome::WriteError
                            };
                        }
                        self.ctx.delivered(&deliveries, n, oldest);
                    }
                    match closed {
                        Some(Closed::SlowConsumer) => return Outcome::SlowConsumer,
                        Some(Closed::ByApp(reason)) => {
                            // Boxed: this rare write would otherwise widen every held
                            // stream's future.
                            let _ = Box::pin(sink.write(encode_closed(&reason))).await;
                            return Outcome::ClosedByApp;
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// Concatenates a batch (reset first, if there was a gap) into one buffer.
/// Returns the buffer, the number of events, and the oldest event's arrival time.
fn assemble(batch: &Batch) -> (Bytes, u64, Option<Instant>) {
    let mut reset = (batch.dropped > 0).then(|| encode_reset(batch.dropped));
    if let Some(reason) = batch.reset {
        let r = encode_reset_reason(reason);
        reset = Some(match reset {
            Some(d) => [r, d].concat().into(),
            None => r,
        });
    }
    let len = reset.as_ref().map_or(0, bytes::Bytes::len)
        + batch.events.iter().map(|e| e.sse().len()).sum::<usize>();
    let oldest = batch.events.front().map(|e| e.received);
    let n = batch.events.len() as u64;
    if batch.events.len() == 1 && reset.is_none() {
        return (batch.events[0].sse().clone(), n, oldest);
    }
    let mut buf = BytesMut::with_capacity(len);
    if let Some(r) = reset {
        buf.put_slice(&r);
    }
    for e in &batch.events {
        buf.put_slice(e.sse());
    }
    (buf.freeze(), n, oldest)
}

/// An SSE stream that stays inside pingora's session (HTTP/2).
pub struct PingoraSink<'a>(pub &'a mut PingoraSession);

impl Sink for PingoraSink<'_> {
    async fn write(&mut self, buf: Bytes) -> std::io::Result<()> {
        self.0
            .write_response_body(Some(buf), false)
            .await
            .map_err(std::io::Error::other)
    }

    async fn gone(&mut self) {
        super::poll::client_gone(self.0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_size_line(1, &mut b), b"1\r\n");
        assert_eq!(chunk_size_line(15, &mut b), b"f\r\n");
        assert_eq!(chunk_size_line(16, &mut b), b"10\r\n");
        assert_eq!(chunk_size_line(0xabc12, &mut b), b"abc12\r\n");
        assert_eq!(chunk_size_line(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
    }

    #[tokio::test]
    async fn each_write_is_one_chunk() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut sink = RawSink(a);
        sink.write(Bytes::from_static(b"data: x\n\n"))
            .await
            .unwrap();
        sink.write(Bytes::new()).await.unwrap();
        sink.finish().await;
        drop(sink);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..], b"9\r\ndata: x\n\n\r\n0\r\n\r\n");
    }
}
