//! A route's app callbacks (`app:`): the way back from a client to the app, as plain
//! HTTP requests to the app's own REST handlers.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::value::Dur;

/// The app's handlers for a route's connections. Paths are on `upstream`; a full
/// `http://` URL names another service.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// `POST`ed before a client is admitted; a non-2xx answer refuses it.
    pub connect: Option<String>,
    /// `POST`ed for every WebSocket `rpc` (and every frame in raw mode).
    pub message: Option<String>,
    /// `POST`ed (queued, retried) when a held connection ends.
    pub disconnect: Option<String>,
    /// How long a connect or message callback may take. Default `5s`.
    pub timeout: Dur,
    /// Handshake headers forwarded with every callback. Default `[Cookie, Authorization]`.
    pub forward_headers: Vec<String>,
    /// Message callbacks one connection may have in flight; past it, `busy`. Default `8`.
    pub max_in_flight: usize,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            connect: None,
            message: None,
            disconnect: None,
            timeout: Dur(Duration::from_secs(5)),
            forward_headers: vec!["Cookie".into(), "Authorization".into()],
            max_in_flight: 8,
        }
    }
}

impl AppConfig {
    /// Whether any callback is configured.
    pub fn is_active(&self) -> bool {
        self.connect.is_some() || self.message.is_some() || self.disconnect.is_some()
    }

    /// Checks the paths, the timeout and the bound.
    pub fn validate(&self) -> Result<(), String> {
        for (name, target) in [
            ("connect", &self.connect),
            ("message", &self.message),
            ("disconnect", &self.disconnect),
        ] {
            if let Some(t) = target
                && !(t.starts_with('/') || t.starts_with("http://") || t.starts_with("https://"))
            {
                return Err(format!(
                    "app.{name}: {t:?} must be a path starting with / or an http(s):// URL"
                ));
            }
        }
        if self.timeout.0.is_zero() {
            return Err("app.timeout must be above 0s".into());
        }
        if self.max_in_flight == 0 {
            return Err("app.max_in_flight must be above 0".into());
        }
        for h in &self.forward_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!("app.forward_headers: {h:?} is not a header name"));
            }
        }
        Ok(())
    }
}

/// What a WebSocket route's frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WsProtocol {
    /// fanfare's JSON protocol (subscribe, publish, rpc, message envelopes).
    #[default]
    Json,
    /// Payloads only, both ways: what the server publishes arrives as the frame's
    /// data; every client frame goes to `app.message` (or `ws.publish_to`).
    Raw,
}
