//! A realtime route's settings: path, transports, subjects, WebSocket, history,
//! long-polling and the client queue.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::app::{AppConfig, WsProtocol};
use super::auth::{AuthConfig, AuthMode};
use super::socketio::SocketIoConfig;
use super::value::{Dur, interpolated_opt};
use crate::routing::{path::PathPattern, subject::Template};

/// A realtime route: a path the edge serves itself instead of proxying.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path, with `{name}` capturing one segment: `/orders/{order_id}/events`.
    pub path: String,
    /// Transports served on this path. Default `[sse]`.
    #[serde(default = "default_transports")]
    pub transports: Vec<Transport>,
    /// Subject templates subscribed for every client: `orders.{order_id}`.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Subject patterns (NATS wildcards) a WebSocket client may `subscribe` to at run
    /// time. Default: none.
    #[serde(default)]
    pub allow_subscribe: Vec<String>,
    /// Subject patterns a WebSocket client may `publish` to. Default: none.
    #[serde(default)]
    pub allow_publish: Vec<String>,
    /// WebSocket settings.
    #[serde(default)]
    pub ws: WsConfig,
    /// What a reconnecting client can be replayed.
    #[serde(default)]
    pub history: HistoryConfig,
    /// Long-polling settings.
    #[serde(default)]
    pub poll: PollConfig,
    /// Authorization. Required: a route without `auth` is refused (deny by default).
    pub auth: AuthConfig,
    /// What happens when a client's queue is full. Default `drop_oldest`.
    #[serde(default)]
    pub slow_consumer: SlowConsumer,
    /// The per-client queue bound.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Origins allowed to read this route cross-site (CORS and the `Origin` check).
    /// `"*"` allows any. Default: none (same-origin only).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Whether a request without an `Origin` header (not a browser) is allowed.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub allow_missing_origin: bool,
    /// SSE heartbeat comment interval. Default `15s`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Dur,
    /// The `retry:` hint (reconnect delay) sent to SSE clients. Default `2s`.
    #[serde(default = "default_retry")]
    pub retry: Dur,
    /// How far each SSE connection's `retry:` may stray from `retry`, as a fraction:
    /// each connection gets a uniform value in `retry × [1 - j, 1 + j]`, so a restart
    /// does not bring every EventSource back in the same second. Default `0.5`.
    #[serde(default = "default_retry_jitter")]
    pub retry_jitter: f64,
    /// The app's callbacks: connect, message (rpc) and disconnect. Default: none.
    #[serde(default)]
    pub app: AppConfig,
    /// Socket.IO settings (`transports: [socketio]`).
    #[serde(default)]
    pub socketio: SocketIoConfig,
}

fn default_true() -> bool {
    true
}

fn default_transports() -> Vec<Transport> {
    vec![Transport::Sse]
}

fn default_heartbeat() -> Dur {
    Dur(Duration::from_secs(15))
}

fn default_retry_jitter() -> f64 {
    0.5
}

fn default_retry() -> Dur {
    Dur(Duration::from_secs(2))
}

/// WebSocket settings of a route.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest message (and frame) a client may send, in bytes; larger closes with 1009.
    /// Default `65536`.
    pub max_message: usize,
    /// Interval of server pings. Default `25s`.
    pub ping_interval: Dur,
    /// A client that has sent nothing (not even a pong) for `ping_interval + pong_timeout`
    /// is closed (4002). Default `10s`.
    pub pong_timeout: Dur,
    /// A client with no subscription for this long is closed (4003). Default `60s`.
    pub idle_timeout: Dur,
    /// Subscriptions one connection may hold (route subjects included). Default `100`.
    pub max_subscriptions: usize,
    /// Publishes per second one connection may make (token bucket). Default `20`.
    pub publish_rate: u32,
    /// Publishes one connection may burst above the rate. Default `40`.
    pub publish_burst: u32,
    /// Run-time subscribes and unsubscribes per second one connection may make (token
    /// bucket); past it, `rate_limited`. Default `10`.
    pub subscribe_rate: u32,
    /// Subscribes and unsubscribes one connection may burst above the rate. Default `20`.
    pub subscribe_burst: u32,
    /// Diagnostic only: echo every frame back instead of speaking fanfare's protocol
    /// (for the Autobahn conformance suite). Default `false`.
    pub echo: bool,
    /// `json` (fanfare's protocol, the default) or `raw` (payloads only, for clients
    /// that do not speak it).
    pub protocol: WsProtocol,
    /// Raw mode: a subject template (over the path parameters) every client frame is
    /// published to, instead of going to `app.message`.
    pub publish_to: Option<String>,
    /// `on`: accept permessage-deflate (RFC 7692) from clients that offer it; each
    /// message is compressed once and the same bytes go to every such client.
    /// Default `off`.
    pub compression: Compression,
}

