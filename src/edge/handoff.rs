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

use pingora::prelude::Session;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use tokio::io::AsyncWriteExt;

/// The raw stream of an HTTP/1.x request, or `None` for HTTP/2 (which stays inside
/// pingora). Bytes the client pipelined after its request header are discarded.
pub async fn take_h1_stream(session: &mut Session) -> Option<Stream> {
    if session.is_http2() || session.downstream_session.as_http1().is_none() {
        return None;
    }
    let placeholder = placeholder(session).await?;
    let original = std::mem::replace(&mut session.downstream_session, Box::new(placeholder));
    match *original {
        ServerSession::H1(h1) => Some(h1.into_inner()),
        other => {
            // Checked above; restore rather than lose the session if it ever differs.
            *session.downstream_session = other;
            None
        }
    }
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
