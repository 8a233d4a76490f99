//! permessage-deflate (RFC 7692), sans-IO: the negotiation, compressing one message,
//! and an [`Inflater`] that turns a client's byte stream with compressed messages into
//! the same stream with plain ones (so the frame reader below it never sees RSV1).
//!
//! fanfare always compresses without context takeover (`server_no_context_takeover`)
//! and asks the client to do the same (`client_no_context_takeover`): every message is
//! compressed on its own, so one message's bytes are the same for every client and
//! are made once per broadcast, and no connection keeps a compression window between
//! messages.

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's token.
pub const NAME: &str = "permessage-deflate";
/// The largest LZ77 window (32 KiB), what fanfare uses unless the client asks less.
pub const MAX_WINDOW_BITS: u8 = 15;
/// What a sync flush ends with; the sender strips it, the receiver adds it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An accepted offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The window fanfare compresses with (`server_max_window_bits`, 9–15).
    pub window_bits: u8,
    /// The `Sec-WebSocket-Extensions` value of the `101`.
    pub response: String,
}

/// Picks the first permessage-deflate offer in `Sec-WebSocket-Extensions` (all its
/// values joined with `,`) that fanfare can accept. An offer with an unknown, repeated
/// or malformed parameter is declined, as RFC 7692 asks, and so is
/// `server_max_window_bits=8` (zlib's raw deflate cannot keep to a 256-byte window).
pub fn negotiate(offers: &str) -> Option<Agreed> {
    offers.split(',').find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = None;
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // The client's window: fanfare inflates with the largest, which reads any.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            ("server_max_window_bits", v) => server_bits = Some(bits(v).filter(|b| *b >= 9)?),
            _ => return None,
        }
    }
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(b) = server_bits {
        response.push_str(&format!("; server_max_window_bits={b}"));
    }
    Some(Agreed {
        window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
        response,
    })
}

/// `payload` compressed as one permessage-deflate message (no context takeover, the
/// sync flush's tail stripped) with a window of `window_bits`.
pub fn compress(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, window_bits);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let before = c.total_in() as usize;
        let status = c
            .compress_vec(&payload[before..], &mut out, FlushCompress::Sync)
            .expect("deflate of an in-memory buffer");
        let done = c.total_in() as usize == payload.len() && out.len() < out.capacity();
        if done || status == Status::StreamEnd {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// Why a client's compressed message cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The data is not a valid deflate stream (or uses context the client was asked
    /// not to keep).
    #[error("invalid compressed data")]
    Corrupt,
}

/// Turns the client's bytes into the same frames with every compressed message
/// inflated: RSV1 cleared, the payload plain, masked with a zero key (a client frame
/// must be masked). Everything else (control frames, plain messages, and anything
/// malformed, which the frame reader below then refuses) passes through unchanged.
///
/// Inflating is bounded: a message that inflates past `max_message` bytes becomes a
/// frame header announcing `max_message + 1` bytes, which the frame reader refuses as
/// too big (1009), and nothing after it is read.
pub struct Inflater {
    max_message: usize,
    phase: Phase,
    /// The compressed message under way, across its frames.
    message: Option<Box<Message>>,
}

enum Phase {
    /// Expecting a frame header.
    Header,
    /// Copying `left` payload bytes unchanged.
    Pass { left: u64 },
    /// Inflating `left` payload bytes of a compressed message's frame.
    Inflate {
        left: u64,
        mask: [u8; 4],
        offset: usize,
        fin: bool,
        opcode: u8,
    },
    /// A message was too big: the rest is ignored.
    Done,
}

struct Message {
    inflate: Decompress,
    /// What this frame inflated to so far.
    out: Vec<u8>,
    /// Inflated bytes of the message so far (its earlier frames included).
    total: usize,
}

impl Inflater {
    /// An inflater for a connection whose messages may be `max_message` bytes.
    pub fn new(max_message: usize) -> Inflater {
        Inflater {
            max_message,
            phase: Phase::Header,
            message: None,
        }
    }

