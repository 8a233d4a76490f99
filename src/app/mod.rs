//! The way back from a client to the app: a route's `app:` callbacks, as plain HTTP
//! requests to the app's own REST handlers.
//!
//! - `connect`: `POST`ed after authorization, before the client is admitted. A 2xx
//!   admits (its JSON body may add `subscribe` subjects and first `events`); any other
//!   answer goes back to the client unchanged; no answer within `timeout` is
//!   `503 app_unavailable`.
//! - `message`: `POST`ed for every WebSocket `rpc` (every frame in raw mode); the
//!   answer becomes the reply. Never awaited by the session: replies come back through
//!   the client's queue in completion order.
//! - `disconnect`: queued when a held connection ends and sent in the background with
//!   retries ([`disconnect`]); the session never waits for it.
//!
//! Every callback carries `Fanfare-Connection` and `Fanfare-Route` and the handshake
//! headers named in `forward_headers` (captured once, at connect).

pub mod disconnect;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

pub use disconnect::{Disconnects, Ended};

use crate::config::AppConfig;
use crate::edge::respond::{Refusal, app_headers};
use crate::metrics::Metrics;
use crate::routing::path::Params;
use crate::routing::subject::is_valid_subscribe_subject;

/// The largest app answer fanfare reads (a connect body, an rpc reply).
pub const MAX_ANSWER: usize = 1 << 20;
/// Subjects a connect answer may add at most.
const MAX_CONNECT_SUBJECTS: usize = 100;
/// Events a connect answer may deliver first at most.
const MAX_CONNECT_EVENTS: usize = 100;

/// Handshake headers captured at connect and sent with every callback.
pub type Headers = Arc<[(HeaderName, HeaderValue)]>;

/// One route's callbacks.
pub struct App {
    connect: Option<String>,
    message: Option<String>,
    disconnect: Option<String>,
    timeout: Duration,
    forward: Vec<HeaderName>,
    /// rpcs one connection may have in flight.
    pub max_in_flight: usize,
    route: HeaderValue,
    http: reqwest::Client,
    metrics: Metrics,
    disconnects: Disconnects,
}

/// What the connect callback is told about a new connection.
pub struct Connecting<'a> {
    /// Its id (`<instance>.<n>`): the app addresses it at `fanfare.connection.<id>`.
    pub id: &'a str,
    /// The route's path parameters.
    pub params: &'a Params,
    /// `ws`, `sse` or `poll`.
    pub transport: &'static str,
    /// The route's subjects for it.
    pub subjects: &'a [String],
    /// The client's address.
    pub remote_addr: Option<std::net::IpAddr>,
    /// Its `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// Socket.IO: the CONNECT packet's auth payload (`io({ auth })`).
    pub auth: Option<&'a serde_json::Value>,
}

/// What a connect callback's 2xx answer adds.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Admission {
    /// More subjects for this connection (the app is the authority: not limited by
    /// `allow_subscribe`, only checked as subjects).
    pub subscribe: Vec<String>,
    /// Events delivered to this connection before anything else.
    pub events: Vec<FirstEvent>,
}

/// An event of a connect answer.
#[derive(Debug, Deserialize)]
pub struct FirstEvent {
    /// Its name (default `message`).
    #[serde(default)]
    pub event: Option<String>,
    /// Its data: a string is sent as its text, anything else as its JSON.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl FirstEvent {
    /// The payload bytes.
    pub fn payload(&self) -> Bytes {
        match &self.data {
            serde_json::Value::String(s) => Bytes::from(s.clone()),
            v => Bytes::from(v.to_string()),
        }
    }
}

/// How an rpc ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx: its status and body.
    Reply(u16, Bytes),
    /// Any other status: its status and body.
    AppError(u16, Bytes),
    /// No answer within `app.timeout`.
    Timeout,
    /// The app could not be reached (or sent an answer over [`MAX_ANSWER`]).
    Unavailable(String),
}

