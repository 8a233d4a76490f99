//! What real clients broke (issue 14): unknown transports served as SSE, SSE that
//! common client stacks buffer, a late public port while NATS is down, and metrics a new
//! user misread.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

const ROUTE: &str = "routes:\n  - path: /feed\n    transports: [sse, poll]\n    subjects: [feed]\n    auth: { mode: none }\n";

// === 5: unknown transports ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transport_is_refused_naming_the_offered_ones() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ROUTE)).await;
    for t in ["polling", "bogus", "ws", ""] {
        let r = http_client()
            .get(format!("http://{}/feed?transport={t}", ff.edge_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "transport={t}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "transport_not_allowed", "transport={t}");
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains("sse, poll"), "transport={t}: {reason}");
        assert!(
            !reason.contains("Ws") && !reason.contains("Sse"),
            "config words, not Rust names: {reason}"
        );
    }
    // The named transports still work.
    let r = http_client()
        .get(format!("http://{}/feed?transport=sse", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
}

// === 7: metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_connections_and_client_publishes_have_clear_counters() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /ws\n    transports: [ws]\n    subjects: [feed]\n    allow_publish: [\"chat.*\"]\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    let (_, text) = admin_get(ff.admin_addr, "/metrics").await;
    assert!(
        !text.contains("fanfare_connections_total"),
        "renamed: it counts ended connections"
    );
    // Created at zero, like every other counter.
    for series in [
        "fanfare_connections_closed_total{outcome=\"client_closed\",transport=\"sse\"}",
        "fanfare_client_publish_total{result=\"ok\"}",
        "fanfare_client_publish_total{result=\"forbidden\"}",
    ] {
        assert_eq!(metric(ff.admin_addr, series).await, Some(0.0), "{series}");
    }
    let mut ws = ws_connect(ff.edge_addr, "/ws").await;
    ws_send(
        &mut ws,
        serde_json::json!({"type":"publish","subject":"chat.a","data":1}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    ws_send(
        &mut ws,
        serde_json::json!({"type":"publish","subject":"other","data":1}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "forbidden");
    assert_eq!(
        metric(ff.admin_addr, "fanfare_client_publish_total{result=\"ok\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_client_publish_total{result=\"forbidden\"}"
        )
        .await,
        Some(1.0)
    );
    drop(ws);
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"client_closed\",transport=\"ws\"}",
        1.0,
    )
    .await;
}

// === 3: SSE framing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_over_http11_is_chunked_one_chunk_per_write() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ROUTE)).await;
    let (mut s, head, mut body) = raw_get(ff.edge_addr, "/feed", None).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    publish(ff.admin_addr, "feed", Some("note"), "hello").await;
    // retry:, then the event, each a well-formed chunk.
    let deadline = Instant::now() + DEADLINE;
    let mut chunks = Vec::new();
    while !chunks.iter().any(|c: &String| c.contains("data: hello")) {
        assert!(Instant::now() < deadline, "no event chunk: {chunks:?}");
        while let Some((chunk, rest)) = take_chunk(&body) {
            chunks.push(chunk);
            body = rest;
        }
        let mut b = [0u8; 1024];
        if !chunks.iter().any(|c| c.contains("data: hello")) {
            let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed");
            body.extend_from_slice(&b[..n]);
        }
    }
    assert!(chunks[0].starts_with("retry: "), "{chunks:?}");
    let event = chunks.iter().find(|c| c.contains("data: hello")).unwrap();
    assert!(
        event.starts_with("id: ") && event.ends_with("\n\n"),
        "one whole event per chunk: {event:?}"
    );
    s.shutdown().await.unwrap();
}

/// Splits one HTTP/1.1 chunk off `buf`: (payload, rest), or `None` when incomplete.
fn take_chunk(buf: &[u8]) -> Option<(String, Vec<u8>)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let size =
        usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?.trim(), 16).ok()?;
    let start = line_end + 2;
    if buf.len() < start + size + 2 {
        return None;
    }
    assert_eq!(
        &buf[start + size..start + size + 2],
        b"\r\n",
        "chunk framing"
    );
    Some((
        String::from_utf8_lossy(&buf[start..start + size]).into_owned(),
        buf[start + size + 2..].to_vec(),
    ))
}

/// A Python SSE client the way its README shows it (requests streaming +
/// sseclient-py); it prints each event's data. The venv is target/test-venv
/// (scripts/test makes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sse_clients_receive_each_event_at_once() {
    let python = std::env::var("FANFARE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("FANFARE_TEST_PYTHON is not set: run scripts/test, which makes target/test-venv with requests and sseclient-py")
    });
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ROUTE)).await;
    let script = r#"
