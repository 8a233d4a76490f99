//! The WebSocket transport and client protocol, against real tokio-tungstenite clients,
//! raw sockets, a real nats-server and the embedded broker.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use support::*;

const CHAT: &str = "
routes:
  - path: /chat/{room}
    transports: [ws, sse]
    subjects: [\"chat.{room}\"]
    allow_subscribe: [\"chat.*\"]
    allow_publish: [\"chat.*\"]
    auth: { mode: none }
    ws: { max_message: 1024, max_subscriptions: 3 }
    history: { linger: 0s }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_publish_round_trips() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + CHAT)).await;
    let app = async_nats::connect(nats.url()).await.unwrap();
    let mut tap = app.subscribe("chat.>").await.unwrap();
    app.flush().await.unwrap();

    let mut a = ws_connect(ff.edge_addr, "/chat/r1").await;
    let mut b = ws_connect(ff.edge_addr, "/chat/r2").await;
    ws_send(
        &mut a,
        json!({"type":"subscribe","subject":"chat.r2","ref":1}),
    )
    .await;
    assert_eq!(
        ws_json(&mut a).await,
        json!({"type":"ack","ref":1,"subject":"chat.r2"})
    );

    ws_send(&mut b, json!({"type":"publish","subject":"chat.r2","data":{"text":"hi"},"event":"said","ref":"p1"})).await;
    // b is subscribed to chat.r2 through its route: the ack and its own message arrive.
    let mut got = [ws_json(&mut b).await, ws_json(&mut b).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0], json!({"type":"ack","ref":"p1"}));
    assert_eq!(got[1]["type"], "message");
    let m = ws_json(&mut a).await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["subject"], "chat.r2");
    assert_eq!(m["event"], "said");
    assert_eq!(m["data"], json!({"text":"hi"}));
    assert!(m["id"].as_str().unwrap().starts_with(ff.hub.epoch()));

    // The app sees the publish with fanfare's headers.
    let seen = tokio::time::timeout(DEADLINE, tap.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.payload, r#"{"text":"hi"}"#);
    let h = seen.headers.unwrap();
    assert_eq!(h.get("Fanfare-Route").unwrap().as_str(), "/chat/{room}");
    assert!(!h.get("Fanfare-Connection").unwrap().as_str().is_empty());
    assert_eq!(h.get("Fanfare-Event").unwrap().as_str(), "said");

    ws_send(
        &mut a,
        json!({"type":"unsubscribe","subject":"chat.r2","ref":2}),
    )
    .await;
    assert_eq!(
        ws_json(&mut a).await,
        json!({"type":"ack","ref":2,"subject":"chat.r2"})
    );
    app.publish("chat.r2", "after unsubscribe".into())
        .await
        .unwrap();
    app.publish("chat.r1", "sentinel".into()).await.unwrap();
    app.flush().await.unwrap();
    let next = ws_json(&mut a).await;
    assert_eq!(
        next["data"], "sentinel",
        "nothing from chat.r2 after unsubscribe: {next}"
    );
    ws_send(
        &mut a,
        json!({"type":"unsubscribe","subject":"chat.r2","ref":3}),
    )
    .await;
    assert_eq!(ws_json(&mut a).await["code"], "not_subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_errors_and_the_connection_lives_on() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + CHAT)).await;
    let mut a = ws_connect(ff.edge_addr, "/chat/r1").await;
    let cases = [
        (
            json!({"type":"subscribe","subject":"secret.x","ref":"s"}),
            "forbidden",
        ),
        (
            json!({"type":"publish","subject":"secret.x","data":1,"ref":"s"}),
            "forbidden",
        ),
        (
            json!({"type":"subscribe","subject":"chat.a b","ref":"s"}),
            "invalid_subject",
        ),
        (
            json!({"type":"subscribe","subject":"chat..x","ref":"s"}),
            "invalid_subject",
        ),
        (
            json!({"type":"publish","subject":"chat.*","data":1,"ref":"s"}),
            "invalid_subject",
        ),
        (
            json!({"type":"subscribe","subject":"chat.>","ref":"s"}),
            "forbidden",
        ),
        (json!({"type":"dance","ref":"s"}), "bad_request"),
        (
            json!({"type":"publish","subject":"chat.r1","ref":"s"}),
            "bad_request",
        ),
    ];
    for (req, code) in cases {
        ws_send(&mut a, req.clone()).await;
        let e = ws_json(&mut a).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
            (Some("error"), Some(code), Some("s")),
            "{req}"
        );
    }
    a.send(Message::text("{not json")).await.unwrap();
    let e = ws_json(&mut a).await;
    assert_eq!(e["code"], "bad_request");
    a.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws_json(&mut a).await["code"], "binary_not_supported");
    // Still alive and useful.
    ws_send(
        &mut a,
        json!({"type":"subscribe","subject":"chat.r2","ref":"ok"}),
    )
    .await;
    assert_eq!(ws_json(&mut a).await["type"], "ack");
    ws_send(&mut a, json!({"type":"subscribe","subject":"chat.r3"})).await;
    assert_eq!(ws_json(&mut a).await["type"], "ack");
    ws_send(&mut a, json!({"type":"subscribe","subject":"chat.r4"})).await;
    assert_eq!(ws_json(&mut a).await["code"], "too_many_subscriptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_path_refusals_happen_before_the_upgrade() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + CHAT)).await;
    let raw = |headers: &'static str, path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        // The head and the JSON body may arrive in separate reads: read the whole
        // answer (its body ends with `}`), or until the server closes.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !got.ends_with(b"}") {
            let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
                .await
                .expect("an answer within the deadline")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let r = raw(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        "/chat/r1",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "/chat/r1",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    let r = raw(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "/chat/a.b",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("invalid_subject_parameter"),
        "{r}"
    );
    assert_eq!(
        metric(ff.admin_addr, "fanfare_subscriptions").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_1009() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + CHAT)).await;
    let mut a = ws_connect(ff.edge_addr, "/chat/r1").await;
    a.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(ws_close_code(&mut a).await, 1009);
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"too_big\",transport=\"ws\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /p\n    transports: [ws]\n    subjects: [p]\n    auth: { mode: none }\n    ws: { ping_interval: 100ms, pong_timeout: 100ms }\n";
    let ff = start_fanfare(&yaml).await;
    let mut silent = raw_ws(ff.edge_addr, "/p").await;
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}", 1.0).await;
    // A well-behaved client on the same route stays connected: it keeps reading, so
    // tungstenite answers the pings.
    let mut good = ws_connect(ff.edge_addr, "/p").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = good.next().await {
            if let Message::Text(t) = m {
                let _ = tx.send(t.as_str().to_string());
            }
        }
    });
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"ping_timeout\",transport=\"ws\"}",
        1.0,
    )
    .await;
    // The silent one saw pings and then a close frame with 4002, then EOF.
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let close = all
        .windows(2)
        .position(|w| w == [0x88, 2 + "ping timeout".len() as u8])
        .expect("a close frame");
    assert_eq!(u16::from_be_bytes([all[close + 2], all[close + 3]]), 4002);
    // Several ping intervals later the good client is still connected and receives.
    publish(ff.admin_addr, "p", None, "still here").await;
    let text = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("still here"), "{text}");
    assert_eq!(
        metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_connections_closed_total{outcome=\"ping_timeout\",transport=\"ws\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_without_subscriptions_is_closed() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /lobby\n    transports: [ws]\n    allow_subscribe: [\"room.*\"]\n    auth: { mode: none }\n    ws: { idle_timeout: 200ms, ping_interval: 50ms }\n";
    let ff = start_fanfare(&yaml).await;
    let mut a = ws_connect(ff.edge_addr, "/lobby").await;
    assert_eq!(ws_close_code(&mut a).await, 4003);
    // One that subscribes stays.
    let mut b = ws_connect(ff.edge_addr, "/lobby").await;
    ws_send(&mut b, json!({"type":"subscribe","subject":"room.1"})).await;
    assert_eq!(ws_json(&mut b).await["type"], "ack");
    publish(ff.admin_addr, "room.1", None, "hello").await;
    assert_eq!(ws_json(&mut b).await["data"], "hello");
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"idle\",transport=\"ws\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_tcp_drop_releases_the_client() {
    let nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + CHAT)).await;
    let a = raw_ws(ff.edge_addr, "/chat/gone").await;
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}", 1.0).await;
    assert_eq!(
        metric(ff.admin_addr, "fanfare_subscriptions").await,
        Some(1.0)
    );
    drop(a);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}", 0.0).await;
    wait_metric(ff.admin_addr, "fanfare_subscriptions", 0.0).await;
    wait_for("nats-server to drop the subscription", DEADLINE, || async {
        (nats.subscription_count().await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_ws_and_sse_clients_receive_everything_in_order() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + CHAT)).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_connect(ff.edge_addr, "/chat/mix").await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 50 {
                got.push(ws_json(&mut ws).await["data"]["n"].as_u64().unwrap());
            }
            got
        }));
        let mut sse =
            sse_connect(&http_client(), &format!("http://{}/chat/mix", ff.edge_addr)).await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 50 {
                let (_, _, data) = sse.next_event().await.unwrap();
                let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                got.push(v["n"].as_u64().unwrap());
            }
            got
        }));
    }
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}", 3.0).await;
    for n in 0..50 {
        publish(ff.admin_addr, "chat.mix", None, json!({"n": n}).to_string()).await;
    }
    let expected: Vec<u64> = (0..50).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), expected);
    }
    // Counted just after each write: the last counts may trail the clients.
    wait_metric(
        ff.admin_addr,
        "fanfare_deliveries_total{transport=\"ws\"}",
        150.0,
    )
    .await;
    wait_metric(
        ff.admin_addr,
        "fanfare_deliveries_total{transport=\"sse\"}",
        150.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ws_reader_does_not_hold_up_the_others() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /feed\n    transports: [ws]\n    subjects: [feed]\n    auth: { mode: none }\n    queue: { messages: 16, bytes: 1048576 }\n";
    let ff = start_fanfare(&yaml).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled_tcp = socket.connect(ff.edge_addr).await.unwrap();
    let (stalled, _) =
        tokio_tungstenite::client_async(format!("ws://{}/feed", ff.edge_addr), stalled_tcp)
            .await
            .unwrap();
    let mut good = ws_connect(ff.edge_addr, "/feed").await;
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"ws\"}", 2.0).await;
    const N: usize = 600;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let v = ws_json(&mut good).await;
            let data = v["data"].as_str().unwrap().to_string();
            assert_eq!(data[..6].parse::<usize>().unwrap(), i);
        }
    });
    publish_numbered(ff.admin_addr, "feed", N).await;
    reader.await.unwrap();
    let dropped = metric(
        ff.admin_addr,
        "fanfare_dropped_total{reason=\"slow_consumer\"}",
    )
    .await
    .unwrap();
    assert!(dropped > 0.0);
    // The stalled client, reading now, is told about the gap.
    let mut stalled = stalled;
    let mut reset = false;
    loop {
        let msg = tokio::time::timeout(DEADLINE, stalled.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "reset" {
                reset = true;
            }
            if v["type"] == "message"
                && v["data"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{:06}", N - 1))
            {
                break;
            }
        }
    }
    assert!(reset, "the stalled client got a reset message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_route_echoes_text_and_binary() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /echo\n    transports: [ws]\n    auth: { mode: none }\n    ws: { echo: true }\n";
    let ff = start_fanfare(&yaml).await;
    let mut ws = ws_connect(ff.edge_addr, "/echo").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws_next(&mut ws).await.unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 255])).await.unwrap();
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        Message::binary(vec![0u8, 255])
    );
    ws.send(Message::Close(None)).await.unwrap();
    assert!(matches!(ws_next(&mut ws).await, Some(Message::Close(_))));
}

