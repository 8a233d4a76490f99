//! fanfare-bench: a load generator for realtime fan-out servers (fanfare and its peers).
//!
//! It opens N subscriber connections (SSE, fanfare's WebSocket protocol, or NATS over
//! WebSocket), waits until all are subscribed, publishes M messages carrying a sequence
//! number and a send timestamp (to NATS directly, or to an HTTP publish URL), and reports
//! deliveries per second, end-to-end latency, lost and duplicated deliveries, the
//! server's RSS per held connection and its CPU time per delivery.
//!
//! Loopback only, bounded in count and time; stops by itself.

mod client;
mod proc;
mod rpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use client::{Framing, Stats, receive, subscribe};
use proc::{clk_tck, cpu_ticks, now_ns, raise_nofile, rss_kib, sum_over};

/// Realtime fan-out load generator.
///
/// Scenarios:
///   fanout    one subject, N subscribers, M messages: deliveries/s, latency, loss.
///   subjects  N subjects with one subscriber each ({i} in --url and --subject), M
///             messages per subject.
///   idle      N idle connections: RSS per held connection (needs --server-pid).
///   storm     connect N as fast as possible: connections per second.
///   rpc       what fanfare adds to an rpc: serves the app itself on --app-listen
///             (answering after --app-delay-ms), then M rpcs at --rate (default
///             1000/s) over N connections, first straight to the app, then as
///             WebSocket `rpc` requests through fanfare (whose app.message points
///             there); reports both latencies, the difference, and CPU per rpc.
///
/// Examples (fanfare on :8080/:9090, NATS on :4222):
///   fanfare-bench --scenario fanout --transport ws --url ws://127.0.0.1:8080/feed \
///       --subject feed --connections 10000 --messages 100 --publish nats://127.0.0.1:4222
///   fanfare-bench --scenario idle --transport sse --url http://127.0.0.1:8080/feed \
///       --connections 19000 --server-pid $(pidof fanfare)
#[derive(Parser, Debug, Clone)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// How subscribers connect.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Subscriber URL (`ws://` or `http://`); `{i}` is the subject index.
    #[arg(long)]
    url: String,
    /// NATS subject published to (and subscribed, for nats-ws); `{i}` is the index.
    #[arg(long, default_value = "bench")]
    subject: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Messages published (per subject for `subjects`).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Publish rate in messages per second; 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Publish the next message only once every subscriber got the previous one (one
    /// message at a time, no batching possible: the per-message cost).
    #[arg(long)]
    lockstep: bool,
    /// Where to publish: `nats://host:port`, or an HTTP URL where `{subject}` is
    /// replaced (e.g. `http://127.0.0.1:9090/publish/{subject}`).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    publish: String,
    /// Body format for HTTP publishing.
    #[arg(long, value_enum, default_value = "raw")]
    publish_format: PublishFormat,
    /// Payload padding in bytes (on top of the sequence and timestamp).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// What the padding is: `x` repeated, or JSON records (orders with varying ids,
    /// amounts and times) that compress the way an app's JSON does.
    #[arg(long, value_enum, default_value = "pad")]
    body: Body,
    /// WebSocket subscribers offer permessage-deflate (`client_max_window_bits`, as
    /// browsers do) and inflate what arrives compressed; the report gives the bytes
    /// on the wire per delivery either way.
    #[arg(long)]
    deflate: bool,
    /// The server's PID: its RSS and CPU time are read from /proc. A comma-separated
    /// list sums the processes (a server made of several, e.g. pushpin's condure,
    /// proxy, handler and zurl).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// A label for the report (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// rpc: where the bench's own app listens (fanfare's app.message points here).
    #[arg(long, default_value = "127.0.0.1:3999")]
    app_listen: std::net::SocketAddr,
    /// rpc: how long the app takes to answer, in milliseconds.
    #[arg(long, default_value_t = 1)]
    app_delay_ms: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Fanout,
    Subjects,
    Idle,
    Storm,
    Rpc,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Transport {
    /// Server-Sent Events (fanfare, nchan, pushpin).
    Sse,
    /// A WebSocket whose text frames carry the payload (fanfare, nchan).
    Ws,
    /// NATS protocol over WebSocket (nats-server's websocket listener).
    NatsWs,
    /// Socket.IO v5 over an Engine.IO WebSocket (fanfare's `socketio` routes, the Node
    /// socket.io server): the URL is the WebSocket endpoint
    /// (`ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket`).
    Socketio,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum PublishFormat {
    /// The payload as the body (fanfare /publish, nchan).
    Raw,
    /// Pushpin's publish API JSON (http-stream content).
    Pushpin,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Body {
    /// `"pad":"xxx…"`.
    Pad,
    /// `"orders":[{…}, …]`.
    Json,
}

fn payload(seq: u64, pad: usize, body: Body) -> String {
    match body {
        Body::Pad => format!(
            "{{\"seq\":{seq},\"ts\":{},\"pad\":\"{}\"}}",
            now_ns(),
            "x".repeat(pad)
        ),
        Body::Json => {
            let mut orders = String::new();
            let mut i = seq.wrapping_mul(7919);
            while orders.len() < pad {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = i >> 33;
                orders.push_str(&format!(
                    "{}{{\"id\":{},\"status\":\"{}\",\"customer\":\"c-{}\",\"total\":{}.{:02},\"updated\":\"2026-11-{:02}T{:02}:{:02}:{:02}Z\"}}",
                    if orders.is_empty() { "" } else { "," },
                    100_000 + r % 900_000,
                    ["placed", "paid", "packed", "shipped", "delivered"][(r % 5) as usize],
                    r % 10_000,
                    r % 500,
                    r % 100,
                    1 + r % 28,
                    r % 24,
                    r % 60,
                    (r >> 7) % 60
                ));
            }
            format!(
                "{{\"seq\":{seq},\"ts\":{},\"orders\":[{orders}]}}",
                now_ns()
            )
        }
    }
}

enum Publisher {
    Nats(async_nats::Client),
    Http(reqwest::Client, String, PublishFormat),
}

impl Publisher {
    async fn new(args: &Args) -> Publisher {
        if args.publish.starts_with("nats://") {
            let c = async_nats::connect(args.publish.as_str())
                .await
                .expect("NATS for publishing");
            Publisher::Nats(c)
        } else {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Publisher::Http(
                reqwest::Client::new(),
                args.publish.clone(),
                args.publish_format,
            )
        }
    }

    async fn send(&self, subject: &str, body: String) {
        match self {
            Publisher::Nats(c) => {
                let _ = c.publish(subject.to_string(), body.into()).await;
            }
            Publisher::Http(c, url, format) => {
                let url = url.replace("{subject}", subject);
                let body = match format {
                    PublishFormat::Raw => body,
                    PublishFormat::Pushpin => serde_json::json!({"items":[{"channel":subject,"formats":{"http-stream":{"content":format!("data: {body}\n\n")}}}]}).to_string(),
                };
                let _ = c.post(url).body(body).send().await;
            }
        }
    }

    async fn flush(&self) {
        if let Publisher::Nats(c) = self {
            let _ = c.flush().await;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    raise_nofile();
    if args.scenario == Scenario::Rpc {
        let listener = tokio::net::TcpListener::bind(args.app_listen)
            .await
            .expect("bind --app-listen");
        let app = listener.local_addr().expect("the app's address");
        tokio::spawn(rpc::serve_app(
            listener,
            Duration::from_millis(args.app_delay_ms),
        ));
        let report = rpc::run(&args, app).await;
        if args.json {
            println!("{report}");
        } else {
            let ms = |k: &str, p: &str| report[k][p].as_f64().unwrap_or(0.0);
            println!(
                "rpc {} ({} connections, {}/s)",
                args.label, report["connections"], report["rate"]
            );
            println!(
                "  app direct: {} rpcs, p50 {:.2} ms, p99 {:.2} ms",
                report["app_direct_ms"]["count"],
                ms("app_direct_ms", "p50"),
                ms("app_direct_ms", "p99")
            );
            println!(
                "  through fanfare: {} / {} rpcs, p50 {:.2} ms, p99 {:.2} ms",
                report["through_fanfare_ms"]["count"],
                report["expected"],
                ms("through_fanfare_ms", "p50"),
                ms("through_fanfare_ms", "p99")
            );
            println!(
                "  fanfare adds p50 {:.2} ms, p99 {:.2} ms",
                ms("added_ms", "p50"),
                ms("added_ms", "p99")
            );
            if let Some(c) = report["server_cpu_us_per_rpc"].as_f64() {
                println!("  fanfare CPU {c:.1} µs per rpc");
            }
        }
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let subjects = if args.scenario == Scenario::Subjects {
        args.connections
    } else {
        1
    };
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        wire_bytes: AtomicU64::new(0),
        message_bytes: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        origin: Instant::now(),
    });
    let rss_before = sum_over(&args.server_pid, rss_kib);

    // Connect everyone, `concurrency` at a time.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let a = args.clone();
        let subject_index = if subjects > 1 { i } else { 0 };
        opening.push(tokio::spawn(async move {
            let r = subscribe(&a, i, subject_index).await;
            drop(permit);
            r
        }));
    }
    let mut streams = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    for h in opening {
        match h.await.expect("connect task") {
            Ok(s) => streams.push(Some(s)),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
                streams.push(None);
            }
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = args.connections - failed;
    // Let the server settle before reading its RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = sum_over(&args.server_pid, rss_kib);
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a.saturating_sub(b)) as f64 * 1024.0 / connected as f64)
        }
        _ => None,
    };

    let mut report = serde_json::json!({
        "label": args.label,
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "connections": args.connections,
        "connected": connected,
        "connect_failures": failed,
        "connect_seconds": connect_s,
        "connections_per_second": connected as f64 / connect_s.max(1e-9),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_bytes": rss_per_conn,
    });
    if let Some(e) = &first_error {
        report["first_error"] = serde_json::json!(e);
    }

    if matches!(args.scenario, Scenario::Fanout | Scenario::Subjects) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut receivers = Vec::new();
        for (stream, rest, dechunk) in streams.into_iter().flatten() {
            receivers.push(tokio::spawn(receive(
                stream,
                rest,
                dechunk,
                args.messages,
                stats.clone(),
                Framing {
                    nats_ws: args.transport == Transport::NatsWs,
                    deflate: args.deflate
                        && matches!(args.transport, Transport::Ws | Transport::NatsWs),
                },
                stop_rx.clone(),
            )));
        }
        let publisher = Publisher::new(&args).await;
        let cpu0 = sum_over(&args.server_pid, cpu_ticks);
        let pub_start = Instant::now();
        let gap = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
        let mut next = tokio::time::Instant::now();
        for seq in 0..args.messages as u64 {
            for s in 0..subjects {
                let subject = args.subject.replace("{i}", &s.to_string());
                publisher
                    .send(&subject, payload(seq, args.payload, args.body))
                    .await;
            }
            if args.lockstep {
                publisher.flush().await;
                // Each round delivers once per connection (fanout: N on one subject;
                // subjects: one on each).
                let want = connected as u64 * (seq + 1);
                while stats.received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            if let Some(g) = gap {
                next += g;
                tokio::time::sleep_until(next).await;
            }
        }
        publisher.flush().await;
        let publish_s = pub_start.elapsed().as_secs_f64();
        // Every subscriber gets every message of its subject.
        let expected = (connected * args.messages) as u64;
        let mut last_progress = (0u64, Instant::now());
        loop {
            let got = stats.received.load(Ordering::Relaxed);
            if got >= expected || Instant::now() > deadline {
                break;
            }
            if got != last_progress.0 {
                last_progress = (got, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu1 = sum_over(&args.server_pid, cpu_ticks);
        // What each connection holds once the messages went through (buffers grown,
        // encodings cached), against the RSS before any connection.
        let rss_end = sum_over(&args.server_pid, rss_kib);
        stop_tx.send_replace(true);
        let received = stats.received.load(Ordering::Relaxed);
        let (mut lost, mut dup) = (0u64, 0u64);
        let mut lat = Vec::with_capacity(received as usize);
        for r in receivers {
            let seen = r.await.unwrap_or_default();
            for seq in 0..args.messages as u64 {
                match seen.counts.get(&seq) {
                    None => lost += 1,
                    Some(n) if *n > 1 => dup += u64::from(*n - 1),
                    _ => {}
                }
            }
            lat.extend(seen.latencies_us);
        }
        let last = Duration::from_nanos(stats.last_recv_ns.load(Ordering::Relaxed));
        let span = (stats.origin + last)
            .saturating_duration_since(pub_start)
            .as_secs_f64();
        lat.sort_unstable();
        let cpu_per_delivery_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) if received > 0 => {
                Some((b - a) as f64 / clk_tck() * 1e6 / received as f64)
            }
            _ => None,
        };
        report["messages"] = serde_json::json!(args.messages * subjects);
        report["publish_seconds"] = serde_json::json!(publish_s);
        report["expected_deliveries"] = serde_json::json!(expected);
        report["deliveries"] = serde_json::json!(received);
        report["deliveries_per_second"] = serde_json::json!(received as f64 / span.max(1e-9));
        report["lost"] = serde_json::json!(lost);
        report["duplicated"] = serde_json::json!(dup);
        report["latency_ms"] = serde_json::json!({
            "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().map_or(0.0, |m| *m as f64 / 1000.0)
        });
        report["server_cpu_us_per_delivery"] = serde_json::json!(cpu_per_delivery_us);
        if received > 0 {
            let per = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / received as f64;
            report["wire_bytes_per_delivery"] = serde_json::json!(per(&stats.wire_bytes));
            report["message_bytes_per_delivery"] = serde_json::json!(per(&stats.message_bytes));
        }
        report["deflate"] = serde_json::json!(args.deflate);
        report["lockstep"] = serde_json::json!(args.lockstep);
        if let (Some(b), Some(e)) = (rss_before, rss_end)
            && connected > 0
        {
            report["rss_per_connection_after_messages_bytes"] =
                serde_json::json!((e.saturating_sub(b) * 1024) as f64 / connected as f64);
        }
    }

    if args.json {
        println!("{report}");
    } else {
        print_human(&report);
    }
}

fn print_human(r: &serde_json::Value) {
    let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
    println!(
        "{} {} over {} ({} connections)",
        text("scenario"),
        text("label"),
        text("transport"),
        r["connections"]
    );
    println!(
        "  connected {} / {} in {:.2}s ({:.0}/s), failures {}",
        r["connected"],
        r["connections"],
        r["connect_seconds"].as_f64().unwrap_or(0.0),
        r["connections_per_second"].as_f64().unwrap_or(0.0),
        r["connect_failures"]
    );
    if let Some(e) = r.get("first_error") {
        println!("  first connect error: {e}");
    }
    if let Some(per) = r["rss_per_connection_bytes"].as_f64() {
        println!(
            "  server RSS {} KiB → {} KiB: {:.0} bytes ({:.2} KiB) per connection",
            r["rss_before_kib"],
            r["rss_after_kib"],
            per,
            per / 1024.0
        );
    }
    if r.get("deliveries").is_some() {
        println!(
            "  deliveries {} / {} expected, {:.0}/s; lost {}, duplicated {}",
            r["deliveries"],
            r["expected_deliveries"],
            r["deliveries_per_second"].as_f64().unwrap_or(0.0),
            r["lost"],
            r["duplicated"]
        );
        println!(
            "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["max"].as_f64().unwrap_or(0.0)
        );
        if let Some(c) = r["server_cpu_us_per_delivery"].as_f64() {
            println!("  server CPU {c:.2} µs per delivery");
        }
        if let (Some(w), Some(m)) = (
            r["wire_bytes_per_delivery"].as_f64(),
            r["message_bytes_per_delivery"].as_f64(),
        ) {
            println!(
                "  {w:.0} bytes on the wire per delivery for {m:.0} bytes of messages ({:.0}%)",
                100.0 * w / m.max(1.0)
            );
        }
    }
}
