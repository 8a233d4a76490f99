//! Resume without loss: JetStream cursors on a real `nats-server -js`, the in-memory
//! ring, the reset signal, and long-polling (also across two instances).

mod support;

use std::net::SocketAddr;

use async_nats::jetstream::{self, stream};
use serde_json::{Value, json};

use support::*;

fn js_routes(stream: &str) -> String {
    format!(
        "
routes:
  - path: /orders/{{id}}/events
    transports: [sse, ws, poll]
    subjects: [\"orders.{{id}}\"]
    allow_subscribe: [\"orders.*\"]
    auth: {{ mode: none }}
    history: {{ jetstream: {stream}, linger: 0s }}
    poll: {{ timeout: 300ms, max_messages: 100 }}
"
    )
}

async fn create_stream(nats: &NatsServer, name: &str, max_messages: i64) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec!["orders.>".to_string()],
        max_messages,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

async fn js_publish(js: &jetstream::Context, subject: &str, body: String) {
    js.publish(subject.to_string(), body.into())
        .await
        .unwrap()
        .await
        .expect("JetStream stored the message");
}

fn n_of(data: &str) -> u64 {
    serde_json::from_str::<Value>(data).unwrap()["n"]
        .as_u64()
        .unwrap()
}

async fn sse(edge: SocketAddr, path: &str, last_id: Option<&str>) -> SseReader<reqwest::Response> {
    let mut req = http_client().get(format!("http://{edge}{path}"));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
    SseReader::new(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_replays_exactly_what_was_missed() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("ORDERS")))
            .await;
    let edge = ff.edge_addr;
    let mut a = sse(edge, "/orders/1/events", None).await;
    js_publish(&js, "orders.1", json!({"n": 0}).to_string()).await;
    let (id, _, data) = a.next_event().await.unwrap();
    assert_eq!(n_of(&data), 0);
    let cursor = id.unwrap();
    assert!(
        cursor.parse::<u64>().is_ok(),
        "a JetStream cursor is the stream sequence: {cursor}"
    );
    drop(a);
    for n in 1..=100 {
        js_publish(&js, "orders.1", json!({"n": n}).to_string()).await;
    }
    js_publish(&js, "orders.2", json!({"n": 999}).to_string()).await;
    let mut b = sse(edge, "/orders/1/events", Some(&cursor)).await;
    for n in 1..=100 {
        let (_, _, data) = b.next_event().await.unwrap();
        assert_eq!(n_of(&data), n, "replayed in order");
    }
    js_publish(&js, "orders.1", json!({"n": 101}).to_string()).await;
    assert_eq!(
        n_of(&b.next_event().await.unwrap().2),
        101,
        "then live, nothing else between"
    );
    assert!(
        metric(ff.admin_addr, "fanfare_resumes_total{result=\"replayed\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        metric(ff.admin_addr, "fanfare_replayed_messages_total")
            .await
            .unwrap()
            >= 100.0
    );
}

/// Reads events until `n == last`, reconnecting (with the last cursor) once after
/// `drop_after` events; returns every `n` seen, in order.
async fn read_across_reconnect(edge: SocketAddr, drop_after: usize, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut reader = sse(edge, "/orders/7/events", None).await;
    loop {
        let (id, event, data) = reader.next_event().await.expect("stream open");
        assert_ne!(event, "fanfare.reset");
        let n = n_of(&data);
        seen.push(n);
        cursor = id.or(cursor);
        if n == last {
            return seen;
        }
        if seen.len() == drop_after {
            drop(reader);
            reader = sse(edge, "/orders/7/events", cursor.as_deref()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_publisher_across_a_reconnect_no_gap_no_duplicate() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("ORDERS")))
            .await;
    let edge = ff.edge_addr;
    const LAST: u64 = 400;
    let reader = tokio::spawn(read_across_reconnect(edge, 50, LAST));
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    for n in 0..=LAST {
        js_publish(&js, "orders.7", json!({"n": n}).to_string()).await;
    }
    let seen = reader.await.unwrap();
    let expected: Vec<u64> = (0..=LAST).collect();
    assert_eq!(
        seen, expected,
        "no gap and no duplicate across the reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_a_fanfare_restart() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("ORDERS");
    let first = start_fanfare(&yaml).await;
    let mut a = sse(first.edge_addr, "/orders/3/events", None).await;
    js_publish(&js, "orders.3", json!({"n": 0}).to_string()).await;
    let cursor = a.next_event().await.unwrap().0.unwrap();
    drop(a);
    first.shutdown().await;
    for n in 1..=20 {
        js_publish(&js, "orders.3", json!({"n": n}).to_string()).await;
    }
    let second = start_fanfare(&yaml).await;
    let mut b = sse(second.edge_addr, "/orders/3/events", Some(&cursor)).await;
    for n in 1..=20 {
        assert_eq!(n_of(&b.next_event().await.unwrap().2), n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subscribe_since_replays() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("ORDERS")))
            .await;
    let mut ws = ws_connect(ff.edge_addr, "/orders/1/events").await;
    js_publish(&js, "orders.9", json!({"n": 0}).to_string()).await;
    let ack = js
        .publish("orders.9", json!({"n": 1}).to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    for n in 2..=30 {
        js_publish(&js, "orders.9", json!({"n": n}).to_string()).await;
    }
    // Resume from just after n=1.
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"orders.9","since": ack.sequence.to_string(),"ref":1}),
    )
    .await;
    let mut got = Vec::new();
    let mut acked = false;
    while got.len() < 29 {
        let v = ws_json(&mut ws).await;
        match v["type"].as_str() {
            Some("ack") => acked = true,
            Some("message") => got.push(v["data"]["n"].as_u64().unwrap()),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    assert!(acked);
    assert_eq!(got, (2..=30).collect::<Vec<u64>>());
    js_publish(&js, "orders.9", json!({"n": 31}).to_string()).await;
    assert_eq!(ws_json(&mut ws).await["data"]["n"], 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_stream_gets_a_reset() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "SMALL", 10).await;
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("SMALL")))
            .await;
    for n in 0..50 {
        js_publish(&js, "orders.4", json!({"n": n}).to_string()).await;
    }
    let mut r = sse(ff.edge_addr, "/orders/4/events", Some("1")).await;
    let (_, event, data) = r.next_event().await.unwrap();
    assert_eq!(event, "fanfare.reset");
    assert!(data.contains("cursor_too_old"), "{data}");
    // Live messages follow the reset.
    js_publish(&js, "orders.4", json!({"n": 50}).to_string()).await;
    assert_eq!(n_of(&r.next_event().await.unwrap().2), 50);
    assert!(
        metric(ff.admin_addr, "fanfare_resumes_total{result=\"reset\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_ring_resume_and_foreign_epoch_reset() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /m/{id}\n    transports: [sse, poll]\n    subjects: [\"m.{id}\"]\n    auth: { mode: none }\n    history: { ring: 100, linger: 30s }\n";
    let ff = start_fanfare(&yaml).await;
    let edge = ff.edge_addr;
    let mut a = sse(edge, "/m/1", None).await;
    publish(ff.admin_addr, "m.1", None, json!({"n": 0}).to_string()).await;
    let cursor = a.next_event().await.unwrap().0.unwrap();
    drop(a);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 0.0).await;
    for n in 1..=10 {
        publish(ff.admin_addr, "m.1", None, json!({"n": n}).to_string()).await;
    }
    let mut b = sse(edge, "/m/1", Some(&cursor)).await;
    for n in 1..=10 {
        assert_eq!(n_of(&b.next_event().await.unwrap().2), n);
    }
    // A cursor of another process (a restart) cannot be honoured: reset.
    let mut c = sse(edge, "/m/1", Some("zzzz-5")).await;
    let (_, event, data) = c.next_event().await.unwrap();
    assert_eq!(event, "fanfare.reset");
    assert!(data.contains("cursor_unknown"));
}

async fn poll(edge: SocketAddr, cursor: Option<&str>) -> Value {
    let mut url = format!("http://{edge}/orders/5/events?transport=poll");
    if let Some(c) = cursor {
        url.push_str(&format!("&cursor={c}"));
    }
    let r = http_client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_waiting_messages_and_timeout() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + &js_routes("ORDERS")))
            .await;
    // Nothing waiting: held, then an empty list with a usable cursor.
    let empty = poll(ff.edge_addr, None).await;
    assert_eq!(empty["messages"], json!([]));
    let cursor = empty["cursor"].as_str().unwrap().to_string();
    // Waiting messages come back at once, in order.
    for n in 0..3 {
        js_publish(&js, "orders.5", json!({"n": n}).to_string()).await;
    }
    let got = poll(ff.edge_addr, Some(&cursor)).await;
    let ns: Vec<u64> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2]);
    assert_eq!(got["messages"][0]["subject"], "orders.5");
    // Held until a message arrives.
    let next = got["cursor"].as_str().unwrap().to_string();
    let edge = ff.edge_addr;
    let held = tokio::spawn(async move { poll(edge, Some(&next)).await });
    wait_metric(
        ff.admin_addr,
        "fanfare_connections{transport=\"poll\"}",
        1.0,
    )
    .await;
    js_publish(&js, "orders.5", json!({"n": 3}).to_string()).await;
    let v = held.await.unwrap();
    assert_eq!(v["messages"][0]["data"]["n"], 3);
}

