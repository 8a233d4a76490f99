//! A Socket.IO route's settings (`socketio:`): Engine.IO timings and the namespaces,
//! each mapped onto what a route already has (subjects, emits to publish).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::value::Dur;

/// Engine.IO and Socket.IO settings of a `transports: [socketio]` route.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// How often the server pings. Default `25s`.
    pub ping_interval: Dur,
    /// How long a pong may take before the session is closed. Default `20s`.
    pub ping_timeout: Dur,
    /// The largest Engine.IO payload (a polling POST, a WebSocket message) in bytes.
    /// Default `1000000`.
    pub max_payload: usize,
    /// How long a session may go without connecting to a namespace. Default `45s`.
    pub connect_timeout: Dur,
    /// The namespaces clients may connect to, by name (`/`, `/chat`). Default: `/`
    /// with nothing subscribed.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Socket.IO v4's connection-state recovery: every event carries its cursor as a
    /// last argument (the client keeps it), and a client that reconnects with its
    /// `pid` and `offset` is replayed what it missed from the route's history.
    /// Default `false` (the extra argument is visible to `socket.on` listeners).
    pub recovery: bool,
    /// Engine.IO alone, without Socket.IO (for engine.io-client): every message goes
    /// to `app.message`, in order, and a non-empty 2xx answer comes back as a message.
    /// Default `false`.
    pub engine_only: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            ping_interval: Dur(Duration::from_secs(25)),
            ping_timeout: Dur(Duration::from_secs(20)),
            max_payload: 1_000_000,
            connect_timeout: Dur(Duration::from_secs(45)),
            recovery: false,
            engine_only: false,
            namespaces: BTreeMap::from([("/".to_string(), NamespaceConfig::default())]),
        }
    }
}

/// One namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Subject templates (over token claims, `{claims.sub}`) every socket of the
    /// namespace subscribes to; their messages arrive as `socket.on(<Fanfare-Event>)`.
    pub subjects: Vec<String>,
    /// `socket.emit(name, ...args)` without an acknowledgement publishes the
    /// arguments (a JSON array) to the subject of `name` (a template over claims),
    /// which the route's `allow_publish` (or the grant) must cover.
    pub emit: BTreeMap<String, String>,
}

impl SocketIoConfig {
    /// Checks the timings and the namespace names.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval.0.is_zero()
            || self.ping_timeout.0.is_zero()
            || self.connect_timeout.0.is_zero()
        {
            return Err("socketio timings must be above 0s".into());
        }
        if self.max_payload < 64 {
            return Err("socketio.max_payload must be at least 64".into());
        }
        for name in self.namespaces.keys() {
            if !name.starts_with('/') || name.contains(',') || name.contains(char::is_whitespace) {
                return Err(format!(
                    "socketio namespace {name:?} must start with / and hold no comma or space"
                ));
            }
        }
        Ok(())
    }
}
