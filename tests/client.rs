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
