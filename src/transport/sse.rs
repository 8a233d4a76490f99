//! The Server-Sent Events session: one client's queue written as SSE events to a raw
//! HTTP/1.1 connection (taken out of pingora) or to pingora's HTTP/2 stream.
//!
//! Invariants: the session waits on its queue, the heartbeat, shutdown and the peer
//! going away at once; everything queued is written in one write; a closed queue
//! (slow consumer under `disconnect`) ends the stream, even mid-write.

use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use pingora::prelude::Session as PingoraSession;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::ws_io::Socket;
use super::{Outcome, RouteContext};
use crate::drain::Why;
use crate::hub::gate::FrameKind;
use crate::hub::{Batch, ClientQueue, Closed};
use crate::wire::sse::{
    EXPIRED, HEARTBEAT, chunk_size_line, encode_closed, encode_drain, encode_reset,
    encode_reset_reason, encode_retry, encode_route_changed,
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
/// Shared with the hub ([`RawSink::share`]), it also takes chunks the hub writes
/// itself, whole, between the session's.
pub struct RawSink<S>(Socket<S>);

impl<S> RawSink<S>
where
    S: tokio::io::AsyncWrite + Unpin + Send,
{
    /// A sink writing to `stream`.
    pub fn new(stream: S) -> RawSink<S> {
        RawSink(Socket::plain(stream))
    }

    /// Lets the hub write `queue`'s events to the stream itself when nothing is
    /// queued ([`ClientQueue::push_or_write`]), as chunks of their own.
    pub fn share(&mut self, queue: Arc<ClientQueue>)
    where
        S: std::os::fd::AsRawFd,
    {
        self.0.share(queue, FrameKind::SseChunk);
    }

    /// Writes `head` (the response head) as is, unframed.
    pub async fn write_head(&mut self, head: Box<[u8]>) -> std::io::Result<()> {
        self.0.write_all(&head).await?;
        self.0.flush().await
    }

    /// Ends the chunked body (the last, empty chunk), so the client sees a clean end;
    /// the hub writes nothing after it. Bounded: a client that stopped reading (a slow
    /// consumer) cannot hold the connection open by never taking these five bytes.
    pub async fn finish(&mut self) {
        self.0.closing();
        let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
            let _ = self.0.write_all(b"0\r\n\r\n").await;
            let _ = self.0.flush().await;
        })
        .await;
    }
}

impl<S> Sink for RawSink<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn write(&mut self, buf: Bytes) -> std::io::Result<()> {
        if buf.is_empty() {
            // The rest of a chunk the hub began, if any, goes out with the flush.
            return self.0.flush().await;
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
        // Polled by hand so the scratch buffer lives on the stack, not in every held
        // stream's future.
        std::future::poll_fn(|cx| {
            let mut scratch = [0u8; 16];
            loop {
                let mut buf = tokio::io::ReadBuf::new(&mut scratch);
                match std::pin::Pin::new(&mut self.0).poll_read(cx, &mut buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                }
            }
        })
        .await;
    }
}

/// One SSE client: its queue and what it shares with its route.
pub struct Session {
    ctx: Arc<RouteContext>,
    queue: Arc<ClientQueue>,
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
            ctx,
            queue,
            client,
            expires,
        }
    }

    /// The route's context.
    pub fn ctx(&self) -> &RouteContext {
        &self.ctx
    }

    /// The session ended with `outcome`: tells the app, if it has callbacks.
    pub fn ended(&self, conn: Option<&super::Conn>, outcome: Outcome) {
        self.ctx.ended(conn, "sse", outcome, &self.queue);
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
        // The hub may now write to a shared stream itself (after anything queued).
        self.queue.gate.release();
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["sse"]);
        let mut expiry = super::expiry_timer(self.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                _ = self.ctx.heartbeat.notified() => Wake::Heartbeat,
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
                    self.queue.gate.release();
                }
                Wake::Queue => {
                    let batch = self.queue.take();
                    let closed = batch.closed.clone();
                    let (buf, n, oldest) = assemble(&batch);
                    if !buf.is_empty() || self.queue.gate.has_rest() {
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
                    self.queue.gate.release();
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
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn each_write_is_one_chunk() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut sink = RawSink::new(a);
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
