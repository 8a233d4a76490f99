//! `jwt` mode: HS256 / RS256 / ES256 tokens from `Authorization: Bearer`, a cookie, or
//! a query parameter; keys from a secret, a PEM key, or a JWKS URL refreshed in the
//! background (a failed refresh keeps the last good keys and is counted).
//!
//! Only the route's configured algorithms are accepted (never `none`, and never HS256
//! beside an asymmetric algorithm, which would allow key confusion). `exp` is required.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde_json::Value;

use super::credential::{bearer, cookie, query};
use super::grant::{Grant, expiry_at};
use crate::config::{AuthConfig, JwtAlgorithm};
use crate::metrics::Metrics;
use crate::routing::subject::{CLAIM_PREFIX, is_valid_subscribe_subject};

/// The largest token accepted, in bytes.
const MAX_TOKEN: usize = 8 * 1024;

/// Keys by `kid` (`None`: a key without id, or the single static key).
type Keys = Vec<(Option<String>, DecodingKey)>;

/// A route's token verifier.
pub struct JwtAuth {
    algorithms: Vec<Algorithm>,
    keys: Arc<ArcSwap<Keys>>,
    validation: Validation,
    cookie: Option<String>,
    query_param: String,
    subscribe_claim: String,
    publish_claim: String,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn static_key(
    config: &AuthConfig,
    algorithms: &[Algorithm],
) -> Result<Option<DecodingKey>, String> {
    let pem_key = |pem: &[u8]| -> Result<DecodingKey, String> {
        if algorithms.contains(&Algorithm::RS256) {
            DecodingKey::from_rsa_pem(pem).map_err(|e| format!("bad RSA public key: {e}"))
        } else {
            DecodingKey::from_ec_pem(pem).map_err(|e| format!("bad EC public key: {e}"))
        }
    };
    if let Some(secret) = &config.secret {
        return Ok(Some(DecodingKey::from_secret(secret.as_bytes())));
    }
    if let Some(pem) = &config.public_key {
        return pem_key(pem.as_bytes()).map(Some);
    }
    if let Some(path) = &config.key_file {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read key_file {path}: {e}"))?;
        if algorithms.contains(&Algorithm::HS256) {
            let secret = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
            if secret.len() < 32 {
                return Err("the HS256 secret in key_file must be at least 32 bytes".into());
            }
            return Ok(Some(DecodingKey::from_secret(&secret)));
        }
        return pem_key(&bytes).map(Some);
    }
    Ok(None)
}

impl JwtAuth {
    /// Builds the verifier; with a JWKS URL, starts its refresher.
    pub fn new(
        config: &AuthConfig,
        http: reqwest::Client,
        metrics: &Metrics,
    ) -> Result<JwtAuth, String> {
        let algorithms: Vec<Algorithm> = config.algorithms.iter().copied().map(algorithm).collect();
        let keys = Arc::new(ArcSwap::from_pointee(Vec::new()));
        match static_key(config, &algorithms)? {
            Some(k) => keys.store(Arc::new(vec![(None, k)])),
            None => {
                let url = config.jwks_url.clone().ok_or("no key configured")?;
                spawn_jwks_refresher(
                    url,
                    config.jwks_refresh.0,
                    keys.clone(),
                    http,
                    metrics.clone(),
                );
            }
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_nbf = true;
        // A configured audience or issuer is required, not only checked when present: a
        // token without `aud` must not pass a route that names its audience.
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            validation.required_spec_claims.insert("aud".to_string());
        }
        if !config.issuer.is_empty() {
            validation.set_issuer(&config.issuer);
            validation.required_spec_claims.insert("iss".to_string());
        }
        Ok(JwtAuth {
            algorithms,
            keys,
            validation,
            cookie: config.cookie.clone(),
            query_param: config.query_param.clone(),
            subscribe_claim: config.subscribe_claim.clone(),
            publish_claim: config.publish_claim.clone(),
        })
    }