import sys, time, requests, sseclient
r = requests.get(sys.argv[1], stream=True, headers={"Accept": "text/event-stream"})
print("open", flush=True)
for i, event in enumerate(sseclient.SSEClient(r).events()):
    print("got", event.data, time.time(), flush=True)
    if i == 2:
        break
"#;
    let mut child = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(format!("http://{}/feed", ff.edge_addr))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(DEADLINE, out.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), "open");
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    for n in 0..3 {
        publish(ff.admin_addr, "feed", None, format!("event-{n}")).await;
        let sent = Instant::now();
        line.clear();
        tokio::time::timeout(DEADLINE, out.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        let took = sent.elapsed();
        assert!(line.starts_with(&format!("got event-{n} ")), "{line}");
        assert!(
            took < Duration::from_millis(100),
            "event {n} arrived after {took:?}"
        );
    }
}

// === 4: the public port opens at once ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_opens_at_once_while_nats_is_down() {
    let closed = closed_port();
    let dead_nats = format!("nats://127.0.0.1:{}", closed.port);
    let yaml = base_yaml("http://127.0.0.1:1", Some(&dead_nats))
        + "routes:\n  - path: /o\n    subjects: [orders.1]\n    auth: { mode: none }\n    history: { jetstream: ORDERS }\n";
    let started = Instant::now();
    let ff = start_fanfare(&yaml).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "run() returned after {:?}",
        started.elapsed()
    );
    let mut s = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 502"),
        "the app is down, fanfare is up"
    );
    let (status, body) = admin_get(ff.admin_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("streams_unchecked") || body.contains("nats_disconnected"),
        "{body}"
    );
}

// === 6: config errors a new user hit ===

fn parse_err(yaml: &str) -> (Option<(u64, u64)>, String) {
    fanfare::config::Config::parse(yaml).expect_err(yaml)
}

#[test]
fn a_log_filter_that_would_silence_everything_is_refused_at_its_line() {
    for level in ["warning", "verbose", "nope=[", "fanfare=loud"] {
        let yaml = format!("# a comment\nlog:\n  format: plain\n  level: \"{level}\"\n");
        let (pos, reason) = parse_err(&yaml);
        assert_eq!(pos.map(|p| p.0), Some(4), "{level}: {reason}");
        assert!(reason.contains("log.level"), "{level}: {reason}");
    }
    for ok in [
        "warn",
        "debug",
        "fanfare=debug,warn",
        "info,pingora=error",
        "off",
    ] {
        fanfare::config::Config::parse(&format!("log: {{ level: \"{ok}\" }}\n")).unwrap();
    }
}

#[test]
fn an_error_after_parsing_points_at_the_value_not_a_comment() {
    let yaml = "\
# route for /orders/{order_id}/events: subjects orders.{order_id}
routes:
  # another comment naming /orders/{order_id}/events
  - path: /orders/{order_id}/events
    auth: { mode: none }
    transports: [sse]
    subjects:
      - \"orders.all\"
      - \"orders.{orderid}\"
";
    let (pos, reason) = parse_err(yaml);
    assert_eq!(pos.map(|p| p.0), Some(9), "{reason}");
    assert!(reason.contains("orderid"), "{reason}");
}

