//! One message as clients get it: its cursor, its payload, and its encodings, each
//! made on first use by a transport that has a client and then shared by every client
//! of that transport. A WebSocket-only route never builds the SSE bytes; long-polling
//! reuses the JSON inside the WebSocket frame.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::broker::Message;
use crate::wire::{deflate, engineio, protocol, sse, ws};

/// Bytes counted per event on top of its payload (framing, id, event name).
const EVENT_OVERHEAD: usize = 64;

/// One message as delivered to clients.
pub struct Event {
    /// The concrete subject.
    pub subject: String,
    /// The event name (`Fanfare-Event`, default `message`).
    pub name: String,
    /// The cursor: `<epoch>-<seq>` in memory, the stream sequence with JetStream.
    pub id: String,
    /// The sequence behind the cursor (process-wide, or the stream's).
    pub seq: u64,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// When fanfare received it.
    pub received: Instant,
    /// `Fanfare-Args: spread`: a JSON array payload's elements are the Socket.IO
    /// arguments.
    pub spread: bool,
    sse: OnceLock<Bytes>,
    /// `sse` as an HTTP/1.1 chunk, for the hub's own writes to SSE streams.
    sse_chunk: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
    raw: OnceLock<Bytes>,
    /// The `ws` and `raw` frames compressed (permessage-deflate).
    ws_deflated: OnceLock<Bytes>,
    raw_deflated: OnceLock<Bytes>,
    sio: OnceLock<SioEncoded>,
}

/// An event's Socket.IO EVENT packet for one namespace: the text and its attachments.
#[derive(Clone)]
pub struct SioEncoded {
    nsp: String,
    offset: bool,
    /// The packet's text.
    pub text: String,
    /// Its binary attachments.
    pub attachments: Vec<Bytes>,
    /// The text as an Engine.IO message in a WebSocket frame, made on first use.
    ws_text: OnceLock<Bytes>,
}

impl SioEncoded {
    /// The text as an Engine.IO message (`4…`) in a WebSocket text frame, the same
    /// bytes for every socket that is sent it.
    pub fn ws_text_frame(&self) -> &Bytes {
        self.ws_text.get_or_init(|| {
            ws::text_frame(engineio::encode_text(engineio::Kind::Message, &self.text).as_bytes())
        })
    }
}

