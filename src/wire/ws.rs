//! WebSocket bytes: the RFC 6455 upgrade check, the `101` response head, server frames
//! and fanfare's close codes. Pure functions, no I/O.
//!
//! Server frames are unmasked, so the bytes of a message frame are the same for every
//! client: the hub builds each one once and every session writes the same `Bytes`.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

/// Close codes fanfare sends (1xxx from RFC 6455, 4xxx fanfare's own).
pub mod close {
    /// The client broke the protocol (bad framing, unmasked frame, RSV bits, a
    /// fragmented or oversized control frame, a stray continuation).
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (authorization).
    pub const POLICY: u16 = 1008;
    /// A message over `ws.max_message`.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
    /// fanfare is restarting (drain): reconnect elsewhere.
    pub const RESTART: u16 = 1012;
    /// Overload / slow consumer: try again later.
    pub const TRY_AGAIN: u16 = 1013;
    /// The client's token expired.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client stopped answering pings.
    pub const PING_TIMEOUT: u16 = 4002;
    /// The client held no subscription for `ws.idle_timeout`.
    pub const IDLE: u16 = 4003;
    /// A configuration reload removed or changed the connection's route: reconnect
    /// (with the cursor) under the new rules.
    pub const ROUTE_CHANGED: u16 = 4004;
    /// The app closed the connection (`Fanfare-Control: close`); the reason is the app's.
    pub const BY_APP: u16 = 4005;
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("a WebSocket upgrade must be a GET")]
    NotGet,
    /// Not HTTP/1.1 (WebSocket over HTTP/2 is not offered).
    #[error("WebSocket needs HTTP/1.1")]
    NotHttp11,
    /// `Upgrade: websocket` or `Connection: Upgrade` is missing.
    #[error("missing Upgrade: websocket / Connection: Upgrade")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    /// `Sec-WebSocket-Key` is not 16 bytes in base64.
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
}

impl HandshakeError {
    /// The HTTP status that answers it.
    pub fn status(self) -> StatusCode {
        match self {
            HandshakeError::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            HandshakeError::NotGet => "method_not_allowed",
            HandshakeError::Version => "unsupported_version",
            _ => "bad_handshake",
        }
    }
}

/// Checks an RFC 6455 upgrade request and returns the `Sec-WebSocket-Accept` value.
pub fn check_handshake(req: &http::request::Parts) -> Result<String, HandshakeError> {
    let get = |name: &str| {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let has_token = |name: &str, token: &str| {
        get(name)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.method != http::Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if req.version != http::Version::HTTP_11 {
        return Err(HandshakeError::NotHttp11);
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if get("sec-websocket-version").trim() != "13" {
        return Err(HandshakeError::Version);
    }
    let key = get("sec-websocket-key");
    let key = key.trim();
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Every `Sec-WebSocket-Extensions` value of an upgrade request, joined with `,`.
pub fn offered_extensions(req: &http::request::Parts) -> String {
    req.headers
        .get_all("sec-websocket-extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// The raw `101 Switching Protocols` response head, with the negotiated
/// `Sec-WebSocket-Extensions` when there is one.
pub fn switching_protocols(accept: &str, extensions: Option<&str>) -> Bytes {
    let extensions = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    ))
}

/// The frame of a message compressed with permessage-deflate: `plain` is the
/// message's uncompressed frame (from [`text_frame`] or [`binary_frame`]), and the
/// result is the same message with RSV1 set and its payload compressed with a window
/// of `window_bits`; or `plain` itself when compressing would not make it smaller
/// (a message may go either way).
pub fn deflated_frame(plain: &Bytes, window_bits: u8) -> Bytes {
    let packed = always_deflated_frame(plain, window_bits);
    if packed.len() >= plain.len() {
        return plain.clone();
    }
    packed
}

/// [`deflated_frame`] even when compressing does not shrink the message.
pub fn always_deflated_frame(plain: &Bytes, window_bits: u8) -> Bytes {
    let packed = super::deflate::compress(&frame_payload(plain), window_bits);
    data_frame(plain[0] | 0x40, &packed)
}

/// The length of the header [`text_frame`] puts before a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        n if n < 126 => 2,
        n if n <= u16::MAX as usize => 4,
        _ => 10,
    }
}

/// An unmasked server text frame (FIN set) carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    data_frame(0x81, payload)
}

/// An unmasked server binary frame (FIN set) carrying `payload`.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    data_frame(0x82, payload)
}

/// `payload` as it is: a text frame when it is UTF-8, else a binary frame (raw mode).
pub fn payload_frame(payload: &[u8]) -> Bytes {
    if std::str::from_utf8(payload).is_ok() {
        text_frame(payload)
    } else {
        binary_frame(payload)
    }
}

