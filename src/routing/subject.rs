//! NATS subjects: templates filled from path parameters, validation, and matching.
//!
//! Invariant: a subject built from a template can only ever name what the template
//! allows. Every value put into a template is checked as one NATS token: it may not
//! be empty, and may not contain `.`, `*`, `>`, whitespace or control characters, so a
//! path parameter such as `a.b`, `*` or `>` can never widen a subscription (subject
//! injection).

use std::collections::HashMap;
use std::fmt;

/// The longest value a template parameter may take, in bytes.
pub const MAX_PARAM_LEN: usize = 256;

/// Why a template value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The value is empty.
    #[error("parameter {0} is empty")]
    Empty(String),
    /// The value holds a character that would change the subject's shape.
    #[error("parameter {name} contains {what}, which is not allowed in a subject token")]
    Forbidden {
        /// The parameter's name.
        name: String,
        /// A description of the character.
        what: &'static str,
    },
    /// The value is longer than [`MAX_PARAM_LEN`].
    #[error("parameter {0} is longer than {MAX_PARAM_LEN} bytes")]
    TooLong(String),
    /// The template names a parameter that has no value.
    #[error("parameter {0} has no value")]
    Missing(String),
}

impl SubjectError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        "invalid_subject_parameter"
    }
}

/// Checks one template value against the token rules.
pub fn check_token_value(name: &str, value: &str) -> Result<(), SubjectError> {
    if value.is_empty() {
        return Err(SubjectError::Empty(name.to_string()));
    }
    if value.len() > MAX_PARAM_LEN {
        return Err(SubjectError::TooLong(name.to_string()));
    }
    for c in value.chars() {
        let what = match c {
            '.' => "'.'",
            '*' => "'*'",
            '>' => "'>'",
            c if c.is_whitespace() => "whitespace",
            c if c.is_control() => "a control character",
            _ => continue,
        };
        return Err(SubjectError::Forbidden {
            name: name.to_string(),
            what,
        });
    }
    Ok(())
}

/// One piece of a template token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// A subject template such as `orders.{order_id}`, parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    tokens: Vec<Vec<Part>>,
}

