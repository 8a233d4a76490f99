//! Socket.IO v5 packets, carried in Engine.IO messages. Pure functions and one small
//! state machine (binary attachments), no I/O.
//!
//! Text form: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, type `0`
//! CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT,
//! `6` BINARY_ACK. The namespace `/` is left out. A binary packet's JSON holds
//! `{"_placeholder":true,"num":N}` where its N-th attachment goes; the attachments
//! follow as Engine.IO binary messages.

use bytes::Bytes;
use serde_json::Value;

/// A packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`.
    Connect,
    /// `1`.
    Disconnect,
    /// `2`.
    Event,
    /// `3`.
    Ack,
    /// `4` (server to client only).
    ConnectError,
    /// `5`.
    BinaryEvent,
    /// `6`.
    BinaryAck,
}

impl Kind {
    fn digit(self) -> char {
        match self {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        }
    }
}

/// One decoded packet, attachments in place of their placeholders' positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Its type (binary types are reported as EVENT / ACK once whole).
    pub kind: Kind,
    /// Its namespace (`/` by default).
    pub nsp: String,
    /// The acknowledgement id.
    pub id: Option<u64>,
    /// Its JSON data, placeholders still in it.
    pub data: Option<Value>,
    /// The binary attachments, in `num` order.
    pub attachments: Vec<Bytes>,
}

/// Why a client's packet is refused (the connection is then closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Socket.IO packet: {0}")]
pub struct Invalid(pub &'static str);

/// Reassembles binary packets from their attachments.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Option<(Packet, usize)>,
}

/// Attachments one packet may announce at most.
const MAX_ATTACHMENTS: usize = 10;

impl Decoder {
    /// Feeds a text message; returns a whole packet, or `None` while attachments are
    /// awaited.
    pub fn text(&mut self, text: &str) -> Result<Option<Packet>, Invalid> {
        if self.pending.is_some() {
            return Err(Invalid("a text packet while attachments were awaited"));
        }
        let (p, n) = parse(text)?;
        if n == 0 {
            return Ok(Some(p));
        }
        self.pending = Some((p, n));
        Ok(None)
    }

    /// Feeds a binary message (an attachment).
    pub fn binary(&mut self, b: Bytes) -> Result<Option<Packet>, Invalid> {
        let Some((mut p, n)) = self.pending.take() else {
            return Err(Invalid("an attachment without a binary packet"));
        };
        p.attachments.push(b);
        if p.attachments.len() < n {
            self.pending = Some((p, n));
            return Ok(None);
        }
        Ok(Some(p))
    }
}

fn parse(text: &str) -> Result<(Packet, usize), Invalid> {
    let b = text.as_bytes();
    let kind = match b.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(Invalid("unknown packet type")),
    };
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || b.get(i) != Some(&b'-') {
            return Err(Invalid("a binary packet without its attachment count"));
        }
        attachments = text[start..i]
            .parse()
            .map_err(|_| Invalid("bad attachment count"))?;
        if attachments == 0 || attachments > MAX_ATTACHMENTS {
            return Err(Invalid("attachment count out of range"));
        }
        i += 1;
    }
    let mut nsp = "/".to_string();
    if b.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map_or(b.len(), |e| i + e);
        nsp = text[i..end].to_string();
        i = (end + 1).min(b.len());
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let id = if i > start {
        Some(
            text[start..i]
                .parse()
                .map_err(|_| Invalid("bad acknowledgement id"))?,
        )
    } else {
        None
    };
    let data = if i < b.len() {
        Some(serde_json::from_str::<Value>(&text[i..]).map_err(|_| Invalid("data is not JSON"))?)
    } else {
        None
    };
    let ok = match kind {
        Kind::Connect => data.as_ref().is_none_or(Value::is_object),
        Kind::Disconnect => data.is_none(),
        Kind::Event | Kind::BinaryEvent => data
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|a| a.first().is_some_and(Value::is_string)),
        Kind::Ack | Kind::BinaryAck => id.is_some() && data.as_ref().is_some_and(Value::is_array),
        Kind::ConnectError => false,
    };
    if !ok {
        return Err(Invalid("data does not fit the packet type"));
    }
    let kind = match kind {
        Kind::BinaryEvent => Kind::Event,
        Kind::BinaryAck => Kind::Ack,
        k => k,
    };
    Ok((
        Packet {
            kind,
            nsp,
            id,
            data,
            attachments: Vec::new(),
        },
        attachments,
    ))
}

/// An argument of a server packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// JSON.
    Json(Value),
    /// Bytes, sent as an attachment.
    Binary(Bytes),
}

