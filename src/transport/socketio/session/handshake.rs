//! What a session keeps of the HTTP request that opened it.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;

/// The HTTP request that opened the session (its headers authenticate the namespace
/// connects, and go to the app's callbacks), kept small: every held session has one,
/// and a namespace connect (once or twice a session) rebuilds the request from it.
pub struct Handshake {
    /// The request's URI (its query may carry the credentials).
    uri: Box<str>,
    /// The headers kept, in order, with bytes of their own.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The client's address.
    pub remote: Option<IpAddr>,
}

impl Handshake {
    /// Keeps what a session needs of `req`: its URI and the headers `keep` names
    /// (lower case). pingora's header values are slices of the connection's read buffer
    /// (4 KiB), so a clone of the request would hold that buffer for as long as the
    /// session lives, with every header a browser sends.
    pub fn new(
        req: &RequestHeader,
        remote: Option<IpAddr>,
        keep: impl Fn(&str) -> bool,
    ) -> Handshake {
        let headers = req
            .headers
            .iter()
            .filter(|(n, _)| keep(n.as_str()))
            .filter_map(|(n, v)| Some((n.clone(), HeaderValue::from_bytes(v.as_bytes()).ok()?)))
            .collect();
        Handshake {
            uri: req.uri.to_string().into_boxed_str(),
            headers,
            remote,
        }
    }

    /// The request as it came (with the headers kept), for an authorization.
    pub fn request(&self) -> RequestHeader {
        // The URI was parsed once already; `/` is the fallback that cannot fail.
        let mut req = RequestHeader::build_no_case(
            Method::GET,
            self.uri.as_bytes(),
            Some(self.headers.len()),
        )
        .or_else(|_| RequestHeader::build_no_case(Method::GET, b"/", None))
        .expect("a request for / builds");
        for (n, v) in &self.headers {
            let _ = req.append_header(n.clone(), v.clone());
        }
        req
    }

    /// The headers kept.
    pub fn header_map(&self) -> HeaderMap {
        self.headers.iter().cloned().collect()
    }

    /// The client's `User-Agent`.
    pub fn user_agent(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == http::header::USER_AGENT)
            .and_then(|(_, v)| v.to_str().ok())
    }
}
