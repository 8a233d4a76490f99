//! The realtime core: routes, the hub on a real nats-server (and the embedded broker),
//! and Server-Sent Events through real HTTP clients.

mod support;

use std::net::SocketAddr;

use support::*;

const ORDERS: &str = "
routes:
  - path: /orders/{order_id}/events
    subjects: [\"orders.{order_id}\"]
    auth: { mode: none }
    history: { linger: 0s }
  - path: /both/{id}
    subjects: [\"orders.{id}\", \"users.{id}\"]
    auth: { mode: none }
    history: { linger: 0s }
";

fn url(ff: &fanfare::Handle, path: &str) -> String {
    format!("http://{}{path}", ff.edge_addr)
}

async fn nats_client(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url())
        .await
        .expect("test client connects")
}

async fn wait_nats_subs(nats: &NatsServer, n: u64) {
    wait_for(
        &format!("nats-server to hold {n} subscriptions"),
        DEADLINE,
        || async move { (nats.subscription_count().await == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_receive_every_message_in_order() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + ORDERS)).await;
    let client = http_client();
    let mut readers = Vec::new();
    for _ in 0..500 {
        readers.push(sse_connect(&client, &url(&ff, "/orders/42/events")).await);
    }
    wait_nats_subs(&nats, 1).await;
    assert_eq!(
        metric(ff.admin_addr, "fanfare_subscriptions").await,
        Some(1.0)
    );
    wait_metric(
        ff.admin_addr,
        "fanfare_connections{transport=\"sse\"}",
        500.0,
    )
    .await;

    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(100);
                while got.len() < 100 {
                    let (_, _, data) = r.next_event().await.expect("stream stays open");
                    got.push(data);
                }
                got
            })
        })
        .collect();
    let app = nats_client(&nats).await;
    for i in 0..100 {
        app.publish("orders.42", format!("{{\"n\":{i}}}").into())
            .await
            .unwrap();
    }
    app.flush().await.unwrap();
    let expected: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), expected);
    }
    assert_eq!(
        metric(ff.admin_addr, "fanfare_messages_received_total").await,
        Some(100.0)
    );
    // Counted just after each write: the last counts may trail the clients.
    wait_metric(
        ff.admin_addr,
        "fanfare_deliveries_total{transport=\"sse\"}",
        50_000.0,
    )
    .await;
    // Both series exist from the start; the writes were observed in one or both.
    let mut lag = 0.0;
    for path in ["fanout", "queue"] {
        let series = format!("fanfare_delivery_lag_seconds_count{{path=\"{path}\"}}");
        lag += metric(ff.admin_addr, &series).await.unwrap();
    }
    assert!(lag > 0.0, "delivery lag is observed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_are_isolated_and_a_route_may_have_two() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + ORDERS)).await;
    let client = http_client();
    let mut one = sse_connect(&client, &url(&ff, "/orders/1/events")).await;
    let mut two = sse_connect(&client, &url(&ff, "/orders/2/events")).await;
    let mut both = sse_connect(&client, &url(&ff, "/both/1")).await;
    // orders.1 and orders.2 for the one-subject route; /both/1's two subjects are one
    // topic of their own (one order, so its cursor is exact across them): two more.
    wait_nats_subs(&nats, 4).await;
    let app = nats_client(&nats).await;
    for (subject, data) in [
        ("orders.1", "a"),
        ("orders.2", "b"),
        ("users.1", "c"),
        ("orders.1", "end"),
        ("orders.2", "end"),
    ] {
        app.publish(subject, data.into()).await.unwrap();
    }
    app.flush().await.unwrap();
    let data = |e: Option<(Option<String>, String, String)>| e.unwrap().2;
    assert_eq!(data(one.next_event().await), "a");
    assert_eq!(
        data(one.next_event().await),
        "end",
        "orders.2 leaked into orders.1"
    );
    assert_eq!(data(two.next_event().await), "b");
    assert_eq!(
        data(two.next_event().await),
        "end",
        "orders.1 leaked into orders.2"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(data(both.next_event().await));
    }
    got.sort();
    assert_eq!(got, ["a", "c", "end"]);
}

