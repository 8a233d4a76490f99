//! Taking a held HTTP/1.1 connection out of pingora's session.
//!
//! After a realtime handshake fanfare keeps only the socket: pingora's per-request
//! state (header buffers, body state, timeouts) is dropped, so a held connection costs
//! its socket, its queue and its protocol state. pingora has no API for this (its issue
//! 660), so this module relies on two public items of the pinned version (0.9.1):
//! the public field `Session::downstream_session`, and `HttpSession::into_inner()` of
//! HTTP/1. A placeholder session takes the original's place; it must hold a parsed
//! request header because pingora reads it after `request_filter` (logging), and it has
//! keep-alive off so pingora drops it instead of reading another request from it.
//! `tests/realtime.rs` covers this hand-off end to end.
//!
//! What is held is then the socket itself, a tokio `TcpStream`, not pingora's stream
//! around it: pingora's `l4::Stream` (376 bytes, boxed) keeps timing digests and
//! buffered-I/O wrappers that a held connection does not use, and times every write
//! (about 3.5% of fan-out CPU in a profile). Its descriptor is duplicated and pingora's
//! stream dropped.

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora::prelude::Session;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The socket of an HTTP/1.x request, or `None` for HTTP/2 (which stays inside
/// pingora) and for a stream that is not a TCP socket. Bytes the client pipelined after
/// its request header are discarded.
pub async fn take_h1_stream(session: &mut Session) -> Option<TcpStream> {
    if session.is_http2() || session.downstream_session.as_http1().is_none() {
        return None;
    }
    let placeholder = placeholder(session).await?;
    let original = std::mem::replace(&mut session.downstream_session, Box::new(placeholder));
    match *original {
        ServerSession::H1(h1) => {
            // Whatever pingora left in the write buffer goes out first.
            let mut stream = h1.into_inner();
            stream.flush().await.ok()?;
            into_socket(stream)
        }
        other => {
            // Checked above; restore rather than lose the session if it ever differs.
            *session.downstream_session = other;
            None
        }
    }
}

/// The TCP socket under pingora's stream, as a tokio `TcpStream` of its own.
#[allow(unsafe_code)] // one block, its soundness argued where it stands
fn into_socket(stream: Stream) -> Option<TcpStream> {
    let l4 = super::buffered::unwrap(stream.into_any())?;
    let fd = l4.as_raw_fd();
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is the descriptor of the socket `l4` owns, and `l4` is alive (not
    // dropped, not closed) until after this borrow ends: the borrowed descriptor is
    // only duplicated (`try_clone_to_owned`, F_DUPFD_CLOEXEC), never closed through.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    // pingora's copy goes first (closing its descriptor and leaving the reactor), so
    // the socket is registered once, under the duplicate.
    drop(l4);
    let socket = std::net::TcpStream::from(owned);
    socket.set_nonblocking(true).ok()?;
    TcpStream::from_std(socket).ok()
}

async fn placeholder(session: &Session) -> Option<ServerSession> {
    let (mut client, server) = tokio::io::duplex(128);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: fanfare.invalid\r\n\r\n")
        .await
        .ok()?;
    drop(client);
    let mut placeholder = ServerSession::new_http1(Box::new(server));
    match placeholder.read_request().await {
        Ok(true) => {}
        _ => return None,
    }
    *placeholder.req_header_mut() = session.req_header().clone();
    placeholder.set_keepalive(None);
    Some(placeholder)
}
