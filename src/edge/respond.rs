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
        /// Its `Content-Type`, if any.
        content_type: Option<String>,
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

    fn parts(&self) -> (Option<&str>, Bytes) {
        match self {
            Refusal::Error { code, reason, .. } => (
                Some(JSON),
                serde_json::json!({ "error": code, "reason": reason })
                    .to_string()
                    .into(),
            ),
            Refusal::App {
                content_type, body, ..
            } => (content_type.as_deref(), body.clone()),
        }
    }

    /// Writes the refusal through pingora, unless a response has already started.
    pub async fn write(&self, session: &mut Session) -> pingora::Result<()> {
        let (content_type, body) = self.parts();
        write(session, self.status(), content_type, body).await
    }

    /// The refusal as a response (the admin listener).
    pub fn to_response(&self) -> Response<Vec<u8>> {
        let (content_type, body) = self.parts();
        response(self.status(), content_type, body.to_vec())
    }
}

const JSON: &str = "application/json";

/// A JSON response that is not a refusal (admin answers: `{"ready":true}`, ...).
pub fn json_response(status: StatusCode, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    response(status, Some(JSON), body.into())
}

fn response(status: StatusCode, content_type: Option<&str>, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-length", body.len())
        .header("cache-control", "no-store");
    if let Some(ct) = content_type.and_then(|c| http::HeaderValue::from_str(c).ok()) {
        b = b.header("content-type", ct);
    }
    b.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Vec::new());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Writes a complete response with `body` through pingora, unless one has started.
pub async fn write(
    session: &mut Session,
    status: StatusCode,
    content_type: Option<&str>,
    body: Bytes,
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let mut h = ResponseHeader::build(status, Some(3))?;
    if let Some(ct) = content_type {
        h.insert_header("content-type", ct)?;
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
        let r = Refusal::App {
            status: StatusCode::UNAUTHORIZED,
            content_type: Some("text/plain".into()),
            body: Bytes::from_static(b"log in"),
        };
        let resp = r.to_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.body(), b"log in");
        assert_eq!(r.code(), "app");
    }
}
