//! Unit tests of config parsing and validation.

use super::*;

fn parse_err(text: &str) -> (Option<(u64, u64)>, String) {
    Config::parse(text).expect_err("should be invalid")
}

#[test]
fn empty_file_is_all_defaults() {
    let c = Config::parse("# nothing\n").unwrap();
    assert_eq!(c.listen.0.port(), 8080);
    assert_eq!(c.admin.listen.0.port(), 9090);
    assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3000");
    assert!(c.nats.is_none());
    assert_eq!(c.shutdown.grace.0, Duration::from_secs(25));
    assert_eq!(c.log.format, LogFormat::Plain);
}

#[test]
fn full_file_parses() {
    let c = Config::parse(
        "listen: 127.0.0.1:8081\nupstream: http://app:3001\nadmin: { listen: 127.0.0.1:9091 }\n\
         nats: { url: nats://127.0.0.1:4222 }\nshutdown: { grace: 500ms }\n\
         log: { format: json, level: debug }\nroutes: []\n",
    )
    .unwrap();
    assert_eq!(c.listen.0, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(c.upstream.host, "app");
    assert_eq!(c.upstream.port, 3001);
    assert_eq!(c.nats.unwrap().url, "nats://127.0.0.1:4222");
    assert_eq!(c.shutdown.grace.0, Duration::from_millis(500));
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn unknown_key_has_line_and_column() {
    let (pos, reason) = parse_err("listen: 127.0.0.1:8081\nupstreem: http://x:1\n");
    assert_eq!(pos.map(|p| p.0), Some(2), "{reason}");
    assert!(reason.contains("upstreem"), "{reason}");
}

#[test]
fn nested_unknown_key_has_its_line() {
    let (pos, reason) = parse_err("admin:\n  listen: 127.0.0.1:9\n  lisen: 1\n");
    assert_eq!(pos.map(|p| p.0), Some(3), "{reason}");
}

#[test]
fn bad_address_and_duration_are_errors_with_lines() {
    let (pos, reason) = parse_err("listen: nowhere\n");
    assert_eq!(pos.map(|p| p.0), Some(1));
    assert!(reason.contains("invalid address"), "{reason}");
    let (pos, reason) = parse_err("listen: 127.0.0.1:1\nshutdown:\n  grace: soon\n");
    assert_eq!(pos.map(|p| p.0), Some(3));
    assert!(reason.contains("invalid duration"), "{reason}");
}

#[test]
fn durations() {
    assert_eq!(Dur::parse("25s").unwrap().0, Duration::from_secs(25));
    assert_eq!(Dur::parse("150ms").unwrap().0, Duration::from_millis(150));
    assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
    assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
    for bad in ["", "s", "10", "10x", "-1s", "1.5s", "99999999999999999999h"] {
        assert!(Dur::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn upstream_urls() {
    assert_eq!(
        Upstream::parse("http://127.0.0.1:3000/").unwrap().port,
        3000
    );
    assert_eq!(Upstream::parse("http://app").unwrap().port, 80);
    assert_eq!(Upstream::parse("http://[::1]:81").unwrap().host, "::1");
    for bad in [
        "127.0.0.1:3000",
        "http://",
        "http://a:b",
        "http://a/x",
        "ftp://a:1",
    ] {
        assert!(Upstream::parse(bad).is_err(), "{bad}");
    }
    assert!(
        Upstream::parse("https://a:1")
            .unwrap_err()
            .contains("https")
    );
}

#[test]
fn interpolation() {
    let env = |k: &str| match k {
        "A" => Some("x".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    assert_eq!(interpolate("p-${A}-q", env).unwrap(), "p-x-q");
    assert_eq!(interpolate("${B:-dflt}", env).unwrap(), "dflt");
    assert_eq!(interpolate("${EMPTY:-d}", env).unwrap(), "d");
    assert_eq!(interpolate("$${A} $5", env).unwrap(), "${A} $5");
    let e = interpolate("${MISSING}", env).unwrap_err();
    assert!(e.contains("MISSING"), "{e}");
    assert!(interpolate("${A", env).is_err());
    assert!(interpolate("${a-b}", env).is_err());
}

#[test]
fn route_without_auth_is_refused() {
    let (pos, reason) =
        parse_err("routes:\n  - path: /orders/{id}/events\n    subjects: [\"orders.{id}\"]\n");
    assert!(reason.contains("auth"), "{reason}");
    assert!(pos.is_some());
}

#[test]
fn route_with_unknown_param_is_refused() {
    let (pos, reason) = parse_err(
        "routes:\n  - path: /orders/{id}/events\n    subjects: [\"orders.{oid}\"]\n    auth: { mode: none }\n",
    );
    assert!(reason.contains("oid"), "{reason}");
    assert_eq!(
        pos.map(|p| p.0),
        Some(3),
        "the subject's own line: {reason}"
    );
}

#[test]
fn cidr_ranges() {
    let c = |s: &str| Cidr::parse(s).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(c("10.0.0.0/8").contains(ip("10.200.1.2")));
    assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
    assert!(c("10.1.2.3").contains(ip("10.1.2.3")));
    assert!(!c("10.1.2.3").contains(ip("10.1.2.4")));
    assert!(c("0.0.0.0/0").contains(ip("192.0.2.1")));
    assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
    assert!(c("fd00::/8").contains(ip("fd12::1")));
    assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    for bad in ["10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x"] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn ws_compression_is_off_by_default_and_needs_the_ws_transport() {
    let route = |extra: &str| {
        format!(
            "routes:\n  - path: /r\n    transports: [ws, sse]\n    subjects: [r]\n    auth: {{ mode: none }}\n{extra}"
        )
    };
    let c = Config::parse(&route("")).unwrap();
    assert_eq!(c.routes[0].ws.compression, Compression::Off);
    let c = Config::parse(&route("    ws: { compression: on }\n")).unwrap();
    assert_eq!(c.routes[0].ws.compression, Compression::On);
    let (_, reason) = parse_err(&route("    ws: { compression: maybe }\n"));
    assert!(reason.contains("maybe"), "{reason}");
    // YAML 1.1 tools (Helm's toYaml among them) turn `on` into `true`.
    let c = Config::parse(&route("    ws: { compression: true }\n")).unwrap();
    assert_eq!(c.routes[0].ws.compression, Compression::On);
    let c = Config::parse(&route("    ws: { compression: false }\n")).unwrap();
    assert_eq!(c.routes[0].ws.compression, Compression::Off);
    let sse_only = "routes:\n  - path: /r\n    transports: [sse]\n    subjects: [r]\n    auth: { mode: none }\n    ws: { compression: on }\n";
    let (_, reason) = parse_err(sse_only);
    assert!(
        reason.contains("ws.compression needs the ws transport"),
        "{reason}"
    );
}
