//! `POST /publish/{subject}` on the admin listener: the body is the payload, the
//! optional `Fanfare-Event` header names the event. It publishes into whichever broker
//! runs (NATS or embedded), so the app can publish with plain HTTP.

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use pingora::protocols::http::ServerSession;

use crate::broker::{Broker, BrokerError, EVENT_HEADER, MSG_ID_HEADER, Message};
use crate::edge::respond::{Refusal, json_response};
use crate::metrics::Metrics;
use crate::routing::path::percent_decode;
use crate::routing::subject::is_valid_publish_subject;
use crate::wire::sse::is_safe_field;

/// The largest payload accepted by the publish endpoint (NATS' default max_payload).
pub const MAX_PUBLISH_BYTES: usize = 1 << 20;

fn error(status: StatusCode, code: &'static str, reason: &str) -> Response<Vec<u8>> {
    Refusal::new(status, code, reason).to_response()
}

pub(crate) async fn handle(
    broker: &Broker,
    metrics: &Metrics,
    session: &mut ServerSession,
    method: &Method,
) -> Response<Vec<u8>> {
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
