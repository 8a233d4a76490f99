//! What fanfare does for browsers that use no SDK, or its own client (issue 17): the
//! SSE `retry:` hint is jittered per connection, so a restart does not bring every
//! EventSource back in the same second; the client files and the demo page are served
//! under `/_fanfare/` with strong ETags. The client itself runs in a real Chromium in
//! `tests/browser_client.rs`.

mod support;

use std::collections::BTreeSet;

use support::*;

const JITTERED: &str =
    "routes:\n  - path: /j\n    subjects: [j]\n    auth: { mode: none }\n    retry: 2s\n";

/// The `retry:` values of `n` fresh SSE connections to `path`.
async fn first_retries(ff: &fanfare::Handle, path: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut sse = sse_connect(&http_client(), &format!("http://{}{path}", ff.edge_addr)).await;
        match sse.next().await {
            Some(Frame::Retry(ms)) => out.push(ms),
            other => panic!("retry: first, got {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sse_connection_gets_its_own_retry_within_half_either_side() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + JITTERED)).await;
    let retries = first_retries(&ff, "/j", 40).await;
    for r in &retries {
        assert!((1000..=3000).contains(r), "retry {r} outside 2 s ± 50%");
    }
    let distinct: BTreeSet<u64> = retries.iter().copied().collect();
    assert!(
        distinct.len() >= 20,
        "40 connections got only {} distinct retry values: {retries:?}",
        distinct.len()
    );
    // Spread over the window, not bunched: both halves are used.
    assert!(
        retries.iter().any(|r| *r < 1800) && retries.iter().any(|r| *r > 2200),
        "{retries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_jitter_zero_sends_the_configured_retry_to_everyone() {
    let yaml = base_yaml("http://127.0.0.1:1", None) + JITTERED + "    retry_jitter: 0\n";
    let ff = start_fanfare(&yaml).await;
    assert_eq!(first_retries(&ff, "/j", 5).await, vec![2000; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_event_names_the_retry_that_follows_it() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + JITTERED)).await;
    let mut sse = sse_connect(&http_client(), &format!("http://{}/j", ff.edge_addr)).await;
    assert!(matches!(sse.next().await, Some(Frame::Retry(_))));
    let stop = tokio::spawn(ff.shutdown());
    let data = match sse.next().await {
        Some(Frame::Event { event, data, .. }) if event == "fanfare.drain" => data,
        other => panic!("fanfare.drain expected, got {other:?}"),
    };
    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["reason"], "restart");
    let hinted = v["retry"].as_u64().expect("retry in the drain event");
    assert!((1000..=3000).contains(&hinted), "{hinted}");
    assert_eq!(sse.next().await, Some(Frame::Retry(hinted)));
    assert_eq!(sse.next().await, None, "the stream ends after the drain");
    stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_retry_jitter_is_a_config_error() {
    for bad in ["1", "1.5", "-0.1"] {
        let yaml = base_yaml("http://127.0.0.1:1", None)
            + JITTERED
            + &format!("    retry_jitter: {bad}\n");
        let (_, reason) = fanfare::config::Config::parse(&yaml).expect_err(bad);
        assert!(reason.contains("retry_jitter"), "{bad}: {reason}");
    }
}

/// GETs `path` on the edge with `headers`.
async fn get(ff: &fanfare::Handle, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut r = client.get(format!("http://{}{path}", ff.edge_addr));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_files_are_served_with_strong_etags_gzip_and_long_caching() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&base_yaml(&app.url(), None)).await;
    for (path, kind, marker) in [
        (
            "/_fanfare/client.js",
            "text/javascript",
            "export function connect(",
        ),
        (
            "/_fanfare/client.umd.js",
            "text/javascript",
            "g.fanfare = {",
        ),
        (
            "/_fanfare/client.d.ts",
            "application/typescript",
            "export function connect(path: string",
        ),
    ] {
        let plain = get(&ff, path, &[]).await;
        assert_eq!(plain.status(), 200, "{path}");
        let h = plain.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {h:?}"
        );
        assert!(h.get("content-encoding").is_none());
        assert_eq!(h["cache-control"], "public, max-age=86400");
        let etag = h["etag"].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && etag.len() > 10,
            "a strong ETag: {etag}"
        );
        let body = plain.bytes().await.unwrap();
        assert!(
            std::str::from_utf8(&body).unwrap().contains(marker),
            "{path}"
        );

        let zipped = get(&ff, path, &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(zipped.headers()["content-encoding"], "gzip");
        assert_eq!(zipped.headers()["etag"].to_str().unwrap(), etag);
        let zbody = zipped.bytes().await.unwrap();
        assert_eq!(
            gunzip(&zbody),
            body,
            "{path}: the gzip form is the same file"
        );
        if path.ends_with(".js") {
            assert!(
                zbody.len() <= 5 * 1024,
                "{path}: {} bytes gzipped, over 5 KB",
                zbody.len()
            );
        }

        let again = get(&ff, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), 304, "{path}: revalidation");
        assert!(again.bytes().await.unwrap().is_empty());

        let v = etag.trim_matches('"');
        let pinned = get(&ff, &format!("{path}?v={v}"), &[]).await;
        assert_eq!(
            pinned.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let stale = get(&ff, &format!("{path}?v=old"), &[]).await;
        assert_eq!(stale.headers()["cache-control"], "public, max-age=86400");
    }
    // Anything else under /_fanfare/ is fanfare's 404, never the app's.
    let other = get(&ff, "/_fanfare/nope.js", &[]).await;
    assert_eq!(other.status(), 404);
    let v: serde_json::Value = other.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    assert_eq!(
        get(&ff, "/_fanfare/demo", &[]).await.status(),
        404,
        "no demo unless demo: true"
    );
    let post = reqwest::Client::new()
        .post(format!("http://{}/_fanfare/client.js", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_false_leaves_the_prefix_to_the_app() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + "client: false\n")).await;
    let r = get(&ff, "/_fanfare/client.js", &[]).await;
    assert_eq!(r.status(), 404);
    assert!(
        r.headers().get("etag").is_none(),
        "the app answered, not fanfare"
    );
    // The stub app's 404 is axum's: an empty body, not fanfare's JSON refusal.
    assert_eq!(r.text().await.unwrap(), "");
}

/// `config/fanfare.yaml` on free ports.
fn default_config() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fanfare.yaml"))
        .unwrap();
    assert!(text.contains("listen: 127.0.0.1:8080") && text.contains("listen: 127.0.0.1:9090"));
    text.replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_serves_the_demo_page_and_its_route_on_loopback() {
    let text = default_config();
    let ff = start_fanfare(&text).await;
    assert!(ff.edge_addr.ip().is_loopback());
    let page = get(&ff, "/_fanfare/demo", &[]).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/_fanfare/client.js"));
    assert!(
        html.contains(&ff.admin_addr.to_string()),
        "the curl lines name the admin address"
    );
    // The route the page uses: an SSE client hears what the admin API publishes.
    let mut sse = sse_connect(
        &http_client(),
        &format!("http://{}/demo/lobby", ff.edge_addr),
    )
    .await;
    assert!(matches!(sse.next().await, Some(Frame::Retry(_))));
    publish(
        ff.admin_addr,
        "demo.lobby",
        Some("said"),
        "{\"text\":\"hi\"}",
    )
    .await;
    let (_, event, data) = sse.next_event().await.unwrap();
    assert_eq!(
        (event.as_str(), data.as_str()),
        ("said", "{\"text\":\"hi\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_true_without_its_route_is_a_config_error() {
    let yaml = base_yaml("http://127.0.0.1:1", None) + "demo: true\n";
    let (_, reason) = fanfare::config::Config::parse(&yaml).expect_err("no demo route");
    assert!(reason.contains("/demo/{room}"), "{reason}");
    let yaml = default_config() + "client: false\n";
    let (_, reason) = fanfare::config::Config::parse(&yaml).expect_err("no client");
    assert!(reason.contains("client: true"), "{reason}");
}

// In a real Chromium (Debian's `chromium`; `scripts/test` installs it when run as root,
// otherwise these tests say so and check nothing else).

use serde_json::{Value, json};

const LIVE: &str = "routes:\n  - path: /live/{id}\n    transports: TRANSPORTS\n    subjects: [\"live.{id}\"]\n    allow_publish: [\"live.*\"]\n    auth: { mode: none }\n";

fn live(transports: &str) -> String {
    LIVE.replace("TRANSPORTS", transports)
}

/// Opens fanfare's client (the ES module, or with `umd` the plain script) on `path`
/// as `window[name]`, logging what it hears in `window.log[name]`.
fn open_client(name: &str, path: &str, options: &str, umd: bool) -> String {
    let load = if umd {
        "new Promise((ok, no) => { const s = document.createElement('script'); s.src = '/_fanfare/client.umd.js'; s.onload = () => ok(window.fanfare); s.onerror = no; document.head.appendChild(s); })"
    } else {
        "import('/_fanfare/client.js')"
    };
    format!(
        r#"(window.log = window.log || {{}}, window.log["{name}"] = {{ events: [], connects: [], disconnects: [], resets: [], errors: [] }},
        {load}.then(({{ connect }}) => {{
          const log = window.log["{name}"];
          const rt = (window["{name}"] = connect("{path}", {options}));
          rt.on("connect", (i) => log.connects.push(i.transport));
          rt.on("disconnect", (i) => log.disconnects.push(i.reason));
          rt.on("reset", (r) => log.resets.push(r.reason));
          rt.on("error", (e) => log.errors.push(e.code));
          rt.on("message", (d, m) => log.events.push(["message", d, m.id]));
          rt.on("said", (d, m) => log.events.push(["said", d, m.id]));
        }}, (e) => (window.log["{name}"].failed = String(e))), true)"#
    )
}

/// Opens one client per transport in `transports` on `path` (each named after its
/// transport and limited to it) and waits until each has connected over it.
async fn one_client_per_transport(page: &mut Browser, path: &str, transports: &[&str]) {
    for t in transports {
        let options = format!("{{ transports: ['{t}'] }}");
        page.eval(&open_client(t, path, &options, false)).await;
    }
    for t in transports {
        connected(page, t, t).await;
    }
}

/// Waits until client `name` has connected over `transport`.
async fn connected(page: &mut Browser, name: &str, transport: &str) {
    let expr = format!(
        "window.log['{name}'] && [window.log['{name}'].connects, window.log['{name}'].failed]"
    );
    let v = page
        .until(&format!("{name} connects"), &expr, |v| {
            v[0].as_array().is_some_and(|a| !a.is_empty()) || !v[1].is_null()
        })
        .await;
    assert_eq!(v[0][0], json!(transport), "{name}: {v}");
}

/// The events client `name` got, once there are `n`.
async fn events(page: &mut Browser, name: &str, n: usize) -> Vec<Value> {
    let expr = format!("window.log['{name}'].events");
    let v = page
        .until(&format!("{name} gets {n} events"), &expr, |v| {
            v.as_array().is_some_and(|a| a.len() >= n)
        })
        .await;
    v.as_array().unwrap().clone()
}

/// A Chromium page at `http://{edge}/page/blank` (the stub app's blank page, so the
/// page's origin is fanfare's), with `init` run before its scripts.
async fn browser_on(edge: std::net::SocketAddr, init: Option<&str>) -> Option<Browser> {
    let bin = chromium()?;
    Some(Browser::open_with(bin, &format!("http://{edge}/page/blank"), init).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transport_delivers_named_and_default_events_in_chromium() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &live("[ws, sse, poll]"))).await;
    let Some(mut page) = browser_on(ff.edge_addr, None).await else {
        return;
    };
    one_client_per_transport(&mut page, "/live/1", &["ws", "sse", "poll"]).await;
    publish(ff.admin_addr, "live.1", Some("said"), "{\"n\":1}").await;
    publish(ff.admin_addr, "live.1", None, "plain text").await;
    // What a client publishes over its WebSocket reaches every client.
    page.eval("window.ws.publish('live.1', { n: 2 }, { event: 'said' }).then(() => (window.acked = true))").await;
    page.eval("window.sse.publish('live.1', 3).catch((e) => (window.refused = e.code))")
        .await;
    for t in ["ws", "sse", "poll"] {
        let got = events(&mut page, t, 3).await;
        let shape: Vec<Value> = got.iter().map(|e| json!([e[0], e[1]])).collect();
        assert_eq!(
            shape,
            vec![
                json!(["said", {"n": 1}]),
                json!(["message", "plain text"]),
                json!(["said", {"n": 2}])
            ],
            "{t}"
        );
        assert!(
            got.iter().all(|e| e[2].is_string()),
            "{t}: every event has its cursor: {got:?}"
        );
    }
    assert_eq!(
        page.until("the publish is acked", "window.acked", |v| !v.is_null())
            .await,
        json!(true)
    );
    assert_eq!(
        page.until("SSE refuses publish", "window.refused", |v| !v.is_null())
            .await,
        json!("needs_websocket")
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('fanfare.transport')")
            .await,
        json!("poll"),
        "the last that worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_skips_websocket_on_a_route_without_it() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &live("[sse, poll]"))).await;
    let Some(mut page) = browser_on(ff.edge_addr, None).await else {
        return;
    };
    page.eval(&open_client("rt", "/live/2", "{}", false)).await;
    connected(&mut page, "rt", "sse").await;
    publish(ff.admin_addr, "live.2", Some("said"), "{\"n\":1}").await;
    assert_eq!(events(&mut page, "rt", 1).await[0][1], json!({"n": 1}));
    assert_eq!(page.eval("window.log.rt.errors").await, json!([]));
    assert_eq!(
        page.eval("sessionStorage.getItem('fanfare.transport')")
            .await,
        json!("sse")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_falls_back_when_a_proxy_blocks_websocket_and_remembers_it() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &live("[ws, sse, poll]"))).await;
    let firewall = Firewall::start(ff.edge_addr).await;
    let Some(mut page) = browser_on(firewall.addr, None).await else {
        return;
    };
    page.eval(&open_client("first", "/live/3", "{}", false))
        .await;
    connected(&mut page, "first", "sse").await;
    let blocked = firewall.blocked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(blocked >= 1, "the WebSocket was tried and blocked");
    publish(ff.admin_addr, "live.3", Some("said"), "{\"n\":1}").await;
    assert_eq!(events(&mut page, "first", 1).await[0][1], json!({"n": 1}));
    // The next connection of this origin starts with what worked: no WebSocket try.
    page.eval(&open_client("second", "/live/3", "{}", false))
        .await;
    connected(&mut page, "second", "sse").await;
    assert_eq!(
        firewall.blocked.load(std::sync::atomic::Ordering::Relaxed),
        blocked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_websocket_and_eventsource_the_plain_script_long_polls() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &live("[ws, sse, poll]"))).await;
    let old = "delete window.WebSocket; delete window.EventSource;";
    let Some(mut page) = browser_on(ff.edge_addr, Some(old)).await else {
        return;
    };
    assert_eq!(
        page.eval("[typeof WebSocket, typeof EventSource]").await,
        json!(["undefined", "undefined"])
    );
    page.eval(&open_client("rt", "/live/4", "{}", true)).await;
    connected(&mut page, "rt", "poll").await;
    publish(ff.admin_addr, "live.4", Some("said"), "{\"n\":1}").await;
    publish(ff.admin_addr, "live.4", None, "two").await;
    let got = events(&mut page, "rt", 2).await;
    assert_eq!(
        (got[0][1].clone(), got[1][1].clone()),
        (json!({"n": 1}), json!("two"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reaches_the_page_as_the_reset_event_on_every_transport() {
    let app = StubApp::start().await;
    let ff = start_fanfare(&(base_yaml(&app.url(), None) + &live("[ws, sse, poll]"))).await;
    let Some(mut page) = browser_on(ff.edge_addr, None).await else {
        return;
    };
    for t in ["ws", "sse", "poll"] {
        // A cursor of another process: fanfare cannot resume it and says so.
        let opts = format!("{{ transports: ['{t}'], cursor: 'zzzz-7' }}");
        page.eval(&open_client(t, "/live/5", &opts, false)).await;
    }
    for t in ["ws", "sse", "poll"] {
        let expr = format!("window.log['{t}'] && window.log['{t}'].resets");
        let v = page
            .until(&format!("{t} reset"), &expr, |v| {
                v.as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        assert_eq!(v, json!(["cursor_unknown"]), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_restart_every_transport_resumes_with_nothing_lost_or_repeated() {
    const N: u64 = 150;
    let nats = NatsServer::start_jetstream().await;
    create_stream(&nats.url(), "LIVE", &["live.>"]).await;
    let app = StubApp::start().await;
    let route = live("[ws, sse, poll]") + "    history: { jetstream: LIVE }\n";
    let yaml = base_yaml(&app.url(), Some(&nats.url())).replace(
        "shutdown: { grace: 5s }",
        "shutdown: { grace: 5s, drain: 500ms }",
    ) + &route;
    let ff = start_fanfare(&yaml).await;
    let edge = ff.edge_addr;
    let Some(mut page) = browser_on(edge, None).await else {
        return;
    };
    one_client_per_transport(&mut page, "/live/6", &["ws", "sse", "poll"]).await;
    // The app publishes a third before, a third while fanfare is down, and a third
    // after it is back.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let publish_range = |from: u64, to: u64| {
        let js = js.clone();
        async move {
            for n in from..to {
                js.publish("live.6", json!({ "n": n }).to_string().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    publish_range(0, N / 3).await;
    ff.shutdown().await;
    publish_range(N / 3, 2 * N / 3).await;
    let yaml = yaml.replace("listen: 127.0.0.1:0\n", &format!("listen: {edge}\n"));
    let _ff = start_fanfare(&yaml).await;
    for t in ["ws", "sse", "poll"] {
        let expr = format!("window.log['{t}'].connects.length");
        page.until(&format!("{t} reconnects"), &expr, |v| v.as_u64() >= Some(2))
            .await;
    }
    publish_range(2 * N / 3, N).await;
    for t in ["ws", "sse", "poll"] {
        let got = events(&mut page, t, N as usize).await;
        let ns: Vec<u64> = got.iter().map(|e| e[1]["n"].as_u64().unwrap()).collect();
        assert_eq!(
            ns,
            (0..N).collect::<Vec<_>>(),
            "{t}: every event once, in order"
        );
        let log = page.eval(&format!("window.log['{t}']")).await;
        assert_eq!(log["resets"], json!([]), "{t}");
        if t != "poll" {
            // The drain signal (close 1012, fanfare.drain) names the restart; a poll
            // simply fails while the port is closed.
            assert_eq!(log["disconnects"][0], json!("restart"), "{t}: {log}");
        }
    }
    // Nothing more arrives later (no duplicate after the last).
    publish_range(N, N + 1).await;
    for t in ["ws", "sse", "poll"] {
        assert_eq!(
            events(&mut page, t, N as usize + 1).await.len(),
            N as usize + 1,
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_resolves_with_the_apps_answer_and_rejects_with_its_error() {
    let app = CallbackApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + &live("[ws, sse]")
        + "    app: { connect: /rt/connect, message: /rt/message }\n";
    let ff = start_fanfare(&yaml).await;
    // Any page of the origin will do: this app's is its WebSocket example.
    let Some(bin) = chromium() else { return };
    let mut page = Browser::open(bin, &format!("http://{}/page/native", ff.edge_addr)).await;
    page.eval(&open_client("rt", "/live/7", "{}", false)).await;
    connected(&mut page, "rt", "ws").await;
    page.eval("rt.rpc({ q: 1 }).then((a) => (window.answer = a))")
        .await;
    page.eval("rt.rpc({ q: 2 }, { event: 'fail' }).catch((e) => (window.failure = [e.code, e.status, e.data]))").await;
    let answer = page
        .until("the rpc's answer", "window.answer", |v| !v.is_null())
        .await;
    assert_eq!(answer["echo"], json!({ "q": 1 }));
    assert!(answer["connection"].is_string(), "{answer}");
    let failure = page
        .until("the failed rpc", "window.failure", |v| !v.is_null())
        .await;
    assert_eq!(failure, json!(["app_error", 500, { "error": "boom" }]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_carries_what_one_tab_types_to_another_over_the_chosen_transport() {
    let ff = start_fanfare(&default_config()).await;
    let Some(bin) = chromium() else { return };
    let demo = format!("http://{}/_fanfare/demo", ff.edge_addr);
    let mut sender = Browser::open(bin, &demo).await;
    let mut receiver = Browser::open(bin, &demo).await;
    // The receiver switches to Server-Sent Events; the sender stays on the default.
    receiver.eval("(document.getElementById('transport').value = 'sse', document.getElementById('join').click(), true)").await;
    receiver
        .until(
            "the receiver connects over SSE",
            "document.getElementById('status').textContent",
            |v| v == "connected over sse",
        )
        .await;
    sender
        .until(
            "the sender connects",
            "document.getElementById('status').textContent",
            |v| v == "connected over ws",
        )
        .await;
    sender.eval("(document.getElementById('text').value = 'hello from the other tab', document.getElementById('form').requestSubmit(), true)").await;
    let items = "[...document.querySelectorAll('#log li:not(.sys)')].map((li) => li.textContent)";
    for p in [&mut receiver, &mut sender] {
        p.until("the message in the log", items, |v| {
            v == &json!(["hello from the other tab"])
        })
        .await;
    }
    let curl = receiver
        .eval("document.getElementById('curl').textContent")
        .await;
    let curl = curl.as_str().unwrap();
    assert!(
        curl.contains(&format!("curl -N http://{}/demo/lobby", ff.edge_addr)),
        "{curl}"
    );
    assert!(
        curl.contains(&format!("http://{}/publish/demo.lobby", ff.admin_addr)),
        "{curl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_route_reconnects_the_page_with_nothing_lost() {
    let app = StubApp::start().await;
    let before = base_yaml(&app.url(), None).replace(
        "shutdown: { grace: 5s }",
        "shutdown: { grace: 5s, drain: 500ms }",
    ) + &live("[ws, sse, poll]");
    let ff = start_fanfare(&before).await;
    let Some(mut page) = browser_on(ff.edge_addr, None).await else {
        return;
    };
    one_client_per_transport(&mut page, "/live/8", &["ws", "sse"]).await;
    for n in 0..5 {
        publish(ff.admin_addr, "live.8", None, n.to_string()).await;
    }
    let changed = before.clone() + "    retry: 3s\n";
    assert!(matches!(
        ff.reloader().apply(config(&changed)),
        fanfare::reload::Reloaded::Applied { .. }
    ));
    for t in ["ws", "sse"] {
        let expr = format!("window.log['{t}'].connects.length");
        page.until(&format!("{t} reconnects"), &expr, |v| v.as_u64() >= Some(2))
            .await;
    }
    for n in 5..10 {
        publish(ff.admin_addr, "live.8", None, n.to_string()).await;
    }
    for t in ["ws", "sse"] {
        let got = events(&mut page, t, 10).await;
        let ns: Vec<Value> = got.iter().map(|e| e[1].clone()).collect();
        assert_eq!(ns, (0..10).map(|n| json!(n)).collect::<Vec<_>>(), "{t}");
        assert_eq!(
            page.eval(&format!("window.log['{t}'].disconnects")).await,
            json!(["route_changed"]),
            "{t}"
        );
    }
}
