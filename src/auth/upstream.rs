//! `upstream` mode: the app's own session decides (like nginx `auth_request`).
//!
//! The handshake's `Cookie`, `Authorization` and configured headers go to the app's
//! auth path (GET, with `X-Original-URI` and `X-Original-Method`). A 2xx grants the
//! comma-separated patterns of its `Fanfare-Subscribe` / `Fanfare-Publish` headers (and
//! `Fanfare-Expires`, unix seconds, if present); any other answer goes back to the client
//! unchanged; no answer within `timeout` is a 503. 2xx answers may be cached for
//! `cache_ttl`, keyed by a SHA-256 of the credentials (never the credentials).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use super::grant::{Grant, expiry_at};
use crate::config::AuthConfig;
use crate::edge::respond::{Refusal, app_headers};
use crate::routing::subject::is_valid_subscribe_subject;

/// Cached grants at most (past it, expired entries go, then the whole cache).
const CACHE_MAX: usize = 10_000;
/// The largest refusal body passed back to the client.
const MAX_BODY: usize = 64 * 1024;

/// A route's upstream authorizer.
pub struct UpstreamAuth {
    url: String,
    forward: Vec<String>,
    timeout: Duration,
    ttl: Duration,
    http: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Grant)>>,
}

impl UpstreamAuth {
    /// Builds it; `base` is the app's `http://host:port`.
    pub fn new(config: &AuthConfig, base: &str, http: reqwest::Client) -> UpstreamAuth {
        let mut forward = vec!["cookie".to_string(), "authorization".to_string()];
        forward.extend(
            config
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase()),
        );
        UpstreamAuth {
            url: format!("{base}{}", config.path.as_deref().unwrap_or("/")),
            forward,
            timeout: config.timeout.0,
            ttl: config.cache_ttl.0,
            http,
            cache: Mutex::default(),
        }
    }

    /// Whether the app is sent header `name` (lower case).
    pub fn forwards(&self, name: &str) -> bool {
        self.forward.iter().any(|h| h == name)
    }

    fn credentials(&self, req: &RequestHeader) -> Vec<(String, String)> {
        self.forward
            .iter()
            .flat_map(|name| {
                req.headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| (name.clone(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn cache_key(creds: &[(String, String)], uri: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, v) in creds {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.update(uri.as_bytes());
        h.finalize().into()
    }

    /// Asks the app (or the cache).
    pub async fn authorize(&self, req: &RequestHeader) -> Result<Grant, Refusal> {
        let uri = req.uri.path_and_query().map_or_else(
            || req.uri.path().to_string(),
            std::string::ToString::to_string,
        );
        let creds = self.credentials(req);
        let key = Self::cache_key(&creds, &uri);
        if !self.ttl.is_zero() {
            let cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, grant)) = cache.get(&key)
                && at.elapsed() < self.ttl
            {
                return Ok(grant.clone());
            }
        }
        let mut call = self
            .http
            .get(&self.url)
            .timeout(self.timeout)
            .header("x-original-uri", &uri)
            .header("x-original-method", req.method.as_str());
        for (k, v) in &creds {
            call = call.header(k.as_str(), v.as_str());
        }
        let resp = call.send().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "auth callout failed");
            Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the app's auth endpoint did not answer",
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let headers = app_headers(resp.headers());
            let mut body = resp.bytes().await.unwrap_or_default();
            if body.len() > MAX_BODY {
                body = Bytes::new();
            }
            return Err(Refusal::App {
                status,
                headers,
                body,
            });
        }
        let list = |name: &str| -> Vec<String> {
            resp.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().to_string())
                .filter(|p| is_valid_subscribe_subject(p))
                .collect()
        };
        let expires = match resp.headers().get("fanfare-expires") {
            None => None,
            Some(v) => match v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(expiry_at)
            {
                Some(at) => Some(at),
                None => {
                    tracing::warn!(
                        "the auth endpoint sent a Fanfare-Expires that is not a unix time"
                    );
                    return Err(Refusal::new(
                        http::StatusCode::BAD_GATEWAY,
                        "bad_auth_answer",
                        "the app's auth endpoint sent an unusable Fanfare-Expires",
                    ));
                }
            },
        };
        let grant = Grant {
            subscribe: list("fanfare-subscribe"),
            publish: list("fanfare-publish"),
            claims: HashMap::new(),
            expires,
        };
        if !self.ttl.is_zero() && grant.expires.is_none_or(|e| e > SystemTime::now()) {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.len() >= CACHE_MAX {
                let ttl = self.ttl;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), grant.clone()));
        }
        Ok(grant)
    }
}
