//! Path patterns with `{param}` segments, matched against request paths, and the
//! query-string helpers. A leaf: it imports nothing of fanfare.

use std::collections::HashMap;

/// Path parameters by name, percent-decoded.
pub type Params = HashMap<String, String>;

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path pattern such as `/orders/{order_id}/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

/// Why a path that matched a pattern cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// A path parameter is not valid UTF-8 after percent-decoding.
    #[error("path parameter {0} is not valid percent-encoded UTF-8")]
    BadEncoding(String),
}

impl PathPattern {
    /// Parses `path`. Errors on a malformed pattern (a brace that does not span a whole
    /// segment, a bad or repeated parameter name).
    pub fn parse(path: &str) -> Result<PathPattern, String> {
        let segments = path
            .trim_start_matches('/')
            .split('/')
            .map(|seg| {
                if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if inner.is_empty()
                        || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
            .collect::<Result<Vec<_>, _>>()?;
        let pattern = PathPattern { segments };
        let names = pattern.params();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(format!("route {path}: parameter {{{n}}} appears twice"));
            }
        }
        Ok(pattern)
    }

    /// The names of the `{param}` segments, in order.
    pub fn params(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.clone()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// Whether some request path would match both patterns (same number of segments,
    /// and in each place equal literals or a parameter on either side).
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                })
    }

    /// Matches a request path (without query). `None` when the path is not this
    /// pattern's; `Some(Err)` when it is but a parameter is malformed.
    pub fn match_path(&self, path: &str) -> Option<Result<Params, MatchError>> {
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

    #[test]
    fn matches_and_extracts() {
        let p = PathPattern::parse("/orders/{id}/events").unwrap();
        assert_eq!(p.params(), vec!["id"]);
        let got = p.match_path("/orders/42/events").unwrap().unwrap();
        assert_eq!(got["id"], "42");
        assert!(p.match_path("/orders/42").is_none());
        assert!(p.match_path("/orders/42/events/x").is_none());
        assert!(p.match_path("/other/42/events").is_none());
        assert_eq!(
            p.match_path("/orders/a%20b/events").unwrap().unwrap()["id"],
            "a b"
        );
        assert!(matches!(
            p.match_path("/orders/%ff/events"),
            Some(Err(MatchError::BadEncoding(_)))
        ));
    }

    #[test]
    fn overlaps() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert!(p("/a/{x}").overlaps(&p("/a/{y}")));
        assert!(p("/a/new").overlaps(&p("/a/{id}")));
        assert!(p("/a/b").overlaps(&p("/a/b")));
        assert!(!p("/a/b").overlaps(&p("/a/c")));
        assert!(!p("/a").overlaps(&p("/a/{id}")));
        assert!(!p("/{x}/a").overlaps(&p("/b/{y}/c")));
    }

    #[test]
    fn bad_patterns() {
        assert!(PathPattern::parse("/a/{x}/{x}").is_err());
        assert!(PathPattern::parse("/a/x{y}").is_err());
        assert!(PathPattern::parse("/a/{}").is_err());
        assert!(PathPattern::parse("/a/{x-y}").is_err());
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&b=x%20y"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("a=b+c"), "a").as_deref(), Some("b c"));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "b"), None);
        assert_eq!(query_param(Some("a=%zz"), "a"), None);
    }
}
