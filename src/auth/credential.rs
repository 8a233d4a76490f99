//! Where a handshake carries its credential: `Authorization: Bearer`, a cookie, or a
//! query parameter (EventSource cannot set headers).

use pingora::http::RequestHeader;

use crate::routing::path::query_param;

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
