//! Property tests over everything that parses untrusted input: the WebSocket JSON
//! protocol, the SSE encoder, subject templates and path patterns, percent-decoding,
//! WebSocket upgrade headers, and the config loader. Each must answer arbitrary input
//! with a value or an error, never a panic; the SSE encoder must also never let a
//! payload add a field.

use std::collections::HashMap;

use fanfare::config::Config;
use fanfare::routing::path::{PathPattern, percent_decode, query_param};
use fanfare::routing::subject::Template;
use fanfare::wire::{protocol, sse, ws};
use proptest::prelude::*;

/// Strings made of the pieces JSON and YAML are built from, so the generators reach
/// past the first syntax error.
fn structured(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(pieces).prop_map(str::to_string),
            "[a-z0-9._*>${}:/ -]{0,6}",
            any::<String>(),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

const JSON_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\"type\"",
    "\"subscribe\"",
    "\"unsubscribe\"",
    "\"publish\"",
    "\"subject\"",
    "\"data\"",
    "\"event\"",
    "\"encoding\"",
    "\"base64\"",
    "\"ref\"",
    "\"since\"",
    "null",
    "true",
    "1e999",
    "-0",
    "\"\\u0000\"",
    "\"\\n\"",
];

const YAML_PIECES: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "routes:",
    "path: /a/{x}",
    "subjects: [",
    "]",
    "auth:",
    "{ mode: none }",
    "{ mode: jwt, algorithms: [HS256] }",
    "mode: upstream",
    "ws:",
    "history:",
    "jetstream: S",
    "nats:",
    "url: nats://x",
    "listen: ",
    "0.0.0.0:0",
    "${",
    "}",
    "${X:-1s}",
    "grace: ",
    "0s",
    "99999999999h",
    "limits:",
    "trusted_proxies: [",
    "10.0.0.0/99",
    "allowed_origins: [\"*\"]",
    "&a",
    "*a",
    "!!binary",
    "'",
    "\"",
    "#",
    "transports: [sse, ws, poll]",
    "queue: { messages: 0 }",
    "admin:",
    "publish_token: x",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_ws_protocol_parser_never_panics(text in structured(JSON_PIECES)) {
        match protocol::parse(&text) {
            Ok((_, reference)) => {
                let _ = protocol::ack(reference.as_ref(), Some("s"));
            }
            Err(e) => {
                let reply = protocol::error(e.reference.as_ref(), e.code, &e.reason);
                let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
                prop_assert_eq!(&v["type"], "error");
            }
        }
    }

    #[test]
    fn a_payload_never_adds_an_sse_field(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        id in "[a-z0-9-]{1,12}",
        event in "[a-z.]{1,12}",
    ) {
        let out = sse::encode_event(&id, &event, &payload);
        prop_assert!(out.ends_with(b"\n\n"));
        let body = &out[..out.len() - 1];
        let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let (id_line, event_line) = (format!("id: {id}"), format!("event: {event}"));
        prop_assert_eq!(lines[0], id_line.as_bytes());
        prop_assert_eq!(lines[1], event_line.as_bytes());
        for line in &lines[2..] {
            prop_assert!(line.starts_with(b"data: "), "a line that is not data: {:?}", line);
            prop_assert!(!line.contains(&b'\r'), "a CR inside a data line");
        }
        // Exactly one event: no blank line before the end.
        prop_assert!(!body[..body.len() - 1].windows(2).any(|w| w == b"\n\n"));
    }

    #[test]
    fn subject_templates_never_panic_and_never_widen(
        text in structured(&["{", "}", ".", "*", ">", "{id}", "{claims.sub}", "orders", " "]),
        value in any::<String>(),
    ) {
        let params = vec!["id".to_string()];
        if let Ok(t) = Template::parse_with(&text, &params, true) {
            let mut values = HashMap::new();
            values.insert("id".to_string(), value.clone());
            values.insert("claims.sub".to_string(), value);
            if let Ok(subject) = t.render(&values) {
                // A rendered subject has no more wildcards than the template itself.
                let wild = |s: &str| s.split('.').filter(|t| *t == "*" || *t == ">").count();
                prop_assert!(wild(&subject) <= wild(&text), "{} from {}", subject, text);
            }
        }
    }

    #[test]
    fn path_patterns_and_query_strings_never_panic(
        pattern in structured(&["/", "{", "}", "{a}", "{b}", "x"]),
        path in any::<String>(),
        query in any::<String>(),
    ) {
        if let Ok(p) = PathPattern::parse(&pattern) {
            let _ = p.match_path(&path);
        }
        let _ = percent_decode(&path);
        let _ = query_param(Some(&query), "cursor");
    }

    #[test]
    fn upgrade_headers_never_panic(key in any::<String>(), version in any::<String>()) {
        let mut req = http::Request::get("/ws")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade");
        if let Ok(k) = http::HeaderValue::from_str(&key) {
            req = req.header("sec-websocket-key", k);
        }
        if let Ok(v) = http::HeaderValue::from_str(&version) {
            req = req.header("sec-websocket-version", v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let _ = ws::check_handshake(&parts);
    }

    #[test]
    fn the_config_loader_never_panics(text in structured(YAML_PIECES)) {
        if let Err((position, reason)) = Config::parse(&text) {
            prop_assert!(!reason.is_empty());
            if let Some((line, col)) = position {
                prop_assert!(line >= 1 && col >= 1);
            }
        }
    }
}