    /// Finds the token in the request and verifies it.
    pub fn verify_request(&self, req: &RequestHeader) -> Result<Grant, (&'static str, String)> {
        let token = bearer(req)
            .or_else(|| self.cookie.as_deref().and_then(|c| cookie(req, c)))
            .or_else(|| query(req, &self.query_param))
            .ok_or((
                "missing_token",
                "no token (Authorization: Bearer, cookie or query)".to_string(),
            ))?;
        self.verify(&token)
    }

    /// Verifies a token. Errors are `(metric label, reason)`; neither holds the token.
    pub fn verify(&self, token: &str) -> Result<Grant, (&'static str, String)> {
        if token.len() > MAX_TOKEN {
            return Err(("invalid_token", "token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            (
                "invalid_token",
                "malformed token or unsupported algorithm".to_string(),
            )
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err((
                "wrong_algorithm",
                format!("algorithm {:?} is not accepted here", header.alg),
            ));
        }
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(("keys_unavailable", "signing keys are not loaded yet".into()));
        }
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => {
                let by_kid: Vec<_> = keys
                    .iter()
                    .filter(|(k, _)| k.as_deref() == Some(kid))
                    .map(|(_, k)| k)
                    .collect();
                if by_kid.is_empty() {
                    keys.iter()
                        .filter(|(k, _)| k.is_none())
                        .map(|(_, k)| k)
                        .collect()
                } else {
                    by_kid
                }
            }
            None => keys.iter().map(|(_, k)| k).collect(),
        };
        if candidates.is_empty() {
            return Err(("unknown_key", "no key with this token's kid".into()));
        }
        let mut last = ("invalid_token", "invalid signature".to_string());
        for key in candidates {
            match jsonwebtoken::decode::<HashMap<String, Value>>(token, key, &self.validation) {
                Ok(data) => return self.grant(&data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => ("expired", "token expired".into()),
                        ErrorKind::ImmatureSignature => {
                            ("not_yet_valid", "token not valid yet (nbf)".into())
                        }
                        ErrorKind::InvalidAudience => ("wrong_audience", "wrong audience".into()),
                        ErrorKind::InvalidIssuer => ("wrong_issuer", "wrong issuer".into()),
                        ErrorKind::MissingRequiredClaim(c) => {
                            ("invalid_token", format!("missing claim {c}"))
                        }
                        ErrorKind::InvalidAlgorithm => {
                            ("wrong_algorithm", "algorithm not accepted".into())
                        }
                        _ => ("invalid_token", "invalid signature".into()),
                    };
                    if last.0 != "invalid_token" {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn grant(&self, claims: &HashMap<String, Value>) -> Result<Grant, (&'static str, String)> {
        let patterns = |name: &str| -> Vec<String> {
            let list: Vec<String> = match claims.get(name) {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            list.into_iter()
                .filter(|p| is_valid_subscribe_subject(p))
                .collect()
        };
        // `exp` is required and was validated as a time in the future; a fraction is
        // honoured (the connection closes at that instant), a value past any real
        // clock is refused rather than overflowing one.
        let expires = match claims.get("exp").and_then(Value::as_f64).map(expiry_at) {
            Some(Some(at)) => Some(at),
            _ => return Err(("invalid_token", "exp is not a usable time".into())),
        };
        Ok(Grant {
            subscribe: patterns(&self.subscribe_claim),
            publish: patterns(&self.publish_claim),
            claims: claims
                .iter()
                .filter_map(|(k, v)| {
                    v.as_str()
                        .map(|s| (format!("{CLAIM_PREFIX}{k}"), s.to_string()))
                })
                .collect(),
            expires,
        })
    }
}

/// The largest JWKS document fanfare reads.
const MAX_JWKS: usize = 1 << 20;

fn spawn_jwks_refresher(
    url: String,
    every: Duration,
    keys: Arc<ArcSwap<Keys>>,
    http: reqwest::Client,
    metrics: Metrics,
) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut loaded = false;
        loop {
            interval.tick().await;
            // The route was retired by a reload: nobody reads these keys any more.
            if Arc::strong_count(&keys) == 1 {
                return;
            }
            match fetch_jwks(&http, &url).await {
                Ok(new) => {
                    keys.store(Arc::new(new));
                    metrics.jwks_refresh.with_label_values(&["ok"]).inc();
                    loaded = true;
                }
                Err(e) => {
                    metrics.jwks_refresh.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, keep_last = loaded, "JWKS refresh failed");
                }
            }
            if keys.load().is_empty() {
                // Nothing loaded yet: retry sooner than the refresh interval.
                tokio::time::sleep(Duration::from_secs(1).min(every)).await;
            }
        }
    });
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Keys, String> {
    let resp = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("fetch: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    // Read at most MAX_JWKS bytes, chunk by chunk: a key server that streams without
    // end (or announces a huge body) costs at most the cap, never the whole body.
    if resp.content_length().is_some_and(|n| n > MAX_JWKS as u64) {
        return Err("JWKS document over 1 MiB".into());
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("read: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS {
            return Err("JWKS document over 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("parse: {e}"))?;
    let keys: Keys = set
        .keys
        .iter()
        .filter_map(|jwk| {
            DecodingKey::from_jwk(jwk)
                .ok()
                .map(|k| (jwk.common.key_id.clone(), k))
        })
        .collect();
    if keys.is_empty() {
        return Err("JWKS holds no usable key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use std::time::SystemTime;

    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

    fn auth(extra: &str) -> JwtAuth {
        let yaml = format!(
            "routes:\n  - path: /x\n    subjects: [x]\n    auth: {{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\"{extra} }}\n"
        );
        let c = Config::parse(&yaml).unwrap();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        JwtAuth::new(&c.routes[0].auth, crate::http_client().unwrap(), &metrics).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: &serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_grants_claims() {
        let a = auth("");
        let t = token(
            &serde_json::json!({"sub":"u1","exp":now()+60,"fanfare_subscribe":["orders.*","bad pattern"],"fanfare_publish":"chat.a chat.b"}),
            SECRET,
        );
        let g = a.verify(&t).unwrap();
        assert_eq!(g.subscribe, vec!["orders.*"]);
        assert_eq!(g.publish, vec!["chat.a", "chat.b"]);
        assert_eq!(g.claims["claims.sub"], "u1");
        assert!(g.expires.is_some());
    }

    #[test]
    fn refusals() {
        let a = auth(", audience: [app], leeway: 0s");
        let ok = serde_json::json!({"exp":now()+60,"aud":"app"});
        assert!(a.verify(&token(&ok, SECRET)).is_ok());
        assert_eq!(
            a.verify(&token(&ok, "another-secret-another-secret-another"))
                .unwrap_err()
                .0,
            "invalid_token"
        );
        assert_eq!(
            a.verify(&token(
                &serde_json::json!({"exp":now()-10,"aud":"app"}),
                SECRET
            ))
            .unwrap_err()
            .0,
            "expired"
        );
        assert_eq!(
            a.verify(&token(
                &serde_json::json!({"exp":now()+60,"aud":"other"}),
                SECRET
            ))
            .unwrap_err()
            .0,
            "wrong_audience"
        );
        assert_eq!(
            a.verify(&token(&serde_json::json!({"aud":"app"}), SECRET))
                .unwrap_err()
                .0,
            "invalid_token"
        );
        assert_eq!(a.verify("garbage").unwrap_err().0, "invalid_token");
        // alg none: header {"alg":"none"} with an empty signature.
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"alg":"none","typ":"JWT"}"#
            ),
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ok.to_string()
            )
        );
        assert!(a.verify(&none).is_err());
        // HS384 is a real algorithm but not configured here.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &ok,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(a.verify(&hs384).unwrap_err().0, "wrong_algorithm");
    }
}