fn data_frame(first: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + header_len(payload.len()));
    b.put_u8(first);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.put_slice(payload);
    b.freeze()
}

/// An unmasked server close frame with `code` and a short `reason` (at most 123 bytes,
/// the control-frame limit; longer is cut at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut b = BytesMut::with_capacity(4 + reason.len());
    b.put_u8(0x88);
    b.put_u8(u8::try_from(2 + reason.len()).unwrap_or(125));
    b.put_u16(code);
    b.put_slice(reason);
    b.freeze()
}

/// The payload of a frame made by [`text_frame`], without a copy.
pub fn frame_payload(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(n) if n < 126 => 2,
        Some(126) => 4,
        _ => 10,
    };
    frame.slice(header.min(frame.len())..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const GOOD: &[(&str, &str)] = &[
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_rfc_example() {
        assert_eq!(
            check_handshake(&upgrade(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_bad_handshakes() {
        let without = |skip: &str| {
            upgrade(
                &GOOD
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != skip)
                    .collect::<Vec<_>>(),
            )
        };
        let err = |r: http::request::Parts| check_handshake(&r).unwrap_err();
        assert_eq!(err(without("Upgrade")), HandshakeError::NotUpgrade);
        assert_eq!(err(without("Connection")), HandshakeError::NotUpgrade);
        assert_eq!(
            err(without("Sec-WebSocket-Version")),
            HandshakeError::Version
        );
        assert_eq!(
            err(without("Sec-WebSocket-Version")).status(),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(err(without("Sec-WebSocket-Key")), HandshakeError::Key);
        let mut short_key = GOOD.to_vec();
        short_key[3] = ("Sec-WebSocket-Key", "c2hvcnQ=");
        assert_eq!(err(upgrade(&short_key)), HandshakeError::Key);
        let mut post = upgrade(GOOD);
        post.method = http::Method::POST;
        assert_eq!(err(post).status(), StatusCode::METHOD_NOT_ALLOWED);
        let mut h2 = upgrade(GOOD);
        h2.version = http::Version::HTTP_2;
        assert_eq!(err(h2), HandshakeError::NotHttp11);
    }

    #[test]
    fn frame_header_for_each_length_class() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&text_frame(&[b'x'; 125])[..2], &[0x81, 125]);
        let f = text_frame(&[b'x'; 126]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        let f = text_frame(&vec![b'x'; 65_535]);
        assert_eq!(&f[..4], &[0x81, 126, 0xff, 0xff]);
        let f = text_frame(&vec![b'x'; 65_536]);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 65_536);
        for n in [0, 125, 126, 65_535, 65_536] {
            let f = text_frame(&vec![b'x'; n]);
            assert_eq!(f.len(), n + header_len(n), "{n}");
            assert_eq!(frame_payload(&f).len(), n, "{n}");
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            &close_frame(1002, "bad")[..],
            &[0x88, 5, 0x03, 0xea, b'b', b'a', b'd']
        );
        let long = "é".repeat(100);
        let f = close_frame(1007, &long);
        assert!(
            f.len() <= 127,
            "a control frame payload is at most 125 bytes"
        );
        assert_eq!(usize::from(f[1]), f.len() - 2);
        assert!(
            std::str::from_utf8(&f[4..]).is_ok(),
            "cut at a character boundary"
        );
    }

    #[test]
    fn switching_protocols_head() {
        let h = switching_protocols("abc=", None);
        assert!(h.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(h.ends_with(b"Sec-WebSocket-Accept: abc=\r\n\r\n"));
        let h = switching_protocols("abc=", Some("permessage-deflate"));
        assert!(h.ends_with(
            b"Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ));
    }

    #[test]
    fn deflated_frames_set_rsv1_and_keep_small_messages_plain() {
        let json = "{\"status\":\"shipped\",\"carrier\":\"post\"}".repeat(20);
        let plain = text_frame(json.as_bytes());
        let d = deflated_frame(&plain, 15);
        assert_eq!(d[0], 0xc1, "FIN, RSV1, text");
        assert!(d.len() < plain.len() / 3, "{} of {}", d.len(), plain.len());
        let mut inflate = flate2::Decompress::new(false);
        let mut body = frame_payload(&d).to_vec();
        body.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(json.len() + 16);
        inflate
            .decompress_vec(&body, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, json.as_bytes());
        let tiny = binary_frame(b"ab");
        assert_eq!(deflated_frame(&tiny, 15), tiny, "not worth compressing");
    }
}
