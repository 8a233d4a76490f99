//! fanfare's WebSocket client protocol: JSON text frames. Pure functions, no I/O.
//!
//! client → server
//! - `{"type":"subscribe","subject":"…","since":"<cursor>","ref":…}`
//! - `{"type":"unsubscribe","subject":"…","ref":…}`
//! - `{"type":"publish","subject":"…","data":…,"event":"…","encoding":"base64","ref":…}`
//! - `{"type":"rpc","data":…,"event":"…","ref":…}`: `data` is POSTed to the route's
//!   `app.message`; the app's answer comes back as `reply` (or `error`) with the `ref`
//!
//! server → client
//! - `{"type":"message","subject":"…","event":"…","id":"<cursor>","data":<payload>}`
//!   (`data` is the payload when it is JSON, else a string, else base64 with
//!   `"encoding":"base64"`)
//! - `{"type":"ack","ref":…}`, `{"type":"error","ref":…,"code":"…","reason":"…"}`
//! - `{"type":"reply","ref":…,"status":200,"data":<the app's body>}`, and for an app
//!   that refused `{"type":"error","ref":…,"code":"app_error","status":N,"data":…}`
//! - `{"type":"reset","reason":"slow_consumer","dropped":N}`

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::sse::is_safe_field;

/// A machine-readable error code sent in `{"type":"error"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Malformed JSON, a missing field, or an unknown `type`.
    BadRequest,
    /// The subject is not well-formed (or would inject tokens).
    InvalidSubject,
    /// The connection's grant does not cover the subject.
    Forbidden,
    /// The connection holds `ws.max_subscriptions` already.
    TooManySubscriptions,
    /// `unsubscribe` of a subject the connection is not subscribed to.
    NotSubscribed,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// Too many requests (reserved for the quota issue).
    RateLimited,
    /// fanfare holds `limits.max_topics` subjects already.
    TooManyTopics,
    /// The broker (or, for an rpc, the app) is not reachable right now.
    Unavailable,
    /// The app answered an rpc with a non-2xx status.
    AppError,
    /// The app did not answer an rpc within `app.timeout`.
    Timeout,
    /// The connection has `app.max_in_flight` rpcs under way already.
    Busy,
    /// The route has no handler for this (no `app.message` for an rpc).
    NotConfigured,
}

impl Code {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::InvalidSubject => "invalid_subject",
            Code::Forbidden => "forbidden",
            Code::TooManySubscriptions => "too_many_subscriptions",
            Code::NotSubscribed => "not_subscribed",
            Code::BinaryNotSupported => "binary_not_supported",
            Code::RateLimited => "rate_limited",
            Code::TooManyTopics => "too_many_topics",
            Code::Unavailable => "unavailable",
            Code::AppError => "app_error",
            Code::Timeout => "timeout",
            Code::Busy => "busy",
            Code::NotConfigured => "not_configured",
        }
    }
}

/// A request the session could not carry out: the code and reason of the
/// `{"type":"error"}` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The code.
    pub code: Code,
    /// A human reason.
    pub reason: String,
}

impl Failure {
    /// A failure with `code` and `reason`.
    pub fn new(code: Code, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
        }
    }
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Subscribe to a subject.
    Subscribe {
        /// The subject (NATS wildcards allowed when the grant covers them).
        subject: String,
        /// Resume cursor (honoured by the resume issue; accepted and ignored today).
        since: Option<String>,
    },
    /// Unsubscribe from a subject.
    Unsubscribe {
        /// The subject as subscribed.
        subject: String,
    },
    /// Publish a payload.
    Publish {
        /// The concrete subject.
        subject: String,
        /// The payload bytes.
        payload: Bytes,
        /// The event name (`Fanfare-Event`).
        event: Option<String>,
    },
    /// A request to the app's `app.message` handler.
    Rpc {
        /// The body to POST (the JSON of `data`, or its bytes with base64).
        body: Bytes,
        /// Whether `body` is JSON (else raw bytes from base64).
        json: bool,
        /// The event name, sent as `Fanfare-Event`.
        event: Option<String>,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject: Option<String>,
    since: Option<String>,
    data: Option<Value>,
    event: Option<String>,
    encoding: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

/// A parse failure, with the request's `ref` when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The `ref` to answer with.
    pub reference: Option<Value>,
    /// The code.
    pub code: Code,
    /// A human reason.
    pub reason: String,
}