// --- permessage-deflate (RFC 7692) ---

const DEFLATE: &str = "
routes:
  - path: /on/{room}
    transports: [ws]
    subjects: [\"news.{room}\"]
    allow_subscribe: [\"news.*\"]
    auth: { mode: none }
    ws: { compression: on, max_message: 65536 }
  - path: /off/{room}
    transports: [ws]
    subjects: [\"news.{room}\"]
    auth: { mode: none }
";

/// A JSON document of about `n` records, as a dashboard might publish.
fn orders(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"order":{i},"status":"shipped","carrier":"post","eta":"2026-11-2{}","items":[{{"sku":"A-{i}","qty":{}}}]}}"#,
                i % 10,
                i % 3 + 1
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_negotiated_only_where_the_route_turns_it_on() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + DEFLATE)).await;
    let browser_offer = "permessage-deflate; client_max_window_bits";
    let on = DeflateWs::connect(ff.edge_addr, "/on/a", browser_offer).await;
    assert_eq!(
        on.extensions().as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let off = DeflateWs::connect(ff.edge_addr, "/off/a", browser_offer).await;
    assert_eq!(off.extensions(), None, "compression is off by default");
    let none = DeflateWs::connect(ff.edge_addr, "/on/a", "").await;
    assert_eq!(none.extensions(), None, "a client that offers nothing");
    // Counted once the socket is handed over, just after the 101 went out.
    wait_for("one compressed connection counted", DEADLINE, || async {
        let n = metric(ff.admin_addr, "fanfare_ws_compressed_connections_total").await;
        (n == Some(1.0)).then_some(())
    })
    .await;
    // An offer fanfare cannot keep (a 256-byte window) is declined, the next taken.
    let two = DeflateWs::connect(
        ff.edge_addr,
        "/on/a",
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10",
    )
    .await;
    assert_eq!(
        two.extensions().as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        )
    );
    wait_for(
        "the second compressed connection counted",
        DEADLINE,
        || async {
            let n = metric(ff.admin_addr, "fanfare_ws_compressed_connections_total").await;
            (n == Some(2.0)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_compressed_once_and_the_same_bytes_reach_every_client() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + DEFLATE)).await;
    let offer = "permessage-deflate; client_max_window_bits";
    let mut a = DeflateWs::connect(ff.edge_addr, "/on/x", offer).await;
    let mut b = DeflateWs::connect(ff.edge_addr, "/on/x", offer).await;
    // A client that limited fanfare's window gets the shared plain frame instead.
    let mut narrow = DeflateWs::connect(
        ff.edge_addr,
        "/on/x",
        "permessage-deflate; server_max_window_bits=10",
    )
    .await;
    let mut plain = ws_connect(ff.edge_addr, "/off/x").await;
    let doc = orders(10);
    assert!((900..1400).contains(&doc.len()), "{}", doc.len());
    publish(ff.admin_addr, "news.x", Some("orders"), doc.clone()).await;

    let (fa, fb) = (a.data().await, b.data().await);
    assert_eq!(fa.first, 0xc1, "FIN, RSV1, text");
    assert_eq!(fa, fb, "the same compressed bytes for every client");
    let Message::Text(want) = ws_next(&mut plain).await.unwrap() else {
        panic!("a text frame")
    };
    assert_eq!(fa.text(), want.as_str(), "inflates to the plain message");
    let v: serde_json::Value = serde_json::from_str(&fa.text()).unwrap();
    assert_eq!(
        v["data"],
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()
    );
    assert!(
        fa.payload.len() * 100 <= want.len() * 40,
        "{} compressed bytes for {} plain",
        fa.payload.len(),
        want.len()
    );
    let fn_ = narrow.data().await;
    assert_eq!(
        fn_.first, 0x81,
        "plain: the shared frame needs the full window"
    );
    assert_eq!(fn_.text(), want.as_str());

    // Each message inflates on its own (no context kept between messages): the
    // second one, the same document again, inflates with a fresh inflater too.
    publish(ff.admin_addr, "news.x", Some("orders"), doc.clone()).await;
    let again = a.data().await;
    assert!(again.compressed());
    let v: serde_json::Value = serde_json::from_str(&again.text()).unwrap();
    assert_eq!(
        v["data"],
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_read_and_broken_ones_closed() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + DEFLATE)).await;
    let offer = "permessage-deflate";
    let mut c = DeflateWs::connect(ff.edge_addr, "/on/y", offer).await;
    c.send_compressed(r#"{"type":"subscribe","subject":"news.z","ref":1}"#)
        .await;
    let ack: serde_json::Value = serde_json::from_str(&c.data().await.text()).unwrap();
    assert_eq!(ack, json!({"type":"ack","ref":1,"subject":"news.z"}));
    // A compressed message in three fragments, a ping between them.
    let body = deflate(br#"{"type":"subscribe","subject":"news.w","ref":2}"#);
    let (p1, rest) = body.split_at(body.len() / 3);
    let (p2, p3) = rest.split_at(rest.len() / 2);
    c.send(0x41, p1).await;
    c.send(0x89, b"ping").await;
    c.send(0x00, p2).await;
    c.send(0x80, p3).await;
    let pong = c.frame().await;
    assert_eq!((pong.first, &pong.payload[..]), (0x8a, &b"ping"[..]));
    let ack: serde_json::Value = serde_json::from_str(&c.data().await.text()).unwrap();
    assert_eq!(ack, json!({"type":"ack","ref":2,"subject":"news.w"}));
    // Both subscriptions deliver.
    publish(ff.admin_addr, "news.w", None, "\"w\"").await;
    let m: serde_json::Value = serde_json::from_str(&c.data().await.text()).unwrap();
    assert_eq!(m["subject"], "news.w");

    // Data that does not inflate: 1007.
    let mut bad = DeflateWs::connect(ff.edge_addr, "/on/y", offer).await;
    bad.send(0xc1, &[0xff; 16]).await;
    assert_eq!(bad.close_code().await, 1007);
    // A message that inflates past ws.max_message (64 KiB) from 1 KiB: 1009, and
    // fanfare never holds the megabyte.
    let mut bomb = DeflateWs::connect(ff.edge_addr, "/on/y", offer).await;
    let zeros = deflate(&vec![b' '; 1 << 20]);
    assert!(zeros.len() < 2048, "{}", zeros.len());
    bomb.send(0xc1, &zeros).await;
    assert_eq!(bomb.close_code().await, 1009);
    // RSV1 without the extension is still a protocol error.
    let mut plain = DeflateWs::connect(ff.edge_addr, "/off/y", "").await;
    plain.send_compressed("{}").await;
    assert_eq!(plain.close_code().await, 1002);
    // The first client was not harmed.
    publish(ff.admin_addr, "news.y", None, "\"still\"").await;
    let m: serde_json::Value = serde_json::from_str(&c.data().await.text()).unwrap();
    assert_eq!(m["data"], "still");
}

// --- the fan-out writing to sockets itself (issue 18) ---

const LONE: &str = "
routes:
  - path: /lone/{room}
    transports: [ws]
    subjects: [\"lone.{room}\"]
    auth: { mode: none }
    history: { ring: 0 }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_its_own_is_written_by_the_fan_out_in_order() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + LONE)).await;
    let mut a = ws_connect(ff.edge_addr, "/lone/x").await;
    let mut b = ws_connect(ff.edge_addr, "/lone/x").await;
    let metric = |name: &'static str| metric(ff.admin_addr, name);
    // One message at a time, each received before the next is published. The first
    // goes through each client's task (a session owns its socket until its first
    // write); after that the fan-out writes, unless it finds a task that has not yet
    // let go of its socket (on a loaded machine, now and then): so publish until 30
    // deliveries were the fan-out's, with a bound.
    let mut sent = 0u64;
    loop {
        publish(ff.admin_addr, "lone.x", None, format!("{sent}")).await;
        assert_eq!(ws_json(&mut a).await["data"], sent);
        assert_eq!(ws_json(&mut b).await["data"], sent);
        sent += 1;
        let direct = metric("fanfare_fanout_writes_total").await.unwrap();
        if direct >= 30.0 {
            break;
        }
        assert!(
            sent < 200,
            "only {direct} of {} deliveries written by the fan-out",
            2 * sent
        );
    }
    assert_eq!(
        metric("fanfare_deliveries_total{transport=\"ws\"}").await,
        Some(2.0 * sent as f64)
    );
    // The lag is observed on the path that wrote: once per message the fan-out wrote
    // (at least 15: 30 writes to two clients), once per batch a task wrote (the first
    // message's, at least).
    let mut lag = [0.0; 2];
    for (n, path) in lag.iter_mut().zip(["fanout", "queue"]) {
        let series = format!("fanfare_delivery_lag_seconds_count{{path=\"{path}\"}}");
        *n = support::metric(ff.admin_addr, &series).await.unwrap();
    }
    let [fanout, queue] = lag;
    assert!((15.0..=sent as f64).contains(&fanout), "{fanout} of {sent}");
    assert!(queue >= 1.0, "{queue}");
    // A client's own requests still go through its task, between the fan-out's writes.
    ws_send(
        &mut a,
        json!({"type":"subscribe","subject":"lone.x","ref":7}),
    )
    .await;
    assert_eq!(ws_json(&mut a).await["type"], "error");
    publish(ff.admin_addr, "lone.x", None, format!("{sent}")).await;
    assert_eq!(ws_json(&mut a).await["data"], sent);
}

