//! In a real browser (Debian's `chromium`, driven over the DevTools protocol): an
//! EventSource opened while NATS is down stays open through the outage and, without a
//! reload, receives what the app publishes once NATS is back (issue 14, item 2); the
//! bare `WebSocket` snippet of MDN talks to a raw-mode route (issue 15), with
//! permessage-deflate too (issue 18); Socket.IO's
//! "get started" chat works in two pages with a config and no app code (issue 16).
//!
//! Needs `chromium` (`apt-get install chromium`; `scripts/test` installs it when run as
//! root). Without it the test says so and checks nothing else.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::*;

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
    let doc = "{\"order\": 42, \"status\": \"shipped\"}";
    let mut browser = bare_websocket_on_a_raw_route(bin, "{ protocol: raw }", doc).await;
    assert_eq!(browser.eval("socket.extensions").await, json!(""));
}

/// The same page with `ws.compression: on`: Chromium offers permessage-deflate, so it
/// compresses "Hello Server!" (fanfare inflates it for the app) and inflates the
/// kilobyte the app publishes (fanfare compressed it once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_websocket_negotiates_compression_both_ways() {
    let Some(bin) = chromium() else { return };
    let rows: Vec<String> = (0..12)
        .map(|i| format!("{{\"order\":{i},\"status\":\"shipped\",\"carrier\":\"post\"}}"))
        .collect();
    let doc = format!("[{}]", rows.join(","));
    assert!(doc.len() > 500);
    let mut browser =
        bare_websocket_on_a_raw_route(bin, "{ protocol: raw, compression: on }", &doc).await;
    let ext = browser.eval("socket.extensions").await;
    assert_eq!(
        ext,
        json!("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
}

/// MDN's bare `WebSocket` snippet on a raw-mode route with `ws` settings `ws`: the app
/// receives "Hello Server!", its answer arrives as `event.data`, and `doc`, published
/// to the connection, arrives verbatim. Returns the page for more checks.
async fn bare_websocket_on_a_raw_route(bin: &str, ws: &str, doc: &str) -> Browser {
    let app = CallbackApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + &format!(
            "routes:\n  - path: /native\n    transports: [ws]\n    auth: {{ mode: none }}\n    ws: {ws}\n    app: {{ connect: /rt/connect, message: /rt/message }}\n"
        );
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
        doc.to_string(),
    )
    .await;
    let deadline = Instant::now() + DEADLINE;
    while browser.eval("window.got.length").await != json!(2) {
        assert!(
            Instant::now() < deadline,
            "the published message never arrived"
        );
    }
    assert_eq!(browser.eval("window.got[1]").await, json!(doc));
    browser
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
