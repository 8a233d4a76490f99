//! Authorization of realtime handshakes (deny by default).
//!
//! Every route names a mode. The outcome of a handshake is a [`Grant`]: the subject
//! patterns the connection may subscribe and publish to, the claims that fill subject
//! templates, and when it expires. The grant decides everything a connection may do:
//! - a route subject built from a path parameter must be covered by the grant's
//!   subscribe patterns (`none` routes grant their own subjects);
//! - a route subject built only from literals and claims is granted by the token itself;
//! - run-time WebSocket `subscribe` / `publish` must be covered by the grant.
//!
//! Secrets, tokens and cookies never reach logs or metrics: refusals carry only a
//! reason, and request summaries leave the query out.

mod admit;
pub mod credential;
mod grant;
pub mod jwt;
pub mod upstream;

pub use admit::{Admitted, admit};
pub use grant::{Grant, Permissions, expiry_at};

use http::StatusCode;
use pingora::http::RequestHeader;

use crate::config::{AuthConfig, AuthMode};
use crate::edge::respond::Refusal;
use crate::metrics::Metrics;

/// A route's authorizer.
pub enum Authorizer {
    /// Public route.
    None,
    /// Signed tokens.
    Jwt(jwt::JwtAuth),
    /// The app decides.
    Upstream(upstream::UpstreamAuth),
}

impl Authorizer {
    /// Builds the route's authorizer; JWKS fetching starts in the background.
    pub fn new(
        config: &AuthConfig,
        upstream_base: &str,
        http: reqwest::Client,
        metrics: &Metrics,
    ) -> Result<Authorizer, String> {
        Ok(match config.mode {
            AuthMode::None => Authorizer::None,
            AuthMode::Jwt => Authorizer::Jwt(jwt::JwtAuth::new(config, http, metrics)?),
            AuthMode::Upstream => {
                Authorizer::Upstream(upstream::UpstreamAuth::new(config, upstream_base, http))
            }
        })
    }

    /// Whether authorizing reads header `name` (lower case): the credentials
    /// (`Authorization`, `Cookie`), and what the upstream mode forwards.
    pub fn reads_header(&self, name: &str) -> bool {
        match self {
            Authorizer::None => false,
            Authorizer::Jwt(_) => name == "authorization" || name == "cookie",
            Authorizer::Upstream(u) => u.forwards(name),
        }
    }

    /// The mode's metric label.
    pub fn mode(&self) -> &'static str {
        match self {
            Authorizer::None => "none",
            Authorizer::Jwt(_) => "jwt",
            Authorizer::Upstream(_) => "upstream",
        }
    }

    /// Authorizes a handshake.
    pub async fn authorize(
        &self,
        req: &RequestHeader,
        metrics: &Metrics,
    ) -> Result<Grant, Refusal> {
        let (result, label) = match self {
            Authorizer::None => (Ok(Grant::default()), "ok"),
            Authorizer::Jwt(j) => match j.verify_request(req) {
                Ok(g) => (Ok(g), "ok"),
                Err(("keys_unavailable", reason)) => (
                    Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "auth_unavailable",
                        reason,
                    )),
                    "keys_unavailable",
                ),
                Err((label, reason)) => (
                    Err(Refusal::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        reason,
                    )),
                    label,
                ),
            },
            Authorizer::Upstream(u) => {
                let r = u.authorize(req).await;
                let label = match &r {
                    Ok(_) => "ok",
                    Err(Refusal::App { .. }) => "denied",
                    Err(Refusal::Error { .. }) => "unavailable",
                };
                (r, label)
            }
        };
        metrics
            .auth_total
            .with_label_values(&[self.mode(), label])
            .inc();
        if label != "ok" {
            tracing::debug!(mode = self.mode(), result = label, path = %req.uri.path(), "handshake refused");
        }
        result
    }
}
