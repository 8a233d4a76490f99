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
