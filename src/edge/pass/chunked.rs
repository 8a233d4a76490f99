//! The end of a chunked body from the app (RFC 9112 §7.1). The fast path forwards the
//! chunks as they are and only needs to know where the body ends, so this reads the
//! framing without copying: sizes, data, the CRLF after each chunk, the trailer
//! section. Anything else (a bad size, a missing CRLF, an overlong line) is an error,
//! and the connections are closed rather than guessed at.

/// The longest chunk-size line (with extensions) and the longest trailer section.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        digits: u8,
    },
    /// After the size: extensions or whitespace up to CR.
    Extension,
    /// The LF after a size line.
    SizeLf,
    /// Data bytes left in the current chunk.
    Data(u64),
    /// The CR, then the LF after a chunk's data.
    DataCr,
    DataLf,
    /// The start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line, then its LF.
    Trailer,
    TrailerLf,
    /// The final LF.
    EndLf,
    /// The body is over.
    Done,
}

/// A chunked body's framing, fed as it arrives.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
}

/// The body is not valid chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl Chunked {
    /// Whether the whole body has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `bytes`, the next part of the body: how many of them belong to it (all of
    /// them until the end; fewer when the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        self.size = self.size << 4 | u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err(BadChunk("chunk size too large")),
                    None if digits == 0 => return Err(BadChunk("chunk size missing")),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b';' | b' ' | b'\t' => State::Extension,
                        _ => return Err(BadChunk("bad chunk size")),
                    },
                },
                State::Extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(BadChunk("chunk extension too long"));
                    }
                    match b {
                        b'\r' => State::SizeLf,
                        b'\n' => return Err(BadChunk("bare LF in a chunk size line")),
                        _ => State::Extension,
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk("CR without LF after a chunk size"));
                    }
                    let size = std::mem::take(&mut self.size);
                    self.line = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::DataCr | State::DataLf => {
                    return Err(BadChunk("no CRLF after chunk data"));
                }
                State::TrailerStart | State::Trailer => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(BadChunk("trailer section too long"));
                    }
                    match (self.state, b) {
                        (State::TrailerStart, b'\r') => State::EndLf,
                        (_, b'\r') => State::TrailerLf,
                        (_, b'\n') => return Err(BadChunk("bare LF in the trailers")),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => State::Done,
                State::TrailerLf | State::EndLf => return Err(BadChunk("CR without LF")),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every `step` bytes; the bytes taken in all.
    fn feed_split(body: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let mut c = Chunked::default();
        let mut taken = 0;
        for part in body.chunks(step) {
            let n = c.feed(part)?;
            taken += n;
            if c.done() {
                break;
            }
        }
        Ok((taken, c.done()))
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers_whatever_the_split() {
        let body =
            b"5\r\nhello\r\n1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(
                feed_split(body, step),
                Ok((body.len(), true)),
                "split {step}"
            );
        }
    }

    #[test]
    fn bytes_after_the_end_are_not_the_body() {
        let mut body = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = body.len();
        body.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut c = Chunked::default();
        assert_eq!(c.feed(&body), Ok(end));
        assert!(c.done());
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"10\r\nonly some"), Ok(13));
        assert!(!c.done());
    }

    #[test]
    fn bad_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"ffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            assert!(
                Chunked::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"1;".as_slice(), &[b'x'; MAX_LINE + 1]].concat();
        assert!(Chunked::default().feed(&long).is_err());
    }
}
