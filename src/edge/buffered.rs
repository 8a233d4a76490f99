//! A write buffer in front of an accepted connection, so a small response goes out in
//! one `send`: pingora writes a response's head and its body separately, and fanfare's
//! own accept loop hands pingora an unbuffered stream (pingora's listener would add a
//! 1,460-byte buffer, but its setter is private). Without it every proxied response was
//! two syscalls (three with the request to the app), and the second woke the client
//! twice.
//!
//! The buffer holds at most [`CAPACITY`] bytes and only between a write and the next
//! flush: pingora flushes at the end of every response head without a body and after
//! every body write, as it must with its own buffered streams. Larger writes go
//! straight to the socket (after what is buffered). It is allocated on first use and
//! freed at every flush, so an idle keep-alive connection holds none.
//!
//! Invariant: bytes are written to the socket in the order they were written here; a
//! flush returns only once everything buffered is on the socket.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a write buffer holds: a response head and a small body.
pub const CAPACITY: usize = 8 * 1024;

/// An accepted connection with a write buffer.
#[derive(Debug)]
pub struct Buffered {
    inner: L4,
    out: Vec<u8>,
    /// How much of `out` is on the socket already.
    sent: usize,
}

impl Buffered {
    /// Wraps an accepted stream.
    pub fn new(inner: L4) -> Buffered {
        Buffered {
            inner,
            out: Vec::new(),
            sent: 0,
        }
    }

    /// The stream, once everything written is flushed (`None` while bytes are still
    /// buffered: the caller must flush first).
    pub fn into_inner(self) -> Option<L4> {
        (self.sent == self.out.len()).then_some(self.inner)
    }

    /// Writes out what is buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Freed, not kept: an idle connection holds no buffer.
        self.out = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() + buf.len() > CAPACITY {
            ready!(this.poll_drain(cx))?;
            if buf.len() > CAPACITY {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            tracing::debug!(error = %e, "shutting a connection down");
        }
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Buffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The stream under a boxed connection, for [`super::handoff`].
pub fn unwrap(stream: Box<dyn Any>) -> Option<L4> {
    match stream.downcast::<Buffered>() {
        Ok(b) => b.into_inner(),
        Err(other) => other.downcast::<L4>().ok().map(|b| *b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Buffered, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Buffered::new(server.into()), client)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_keep_their_order() {
        let (mut s, mut c) = pair().await;
        s.write_all(b"head;").await.unwrap();
        s.write_all(b"body").await.unwrap();
        assert_eq!(s.out, b"head;body", "held until the flush");
        let big = vec![b'x'; CAPACITY + 10];
        s.write_all(&big).await.unwrap();
        s.write_all(b";tail").await.unwrap();
        s.flush().await.unwrap();
        assert!(
            s.out.is_empty() && s.out.capacity() == 0,
            "freed at the flush"
        );
        let want = [&b"head;body"[..], &big, b";tail"].concat();
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        assert!(
            unwrap(Box::new(s)).is_some(),
            "flushed: the stream comes out"
        );
    }

    #[tokio::test]
    async fn an_unflushed_stream_does_not_come_out() {
        let (mut s, _c) = pair().await;
        s.write_all(b"pending").await.unwrap();
        assert!(unwrap(Box::new(s)).is_none());
    }
}
