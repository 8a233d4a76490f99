//! Full duplex: app callbacks (connect, message, disconnect), addressing one connection
//! and control messages, and raw WebSocket mode, against a real app (axum), real
//! clients and a real nats-server.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::*;

/// The chat route of the issue, with every callback on the app.
fn chat(app: &CallbackApp, extra: &str) -> String {
    format!(
        "
routes:
  - path: /chat/{{room}}
    transports: [ws, sse, poll]
    subjects: [\"chat.{{room}}\"]
    auth: {{ mode: none }}
    history: {{ linger: 0s }}
    app:
      connect: /rt/connect
      message: /rt/message
      disconnect: {}/rt/disconnect
      timeout: 1s
{extra}",
        app.url()
    )
}

async fn ws_with_cookie(addr: std::net::SocketAddr, path: &str) -> Ws {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", "session=s3cr3t".parse().unwrap());
    req.headers_mut()
        .insert("user-agent", "duplex-test/1".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake to {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_admits_with_first_events_and_extra_subjects_on_every_transport() {
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Admit(json!({
        "subscribe": ["user.7"],
        "events": [{"event": "welcome", "data": {"hi": 1}}, {"data": "plain"}],
    })));
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &chat(&app, ""))).await;

    // WebSocket: the app's events first, then the route's and the added subjects.
    let mut ws = ws_with_cookie(ff.edge_addr, "/chat/lobby").await;
    let first = ws_json(&mut ws).await;
    assert_eq!(first["event"], "welcome");
    assert_eq!(first["data"], json!({"hi": 1}));
    assert!(
        first.get("id").is_none(),
        "a first event has no cursor: {first}"
    );
    assert_eq!(ws_json(&mut ws).await["data"], "plain");
    let call = app.connects.lock().unwrap()[0].clone();
    let body = call.json();
    let id = body["connection"].as_str().unwrap().to_string();
    assert_eq!(body["route"], "/chat/{room}");
    assert_eq!(body["params"], json!({"room": "lobby"}));
    assert_eq!(body["transport"], "ws");
    assert_eq!(body["subjects"], json!(["chat.lobby"]));
    assert_eq!(body["remote_addr"], "127.0.0.1");
    assert_eq!(body["user_agent"], "duplex-test/1");
    assert_eq!(call.header("cookie").as_deref(), Some("session=s3cr3t"));
    call.assert_from(&id, "/chat/{room}");
    publish(ff.admin_addr, "user.7", Some("note"), "for user 7").await;
    let m = ws_json(&mut ws).await;
    assert_eq!(
        (m["subject"].as_str(), m["data"].as_str()),
        (Some("user.7"), Some("for user 7"))
    );
    publish(ff.admin_addr, "chat.lobby", None, "{\"n\":1}").await;
    assert_eq!(ws_json(&mut ws).await["data"], json!({"n": 1}));

    // SSE: the same, first events without an id (an EventSource keeps no cursor).
    let client = http_client();
    let mut sse = sse_connect(&client, &format!("http://{}/chat/lobby", ff.edge_addr)).await;
    let (eid, name, data) = sse.next_event().await.unwrap();
    assert_eq!(
        (eid, name.as_str(), data.as_str()),
        (None, "welcome", "{\"hi\":1}")
    );
    let (_, name, data) = sse.next_event().await.unwrap();
    assert_eq!((name.as_str(), data.as_str()), ("message", "plain"));
    assert_eq!(app.connects.lock().unwrap()[1].json()["transport"], "sse");
    publish(ff.admin_addr, "user.7", None, "sse too").await;
    assert_eq!(sse.next_event().await.unwrap().2, "sse too");

    // Long-poll: the first events come back at once, and the cursor stays a real one.
    let r: serde_json::Value = client
        .get(format!("http://{}/chat/lobby?transport=poll", ff.edge_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["messages"][0]["event"], "welcome");
    assert_eq!(r["messages"].as_array().unwrap().len(), 2);
    assert!(
        r["cursor"].as_str().unwrap().starts_with(ff.hub.epoch()),
        "{r}"
    );
    assert_eq!(app.connects.lock().unwrap()[2].json()["transport"], "poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_pass_the_apps_status_and_body_on_every_transport() {
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Refuse(403, r#"{"error":"banned"}"#));
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &chat(&app, ""))).await;
    let client = http_client();
    for query in ["", "?transport=poll"] {
        let r = client
            .get(format!("http://{}/chat/lobby{query}", ff.edge_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{query}");
        assert_eq!(r.text().await.unwrap(), r#"{"error":"banned"}"#);
    }
    // WebSocket: refused before the 101, with the app's answer.
    let mut s = raw_ws_request(ff.edge_addr, "/chat/lobby").await;
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.ends_with(r#"{"error":"banned"}"#), "{answer}");
    assert_eq!(
        metric(
            ff.admin_addr,
            r#"fanfare_app_callbacks_total{kind="connect",outcome="refused"}"#
        )
        .await,
        Some(3.0)
    );
    assert!(
        app.disconnects.lock().unwrap().is_empty(),
        "a refused client never connected"
    );

    // No answer within app.timeout: 503 app_unavailable.
    app.answer_connects(ConnectAnswer::Hang);
    let started = Instant::now();
    let r = client
        .get(format!("http://{}/chat/lobby", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "app_unavailable");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Reads a whole HTTP answer (head and body) until the server closes or the body's
/// content-length is in.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|l| body.len() >= l) {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_replies_errors_timeouts_and_busy() {
    let app = CallbackApp::start().await;
    let down = closed_port();
    let routes = chat(&app, "      max_in_flight: 2\n")
        + &format!(
            "
  - path: /down
    transports: [ws]
    auth: {{ mode: none }}
    app: {{ message: \"http://127.0.0.1:{}/nowhere\" }}
",
            down.port
        );
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &routes)).await;
    let mut ws = ws_with_cookie(ff.edge_addr, "/chat/lobby").await;
    let id = app.connects.lock().unwrap()[0].json()["connection"]
        .as_str()
        .unwrap()
        .to_string();

    // A reply: the app's body as JSON, with the status; the request carried the
    // connection, the route, the event and the cookie captured at connect.
    ws_send(
        &mut ws,
        json!({"type":"rpc","data":{"say":"hi"},"event":"said","ref":1}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type":"reply","ref":1,"status":200,"data":{"echo":{"say":"hi"},"connection":id}})
    );
    let call = app.messages.lock().unwrap()[0].clone();
    assert_eq!(call.json(), json!({"say":"hi"}));
    assert_eq!(call.header("fanfare-event").as_deref(), Some("said"));
    call.assert_from(&id, "/chat/{room}");
    assert_eq!(call.header("cookie").as_deref(), Some("session=s3cr3t"));
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("application/json")
    );

    // The app refuses: app_error with its status and body.
    ws_send(
        &mut ws,
        json!({"type":"rpc","data":1,"event":"fail","ref":2}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type":"error","code":"app_error","ref":2,"status":500,"data":{"error":"boom"}})
    );

    // No answer within app.timeout (1s).
    ws_send(
        &mut ws,
        json!({"type":"rpc","data":1,"event":"slow","ref":3}),
    )
    .await;
    let e = ws_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_i64()),
        (Some("timeout"), Some(3)),
        "{e}"
    );

    // max_in_flight 2: a third rpc while two wait is busy; the two answer after, in
    // completion order, tied by ref.
    ws_send(
        &mut ws,
        json!({"type":"rpc","data":"a","event":"hold","ref":"h1"}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type":"rpc","data":"b","event":"hold","ref":"h2"}),
    )
    .await;
    wait_for("two rpcs held at the app", DEADLINE, || async {
        (app.messages.lock().unwrap().len() == 5).then_some(())
    })
    .await;
    ws_send(&mut ws, json!({"type":"rpc","data":"c","ref":"h3"})).await;
    let busy = ws_json(&mut ws).await;
    assert_eq!(
        (busy["code"].as_str(), busy["ref"].as_str()),
        (Some("busy"), Some("h3")),
        "{busy}"
    );
    app.release.notify_waiters();
    let mut refs = vec![ws_json(&mut ws).await, ws_json(&mut ws).await]
        .into_iter()
        .map(|v| {
            assert_eq!(v["type"], "reply", "{v}");
            v["ref"].as_str().unwrap().to_string()
        })
        .collect::<Vec<_>>();
    refs.sort();
    assert_eq!(refs, ["h1", "h2"]);

    // The app is down: unavailable. A route without app.message: not_configured.
    let mut down = ws_connect(ff.edge_addr, "/down").await;
    ws_send(&mut down, json!({"type":"rpc","data":1,"ref":9})).await;
    let e = ws_json(&mut down).await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_i64()),
        (Some("unavailable"), Some(9)),
        "{e}"
    );
    for (outcome, n) in [
        ("ok", 3.0),
        ("app_error", 1.0),
        ("timeout", 1.0),
        ("busy", 1.0),
        ("unavailable", 1.0),
    ] {
        assert_eq!(
            metric(
                ff.admin_addr,
                &format!(r#"fanfare_app_callbacks_total{{kind="message",outcome="{outcome}"}}"#)
            )
            .await,
            Some(n),
            "{outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_without_a_message_handler_is_not_configured() {
    let ff = start_fanfare(
        &(base_yaml("http://127.0.0.1:1", None)
            + "routes:\n  - path: /s\n    transports: [ws]\n    subjects: [s]\n    auth: { mode: none }\n"),
    )
    .await;
    let mut ws = ws_connect(ff.edge_addr, "/s").await;
    ws_send(&mut ws, json!({"type":"rpc","data":1,"ref":1})).await;
    let e = ws_json(&mut ws).await;
    assert_eq!(e["code"], "not_configured", "{e}");
}

/// Waits for the disconnect callback of `id` and returns it with when it arrived.
async fn disconnect_of(app: &CallbackApp, id: &str, deadline: Duration) -> serde_json::Value {
    wait_for(
        &format!("the disconnect callback of {id}"),
        deadline,
        || async {
            app.disconnected()
                .into_iter()
                .find(|d| d["connection"] == id)
        },
    )
    .await
}

/// Answers the server's close frame as a browser does (reading on sends tungstenite's
/// queued reply) and reads until the end.
async fn finish_close(ws: &mut Ws) {
    while let Ok(Some(_)) = tokio::time::timeout(DEADLINE, ws.next()).await {}
}

async fn welcome_id(ws: &mut Ws) -> String {
    let w = ws_json(ws).await;
    assert_eq!(w["event"], "welcome", "{w}");
    w["data"]["connection"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_callbacks_for_each_reason_arrive_within_a_second() {
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Welcome(vec![]));
    let jwt_route = format!(
        "
  - path: /private
    transports: [ws]
    subjects: [private]
    auth: {{ mode: jwt, algorithms: [HS256], secret: {SECRET} }}
    app: {{ connect: /rt/connect, disconnect: /rt/disconnect }}
"
    );
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &chat(&app, "") + &jwt_route)).await;

    // The client closes.
    let mut ws = ws_with_cookie(ff.edge_addr, "/chat/lobby").await;
    let id = welcome_id(&mut ws).await;
    publish(ff.admin_addr, "chat.lobby", None, "one").await;
    assert_eq!(ws_json(&mut ws).await["data"], "one");
    ws.close(None).await.unwrap();
    let closed = Instant::now();
    let d = disconnect_of(&app, &id, Duration::from_secs(1)).await;
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(d["reason"], "client_closed");
    assert_eq!(d["route"], "/chat/{room}");
    assert_eq!(d["params"], json!({"room": "lobby"}));
    assert_eq!(d["transport"], "ws");
    assert_eq!(d["delivered"], 2, "the welcome and one message: {d}");
    assert!(d["duration_ms"].as_u64().is_some());
    let call = app.disconnects.lock().unwrap()[0].clone();
    assert_eq!(call.header("cookie").as_deref(), Some("session=s3cr3t"));

    // An SSE client goes away.
    let (s, head, _) = raw_get(ff.edge_addr, "/chat/lobby", None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let sse_id = wait_for("the SSE connect", DEADLINE, || async {
        let c = app.connects.lock().unwrap();
        c.iter()
            .map(Call::json)
            .find(|b| b["transport"] == "sse")
            .map(|b| b["connection"].as_str().unwrap().to_string())
    })
    .await;
    drop(s);
    let closed = Instant::now();
    let d = disconnect_of(&app, &sse_id, Duration::from_secs(1)).await;
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(
        (d["reason"].as_str(), d["transport"].as_str()),
        (Some("client_closed"), Some("sse"))
    );

    // The app closes it.
    let mut ws = ws_with_cookie(ff.edge_addr, "/chat/lobby").await;
    let id = welcome_id(&mut ws).await;
    let r = http_client()
        .post(format!(
            "http://{}/publish/fanfare.connection.{id}",
            ff.admin_addr
        ))
        .header("fanfare-control", "close")
        .body("kicked")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(ws_close_code(&mut ws).await, 4005);
    finish_close(&mut ws).await;
    let closed = Instant::now();
    let d = disconnect_of(&app, &id, Duration::from_secs(1)).await;
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(d["reason"], "closed_by_app");

    // The token expires.
    let token = hs256(&json!({"sub": "u", "exp": now() + 2}));
    let mut ws = ws_connect(ff.edge_addr, &format!("/private?access_token={token}")).await;
    let id = welcome_id(&mut ws).await;
    assert_eq!(ws_close_code(&mut ws).await, 4001);
    finish_close(&mut ws).await;
    let closed = Instant::now();
    let d = disconnect_of(&app, &id, Duration::from_secs(1)).await;
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(d["reason"], "expired");

    // A protocol error (an unmasked client frame): the connection ends as an error.
    let mut s = raw_ws(ff.edge_addr, "/chat/lobby").await;
    let id = wait_for("the raw client's connect", DEADLINE, || async {
        let c = app.connects.lock().unwrap();
        (c.len() == 5).then(|| c[4].json()["connection"].as_str().unwrap().to_string())
    })
    .await;
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x81, 0x02, b'{', b'}'])
        .await
        .unwrap();
    let closed = Instant::now();
    let d = disconnect_of(&app, &id, DEADLINE).await;
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "{:?}",
        closed.elapsed()
    );
    assert_eq!(d["reason"], "write_error");
    drop(s);

    // Shutdown: every held connection's callback is sent before shutdown returns.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut ws = ws_with_cookie(ff.edge_addr, "/chat/lobby").await;
        held.push((welcome_id(&mut ws).await, ws));
    }
    app.fail_disconnects(3);
    let before = app.disconnected().len();
    // The clients answer the drain's close frames, as browsers do.
    let ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
    let readers: Vec<_> = held
        .into_iter()
        .map(|(_, mut ws)| tokio::spawn(async move { finish_close(&mut ws).await }))
        .collect();
    assert_eq!(ff.shutdown().await, fanfare::Drained::Clean);
    for r in readers {
        r.await.unwrap();
    }
    let after = app.disconnected();
    assert_eq!(
        after.len(),
        before + 20,
        "every drained connection was reported"
    );
    for id in &ids {
        let d = after
            .iter()
            .find(|d| d["connection"] == id.as_str())
            .unwrap();
        assert_eq!(d["reason"], "shutdown");
    }
    assert_eq!(
        app.disconnect_failures_left(),
        0,
        "three were answered 503 and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_reported_as_such() {
    let app = CallbackApp::start().await;
    let routes = "
routes:
  - path: /feed
    subjects: [feed]
    auth: { mode: none }
    slow_consumer: disconnect
    queue: { messages: 16, bytes: 1048576 }
    app: { connect: /rt/connect, disconnect: /rt/disconnect }
";
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + routes)).await;
    let (stalled, head, _) = raw_get(ff.edge_addr, "/feed", Some(4096)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let id = app.connects.lock().unwrap()[0].json()["connection"]
        .as_str()
        .unwrap()
        .to_string();
    let big = "x".repeat(16 * 1024);
    let mut i = 0;
    while app.disconnected().is_empty() {
        assert!(i < 2000, "the stalled client was never disconnected");
        publish(ff.admin_addr, "feed", None, big.clone()).await;
        i += 1;
    }
    let d = disconnect_of(&app, &id, DEADLINE).await;
    assert_eq!(d["reason"], "slow_consumer");
    // The stalled client still reads nothing: its connection is let go anyway (the
    // end of the stream is not waited for forever), so a shutdown finishes clean.
    assert_eq!(ff.shutdown().await, fanfare::Drained::Clean);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addressing_one_connection_among_a_thousand_costs_no_subscription_each() {
    let nats = NatsServer::start().await;
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Welcome(vec![]));
    let routes = "
limits: { max_connections_per_ip: 5000 }
routes:
  - path: /chat/{room}
    transports: [ws]
    subjects: [\"chat.{room}\"]
    auth: { mode: none }
    app: { connect: /rt/connect }
";
    let ff = start_fanfare(&(base_yaml(&app.url(), Some(&nats.url())) + routes)).await;
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let mut ws = ws_connect(ff.edge_addr, "/chat/lobby").await;
        let id = welcome_id(&mut ws).await;
        clients.push((id, ws));
    }
    let subs = nats.subscriptions().await;
    assert_eq!(
        subs.len(),
        2,
        "the route's subject and one per instance, not one per connection: {subs:?}"
    );
    assert!(subs.contains(&"chat.lobby".to_string()), "{subs:?}");
    assert!(
        subs.iter()
            .any(|s| s.starts_with("fanfare.connection.") && s.ends_with(".*")),
        "{subs:?}"
    );
    let nc = async_nats::connect(nats.url()).await.unwrap();
    // Over NATS to #500, over the admin endpoint to #10; then a broadcast: every
    // client's next message is the broadcast, except the two addressed ones.
    nats_publish(
        &nc,
        &format!("fanfare.connection.{}", clients[500].0),
        &[("Fanfare-Event", "dm")],
        "only you",
    )
    .await;
    publish(
        ff.admin_addr,
        &format!("fanfare.connection.{}", clients[10].0),
        Some("dm"),
        "only you too",
    )
    .await;
    let m = ws_json(&mut clients[500].1).await;
    assert_eq!(
        (m["event"].as_str(), m["data"].as_str()),
        (Some("dm"), Some("only you")),
        "{m}"
    );
    assert_eq!(
        m["subject"],
        format!("fanfare.connection.{}", clients[500].0)
    );
    let m = ws_json(&mut clients[10].1).await;
    assert_eq!(m["data"], "only you too");
    publish(ff.admin_addr, "chat.lobby", None, "everyone").await;
    for (i, (_, ws)) in clients.iter_mut().enumerate() {
        let m = ws_json(ws).await;
        assert_eq!(m["data"], "everyone", "client {i} got {m}");
    }
    assert_eq!(
        metric(
            ff.admin_addr,
            r#"fanfare_direct_messages_total{result="delivered"}"#
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_join_leave_and_close_a_connection() {
    let nats = NatsServer::start().await;
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Welcome(vec![]));
    let routes = "
routes:
  - path: /chat/{room}
    transports: [ws, sse]
    subjects: [\"chat.{room}\"]
    allow_subscribe: [\">\"]
    allow_publish: [\">\"]
    auth: { mode: none }
    history: { linger: 0s }
    app: { connect: /rt/connect }
";
    let ff = start_fanfare(&(base_yaml(&app.url(), Some(&nats.url())) + routes)).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut ws = ws_connect(ff.edge_addr, "/chat/lobby").await;
    let id = welcome_id(&mut ws).await;
    let subject = format!("fanfare.connection.{id}");

    nats_publish(&nc, &subject, &[("Fanfare-Control", "subscribe")], "room.9").await;
    wait_metric(
        ff.admin_addr,
        r#"fanfare_direct_messages_total{result="control"}"#,
        1.0,
    )
    .await;
    publish(ff.admin_addr, "room.9", None, "in room 9").await;
    let m = ws_json(&mut ws).await;
    assert_eq!(
        (m["subject"].as_str(), m["data"].as_str()),
        (Some("room.9"), Some("in room 9"))
    );

    nats_publish(
        &nc,
        &subject,
        &[("Fanfare-Control", "unsubscribe")],
        "room.9",
    )
    .await;
    wait_metric(
        ff.admin_addr,
        r#"fanfare_direct_messages_total{result="control"}"#,
        2.0,
    )
    .await;
    publish(ff.admin_addr, "room.9", None, "not for you").await;
    publish(ff.admin_addr, "chat.lobby", None, "marker").await;
    assert_eq!(ws_json(&mut ws).await["data"], "marker", "room.9 was left");

    // A client may not publish to a connection's subject, and a `>` subscriber does
    // not see messages addressed to other connections.
    let mut spy = ws_connect(ff.edge_addr, "/chat/other").await;
    welcome_id(&mut spy).await;
    ws_send(&mut spy, json!({"type":"subscribe","subject":">","ref":1})).await;
    assert_eq!(ws_json(&mut spy).await["type"], "ack");
    ws_send(
        &mut spy,
        json!({"type":"publish","subject":subject,"data":"x","ref":2}),
    )
    .await;
    let e = ws_json(&mut spy).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    nats_publish(&nc, &subject, &[], "private").await;
    assert_eq!(ws_json(&mut ws).await["data"], "private");
    publish(ff.admin_addr, "chat.other", None, "marker 2").await;
    assert_eq!(
        ws_json(&mut spy).await["data"],
        "marker 2",
        "the spy saw nothing before it"
    );

    // Close, on SSE: fanfare.closed with the app's reason, then the stream ends.
    let client = http_client();
    let mut sse = sse_connect(&client, &format!("http://{}/chat/lobby", ff.edge_addr)).await;
    let (_, name, data) = sse.next_event().await.unwrap();
    assert_eq!(name, "welcome");
    let sse_id = serde_json::from_str::<serde_json::Value>(&data).unwrap()["connection"]
        .as_str()
        .unwrap()
        .to_string();
    nats_publish(&nc, &format!("fanfare.connection.{sse_id}"), &[], "goodbye").await;
    nats_publish(
        &nc,
        &format!("fanfare.connection.{sse_id}"),
        &[("Fanfare-Control", "close")],
        "banned for spam",
    )
    .await;
    assert_eq!(
        sse.next_event().await.unwrap().2,
        "goodbye",
        "what was sent before the close arrives"
    );
    let (_, name, data) = sse.next_event().await.unwrap();
    assert_eq!(name, "fanfare.closed");
    assert_eq!(data, r#"{"reason":"banned for spam"}"#);
    assert!(sse.next_event().await.is_none(), "the stream ended");

    // Unknown connections and bad control messages are counted, nothing else.
    nats_publish(
        &nc,
        &format!("fanfare.connection.{}.ffff", &id[..8]),
        &[],
        "nobody",
    )
    .await;
    wait_metric(
        ff.admin_addr,
        r#"fanfare_direct_messages_total{result="unknown_connection"}"#,
        1.0,
    )
    .await;
    let r = client
        .post(format!("http://{}/publish/chat.lobby", ff.admin_addr))
        .header("fanfare-control", "close")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "control only on a connection's subject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_sends_payloads_only_both_ways() {
    let nats = NatsServer::start().await;
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Admit(json!({})));
    let routes = "
routes:
  - path: /native
    transports: [ws]
    auth: { mode: none }
    ws: { protocol: raw }
    app: { connect: /rt/connect, message: /rt/message }
  - path: /native/{room}/pub
    transports: [ws]
    subjects: [\"room.{room}\"]
    auth: { mode: none }
    ws: { protocol: raw, publish_to: \"room.{room}.in\" }
  - path: /silent
    transports: [ws]
    subjects: [silent]
    auth: { mode: none }
    ws: { protocol: raw }
";
    let ff = start_fanfare(&(base_yaml(&app.url(), Some(&nats.url())) + routes)).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();

    let mut ws = ws_connect(ff.edge_addr, "/native").await;
    ws.send(Message::text("Hello Server!")).await.unwrap();
    match ws_next(&mut ws).await.unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "you said: Hello Server!"),
        other => panic!("{other:?}"),
    }
    let call = app.messages.lock().unwrap()[0].clone();
    assert_eq!(&call.body[..], b"Hello Server!");
    let id = call.header("fanfare-connection").unwrap();
    nats_publish(
        &nc,
        &format!("fanfare.connection.{id}"),
        &[],
        "{\"verbatim\": true}",
    )
    .await;
    match ws_next(&mut ws).await.unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "{\"verbatim\": true}"),
        other => panic!("{other:?}"),
    }
    nc.publish(
        format!("fanfare.connection.{id}"),
        vec![0u8, 159, 146, 150].into(),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();
    match ws_next(&mut ws).await.unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], &[0u8, 159, 146, 150]),
        other => panic!("{other:?}"),
    }

    // publish_to: every frame is published to the rendered subject.
    let mut tap = nc.subscribe("room.>").await.unwrap();
    nc.flush().await.unwrap();
    let mut ws = ws_connect(ff.edge_addr, "/native/r1/pub").await;
    ws.send(Message::text("typed")).await.unwrap();
    let m = next_message(&mut tap).await;
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("room.r1.in", &b"typed"[..])
    );
    publish(ff.admin_addr, "room.r1", None, "plain text").await;
    loop {
        match ws_next(&mut ws).await.unwrap() {
            Message::Text(t) => {
                assert_eq!(t.as_str(), "plain text");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
    }

    // A raw route that takes no client messages closes with 1008 instead of
    // swallowing them.
    let mut ws = ws_connect(ff.edge_addr, "/silent").await;
    ws.send(Message::text("anyone?")).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, 1008);
}

#[test]
fn app_config_is_checked() {
    let parse = |route: &str| {
        fanfare::config::Config::parse(&format!(
            "routes:\n  - path: /r\n    subjects: [s]\n    auth: {{ mode: none }}\n{route}"
        ))
    };
    assert!(parse("    app: { connect: /c, timeout: 2s, max_in_flight: 4 }\n").is_ok());
    let err = |route: &str| format!("{:?}", parse(route).expect_err(route));
    assert!(err("    app: { connect: c }\n").contains("must be a path"));
    assert!(err("    app: { timeout: 0s }\n").contains("app.timeout"));
    assert!(err("    app: { max_in_flight: 0 }\n").contains("max_in_flight"));
    assert!(err("    app: { conect: /c }\n").contains("conect"));
    assert!(err("    ws: { publish_to: \"a.b\" }\n").contains("protocol: raw"));
    assert!(err("    ws: { protocol: raw, publish_to: \"a.{nope}\" }\n").contains("publish_to"));
    assert!(err("    ws: { protocol: jsonish }\n").contains("jsonish"));
}

/// The README's example app (the ```python block of the full-duplex section), run as
/// written behind fanfare: connect, rpc, fan-out and disconnect all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_app_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Full duplex").expect("the section")..];
    let start = section.find("```python\n").expect("the example app") + "```python\n".len();
    let code = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, code).unwrap();

    let port = free_port();
    let routes = "
routes:
  - path: /chat/{room}
    transports: [ws, sse]
    subjects: [\"chat.{room}\"]
    auth: { mode: none }
    app:
      connect: /realtime/connect
      message: /realtime/message
      disconnect: /realtime/disconnect
";
    let ff = start_fanfare(&(base_yaml(&format!("http://127.0.0.1:{port}"), None) + routes)).await;
    let python = std::env::var("FANFARE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut app = tokio::process::Command::new(python)
        .arg(&script)
        .env("PORT", port.to_string())
        .env("FANFARE_ADMIN", ff.admin_addr.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("the example app listening", DEADLINE, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;

    // connect: the welcome names the connection, which joined its private subject.
    let mut a = ws_connect(ff.edge_addr, "/chat/lobby").await;
    let mut b = ws_connect(ff.edge_addr, "/chat/lobby").await;
    let w = ws_json(&mut a).await;
    assert_eq!(w["event"], "welcome", "{w}");
    let id = w["data"]["you"].as_str().unwrap().to_string();
    assert_eq!(ws_json(&mut b).await["event"], "welcome");
    publish(
        ff.admin_addr,
        &format!("user.{}", id.replace('.', "-")),
        None,
        "just you",
    )
    .await;
    assert_eq!(ws_json(&mut a).await["data"], "just you");

    // rpc: the app stores, fans out to the room, and answers.
    ws_send(
        &mut a,
        json!({"type":"rpc","data":{"room":"lobby","text":"hi"},"ref":1}),
    )
    .await;
    let mut got = vec![ws_json(&mut a).await, ws_json(&mut a).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0]["type"], "message", "{got:?}");
    assert_eq!(got[0]["data"], json!({"from": id, "text": "hi"}));
    assert_eq!(
        got[1],
        json!({"type":"reply","ref":1,"status":200,"data":{"stored":true}})
    );
    let m = ws_json(&mut b).await;
    assert_eq!(
        (m["event"].as_str(), m["data"]["text"].as_str()),
        (Some("said"), Some("hi"))
    );

    // disconnect: the app prints who left and why.
    a.close(None).await.unwrap();
    finish_close(&mut a).await;
    let mut out = tokio::io::BufReader::new(app.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("the app prints the disconnect")
    .unwrap();
    assert!(
        line.starts_with(&format!("left: {id} client_closed ")),
        "{line}"
    );
}
