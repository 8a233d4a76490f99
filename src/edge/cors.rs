//! The Origin policy of realtime routes and the response heads that carry CORS:
//! the preflight answer, the SSE head (pingora's for HTTP/2, raw bytes for the HTTP/1.1
//! hand-off) and the long-poll head.

use http::StatusCode;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;

use super::route::Route;

/// How long the browser may cache a CORS preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// What a request's `Origin` may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowOrigin {
    /// This origin, with credentials (same-origin, or listed in `allowed_origins`).
    Exact(String),
    /// Any origin, without credentials (`allowed_origins: ["*"]`).
    Any,
}

/// The verdict on a request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` header (not a browser, or a same-origin GET from an old one).
    Missing,
    /// Allowed.
    Allowed(AllowOrigin),
    /// Present but not allowed (or not ASCII, which no browser sends).
    Refused,
}

/// Checks `origin` against the route: same-origin (scheme, host and port all equal to
/// the request's) and listed origins are allowed with credentials; `*` allows any
/// origin without them.
pub fn check(
    route: &Route,
    origin: Option<&http::HeaderValue>,
    host: Option<&str>,
    https: bool,
) -> OriginCheck {
    let Some(origin) = origin else {
        return OriginCheck::Missing;
    };
    let Ok(origin) = origin.to_str() else {
        return OriginCheck::Refused;
    };
    let scheme = if https { "https" } else { "http" };
    if host.is_some_and(|h| same_origin(origin, scheme, h)) {
        return OriginCheck::Allowed(AllowOrigin::Exact(origin.to_string()));
    }
    let listed = &route.config.allowed_origins;
    if listed
        .iter()
        .any(|a| a != "*" && a.eq_ignore_ascii_case(origin))
    {
        OriginCheck::Allowed(AllowOrigin::Exact(origin.to_string()))
    } else if listed.iter().any(|a| a == "*") {
        OriginCheck::Allowed(AllowOrigin::Any)
    } else {
        OriginCheck::Refused
    }
}

/// Whether `origin` is `scheme://host` of the request, default ports made explicit.
fn same_origin(origin: &str, scheme: &str, host: &str) -> bool {
    let Some((o_scheme, o_host)) = origin.split_once("://") else {
        return false;
    };
    let default_port = |s: &str| {
        if s.eq_ignore_ascii_case("https") {
            "443"
        } else {
            "80"
        }
    };
    let with_port = |h: &str, s: &str| {
        let has_port = h
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !h.ends_with(']');
        if has_port {
            h.to_ascii_lowercase()
        } else {
            format!("{}:{}", h.to_ascii_lowercase(), default_port(s))
        }
    };
    o_scheme.eq_ignore_ascii_case(scheme) && with_port(o_host, o_scheme) == with_port(host, scheme)
}

fn cors_headers(h: &mut ResponseHeader, origin: Option<&AllowOrigin>) -> Result<()> {
    match origin {
        Some(AllowOrigin::Exact(o)) => {
            h.insert_header("access-control-allow-origin", o)?;
            h.insert_header("access-control-allow-credentials", "true")?;
            h.insert_header("vary", "Origin")?;
        }
        Some(AllowOrigin::Any) => h.insert_header("access-control-allow-origin", "*")?,
        None => {}
    }
    Ok(())
}

/// Answers a CORS preflight.
pub async fn preflight(session: &mut Session, origin: Option<&AllowOrigin>) -> Result<()> {
    let mut h = ResponseHeader::build(StatusCode::NO_CONTENT, Some(6))?;
    cors_headers(&mut h, origin)?;
    h.insert_header("access-control-allow-methods", "GET, OPTIONS")?;
    h.insert_header(
        "access-control-allow-headers",
        "Last-Event-ID, Authorization, Cache-Control, Content-Type",
    )?;
    h.insert_header("access-control-max-age", PREFLIGHT_MAX_AGE)?;
    h.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(h), true).await
}

/// A `200` head with the CORS headers for `origin`, for a long-poll answer.
pub fn ok_head(origin: Option<&AllowOrigin>) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(StatusCode::OK, Some(8))?;
    cors_headers(&mut h, origin)?;
    Ok(h)
}

/// The SSE head for a stream that stays inside pingora (HTTP/2).
pub fn sse_head(origin: Option<&AllowOrigin>) -> Result<ResponseHeader> {
    let mut h = ok_head(origin)?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("x-accel-buffering", "no")?;
    Ok(h)
}

/// The raw HTTP/1.1 SSE head: a chunked body (one chunk per write: common client
/// stacks buffer a body without framing until 512 bytes or 64 KiB arrive), and the
/// connection closes when the stream ends.
pub fn sse_head_h1(origin: Option<&AllowOrigin>) -> Box<[u8]> {
    let mut s = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\nconnection: close\r\n",
    );
    match origin {
        Some(AllowOrigin::Exact(o)) => s.push_str(&format!(
            "access-control-allow-origin: {o}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n"
        )),
        Some(AllowOrigin::Any) => s.push_str("access-control-allow-origin: *\r\n"),
        None => {}
    }
    s.push_str("\r\n");
    s.into_bytes().into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        assert!(same_origin("http://a.example", "http", "a.example"));
        assert!(same_origin("http://a.example:80", "http", "A.example"));
        assert!(same_origin("https://a.example", "https", "a.example:443"));
        assert!(same_origin(
            "http://127.0.0.1:8080",
            "http",
            "127.0.0.1:8080"
        ));
        assert!(same_origin("http://[::1]:8080", "http", "[::1]:8080"));
        assert!(!same_origin("https://a.example", "http", "a.example"));
        assert!(!same_origin("http://a.example:8080", "http", "a.example"));
        assert!(!same_origin("ftp://a.example", "http", "a.example"));
        assert!(!same_origin("http://a.example.evil", "http", "a.example"));
        assert!(!same_origin("null", "http", "a.example"));
    }
}