    /// Reads what it can of `input`, appends plain frames to `out`, and returns how
    /// many bytes it consumed (fewer than all when a frame header is incomplete).
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, InflateError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match &mut self.phase {
                Phase::Done => return Ok(input.len()),
                Phase::Header => match self.header(rest, out) {
                    Some(n) => {
                        used += n;
                        // An empty compressed frame ends as soon as it starts.
                        self.end_of_frame(out)?;
                    }
                    None => break,
                },
                Phase::Pass { left } => {
                    let n = (*left).min(rest.len() as u64) as usize;
                    out.put_slice(&rest[..n]);
                    *left -= n as u64;
                    used += n;
                    if *left == 0 {
                        self.phase = Phase::Header;
                    }
                }
                Phase::Inflate { left, .. } => {
                    let n = (*left).min(rest.len() as u64) as usize;
                    self.inflate(&rest[..n])?;
                    used += n;
                    self.end_of_frame(out)?;
                }
            }
        }
        Ok(used)
    }

    /// Parses a frame header at the start of `input`; `None` when it is incomplete.
    fn header(&mut self, input: &[u8], out: &mut BytesMut) -> Option<usize> {
        let (b0, b1) = (*input.first()?, *input.get(1)?);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes(input.get(2..4)?.try_into().ok()?) as u64,
                4,
            ),
            127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?), 10),
            n => (n as u64, 2),
        };
        let mask: [u8; 4] = if masked {
            let m = input.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            m
        } else {
            [0; 4]
        };
        let opcode = b0 & 0x0f;
        let rsv = b0 & 0x70;
        let fin = b0 & 0x80 != 0;
        let starts = rsv == 0x40 && matches!(opcode, 1 | 2) && self.message.is_none();
        let continues = rsv == 0 && opcode == 0 && self.message.is_some();
        if masked && (starts || continues) {
            if starts {
                self.message = Some(Box::new(Message {
                    inflate: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS),
                    out: Vec::new(),
                    total: 0,
                }));
            }
            self.phase = Phase::Inflate {
                left: len,
                mask,
                offset: 0,
                fin,
                opcode,
            };
        } else {
            out.put_slice(&input[..at]);
            self.phase = if len == 0 {
                Phase::Header
            } else {
                Phase::Pass { left: len }
            };
        }
        Some(at)
    }

    /// Unmasks and inflates a piece of the current frame's payload.
    fn inflate(&mut self, piece: &[u8]) -> Result<(), InflateError> {
        let Phase::Inflate {
            left, mask, offset, ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        let mut plain = piece.to_vec();
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= mask[(*offset + i) % 4];
        }
        *offset += piece.len();
        *left -= piece.len() as u64;
        let limit = self.max_message;
        let m = self
            .message
            .as_mut()
            .expect("a compressed message under way");
        inflate_into(m, &plain, limit)
    }

    /// At the end of a compressed frame: its plain frame goes out; at the message's
    /// end the sync flush's tail is added back and the context dropped.
    fn end_of_frame(&mut self, out: &mut BytesMut) -> Result<(), InflateError> {
        let Phase::Inflate {
            left: 0,
            fin,
            opcode,
            ..
        } = self.phase
        else {
            return Ok(());
        };
        let limit = self.max_message;
        let m = self
            .message
            .as_mut()
            .expect("a compressed message under way");
        if fin {
            inflate_into(m, &TAIL, limit)?;
        }
        if m.total > limit {
            // Announce a frame over the limit: the frame reader closes with 1009.
            put_header(out, 0x80 | opcode, limit as u64 + 1);
            self.phase = Phase::Done;
            self.message = None;
            return Ok(());
        }
        put_header(out, if fin { 0x80 } else { 0 } | opcode, m.out.len() as u64);
        out.put_slice(&m.out);
        m.out.clear();
        if fin {
            self.message = None;
        }
        self.phase = Phase::Header;
        Ok(())
    }
}

/// Inflates `input` into the message's buffer, stopping once it passes `limit`.
fn inflate_into(m: &mut Message, mut input: &[u8], limit: usize) -> Result<(), InflateError> {
    loop {
        if m.total > limit {
            return Ok(());
        }
        let room = (limit + 1 - m.total).min(64 * 1024);
        m.out.reserve(room);
        let (in0, out0) = (m.inflate.total_in(), m.inflate.total_out());
        m.inflate
            .decompress_vec(input, &mut m.out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        let read = (m.inflate.total_in() - in0) as usize;
        let wrote = (m.inflate.total_out() - out0) as usize;
        input = &input[read..];
        m.total += wrote;
        if input.is_empty() && m.out.len() < m.out.capacity() {
            return Ok(());
        }
        if read == 0 && wrote == 0 {
            // No progress with room to spare: the rest of the input is not deflate.
            return if input.is_empty() {
                Ok(())
            } else {
                Err(InflateError::Corrupt)
            };
        }
    }
}

/// A client frame header (masked, zero key) for `len` payload bytes.
fn put_header(out: &mut BytesMut, first: u8, len: u64) {
    out.put_u8(first);
    match len {
        n if n < 126 => out.put_u8(0x80 | n as u8),
        n if n <= u16::MAX as u64 => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n);
        }
    }
    out.put_slice(&[0; 4]);
}

#[cfg(test)]
mod tests;