impl Template {
    /// Parses `text`, whose `{name}` placeholders must be among `params`.
    ///
    /// Literal tokens follow NATS rules: non-empty, no whitespace; `*` and `>` only as
    /// whole tokens, `>` only last. A token holding a placeholder holds no wildcard.
    ///
    /// Besides `params`, a placeholder may name a token claim, `{claims.NAME}`, when
    /// `claims` is true.
    pub fn parse_with(text: &str, params: &[String], claims: bool) -> Result<Template, String> {
        if text.is_empty() {
            return Err("empty subject".to_string());
        }
        let raw = split_outside_braces(text);
        let mut tokens = Vec::with_capacity(raw.len());
        for (i, tok) in raw.iter().enumerate() {
            if tok.is_empty() {
                return Err("empty token (two dots, or a dot at an end)".to_string());
            }
            if tok.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("whitespace or control character in subject".to_string());
            }
            if *tok == ">" && i + 1 != raw.len() {
                return Err("'>' may only be the last token".to_string());
            }
            if (tok.contains('*') || tok.contains('>')) && *tok != "*" && *tok != ">" {
                return Err(format!("wildcard inside token {tok:?}"));
            }
            tokens.push(parse_token(tok, params, claims)?);
        }
        Ok(Template { tokens })
    }

    /// [`Template::parse_with`] without claim placeholders.
    pub fn parse(text: &str, params: &[String]) -> Result<Template, String> {
        Template::parse_with(text, params, false)
    }

    /// Whether any placeholder is a path parameter (not a claim): such a subject is
    /// built from what the client chose and must be covered by its grant.
    pub fn uses_path_params(&self) -> bool {
        self.tokens
            .iter()
            .flatten()
            .any(|p| matches!(p, Part::Param(n) if !n.starts_with(CLAIM_PREFIX)))
    }

    /// Fills the template. Every value is checked with [`check_token_value`].
    pub fn render(&self, values: &HashMap<String, String>) -> Result<String, SubjectError> {
        let mut out = String::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for part in token {
                match part {
                    Part::Literal(l) => out.push_str(l),
                    Part::Param(name) => {
                        let v = values
                            .get(name)
                            .ok_or_else(|| SubjectError::Missing(name.clone()))?;
                        check_token_value(name, v)?;
                        out.push_str(v);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The prefix of claim placeholders: `{claims.sub}`.
pub const CLAIM_PREFIX: &str = "claims.";

/// Splits on dots that are not inside `{...}`.
fn split_outside_braces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_token(tok: &str, params: &[String], claims: bool) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = tok;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {tok:?}"))?
            + open;
        let name = &rest[open + 1..close];
        let claim_ok = claims
            && name.strip_prefix(CLAIM_PREFIX).is_some_and(|c| {
                !c.is_empty()
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            });
        if !claim_ok && !params.iter().any(|p| p == name) {
            return Err(format!(
                "unknown parameter {{{name}}} (the path defines: {})",
                params.join(", ")
            ));
        }
        parts.push(Part::Param(name.to_string()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray }} in {tok:?}"));
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for part in token {
                match part {
                    Part::Literal(l) => f.write_str(l)?,
                    Part::Param(p) => write!(f, "{{{p}}}")?,
                }
            }
        }
        Ok(())
    }
}

/// Whether `subject` (no wildcards) matches `pattern` (NATS wildcards `*` and `>`).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `pattern` (a grant) covers everything `requested` (itself possibly a
/// pattern) can match: `orders.>` covers `orders.*` and `orders.1.x`; `orders.*`
/// covers `orders.1` and `orders.*` but not `orders.>`.
pub fn covers(pattern: &str, requested: &str) -> bool {
    let mut p = pattern.split('.');
    let mut r = requested.split('.');
    loop {
        match (p.next(), r.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `subject` is a well-formed subscription subject (wildcards allowed where
/// NATS allows them).
pub fn is_valid_subscribe_subject(subject: &str) -> bool {
    subject.len() <= 1024 && Template::parse(subject, &[]).is_ok() && !subject.contains(['{', '}'])
}

/// Whether `subject` is a valid NATS subject to publish to (no wildcards).
pub fn is_valid_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 1024
        && subject.split('.').all(|t| {
            !t.is_empty()
                && !t
                    .chars()
                    .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
        })
}

/// Whether `subject` is reserved to NATS itself (`$JS.…`, `$SYS.…`, `$KV.…`, any `$`
/// prefix) or to request-reply inboxes (`_INBOX.…`). fanfare never publishes to one on
/// anyone's behalf, whatever a grant or `allow_publish` says: `$JS.API.STREAM.DELETE.X`
/// deletes a stream.
pub fn is_reserved(subject: &str) -> bool {
    is_reserved_for_nats(subject)
}

/// The prefix of the subjects that address one connection
/// (`fanfare.connection.<instance>.<n>`): the app publishes there, clients never do, and
/// no topic delivers them.
pub const CONNECTION_PREFIX: &str = "fanfare.connection.";

/// Whether `subject` addresses one connection (or could, as a pattern a client
/// publishes to).
pub fn is_connection_subject(subject: &str) -> bool {
    subject.starts_with(CONNECTION_PREFIX)
}

fn is_reserved_for_nats(subject: &str) -> bool {
    subject.starts_with('$') || subject == "_INBOX" || subject.starts_with("_INBOX.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(names: &[&str]) -> Vec<String> {
        names.iter().map(std::string::ToString::to_string).collect()
    }

    fn values(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_params() {
        let t = Template::parse("orders.{id}.user-{u}", &params(&["id", "u"])).unwrap();
        let s = t.render(&values(&[("id", "42"), ("u", "ann")])).unwrap();
        assert_eq!(s, "orders.42.user-ann");
        assert_eq!(t.to_string(), "orders.{id}.user-{u}");
    }

    #[test]
    fn refuses_injection() {
        let t = Template::parse("orders.{id}", &params(&["id"])).unwrap();
        for bad in ["a.b", "*", ">", "a b", "", "a\tb", "a\u{0}b", "x\n"] {
            let r = t.render(&values(&[("id", bad)]));
            assert!(r.is_err(), "{bad:?} was accepted as {r:?}");
        }
        let long = "x".repeat(MAX_PARAM_LEN + 1);
        assert!(matches!(
            t.render(&values(&[("id", &long)])),
            Err(SubjectError::TooLong(_))
        ));
    }

    #[test]
    fn claim_placeholders() {
        let t = Template::parse_with("users.{claims.sub}.x", &params(&[]), true).unwrap();
        assert!(!t.uses_path_params());
        let s = t.render(&values(&[("claims.sub", "u1")])).unwrap();
        assert_eq!(s, "users.u1.x");
        assert!(t.render(&values(&[("claims.sub", "a.b")])).is_err());
        assert!(Template::parse("users.{claims.sub}", &params(&[])).is_err());
        let t = Template::parse_with("o.{id}.{claims.sub}", &params(&["id"]), true).unwrap();
        assert!(t.uses_path_params());
    }

    #[test]
    fn bad_templates() {
        let p = params(&["id"]);
        for bad in [
            "", "a..b", ".a", "a.", "a.{nope}", "a.>.b", "a.b*", "a.{id", "a}.b", "a b",
        ] {
            assert!(Template::parse(bad, &p).is_err(), "{bad:?}");
        }
        assert!(Template::parse("a.*.>", &p).is_ok());
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("orders.*", "orders.42"));
        assert!(!matches("orders.*", "orders.42.x"));
        assert!(matches("orders.>", "orders.42.x"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        assert!(!matches("a", "a.b"));
    }

    #[test]
    fn grants_cover() {
        assert!(covers("orders.*", "orders.1"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.1.x"));
        assert!(covers("orders.>", "orders.1.x"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.>"));
        assert!(!covers("orders.>", "orders"));
        assert!(!covers("orders.1", "orders.*"));
        assert!(covers(">", "anything.at.all"));
        assert!(!covers("chat.room1", "chat.room2"));
    }

    #[test]
    fn subscribe_subjects() {
        assert!(is_valid_subscribe_subject("a.*.>"));
        for bad in ["", "a..b", "a.>.b", "a b", "a.{x}", "a.b*"] {
            assert!(!is_valid_subscribe_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn publish_subjects() {
        assert!(is_valid_publish_subject("orders.42"));
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(!is_valid_publish_subject(bad), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever the value, a rendered subject either is refused or has exactly the
        /// template's token count with the value as one literal token.
        #[test]
        fn rendered_subject_keeps_its_shape(v in any::<String>()) {
            let t = Template::parse("orders.{id}.events", &params(&["id"])).unwrap();
            match t.render(&values(&[("id", &v)])) {
                Ok(s) => {
                    let toks: Vec<&str> = s.split('.').collect();
                    prop_assert_eq!(toks.len(), 3);
                    prop_assert_eq!(toks[1], v.as_str());
                    prop_assert!(is_valid_publish_subject(&s));
                }
                Err(_) => prop_assert!(check_token_value("id", &v).is_err()),
            }
        }
    }

    #[test]
    fn reserved_subjects() {
        for s in [
            "$JS.API.STREAM.DELETE.ORDERS",
            "$SYS.REQ.SERVER.PING",
            "$KV.b.k",
            "_INBOX.x",
            "_INBOX",
        ] {
            assert!(is_reserved(s), "{s}");
        }
        for s in ["orders.1", "JS.x", "x.$JS", "_INBOXES.x", "inbox.x"] {
            assert!(!is_reserved(s), "{s}");
        }
    }
}
