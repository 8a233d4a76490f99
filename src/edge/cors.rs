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

/// Same-origin requests are always allowed; cross-origin ones only when listed.
pub fn origin_allowed(route: &Route, origin: &str, host: Option<&str>) -> bool {
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
        return true;
    }
    route
        .config
        .allowed_origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

fn cors_headers(h: &mut ResponseHeader, origin: Option<&str>) -> Result<()> {
    if let Some(o) = origin {
        h.insert_header("access-control-allow-origin", o)?;
        h.insert_header("access-control-allow-credentials", "true")?;
        h.insert_header("vary", "Origin")?;
    }
    Ok(())
}

/// Answers a CORS preflight.
pub async fn preflight(session: &mut Session, origin: Option<&str>) -> Result<()> {
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
pub fn ok_head(origin: Option<&str>) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(StatusCode::OK, Some(8))?;
    cors_headers(&mut h, origin)?;
    Ok(h)
}

/// The SSE head for a stream that stays inside pingora (HTTP/2).
pub fn sse_head(origin: Option<&str>) -> Result<ResponseHeader> {
    let mut h = ok_head(origin)?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("x-accel-buffering", "no")?;
    Ok(h)
}

/// The raw HTTP/1.1 SSE head: close-delimited body, so no chunk framing per write.
pub fn sse_head_h1(origin: Option<&str>) -> bytes::Bytes {
    let mut s = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n",
    );
    if let Some(o) = origin {
        s.push_str(&format!(
            "access-control-allow-origin: {o}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n"
        ));
    }
    s.push_str("\r\n");
    bytes::Bytes::from(s)
}
