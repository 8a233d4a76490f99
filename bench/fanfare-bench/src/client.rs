//! The subscriber side: connecting from several loopback source addresses, the SSE
//! and WebSocket handshakes, de-chunking, and counting deliveries.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use std::sync::Arc;

use crate::proc::now_ns;
use crate::{Args, Transport};

/// Counters shared by every subscriber (the rest is per connection).
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    /// Bytes read from the sockets while receiving.
    pub(crate) wire_bytes: AtomicU64,
    /// What those bytes carried, inflated (the frames' payloads when compressed).
    pub(crate) message_bytes: AtomicU64,
    /// Nanoseconds since `origin` of the last delivery.
    pub(crate) last_recv_ns: AtomicU64,
    pub(crate) origin: Instant,
}

/// What one subscriber saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) latencies_us: Vec<u32>,
    /// How many times each sequence arrived.
    pub(crate) counts: HashMap<u64, u32>,
}

/// The source address of connection `i`: 127.0.0.1, then .2, … every 25,000.
pub(crate) fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 1 + (i / 25_000) as u8])
}

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
}

pub(crate) fn target(url: &str, i: usize) -> Target {
    let url = url.replace("{i}", &i.to_string());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|_| panic!("the URL needs IP:PORT: {url}"));
    Target {
        addr,
        host: hostport.to_string(),
        path,
    }
}

pub(crate) async fn connect(t: &Target, i: usize) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    // Binding before connect makes the kernel search for a free port per socket (slow
    // with thousands open); only extra source addresses are bound explicitly.
    if i >= 25_000 {
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::new(source(i), 0))?;
    }
    let stream = s.connect(t.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP response head: the status and whether the body is chunked.
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) chunked: bool,
}

/// Reads an HTTP response head; returns it and any bytes after it.
pub(crate) async fn read_head(s: &mut TcpStream) -> std::io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut b = [0u8; 1024];
    loop {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        buf.extend_from_slice(&b[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunked = head.lines().any(|l| {
                l.strip_prefix("transfer-encoding:")
                    .is_some_and(|v| v.contains("chunked"))
            });
            return Ok((Head { status, chunked }, buf[p + 4..].to_vec()));
        }
    }
}

pub(crate) fn ws_mask(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let key = [0x12u8, 0x34, 0x56, 0x78];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Undoes HTTP/1.1 chunked framing. A server may cut one event across chunks (pushpin
/// does, by flow-control credits); scanning the raw bytes would then read a chunk-size
/// line in the middle of a number.
#[derive(Default)]
pub(crate) struct Dechunk {
    /// Bytes left in the current chunk's data.
    pub(crate) left: usize,
    /// Bytes of the CRLF after a chunk's data still to skip.
    pub(crate) skip: usize,
    /// A size line not yet complete.
    pub(crate) line: Vec<u8>,
}

impl Dechunk {
    /// Appends the body bytes in `raw` to `out`.
    fn feed(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        while !raw.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(raw.len());
                self.skip -= n;
                raw = &raw[n..];
            } else if self.left > 0 {
                let n = self.left.min(raw.len());
                out.extend_from_slice(&raw[..n]);
                self.left -= n;
                raw = &raw[n..];
                if self.left == 0 {
                    self.skip = 2;
                }
            } else {
                let Some(nl) = raw.iter().position(|b| *b == b'\n') else {
                    self.line.extend_from_slice(raw);
                    return;
                };
                self.line.extend_from_slice(&raw[..nl]);
                raw = &raw[nl + 1..];
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or("").trim();
                // The last chunk (0) and trailers carry nothing for us.
                self.left = usize::from_str_radix(size, 16).unwrap_or(0);
            }
        }
    }
}

