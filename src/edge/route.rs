//! A realtime route ready to serve: its path pattern and subject templates compiled,
//! its settings kept, and its auth settings handed to the route's authorizer (the
//! route itself keeps no secret).

use crate::config::{AuthConfig, AuthMode, RouteConfig, SlowConsumer, Transport};
use crate::hub::{Bound, Policy, TopicSpec};
use crate::routing::path::{MatchError, Params, PathPattern};
use crate::routing::subject::{SubjectError, Template};

/// A route ready to match requests.
#[derive(Debug)]
pub struct Route {
    /// Its settings; `auth` holds the mode only (the rest went to the authorizer).
    pub config: RouteConfig,
    pattern: PathPattern,
    subjects: Vec<Template>,
    allow_subscribe: Vec<Template>,
    allow_publish: Vec<Template>,
    publish_to: Option<Template>,
}

impl Route {
    /// Builds a route from validated configuration; returns it with the auth settings
    /// taken out of it, for the authorizer.
    pub fn new(mut config: RouteConfig) -> Result<(Route, AuthConfig), String> {
        let pattern = PathPattern::parse(&config.path)?;
        let params = pattern.params();
        let claims = config.auth.mode == AuthMode::Jwt;
        let parse = |list: &[String], params: &[String]| -> Result<Vec<Template>, String> {
            list.iter()
                .map(|s| Template::parse_with(s, params, claims))
                .collect()
        };
        let subjects = parse(&config.subjects, &params)?;
        let allow_subscribe = parse(&config.allow_subscribe, &[])?;
        let allow_publish = parse(&config.allow_publish, &[])?;
        let publish_to = parse(config.ws.publish_to.as_slice(), &params)?.pop();
        let mode = config.auth.mode;
        let auth = std::mem::replace(&mut config.auth, AuthConfig::mode_only(mode));
        Ok((
            Route {
                config,
                pattern,
                subjects,
                allow_subscribe,
                allow_publish,
                publish_to,
            },
            auth,
        ))
    }

    /// Whether the route serves `t`.
    pub fn serves(&self, t: Transport) -> bool {
        self.config.transports.contains(&t)
    }

    /// Whether the route is public (`auth: { mode: none }`).
    pub fn is_public(&self) -> bool {
        self.config.auth.mode == AuthMode::None
    }

    /// Matches a request path; see [`PathPattern::match_path`].
    pub fn match_path(&self, path: &str) -> Option<Result<Params, MatchError>> {
        self.pattern.match_path(path)
    }

    /// The subjects for a matched request, each value checked against injection, with
    /// whether each was built from a path parameter (and so needs the grant to cover it).
    pub fn subjects_with_origin(
        &self,
        values: &Params,
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

    /// The route's `allow_subscribe` / `allow_publish` patterns, rendered with claims.
    /// A pattern whose claim is missing or invalid is left out.
    pub fn allowances(&self, values: &Params) -> (Vec<String>, Vec<String>) {
        let render = |ts: &[Template]| ts.iter().filter_map(|t| t.render(values).ok()).collect();
        (render(&self.allow_subscribe), render(&self.allow_publish))
    }

    /// Raw mode's `ws.publish_to` for a connection (each value checked against
    /// injection, as the route's subjects are).
    pub fn publish_to(&self, values: &Params) -> Result<Option<String>, SubjectError> {
        self.publish_to
            .as_ref()
            .map(|t| t.render(values))
            .transpose()
    }

    /// The hub topic template of this route (its history settings; no subject yet).
    pub fn topic(&self) -> TopicSpec {
        let h = &self.config.history;
        TopicSpec {
            subjects: Vec::new(),
            stream: h.jetstream.clone(),
            ring: h.ring,
            max_age: h.max_age.0,
            linger: h.linger.0,
            max_replay: h.max_replay,
            max_replay_bytes: h.max_replay_bytes,
        }
    }

    /// A client queue's bound and slow-consumer policy on this route.
    pub fn queue(&self) -> (Bound, Policy) {
        let q = &self.config.queue;
        let policy = match self.config.slow_consumer {
            SlowConsumer::DropOldest => Policy::DropOldest,
            SlowConsumer::Disconnect => Policy::Disconnect,
        };
        (
            Bound {
                messages: q.messages,
                bytes: q.bytes,
            },
            policy,
        )
    }
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
        Route::new(c.routes[0].clone()).unwrap().0
    }

    fn subjects(r: &Route, p: &Params) -> Result<Vec<String>, SubjectError> {
        Ok(r.subjects_with_origin(p)?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    #[test]
    fn matches_and_builds_subjects() {
        let r = route("/orders/{id}/events", &["orders.{id}"]);
        let p = r.match_path("/orders/42/events").unwrap().unwrap();
        assert_eq!(subjects(&r, &p).unwrap(), vec!["orders.42"]);
        assert!(r.match_path("/orders/42").is_none());
    }

    #[test]
    fn decoded_values_are_checked() {
        let r = route("/orders/{id}/events", &["orders.{id}"]);
        for bad in ["a.b", "*", "%3E", "a%20b", "a%2Eb", ""] {
            let p = r
                .match_path(&format!("/orders/{bad}/events"))
                .unwrap()
                .unwrap();
            assert!(subjects(&r, &p).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_subjects_deduplicated() {
        let r = route("/u/{id}", &["a.{id}", "b.{id}", "a.{id}"]);
        let p = r.match_path("/u/7").unwrap().unwrap();
        assert_eq!(subjects(&r, &p).unwrap(), vec!["a.7", "b.7"]);
    }

    #[test]
    fn the_route_keeps_no_auth_secret() {
        let yaml = "routes:\n  - path: /s\n    subjects: [s]\n    auth: { mode: jwt, algorithms: [HS256], secret: 0123456789abcdef0123456789abcdef }\n";
        let c = Config::parse(yaml).unwrap();
        let (route, auth) = Route::new(c.routes[0].clone()).unwrap();
        assert_eq!(
            auth.secret.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(route.config.auth.secret, None);
        assert_eq!(route.config.auth.mode, AuthMode::Jwt);
    }
}
