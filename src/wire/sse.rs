//! Server-Sent Events wire format: pure bytes, no I/O.
//!
//! One event:
//! ```text
//! id: <cursor>
//! event: <name>
//! data: <payload line>      (one per line of the payload)
//!
//! ```
//! A payload is split on CR, LF and CRLF, each piece on its own `data:` line, so a
//! payload can never inject an `id:`, `event:` or `retry:` field. `id` and `event` never
//! contain CR, LF or NUL: [`is_safe_field`] refuses such values before they get here.

use bytes::{BufMut, Bytes, BytesMut};

/// Whether a value may go on the SSE wire as an `event:` or `id:` field (and so be an
/// event name anywhere): 1-256 bytes without CR, LF or NUL.
pub fn is_safe_field(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && !v.contains(['\r', '\n', '\0'])
}

/// The comment line sent as a heartbeat.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The size line of an HTTP/1.1 chunk of `len` bytes: lowercase hex and CRLF, on the
/// stack.
pub fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

/// `body` as one HTTP/1.1 chunk (size line, body, CRLF): an event's bytes as the hub
/// writes them to a raw HTTP/1.1 stream itself, the same as the stream's own writes.
pub fn chunk(body: &[u8]) -> Bytes {
    let mut size = [0u8; 18];
    let size = chunk_size_line(body.len(), &mut size);
    let mut b = BytesMut::with_capacity(size.len() + body.len() + 2);
    b.put_slice(size);
    b.put_slice(body);
    b.put_slice(b"\r\n");
    b.freeze()
}

/// Encodes one event. An empty `id` writes no `id:` line (a message addressed to one
/// connection has no cursor, and an empty `id:` would reset the client's).
pub fn encode_event(id: &str, event: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + id.len() + event.len() + 24);
    if !id.is_empty() {
        b.put_slice(b"id: ");
        b.put_slice(id.as_bytes());
        b.put_u8(b'\n');
    }
    b.put_slice(b"event: ");
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

/// The event sent before a stream is closed for a restart (drain), and the `retry:`
/// that follows it: reconnect, with `Last-Event-ID`, after `ms`. The event's data names
/// the same delay, for clients (fanfare's own) that cannot read `retry:`.
pub fn encode_drain(ms: u128) -> Bytes {
    closing("fanfare.drain", "restart", ms)
}

/// The event (and `retry:`) sent before a stream is closed because a reload removed or
/// changed its route: reconnect, with `Last-Event-ID`, under the new configuration.
pub fn encode_route_changed(ms: u128) -> Bytes {
    closing("fanfare.route_changed", "route_changed", ms)
}

fn closing(event: &str, reason: &str, ms: u128) -> Bytes {
    Bytes::from(format!(
        "event: {event}\ndata: {{\"reason\":\"{reason}\",\"retry\":{ms}}}\n\nretry: {ms}\n\n"
    ))
}

/// The event sent when a token expires during a held stream.
pub const EXPIRED: &[u8] = b"event: fanfare.expired\ndata: {\"reason\":\"token_expired\"}\n\n";

/// The event sent when the app closes a stream (`Fanfare-Control: close`).
pub fn encode_closed(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason }).to_string();
    encode_event("", "fanfare.closed", data.as_bytes())
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

    #[test]
    fn a_chunk_is_its_size_line_body_and_crlf() {
        assert_eq!(&chunk(b"data: x\n\n")[..], b"9\r\ndata: x\n\n\r\n");
        let long = vec![b'a'; 300];
        assert_eq!(&chunk(&long)[..5], b"12c\r\n");
        assert_eq!(chunk(&long).len(), 5 + 300 + 2);
    }

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

    #[test]
    fn crlf_at_the_end_and_lone_cr() {
        assert_eq!(
            &encode_event("i", "m", b"a\r\n")[..],
            b"id: i\nevent: m\ndata: a\ndata: \n\n"
        );
        assert_eq!(
            &encode_event("i", "m", b"a\r\rb")[..],
            b"id: i\nevent: m\ndata: a\ndata: \ndata: b\n\n"
        );
    }

    #[test]
    fn retry_and_reason_resets() {
        assert_eq!(&encode_retry(2000)[..], b"retry: 2000\n\n");
        assert_eq!(
            &encode_reset_reason("cursor_too_old")[..],
            b"event: fanfare.reset\ndata: {\"reason\":\"cursor_too_old\"}\n\n"
        );
    }

    #[test]
    fn field_safety() {
        assert!(is_safe_field("created"));
        assert!(is_safe_field(&"x".repeat(256)));
        assert!(!is_safe_field(""));
        assert!(!is_safe_field(&"x".repeat(257)));
        for bad in ["a\nid: 1", "a\rb", "a\0b"] {
            assert!(!is_safe_field(bad), "{bad:?}");
        }
    }
}
