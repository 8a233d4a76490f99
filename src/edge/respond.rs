//! The one refusal type and the one JSON writer. Every refusal fanfare answers with
//! (a realtime handshake it will not upgrade, a request it cannot pass through, an
//! admin request it will not serve) is a [`Refusal`], written by the same code
//! whether it goes out through pingora's session (edge) or as an `http::Response`
//! (admin).
//!
//! fanfare's own refusals are `{"error":"<code>","reason":"<human reason>"}` with
//! `cache-control: no-store`; the app's own refusals (upstream auth) pass through
//! unchanged.

use bytes::Bytes;
use http::{Response, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::Session;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// fanfare's own refusal.
    Error {
        /// The status.
        status: StatusCode,
        /// The machine-readable code (`"error"` in the body).
        code: &'static str,
        /// A human reason; never a secret.
        reason: String,
    },
    /// The app's own answer, passed through unchanged (upstream auth).
    App {
        /// Its status.
        status: StatusCode,
        /// The headers of its answer that mean something to the client
        /// ([`APP_HEADERS`]); boxed, so a `Result<_, Refusal>` stays small.
        headers: Box<http::HeaderMap>,
        /// Its body (bounded by the caller).
        body: Bytes,
    },
}

impl Refusal {
    /// fanfare's own refusal.
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal::Error {
            status,
            code,
            reason: reason.into(),
        }
    }

    /// `500 internal` with the error's text.
    pub fn internal(e: impl std::fmt::Display) -> Refusal {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Error { status, .. } | Refusal::App { status, .. } => *status,
        }
    }

    /// The machine-readable code (`"app"` for a passed-through answer).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Error { code, .. } => code,
            Refusal::App { .. } => "app",
        }
    }

    /// The refusal as a Socket.IO `connect_error`'s message and data: fanfare's reason,
    /// or the app's JSON `message` (else the status text), with the status and body.
    pub fn message_and_data(&self) -> (String, Option<serde_json::Value>) {
        match self {
            Refusal::Error {
                code,
                reason,
                status,
            } => (
                reason.clone(),
                Some(serde_json::json!({ "status": status.as_u16(), "error": code })),
            ),
            Refusal::App { status, body, .. } => {
                let data = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|_| {
                    serde_json::Value::from(String::from_utf8_lossy(body).into_owned())
                });
                let message = data
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(
                        || status.canonical_reason().unwrap_or("refused").to_string(),
                        str::to_string,
                    );
                (
                    message,
                    Some(serde_json::json!({ "status": status.as_u16(), "body": data })),
                )
            }
        }
    }

    fn parts(&self) -> (http::HeaderMap, Bytes) {
        match self {
            Refusal::Error { code, reason, .. } => {
                let mut h = http::HeaderMap::new();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(JSON),
                );
                let body = serde_json::json!({ "error": code, "reason": reason }).to_string();
                (h, body.into())
            }
            Refusal::App { headers, body, .. } => ((**headers).clone(), body.clone()),
        }
    }

    /// Writes the refusal through pingora, unless a response has already started.
    pub async fn write(&self, session: &mut Session) -> pingora::Result<()> {
        let (headers, body) = self.parts();
        write(session, self.status(), &headers, body).await
    }

    /// The refusal as HTTP/1.1 bytes that close the connection (the edge's fast path).
    pub fn to_h1(&self) -> Vec<u8> {
        let r = self.to_response();
        let mut out = format!("HTTP/1.1 {}\r\n", r.status()).into_bytes();
        for (k, v) in r.headers() {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(r.body());
        out
    }

    /// The refusal as a response (the admin listener).
    pub fn to_response(&self) -> Response<Vec<u8>> {
        let (headers, body) = self.parts();
        response(self.status(), &headers, body.to_vec())
    }
}

/// The headers of an app's refusal that go back to the client with it: what it is,
/// where to go (a login redirect), how to authenticate, when to retry, and cookies.
pub const APP_HEADERS: [http::HeaderName; 5] = [
    http::header::CONTENT_TYPE,
    http::header::LOCATION,
    http::header::WWW_AUTHENTICATE,
    http::header::RETRY_AFTER,
    http::header::SET_COOKIE,
];

/// The [`APP_HEADERS`] of an app's answer.
pub fn app_headers(from: &http::HeaderMap) -> Box<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    for name in APP_HEADERS {
        for v in from.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    Box::new(h)
}

const JSON: &str = "application/json";

/// A JSON response that is not a refusal (admin answers: `{"ready":true}`, ...).
pub fn json_response(status: StatusCode, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(JSON),
    );
    response(status, &h, body.into())
}

fn response(status: StatusCode, headers: &http::HeaderMap, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = status;
    let h = r.headers_mut();
    for (k, v) in headers {
        h.append(k, v.clone());
    }
    h.insert(http::header::CONTENT_LENGTH, body.len().into());
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    *r.body_mut() = body;
    r
}

/// Writes a complete response with `body` through pingora, unless one has started.
pub async fn write(
    session: &mut Session,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: Bytes,
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let mut h = ResponseHeader::build(status, Some(4 + headers.len()))?;
    for (k, v) in headers {
        h.append_header(k.clone(), v.clone())?;
    }
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_refusals_are_json_with_code_and_reason() {
        let r = Refusal::new(StatusCode::FORBIDDEN, "forbidden", "no \"way\"");
        let resp = r.to_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()["content-type"], JSON);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "forbidden", "reason": "no \"way\""})
        );
    }

    #[test]
    fn app_refusals_pass_through_unchanged() {
        let mut from = http::HeaderMap::new();
        from.insert("content-type", "text/plain".parse().unwrap());
        from.insert("location", "/login".parse().unwrap());
        from.insert("x-internal", "not for the client".parse().unwrap());
        let r = Refusal::App {
            status: StatusCode::SEE_OTHER,
            headers: app_headers(&from),
            body: Bytes::from_static(b"log in"),
        };
        let resp = r.to_response();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.headers()["location"], "/login");
        assert!(resp.headers().get("x-internal").is_none());
        assert_eq!(resp.body(), b"log in");
        assert_eq!(r.code(), "app");
    }
}
