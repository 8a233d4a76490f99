//! The YAML configuration: schema, defaults, `${VAR}` interpolation and validation.
//!
//! Every field has a default, so an empty file is a valid configuration (proxy
//! `127.0.0.1:3000` on `0.0.0.0:8080`, embedded broker). Unknown keys are errors.
//! String values may use `${VAR}` and `${VAR:-default}`; interpolation happens on the
//! parsed value, after YAML parsing, so a secret holding YAML punctuation can never
//! change the document's structure, and errors keep their line and column.
//!
//! Loading a file goes through [`Config::load`], which returns a [`ConfigError`]
//! whose `Display` is `FILE:LINE:COL: reason` (or `FILE: reason` where no position
//! is known).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration that failed to load, with where it failed.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a position.
    pub position: Option<(u64, u64)>,
    /// What is wrong, on one line.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public address: ordinary requests are proxied to `upstream`, realtime routes
    /// are served here. Default `0.0.0.0:8080`.
    pub listen: Addr,
    /// The app's base URL (`http://host:port`). Default `http://127.0.0.1:3000`.
    pub upstream: Upstream,
    /// How requests are passed to the app.
    pub proxy: ProxyConfig,
    /// The admin listener: metrics, probes and the publish endpoint.
    pub admin: AdminConfig,
    /// The NATS server. Omit the key to run on the embedded single-instance broker.
    pub nats: Option<NatsConfig>,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Process-wide connection limits.
    pub limits: LimitsConfig,
    /// Realtime routes.
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Addr("0.0.0.0:8080".parse().expect("literal address")),
            upstream: Upstream::default(),
            proxy: ProxyConfig::default(),
            admin: AdminConfig::default(),
            nats: None,
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// Pass-through settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Time allowed to open a TCP connection to the app. Default `5s`.
    pub connect_timeout: Dur,
    /// Longest wait for the app between two reads (response header or body chunk).
    /// Default `60s`.
    pub read_timeout: Dur,
    /// Longest wait to write a request chunk to the app. Default `60s`.
    pub write_timeout: Dur,
    /// How long an idle pooled connection to the app is kept. Default `60s`.
    pub idle_timeout: Dur,
    /// Idle keep-alive connections kept to the app. Default `128`.
    pub keepalive_pool: usize,
    /// Accept HTTP/2 over cleartext (h2c, prior knowledge) from clients. Default `true`.
    pub h2c: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Dur(Duration::from_secs(5)),
            read_timeout: Dur(Duration::from_secs(60)),
            write_timeout: Dur(Duration::from_secs(60)),
            idle_timeout: Dur(Duration::from_secs(60)),
            keepalive_pool: 128,
            h2c: true,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/livez`, `/readyz` and `/publish`. Default `0.0.0.0:9090`.
    /// Keep it off the public network: `/publish` is not authenticated.
    pub listen: Addr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Addr("0.0.0.0:9090".parse().expect("literal address")),
        }
    }
}

/// The NATS connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated: `nats://host:4222`. Credentials may be embedded
    /// (`nats://user:pass@host:4222`); they are never logged.
    #[serde(deserialize_with = "interpolated")]
    pub url: String,
    /// NATS authentication token. Use `${NATS_TOKEN}` rather than a literal.
    #[serde(default, deserialize_with = "interpolated_opt")]
    pub token: Option<String>,
    /// The connection name shown by the server's monitoring. Default `fanfare`.
    #[serde(default = "default_nats_name", deserialize_with = "interpolated")]
    pub name: String,
}

fn default_nats_name() -> String {
    "fanfare".to_string()
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests get to finish after SIGTERM before the process exits
    /// anyway. Keep it below Kubernetes' `terminationGracePeriodSeconds`. Default `25s`.
    pub grace: Dur,
    /// The window over which held connections are closed after SIGTERM, each at its
    /// own moment, so reconnects reach the other pods gradually. Must be shorter than
    /// `grace`. Default: four fifths of `grace` (20s with the default grace).
    #[serde(default)]
    pub drain: Option<Dur>,
}