#[test]
fn overlapping_routes_are_refused_naming_both_lines() {
    let yaml = "\
routes:
  - path: /a/{x}
    subjects: [\"a.{x}\"]
    auth: { mode: none }
  - path: /b
    subjects: [b]
    auth: { mode: none }
  - path: /a/{y}
    subjects: [\"a.{y}\"]
    auth: { mode: none }
";
    let (pos, reason) = parse_err(yaml);
    assert_eq!(pos.map(|p| p.0), Some(8), "{reason}");
    assert!(
        reason.contains("line 2") && reason.contains("/a/{x}") && reason.contains("/a/{y}"),
        "{reason}"
    );
    // A literal and a parameter in the same place overlap too; different lengths do not.
    let (_, reason) = parse_err(
        "routes:\n  - { path: /a/new, subjects: [n], auth: { mode: none } }\n  - { path: \"/a/{id}\", subjects: [\"a.{id}\"], auth: { mode: none } }\n",
    );
    assert!(reason.contains("/a/new"), "{reason}");
    fanfare::config::Config::parse("routes:\n  - { path: /a, subjects: [n], auth: { mode: none } }\n  - { path: \"/a/{id}\", subjects: [\"a.{id}\"], auth: { mode: none } }\n").unwrap();
}

#[test]
fn check_config_help_lists_only_its_own_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args(["check-config", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("FILE") || help.contains("<FILE>"), "{help}");
    assert!(!help.contains("--config"), "{help}");
}

#[test]
fn an_echo_route_needs_no_subjects_as_the_readme_says() {
    fanfare::config::Config::parse(
        "routes:\n  - { path: /echo, transports: [ws], ws: { echo: true }, auth: { mode: none } }\n",
    )
    .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `subjects` |"))
        .expect("the subjects row of the route reference");
    assert!(
        row.contains("ws.echo"),
        "the README states the echo exception: {row}"
    );
}

// === 2: an EventSource opened during a NATS outage ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_opened_during_a_nats_outage_is_admitted_and_misses_nothing() {
    use async_nats::jetstream;
    let mut nats = NatsServer::start_jetstream().await;
    create_stream(&nats.url(), "LIVE", &["live.>"]).await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url()))
        + "routes:\n  - path: /live/{id}\n    transports: [sse, ws, poll]\n    subjects: [\"live.{id}\"]\n    auth: { mode: none }\n    history: { jetstream: LIVE }\n";
    let ff = start_fanfare(&yaml).await;
    stop_until_unready(&mut nats, ff.admin_addr).await;
    // Opened during the outage: admitted at once, with retry:, never a 503.
    let opened = Instant::now();
    let r = http_client()
        .get(format!("http://{}/live/1", ff.edge_addr))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an EventSource must not get a non-200");
    let mut reader = SseReader::new(r);
    match reader.next().await {
        Some(Frame::Retry(_)) => {}
        other => panic!("retry: first, got {other:?}"),
    }
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "admitted after {:?}",
        opened.elapsed()
    );
    // WebSocket and long-poll are refused at once rather than held for 10 s.
    let started = Instant::now();
    let poll = http_client()
        .get(format!("http://{}/live/1?transport=poll", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // NATS returns; the app publishes (some of it possibly before fanfare has
    // reconnected): the client gets every message, once.
    nats.restart().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for n in 0..20u64 {
        js.publish("live.1", serde_json::json!({ "n": n }).to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let (_, event, data) = reader.next_event().await.expect("the stream stays open");
        assert_eq!(event, "message", "{data}");
        got.push(
            serde_json::from_str::<Value>(&data).unwrap()["n"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// The same on a route without JetStream: nothing from the outage can be replayed,
/// but once fanfare is back on NATS the client gets what is published from then on.
/// (Its queue was held for a replay that a route without a stream never splices, so it
/// got nothing, ever: seen as 21 of 10,000 bench clients that connected in the first
/// milliseconds, before fanfare's NATS connection was up, losing every message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_opened_during_a_nats_outage_gets_what_comes_after_on_a_route_without_jetstream()
 {
    let mut nats = NatsServer::start().await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url()))
        + "routes:\n  - path: /plain/{id}\n    transports: [sse]\n    subjects: [\"plain.{id}\"]\n    auth: { mode: none }\n    history: { ring: 0 }\n";
    let ff = start_fanfare(&yaml).await;
    stop_until_unready(&mut nats, ff.admin_addr).await;
    let mut reader = sse_connect(&http_client(), &format!("http://{}/plain/1", ff.edge_addr)).await;
    match reader.next().await {
        Some(Frame::Retry(_)) => {}
        other => panic!("retry: first, got {other:?}"),
    }
    nats.restart().await;
    // Published until one arrives: the first ones may come before fanfare is back on
    // NATS (a route without a stream cannot replay those).
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "no message reached the client after the outage"
        );
        let sent = http_client()
            .post(format!("http://{}/publish/plain.1", ff.admin_addr))
            .body("\"probe\"")
            .send()
            .await
            .is_ok_and(|r| r.status() == 202);
        if !sent {
            // fanfare answers 503 until it is back on NATS: poll again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
            continue;
        }
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), reader.next_event()).await
        {
            break event;
        }
    };
    assert_eq!(first.2, "\"probe\"");
    for n in 0..5 {
        publish(ff.admin_addr, "plain.1", None, format!("{n}")).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let (_, _, data) = reader.next_event().await.expect("the stream stays open");
        if data != "\"probe\"" {
            got.push(data);
        }
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
}
