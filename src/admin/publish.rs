//! `POST /publish/{subject}` on the admin listener: the body is the payload, the
//! optional `Fanfare-Event` header names the event. It publishes into whichever broker
//! runs (NATS or embedded), so the app can publish with plain HTTP.

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

use crate::broker::{
    ARGS_HEADER, Broker, BrokerError, CONTROL_HEADER, EVENT_HEADER, MSG_ID_HEADER, Message,
};
use crate::edge::respond::{Refusal, json_response};
use crate::metrics::Metrics;
use crate::routing::path::percent_decode;
use crate::routing::subject::{is_connection_subject, is_reserved, is_valid_publish_subject};
use crate::wire::sse::is_safe_field;

/// The largest payload accepted by the publish endpoint (NATS' default max_payload).
pub const MAX_PUBLISH_BYTES: usize = 1 << 20;

fn error(status: StatusCode, code: &'static str, reason: &str) -> Response<Vec<u8>> {
    Refusal::new(status, code, reason).to_response()
}

/// Who may publish through the admin listener.
pub enum Access {
    /// Anyone who reaches it (the admin listener is on loopback).
    Open,
    /// Requests with `Authorization: Bearer <token>`; the token's SHA-256 is kept.
    Token([u8; 32]),
    /// Nobody: the listener is not on loopback and no token is set (404).
    Off,
}

impl Access {
    /// The access for an admin listener on `listen` with `token`.
    pub fn new(listen: std::net::SocketAddr, token: Option<&str>) -> Access {
        match token {
            Some(t) => Access::Token(Sha256::digest(t.as_bytes()).into()),
            None if listen.ip().is_loopback() => Access::Open,
            None => {
                tracing::warn!(
                    admin = %listen,
                    "POST /publish is off: the admin listener is not on loopback and admin.publish_token is not set"
                );
                Access::Off
            }
        }
    }

    /// Whether `authorization` (the header value) is allowed to publish. The token is
    /// compared as SHA-256 digests, every byte, so the time taken says nothing about it.
    fn allows(&self, authorization: Option<&str>) -> bool {
        match self {
            Access::Open => true,
            Access::Off => false,
            Access::Token(want) => {
                let Some(given) = authorization.and_then(|v| {
                    let (scheme, t) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(t.trim())
                }) else {
                    return false;
                };
                let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        }
    }
}

pub(crate) async fn handle(
    access: &Access,
    broker: &Broker,
    metrics: &Metrics,
    session: &mut ServerSession,
    method: &Method,
) -> Response<Vec<u8>> {
    if matches!(access, Access::Off) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint");
    }
    let authorization = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !access.allows(authorization) {
        metrics
            .publish_total
            .with_label_values(&["unauthorized"])
            .inc();
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "POST /publish needs Authorization: Bearer <admin.publish_token>",
        );
    }
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
    }
    let raw = &session.req_header().uri.path()["/publish/".len()..];
    let Some(subject) = percent_decode(raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_subject",
            "subject is not valid percent-encoded UTF-8",
        );
    };
    if !is_valid_publish_subject(&subject) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_subject",
            "subject must be dot-separated non-empty tokens without wildcards or whitespace",
        );
    }
    if is_reserved(&subject) {
        metrics
            .publish_total
            .with_label_values(&["reserved_subject"])
            .inc();
        return error(
            StatusCode::FORBIDDEN,
            "reserved_subject",
            "subjects starting with $ or _INBOX. belong to NATS",
        );
    }
    let header = |name: &str| {
        session
            .req_header()
            .headers
            .get(name)
            .map(|v| v.to_str().map(str::to_string))
    };
    let event = match header(EVENT_HEADER) {
        None => None,
        Some(Ok(e)) if is_safe_field(&e) => Some(e),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_event",
                "Fanfare-Event must be 1-256 bytes without CR, LF or NUL",
            );
        }
    };
    let msg_id = match header(MSG_ID_HEADER) {
        None => None,
        Some(Ok(e)) if is_safe_field(&e) => Some(e),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_msg_id",
                "Nats-Msg-Id must be 1-256 bytes without CR, LF or NUL",
            );
        }
    };
    // A control message to one connection (`subscribe`, `unsubscribe`, `close`).
    let control = match header(CONTROL_HEADER) {
        None => None,
        Some(Ok(c))
            if is_connection_subject(&subject)
                && ["subscribe", "unsubscribe", "close"].contains(&c.as_str()) =>
        {
            Some(c)
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_control",
                "Fanfare-Control is subscribe, unsubscribe or close, on a fanfare.connection.<id> subject",
            );
        }
    };
    let spread = header(ARGS_HEADER).and_then(Result::ok).as_deref() == Some("spread");
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_PUBLISH_BYTES {
                    metrics
                        .publish_total
                        .with_label_values(&["too_large"])
                        .inc();
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "payload is over 1 MiB",
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string());
            }
        }
    }
    let mut msg = Message::new(subject, body.freeze());
    msg.event = event;
    msg.msg_id = msg_id;
    if let Some(c) = control {
        msg.headers.push((CONTROL_HEADER, c));
    }
    if spread {
        msg.headers.push((ARGS_HEADER, "spread".to_string()));
    }
    match broker.publish(msg).await {
        Ok(()) => {
            metrics.publish_total.with_label_values(&["ok"]).inc();
            json_response(StatusCode::ACCEPTED, r#"{"published":true}"#)
        }
        Err(BrokerError::Disconnected) => {
            metrics
                .publish_total
                .with_label_values(&["unavailable"])
                .inc();
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "nats_unavailable",
                "the broker is not connected",
            )
        }
        Err(e) => {
            metrics.publish_total.with_label_values(&["error"]).inc();
            error(StatusCode::BAD_GATEWAY, "publish_failed", &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_by_address_and_token() {
        let lo: std::net::SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert!(matches!(Access::new(lo, None), Access::Open));
        assert!(matches!(Access::new(any, None), Access::Off));
        let t = Access::new(any, Some("0123456789abcdef"));
        assert!(t.allows(Some("Bearer 0123456789abcdef")));
        assert!(t.allows(Some("bearer 0123456789abcdef")));
        assert!(!t.allows(Some("Bearer 0123456789abcdeF")));
        assert!(!t.allows(Some("0123456789abcdef")));
        assert!(!t.allows(None));
    }
}