impl ShutdownConfig {
    /// The drain window in effect.
    pub fn drain_window(&self) -> Duration {
        self.drain.map_or(self.grace.0.mul_f64(0.8), |d| d.0)
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Dur(Duration::from_secs(25)),
            drain: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` or `json`. Default `plain`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `fanfare=debug,warn`. Default `info`.
    /// `RUST_LOG`, when set, wins.
    #[serde(deserialize_with = "interpolated")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Plain,
            level: "info".to_string(),
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A realtime route: a path the edge serves itself instead of proxying.
#[derive(Debug, Clone, Deserialize)]
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

fn default_retry() -> Dur {
    Dur(Duration::from_secs(2))
}

/// WebSocket settings of a route.
#[derive(Debug, Clone, Deserialize)]
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
    /// Diagnostic only: echo every frame back instead of speaking fanfare's protocol
    /// (for the Autobahn conformance suite). Default `false`.
    pub echo: bool,
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
            echo: false,
        }
    }
}

/// Resume history of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A JetStream stream holding the route's subjects: cursors become stream
    /// sequences and resume survives restarts and works across instances. fanfare does
    /// not create streams; a missing one is a start-up error.
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
    /// The most messages replayed on one resume; more is a reset. Default `10000`.
    pub max_replay: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            jetstream: None,
            ring: 256,
            max_age: Dur(Duration::from_secs(60)),
            linger: Dur(Duration::from_secs(10)),
            max_replay: 10_000,
        }
    }
}

/// Long-polling settings of a route.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
    /// HTTP long-polling.
    Poll,
}

/// A route's authorization. `mode` is required (deny by default); the other keys
/// belong to one mode each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `jwt` or `upstream`.
    pub mode: AuthMode,

    // --- jwt ---
    /// Accepted algorithms: `HS256`, `RS256`, `ES256` (jwt). Required for jwt.
    #[serde(default)]
    pub algorithms: Vec<JwtAlgorithm>,
    /// HS256 shared secret (jwt). Write `${JWT_SECRET}`, never a literal.
    #[serde(default, deserialize_with = "interpolated_opt")]
    pub secret: Option<String>,
    /// A file holding the HS256 secret, or the RS256/ES256 public key in PEM (jwt).
    #[serde(default, deserialize_with = "interpolated_opt")]
    pub key_file: Option<String>,
    /// The RS256/ES256 public key in PEM, usually `${JWT_PUBLIC_KEY}` (jwt).
    #[serde(default, deserialize_with = "interpolated_opt")]
    pub public_key: Option<String>,
    /// A JWKS URL, fetched at start and refreshed in the background (jwt).
    #[serde(default, deserialize_with = "interpolated_opt")]
    pub jwks_url: Option<String>,
    /// JWKS refresh interval. Default `5m`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Accepted `aud` values; empty: `aud` is not checked (jwt).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked (jwt).
    #[serde(default)]
    pub issuer: Vec<String>,
    /// Clock leeway for `exp` and `nbf`. Default `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// A cookie that may carry the token (jwt). Default: none.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A query parameter that may carry the token (EventSource cannot set headers).
    /// Default `access_token`; `""` turns it off (jwt).
    #[serde(default = "default_token_query")]
    pub query_param: String,
    /// The claim listing subject patterns the token may subscribe to. Default
    /// `fanfare_subscribe` (a list of strings, or one space-separated string).
    #[serde(default = "default_subscribe_claim")]
    pub subscribe_claim: String,
    /// The claim listing subject patterns the token may publish to. Default
    /// `fanfare_publish`.
    #[serde(default = "default_publish_claim")]
    pub publish_claim: String,

    // --- upstream ---
    /// The app path that authorizes a handshake (upstream), e.g. `/auth/realtime`.
    #[serde(default)]
    pub path: Option<String>,
    /// Request headers forwarded to the auth path besides `Cookie` and
    /// `Authorization` (upstream).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// How long the app may take to answer (upstream). Default `2s`.
    #[serde(default = "default_auth_timeout")]
    pub timeout: Dur,
    /// How long a 2xx answer is reused for the same credentials (upstream). Default `0s`
    /// (no cache).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Dur,
}

fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_token_query() -> String {
    "access_token".to_string()
}
fn default_subscribe_claim() -> String {
    "fanfare_subscribe".to_string()
}
fn default_publish_claim() -> String {
    "fanfare_publish".to_string()
}
fn default_auth_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_cache_ttl() -> Dur {
    Dur(Duration::ZERO)
}

/// Authorization modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Public subjects; anyone who can reach the path may subscribe.
    None,
    /// A signed JSON Web Token.
    Jwt,
    /// The app's own session, checked by calling an app path (like nginx auth_request).
    Upstream,
}

impl AuthMode {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
            AuthMode::Upstream => "upstream",
        }
    }
}

/// JWT signature algorithms fanfare accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// Process-wide abuse limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Held realtime connections in total; past it, `429 too_many_connections`.
    /// Default `100000`.
    pub max_connections: usize,
    /// Held realtime connections per client IP; past it, `429`. Default `1000`.
    pub max_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
        }
    }
}

