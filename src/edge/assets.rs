//! What fanfare serves itself under `/_fanfare/`: its browser client (an ES module, the
//! same code as a plain script defining `window.fanfare`, and its TypeScript types) and,
//! with `demo: true`, the demo page.
//!
//! The files are compiled in (`client/` in the repository). Each is encoded once at
//! start: its gzip form, and a strong ETag over its bytes. A request with the ETag in
//! `If-None-Match` gets a 304; one whose `?v=` names the current ETag may cache it for
//! a year (the content behind such a URL never changes), any other for a day.

use bytes::Bytes;
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use sha2::{Digest, Sha256};

use super::respond::Refusal;

/// The prefix fanfare keeps for itself; nothing under it reaches the app.
pub const PREFIX: &str = "/_fanfare/";

const SOURCE: &str = include_str!("../../client/fanfare.js");
const TYPES: &str = include_str!("../../client/fanfare.d.ts");
const DEMO: &str = include_str!("../../client/demo.html");

/// One file, ready to send.
struct Asset {
    body: Bytes,
    gzip: Bytes,
    /// Its strong ETag, quotes included.
    etag: String,
    content_type: &'static str,
}

impl Asset {
    fn new(text: String, content_type: &'static str) -> Asset {
        let hash = Sha256::digest(text.as_bytes());
        let etag = format!(
            "\"{}\"",
            hash[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Asset {
            gzip: Bytes::from(gzip(text.as_bytes())),
            body: Bytes::from(text),
            etag,
            content_type,
        }
    }
}

/// The gzip form of `bytes` (level 9: done once per process).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// The client as a plain script: the module's exported functions become the members
/// of `window.fanfare` (`globalThis.fanfare`); the code itself is the same.
pub fn umd(module: &str) -> String {
    let mut body = String::with_capacity(module.len() + 200);
    body.push_str("/* fanfare client (plain script: window.fanfare) */\n(function (g) {\n");
    let mut names = Vec::new();
    for line in module.lines() {
        if line.starts_with("export default ") {
            continue;
        }
        if let Some(f) = line.strip_prefix("export function ") {
            names.push(f.split('(').next().unwrap_or_default());
        }
        body.push_str(line.strip_prefix("export ").unwrap_or(line));
        body.push('\n');
    }
    body.push_str(&format!("g.fanfare = {{ {} }};\n", names.join(", ")));
    body.push_str("})(typeof globalThis !== \"undefined\" ? globalThis : this);\n");
    body
}

/// The files under [`PREFIX`].
pub struct Assets {
    module: Asset,
    script: Asset,
    types: Asset,
    demo: Option<Asset>,
}

impl Assets {
    /// The client files; the demo page too when `demo` names the admin address the
    /// page's `curl` lines publish to.
    pub fn new(demo: Option<std::net::SocketAddr>) -> Assets {
        let demo = demo.map(|admin| {
            let shown = if admin.ip().is_unspecified() {
                std::net::SocketAddr::new([127, 0, 0, 1].into(), admin.port())
            } else {
                admin
            };
            Asset::new(
                DEMO.replace("__ADMIN__", &shown.to_string()),
                "text/html; charset=utf-8",
            )
        });
        Assets {
            module: Asset::new(SOURCE.to_string(), "text/javascript; charset=utf-8"),
            script: Asset::new(umd(SOURCE), "text/javascript; charset=utf-8"),
            types: Asset::new(TYPES.to_string(), "application/typescript; charset=utf-8"),
            demo,
        }
    }

    fn find(&self, name: &str) -> Option<&Asset> {
        match name {
            "client.js" => Some(&self.module),
            "client.umd.js" => Some(&self.script),
            "client.d.ts" => Some(&self.types),
            "demo" | "demo/" => self.demo.as_ref(),
            _ => None,
        }
    }

    /// Serves `session` when its path is under [`PREFIX`]; `Ok(false)` passes it on.
    pub async fn handle(&self, session: &mut Session) -> pingora::Result<bool> {
        let Some(name) = session.req_header().uri.path().strip_prefix(PREFIX) else {
            return Ok(false);
        };
        let Some(asset) = self.find(name) else {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "fanfare serves client.js, client.umd.js, client.d.ts (and demo with demo: true) here",
            )
            .write(session)
            .await?;
            return Ok(true);
        };
        let req = session.req_header();
        let head_only = req.method == http::Method::HEAD;
        if req.method != http::Method::GET && !head_only {
            Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "GET or HEAD",
            )
            .write(session)
            .await?;
            return Ok(true);
        }
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let fresh = header("if-none-match")
            .split(',')
            .any(|t| t.trim() == asset.etag || t.trim() == "*");
        let gzip = header("accept-encoding")
            .split(',')
            .any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip"));
        let pinned = crate::routing::path::query_param(req.uri.query(), "v")
            .is_some_and(|v| format!("\"{v}\"") == asset.etag);
        let cache = if asset.content_type.starts_with("text/html") {
            "no-cache"
        } else if pinned {
            "public, max-age=31536000, immutable"
        } else {
            "public, max-age=86400"
        };
        let status = if fresh {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        };
        let mut h = ResponseHeader::build(status, Some(6))?;
        h.insert_header("etag", &asset.etag)?;
        h.insert_header("cache-control", cache)?;
        h.insert_header("vary", "Accept-Encoding")?;
        if fresh {
            session.write_response_header(Box::new(h), true).await?;
            return Ok(true);
        }
        let body = if gzip { &asset.gzip } else { &asset.body };
        h.insert_header("content-type", asset.content_type)?;
        h.insert_header("content-length", body.len().to_string())?;
        if gzip {
            h.insert_header("content-encoding", "gzip")?;
        }
        h.insert_header("x-content-type-options", "nosniff")?;
        session
            .write_response_header(Box::new(h), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(body.clone()), true)
                .await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_script_defines_the_modules_exports_and_exports_nothing() {
        let s =
            umd("export function a(x) {\n}\nexport function b() {}\nexport default { a, b };\n");
        assert_eq!(
            s.lines().skip(2).collect::<Vec<_>>(),
            [
                "function a(x) {",
                "}",
                "function b() {}",
                "g.fanfare = { a, b };",
                "})(typeof globalThis !== \"undefined\" ? globalThis : this);"
            ]
        );
        let real = umd(SOURCE);
        assert!(!real.contains("\nexport "), "no export left");
        assert!(real.contains("g.fanfare = { backoff, connect };"), "{real}");
    }

    #[test]
    fn the_client_stays_under_5_kb_gzipped() {
        for (name, text) in [
            ("client.js", SOURCE.to_string()),
            ("client.umd.js", umd(SOURCE)),
        ] {
            let n = gzip(text.as_bytes()).len();
            assert!(
                n <= 5 * 1024,
                "{name} is {n} bytes gzipped; the budget is 5 KB"
            );
        }
    }

    #[test]
    fn etags_differ_with_content_and_are_strong() {
        let a = Asset::new("a".into(), "text/plain");
        let b = Asset::new("b".into(), "text/plain");
        assert_ne!(a.etag, b.etag);
        assert!(a.etag.starts_with('"') && !a.etag.starts_with("W/"));
    }
}