/// A client that stops reading while messages arrive one by one: the fan-out's
/// writes fill its socket, one of them only partly, and the client's task must send
/// the rest of that frame before anything else. When the client reads again every
/// frame is whole and the messages come in order, a gap only after a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_whole_frames_in_order_after_the_fan_out_filled_its_socket() {
    let routes = format!("{LONE}    queue: {{ messages: 64, bytes: 1048576 }}\n");
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &routes)).await;
    let mut stalled = DeflateWs::connect_small(ff.edge_addr, "/lone/s", 4096).await;
    let pad = "p".repeat(60_000);
    let total = 100;
    for i in 0..total {
        publish(
            ff.admin_addr,
            "lone.s",
            None,
            format!("{{\"n\":{i},\"pad\":\"{pad}\"}}"),
        )
        .await;
    }
    let mut last: Option<u64> = None;
    let mut reset = false;
    loop {
        let f = stalled.data().await;
        assert_eq!(f.first, 0x81, "a whole text frame");
        let v: serde_json::Value =
            serde_json::from_str(&f.text()).expect("every frame is whole JSON");
        match v["type"].as_str() {
            Some("reset") => reset = true,
            Some("message") => {
                let n = v["data"]["n"].as_u64().unwrap();
                if let Some(l) = last {
                    assert!(n > l, "in order: {n} after {l}");
                    assert!(n == l + 1 || reset, "a gap without a reset: {l} then {n}");
                }
                reset = false;
                last = Some(n);
                if n == total - 1 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let direct = metric(ff.admin_addr, "fanfare_fanout_writes_total")
        .await
        .unwrap();
    assert!(direct >= 1.0, "the fan-out wrote some of them: {direct}");
}