/// The slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Drop the oldest queued messages; the client later sees a `fanfare.reset` event.
    #[default]
    DropOldest,
    /// End the client's stream; it reconnects and resumes from its cursor.
    Disconnect,
}

/// A client queue's bound.
#[derive(Debug, Clone, Deserialize)]
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

// === impl Config ===

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text).map_err(|(position, reason)| ConfigError {
            file: path.to_path_buf(),
            position,
            reason,
        })
    }

    /// Parses and validates YAML text. The error is `(Some((line, column)), reason)`.
    pub fn parse(text: &str) -> Result<Config, (Option<(u64, u64)>, String)> {
        // An empty document (or only comments) means "all defaults".
        let config: Config = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let position = e.location().map(|l| (l.line(), l.column()));
                (position, yaml_reason(&e))
            })?
        };
        config
            .validate()
            .map_err(|reason| (locate(text, &reason), reason.message))
    }

    /// Checks what the types alone cannot.
    fn validate(self) -> Result<Config, Invalid> {
        if self.listen.0 == self.admin.listen.0 && self.listen.0.port() != 0 {
            return Err(Invalid::at("admin", "admin.listen must differ from listen"));
        }
        if self.shutdown.grace.0.is_zero() {
            return Err(Invalid::at("grace", "shutdown.grace must be more than 0s"));
        }
        if self.shutdown.drain_window() >= self.shutdown.grace.0 {
            return Err(Invalid::at(
                "drain",
                "shutdown.drain must be shorter than shutdown.grace",
            ));
        }
        if self.proxy.connect_timeout.0.is_zero() || self.proxy.read_timeout.0.is_zero() {
            return Err(Invalid::at("proxy", "proxy timeouts must be more than 0s"));
        }
        if let Some(nats) = &self.nats {
            for url in nats.url.split(',') {
                let url = url.trim();
                if !(url.starts_with("nats://")
                    || url.starts_with("tls://")
                    || url.starts_with("ws://")
                    || url.starts_with("wss://"))
                {
                    return Err(Invalid::at(
                        "url",
                        "nats.url must start with nats://, tls://, ws:// or wss://",
                    ));
                }
            }
        }
        if self.nats.is_none()
            && let Some(r) = self.routes.iter().find(|r| r.history.jetstream.is_some())
        {
            return Err(Invalid::at(
                "jetstream",
                &format!("route {}: history.jetstream needs nats.url", r.path),
            ));
        }
        let mut paths = BTreeSet::new();
        for route in &self.routes {
            route.validate().map_err(|m| Invalid::at(&route.path, &m))?;
            if !paths.insert(route.path.clone()) {
                return Err(Invalid::at(
                    &route.path,
                    &format!("route path {} is defined twice", route.path),
                ));
            }
        }
        Ok(self)
    }
}

/// A validation failure, with a text to look for so the error can point at a line.
struct Invalid {
    needle: String,
    message: String,
}

impl Invalid {
    fn at(needle: &str, message: &str) -> Invalid {
        Invalid {
            needle: needle.to_string(),
            message: message.to_string(),
        }
    }
}

/// Finds the first line holding the failing key or value, so that validation errors
/// also carry a position.
fn locate(text: &str, invalid: &Invalid) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let code = line.split(" #").next().unwrap_or(line);
        code.find(invalid.needle.as_str())
            .map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

/// serde-saphyr's message without its snippet and position (we print our own).
fn yaml_reason(e: &serde_saphyr::Error) -> String {
    let rendered = e.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    // Strip a trailing " at line X column Y" that the renderer may add.
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.to_string()
}

// === impl RouteConfig ===