async fn raw_status(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let (mut s, head, mut rest) = raw_get(addr, path, None).await;
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or(0);
    while rest.len() < len {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&b[..n]);
    }
    (status, String::from_utf8_lossy(&rest).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_injection_is_refused() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + ORDERS)).await;
    for bad in [
        "a.b", "*", ">", "%3E", "%2A", "a%20b", "a%2Eb", "", "%0A", "%ff",
    ] {
        let (status, body) = raw_status(ff.edge_addr, &format!("/orders/{bad}/events")).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        if bad == ">" {
            // Not a legal URI character: pingora's parser refuses the request itself.
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{bad:?}: {e}: {body:?}"));
        assert!(v["error"].is_string() && v["reason"].is_string(), "{body}");
    }
    assert_eq!(nats.subscription_count().await, 0);
    assert_eq!(
        metric(ff.admin_addr, "fanfare_subscriptions").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_client_leaving_removes_the_nats_subscription() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + ORDERS)).await;
    let client = http_client();
    let a = sse_connect(&client, &url(&ff, "/orders/9/events")).await;
    let b = sse_connect(&client, &url(&ff, "/orders/9/events")).await;
    let (raw, _, _) = raw_get(ff.edge_addr, "/orders/9/events", None).await;
    wait_nats_subs(&nats, 1).await;
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 3.0).await;
    drop(a);
    drop(b);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    assert_eq!(
        nats.subscription_count().await,
        1,
        "one client still holds the subject"
    );
    drop(raw); // an abrupt TCP close
    wait_nats_subs(&nats, 0).await;
    wait_metric(ff.admin_addr, "fanfare_subscriptions", 0.0).await;
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 0.0).await;
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"client_closed\",transport=\"sse\"}",
        3.0,
    )
    .await;
}