/// Parses a text frame. On success returns the request and its `ref`.
pub fn parse(text: &str) -> Result<(Request, Option<Value>), ParseError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| ParseError {
        reference: None,
        code: Code::BadRequest,
        reason: format!("invalid JSON request: {e}"),
    })?;
    let reference = raw.reference.clone();
    let fail = |code, reason: &str| ParseError {
        reference: reference.clone(),
        code,
        reason: reason.to_string(),
    };
    let subject = || {
        raw.subject
            .clone()
            .ok_or_else(|| fail(Code::BadRequest, "missing \"subject\""))
    };
    let request = match raw.kind.as_deref() {
        Some("subscribe") => Request::Subscribe {
            subject: subject()?,
            since: raw.since.clone(),
        },
        Some("unsubscribe") => Request::Unsubscribe {
            subject: subject()?,
        },
        Some(kind @ ("publish" | "rpc")) => {
            let data = raw
                .data
                .as_ref()
                .ok_or_else(|| fail(Code::BadRequest, "missing \"data\""))?;
            let payload = match (raw.encoding.as_deref(), data) {
                (Some("base64"), Value::String(s)) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Bytes::from)
                    .map_err(|_| fail(Code::BadRequest, "\"data\" is not valid base64"))?,
                (Some("base64"), _) => {
                    return Err(fail(Code::BadRequest, "base64 \"data\" must be a string"));
                }
                (Some(_), _) => return Err(fail(Code::BadRequest, "unknown \"encoding\"")),
                (None, v) => Bytes::from(v.to_string()),
            };
            if let Some(e) = &raw.event
                && !is_safe_field(e)
            {
                return Err(fail(
                    Code::BadRequest,
                    "\"event\" must be 1-256 bytes without CR, LF or NUL",
                ));
            }
            if kind == "rpc" {
                Request::Rpc {
                    body: payload,
                    json: raw.encoding.is_none(),
                    event: raw.event.clone(),
                }
            } else {
                Request::Publish {
                    subject: subject()?,
                    payload,
                    event: raw.event.clone(),
                }
            }
        }
        Some(other) => return Err(fail(Code::BadRequest, &format!("unknown type {other:?}"))),
        None => return Err(fail(Code::BadRequest, "missing \"type\"")),
    };
    Ok((request, reference))
}

/// `{"type":"ack","ref":…}` (with the subject for subscribe/unsubscribe).
pub fn ack(reference: Option<&Value>, subject: Option<&str>) -> String {
    let mut v = serde_json::json!({ "type": "ack" });
    if let Some(r) = reference {
        v["ref"] = r.clone();
    }
    if let Some(s) = subject {
        v["subject"] = Value::from(s);
    }
    v.to_string()
}

/// `{"type":"error","ref":…,"code":"…","reason":"…"}`.
pub fn error(reference: Option<&Value>, code: Code, reason: &str) -> String {
    let mut v = serde_json::json!({ "type": "error", "code": code.as_str(), "reason": reason });
    if let Some(r) = reference {
        v["ref"] = r.clone();
    }
    v.to_string()
}