impl RouteConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("route path {} must start with /", self.path));
        }
        if self.transports.is_empty() {
            return Err(format!("route {} lists no transports", self.path));
        }
        if self.subjects.is_empty() && !self.ws.echo && self.allow_subscribe.is_empty() {
            return Err(format!(
                "route {} lists no subjects (and allows no run-time subscribe)",
                self.path
            ));
        }
        if self.ws.echo && self.transports != [Transport::Ws] {
            return Err(format!(
                "route {}: ws.echo needs transports: [ws]",
                self.path
            ));
        }
        let claims = self.auth.mode == AuthMode::Jwt;
        for p in self.allow_subscribe.iter().chain(&self.allow_publish) {
            crate::subject::Template::parse_with(p, &[], claims)
                .map_err(|e| format!("route {}: pattern {p}: {e}", self.path))?;
        }
        if self.ws.max_message < 16 || self.ws.max_subscriptions == 0 {
            return Err(format!(
                "route {}: ws.max_message must be at least 16 and ws.max_subscriptions above 0",
                self.path
            ));
        }
        if self.ws.ping_interval.0.is_zero() || self.ws.idle_timeout.0.is_zero() {
            return Err(format!("route {}: ws timeouts must be above 0s", self.path));
        }
        let params = crate::route::path_params(&self.path)?;
        for subject in &self.subjects {
            crate::subject::Template::parse_with(subject, &params, claims)
                .map_err(|e| format!("route {}: subject {subject}: {e}", self.path))?;
        }
        self.auth
            .validate()
            .map_err(|e| format!("route {}: auth: {e}", self.path))?;
        if self.queue.messages == 0 || self.queue.bytes == 0 {
            return Err(format!("route {}: queue bounds must be above 0", self.path));
        }
        if self.heartbeat.0.is_zero() {
            return Err(format!("route {}: heartbeat must be above 0s", self.path));
        }
        if self.poll.timeout.0.is_zero() || self.poll.max_messages == 0 {
            return Err(format!(
                "route {}: poll timeout and max_messages must be above 0",
                self.path
            ));
        }
        if self.history.jetstream.as_deref() == Some("") {
            return Err(format!(
                "route {}: history.jetstream names no stream",
                self.path
            ));
        }
        Ok(())
    }
}

// === impl AuthConfig ===

impl AuthConfig {
    fn validate(&self) -> Result<(), String> {
        let jwt_keys = [
            self.secret.is_some(),
            self.key_file.is_some(),
            self.public_key.is_some(),
            self.jwks_url.is_some(),
        ];
        let jwt_set = jwt_keys.iter().any(|b| *b) || !self.algorithms.is_empty();
        match self.mode {
            AuthMode::None => {
                if jwt_set || self.path.is_some() {
                    return Err("mode none takes no jwt or upstream keys".into());
                }
            }
            AuthMode::Jwt => {
                if self.algorithms.is_empty() {
                    return Err("mode jwt needs algorithms (HS256, RS256, ES256)".into());
                }
                if jwt_keys.iter().filter(|b| **b).count() != 1 {
                    return Err(
                        "mode jwt needs exactly one of secret, key_file, public_key, jwks_url"
                            .into(),
                    );
                }
                let hmac = self.algorithms.contains(&JwtAlgorithm::HS256);
                let asym = self.algorithms.iter().any(|a| *a != JwtAlgorithm::HS256);
                if hmac && asym {
                    return Err(
                        "do not mix HS256 with RS256/ES256 on one route (key confusion)".into(),
                    );
                }
                if self.secret.is_some() && !hmac {
                    return Err("secret is for HS256".into());
                }
                if let Some(s) = &self.secret
                    && s.len() < 32
                {
                    return Err("the HS256 secret must be at least 32 bytes".into());
                }
                if (self.public_key.is_some() || self.jwks_url.is_some()) && hmac {
                    return Err("public_key and jwks_url are for RS256/ES256".into());
                }
                if let Some(u) = &self.jwks_url
                    && !(u.starts_with("https://") || u.starts_with("http://"))
                {
                    return Err("jwks_url must be an http(s) URL".into());
                }
                if self.path.is_some() {
                    return Err("path is for mode upstream".into());
                }
            }
            AuthMode::Upstream => {
                if jwt_set {
                    return Err("mode upstream takes no jwt keys".into());
                }
                match &self.path {
                    Some(p) if p.starts_with('/') => {}
                    _ => return Err("mode upstream needs path: /your/auth/endpoint".into()),
                }
                if self.timeout.0.is_zero() {
                    return Err("timeout must be above 0s".into());
                }
            }
        }
        Ok(())
    }
}

// === Value types ===

/// A socket address, `host:port`, with `${VAR}` interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        let s = s
            .strip_prefix("localhost:")
            .map_or(s.clone(), |port| format!("127.0.0.1:{port}"));
        s.parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {s:?}: expected IP:PORT, e.g. 0.0.0.0:8080"
            ))
        })
    }
}