/// Whether a WebSocket route accepts permessage-deflate: `off` or `on`, or a boolean,
/// since YAML 1.1 tools (Helm's `toYaml` among them) write `on` as `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Messages go uncompressed (the default).
    #[default]
    Off,
    /// Negotiated with clients that offer it.
    On,
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Compression::On),
            Raw::Bool(false) => Ok(Compression::Off),
            Raw::Word(w) if w == "on" => Ok(Compression::On),
            Raw::Word(w) if w == "off" => Ok(Compression::Off),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "unknown compression `{w}`, expected on or off"
            ))),
        }
    }
}

impl JsonSchema for Compression {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Compression".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`on`: permessage-deflate with clients that offer it; `off` (the default). `true` / `false` mean the same.",
            "oneOf": [{ "enum": ["off", "on"] }, { "type": "boolean" }],
        })
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message: 64 * 1024,
            ping_interval: Dur(Duration::from_secs(25)),
            pong_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_subscriptions: 100,
            publish_rate: 20,
            publish_burst: 40,
            subscribe_rate: 10,
            subscribe_burst: 20,
            echo: false,
            protocol: WsProtocol::Json,
            publish_to: None,
            compression: Compression::Off,
        }
    }
}

/// Resume history of a route.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A JetStream stream holding the route's subjects: cursors become stream
    /// sequences and resume survives restarts and works across instances. fanfare does
    /// not create streams; while one is missing, `/readyz` answers 503 (`stream_missing`).
    #[serde(deserialize_with = "interpolated_opt")]
    pub jetstream: Option<String>,
    /// Without JetStream: messages kept per subject in memory. `0` turns resume off.
    /// Default `256`.
    pub ring: usize,
    /// Without JetStream: how long a kept message stays. Default `60s`.
    pub max_age: Dur,
    /// How long a subject stays subscribed (and its ring kept) after its last client
    /// leaves, so a quick reconnect can resume. Default `10s`.
    pub linger: Dur,
    /// The most messages replayed on one resume; more is a reset. A replay must also
    /// fit the client's queue (`queue.messages`). Default `10000`.
    pub max_replay: usize,
    /// The most bytes replayed on one resume (payloads plus 64 bytes each); more is a
    /// reset (`too_much_to_replay`). A replay must also fit the client's queue
    /// (`queue.bytes`). JetStream replays are fetched in batches and stop at the cap.
    /// Default `1048576` (1 MiB).
    pub max_replay_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            jetstream: None,
            ring: 256,
            max_age: Dur(Duration::from_secs(60)),
            linger: Dur(Duration::from_secs(10)),
            max_replay: 10_000,
            max_replay_bytes: 1 << 20,
        }
    }
}

/// Long-polling settings of a route.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// How long a poll is held when nothing is waiting. Default `25s`.
    pub timeout: Dur,
    /// Messages returned by one poll at most. Default `100`.
    pub max_messages: usize,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            timeout: Dur(Duration::from_secs(25)),
            max_messages: 100,
        }
    }
}

/// A transport a route may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
    /// HTTP long-polling.
    Poll,
    /// Socket.IO (Engine.IO v4 over long-polling and WebSocket).
    #[serde(rename = "socketio")]
    SocketIo,
}

impl Transport {
    /// The config's own word for it (`sse`, `ws`, `poll`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
        }
    }
}

/// The slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Drop the oldest queued messages; the client later sees a `fanfare.reset` event.
    #[default]
    DropOldest,
    /// End the client's stream; it reconnects and resumes from its cursor.
    Disconnect,
}

/// A client queue's bound.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Messages queued for one client at most. Default `256`.
    pub messages: usize,
    /// Encoded bytes queued for one client at most. Default `1048576` (1 MiB).
    pub bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            messages: 256,
            bytes: 1 << 20,
        }
    }
}

// === impl RouteConfig ===