impl Event {
    /// Builds the event for `msg` with sequence `seq` and cursor `id`. Nothing is
    /// encoded yet.
    pub fn new(msg: Message, seq: u64, id: String) -> Event {
        let spread = msg
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(crate::broker::ARGS_HEADER) && v == "spread");
        Event {
            spread,
            subject: msg.subject,
            name: msg.event.unwrap_or_else(|| "message".to_string()),
            id,
            seq,
            payload: msg.payload,
            received: msg.received,
            sse: OnceLock::new(),
            sse_chunk: OnceLock::new(),
            ws: OnceLock::new(),
            raw: OnceLock::new(),
            ws_deflated: OnceLock::new(),
            raw_deflated: OnceLock::new(),
            sio: OnceLock::new(),
        }
    }

    /// A message addressed to one connection: no cursor (it is not part of any
    /// topic's history, so it carries no `id`).
    pub fn direct(msg: Message) -> Event {
        Event::new(msg, 0, String::new())
    }

    /// An event whose WebSocket frame is already made (an rpc's reply): written as
    /// it is by a JSON-protocol session.
    pub fn frame(frame: Bytes) -> Event {
        let e = Event::new(Message::new("", frame.clone()), 0, String::new());
        let _ = e.ws.set(frame);
        e
    }

    /// The Socket.IO EVENT packet for namespace `nsp` (with the cursor as the last
    /// argument when `offset`), made on first use and shared by every socket of that
    /// namespace; another namespace's is made each time.
    pub fn sio(
        &self,
        nsp: &str,
        offset: bool,
        encode: impl FnOnce() -> (String, Vec<Bytes>),
    ) -> std::borrow::Cow<'_, SioEncoded> {
        if let Some(e) = self.sio.get() {
            if e.nsp == nsp && e.offset == offset {
                return std::borrow::Cow::Borrowed(e);
            }
            let (text, attachments) = encode();
            return std::borrow::Cow::Owned(SioEncoded {
                nsp: nsp.to_string(),
                offset,
                text,
                attachments,
                ws_text: OnceLock::new(),
            });
        }
        let mut encode = Some(encode);
        let e = self.sio.get_or_init(|| {
            let (text, attachments) = (encode.take().expect("encoded once"))();
            SioEncoded {
                nsp: nsp.to_string(),
                offset,
                text,
                attachments,
                ws_text: OnceLock::new(),
            }
        });
        if e.nsp == nsp && e.offset == offset {
            return std::borrow::Cow::Borrowed(e);
        }
        // Another socket set it for another namespace meanwhile.
        let (text, attachments) = match encode.take() {
            Some(f) => f(),
            None => (e.text.clone(), e.attachments.clone()),
        };
        std::borrow::Cow::Owned(SioEncoded {
            nsp: nsp.to_string(),
            offset,
            text,
            attachments,
            ws_text: OnceLock::new(),
        })
    }

    /// The raw-mode frame: the payload alone, text when it is UTF-8, else binary.
    pub fn raw_frame(&self) -> &Bytes {
        self.raw.get_or_init(|| ws::payload_frame(&self.payload))
    }

    /// [`Event::ws_frame`] compressed with permessage-deflate (full window, no
    /// context): made once, on first use, and the same bytes for every client that
    /// negotiated compression; the plain frame when compressing would not shrink it.
    pub fn ws_frame_deflated(&self) -> &Bytes {
        self.ws_deflated
            .get_or_init(|| ws::deflated_frame(self.ws_frame(), deflate::MAX_WINDOW_BITS))
    }

    /// [`Event::raw_frame`] compressed, like [`Event::ws_frame_deflated`].
    pub fn raw_frame_deflated(&self) -> &Bytes {
        self.raw_deflated
            .get_or_init(|| ws::deflated_frame(self.raw_frame(), deflate::MAX_WINDOW_BITS))
    }

    /// The SSE encoding, made on first use.
    pub fn sse(&self) -> &Bytes {
        self.sse
            .get_or_init(|| sse::encode_event(&self.id, &self.name, &self.payload))
    }

    /// [`Event::sse`] as one HTTP/1.1 chunk (how a raw SSE stream frames it), made on
    /// first use and shared by every SSE stream the hub writes it to.
    pub fn sse_chunk(&self) -> &Bytes {
        self.sse_chunk.get_or_init(|| sse::chunk(self.sse()))
    }

    /// The WebSocket text frame carrying the `message` JSON, made on first use.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            ws::text_frame(&protocol::message(
                &self.subject,
                &self.name,
                &self.id,
                &self.payload,
            ))
        })
    }

    /// The `message` JSON (long-polling): the WebSocket frame without its header, so
    /// both transports share one encoding.
    pub fn json(&self) -> Bytes {
        ws::frame_payload(self.ws_frame())
    }

    /// What the event counts against a client's byte bound.
    pub fn cost(&self) -> usize {
        self.payload.len() + EVENT_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &[u8]) -> Event {
        let mut m = Message::new("orders.42", payload.to_vec());
        m.event = Some("created".into());
        Event::new(m, 7, "ep-7".into())
    }

    #[test]
    fn encodings_are_lazy_and_shared() {
        let e = event(b"{}");
        assert!(e.sse.get().is_none() && e.ws.get().is_none());
        let a = e.sse().clone();
        assert!(
            e.ws.get().is_none(),
            "SSE does not build the WebSocket frame"
        );
        assert_eq!(a.as_ptr(), e.sse().as_ptr(), "built once");
        assert_eq!(&a[..], b"id: ep-7\nevent: created\ndata: {}\n\n");
    }

    #[test]
    fn json_is_the_frame_payload_for_every_length_class() {
        for n in [0, 50, 200, 70_000] {
            let e = event(&vec![b'a'; n]);
            let json = e.json();
            let expect = protocol::message("orders.42", "created", "ep-7", &vec![b'a'; n]);
            assert_eq!(&json[..], &expect[..], "{n}");
            assert_eq!(e.ws_frame().len(), json.len() + ws::header_len(json.len()));
        }
    }
}
