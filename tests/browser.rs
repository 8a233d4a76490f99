//! In a real browser (Debian's `chromium`, driven over the DevTools protocol): an
//! EventSource opened while NATS is down stays open through the outage and, without a
//! reload, receives what the app publishes once NATS is back (issue 14, item 2); the
//! bare `WebSocket` snippet of MDN talks to a raw-mode route (issue 15); Socket.IO's
//! "get started" chat works in two pages with a config and no app code (issue 16).
//!
//! Needs `chromium` (`apt-get install chromium`; `scripts/test` installs it when run as
//! root). Without it the test says so and checks nothing else.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use support::*;

/// A headless Chromium and one page, over the DevTools protocol.
struct Browser {
    child: tokio::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn binary() -> Option<&'static str> {
        [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    }

    async fn open(bin: &str, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                    return ws.trim().to_string();
                }
            }
            panic!("chromium exited before it listened");
        })
        .await
        .expect("chromium's DevTools endpoint within the deadline");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = endpoint
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(endpoint.as_str(), tcp)
            .await
            .unwrap();
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a DevTools command and returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a DevTools answer within the deadline")
                .expect("DevTools connection open")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let session = self.session.clone();
        let r = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": format!("JSON.stringify({expr})"), "returnByValue": true }),
            )
            .await;
        match r["result"]["value"].as_str() {
            Some(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }
}

/// Chromium's binary, or `None` after saying the test is skipped and why.
fn chromium() -> Option<&'static str> {
    let bin = Browser::binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED: no chromium; install the Debian package `chromium` (scripts/test does, as root)"
        );
    }
    bin
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_opened_during_a_nats_outage_receives_without_a_reload() {
    let Some(bin) = chromium() else { return };
    use async_nats::jetstream;
    let mut nats = NatsServer::start_jetstream().await;
    create_stream(&nats.url(), "LIVE", &["live.>"]).await;
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), Some(&nats.url()))
        + "routes:\n  - path: /live/{id}\n    subjects: [\"live.{id}\"]\n    auth: { mode: none }\n    history: { jetstream: LIVE }\n";
    let ff = start_fanfare(&yaml).await;
    stop_until_unready(&mut nats, ff.admin_addr).await;
    // The page (served by the app through fanfare) opens its EventSource now.
    let mut browser = Browser::open(bin, &format!("http://{}/page/live", ff.edge_addr)).await;
    let deadline = Instant::now() + DEADLINE;
    while browser.eval("window.es && window.es.readyState").await != json!(1) {
        assert!(Instant::now() < deadline, "the EventSource never opened");
    }
    // The outage lasts 30 s: the EventSource stays open the whole time.
    let outage_ends = Instant::now() + Duration::from_secs(30);
    while Instant::now() < outage_ends {
        assert_eq!(
            browser.eval("window.es.readyState").await,
            json!(1),
            "closed during the outage"
        );
        let pace = tokio::time::Instant::now() + Duration::from_millis(500);
        tokio::time::sleep_until(pace).await;
    }
    assert_eq!(
        browser.eval("window.seen.opens").await,
        json!(1),
        "never re-opened: one connection"
    );
    // NATS returns and the app publishes: the page gets every message, in order.
    nats.restart().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for n in 0..10u64 {
        js.publish("live.1", json!({ "n": n }).to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = browser.eval("window.seen.messages").await;
        if seen.as_array().is_some_and(|a| a.len() >= 10) {
            assert_eq!(seen, json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page got {seen} after NATS came back"
        );
    }
    assert_eq!(browser.eval("window.es.readyState").await, json!(1));
    assert_eq!(
        browser.eval("window.seen.errors").await,
        json!(0),
        "no error event, no reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_browser_websocket_talks_to_the_app_through_a_raw_route() {
    let Some(bin) = chromium() else { return };
    let app = CallbackApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + "routes:\n  - path: /native\n    transports: [ws]\n    auth: { mode: none }\n    ws: { protocol: raw }\n    app: { connect: /rt/connect, message: /rt/message }\n";
    let ff = start_fanfare(&yaml).await;
    let mut browser = Browser::open(bin, &format!("http://{}/page/native", ff.edge_addr)).await;
    // The app receives "Hello Server!" and its answer arrives as event.data.
    let call = wait_for("the page's message at the app", DEADLINE, || async {
        app.messages.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(&call.body[..], b"Hello Server!");
    let deadline = Instant::now() + DEADLINE;
    while browser.eval("window.got.length").await != json!(1) {
        assert!(Instant::now() < deadline, "no answer in the page");
    }
    assert_eq!(
        browser.eval("window.got[0]").await,
        json!("you said: Hello Server!")
    );
    // What the app publishes to this connection arrives verbatim.
    let id = call.header("fanfare-connection").unwrap();
    publish(
        ff.admin_addr,
        &format!("fanfare.connection.{id}"),
        None,
        "{\"order\": 42, \"status\": \"shipped\"}",
    )
    .await;
    let deadline = Instant::now() + DEADLINE;
    while browser.eval("window.got.length").await != json!(2) {
        assert!(
            Instant::now() < deadline,
            "the published message never arrived"
        );
    }
    assert_eq!(
        browser.eval("window.got[1]").await,
        json!("{\"order\": 42, \"status\": \"shipped\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_io_chat_tutorial_works_in_two_pages_with_only_a_config() {
    let Some(bin) = chromium() else { return };
    let app = CallbackApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + "routes:\n  - path: /socket.io/\n    transports: [socketio]\n    auth: { mode: none }\n    allow_publish: [chat]\n    socketio:\n      namespaces:\n        \"/\": { subjects: [chat], emit: { \"chat message\": chat } }\n";
    let ff = start_fanfare(&yaml).await;
    let page = format!("http://{}/chat", ff.edge_addr);
    let mut a = Browser::open(bin, &page).await;
    let mut b = Browser::open(bin, &page).await;
    for p in [&mut a, &mut b] {
        let deadline = Instant::now() + DEADLINE;
        while p.eval("window.socket && socket.connected").await != json!(true) {
            assert!(Instant::now() < deadline, "the page never connected");
        }
    }
    a.eval("(input.value = 'hello from a', form.requestSubmit(), true)")
        .await;
    b.eval("(input.value = 'and from b', form.requestSubmit(), true)")
        .await;
    let items = "[...document.querySelectorAll('#messages li')].map(li => li.textContent).sort()";
    for p in [&mut a, &mut b] {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = p.eval(items).await;
            if got == json!(["and from b", "hello from a"]) {
                break;
            }
            assert!(Instant::now() < deadline, "the page shows {got}");
        }
    }
}