impl App {
    /// The route's callbacks (`None` when it has none). Paths are on `base`.
    pub fn new(
        config: &AppConfig,
        base: &str,
        route: &str,
        http: reqwest::Client,
        metrics: &Metrics,
        disconnects: &Disconnects,
    ) -> Result<Option<App>, String> {
        if !config.is_active() {
            return Ok(None);
        }
        let url = |p: &Option<String>| {
            p.as_ref().map(|p| {
                if p.starts_with('/') {
                    format!("{base}{p}")
                } else {
                    p.clone()
                }
            })
        };
        let forward = config
            .forward_headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("{h}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Some(App {
            connect: url(&config.connect),
            message: url(&config.message),
            disconnect: url(&config.disconnect),
            timeout: config.timeout.0,
            forward,
            max_in_flight: config.max_in_flight,
            route: HeaderValue::from_str(route).map_err(|e| e.to_string())?,
            http,
            metrics: metrics.clone(),
            disconnects: disconnects.clone(),
        }))
    }

    /// Whether the route has a `message` handler.
    pub fn handles_messages(&self) -> bool {
        self.message.is_some()
    }

    /// The forwarded headers of a handshake, kept for the connection's callbacks.
    /// Each value is copied: a request's values are slices of pingora's read buffer
    /// (4 KiB), which a clone would keep alive for the connection's life.
    pub fn capture(&self, headers: &http::HeaderMap) -> Headers {
        self.forward
            .iter()
            .flat_map(|name| {
                headers.get_all(name).iter().filter_map(move |v| {
                    let owned = http::HeaderValue::from_bytes(v.as_bytes()).ok()?;
                    Some((name.clone(), owned))
                })
            })
            .collect()
    }

    /// Whether the callbacks get header `name` (lower case).
    pub fn forwards(&self, name: &str) -> bool {
        self.forward.iter().any(|h| h.as_str() == name)
    }

    fn post(&self, url: &str, id: &str, headers: &Headers) -> reqwest::RequestBuilder {
        let mut call = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header("fanfare-route", self.route.clone())
            .header("fanfare-connection", id);
        for (k, v) in headers.iter() {
            call = call.header(k.clone(), v.clone());
        }
        call
    }

    fn count(&self, kind: &str, outcome: &str, started: Instant) {
        self.metrics
            .app_callbacks
            .with_label_values(&[kind, outcome])
            .inc();
        self.metrics
            .app_callback_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Asks the app whether `c` may connect. `Ok(None)` when the route has no
    /// `connect` handler.
    pub async fn connect(
        &self,
        c: &Connecting<'_>,
        headers: &Headers,
    ) -> Result<Option<Admission>, Refusal> {
        let Some(url) = &self.connect else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut body = serde_json::json!({
            "connection": c.id,
            "route": self.route.to_str().unwrap_or_default(),
            "params": c.params,
            "transport": c.transport,
            "subjects": c.subjects,
            "remote_addr": c.remote_addr.map(|a| a.to_string()),
            "user_agent": c.user_agent,
        });
        if let Some(auth) = c.auth {
            body["auth"] = auth.clone();
        }
        let sent = self.post(url, c.id, headers).json(&body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let timeout = e.is_timeout();
                self.count(
                    "connect",
                    if timeout { "timeout" } else { "unavailable" },
                    started,
                );
                tracing::warn!(error = %e.without_url(), "connect callback failed");
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "app_unavailable",
                    if timeout {
                        "the app's connect handler did not answer in time"
                    } else {
                        "the app's connect handler could not be reached"
                    },
                ));
            }
        };
        let status = resp.status();
        let answer_headers = app_headers(resp.headers());
        let body = read_bounded(resp).await;
        if !status.is_success() {
            self.count("connect", "refused", started);
            return Err(Refusal::App {
                status,
                headers: answer_headers,
                body: body.unwrap_or_default(),
            });
        }
        let bad = |reason: String| {
            self.count("connect", "app_error", started);
            tracing::warn!(%reason, "unusable connect answer");
            Refusal::new(StatusCode::BAD_GATEWAY, "bad_app_answer", reason)
        };
        let body = body.map_err(bad)?;
        let admission = parse_admission(&body).map_err(bad)?;
        self.count("connect", "ok", started);
        Ok(Some(admission))
    }

    /// Sends an rpc's `body` to the app's `message` handler. `None` when the route has
    /// none.
    pub async fn message(
        &self,
        id: &str,
        headers: &Headers,
        event: Option<&str>,
        body: Bytes,
        content_type: &'static str,
    ) -> Option<Answer> {
        let url = self.message.as_ref()?;
        let started = Instant::now();
        let mut call = self
            .post(url, id, headers)
            .header(http::header::CONTENT_TYPE, content_type);
        if let Some(e) = event {
            call = call.header("fanfare-event", e);
        }
        let answer = match call.body(body).send().await {
            Err(e) if e.is_timeout() => Answer::Timeout,
            Err(e) => Answer::Unavailable(e.without_url().to_string()),
            Ok(resp) => {
                let status = resp.status();
                match read_bounded(resp).await {
                    Err(e) => Answer::Unavailable(e),
                    Ok(b) if status.is_success() => Answer::Reply(status.as_u16(), b),
                    Ok(b) => Answer::AppError(status.as_u16(), b),
                }
            }
        };
        let outcome = match &answer {
            Answer::Reply(..) => "ok",
            Answer::AppError(..) => "app_error",
            Answer::Timeout => "timeout",
            Answer::Unavailable(_) => "unavailable",
        };
        self.count("message", outcome, started);
        Some(answer)
    }

    /// Counts an rpc refused because the connection has `max_in_flight` under way.
    pub fn count_busy(&self) {
        self.metrics
            .app_callbacks
            .with_label_values(&["message", "busy"])
            .inc();
    }

    /// Queues the disconnect callback for a connection that ended (never waits).
    pub fn disconnected(&self, ended: &Ended<'_>, headers: &Headers) {
        let Some(url) = &self.disconnect else {
            return;
        };
        let body = serde_json::json!({
            "connection": ended.id,
            "route": self.route.to_str().unwrap_or_default(),
            "params": ended.params,
            "transport": ended.transport,
            "reason": ended.reason,
            "duration_ms": ended.duration.as_millis() as u64,
            "delivered": ended.delivered,
        });
        let mut h: Vec<(HeaderName, HeaderValue)> = headers.to_vec();
        h.push((HeaderName::from_static("fanfare-route"), self.route.clone()));
        if let Ok(v) = HeaderValue::from_str(ended.id) {
            h.push((HeaderName::from_static("fanfare-connection"), v));
        }
        self.disconnects
            .push(url.clone(), h, Bytes::from(body.to_string()), self.timeout);
    }
}

