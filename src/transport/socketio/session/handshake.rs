//! What a session keeps of the HTTP request that opened it.

use std::net::IpAddr;

use pingora::http::RequestHeader;

/// The HTTP request that opened the session (its headers authenticate the namespace
/// connects, and go to the app's callbacks).
pub struct Handshake {
    /// The request head.
    pub request: RequestHeader,
    /// The client's address.
    pub remote: Option<IpAddr>,
}

impl Handshake {
    /// Keeps a copy of `req` with the headers `keep` names (lower case) and bytes of
    /// its own. pingora's header values are slices of the connection's read buffer
    /// (4 KiB), so a plain clone would hold that buffer for as long as the session
    /// lives, and every header a browser sends with it.
    pub fn new(
        req: &RequestHeader,
        remote: Option<IpAddr>,
        keep: impl Fn(&str) -> bool,
    ) -> Handshake {
        let uri = req.uri.to_string();
        let kept = || req.headers.iter().filter(|(n, _)| keep(n.as_str()));
        let Ok(mut request) =
            RequestHeader::build_no_case(req.method.clone(), uri.as_bytes(), Some(kept().count()))
        else {
            // Not reached (the URI was parsed once already); the clone is still right.
            return Handshake {
                request: req.clone(),
                remote,
            };
        };
        for (name, value) in kept() {
            if let Ok(v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                let _ = request.append_header(name.clone(), v);
            }
        }
        Handshake { request, remote }
    }
}