/// `{"type":"reply","ref":…,"status":N,"data":<body>}`: the app's answer to an rpc
/// (`data` is the body as JSON when it is JSON, else a string, else base64).
pub fn reply(reference: Option<&Value>, status: u16, body: &[u8]) -> Vec<u8> {
    app_answer(br#"{"type":"reply""#, reference, status, body)
}

/// `{"type":"error","ref":…,"code":"app_error","status":N,"data":<body>}`: the app
/// refused an rpc.
pub fn app_error(reference: Option<&Value>, status: u16, body: &[u8]) -> Vec<u8> {
    app_answer(
        br#"{"type":"error","code":"app_error""#,
        reference,
        status,
        body,
    )
}

fn app_answer(head: &[u8], reference: Option<&Value>, status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(head);
    if let Some(r) = reference {
        out.extend_from_slice(br#","ref":"#);
        let _ = serde_json::to_writer(&mut out, r);
    }
    out.extend_from_slice(format!(r#","status":{status},"data":"#).as_bytes());
    if body.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        push_data(&mut out, body);
    }
    out.push(b'}');
    out
}

/// `{"type":"reset","reason":"slow_consumer","dropped":N}`.
pub fn reset(dropped: u64) -> String {
    format!(r#"{{"type":"reset","reason":"slow_consumer","dropped":{dropped}}}"#)
}

/// `{"type":"reset","reason":"<why>"}`: a resume could not replay what was missed.
pub fn reset_reason(reason: &str) -> String {
    format!(r#"{{"type":"reset","reason":"{reason}"}}"#)
}

/// The `message` JSON for an event on `subject` named `name` with cursor `id`.
pub fn message(subject: &str, name: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 96);
    out.extend_from_slice(br#"{"type":"message","subject":"#);
    push_json_str(&mut out, subject);
    out.extend_from_slice(br#","event":"#);
    push_json_str(&mut out, name);
    if !id.is_empty() {
        out.extend_from_slice(br#","id":"#);
        push_json_str(&mut out, id);
    }
    out.extend_from_slice(br#","data":"#);
    push_data(&mut out, payload);
    out.push(b'}');
    out
}

/// Appends `payload` as a JSON value: itself when it is JSON, else a string, else
/// base64 (followed by `"encoding":"base64"`).
fn push_data(out: &mut Vec<u8>, p: &[u8]) {
    if !p.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok() {
        out.extend_from_slice(p);
    } else if let Ok(s) = std::str::from_utf8(p) {
        push_json_str(out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(p)
                .as_bytes(),
        );
        out.extend_from_slice(br#"","encoding":"base64""#);
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(payload: &[u8]) -> Value {
        serde_json::from_slice(&message("orders.42", "created", "ep-7", payload)).unwrap()
    }

    #[test]
    fn message_with_json_payload_embeds_it() {
        let v = json(br#"{"a":[1,2]}"#);
        assert_eq!(
            v,
            serde_json::json!({"type":"message","subject":"orders.42","event":"created","id":"ep-7","data":{"a":[1,2]}})
        );
    }

    #[test]
    fn message_with_text_and_binary_payloads() {
        assert_eq!(json(b"hello \"x\"")["data"], "hello \"x\"");
        assert_eq!(json(b"")["data"], "");
        let v = json(&[0xff, 0x00, 0x10]);
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["data"], "/wAQ");
    }

    #[test]
    fn parses_requests() {
        let (r, reference) = parse(r#"{"type":"subscribe","subject":"a.b","ref":1}"#).unwrap();
        assert_eq!(
            r,
            Request::Subscribe {
                subject: "a.b".into(),
                since: None
            }
        );
        assert_eq!(reference, Some(Value::from(1)));
        let (r, _) =
            parse(r#"{"type":"publish","subject":"a","data":{"x":1},"event":"e"}"#).unwrap();
        assert_eq!(
            r,
            Request::Publish {
                subject: "a".into(),
                payload: Bytes::from(r#"{"x":1}"#),
                event: Some("e".into())
            }
        );
        let (r, _) =
            parse(r#"{"type":"publish","subject":"a","data":"/wA=","encoding":"base64"}"#).unwrap();
        assert!(matches!(r, Request::Publish { payload, .. } if payload[..] == [0xff, 0]));
    }

    #[test]
    fn refuses_bad_requests_with_ref() {
        for (text, has_ref) in [
            ("not json", false),
            (r#"{"type":"dance","ref":"r"}"#, true),
            (r#"{"ref":"r"}"#, true),
            (r#"{"type":"subscribe","ref":"r"}"#, true),
            (r#"{"type":"publish","subject":"a","ref":"r"}"#, true),
            (
                r#"{"type":"publish","subject":"a","data":"%%","encoding":"base64","ref":"r"}"#,
                true,
            ),
            (
                r#"{"type":"publish","subject":"a","data":1,"event":"a\nb","ref":"r"}"#,
                true,
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{text}");
            assert_eq!(e.reference.is_some(), has_ref, "{text}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            ack(Some(&Value::from("r1")), None),
            r#"{"ref":"r1","type":"ack"}"#
        );
        let e: Value = serde_json::from_str(&error(None, Code::Forbidden, "no")).unwrap();
        assert_eq!(e["code"], "forbidden");
        assert!(e.get("ref").is_none());
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let reason = |t: &str| parse(t).unwrap_err().reason;
        assert!(reason("[1]").starts_with("invalid JSON request"));
        assert!(reason(r#"{"type":1}"#).starts_with("invalid JSON request"));
        assert_eq!(reason(r#"{"subject":"a"}"#), "missing \"type\"");
        assert_eq!(reason(r#"{"type":"unsubscribe"}"#), "missing \"subject\"");
        assert_eq!(
            reason(r#"{"type":"publish","subject":"a"}"#),
            "missing \"data\""
        );
        assert_eq!(
            reason(r#"{"type":"publish","subject":"a","data":1,"encoding":"base64"}"#),
            "base64 \"data\" must be a string"
        );
        assert_eq!(
            reason(r#"{"type":"publish","subject":"a","data":1,"encoding":"hex"}"#),
            "unknown \"encoding\""
        );
        assert_eq!(reason(r#"{"type":"dance"}"#), "unknown type \"dance\"");
    }

    #[test]
    fn rpc_parses_its_data_as_the_body() {
        let (r, reference) =
            parse(r#"{"type":"rpc","data":{"say":"hi"},"event":"said","ref":1}"#).unwrap();
        assert_eq!(reference, Some(Value::from(1)));
        assert_eq!(
            r,
            Request::Rpc {
                body: Bytes::from_static(br#"{"say":"hi"}"#),
                json: true,
                event: Some("said".into())
            }
        );
        let (r, _) = parse(r#"{"type":"rpc","data":"AAE=","encoding":"base64"}"#).unwrap();
        assert_eq!(
            r,
            Request::Rpc {
                body: Bytes::from_static(&[0, 1]),
                json: false,
                event: None
            }
        );
        assert_eq!(
            parse(r#"{"type":"rpc","ref":2}"#).unwrap_err().reason,
            "missing \"data\""
        );
        assert!(
            parse(r#"{"type":"rpc","data":1,"event":"a\nb"}"#).is_err(),
            "an event name cannot carry a line break into a header"
        );
    }

    #[test]
    fn replies_carry_the_apps_body_as_json_or_a_string() {
        let v: Value =
            serde_json::from_slice(&reply(Some(&Value::from(1)), 200, br#"{"ok":true}"#)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reply","ref":1,"status":200,"data":{"ok":true}})
        );
        let v: Value = serde_json::from_slice(&reply(None, 201, b"plain text")).unwrap();
        assert_eq!(v["data"], "plain text");
        assert!(v.get("ref").is_none());
        let v: Value = serde_json::from_slice(&reply(None, 204, b"")).unwrap();
        assert_eq!(v["data"], Value::Null);
        let v: Value =
            serde_json::from_slice(&app_error(Some(&Value::from("x")), 422, br#"{"e":1}"#))
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","code":"app_error","ref":"x","status":422,"data":{"e":1}})
        );
    }

    #[test]
    fn a_message_without_a_cursor_has_no_id() {
        let v: Value = serde_json::from_slice(&message("s", "e", "", b"1")).unwrap();
        assert!(v.get("id").is_none(), "{v}");
    }
}