/// Reads an answer's body, at most [`MAX_ANSWER`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_ANSWER {
                    return Err(format!("the app's answer is over {MAX_ANSWER} bytes"));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(e.without_url().to_string()),
        }
    }
}

/// A connect answer's body: empty or not JSON admits with nothing more; JSON must be an
/// object whose `subscribe` are subjects and `events` are `{event, data}`.
fn parse_admission(body: &[u8]) -> Result<Admission, String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(Admission::default());
    };
    if !value.is_object() {
        return Ok(Admission::default());
    }
    let a: Admission = serde_json::from_value(value)
        .map_err(|e| format!("the connect answer's JSON is not {{subscribe, events}}: {e}"))?;
    if a.subscribe.len() > MAX_CONNECT_SUBJECTS || a.events.len() > MAX_CONNECT_EVENTS {
        return Err(format!(
            "a connect answer adds at most {MAX_CONNECT_SUBJECTS} subjects and {MAX_CONNECT_EVENTS} events"
        ));
    }
    if let Some(s) = a.subscribe.iter().find(|s| !is_valid_subscribe_subject(s)) {
        return Err(format!(
            "the connect answer's subject {s:?} is not a NATS subject"
        ));
    }
    if let Some(e) = a
        .events
        .iter()
        .filter_map(|e| e.event.as_deref())
        .find(|e| !crate::wire::sse::is_safe_field(e))
    {
        return Err(format!(
            "the connect answer's event name {e:?} must be 1-256 bytes without CR, LF or NUL"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_answer_is_checked() {
        let a = parse_admission(br#"{"subscribe":["user.7"],"events":[{"event":"hello","data":"hi"},{"data":{"n":1}}]}"#).unwrap();
        assert_eq!(a.subscribe, ["user.7"]);
        assert_eq!(a.events[0].payload(), "hi");
        assert_eq!(a.events[1].payload(), r#"{"n":1}"#);
        assert!(a.events[1].event.is_none());
        assert!(parse_admission(b"").unwrap().subscribe.is_empty());
        assert!(parse_admission(b"OK").unwrap().events.is_empty());
        assert!(parse_admission(br#"{"subscribe":["a b"]}"#).is_err());
        assert!(parse_admission(br#"{"subscribe":"user.7"}"#).is_err());
        assert!(parse_admission(br#"{"events":[{"event":"a\nb","data":1}]}"#).is_err());
    }
}
