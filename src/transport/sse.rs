//! Server-Sent Events: the wire format and the per-client session.
//!
//! Wire format (one event):
//! ```text
//! id: <cursor>
//! event: <name>
//! data: <payload line>      (one per line of the payload)
//!
//! ```
//! A payload is split on CR, LF and CRLF, each piece on its own `data:` line, so a
//! payload can never inject an `id:`, `event:` or `retry:` field. `id` and `event` never
//! contain CR, LF or NUL (refused before they get here).
//!
//! Session invariants: the session waits on its queue, the heartbeat, shutdown and the
//! peer going away at once; everything queued is written in one write; a closed queue
//! (slow consumer under `disconnect`) ends the stream, even mid-write.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::hub::{Batch, ClientQueue, Closed};
use crate::metrics::Metrics;

/// The comment line sent as a heartbeat.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Encodes one event.
pub fn encode_event(id: &str, event: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + id.len() + event.len() + 24);
    b.put_slice(b"id: ");
    b.put_slice(id.as_bytes());
    b.put_slice(b"\nevent: ");
    b.put_slice(event.as_bytes());
    b.put_u8(b'\n');
    put_data_lines(&mut b, payload);
    b.put_u8(b'\n');
    b.freeze()
}

/// Appends `data: <line>\n` for every line of `payload` (split on CR, LF, CRLF).
fn put_data_lines(b: &mut BytesMut, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let end = rest.iter().position(|&c| c == b'\n' || c == b'\r');
        b.put_slice(b"data: ");
        match end {
            None => {
                b.put_slice(rest);
                b.put_u8(b'\n');
                return;
            }
            Some(i) => {
                b.put_slice(&rest[..i]);
                b.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// The reset event sent after a gap (messages dropped for a slow client).
pub fn encode_reset(dropped: u64) -> Bytes {
    let data = format!(r#"{{"reason":"slow_consumer","dropped":{dropped}}}"#);
    let mut b = BytesMut::new();
    b.put_slice(b"event: fanfare.reset\n");
    put_data_lines(&mut b, data.as_bytes());
    b.put_u8(b'\n');
    b.freeze()
}

/// The reset event sent when a resume cannot replay what was missed.
pub fn encode_reset_reason(reason: &str) -> Bytes {
    Bytes::from(format!(
        "event: fanfare.reset\ndata: {{\"reason\":\"{reason}\"}}\n\n"
    ))
}

/// `retry: <ms>` plus a blank line.
pub fn encode_retry(ms: u128) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Where an SSE session writes, and how it learns the peer is gone.
pub trait Sink {
    /// Writes `buf` and flushes it.
    fn write(&mut self, buf: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Resolves when the peer has gone away.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// A raw HTTP/1.1 connection taken out of pingora after the response header.
pub struct RawSink<S>(pub S);

impl<S> Sink for RawSink<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn write(&mut self, buf: Bytes) -> std::io::Result<()> {
        self.0.write_all(&buf).await?;
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

pub use super::Outcome;

/// Everything a session needs besides its sink.
pub struct Session {
    /// The client's queue.
    pub queue: std::sync::Arc<ClientQueue>,
    /// Ticks at the route's heartbeat interval.
    pub heartbeat: watch::Receiver<u64>,
    /// The shutdown drain; this session closes at its turn.
    pub drain: crate::drain::Drain,
    /// The client's id (its drain turn).
    pub client: u64,
    /// The `retry:` hint in milliseconds.
    pub retry_ms: u128,
    /// Metrics.
    pub metrics: Metrics,
    /// When the client's credential expires (`event: fanfare.expired`, then the end).
    pub expires: Option<tokio::time::Instant>,
}

enum Wake {
    Queue,
    Heartbeat,
    Shutdown,
    Gone,
    Expired,
}

/// The event sent before a stream is closed for a restart (drain): reconnect, with
/// `Last-Event-ID`, after the `retry:` that follows.
pub const DRAIN: &[u8] = b"event: fanfare.drain\ndata: {\"reason\":\"restart\"}\n\n";

/// The event sent when a token expires during a held stream.
pub const EXPIRED: &[u8] = b"event: fanfare.expired\ndata: {\"reason\":\"token_expired\"}\n\n";

impl Session {
    /// Runs until the client leaves, the queue closes or fanfare shuts down. The
    /// response header has already been written.
    ///
    /// Borrows the session: an async fn taking it by value keeps the argument in its
    /// future next to the copy its body works on, and every held connection would pay
    /// that twice per call level (the task was 2,096 bytes by value, 1,184 borrowed).
    pub async fn run<S: Sink>(&mut self, sink: &mut S) -> Outcome {
        if sink.write(encode_retry(self.retry_ms)).await.is_err() {
            return Outcome::WriteError;
        }
        let deliveries = self.metrics.deliveries.with_label_values(&["sse"]);
        let mut heartbeat_alive = true;
        let mut expiry = super::expiry_timer(self.expires);
        loop {
            let wake = tokio::select! {
                _ = self.queue.ready() => Wake::Queue,
                r = self.heartbeat.changed(), if heartbeat_alive => if r.is_ok() { Wake::Heartbeat } else { heartbeat_alive = false; continue },
                _ = self.drain.turn(self.client) => Wake::Shutdown,
                _ = sink.gone() => Wake::Gone,
                _ = super::expired(expiry.as_mut()) => Wake::Expired,
            };
            match wake {
                Wake::Expired => {
                    let _ = sink.write(Bytes::from_static(EXPIRED)).await;
                    return Outcome::Expired;
                }
                Wake::Gone => return Outcome::ClientClosed,
                Wake::Shutdown => {
                    let mut bye = BytesMut::from(DRAIN);
                    bye.put_slice(&encode_retry(self.retry_ms));
                    let _ = sink.write(bye.freeze()).await;
                    return Outcome::Shutdown;
                }
                Wake::Heartbeat => {
                    if sink.write(Bytes::from_static(HEARTBEAT)).await.is_err() {
                        return Outcome::WriteError;
                    }
                }
                Wake::Queue => {
                    let batch = self.queue.take();
                    let closed = batch.closed;
                    let (buf, n, oldest) = assemble(batch);
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
                        deliveries.inc_by(n);
                        if let Some(t) = oldest {
                            self.metrics.delivery_lag.observe(t.elapsed().as_secs_f64());
                        }
                    }
                    if closed == Some(Closed::SlowConsumer) {
                        return Outcome::SlowConsumer;
                    }
                }
            }
        }
    }
}

/// Concatenates a batch (reset first, if there was a gap) into one buffer.
/// Returns the buffer, the number of events, and the oldest event's arrival time.
fn assemble(batch: Batch) -> (Bytes, u64, Option<Instant>) {
    let mut reset = (batch.dropped > 0).then(|| encode_reset(batch.dropped));
    if let Some(reason) = batch.reset {
        let r = encode_reset_reason(reason);
        reset = Some(match reset {
            Some(d) => [r, d].concat().into(),
            None => r,
        });
    }
    let len = reset.as_ref().map_or(0, |r| r.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        assert_eq!(
            &encode_event("e-1", "message", b"{\"a\":1}")[..],
            b"id: e-1\nevent: message\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn multi_line_payloads_cannot_inject_fields() {
        let out = encode_event("e-2", "x", b"one\nid: evil\r\nretry: 1\rfour\n");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "id: e-2\nevent: x\ndata: one\ndata: id: evil\ndata: retry: 1\ndata: four\ndata: \n\n"
        );
    }

    #[test]
    fn empty_payload_is_one_empty_data_line() {
        assert_eq!(
            &encode_event("i", "m", b"")[..],
            b"id: i\nevent: m\ndata: \n\n"
        );
    }

    #[test]
    fn reset_event() {
        assert_eq!(
            &encode_reset(3)[..],
            b"event: fanfare.reset\ndata: {\"reason\":\"slow_consumer\",\"dropped\":3}\n\n"
        );
    }
}
