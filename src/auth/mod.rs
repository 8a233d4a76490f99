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
pub mod jwt;
pub mod upstream;

pub use admit::{Admitted, admit};

use std::collections::HashMap;
use std::time::SystemTime;

use http::StatusCode;
use pingora::http::RequestHeader;

use crate::config::{AuthConfig, AuthMode};
use crate::edge::respond::Refusal;
use crate::metrics::Metrics;
use crate::routing::path::query_param;

/// What an authorized connection may do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Subject patterns it may subscribe to.
    pub subscribe: Vec<String>,
    /// Subject patterns it may publish to.
    pub publish: Vec<String>,
    /// String claims by placeholder name (`claims.sub` → `u1`).
    pub claims: HashMap<String, String>,
    /// When the credential expires; the connection is closed then.
    pub expires: Option<SystemTime>,
}

/// What one connection may do, from its grant and its route.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// Subject patterns it may subscribe to at run time.
    pub subscribe: Vec<String>,
    /// Subject patterns it may publish to.
    pub publish: Vec<String>,
    /// When its credential expires (the connection is closed then).
    pub expires: Option<tokio::time::Instant>,
}

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

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(req: &RequestHeader, name: &str) -> Option<String> {
    req.headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
}

/// The bearer token of `Authorization: Bearer …`.
pub fn bearer(req: &RequestHeader) -> Option<String> {
    let v = req.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// A query parameter of the request.
pub fn query(req: &RequestHeader, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    query_param(req.uri.query(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], uri: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn token_sources() {
        let r = req(
            &[
                ("Authorization", "Bearer abc"),
                ("Cookie", "a=1; tok=xyz; b=2"),
            ],
            "/x?access_token=q1&y=2",
        );
        assert_eq!(bearer(&r).as_deref(), Some("abc"));
        assert_eq!(cookie(&r, "tok").as_deref(), Some("xyz"));
        assert_eq!(cookie(&r, "zzz"), None);
        assert_eq!(query(&r, "access_token").as_deref(), Some("q1"));
        assert_eq!(query(&r, ""), None);
        assert_eq!(bearer(&req(&[("Authorization", "Basic abc")], "/")), None);
    }
}
