//! Socket.IO: socket.io-client 4 (the real one, in Node.js) against fanfare, on every
//! transport setting, with a real nats-server and a real app; and the Engine.IO
//! protocol's rules checked packet by packet with plain HTTP and WebSocket clients.

mod support;

use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use support::*;

/// The chat of Socket.IO's "get started", as a fanfare config: what a client emits
/// as `chat message` is published to `chat`, which every socket of `/` subscribes to.
fn chat(app: &CallbackApp, extra: &str) -> String {
    format!(
        "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: {{ mode: none }}
    allow_publish: [\"chat\"]
    app: {{ message: {}/rt/message }}
    socketio:
      namespaces:
        \"/\":
          subjects: [chat, news]
          emit: {{ \"chat message\": chat }}
        \"/custom\": {{}}
{extra}",
        app.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_talks_to_fanfare_on_every_transport_setting() {
    let nats = NatsServer::start().await;
    let app = CallbackApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), Some(&nats.url())) + &chat(&app, ""))).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut tap = nc.subscribe("chat").await.unwrap();
    nc.flush().await.unwrap();
    let url = format!("http://{}", ff.edge_addr);
    for (transports, last) in [
        (json!(null), "websocket"),
        (json!(["polling"]), "polling"),
        (json!(["websocket"]), "websocket"),
    ] {
        let mut c = SioClient::start(&json!({"url": url, "transports": transports}));
        // The connect, and with the default transports the upgrade (in either order).
        let (mut id, mut upgraded) = (None, !transports.is_null());
        while id.is_none() || !upgraded {
            let v = c.next().await;
            match v["ev"].as_str() {
                Some("connect") => id = Some(v["id"].as_str().unwrap().to_string()),
                Some("upgrade") => {
                    assert_eq!(v["transport"], "websocket");
                    upgraded = true;
                }
                Some("open") => assert_eq!(
                    v["transport"],
                    if transports == json!(["websocket"]) {
                        "websocket"
                    } else {
                        "polling"
                    }
                ),
                _ => panic!("{v}"),
            }
        }
        let id = id.unwrap();
        let _ = last;
        // Events from NATS: JSON as JSON, a spread array as several arguments,
        // other bytes as a binary argument.
        nats_publish(
            &nc,
            "news",
            &[("Fanfare-Event", "news")],
            br#"{"n":1}"#.to_vec(),
        )
        .await;
        let e = c.until("event").await;
        assert_eq!(
            (e["name"].clone(), e["args"].clone()),
            (json!("news"), json!([{"n": 1}])),
            "{transports}"
        );
        nats_publish(
            &nc,
            "news",
            &[("Fanfare-Event", "many"), ("Fanfare-Args", "spread")],
            br#"[1,"two",{"three":3}]"#.to_vec(),
        )
        .await;
        assert_eq!(
            c.until("event").await["args"],
            json!([1, "two", {"three": 3}])
        );
        nats_publish(
            &nc,
            "news",
            &[("Fanfare-Event", "blob")],
            vec![0, 159, 146, 150],
        )
        .await;
        assert_eq!(
            c.until("event").await["args"],
            json!([{"binary": [0, 159, 146, 150]}])
        );

        // An emit is published with its event name and arguments, and comes back to
        // every socket of the chat (this one included) with the same arguments.
        c.emit("chat message", json!(["hello", {"from": last}]), false)
            .await;
        let m = next_message(&mut tap).await;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
            json!(["hello", {"from": last}])
        );
        let h = m.headers.unwrap();
        assert_eq!(h.get("Fanfare-Event").unwrap().as_str(), "chat message");
        assert_eq!(h.get("Fanfare-Connection").unwrap().as_str(), id);
        let e = c.until("event").await;
        assert_eq!(
            (e["name"].clone(), e["args"].clone()),
            (json!("chat message"), json!(["hello", {"from": last}]))
        );

        // Bytes round-trip: published as {"_binary": base64}, and back as bytes.
        c.emit("chat message", json!([{"binary": [1, 2, 3]}]), false)
            .await;
        let m = next_message(&mut tap).await;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
            json!([{"_binary": "AQID"}])
        );
        let e = c.until("event").await;
        assert_eq!(e["args"], json!([{"binary": [1, 2, 3]}]));

        // An emit with an acknowledgement is the app's: its answer is the ack.
        c.emit("ask", json!(["q", 2]), true).await;
        let a = c.until("ack").await;
        assert_eq!(
            a["args"],
            json!([{"echo": ["q", 2], "connection": id}]),
            "{transports}"
        );
        let call = app.messages.lock().unwrap().last().cloned().unwrap();
        assert_eq!(call.header("fanfare-event").as_deref(), Some("ask"));

        // An emit that maps nowhere gets an error event, never silence.
        c.emit("nowhere", json!([1]), false).await;
        let e = c.until("event").await;
        assert_eq!(e["name"], "fanfare:error");
        assert_eq!(
            (e["args"][0]["code"].clone(), e["args"][0]["event"].clone()),
            (json!("not_mapped"), json!("nowhere"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_events_arrive_in_order_across_the_upgrade() {
    let nats = NatsServer::start().await;
    let app = CallbackApp::start().await;
    // A queue that holds the whole burst: what is tested is that nothing is lost
    // between the queue, the session's outbox (past its 1,024 packets) and the polls.
    let queue = "    queue: { messages: 4096, bytes: 16777216 }\n";
    let ff = start_fanfare(&(base_yaml(&app.url(), Some(&nats.url())) + &chat(&app, queue))).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    for transports in [json!(null), json!(["polling"])] {
        let mut c = SioClient::start(
            &json!({"url": format!("http://{}", ff.edge_addr), "transports": transports}),
        );
        c.until("connect").await;
        // Published while the client may still be polling and upgrading.
        for n in 0..3000u32 {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Fanfare-Event", "tick");
            h.insert("Fanfare-Args", "spread");
            nc.publish_with_headers("news", h, format!("[{n},\"n{n}\"]").into())
                .await
                .unwrap();
        }
        nc.flush().await.unwrap();
        for n in 0..1000u32 {
            let e = c.until("event").await;
            assert_eq!(
                e["args"],
                json!([n, format!("n{n}")]),
                "{transports}: event {n}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_carry_the_refusal() {
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Refuse(
        403,
        r#"{"message":"banned","until":"tomorrow"}"#,
    ));
    let routes = format!(
        "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: {{ mode: none }}
    app: {{ connect: {}/rt/connect }}
",
        app.url()
    );
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &routes)).await;
    let url = format!("http://{}", ff.edge_addr);
    for transports in [json!(["polling"]), json!(["websocket"])] {
        let mut c = SioClient::start(
            &json!({"url": url, "transports": transports, "auth": {"token": "t1"}}),
        );
        let e = c.until("connect_error").await;
        assert_eq!(e["message"], "banned", "{e}");
        assert_eq!(
            app.connects.lock().unwrap().last().unwrap().json()["auth"],
            json!({"token": "t1"})
        );
        assert_eq!(
            e["data"],
            json!({"status": 403, "body": {"message": "banned", "until": "tomorrow"}})
        );
        let body = app.connects.lock().unwrap().last().unwrap().json();
        assert_eq!(
            (body["transport"].clone(), body["params"].clone()),
            (json!("socketio"), json!({"namespace": "/"}))
        );
        let mut c =
            SioClient::start(&json!({"url": url, "transports": transports, "nsp": "/nope"}));
        assert_eq!(
            c.until("connect_error").await["message"],
            "Invalid namespace"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_auth_payload_authorizes_the_namespace() {
    let routes = format!(
        "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: {{ mode: jwt, algorithms: [HS256], secret: {SECRET} }}
    socketio:
      namespaces:
        \"/\": {{ subjects: [\"user.{{claims.sub}}\"] }}
"
    );
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &routes)).await;
    let url = format!("http://{}", ff.edge_addr);
    let mut c = SioClient::start(&json!({"url": url, "transports": ["websocket"]}));
    let e = c.until("connect_error").await;
    assert!(e["message"].as_str().unwrap().contains("token"), "{e}");
    let token = hs256(&json!({"sub": "u7", "exp": now() + 600}));
    let mut c = SioClient::start(&json!({"url": url, "auth": {"token": token}}));
    c.until("connect").await;
    publish(ff.admin_addr, "user.u7", Some("private"), "for u7").await;
    let e = c.until("event").await;
    assert_eq!(
        (e["name"].clone(), e["args"].clone()),
        (json!("private"), json!(["for u7"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_reconnects_by_itself_after_fanfare_restarts() {
    // The first instance binds ports the OS picks; the second takes the same ones.
    let yaml = |port: u16, admin: u16| {
        format!(
            "listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:1\nadmin: {{ listen: 127.0.0.1:{admin} }}\nshutdown: {{ grace: 2s, drain: 500ms }}\n\
routes:\n  - path: /socket.io/\n    transports: [socketio]\n    auth: {{ mode: none }}\n    socketio:\n      namespaces:\n        \"/\": {{ subjects: [news] }}\n"
        )
    };
    let mut first = FanfareProcess::start(&yaml(0, 0)).await;
    let (port, admin) = (first.edge.port(), first.admin.port());
    let mut c =
        SioClient::start(&json!({"url": format!("http://127.0.0.1:{port}"), "reconnection": true}));
    c.until("connect").await;
    first.signal("TERM");
    first.wait_exit(DEADLINE).await;
    let d = c.until("disconnect").await;
    assert!(
        ["transport close", "transport error"].contains(&d["reason"].as_str().unwrap()),
        "{d}"
    );
    let _second = FanfareProcess::start(&yaml(port, admin)).await;
    c.until("connect").await;
    publish(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        "news",
        Some("back"),
        "again",
    )
    .await;
    assert_eq!(c.until("event").await["args"], json!(["again"]));
}

// --- Engine.IO, packet by packet (the rules of the protocol's own test suite) ---

const EIO: &str = "
routes:
  - path: /engine.io/
    transports: [socketio]
    auth: { mode: none }
    socketio: { ping_interval: 300ms, ping_timeout: 200ms }
";

async fn eio() -> (fanfare::Handle, String) {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + EIO)).await;
    let base = format!("http://{}/engine.io/", ff.edge_addr);
    (ff, base)
}

/// Opens the upgrade's WebSocket at `path` and probes it (`2probe` answered `3probe`).
async fn probe(addr: std::net::SocketAddr, path: &str) -> Ws {
    let mut ws = ws_connect(addr, path).await;
    ws.send(Message::text("2probe")).await.unwrap();
    let Message::Text(t) = ws_next(&mut ws).await.unwrap() else {
        panic!("the probe's answer is a text frame")
    };
    assert_eq!(t.as_str(), "3probe");
    ws
}

async fn handshake(base: &str) -> String {
    let r = http_client()
        .get(format!("{base}?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(t.strip_prefix('0').unwrap()).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_handshakes_and_refuses_bad_queries() {
    let (ff, base) = eio().await;
    let c = http_client();
    let t = c
        .get(format!("{base}?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(t.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(
        (
            v["upgrades"].clone(),
            v["pingInterval"].clone(),
            v["pingTimeout"].clone(),
            v["maxPayload"].clone()
        ),
        (
            json!(["websocket"]),
            json!(300),
            json!(200),
            json!(1_000_000)
        )
    );
    for q in [
        "?transport=polling",
        "?EIO=abc&transport=polling",
        "?EIO=4",
        "?EIO=4&transport=abc",
    ] {
        let r = c.get(format!("{base}{q}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    for m in [reqwest::Method::POST, reqwest::Method::PUT] {
        let r = c
            .request(m.clone(), format!("{base}?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{m}");
    }
    let r = c
        .get(format!("{base}?EIO=4&transport=polling&sid=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"code": 1, "message": "Session ID unknown"})
    );
    // Over WebSocket: the open packet is the first frame, with no upgrades.
    let mut ws = ws_connect(ff.edge_addr, "/engine.io/?EIO=4&transport=websocket").await;
    let Message::Text(t) = ws_next(&mut ws).await.unwrap() else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str().strip_prefix('0').unwrap()).unwrap();
    assert_eq!(v["upgrades"], json!([]));
}

/// A poll of `url` started and seen held by fanfare (`fanfare_socketio_polls`); its
/// answer's text when it comes.
async fn held_poll(
    ff: &fanfare::Handle,
    c: &reqwest::Client,
    url: &str,
) -> tokio::task::JoinHandle<String> {
    let before = metric(ff.admin_addr, "fanfare_socketio_polls")
        .await
        .unwrap();
    let poll = tokio::spawn({
        let (c, url) = (c.clone(), url.to_string());
        async move { c.get(&url).send().await.unwrap().text().await.unwrap() }
    });
    wait_metric(ff.admin_addr, "fanfare_socketio_polls", before + 1.0).await;
    poll
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_polling_pings_closes_on_bad_input_and_on_duplicate_polls() {
    let (ff, base) = eio().await;
    let c = http_client();
    // The server pings; the client's pong keeps the session.
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    for _ in 0..3 {
        assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "2");
        let r = c.post(&url).body("3").send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (200, "ok".to_string())
        );
    }
    // No pong: closed after pingInterval + pingTimeout (the next poll gets the ping,
    // and no pong follows).
    assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "2");
    let started = std::time::Instant::now();
    wait_for(
        "the session closed for its missing pong",
        DEADLINE,
        || async {
            let r = c.get(&url).send().await.unwrap();
            (r.status() == 400).then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "not before pingTimeout"
    );

    // A bad payload closes the session.
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    assert_eq!(c.post(&url).body("abc").send().await.unwrap().status(), 400);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 400);

    // Two polls at once: the first gets a close packet, the second a 400, then the
    // session is gone.
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    let first = held_poll(&ff, &c, &url).await;
    let second = c.get(format!("{url}&t=burst")).send().await.unwrap();
    assert_eq!(second.status(), 400);
    assert_eq!(first.await.unwrap(), "1");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 400);

    // The client closes: a pending poll answers noop.
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    let pending = held_poll(&ff, &c, &url).await;
    assert_eq!(c.post(&url).body("1").send().await.unwrap().status(), 200);
    assert_eq!(pending.await.unwrap(), "6");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_upgrades_from_polling_to_websocket() {
    let (ff, base) = eio().await;
    let c = http_client();
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    let mut ws = probe(
        ff.edge_addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    // The pending (or next) poll ends with a noop.
    assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "6");
    ws.send(Message::text("5")).await.unwrap();
    // Upgraded: the server's pings come over WebSocket, HTTP is refused, and a second
    // WebSocket for the session is closed without harming it.
    loop {
        match ws_next(&mut ws).await.unwrap() {
            Message::Text(t) if t.as_str() == "2" => break,
            Message::Text(t) if t.as_str() == "6" => continue,
            other => panic!("{other:?}"),
        }
    }
    ws.send(Message::text("3")).await.unwrap();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 400);
    let mut second = ws_connect(
        ff.edge_addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    assert!(matches!(
        ws_next(&mut second).await,
        Some(Message::Close(_)) | None
    ));
    match ws_next(&mut ws).await.unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "2", "the session lives on"),
        other => panic!("{other:?}"),
    }
}

// --- No sticky sessions: two instances, every request alternating between them ---

const TWO: &str = "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: { mode: none }
    allow_publish: [chat]
    socketio:
      namespaces:
        \"/\": { subjects: [news], emit: { said: chat } }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_and_its_upgrade_work_across_two_instances() {
    let nats = NatsServer::start().await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url())) + TWO;
    let (a, b) = (start_fanfare(&yaml).await, start_fanfare(&yaml).await);
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let c = http_client();
    let url = |ff: &fanfare::Handle, sid: &str| {
        format!(
            "http://{}/socket.io/?EIO=4&transport=polling&sid={sid}",
            ff.edge_addr
        )
    };
    let sid = handshake(&format!("http://{}/socket.io/", a.edge_addr)).await;
    // CONNECT through b, its answer polled through b, then a.
    let r = c.post(url(&b, &sid)).body("40").send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok".to_string())
    );
    let t = c
        .get(url(&b, &sid))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(t.starts_with("40{\"sid\":"), "{t}");
    // Events: published, then polled alternately.
    for (i, ff) in [&a, &b, &a, &b].into_iter().enumerate() {
        nats_publish(
            &nc,
            "news",
            &[("Fanfare-Event", "n")],
            format!("{i}").into_bytes(),
        )
        .await;
        let t = c
            .get(url(ff, &sid))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(t, format!("42[\"n\",{i}]"), "poll {i}");
    }
    // An emit through b.
    let mut tap = nc.subscribe("chat").await.unwrap();
    nc.flush().await.unwrap();
    let r = c
        .post(url(&b, &sid))
        .body("42[\"said\",\"hi\"]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = next_message(&mut tap).await;
    assert_eq!(&m.payload[..], b"[\"hi\"]");

    // The upgrade lands on b: probe, the pending poll (on a) ends with a noop, then
    // the session lives on over b's WebSocket.
    let mut ws = probe(
        b.edge_addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    assert_eq!(
        c.get(url(&a, &sid))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "6"
    );
    ws.send(Message::text("5")).await.unwrap();
    nats_publish(
        &nc,
        "news",
        &[("Fanfare-Event", "n")],
        b"\"over ws\"".to_vec(),
    )
    .await;
    loop {
        match ws_next(&mut ws).await.unwrap() {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => {
                assert_eq!(t.as_str(), "42[\"n\",\"over ws\"]");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    ws.send(Message::text("42[\"said\",\"from ws\"]"))
        .await
        .unwrap();
    let m = next_message(&mut tap).await;
    assert_eq!(&m.payload[..], b"[\"from ws\"]");
    assert_eq!(
        c.get(url(&a, &sid)).send().await.unwrap().status(),
        400,
        "HTTP after the upgrade"
    );
    for (ff, role) in [(&b, "sent"), (&a, "served")] {
        assert!(
            metric(
                ff.admin_addr,
                &format!("fanfare_socketio_relays_total{{role=\"{role}\"}}")
            )
            .await
            .unwrap()
                >= 5.0,
            "{role}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_owner_died_is_refused_as_unknown() {
    let nats = NatsServer::start().await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url())) + TWO;
    let mut owner = FanfareProcess::start(&yaml).await;
    let b = start_fanfare(&yaml).await;
    let sid = handshake(&format!("http://{}/socket.io/", owner.edge)).await;
    let url = format!(
        "http://{}/socket.io/?EIO=4&transport=polling&sid={sid}",
        b.edge_addr
    );
    let r = http_client().post(&url).body("40").send().await.unwrap();
    assert_eq!(r.status(), 200, "relayed while the owner lives");
    owner.signal("KILL");
    owner.wait_exit(DEADLINE).await;
    let r = http_client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"code": 1, "message": "Session ID unknown"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_behind_a_balancer_with_no_affinity() {
    let nats = NatsServer::start().await;
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url())) + TWO;
    let (a, b) = (start_fanfare(&yaml).await, start_fanfare(&yaml).await);
    let lb = Balancer::start(vec![a.edge_addr, b.edge_addr]).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    for transports in [json!(["polling"]), json!(null)] {
        let mut c = SioClient::start(&json!({
            "url": format!("http://{}", lb.addr),
            "transports": transports,
            "fresh_connections": true,
        }));
        c.until("connect").await;
        for n in 0..20u32 {
            nats_publish(
                &nc,
                "news",
                &[("Fanfare-Event", "n")],
                format!("{n}").into_bytes(),
            )
            .await;
            let e = c.until("event").await;
            assert_eq!(e["args"], json!([n]), "{transports}");
        }
        c.emit("said", json!(["bye"]), false).await;
    }
    assert!(
        lb.count(0) > 2 && lb.count(1) > 2,
        "{} / {}",
        lb.count(0),
        lb.count(1)
    );
    for ff in [&a, &b] {
        let sent = metric(
            ff.admin_addr,
            "fanfare_socketio_relays_total{role=\"sent\"}",
        )
        .await
        .unwrap();
        let served = metric(
            ff.admin_addr,
            "fanfare_socketio_relays_total{role=\"served\"}",
        )
        .await
        .unwrap();
        assert!(sent + served > 0.0, "both instances took part");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_packets_by_hand() {
    let app = CallbackApp::start().await;
    app.answer_connects(ConnectAnswer::Welcome(vec![]));
    let routes = format!(
        "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: {{ mode: none }}
    app: {{ connect: {}/rt/connect }}
    socketio: {{ connect_timeout: 300ms, namespaces: {{ \"/\": {{}}, \"/custom\": {{}} }} }}
",
        app.url()
    );
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &routes)).await;
    let open = || ws_connect(ff.edge_addr, "/socket.io/?EIO=4&transport=websocket");
    let text = |m: Message| match m {
        Message::Text(t) => t.as_str().to_string(),
        other => panic!("{other:?}"),
    };
    // CONNECT to a custom namespace: its {sid}, then the app's first event, apart.
    let mut ws = open().await;
    assert!(text(ws_next(&mut ws).await.unwrap()).starts_with("0{"));
    ws.send(Message::text("40/custom,{\"token\":\"abc\"}"))
        .await
        .unwrap();
    let t = text(ws_next(&mut ws).await.unwrap());
    assert!(t.starts_with("40/custom,{\"sid\":"), "{t}");
    let t = text(ws_next(&mut ws).await.unwrap());
    assert!(t.starts_with("42/custom,[\"welcome\","), "{t}");
    assert_eq!(
        app.connects.lock().unwrap()[0].json()["auth"],
        json!({"token": "abc"})
    );
    // An unknown namespace, then a packet that is not Socket.IO: refused, closed.
    ws.send(Message::text("40/random,")).await.unwrap();
    assert_eq!(
        text(ws_next(&mut ws).await.unwrap()),
        "44/random,{\"message\":\"Invalid namespace\"}"
    );
    ws.send(Message::text("4abc")).await.unwrap();
    loop {
        match ws_next(&mut ws).await {
            None | Some(Message::Close(_)) => break,
            Some(Message::Text(t)) if t.as_str() == "1" || t.as_str() == "2" => continue,
            Some(other) => panic!("{other:?}"),
        }
    }
    // No CONNECT within connect_timeout: closed.
    let mut ws = open().await;
    let started = std::time::Instant::now();
    loop {
        match ws_next(&mut ws).await {
            None | Some(Message::Close(_)) => break,
            Some(_) => continue,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_state_recovery_replays_what_a_restart_missed() {
    let nats = NatsServer::start_jetstream().await;
    create_stream(&nats.url(), "FEED", &["feed"]).await;
    // The first instance binds ports the OS picks; the second takes the same ones.
    let yaml = |port: u16, admin: u16| {
        format!(
            "listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:1\nadmin: {{ listen: 127.0.0.1:{admin} }}\nnats: {{ url: \"{}\" }}\nshutdown: {{ grace: 2s, drain: 200ms }}\n\
routes:\n  - path: /socket.io/\n    transports: [socketio]\n    auth: {{ mode: none }}\n    history: {{ jetstream: FEED }}\n    socketio:\n      recovery: true\n      namespaces:\n        \"/\": {{ subjects: [feed] }}\n",
            nats.url()
        )
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let send = |n: u32| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Fanfare-Event", "n");
            js.publish_with_headers("feed", h, format!("{n}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let mut first = FanfareProcess::start(&yaml(0, 0)).await;
    let (port, admin) = (first.edge.port(), first.admin.port());
    wait_for("fanfare ready", DEADLINE, || async {
        (admin_get(format!("127.0.0.1:{admin}").parse().unwrap(), "/readyz")
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    let mut c =
        SioClient::start(&json!({"url": format!("http://127.0.0.1:{port}"), "reconnection": true}));
    assert_eq!(c.until("connect").await["recovered"], false);
    for n in 0..3 {
        send(n).await;
        let e = c.until("event").await;
        // The cursor rides as the last argument (the client keeps it as its offset).
        assert_eq!(e["args"][0], n, "{e}");
        assert_eq!(
            e["args"][1],
            json!((n + 1).to_string()),
            "the stream sequence: {e}"
        );
    }
    first.signal("TERM");
    first.wait_exit(DEADLINE).await;
    c.until("disconnect").await;
    for n in 3..5 {
        send(n).await;
    }
    let _second = FanfareProcess::start(&yaml(port, admin)).await;
    let back = c.until("connect").await;
    assert_eq!(back["recovered"], true, "{back}");
    for n in 3..5 {
        let e = c.until("event").await;
        assert_eq!(e["args"][0], n, "missed while fanfare was down: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_only_messages_go_to_the_app_in_order_and_come_back() {
    let app = CallbackApp::start().await;
    let routes = "
routes:
  - path: /engine.io/
    transports: [socketio]
    auth: { mode: none }
    app: { message: /rt/message }
    socketio: { engine_only: true, ping_interval: 10s, ping_timeout: 5s }
";
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + routes)).await;
    let base = format!("http://{}/engine.io/", ff.edge_addr);
    let c = http_client();
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    // Three messages in one POST: answered `ok` once the app has answered them all,
    // so the next poll carries the three answers, in order.
    let r = c.post(&url).body("4a\x1e4b\x1e4c").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "4you said: a\x1e4you said: b\x1e4you said: c"
    );
    let bodies: Vec<String> = app
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(bodies, ["a", "b", "c"]);
    // No namespace is ever connected, and the session lives on (no connect timeout).
    let r = c.post(&url).body("3").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The client's own close racing a poll: the poll that comes after gets its noop,
    // the next one a 400.
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    assert_eq!(c.post(&url).body("1").send().await.unwrap().status(), 200);
    assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "6");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 400);
}

/// A polling client that never polls cannot make fanfare hold unbounded answers for
/// it: past the outbox's hard bound its session is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_polls_cannot_grow_its_outbox_without_bound() {
    let routes = "
routes:
  - path: /socket.io/
    transports: [socketio]
    auth: { mode: none }
    socketio: { namespaces: { \"/\": {} } }
";
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + routes)).await;
    let base = format!("http://{}/socket.io/", ff.edge_addr);
    let c = http_client();
    let sid = handshake(&base).await;
    let url = format!("{base}?EIO=4&transport=polling&sid={sid}");
    assert_eq!(c.post(&url).body("40").send().await.unwrap().status(), 200);
    // Each unmapped emit is answered with an error event; nobody takes them.
    let burst = vec!["42[\"nowhere\",1]"; 500].join("\x1e");
    let mut refused = false;
    for _ in 0..40 {
        let r = c.post(&url).body(burst.clone()).send().await.unwrap();
        if r.status() == 400 {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "20,000 answers were held for a client that never polled"
    );
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        400,
        "the session is closed"
    );
}

/// A session opened over WebSocket runs in one task that holds the socket: it still
/// pings, keeps a client that answers, closes one that stops answering, and closes a
/// client that stops reading as a slow consumer while another client gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_pings_and_closes_the_silent_and_the_stalled() {
    let routes = "
routes:
  - path: /engine.io/
    transports: [socketio]
    auth: { mode: none }
    socketio: { ping_interval: 300ms, ping_timeout: 200ms, engine_only: true }
  - path: /socket.io/
    transports: [socketio]
    auth: { mode: none }
    slow_consumer: disconnect
    queue: { messages: 16, bytes: 1048576 }
    socketio: { namespaces: { \"/\": { subjects: [feed] } } }
";
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + routes)).await;
    let text = |m: Option<Message>| match m {
        Some(Message::Text(t)) => Some(t.as_str().to_string()),
        _ => None,
    };

    // Pings over the socket; answered pongs keep the session past pingTimeout.
    let mut ws = ws_connect(ff.edge_addr, "/engine.io/?EIO=4&transport=websocket").await;
    assert!(text(ws_next(&mut ws).await).unwrap().starts_with("0{"));
    for _ in 0..3 {
        assert_eq!(text(ws_next(&mut ws).await).as_deref(), Some("2"));
        ws.send(Message::text("3")).await.unwrap();
    }
    // The next ping goes unanswered: the session is closed.
    assert_eq!(text(ws_next(&mut ws).await).as_deref(), Some("2"));
    loop {
        match ws_next(&mut ws).await {
            None | Some(Message::Close(_)) => break,
            Some(Message::Text(t)) if t.as_str() == "1" || t.as_str() == "2" => continue,
            Some(other) => panic!("{other:?}"),
        }
    }
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"ping_timeout\",transport=\"socketio\"}",
        1.0,
    )
    .await;

    // A client that reads nothing (a 4 KiB receive buffer) and one that reads all.
    let path = "/socket.io/?EIO=4&transport=websocket";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(ff.edge_addr).await.unwrap();
    let (mut stalled, _) =
        tokio_tungstenite::client_async(format!("ws://{}{path}", ff.edge_addr), tcp)
            .await
            .unwrap();
    let mut good = ws_connect(ff.edge_addr, path).await;
    for ws in [&mut stalled, &mut good] {
        assert!(text(ws_next(ws).await).unwrap().starts_with("0{"));
        ws.send(Message::text("40")).await.unwrap();
        assert!(text(ws_next(ws).await).unwrap().starts_with("40{\"sid\""));
    }
    wait_metric(
        ff.admin_addr,
        "fanfare_connections{transport=\"socketio\"}",
        2.0,
    )
    .await;
    let reader = tokio::spawn(async move {
        for i in 0..SLOW_MESSAGES {
            let t = loop {
                let t = text(ws_next(&mut good).await).expect("the good client keeps its socket");
                if t != "2" {
                    break t;
                }
                good.send(Message::text("3")).await.unwrap();
            };
            let prefix = format!("42[\"message\",\"{i:06}:");
            assert!(t.starts_with(&prefix), "in order: {i} is {}", &t[..20]);
        }
    });
    publish_numbered(ff.admin_addr, "feed", SLOW_MESSAGES).await;
    reader.await.unwrap();
    wait_metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"slow_consumer\",transport=\"socketio\"}",
        1.0,
    )
    .await;
    drop(stalled);
}

const SLOW_MESSAGES: usize = 600;
