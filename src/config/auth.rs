//! A route's authorization settings (`auth:`), one flat struct whose keys belong to
//! one mode each; `validate` refuses keys of another mode.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::value::{Dur, interpolated_opt};

/// A route's authorization. `mode` is required (deny by default); the other keys
/// belong to one mode each.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Allow a `jwks_url` over plain `http://` (a key server inside the cluster).
    /// Default `false`: the keys that decide who gets in travel over https.
    #[serde(default)]
    pub allow_insecure_jwks: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

// === impl AuthConfig ===

impl AuthConfig {
    /// Whether the mode reads the browser's cookies (upstream always forwards them; jwt
    /// when `cookie` names one): such a route must never answer `*` to any Origin.
    pub fn reads_cookies(&self) -> bool {
        match self.mode {
            AuthMode::Upstream => true,
            AuthMode::Jwt => self.cookie.is_some(),
            AuthMode::None => false,
        }
    }

    /// The settings of `mode` with every other key at its default (no secret).
    pub fn mode_only(mode: AuthMode) -> AuthConfig {
        AuthConfig {
            mode,
            algorithms: Vec::new(),
            secret: None,
            key_file: None,
            public_key: None,
            jwks_url: None,
            jwks_refresh: default_jwks_refresh(),
            allow_insecure_jwks: false,
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: default_leeway(),
            cookie: None,
            query_param: default_token_query(),
            subscribe_claim: default_subscribe_claim(),
            publish_claim: default_publish_claim(),
            path: None,
            forward_headers: Vec::new(),
            timeout: default_auth_timeout(),
            cache_ttl: default_cache_ttl(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
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
                if let Some(u) = &self.jwks_url {
                    if u.starts_with("http://") && !self.allow_insecure_jwks {
                        return Err("jwks_url over http:// needs allow_insecure_jwks: true (the signing keys would travel unprotected)".into());
                    }
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err("jwks_url must be an https URL".into());
                    }
                    if self.jwks_refresh.0.is_zero() {
                        return Err("jwks_refresh must be above 0s".into());
                    }
                }
                if self.path.is_some() {
                    return Err("path is for mode upstream".into());
                }
                if self.allow_insecure_jwks && self.jwks_url.is_none() {
                    return Err("allow_insecure_jwks goes with jwks_url".into());
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
