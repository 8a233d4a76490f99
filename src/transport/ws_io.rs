//! A client's socket when the hub may write to it too ([`Socket::share`]): every write
//! of the session's passes the shared gate ([`crate::hub::gate`]). Under a WebSocket
//! session it also inflates what the client compressed, when it negotiated
//! permessage-deflate: reads pass through an [`Inflater`] (so tungstenite, which has no
//! extension support, reads plain frames). An SSE stream uses it for the gate alone.
//! Without either it is the socket itself plus two pointers.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hub::ClientQueue;
use crate::hub::gate::FrameKind;
use crate::wire::deflate::{Agreed, Inflater};

/// A client's socket.
pub struct Socket<S> {
    inner: S,
    deflate: Option<Box<Deflate>>,
    /// When the hub may write to this socket too ([`crate::hub::gate`]): the client's
    /// queue, whose gate every write of the session's passes and which dropping the
    /// socket closes.
    shared: Option<Arc<ClientQueue>>,
}

struct Deflate {
    window_bits: u8,
    inflater: Inflater,
    /// Read from the socket, not yet through the inflater (an incomplete header).
    input: BytesMut,
    /// Through the inflater, not yet read by the frame reader.
    output: BytesMut,
    failed: bool,
}

impl<S> Socket<S> {
    /// `inner`, inflating client messages when `agreed`.
    pub fn new(inner: S, agreed: Option<&Agreed>, max_message: usize) -> Socket<S> {
        Socket {
            inner,
            deflate: agreed.map(|a| {
                Box::new(Deflate {
                    window_bits: a.window_bits,
                    inflater: Inflater::new(max_message),
                    input: BytesMut::new(),
                    output: BytesMut::new(),
                    failed: false,
                })
            }),
            shared: None,
        }
    }

    /// `inner` as it is (no inflating): for an SSE stream the hub may write to.
    pub fn plain(inner: S) -> Socket<S> {
        Socket {
            inner,
            deflate: None,
            shared: None,
        }
    }

    /// Nothing may follow what the session writes next (a close frame, the end of a
    /// chunked body): the hub stops writing to the socket for good.
    pub fn closing(&self) {
        if let Some(queue) = &self.shared {
            queue.gate.closing();
        }
    }

    /// Shares the socket with the hub, which writes `kind` frames to it for `queue`
    /// when nothing is queued ([`ClientQueue::push_or_write`]). The descriptor stays
    /// open until this socket is dropped, and its `Drop` closes the gate first.
    pub fn share(&mut self, queue: Arc<ClientQueue>, kind: FrameKind)
    where
        S: AsRawFd,
    {
        queue.attach(self.inner.as_raw_fd(), kind);
        self.shared = Some(queue);
    }

    /// The window fanfare compresses with, when the client negotiated compression.
    pub fn deflate_window(&self) -> Option<u8> {
        self.deflate.as_ref().map(|d| d.window_bits)
    }
}

/// The error a session answers with 1007.
pub fn is_corrupt(e: &io::Error) -> bool {
    let inner = match e.get_ref() {
        Some(inner) if e.kind() == io::ErrorKind::InvalidData => inner,
        _ => return false,
    };
    inner.is::<crate::wire::deflate::InflateError>()
}

impl<S: AsyncRead + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(d) = this.deflate.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if !d.output.is_empty() {
                let n = d.output.len().min(buf.remaining());
                buf.put_slice(&d.output[..n]);
                d.output.advance(n);
                if d.output.is_empty() {
                    // An idle connection keeps no buffer.
                    d.output = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if d.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    crate::wire::deflate::InflateError::Corrupt,
                )));
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            let fed = if d.input.is_empty() {
                d.inflater.feed(got, &mut d.output).map(|n| {
                    d.input.extend_from_slice(&got[n..]);
                })
            } else {
                d.input.extend_from_slice(got);
                d.inflater.feed(&d.input, &mut d.output).map(|n| {
                    d.input.advance(n);
                    if d.input.is_empty() {
                        d.input = BytesMut::new();
                    }
                })
            };
            if fed.is_err() {
                // What inflated before the error is still read first.
                d.failed = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    /// One write of the session's, `len` bytes starting with `first`, through the
    /// gate when the socket is shared: after the rest of a frame the hub began, and
    /// leaving the socket the session's while anything of it is unwritten.
    fn gated(
        &mut self,
        cx: &mut Context<'_>,
        first: Option<u8>,
        len: usize,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let Some(queue) = &self.shared else {
            return write(Pin::new(&mut self.inner), cx);
        };
        let gate = &queue.gate;
        // A close frame (FIN + opcode 8) starting a write: nothing may follow it.
        if first == Some(0x88) {
            gate.closing();
        }
        gate.session_begin();
        let r = match write_rest(queue, &mut self.inner, cx) {
            Poll::Ready(Ok(())) => write(Pin::new(&mut self.inner), cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        gate.session_end(!matches!(r, Poll::Ready(Ok(n)) if n == len));
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .gated(cx, buf.first().copied(), buf.len(), |s, cx| {
                s.poll_write(cx, buf)
            })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find_map(|b| b.first().copied());
        let len = bufs.iter().map(|b| b.len()).sum();
        self.get_mut()
            .gated(cx, first, len, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(queue) = this.shared.as_ref().filter(|q| q.gate.has_rest()) {
            queue.gate.session_begin();
            let r = write_rest(queue, &mut this.inner, cx);
            queue.gate.session_end(!matches!(r, Poll::Ready(Ok(()))));
            ready!(r)?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(queue) = &this.shared {
            queue.gate.closing();
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Writes what is left of a frame the hub began (inside the session's write, so no
/// byte of the session's can come before it); ready once nothing is left.
fn write_rest<S: AsyncWrite + Unpin>(
    queue: &ClientQueue,
    inner: &mut S,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if !queue.gate.has_rest() {
        return Poll::Ready(Ok(()));
    }
    let mut rest = queue.take_rest();
    while let Some(r) = rest.as_mut() {
        match Pin::new(&mut *inner).poll_write(cx, r) {
            Poll::Ready(Ok(0)) => {
                queue.put_rest(rest);
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) if n < r.len() => r.advance(n),
            Poll::Ready(Ok(_)) => rest = None,
            Poll::Ready(Err(e)) => {
                queue.put_rest(rest);
                return Poll::Ready(Err(e));
            }
            Poll::Pending => {
                queue.put_rest(rest);
                return Poll::Pending;
            }
        }
    }
    queue.put_rest(None);
    Poll::Ready(Ok(()))
}

impl<S> Drop for Socket<S> {
    fn drop(&mut self) {
        // Before `inner` (and its descriptor) is dropped: waits out a send of the
        // hub's, after which the hub never writes to the descriptor again.
        if let Some(queue) = &self.shared {
            queue.gate.close();
        }
    }
}