/// Encodes a server packet: the text message, then its attachments.
pub fn encode(kind: Kind, nsp: &str, id: Option<u64>, args: &[Arg]) -> (String, Vec<Bytes>) {
    encode_with(kind, nsp, id, |out, attachments| {
        if matches!(kind, Kind::Event | Kind::Ack) {
            let items: Vec<Value> = args
                .iter()
                .map(|a| match a {
                    Arg::Json(v) => {
                        let mut v = v.clone();
                        extract_binary(&mut v, attachments);
                        v
                    }
                    Arg::Binary(b) => {
                        attachments.push(b.clone());
                        serde_json::json!({"_placeholder": true, "num": attachments.len() - 1})
                    }
                })
                .collect();
            out.push_str(&Value::Array(items).to_string());
        } else if let Some(Arg::Json(v)) = args.first() {
            out.push_str(&v.to_string());
        }
    })
}

fn encode_with(
    kind: Kind,
    nsp: &str,
    id: Option<u64>,
    body: impl FnOnce(&mut String, &mut Vec<Bytes>),
) -> (String, Vec<Bytes>) {
    let mut data = String::new();
    let mut attachments = Vec::new();
    body(&mut data, &mut attachments);
    let kind = match (kind, attachments.is_empty()) {
        (Kind::Event, false) => Kind::BinaryEvent,
        (Kind::Ack, false) => Kind::BinaryAck,
        (k, _) => k,
    };
    let mut out = String::with_capacity(data.len() + nsp.len() + 8);
    out.push(kind.digit());
    if !attachments.is_empty() {
        out.push_str(&attachments.len().to_string());
        out.push('-');
    }
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    out.push_str(&data);
    (out, attachments)
}

/// An EVENT of `name` with a payload as its one argument: JSON as JSON, other UTF-8 as
/// a string, other bytes as an attachment. With `spread`, a JSON array's elements are
/// the arguments. With an `offset` (connection-state recovery), it is the last one.
pub fn event_from_payload(
    nsp: &str,
    name: &str,
    payload: &[u8],
    spread: bool,
    offset: Option<&str>,
) -> (String, Vec<Bytes>) {
    let mut args = vec![Arg::Json(Value::from(name))];
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Array(items)) if spread => args.extend(items.into_iter().map(Arg::Json)),
        Ok(v) if !payload.is_empty() => args.push(Arg::Json(v)),
        _ => match std::str::from_utf8(payload) {
            Ok(s) => args.push(Arg::Json(Value::from(s))),
            Err(_) => args.push(Arg::Binary(Bytes::copy_from_slice(payload))),
        },
    }
    // Connection-state recovery: the cursor rides as the last argument.
    if let Some(o) = offset {
        args.push(Arg::Json(Value::from(o)));
    }
    encode(Kind::Event, nsp, None, &args)
}

/// The JSON form of bytes in fanfare's Socket.IO mapping: `{"_binary":"<base64>"}`.
/// A binary argument a client emits is published so, and such an object in what is
/// sent to a client (an event's payload, an ack's answer) becomes an attachment again,
/// so bytes round-trip through NATS and the app.
pub const BINARY_KEY: &str = "_binary";

fn binary_of(v: &Value) -> Option<Bytes> {
    use base64::Engine;
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let b64 = o.get(BINARY_KEY)?.as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .map(Bytes::from)
}

/// Replaces every `{"_binary":"<base64>"}` in `v` by a placeholder, its bytes
/// appended to `attachments`.
fn extract_binary(v: &mut Value, attachments: &mut Vec<Bytes>) {
    if let Some(b) = binary_of(v) {
        attachments.push(b);
        *v = serde_json::json!({"_placeholder": true, "num": attachments.len() - 1});
        return;
    }
    match v {
        Value::Object(o) => o.values_mut().for_each(|x| extract_binary(x, attachments)),
        Value::Array(a) => a.iter_mut().for_each(|x| extract_binary(x, attachments)),
        _ => {}
    }
}