/// Polls until `last` is seen, alternating between `edges`; returns every n in order.
async fn poll_until(edges: &[SocketAddr], start: String, last: u64) -> (Vec<u64>, usize) {
    let mut cursor = Some(start);
    let mut seen = Vec::new();
    let mut polls = 0;
    loop {
        let edge = edges[polls % edges.len()];
        let v = poll(edge, cursor.as_deref()).await;
        polls += 1;
        assert!(v.get("reset").is_none(), "no reset: {v}");
        for m in v["messages"].as_array().unwrap() {
            seen.push(m["data"]["n"].as_u64().unwrap());
        }
        cursor = Some(v["cursor"].as_str().unwrap().to_string());
        if seen.last() == Some(&last) {
            return (seen, polls);
        }
        assert!(polls < 10_000, "too many polls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_cursor_continuity_over_many_polls_and_two_instances() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "ORDERS", -1).await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url()))
        + &js_routes("ORDERS").replace("max_messages: 100", "max_messages: 3");
    let a = start_fanfare(&yaml).await;
    let b = start_fanfare(&yaml).await;
    const LAST: u64 = 150;
    let edges = [a.edge_addr, b.edge_addr];
    // A client's first poll (nothing published yet) gives it its starting cursor.
    let first = poll(edges[0], None).await;
    assert_eq!(first["messages"], json!([]));
    let start = first["cursor"].as_str().unwrap().to_string();
    let poller = tokio::spawn(async move { poll_until(&edges, start, LAST).await });
    for n in 0..=LAST {
        js_publish(&js, "orders.5", json!({"n": n}).to_string()).await;
    }
    let (seen, polls) = poller.await.unwrap();
    assert_eq!(
        seen,
        (0..=LAST).collect::<Vec<u64>>(),
        "no loss, no duplicate across instances"
    );
    assert!(polls >= 50, "{polls} polls (3 messages at most per poll)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_does_not_fit_is_a_reset_not_a_flood() {
    let nats = NatsServer::start_jetstream().await;
    let js = create_stream(&nats, "BIG", -1).await;
    // The queue holds 1 MiB (the default); /big also caps replays at 100 KB.
    let routes = "
routes:
  - path: /big/{id}
    subjects: [\"orders.{id}\"]
    auth: { mode: none }
    history: { jetstream: BIG, linger: 0s, max_replay_bytes: 100000 }
  - path: /fits/{id}
    subjects: [\"orders.{id}\"]
    auth: { mode: none }
    history: { jetstream: BIG, linger: 0s, max_replay_bytes: 10000000 }
";
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + routes)).await;
    let big = "x".repeat(30_000);
    for n in 0..40 {
        js_publish(&js, "orders.1", json!({"n": n, "pad": big}).to_string()).await;
    }
    for n in 0..5 {
        js_publish(&js, "orders.2", json!({"n": n, "pad": big}).to_string()).await;
    }
    for n in 0..25 {
        js_publish(&js, "orders.3", json!({"n": n, "pad": big}).to_string()).await;
    }
    // 40 x 30 KB: over /big's 100 KB and over the client's 1 MiB queue.
    for path in ["/big/1", "/fits/1"] {
        let mut s = sse(ff.edge_addr, path, Some("0")).await;
        let (_, event, data) = s.next_event().await.unwrap();
        assert_eq!(event, "fanfare.reset", "{path}");
        assert!(data.contains("too_much_to_replay"), "{path}: {data}");
    }
    // 5 x 30 KB fits both: replayed in order.
    let mut s = sse(ff.edge_addr, "/fits/2", Some("0")).await;
    for n in 0..5 {
        let (_, event, data) = s.next_event().await.unwrap();
        assert_eq!(event, "message");
        assert_eq!(n_of(&data), n);
    }
    // 25 x 30 KB fits the queue but not one 256 KiB fetch: replayed across batches.
    let mut s = sse(ff.edge_addr, "/fits/3", Some("0")).await;
    for n in 0..25 {
        let (_, event, data) = s.next_event().await.unwrap();
        assert_eq!(event, "message");
        assert_eq!(n_of(&data), n);
    }
    // Over the route's byte cap but within the queue: still a reset.
    let mut s = sse(ff.edge_addr, "/big/2", Some("0")).await;
    let (_, event, _) = s.next_event().await.unwrap();
    assert_eq!(event, "fanfare.reset");
}

// === Resume on a route with two subjects (issue 14, item 1) ===

const TWO: &str = "
routes:
  - path: /pair/{id}
    transports: [sse, ws, poll]
    subjects: [\"orders.{id}.a\", \"orders.{id}.b\"]
    auth: { mode: none }
    history: { jetstream: PAIRS, linger: 0s }
    queue: { messages: 10000 }
    poll: { timeout: 300ms, max_messages: 50 }
";

/// Two publishers, one per subject, at full speed into the stream: JetStream
/// publishes whose acks are awaited only at the end (a plain NATS publish may be
/// dropped by a busy JetStream, which would read as a loss here).
async fn publish_pair(nats: &NatsServer, id: u32, per_subject: u64) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for side in ["a", "b"] {
            let js = jetstream::new(client.clone());
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::with_capacity(per_subject as usize);
                for n in 0..per_subject {
                    let body = json!({"side": side, "n": n}).to_string();
                    let subject = format!("orders.{id}.{side}");
                    acks.push(js.publish(subject, body.into()).await.unwrap());
                }
                for ack in acks {
                    ack.await.expect("JetStream stored the message");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
}

/// Checks that every (side, n) arrived exactly once.
fn exactly_once(seen: &[(String, u64)], per_subject: u64, what: &str) {
    let mut counts = std::collections::HashMap::new();
    for k in seen {
        *counts.entry(k.clone()).or_insert(0u32) += 1;
    }
    for side in ["a", "b"] {
        for n in 0..per_subject {
            let c = counts.get(&(side.to_string(), n)).copied().unwrap_or(0);
            assert_eq!(c, 1, "{what}: {side} {n} arrived {c} times");
        }
    }
}

fn side_n(data: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(data).unwrap();
    (
        v["side"].as_str().unwrap().to_string(),
        v["n"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subjects_resume_exactly_over_sse_ws_and_poll() {
    let nats = NatsServer::start_jetstream().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    jetstream::new(client)
        .create_stream(stream::Config {
            name: "PAIRS".to_string(),
            subjects: vec!["orders.>".to_string()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + TWO)).await;
    let per_subject = 300;
    let mut id = 0;
    // SSE, reconnecting with Last-Event-ID every ~100 events.
    for _ in 0..20 {
        id += 1;
        let path = format!("/pair/{id}");
        let mut reader = sse(ff.edge_addr, &path, None).await;
        let publisher = publish_pair(&nats, id, per_subject).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        while seen.len() < 2 * per_subject as usize {
            let (eid, event, data) = reader.next_event().await.expect("stream open");
            assert_ne!(event, "fanfare.reset", "{data}");
            seen.push(side_n(&data));
            cursor = eid.or(cursor);
            if seen.len() % 100 == 0 {
                drop(reader);
                reader = sse(ff.edge_addr, &path, cursor.as_deref()).await;
            }
        }
        publisher.await.unwrap();
        exactly_once(&seen, per_subject, &format!("sse run {id}"));
    }
    // WebSocket, reconnecting with ?last_event_id= every ~100 events.
    for _ in 0..5 {
        id += 1;
        let path = format!("/pair/{id}");
        let mut ws = ws_connect(ff.edge_addr, &path).await;
        let publisher = publish_pair(&nats, id, per_subject).await;
        let mut seen = Vec::new();
        while seen.len() < 2 * per_subject as usize {
            let m = ws_json(&mut ws).await;
            assert_eq!(m["type"], "message", "{m}");
            seen.push(side_n(&m["data"].to_string()));
            let cursor = m["id"].as_str().unwrap();
            if seen.len() % 100 == 0 {
                drop(ws);
                ws = ws_connect(ff.edge_addr, &format!("{path}?last_event_id={cursor}")).await;
            }
        }
        publisher.await.unwrap();
        exactly_once(&seen, per_subject, &format!("ws run {id}"));
    }
    // Long-polling, each poll with the last cursor.
    for _ in 0..5 {
        id += 1;
        let base = format!("http://{}/pair/{id}?transport=poll", ff.edge_addr);
        let first: Value = http_client()
            .get(&base)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut cursor = first["cursor"].as_str().unwrap().to_string();
        let publisher = publish_pair(&nats, id, per_subject).await;
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + DEADLINE;
        while seen.len() < 2 * per_subject as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "poll run {id}: {} of {} after {DEADLINE:?}",
                seen.len(),
                2 * per_subject
            );
            let v: Value = http_client()
                .get(format!("{base}&cursor={cursor}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(v.get("reset").is_none(), "{v}");
            for m in v["messages"].as_array().unwrap() {
                seen.push(side_n(&m["data"].to_string()));
            }
            cursor = v["cursor"].as_str().unwrap().to_string();
        }
        publisher.await.unwrap();
        exactly_once(&seen, per_subject, &format!("poll run {id}"));
    }
}
