//! The socket under a WebSocket session, with permessage-deflate when the client
//! negotiated it: reads pass through an [`Inflater`] (so tungstenite, which has no
//! extension support, reads plain frames), writes go straight to the socket. Without
//! the extension it is the socket itself plus one pointer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::deflate::{Agreed, Inflater};

/// A client's socket.
pub struct Socket<S> {
    inner: S,
    deflate: Option<Box<Deflate>>,
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
        }
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
