//! Realtime routes: path patterns with `{param}` segments, matched against request
//! paths, and the subjects a matched request subscribes to.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AuthMode, RouteConfig, Transport};
use crate::subject::{SubjectError, Template};

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// The names of the `{param}` segments of `path`, in order. Errors on a malformed
/// pattern (a brace that does not span a whole segment, a repeated name).
pub fn path_params(path: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for seg in parse_path(path)? {
        if let Segment::Param(n) = seg {
            if names.contains(&n) {
                return Err(format!("route {path}: parameter {{{n}}} appears twice"));
            }
            names.push(n);
        }
    }
    Ok(names)
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    path.trim_start_matches('/')
        .split('/')
        .map(|seg| {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("route {path}: bad parameter name {{{inner}}}"));
                }
                Ok(Segment::Param(inner.to_string()))
            } else if seg.contains('{') || seg.contains('}') {
                Err(format!(
                    "route {path}: a {{param}} must be a whole path segment"
                ))
            } else {
                Ok(Segment::Literal(seg.to_string()))
            }
        })
        .collect()
}

/// A route ready to match requests.
#[derive(Debug)]
pub struct Route {
    /// The configuration it was built from.
    pub config: RouteConfig,
    segments: Vec<Segment>,
    subjects: Vec<Template>,
    allow_subscribe: Vec<Template>,
    allow_publish: Vec<Template>,
}

/// Why a matched request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// A path parameter is not valid UTF-8 after percent-decoding.
    #[error("path parameter {0} is not valid percent-encoded UTF-8")]
    BadEncoding(String),
    /// A subject could not be built.
    #[error(transparent)]
    Subject(#[from] SubjectError),
}

impl Route {
    /// Builds a route from validated configuration.
    pub fn new(config: RouteConfig) -> Result<Route, String> {
        let segments = parse_path(&config.path)?;
        let params = path_params(&config.path)?;
        let claims = config.auth.mode == AuthMode::Jwt;
        let parse = |list: &[String], params: &[String]| -> Result<Vec<Template>, String> {
            list.iter()
                .map(|s| Template::parse_with(s, params, claims))
                .collect()
        };
        Ok(Route {
            subjects: parse(&config.subjects, &params)?,
            allow_subscribe: parse(&config.allow_subscribe, &[])?,
            allow_publish: parse(&config.allow_publish, &[])?,
            config,
            segments,
        })
    }

    /// Whether the route serves `t`.
    pub fn serves(&self, t: Transport) -> bool {
        self.config.transports.contains(&t)
    }

    /// Matches a request path (without query). `None` when the path is not this route's;
    /// `Some(Err)` when it is but a parameter is malformed.
    pub fn match_path(&self, path: &str) -> Option<Result<HashMap<String, String>, MatchError>> {
        let mut got = path.trim_start_matches('/').split('/');
        let mut raw = Vec::new();
        for seg in &self.segments {
            let g = got.next()?;
            match seg {
                Segment::Literal(l) if l == g => {}
                Segment::Literal(_) => return None,
                Segment::Param(n) => raw.push((n, g)),
            }
        }
        if got.next().is_some() {
            return None;
        }
        let mut params = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let Some(decoded) = percent_decode(value) else {
                return Some(Err(MatchError::BadEncoding(name.clone())));
            };
            params.insert(name.clone(), decoded);
        }
        Some(Ok(params))
    }

    /// The subjects for a matched request, each value checked against injection, with
    /// whether each was built from a path parameter (and so needs the grant to cover it).
    pub fn subjects_with_origin(
        &self,
        values: &HashMap<String, String>,
    ) -> Result<Vec<(String, bool)>, SubjectError> {
        let mut out: Vec<(String, bool)> = Vec::with_capacity(self.subjects.len());
        for t in &self.subjects {
            let s = t.render(values)?;
            if !out.iter().any(|(x, _)| *x == s) {
                out.push((s, t.uses_path_params()));
            }
        }
        Ok(out)
    }

    /// The subjects for a matched request, each value checked against injection.
    pub fn subjects(&self, values: &HashMap<String, String>) -> Result<Vec<String>, SubjectError> {
        Ok(self
            .subjects_with_origin(values)?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// The route's `allow_subscribe` / `allow_publish` patterns, rendered with claims.
    /// A pattern whose claim is missing or invalid is left out.
    pub fn allowances(&self, values: &HashMap<String, String>) -> (Vec<String>, Vec<String>) {
        let render = |ts: &[Template]| ts.iter().filter_map(|t| t.render(values).ok()).collect();
        (render(&self.allow_subscribe), render(&self.allow_publish))
    }
}

/// Path parameters by name, percent-decoded.
pub type Params = HashMap<String, String>;

/// The routing table, matched in configuration order.
#[derive(Debug, Default)]
pub struct Routes(pub Vec<Arc<Route>>);

impl Routes {
    /// Builds every route.
    pub fn new(configs: &[RouteConfig]) -> Result<Routes, String> {
        configs
            .iter()
            .map(|c| Route::new(c.clone()).map(Arc::new))
            .collect::<Result<_, _>>()
            .map(Routes)
    }
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `key`, percent-decoded (`+` is a space).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(&v.replace('+', " ")))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(path: &str, subjects: &[&str]) -> Route {
        let subjects = subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "routes:\n  - path: {path}\n    subjects: [{subjects}]\n    auth: {{ mode: none }}\n"
        );
        let c = Config::parse(&yaml).unwrap();
        Route::new(c.routes[0].clone()).unwrap()
    }

    #[test]
    fn matches_and_extracts() {
        let r = route("/orders/{id}/events", &["orders.{id}"]);
        let p = r.match_path("/orders/42/events").unwrap().unwrap();
        assert_eq!(p["id"], "42");
        assert_eq!(r.subjects(&p).unwrap(), vec!["orders.42"]);
        assert!(r.match_path("/orders/42").is_none());
        assert!(r.match_path("/orders/42/events/x").is_none());
        assert!(r.match_path("/other/42/events").is_none());
    }

    #[test]
    fn decoded_values_are_checked() {
        let r = route("/orders/{id}/events", &["orders.{id}"]);
        for bad in ["a.b", "*", "%3E", "a%20b", "a%2Eb", ""] {
            let p = r
                .match_path(&format!("/orders/{bad}/events"))
                .unwrap()
                .unwrap();
            assert!(r.subjects(&p).is_err(), "{bad}");
        }
        assert!(matches!(
            r.match_path("/orders/%ff/events"),
            Some(Err(MatchError::BadEncoding(_)))
        ));
    }

    #[test]
    fn two_subjects_deduplicated() {
        let r = route("/u/{id}", &["a.{id}", "b.{id}", "a.{id}"]);
        let p = r.match_path("/u/7").unwrap().unwrap();
        assert_eq!(r.subjects(&p).unwrap(), vec!["a.7", "b.7"]);
    }

    #[test]
    fn bad_patterns() {
        assert!(path_params("/a/{x}/{x}").is_err());
        assert!(path_params("/a/x{y}").is_err());
        assert!(path_params("/a/{}").is_err());
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&b=x%20y"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "b"), None);
    }
}