/// Opens one subscriber and returns its stream, bytes already read, and a de-chunker
/// when the response body is chunked.
pub(crate) async fn subscribe(
    args: &Args,
    i: usize,
    subject_index: usize,
) -> std::io::Result<(TcpStream, Vec<u8>, Option<Dechunk>)> {
    let t = target(&args.url, subject_index);
    let mut s = connect(&t, i).await?;
    let req = match args.transport {
        Transport::Sse => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            t.path, t.host
        ),
        Transport::Ws | Transport::NatsWs | Transport::Socketio => {
            let key = base64::engine::general_purpose::STANDARD.encode((i as u128).to_be_bytes());
            let offer = if args.deflate {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            };
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
                t.path, t.host
            )
        }
    };
    s.write_all(req.as_bytes()).await?;
    let (head, raw) = read_head(&mut s).await?;
    let want = if args.transport == Transport::Sse {
        200
    } else {
        101
    };
    if head.status != want {
        return Err(std::io::Error::other(format!("status {}", head.status)));
    }
    let (rest, dechunk) = if head.chunked && args.transport == Transport::Sse {
        let mut d = Dechunk::default();
        let mut body = Vec::new();
        d.feed(&raw, &mut body);
        (body, Some(d))
    } else {
        (raw, None)
    };
    if args.transport == Transport::Socketio {
        // The Engine.IO open packet, then CONNECT to "/" and its answer.
        let mut acc = rest;
        let mut b = [0u8; 4096];
        while !acc.windows(2).any(|w| w == b"0{") {
            let n = s.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the open packet"));
            }
            acc.extend_from_slice(&b[..n]);
        }
        s.write_all(&ws_mask(b"40")).await?;
        while !acc.windows(3).any(|w| w == b"40{") {
            let n = s.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the namespace answer"));
            }
            acc.extend_from_slice(&b[..n]);
        }
        return Ok((s, Vec::new(), None));
    }
    if args.transport == Transport::NatsWs {
        let subject = args.subject.replace("{i}", &subject_index.to_string());
        let cmd = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
        );
        s.write_all(&ws_mask(cmd.as_bytes())).await?;
        // Subscribed once the PONG (after the SUB) arrives.
        let mut acc = rest;
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&acc).contains("PONG") {
            let n = s.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::other("nats closed"));
            }
            acc.extend_from_slice(&b[..n]);
        }
        return Ok((s, Vec::new(), None));
    }
    Ok((s, rest, dechunk))
}

/// Finds `"key":<digits>` in `text` from `from`.
pub(crate) fn find_num(text: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let pos = text[from..].windows(key.len()).position(|w| w == key)? + from + key.len();
    let mut end = pos;
    while end < text.len() && text[end].is_ascii_digit() {
        end += 1;
    }
    // Digits running to the end of what has arrived may be cut by a read boundary
    // (servers that split a message across writes): wait for the rest.
    if end == text.len() {
        return None;
    }
    Some((
        std::str::from_utf8(&text[pos..end]).ok()?.parse().ok()?,
        end,
    ))
}

/// How a subscriber's bytes are framed.
#[derive(Clone, Copy)]
pub(crate) struct Framing {
    /// NATS protocol inside the WebSocket (answer its PINGs).
    pub(crate) nats_ws: bool,
    /// permessage-deflate was offered: parse frames and inflate compressed ones.
    pub(crate) deflate: bool,
}