impl RouteConfig {
    /// Checks what the types alone cannot. The error names the value at fault (a
    /// subject, a pattern) when there is one, so it can be located.
    pub(super) fn validate(&self) -> Result<(), (Option<String>, String)> {
        let at = |m: String| (None, m);
        if !self.path.starts_with('/') {
            return Err(at(format!("route path {} must start with /", self.path)));
        }
        if self.transports.is_empty() {
            return Err(at(format!("route {} lists no transports", self.path)));
        }
        let socketio = self.transports.contains(&Transport::SocketIo);
        if socketio && self.transports.len() > 1 {
            return Err(at(format!(
                "route {}: socketio is a transport of its own: transports: [socketio]",
                self.path
            )));
        }
        if socketio {
            self.socketio
                .validate()
                .map_err(|e| at(format!("route {}: {e}", self.path)))?;
        }
        if self.subjects.is_empty()
            && !socketio
            && !self.ws.echo
            && self.allow_subscribe.is_empty()
            && !self.app.is_active()
        {
            return Err(at(format!(
                "route {} lists no subjects (and allows no run-time subscribe, and has no app callbacks)",
                self.path
            )));
        }
        if self.ws.echo && self.transports != [Transport::Ws] {
            return Err(at(format!(
                "route {}: ws.echo needs transports: [ws]",
                self.path
            )));
        }
        if self.ws.compression == Compression::On && !self.transports.contains(&Transport::Ws) {
            return Err(at(format!(
                "route {}: ws.compression needs the ws transport",
                self.path
            )));
        }
        let claims = self.auth.mode == AuthMode::Jwt;
        for p in self.allow_subscribe.iter().chain(&self.allow_publish) {
            Template::parse_with(p, &[], claims).map_err(|e| {
                (
                    Some(p.clone()),
                    format!("route {}: pattern {p}: {e}", self.path),
                )
            })?;
        }
        if self.ws.max_message < 16 || self.ws.max_subscriptions == 0 {
            return Err(at(format!(
                "route {}: ws.max_message must be at least 16 and ws.max_subscriptions above 0",
                self.path
            )));
        }
        if self.ws.ping_interval.0.is_zero() || self.ws.idle_timeout.0.is_zero() {
            return Err(at(format!(
                "route {}: ws timeouts must be above 0s",
                self.path
            )));
        }
        let params = PathPattern::parse(&self.path).map_err(at)?.params();
        for subject in &self.subjects {
            Template::parse_with(subject, &params, claims).map_err(|e| {
                (
                    Some(subject.clone()),
                    format!("route {}: subject {subject}: {e}", self.path),
                )
            })?;
        }
        self.auth
            .validate()
            .map_err(|e| at(format!("route {}: auth: {e}", self.path)))?;
        if self.queue.messages == 0 || self.queue.bytes == 0 {
            return Err(at(format!(
                "route {}: queue bounds must be above 0",
                self.path
            )));
        }
        if self.allowed_origins.iter().any(|o| o == "*") && self.auth.reads_cookies() {
            return Err(at(format!(
                "route {}: allowed_origins [\"*\"] would let any site read a signed-in user's stream (this auth reads cookies); list the origins instead",
                self.path
            )));
        }
        if self.ws.pong_timeout.0.is_zero() {
            return Err(at(format!(
                "route {}: ws.pong_timeout must be above 0s",
                self.path
            )));
        }
        if self.retry.0.is_zero() {
            return Err(at(format!("route {}: retry must be above 0s", self.path)));
        }
        if !(0.0..1.0).contains(&self.retry_jitter) {
            return Err(at(format!(
                "route {}: retry_jitter must be at least 0 and below 1 (a fraction of retry)",
                self.path
            )));
        }
        if self.heartbeat.0.is_zero() {
            return Err(at(format!(
                "route {}: heartbeat must be above 0s",
                self.path
            )));
        }
        if self.poll.timeout.0.is_zero() || self.poll.max_messages == 0 {
            return Err(at(format!(
                "route {}: poll timeout and max_messages must be above 0",
                self.path
            )));
        }
        if self.history.max_replay_bytes == 0 {
            return Err(at(format!(
                "route {}: history.max_replay_bytes must be above 0",
                self.path
            )));
        }
        self.app
            .validate()
            .map_err(|e| at(format!("route {}: {e}", self.path)))?;
        if let Some(t) = &self.ws.publish_to {
            if self.ws.protocol != WsProtocol::Raw {
                return Err(at(format!(
                    "route {}: ws.publish_to needs ws.protocol: raw",
                    self.path
                )));
            }
            Template::parse_with(t, &params, claims).map_err(|e| {
                (
                    Some(t.clone()),
                    format!("route {}: ws.publish_to {t}: {e}", self.path),
                )
            })?;
        }
        if self.history.jetstream.as_deref() == Some("") {
            return Err(at(format!(
                "route {}: history.jetstream names no stream",
                self.path
            )));
        }
        Ok(())
    }
}