fn slow_route(policy: &str) -> String {
    format!(
        "
routes:
  - path: /feed
    subjects: [\"feed\"]
    auth: {{ mode: none }}
    slow_consumer: {policy}
    queue: {{ messages: 16, bytes: 1048576 }}
"
    )
}

const SLOW_MESSAGES: usize = 600;

fn seq_of(data: &str) -> usize {
    data[..6].parse().unwrap()
}

/// A good reader and a stalled one on `/feed`; publishes SLOW_MESSAGES 16 KiB messages
/// (more than the kernel buffers and the queue hold). Returns the stalled reader, after
/// checking the good one got everything in order.
async fn run_slow_consumer(ff: &fanfare::Handle) -> SseReader<Chunked> {
    let (stalled, head, rest) = raw_get(ff.edge_addr, "/feed", Some(4096)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut good = sse_connect(&http_client(), &url(ff, "/feed")).await;
    let reader = tokio::spawn(async move {
        for i in 0..SLOW_MESSAGES {
            let (_, _, data) = good
                .next_event()
                .await
                .expect("the good client keeps its stream");
            assert_eq!(
                seq_of(&data),
                i,
                "the good client sees every message in order"
            );
        }
    });
    publish_numbered(ff.admin_addr, "feed", SLOW_MESSAGES).await;
    reader.await.unwrap();
    SseReader::new(Chunked::new(stalled, rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drop_oldest() {
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &slow_route("drop_oldest"))).await;
    let mut stalled = run_slow_consumer(&ff).await;
    let dropped = metric(
        ff.admin_addr,
        "fanfare_dropped_total{reason=\"slow_consumer\"}",
    )
    .await
    .unwrap();
    assert!(
        dropped > 0.0,
        "messages were dropped for the stalled client"
    );
    // It now reads: in order, a reset where the gap is, and the newest message last.
    let mut last = None;
    let mut seen = 0;
    let mut reset = false;
    while last != Some(SLOW_MESSAGES - 1) {
        match stalled
            .next()
            .await
            .expect("drop_oldest keeps the stream open")
        {
            Frame::Event { event, data, .. } if event == "fanfare.reset" => {
                assert!(data.contains("slow_consumer"), "{data}");
                reset = true;
            }
            Frame::Event { data, .. } => {
                let n = seq_of(&data);
                assert!(last.is_none_or(|l| n > l), "order: {n} after {last:?}");
                last = Some(n);
                seen += 1;
            }
            _ => {}
        }
    }
    assert!(reset, "the gap was signalled with fanfare.reset");
    assert_eq!(
        seen as f64 + dropped,
        SLOW_MESSAGES as f64,
        "every message was delivered or counted as dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnect() {
    let ff =
        start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &slow_route("disconnect"))).await;
    let mut stalled = run_slow_consumer(&ff).await;
    let series = "fanfare_connections_closed_total{outcome=\"slow_consumer\",transport=\"sse\"}";
    wait_metric(ff.admin_addr, series, 1.0).await;
    // The stalled client reads what was in flight, then the stream ends early.
    let mut last = None;
    while let Some(frame) = stalled.next().await {
        if let Frame::Event { data, event, .. } = frame {
            assert_ne!(event, "fanfare.reset");
            last = Some(seq_of(&data));
        }
    }
    assert!(
        last.is_none_or(|l| l < SLOW_MESSAGES - 1),
        "the stream ended before the last message"
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_dropped_total{reason=\"slow_consumer_disconnect\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_over_h2c() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ORDERS)).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(url(&ff, "/orders/5/events")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut sse = SseReader::new(r);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    publish(ff.admin_addr, "orders.5", Some("shipped"), "over h2").await;
    let (id, event, data) = sse.next_event().await.unwrap();
    assert_eq!((event.as_str(), data.as_str()), ("shipped", "over h2"));
    assert!(id.unwrap().starts_with(ff.hub.epoch()));
    drop(sse);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 0.0).await;
    wait_metric(ff.admin_addr, "fanfare_subscriptions", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_retry_arrive() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /hb\n    subjects: [hb]\n    auth: { mode: none }\n    heartbeat: 100ms\n    retry: 3s\n    retry_jitter: 0\n";
    let ff = start_fanfare(&yaml).await;
    let mut sse = sse_connect(&http_client(), &url(&ff, "/hb")).await;
    assert_eq!(sse.next().await, Some(Frame::Retry(3000)));
    assert_eq!(sse.next().await, Some(Frame::Comment("heartbeat".into())));
    assert_eq!(sse.next().await, Some(Frame::Comment("heartbeat".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_payload_round_trips() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ORDERS)).await;
    let mut sse = sse_connect(&http_client(), &url(&ff, "/orders/3/events")).await;
    publish(
        ff.admin_addr,
        "orders.3",
        None,
        "line 1\nid: injected\r\nline 3\rline 4",
    )
    .await;
    let (id, event, data) = sse.next_event().await.unwrap();
    assert_eq!(event, "message");
    assert_eq!(data, "line 1\nid: injected\nline 3\nline 4");
    assert!(!id.unwrap().contains("injected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_origin_check() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /c\n    subjects: [c]\n    auth: { mode: none }\n    allowed_origins: [\"https://app.example\"]\n";
    let ff = start_fanfare(&yaml).await;
    let client = http_client();
    let pre = client
        .request(reqwest::Method::OPTIONS, url(&ff, "/c"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        pre.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Last-Event-ID")
    );

    let ok = client
        .get(url(&ff, "/c"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    drop(ok);

    let evil = client
        .get(url(&ff, "/c"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let v: serde_json::Value = evil.json().await.unwrap();
    assert_eq!(v["error"], "origin_not_allowed");

    let same = client
        .get(url(&ff, "/c"))
        .header("origin", format!("http://{}", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200, "same-origin requests need no allowlist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_end_to_end() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + ORDERS)).await;
    let mut sse = sse_connect(&http_client(), &url(&ff, "/orders/7/events")).await;
    publish(ff.admin_addr, "orders.7", Some("created"), r#"{"id":7}"#).await;
    let (id, event, data) = sse.next_event().await.unwrap();
    assert_eq!((event.as_str(), data.as_str()), ("created", r#"{"id":7}"#));
    assert_eq!(id.unwrap(), format!("{}-1", ff.hub.epoch()));
    // Other paths still reach the app.
    let r = http_client().get(url(&ff, "/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello from the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_refusals_are_json() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + ORDERS)).await;
    let client = http_client();
    let r = client
        .post(url(&ff, "/orders/1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = client
        .get(url(&ff, "/orders/1/events?transport=poll"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "transport_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_endpoint_validates() {
    let ff = start_fanfare(&base_yaml("http://127.0.0.1:1", None)).await;
    let client = http_client();
    let post = |path: &str| client.post(format!("http://{}{path}", ff.admin_addr));
    for bad in [
        "/publish/a.*",
        "/publish/a..b",
        "/publish/a%20b",
        "/publish/",
    ] {
        let r = post(bad).body("x").send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = post("/publish/big")
        .body(vec![0u8; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client
        .get(format!("http://{}/publish/x", ff.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_while_nats_is_down_is_503() {
    let mut nats = NatsServer::start().await;
    let ff = start_fanfare(&base_yaml("http://127.0.0.1:1", Some(&nats.url()))).await;
    let admin = ff.admin_addr;
    wait_metric(admin, "fanfare_nats_connected", 1.0).await;
    nats.stop();
    wait_metric(admin, "fanfare_nats_connected", 0.0).await;
    let r = http_client()
        .post(format!("http://{admin}/publish/x"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "nats_unavailable");
}

// --- the fan-out writing to SSE streams itself (issue 18) ---

const LONE_SSE: &str = "
routes:
  - path: /lone/{room}
    transports: [sse]
    subjects: [\"lone.{room}\"]
    auth: { mode: none }
    history: { ring: 0 }
    heartbeat: 20ms
";

/// Messages one at a time to two SSE clients (reqwest's chunked decoding and a strict
/// one of our own): after the first, the fan-out writes each as a chunk of its own,
/// while the session writes heartbeats every 20 ms between them. Every chunk whole,
/// every event in order, every delivery counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_message_on_its_own_is_written_by_the_fan_out_between_heartbeats() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + LONE_SSE)).await;
    let mut a = sse_connect(&http_client(), &url(&ff, "/lone/x")).await;
    let (stream, head, rest) = raw_get(ff.edge_addr, "/lone/x", None).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut b = SseReader::new(Chunked::new(stream, rest));
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 2.0).await;
    // As for WebSocket: the first message goes through each client's task, then the
    // fan-out writes unless a task still holds its stream (a heartbeat under way).
    let mut sent = 0u64;
    let mut heartbeats = 0;
    loop {
        publish(ff.admin_addr, "lone.x", None, format!("{sent}")).await;
        let (_, _, data) = a.next_event().await.expect("a's stream");
        assert_eq!(data, sent.to_string());
        loop {
            match b.next().await.expect("b's stream") {
                Frame::Event { data, .. } => {
                    assert_eq!(data, sent.to_string());
                    break;
                }
                Frame::Comment(c) => {
                    assert_eq!(c, "heartbeat");
                    heartbeats += 1;
                }
                Frame::Retry(_) => {}
            }
        }
        sent += 1;
        let direct = metric(ff.admin_addr, "fanfare_fanout_writes_total")
            .await
            .unwrap();
        if direct >= 30.0 && heartbeats >= 3 {
            break;
        }
        assert!(
            sent < 300,
            "only {direct} of {} deliveries written by the fan-out, {heartbeats} heartbeats",
            2 * sent
        );
    }
    assert_eq!(
        metric(ff.admin_addr, "fanfare_deliveries_total{transport=\"sse\"}").await,
        Some(2.0 * sent as f64)
    );
}

/// A client that stops reading while 60 KB messages arrive one by one: the fan-out's
/// writes fill its socket, one of them only partly, and the session must send the
/// rest of that chunk before anything else. When the client reads again every chunk
/// is whole and the events come in order, a gap only after a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_reader_gets_whole_chunks_in_order_after_the_fan_out_filled_its_socket() {
    let routes = format!("{LONE_SSE}    queue: {{ messages: 64, bytes: 1048576 }}\n");
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &routes)).await;
    let (stream, head, rest) = raw_get(ff.edge_addr, "/lone/s", Some(4096)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    let pad = "p".repeat(60_000);
    let total = 100;
    for i in 0..total {
        publish(ff.admin_addr, "lone.s", None, format!("{i:06}:{pad}")).await;
    }
    let mut stalled = SseReader::new(Chunked::new(stream, rest));
    let mut last: Option<usize> = None;
    let mut reset = false;
    while last != Some(total - 1) {
        match stalled.next().await.expect("the stream stays open") {
            Frame::Event { event, data, .. } if event == "fanfare.reset" => {
                assert!(data.contains("slow_consumer"), "{data}");
                reset = true;
            }
            Frame::Event { data, .. } => {
                assert_eq!(data.len(), 7 + pad.len(), "a whole event");
                let n = seq_of(&data);
                if let Some(l) = last {
                    assert!(n > l, "in order: {n} after {l}");
                    assert!(n == l + 1 || reset, "a gap without a reset: {l} then {n}");
                }
                reset = false;
                last = Some(n);
            }
            Frame::Comment(_) | Frame::Retry(_) => {}
        }
    }
    let direct = metric(ff.admin_addr, "fanfare_fanout_writes_total")
        .await
        .unwrap();
    assert!(direct >= 1.0, "the fan-out wrote some of them: {direct}");
}
