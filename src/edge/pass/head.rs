//! Request and response heads on the fast path: which requests it takes, the head it
//! sends the app, and how a response from the app is framed and rewritten.
//!
//! The fast path takes only what it can frame without doubt: HTTP/1.1, an
//! origin-form target of plain URI characters, a common method, exactly one `Host`,
//! no `Transfer-Encoding`, `Upgrade` or `Expect`, at most one `Content-Length` with a
//! body of at most [`MAX_BODY`]. Anything else ([`Parsed::Pingora`]) goes to pingora,
//! which answers or refuses it as before. The head sent to the app is the client's,
//! minus the hop-by-hop headers (the standard ones and those the client's
//! `Connection` names, as pingora strips them), with `X-Forwarded-For` (appended to),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` set.

/// The longest request head the fast path reads before handing the connection to
/// pingora (which has its own, larger limit).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body the fast path takes: it reads a whole request before it
/// sends it, so a request on a pooled connection the app closed meanwhile can be sent
/// again. Larger uploads stream through pingora.
pub const MAX_BODY: u64 = 64 * 1024;
/// Header lines read per head.
const MAX_HEADERS: usize = 100;
/// The longest response head from the app.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Headers never passed on (RFC 9110 §7.6.1, and those pingora strips).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// A request the fast path will pass on.
#[derive(Debug)]
pub struct Request {
    /// The head for the app, then the body: the whole request as it is sent.
    pub upstream: Vec<u8>,
    /// Bytes of the client's head.
    pub head_len: usize,
    /// Bytes of its body (`Content-Length`).
    pub body_len: usize,
    /// A `HEAD` request: the response has no body.
    pub head_method: bool,
    /// The client asked to close after this response.
    pub close: bool,
}

/// What the bytes read so far make of a request head.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request the fast path does not take (or a malformed one): pingora's.
    Pingora,
    /// A request the fast path takes.
    Ready(Request),
}

/// Parses the request head at the start of `buf`. `claimed` says whether a path is
/// fanfare's own (a realtime route, the client files): those go to pingora.
pub fn request(buf: &[u8], peer: &str, claimed: impl Fn(&str) -> bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Pingora,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Pingora;
    };
    if !METHODS.contains(&method) || !target.starts_with('/') || !target.bytes().all(plain) {
        return Parsed::Pingora;
    }
    let path = target.split('?').next().unwrap_or(target);
    if claimed(path) {
        return Parsed::Pingora;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut body_len = None;
    let mut forwarded_for = None;
    let mut close = false;
    let mut nominated: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if body_len.is_some() {
                return Parsed::Pingora;
            }
            match parse_length(h.value) {
                Some(n) if n <= MAX_BODY => body_len = Some(n as usize),
                _ => return Parsed::Pingora,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::Pingora;
        } else if name.eq_ignore_ascii_case("connection") {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Parsed::Pingora;
            };
            for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    nominated.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") && forwarded_for.is_none() {
            forwarded_for = Some(h.value);
        }
    }
    let (1, Some(host)) = (hosts, host) else {
        return Parsed::Pingora;
    };
    let body_len = body_len.unwrap_or(0);
    let mut up = Vec::with_capacity(head_len + 256 + body_len);
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(target.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if HOP_BY_HOP.iter().any(|x| name.eq_ignore_ascii_case(x))
            || nominated.iter().any(|x| name.eq_ignore_ascii_case(x))
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
        {
            continue;
        }
        header(&mut up, name.as_bytes(), h.value);
    }
    up.extend_from_slice(b"x-forwarded-for: ");
    // As pingora's filter did: the previous list when it is printable, then the peer.
    if let Some(prev) = forwarded_for.filter(|v| visible(v) && !v.trim_ascii().is_empty()) {
        up.extend_from_slice(prev);
        up.extend_from_slice(b", ");
    }
    up.extend_from_slice(peer.as_bytes());
    up.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    header(&mut up, b"x-forwarded-host", host);
    up.extend_from_slice(b"\r\n");
    Parsed::Ready(Request {
        upstream: up,
        head_len,
        body_len,
        head_method: method == "HEAD",
        close,
    })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The characters of an origin-form target taken without a second look (RFC 3986
/// unreserved, sub-delims, `:@/?%`): what pingora's URI parser and every app agree on.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// A `Content-Length` value: digits only, no sign, no list.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// How a response body from the app ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` request, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: forwarded as it is, the end found by [`super::chunked::Chunked`].
    Chunked,
    /// Until the app closes: the client's connection closes after it too.
    UntilClose,
}

/// A response head from the app (rewritten for the client into the caller's buffer).
#[derive(Debug)]
pub struct Response {
    /// Bytes of the app's head.
    pub head_len: usize,
    /// The status.
    pub status: u16,
    /// How its body ends.
    pub framing: Framing,
    /// The app's connection can be pooled after the body (no `Connection: close`).
    pub reusable: bool,
}

/// A response head fanfare will not pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses the response head at the start of `buf`: `Ok(None)` until it is whole;
/// once it is, `head` holds the head for the client. `head_method`: the request was
/// `HEAD`. `close`: the client's connection closes after this response (the head
/// then says so).
pub fn response(
    buf: &[u8],
    head_method: bool,
    close: bool,
    head: &mut Vec<u8>,
) -> Result<Option<Response>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(BadResponse("response head too large")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err(BadResponse("101 without an upgrade asked"));
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut reusable = true;
    let mut nominated: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(BadResponse("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the last (here: the only) coding.
            let v = std::str::from_utf8(h.value).unwrap_or("");
            chunked = Some(chunked.unwrap_or(true) && v.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    reusable = false;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    nominated.push(token);
                }
            }
        }
    }
    let informational = (100..200).contains(&status);
    let framing = if informational || head_method || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    let close = close || framing == Framing::UntilClose;
    head.clear();
    // httparse reads exactly three digits.
    let digits = [status / 100, status / 10 % 10, status % 10].map(|d| b'0' + d as u8);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(&digits);
    head.push(b' ');
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let te_with_length = chunked.is_some() && name.eq_ignore_ascii_case("content-length");
        if te_with_length
            || ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|x| name.eq_ignore_ascii_case(x))
            || nominated.iter().any(|x| name.eq_ignore_ascii_case(x))
        {
            continue;
        }
        header(head, name.as_bytes(), h.value);
    }
    if close && !informational {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        head_len,
        status,
        framing,
        reusable,
    }))
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
