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

mod app;
mod auth;
mod invalid;
mod route;
pub mod schema;
mod socketio;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

pub use app::{AppConfig, WsProtocol};
pub use auth::{AuthConfig, AuthMode, JwtAlgorithm};
pub use route::{
    Compression, HistoryConfig, PollConfig, QueueConfig, RouteConfig, SlowConsumer, Transport,
    WsConfig,
};
pub use socketio::{NamespaceConfig, SocketIoConfig};
pub use value::{Addr, Cidr, Dur, Upstream, interpolate};
use value::{interpolated, interpolated_opt};

use crate::routing::path::PathPattern;
use invalid::{Anchor, Invalid, check_log_filter, locate, yaml_reason};

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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Serve the browser client at `/_fanfare/client.js` (and `client.umd.js`,
    /// `client.d.ts`). Default `true`.
    pub client: bool,
    /// Serve the demo page at `/_fanfare/demo` (needs the route [`DEMO_ROUTE`]).
    /// Default `false`; `config/fanfare.yaml` sets it.
    pub demo: bool,
}

/// The route the demo page talks to.
pub const DEMO_ROUTE: &str = "/demo/{room}";

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
            client: true,
            demo: false,
        }
    }
}

/// Pass-through settings.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Pass plain HTTP/1.1 requests on through fanfare's own fast path instead of
    /// pingora's proxy (about a quarter of the CPU per request); anything unusual still
    /// goes through pingora. Default `true`.
    pub fast_path: bool,
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
            fast_path: true,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/livez`, `/readyz` and `/publish`. Default `0.0.0.0:9090`
    /// (kubelet probes and Prometheus reach the pod's address). Keep it off the public
    /// network.
    pub listen: Addr,
    /// A bearer token `POST /publish` must carry (`Authorization: Bearer <token>`).
    /// Write `${FANFARE_PUBLISH_TOKEN}`, never a literal; at least 16 bytes. Without
    /// it, `/publish` answers only when `listen` is a loopback address (404 otherwise).
    #[serde(deserialize_with = "interpolated_opt")]
    pub publish_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Addr("0.0.0.0:9090".parse().expect("literal address")),
            publish_token: None,
        }
    }
}

/// The NATS connection.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// JetStream replays (resumes) one process runs at once; more wait their turn, so
    /// a reconnect storm cannot make NATS cut fanfare off as a slow consumer.
    /// Default `4`.
    #[serde(default = "default_concurrent_replays")]
    pub max_concurrent_replays: usize,
}

fn default_concurrent_replays() -> usize {
    4
}

fn default_nats_name() -> String {
    "fanfare".to_string()
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Process-wide abuse limits.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Held realtime connections in total; past it, `429 too_many_connections`.
    /// Default `100000`.
    pub max_connections: usize,
    /// Held realtime connections per client IP (per /64 for IPv6); past it, `429`.
    /// Default `1000`.
    pub max_connections_per_ip: usize,
    /// Proxies (address ranges) whose `X-Forwarded-For` and `X-Forwarded-Proto` are
    /// believed: the client is the right-most forwarded address that is not itself a
    /// trusted proxy. Nobody else's forwarded headers are believed. Default: none.
    pub trusted_proxies: Vec<Cidr>,
    /// The longest a client may take to send a request head (and the time an idle
    /// keep-alive connection waits for its next one); past it the connection is
    /// closed. Default `10s`.
    pub request_head_timeout: Dur,
    /// Connections per client IP (per /64 for IPv6) that have not yet sent a whole
    /// request head; past it, new connections from that address are closed at once.
    /// `trusted_proxies` are exempt (a load balancer's connections all share its
    /// address). Default `64`.
    pub max_pending_per_ip: usize,
    /// Topics (subscribed subjects, lingering ones included) one process holds; past
    /// it, a new subject is refused (`503 too_many_topics`, WS `too_many_topics`).
    /// Default `100000`.
    pub max_topics: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            trusted_proxies: Vec::new(),
            request_head_timeout: Dur(Duration::from_secs(10)),
            max_pending_per_ip: 64,
            max_topics: 100_000,
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
            .validate(text)
            .map_err(|reason| (locate(text, &reason), reason.message))
    }

    /// Checks what the types alone cannot. `text` is the document, for messages that
    /// name another line (overlapping routes).
    fn validate(self, text: &str) -> Result<Config, Invalid> {
        if let Err(reason) = check_log_filter(&self.log.level) {
            return Err(Invalid {
                needle: self.log.level.clone(),
                message: format!("log.level {:?}: {reason}", self.log.level),
                anchor: Some(Anchor::Key("level")),
            });
        }
        if self.listen.0 == self.admin.listen.0 && self.listen.0.port() != 0 {
            return Err(Invalid::at("admin", "admin.listen must differ from listen"));
        }
        if self
            .admin
            .publish_token
            .as_ref()
            .is_some_and(|t| t.len() < 16)
        {
            return Err(Invalid::at(
                "publish_token",
                "admin.publish_token must be at least 16 bytes",
            ));
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
        for (key, d) in [
            ("connect_timeout", self.proxy.connect_timeout),
            ("read_timeout", self.proxy.read_timeout),
            ("write_timeout", self.proxy.write_timeout),
            ("idle_timeout", self.proxy.idle_timeout),
            ("request_head_timeout", self.limits.request_head_timeout),
        ] {
            if d.0.is_zero() {
                return Err(Invalid::at(key, &format!("{key} must be more than 0s")));
            }
        }
        if self.limits.max_pending_per_ip == 0 || self.limits.max_topics == 0 {
            return Err(Invalid::at(
                "limits",
                "limits.max_pending_per_ip and limits.max_topics must be above 0",
            ));
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
        if self
            .nats
            .as_ref()
            .is_some_and(|n| n.max_concurrent_replays == 0)
        {
            return Err(Invalid::at(
                "max_concurrent_replays",
                "nats.max_concurrent_replays must be above 0",
            ));
        }
        if self.demo
            && !self.routes.iter().any(|r| {
                r.path == DEMO_ROUTE
                    && [Transport::Ws, Transport::Sse, Transport::Poll]
                        .iter()
                        .all(|t| r.transports.contains(t))
            })
        {
            return Err(Invalid::at(
                "demo",
                &format!(
                    "demo: true needs the route {DEMO_ROUTE} with transports [ws, sse, poll] (see config/fanfare.yaml)"
                ),
            ));
        }
        if self.demo && !self.client {
            return Err(Invalid::at(
                "demo",
                "demo: true needs client: true (the page uses it)",
            ));
        }
        if self.nats.is_none()
            && let Some(r) = self.routes.iter().find(|r| r.history.jetstream.is_some())
        {
            return Err(Invalid::at(
                "jetstream",
                &format!("route {}: history.jetstream needs nats.url", r.path),
            ));
        }
        let route_at = |i: usize| {
            let path = &self.routes[i].path;
            let occurrence = self.routes[..i].iter().filter(|r| r.path == *path).count();
            Anchor::Route(path.clone(), occurrence)
        };
        let patterns: Vec<Option<PathPattern>> = self
            .routes
            .iter()
            .map(|r| PathPattern::parse(&r.path).ok())
            .collect();
        for (i, route) in self.routes.iter().enumerate() {
            route.validate().map_err(|(needle, message)| Invalid {
                needle: needle.unwrap_or_else(|| route.path.clone()),
                message,
                anchor: Some(route_at(i)),
            })?;
            for (j, earlier) in self.routes[..i].iter().enumerate() {
                if let (Some(a), Some(b)) = (&patterns[j], &patterns[i])
                    && a.overlaps(b)
                {
                    let line = locate(text, &Invalid::at(&earlier.path, "").with(route_at(j)))
                        .map_or_else(String::new, |(l, _)| format!(" (line {l})"));
                    return Err(Invalid {
                        needle: route.path.clone(),
                        message: format!(
                            "routes {}{line} and {} match the same paths; make them differ by a literal segment",
                            earlier.path, route.path
                        ),
                        anchor: Some(route_at(i)),
                    });
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests;
