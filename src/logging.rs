//! Logging set-up, with two guards so that credentials never reach the log:
//!
//! 1. Dependencies (pingora, hyper, h2, async-nats, …) log at most at `info`, whatever
//!    `log.level` or `RUST_LOG` say: their `debug` output dumps whole request headers.
//! 2. Every line passes through [`redact`] before it is written: JWT-shaped strings,
//!    `Bearer …`, `access_token=…`, and the values of `Authorization`, `Cookie` and
//!    `Set-Cookie` headers are replaced by `[redacted]`, wherever they appear.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt, reload};

use crate::config::{LogConfig, LogFormat};

const REDACTED: &str = "[redacted]";

/// Changes the filter of the installed subscriber (a reload's `log.level`).
type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Sets `log.level` on the running process (a configuration reload). `Ok(false)` when
/// nothing changed: no subscriber installed (tests), or `RUST_LOG` is set and wins.
pub fn set_level(level: &str) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let Some(handle) = FILTER.get() else {
        return Ok(false);
    };
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Installs the global subscriber for the binary.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let cap =
        filter_fn(|meta| *meta.level() <= Level::INFO || meta.target().starts_with("fanfare"));
    let ansi = io::stderr().is_terminal();
    let layer = match config.format {
        LogFormat::Json => fmt::layer().json().with_writer(RedactingStderr).boxed(),
        LogFormat::Plain => fmt::layer()
            .with_ansi(ansi)
            .with_writer(RedactingStderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(cap))
        .init();
    // Dependencies that use the `log` crate (tungstenite, pingora) are capped at info
    // above; telling `log` so lets their per-message `trace!` calls return at once
    // instead of crossing into tracing (measured at ~3% of CPU under fan-out).
    log::set_max_level(log::LevelFilter::Info);
}

/// A stderr writer that redacts each formatted line.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineRedactor;
    fn make_writer(&'a self) -> LineRedactor {
        LineRedactor(Vec::new())
    }
}

/// Buffers one event's output and writes it redacted when dropped.
struct LineRedactor(Vec<u8>);

impl Write for LineRedactor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineRedactor {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let _ = io::stderr().lock().write_all(redact(&text).as_bytes());
    }
}

/// Replaces credentials in a log line.
pub fn redact(line: &str) -> String {
    let mut out = redact_jwts(line);
    for marker in ["Bearer ", "bearer ", "access_token="] {
        out = redact_after(&out, marker);
    }
    for header in ["authorization", "cookie"] {
        out = redact_header_values(&out, header);
    }
    out
}

fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `eyJ….….…` (a JWS in compact form) → `[redacted]`.
fn redact_jwts(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("eyJ") {
        out.push_str(&rest[..i]);
        let cand = &rest[i..];
        let end = cand
            .char_indices()
            .find(|(_, c)| !(is_b64url(*c) || *c == '.'))
            .map_or(cand.len(), |(j, _)| j);
        let token = &cand[..end];
        if token.matches('.').count() >= 2 {
            out.push_str(REDACTED);
        } else {
            out.push_str(token);
        }
        rest = &cand[end..];
    }
    out.push_str(rest);
    out
}

/// Redacts the value that follows `marker` up to a delimiter.
fn redact_after(s: &str, marker: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        let value = &rest[i + marker.len()..];
        let end = value
            .find(|c: char| {
                c == '&'
                    || c == '"'
                    || c == '\''
                    || c == '\\'
                    || c.is_whitespace()
                    || c == ','
                    || c == ';'
            })
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str(REDACTED);
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// `authorization": "…"` / `Cookie: …` (any case, Debug or raw form) → value redacted.
fn redact_header_values(s: &str, name: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(rel) = lower[pos..].find(name) {
        let start = pos + rel + name.len();
        out.push_str(&s[pos..start]);
        // Skip the separator: `": "`, `: `, `=`.
        let sep_len = s[start..]
            .char_indices()
            .take_while(|(_, c)| matches!(c, '"' | ':' | ' ' | '=' | '\\'))
            .last()
            .map_or(0, |(j, c)| j + c.len_utf8());
        if sep_len == 0 || !s[start..start + sep_len].contains(':') {
            pos = start;
            continue;
        }
        out.push_str(&s[start..start + sep_len]);
        let value_start = start + sep_len;
        let value = &s[value_start..];
        let end = value.find(['"', '\r', '\n', '\\']).unwrap_or(value.len());
        if end > 0 {
            out.push_str(REDACTED);
        }
        pos = value_start + end;
    }
    out.push_str(&s[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_jwts_anywhere() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let r = redact(&format!("token {jwt} done"));
        assert_eq!(r, "token [redacted] done");
        assert_eq!(redact("eyJonly one part"), "eyJonly one part");
    }

    #[test]
    fn redacts_bearer_query_and_headers() {
        assert_eq!(
            redact("Authorization: Bearer abc.def"),
            "Authorization: [redacted]"
        );
        assert_eq!(
            redact("GET /x?access_token=s3cr3t&y=1"),
            "GET /x?access_token=[redacted]&y=1"
        );
        assert_eq!(
            redact(
                r#"headers: {"authorization": "Basic dXNlcjpwYXNz", "cookie": "session=abc", "host": "h"}"#
            ),
            r#"headers: {"authorization": "[redacted]", "cookie": "[redacted]", "host": "h"}"#
        );
        assert_eq!(
            redact("buf: GET / HTTP/1.1\\r\\nCookie: session=abc\\r\\nHost: x"),
            "buf: GET / HTTP/1.1\\r\\nCookie: [redacted]\\r\\nHost: x"
        );
        assert_eq!(redact("set-cookie: id=1; Path=/"), "set-cookie: [redacted]");
        assert_eq!(redact("nothing secret here"), "nothing secret here");
    }
}