/// The app's URL: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            host: "127.0.0.1".to_string(),
            port: 3000,
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl Upstream {
    /// Parses `http://host[:port][/]`.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let err = || format!("invalid upstream {s:?}: expected http://HOST:PORT");
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            if s.starts_with("https://") {
                format!("upstream {s:?}: https upstreams are not supported yet; use http://")
            } else {
                err()
            }
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(err());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| err())?)
            }
            _ => (rest, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(err());
        }
        Ok(Upstream {
            host: host.to_string(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        Upstream::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A duration written with a unit: `500ms`, `25s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let err = || {
            format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h), e.g. 25s")
        };
        let n: u64 = num.parse().map_err(|_| err())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

// === Interpolation ===

/// Deserializes a string and expands `${VAR}` / `${VAR:-default}` from the environment.
fn interpolated<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = StringOrNumber::deserialize(d)?.0;
    interpolate(&raw, |k| std::env::var(k).ok()).map_err(serde::de::Error::custom)
}

fn interpolated_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    interpolated(d).map(Some)
}

/// Accepts a YAML scalar that is a string or a number (`level: 3`, `grace: 25s`).
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`. A variable that is
/// unset and has no default is an error naming it (never its value).
pub fn interpolate(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {raw:?}"))?;
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable {name} is not set and has no default"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> (Option<(u64, u64)>, String) {
        Config::parse(text).expect_err("should be invalid")
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("# nothing\n").unwrap();
        assert_eq!(c.listen.0.port(), 8080);
        assert_eq!(c.admin.listen.0.port(), 9090);
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3000");
        assert!(c.nats.is_none());
        assert_eq!(c.shutdown.grace.0, Duration::from_secs(25));
        assert_eq!(c.log.format, LogFormat::Plain);
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            "listen: 127.0.0.1:8081\nupstream: http://app:3001\nadmin: { listen: 127.0.0.1:9091 }\n\
             nats: { url: nats://127.0.0.1:4222 }\nshutdown: { grace: 500ms }\n\
             log: { format: json, level: debug }\nroutes: []\n",
        )
        .unwrap();
        assert_eq!(c.listen.0, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.upstream.host, "app");
        assert_eq!(c.upstream.port, 3001);
        assert_eq!(c.nats.unwrap().url, "nats://127.0.0.1:4222");
        assert_eq!(c.shutdown.grace.0, Duration::from_millis(500));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let (pos, reason) = parse_err("listen: 127.0.0.1:8081\nupstreem: http://x:1\n");
        assert_eq!(pos.map(|p| p.0), Some(2), "{reason}");
        assert!(reason.contains("upstreem"), "{reason}");
    }

    #[test]
    fn nested_unknown_key_has_its_line() {
        let (pos, reason) = parse_err("admin:\n  listen: 127.0.0.1:9\n  lisen: 1\n");
        assert_eq!(pos.map(|p| p.0), Some(3), "{reason}");
    }

    #[test]
    fn bad_address_and_duration_are_errors_with_lines() {
        let (pos, reason) = parse_err("listen: nowhere\n");
        assert_eq!(pos.map(|p| p.0), Some(1));
        assert!(reason.contains("invalid address"), "{reason}");
        let (pos, reason) = parse_err("listen: 127.0.0.1:1\nshutdown:\n  grace: soon\n");
        assert_eq!(pos.map(|p| p.0), Some(3));
        assert!(reason.contains("invalid duration"), "{reason}");
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("25s").unwrap().0, Duration::from_secs(25));
        assert_eq!(Dur::parse("150ms").unwrap().0, Duration::from_millis(150));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
        for bad in ["", "s", "10", "10x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            Upstream::parse("http://127.0.0.1:3000/").unwrap().port,
            3000
        );
        assert_eq!(Upstream::parse("http://app").unwrap().port, 80);
        assert_eq!(Upstream::parse("http://[::1]:81").unwrap().host, "::1");
        for bad in [
            "127.0.0.1:3000",
            "http://",
            "http://a:b",
            "http://a/x",
            "ftp://a:1",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Upstream::parse("https://a:1")
                .unwrap_err()
                .contains("https")
        );
    }

    #[test]
    fn interpolation() {
        let env = |k: &str| match k {
            "A" => Some("x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(interpolate("p-${A}-q", env).unwrap(), "p-x-q");
        assert_eq!(interpolate("${B:-dflt}", env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(interpolate("$${A} $5", env).unwrap(), "${A} $5");
        let e = interpolate("${MISSING}", env).unwrap_err();
        assert!(e.contains("MISSING"), "{e}");
        assert!(interpolate("${A", env).is_err());
        assert!(interpolate("${a-b}", env).is_err());
    }

    #[test]
    fn route_without_auth_is_refused() {
        let (pos, reason) =
            parse_err("routes:\n  - path: /orders/{id}/events\n    subjects: [\"orders.{id}\"]\n");
        assert!(reason.contains("auth"), "{reason}");
        assert!(pos.is_some());
    }

    #[test]
    fn route_with_unknown_param_is_refused() {
        let (pos, reason) = parse_err(
            "routes:\n  - path: /orders/{id}/events\n    subjects: [\"orders.{oid}\"]\n    auth: { mode: none }\n",
        );
        assert!(reason.contains("oid"), "{reason}");
        assert_eq!(pos.map(|p| p.0), Some(2), "{reason}");
    }
}