/// Replaces placeholders in `v` with the attachments as `{"_binary":"<base64>"}` (to
/// publish a binary emit as JSON).
pub fn inline_attachments(v: &mut Value, attachments: &[Bytes]) {
    use base64::Engine;
    match v {
        Value::Object(o)
            if o.get("_placeholder") == Some(&Value::Bool(true)) && o.contains_key("num") =>
        {
            let n = o.get("num").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if let Some(b) = attachments.get(n as usize) {
                *v = serde_json::json!({
                    BINARY_KEY: base64::engine::general_purpose::STANDARD.encode(b)
                });
            }
        }
        Value::Object(o) => o
            .values_mut()
            .for_each(|x| inline_attachments(x, attachments)),
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| inline_attachments(x, attachments)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Packet {
        Decoder::default().text(text).unwrap().unwrap()
    }

    #[test]
    fn decodes_each_client_packet() {
        let p = one("0");
        assert_eq!((p.kind, p.nsp.as_str(), p.data), (Kind::Connect, "/", None));
        let p = one(r#"0/admin,{"token":"123"}"#);
        assert_eq!(
            (p.nsp.as_str(), p.data),
            ("/admin", Some(json!({"token":"123"})))
        );
        let p = one(r#"2["hello",1]"#);
        assert_eq!(
            (p.kind, p.id, p.data),
            (Kind::Event, None, Some(json!(["hello", 1])))
        );
        let p = one(r#"2/admin,456["project:delete",123]"#);
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(456)));
        let p = one(r#"3/admin,456[]"#);
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(456)));
        let p = one("1/admin,");
        assert_eq!((p.kind, p.nsp.as_str()), (Kind::Disconnect, "/admin"));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        for bad in [
            "",
            "9",
            "4{}",
            r#"0["a"]"#,
            "1{}",
            r#"2{"a":1}"#,
            "2[]",
            "2[1]",
            r#"3[]"#,
            r#"2["a""#,
            r#"5["a"]"#,
            r#"50-["a"]"#,
            r#"511-["a"]"#,
        ] {
            assert!(Decoder::default().text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binary_events_wait_for_their_attachments() {
        let mut d = Decoder::default();
        assert_eq!(
            d.text(r#"52-["hello",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
            Ok(None)
        );
        assert!(
            d.text("2[\"x\"]").is_err(),
            "text while attachments are due"
        );
        let mut d = Decoder::default();
        d.text(r#"51-/admin,7["up",{"_placeholder":true,"num":0}]"#)
            .unwrap();
        let p = d.binary(Bytes::from_static(&[1, 2])).unwrap().unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (Kind::Event, "/admin", Some(7))
        );
        assert_eq!(p.attachments, vec![Bytes::from_static(&[1, 2])]);
        let mut data = p.data.unwrap();
        inline_attachments(&mut data, &p.attachments);
        assert_eq!(data, json!(["up", {"_binary": "AQI="}]));
        // ... and back: a `_binary` object sent to a client is an attachment again.
        let (t, a) = encode(
            Kind::Event,
            "/admin",
            None,
            &[
                Arg::Json(json!("up")),
                Arg::Json(data.as_array().unwrap()[1].clone()),
            ],
        );
        assert_eq!(t, r#"51-/admin,["up",{"_placeholder":true,"num":0}]"#);
        assert_eq!(a, vec![Bytes::from_static(&[1, 2])]);
        let (t, a) = encode(
            Kind::Ack,
            "/",
            Some(3),
            &[Arg::Json(
                json!([{"_binary": "AQI="}, {"_binary": "x", "y": 1}]),
            )],
        );
        assert_eq!(
            t,
            r#"61-3[[{"_placeholder":true,"num":0},{"_binary":"x","y":1}]]"#
        );
        assert_eq!(a.len(), 1);
        assert!(Decoder::default().binary(Bytes::new()).is_err());
    }

    #[test]
    fn encodes_server_packets() {
        let (t, a) = encode(Kind::Connect, "/", None, &[Arg::Json(json!({"sid":"x"}))]);
        assert_eq!((t.as_str(), a.len()), (r#"0{"sid":"x"}"#, 0));
        let (t, _) = encode(
            Kind::ConnectError,
            "/admin",
            None,
            &[Arg::Json(json!({"message":"Invalid namespace"}))],
        );
        assert_eq!(t, r#"4/admin,{"message":"Invalid namespace"}"#);
        let (t, _) = encode(Kind::Ack, "/", Some(12), &[Arg::Json(json!("ok"))]);
        assert_eq!(t, r#"312["ok"]"#);
        let (t, _) = encode(Kind::Disconnect, "/admin", None, &[]);
        assert_eq!(t, "1/admin,");
        let (t, a) = event_from_payload("/", "said", br#"{"n":1}"#, false, None);
        assert_eq!((t.as_str(), a.len()), (r#"2["said",{"n":1}]"#, 0));
        let (t, _) = event_from_payload("/", "said", b"plain", false, Some("ep-3"));
        assert_eq!(t, r#"2["said","plain","ep-3"]"#);
        let (t, _) = event_from_payload("/", "many", b"[1,2]", true, None);
        assert_eq!(t, r#"2["many",1,2]"#);
        let (t, a) = event_from_payload("/", "blob", &[0xff, 0], false, None);
        assert_eq!(t, r#"51-["blob",{"_placeholder":true,"num":0}]"#);
        assert_eq!(a, vec![Bytes::from_static(&[0xff, 0])]);
    }
}
