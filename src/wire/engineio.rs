//! Engine.IO v4 packets and payloads (the transport under Socket.IO). Pure functions,
//! no I/O.
//!
//! A packet is a type digit and its data: `0` open (JSON handshake), `1` close, `2`
//! ping, `3` pong (both may carry `probe`), `4` message, `5` upgrade, `6` noop. Over
//! WebSocket a text packet is one text frame (`4hello`) and a binary message is one
//! binary frame (no type digit). Over HTTP long-polling a payload is packets joined by
//! the record separator `\x1e`, a binary message written `b` + base64.

use base64::Engine;
use bytes::Bytes;

/// The record separator between the packets of a polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// A packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: the handshake (server to client).
    Open,
    /// `1`: the session ends.
    Close,
    /// `2`: heartbeat (server to client; `2probe` from the client during an upgrade).
    Ping,
    /// `3`: heartbeat answer (`3probe` from the server during an upgrade).
    Pong,
    /// `4`: a message (the Socket.IO packets ride in these).
    Message,
    /// `5`: the client finishes an upgrade to WebSocket.
    Upgrade,
    /// `6`: nothing (ends a pending poll during an upgrade).
    Noop,
}

impl Kind {
    fn digit(self) -> u8 {
        match self {
            Kind::Open => b'0',
            Kind::Close => b'1',
            Kind::Ping => b'2',
            Kind::Pong => b'3',
            Kind::Message => b'4',
            Kind::Upgrade => b'5',
            Kind::Noop => b'6',
        }
    }

    fn from_digit(d: u8) -> Option<Kind> {
        Some(match d {
            b'0' => Kind::Open,
            b'1' => Kind::Close,
            b'2' => Kind::Ping,
            b'3' => Kind::Pong,
            b'4' => Kind::Message,
            b'5' => Kind::Upgrade,
            b'6' => Kind::Noop,
            _ => return None,
        })
    }
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A packet with text data (possibly empty).
    Text(Kind, String),
    /// A binary message.
    Binary(Bytes),
}

impl Packet {
    /// A text message packet.
    pub fn message(text: impl Into<String>) -> Packet {
        Packet::Text(Kind::Message, text.into())
    }

    /// A packet of `kind` without data.
    pub fn bare(kind: Kind) -> Packet {
        Packet::Text(kind, String::new())
    }

    /// Bytes of data (what `maxPayload` counts).
    pub fn len(&self) -> usize {
        match self {
            Packet::Text(_, t) => t.len() + 1,
            Packet::Binary(b) => b.len(),
        }
    }

    /// Whether it carries nothing at all (never: a text packet has its digit).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why bytes are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty, or an unknown type digit.
    #[error("not an Engine.IO packet")]
    BadPacket,
    /// A `b` packet whose base64 does not decode.
    #[error("bad base64 in a binary packet")]
    BadBase64,
    /// A payload over `maxPayload`.
    #[error("payload over maxPayload")]
    TooLarge,
}

/// Decodes a text packet (a WebSocket text frame, or one packet of a payload).
pub fn decode_text(text: &str) -> Result<Packet, DecodeError> {
    let first = *text.as_bytes().first().ok_or(DecodeError::BadPacket)?;
    let kind = Kind::from_digit(first).ok_or(DecodeError::BadPacket)?;
    Ok(Packet::Text(kind, text[1..].to_string()))
}

/// Decodes a polling payload: packets joined by `\x1e`, a `b` packet being base64.
pub fn decode_payload(body: &[u8], max_payload: usize) -> Result<Vec<Packet>, DecodeError> {
    if body.len() > max_payload {
        return Err(DecodeError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::BadPacket)?;
    text.split(char::from(SEPARATOR))
        .map(|p| match p.strip_prefix('b') {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|b| Packet::Binary(Bytes::from(b)))
                .map_err(|_| DecodeError::BadBase64),
            None => decode_text(p),
        })
        .collect()
}

/// A text packet's wire form: its digit and data (a WebSocket text frame's payload).
pub fn encode_text(kind: Kind, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 1);
    s.push(char::from(kind.digit()));
    s.push_str(data);
    s
}

/// Appends `packets` as one polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match p {
            Packet::Text(kind, data) => {
                out.push(kind.digit());
                out.extend_from_slice(data.as_bytes());
            }
            Packet::Binary(b) => {
                out.push(b'b');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
            }
        }
    }
    out
}

/// The open packet's JSON.
pub fn open_json(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u128,
    ping_timeout_ms: u128,
    max_payload: usize,
) -> String {
    serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms as u64,
        "pingTimeout": ping_timeout_ms as u64,
        "maxPayload": max_payload,
    })
    .to_string()
}

/// What the `EIO` and `transport` query parameters ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportName {
    /// `polling`.
    Polling,
    /// `websocket`.
    Websocket,
}

/// Checks `EIO=4` and reads `transport`; `None` for anything else (a 400).
pub fn check_query(eio: Option<&str>, transport: Option<&str>) -> Option<TransportName> {
    if eio != Some("4") {
        return None;
    }
    match transport {
        Some("polling") => Some(TransportName::Polling),
        Some("websocket") => Some(TransportName::Websocket),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packets_round_trip() {
        assert_eq!(
            decode_text("4hello").unwrap(),
            Packet::Text(Kind::Message, "hello".into())
        );
        assert_eq!(
            decode_text("2probe").unwrap(),
            Packet::Text(Kind::Ping, "probe".into())
        );
        assert_eq!(decode_text("6").unwrap(), Packet::bare(Kind::Noop));
        assert_eq!(decode_text("abc"), Err(DecodeError::BadPacket));
        assert_eq!(decode_text(""), Err(DecodeError::BadPacket));
        assert_eq!(decode_text("7x"), Err(DecodeError::BadPacket));
        assert_eq!(encode_text(Kind::Pong, "probe"), "3probe");
    }

    #[test]
    fn payloads_join_packets_and_base64_binary() {
        let body = b"4test1\x1e4test2\x1ebAQIDBA==";
        let packets = decode_payload(body, 1_000_000).unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::message("test1"),
                Packet::message("test2"),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            ]
        );
        assert_eq!(encode_payload(&packets), body.to_vec());
        assert_eq!(decode_payload(b"bAQ!", 100), Err(DecodeError::BadBase64));
        assert_eq!(decode_payload(b"4x", 1), Err(DecodeError::TooLarge));
        assert_eq!(decode_payload(b"4a\x1e", 100), Err(DecodeError::BadPacket));
    }

    #[test]
    fn the_open_packet_and_the_query() {
        let v: serde_json::Value =
            serde_json::from_str(&open_json("s1", &["websocket"], 300, 200, 1_000_000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sid":"s1","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000})
        );
        assert_eq!(
            check_query(Some("4"), Some("polling")),
            Some(TransportName::Polling)
        );
        assert_eq!(check_query(None, Some("polling")), None);
        assert_eq!(check_query(Some("abc"), Some("polling")), None);
        assert_eq!(check_query(Some("4"), None), None);
        assert_eq!(check_query(Some("4"), Some("abc")), None);
    }
}