/// Reads deliveries until `expected` arrived, the stream ends, or `stop` fires.
pub(crate) async fn receive(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    mut dechunk: Option<Dechunk>,
    expected: usize,
    stats: Arc<Stats>,
    framing: Framing,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let Framing { nats_ws, deflate } = framing;
    // With permessage-deflate the frames are parsed and compressed ones inflated
    // before the scan for sequence numbers.
    let mut frames = deflate.then(|| std::mem::take(&mut buf));
    let mut seen = Seen::default();
    let mut b = vec![0u8; 16 * 1024];
    let mut scan_from = 0;
    let mut count = 0usize;
    loop {
        while let Some((seq, end)) = find_num(&buf, b"\"seq\":", scan_from) {
            let Some((ts, end2)) = find_num(&buf, b"\"ts\":", end) else {
                break;
            };
            let lat_us =
                ((now_ns().saturating_sub(ts as u128)) / 1000).min(u32::MAX as u128) as u32;
            stats.received.fetch_add(1, Ordering::Relaxed);
            stats
                .last_recv_ns
                .fetch_max(stats.origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            seen.latencies_us.push(lat_us);
            *seen.counts.entry(seq).or_insert(0) += 1;
            count += 1;
            scan_from = end2;
        }
        if count >= expected {
            return seen;
        }
        if nats_ws && buf.windows(4).any(|w| w == b"PING") {
            let _ = s.write_all(&ws_mask(b"PONG\r\n")).await;
            buf.clear();
            scan_from = 0;
        }
        if scan_from > 0 {
            buf.drain(..scan_from);
            scan_from = 0;
        }
        if buf.len() > 1 << 20 {
            buf.clear();
        }
        let before = buf.len();
        tokio::select! {
            r = s.read(&mut b) => match r {
                Ok(0) | Err(_) => return seen,
                Ok(n) => {
                    stats.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    match (dechunk.as_mut(), frames.as_mut()) {
                        (Some(d), _) => d.feed(&b[..n], &mut buf),
                        (None, Some(f)) => {
                            f.extend_from_slice(&b[..n]);
                            unframe(f, &mut buf);
                        }
                        (None, None) => buf.extend_from_slice(&b[..n]),
                    }
                    stats
                        .message_bytes
                        .fetch_add(buf.len().saturating_sub(before) as u64, Ordering::Relaxed);
                }
            },
            _ = stop.wait_for(|s| *s) => return seen,
        }
    }
}

/// Moves the complete server frames at the start of `frames` into `out` as their
/// payloads, inflating the compressed ones (permessage-deflate, no context).
fn unframe(frames: &mut Vec<u8>, out: &mut Vec<u8>) {
    let mut at = 0;
    while let (Some(&first), Some(&b1)) = (frames.get(at), frames.get(at + 1)) {
        let (len, hl) = match b1 & 0x7f {
            126 => match frames.get(at + 2..at + 4) {
                Some(l) => (u16::from_be_bytes([l[0], l[1]]) as usize, 4),
                None => break,
            },
            127 => match frames.get(at + 2..at + 10) {
                Some(l) => (u64::from_be_bytes(l.try_into().unwrap()) as usize, 10),
                None => break,
            },
            n => (n as usize, 2),
        };
        let Some(payload) = frames.get(at + hl..at + hl + len) else {
            break;
        };
        if first & 0x40 != 0 {
            let mut d = flate2::Decompress::new(false);
            let mut input = payload.to_vec();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut plain = Vec::with_capacity(len * 8 + 256);
            loop {
                let done = d.total_in() as usize;
                if d.decompress_vec(&input[done..], &mut plain, flate2::FlushDecompress::Sync)
                    .is_err()
                    || d.total_in() as usize == input.len()
                {
                    break;
                }
                plain.reserve(plain.capacity());
            }
            out.extend_from_slice(&plain);
        } else if first & 0x08 == 0 {
            out.extend_from_slice(payload);
        }
        at += hl + len;
    }
    frames.drain(..at);
}

#[cfg(test)]
mod tests {
    use super::{Dechunk, find_num, unframe};

    #[test]
    fn dechunk_joins_an_event_cut_across_chunks_and_reads() {
        let body = b"data: {\"seq\":1,\"ts\":1234567}\n\n";
        // The event split into chunks of 13 and the rest, then fed in 3-byte reads.
        let (a, b) = body.split_at(13);
        let mut wire = format!("{:x}\r\n", a.len()).into_bytes();
        wire.extend_from_slice(a);
        wire.extend_from_slice(format!("\r\n{:x};ext=1\r\n", b.len()).as_bytes());
        wire.extend_from_slice(b);
        wire.extend_from_slice(b"\r\n");
        let mut d = Dechunk::default();
        let mut out = Vec::new();
        for piece in wire.chunks(3) {
            d.feed(piece, &mut out);
        }
        assert_eq!(out, body);
    }

    #[test]
    fn find_num_reads_a_complete_number() {
        let text = br#"data: {"seq":42,"ts":1700000000123,"pad":""}"#;
        let (seq, end) = find_num(text, b"\"seq\":", 0).expect("seq");
        assert_eq!(seq, 42);
        let (ts, _) = find_num(text, b"\"ts\":", end).expect("ts");
        assert_eq!(ts, 1_700_000_000_123);
    }

    #[test]
    fn find_num_waits_for_digits_cut_by_a_read() {
        // A read boundary inside the number: parsing "17" would give a bogus latency.
        let text = br#"data: {"seq":42,"ts":17"#;
        let (_, end) = find_num(text, b"\"seq\":", 0).expect("seq");
        assert_eq!(find_num(text, b"\"ts\":", end), None);
        assert_eq!(find_num(br#"{"seq":4"#, b"\"seq\":", 0), None);
    }

    #[test]
    fn unframe_inflates_compressed_frames_and_waits_for_partial_ones() {
        let text = br#"{"seq":1,"ts":2,"pad":"abcabcabcabcabcabcabcabc"}"#;
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut packed = Vec::with_capacity(256);
        c.compress_vec(text, &mut packed, flate2::FlushCompress::Sync)
            .unwrap();
        packed.truncate(packed.len() - 4);
        let mut wire = vec![0xc1, packed.len() as u8];
        wire.extend_from_slice(&packed);
        wire.extend_from_slice(&[0x81, 3, b'a', b'b', b'c']);
        wire.extend_from_slice(&[0x89, 0]); // a ping: no payload kept
        wire.extend_from_slice(&[0x81, 5, b'x']); // cut short
        let mut out = Vec::new();
        unframe(&mut wire, &mut out);
        assert_eq!(out, [&text[..], b"abc"].concat());
        assert_eq!(wire, [0x81, 5, b'x'], "the partial frame waits");
    }
}
