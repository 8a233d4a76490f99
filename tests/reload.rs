//! Reloading the configuration under load (issue 19): routes that did not change keep
//! their connections and lose nothing; removed or changed routes close theirs with
//! `route_changed`; an invalid file changes nothing; SIGHUP and a ConfigMap-style
//! symlink swap both reload the real binary.

mod support;

use std::time::Duration;

use fanfare::reload::Reloaded;
use futures::StreamExt;
use support::*;

const ROUTES: &str = "routes:
  - path: /keep/{id}
    transports: [sse, ws]
    subjects: [\"keep.{id}\"]
    auth: { mode: none }
  - path: /gone
    transports: [sse, ws]
    subjects: [gone]
    auth: { mode: none }
  - path: /changed
    subjects: [changed]
    auth: { mode: none }
";

/// The same routes after the reload: /keep as it was, /gone removed, /changed with
/// another retry, /new added.
const RELOADED: &str = "routes:
  - path: /keep/{id}
    transports: [sse, ws]
    subjects: [\"keep.{id}\"]
    auth: { mode: none }
  - path: /changed
    subjects: [changed]
    auth: { mode: none }
    retry: 5s
  - path: /new
    subjects: [new]
    auth: { mode: none }
";

fn yaml(routes: &str) -> String {
    base_yaml("http://127.0.0.1:1", None).replace(
        "shutdown: { grace: 5s }",
        "shutdown: { grace: 5s, drain: 1s }",
    ) + "limits: { max_connections_per_ip: 5000 }\n"
        + routes
}

/// Reads an SSE stream's events until it ends; returns their data and the names of the
/// `fanfare.*` events seen.
async fn drain_sse(mut sse: SseReader<reqwest::Response>) -> (Vec<String>, Vec<String>) {
    let (mut data, mut signals) = (Vec::new(), Vec::new());
    loop {
        match tokio::time::timeout(Duration::from_secs(60), sse.next_inner()).await {
            Ok(Some(Frame::Event { event, data: d, .. })) if event.starts_with("fanfare.") => {
                signals.push(event);
                let _ = d;
            }
            Ok(Some(Frame::Event { data: d, .. })) => data.push(d),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return (data, signals),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_1000_connections_keeps_unchanged_routes_whole_and_retires_the_rest() {
    const SSE: usize = 900;
    const WS: usize = 100;
    const MESSAGES: u64 = 200;
    let ff = start_fanfare(&yaml(ROUTES)).await;
    let client = http_client();
    let url = |p: &str| format!("http://{}{p}", ff.edge_addr);
    let mut keep_sse = Vec::new();
    for _ in 0..SSE {
        let mut sse = sse_connect(&client, &url("/keep/1")).await;
        assert!(matches!(sse.next().await, Some(Frame::Retry(_))));
        keep_sse.push(sse);
    }
    let mut keep_ws = Vec::new();
    for _ in 0..WS {
        keep_ws.push(ws_connect(ff.edge_addr, "/keep/1").await);
    }
    let mut gone_sse = sse_connect(&client, &url("/gone")).await;
    let mut changed_sse = sse_connect(&client, &url("/changed")).await;
    let mut gone_ws = ws_connect(ff.edge_addr, "/gone").await;
    assert!(matches!(gone_sse.next().await, Some(Frame::Retry(_))));
    assert!(matches!(changed_sse.next().await, Some(Frame::Retry(_))));
    wait_metric(ff.admin_addr, "fanfare_subscriptions", 3.0).await;

    // Every kept client reads in its own task until its stream ends.
    let readers: Vec<_> = keep_sse
        .into_iter()
        .map(|sse| tokio::spawn(async move { drain_sse(sse).await.0 }))
        .collect();
    let ws_readers: Vec<_> = keep_ws
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < MESSAGES as usize {
                    let v = ws_json(&mut ws).await;
                    if v["type"] == "message" {
                        got.push(v["data"].as_u64().unwrap());
                    }
                }
                got
            })
        })
        .collect();
    // The publisher runs across the reload.
    let admin = ff.admin_addr;
    let publisher = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        for n in 0..MESSAGES {
            pace.tick().await;
            publish(admin, "keep.1", None, n.to_string()).await;
        }
    });
    wait_for("the first messages", Duration::from_secs(20), || async {
        (metric(admin, "fanfare_deliveries_total{transport=\"sse\"}").await
            >= Some(20.0 * SSE as f64))
        .then_some(())
    })
    .await;

    let reloaded = ff.reloader().apply(config(&yaml(RELOADED)));
    let Reloaded::Applied {
        routes,
        restart_needed,
    } = reloaded
    else {
        panic!("not applied: {reloaded:?}");
    };
    assert_eq!(routes.kept, ["/keep/{id}"]);
    assert_eq!(routes.added, ["/changed", "/new"]);
    assert_eq!(routes.retired, ["/gone", "/changed"]);
    assert!(restart_needed.is_empty(), "{restart_needed:?}");

    // Removed and changed routes: closed with the reason, within the drain window.
    let (_, signals) = drain_sse(gone_sse).await;
    assert_eq!(signals, ["fanfare.route_changed"]);
    let (_, signals) = drain_sse(changed_sse).await;
    assert_eq!(signals, ["fanfare.route_changed"]);
    assert_eq!(ws_close_code(&mut gone_ws).await, 4004);
    // The new route serves; the removed one is the app's again (here: unreachable).
    let mut fresh = sse_connect(&client, &url("/new")).await;
    assert!(matches!(fresh.next().await, Some(Frame::Retry(_))));
    let r = client.get(url("/gone")).send().await.unwrap();
    assert_eq!(r.status(), 502, "a removed route is passed to the app");

    // The kept route lost nothing, on either transport, and no stream ended.
    publisher.await.unwrap();
    for (i, ws) in ws_readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), ws)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            (0..MESSAGES).collect::<Vec<_>>(),
            "WebSocket client {i}"
        );
    }
    wait_metric(
        admin,
        "fanfare_connections{transport=\"sse\"}",
        (SSE + 1) as f64,
    )
    .await;
    drop(fresh);
    let stop = tokio::spawn(ff.shutdown());
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap();
        let want: Vec<String> = (0..MESSAGES).map(|n| n.to_string()).collect();
        assert_eq!(got, want, "SSE client {i}");
    }
    stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_says_where() {
    let ff = start_fanfare(&yaml(ROUTES)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fanfare.yaml");
    std::fs::write(
        &path,
        yaml(ROUTES).replace("transports: [sse, ws]", "transprots: [sse, ws]"),
    )
    .unwrap();
    let r = ff.reloader().reload_file(&path);
    let Reloaded::Invalid(reason) = r else {
        panic!("{r:?}")
    };
    assert!(
        reason.starts_with(&format!("{}:", path.display())),
        "{reason}"
    );
    assert!(reason.contains("transprots"), "{reason}");
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_config_reloads_total{result=\"invalid\"}"
        )
        .await,
        Some(1.0)
    );
    // Everything serves as before; readiness never moved.
    let mut sse = sse_connect(&http_client(), &format!("http://{}/gone", ff.edge_addr)).await;
    assert!(matches!(sse.next().await, Some(Frame::Retry(_))));
    assert_eq!(admin_get(ff.admin_addr, "/readyz").await.0, 200);
    // The same file fixed applies; applying it again changes nothing.
    std::fs::write(&path, yaml(RELOADED)).unwrap();
    assert!(matches!(
        ff.reloader().reload_file(&path),
        Reloaded::Applied { .. }
    ));
    assert_eq!(ff.reloader().reload_file(&path), Reloaded::Unchanged);
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_config_reloads_total{result=\"applied\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_config_reloads_total{result=\"unchanged\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_bound_at_start_are_reported_not_applied() {
    let ff = start_fanfare(&yaml(ROUTES)).await;
    let moved = yaml(ROUTES).replace(
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1",
        "listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2",
    );
    let r = ff.reloader().apply(config(&moved));
    let Reloaded::Applied {
        routes,
        restart_needed,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(restart_needed, ["listen", "upstream"]);
    assert!(routes.retired.is_empty() && routes.added.is_empty());
    // Still on the old address.
    let mut sse = sse_connect(&http_client(), &format!("http://{}/gone", ff.edge_addr)).await;
    assert!(matches!(sse.next().await, Some(Frame::Retry(_))));
}

/// Whether `path` on `edge` is a realtime route now (an SSE 200 with `retry:`).
async fn serves(edge: std::net::SocketAddr, path: &str) -> bool {
    let Ok(r) = http_client()
        .get(format!("http://{edge}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return false;
    };
    if r.status() != 200 {
        return false;
    }
    let mut body = r.bytes_stream();
    matches!(body.next().await, Some(Ok(b)) if b.starts_with(b"retry:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_on_a_configmap_symlink_swap() {
    let one = "routes:\n  - path: /a\n    subjects: [a]\n    auth: { mode: none }\n";
    let ff = FanfareProcess::start(&yaml(one)).await;
    let path = ff.config_path();
    let log = |ff: &FanfareProcess| ff.log.lock().unwrap().join("\n");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(serves(ff.edge, "/a").await);
    assert!(!serves(ff.edge, "/b").await);

    // SIGHUP after an edit in place.
    std::fs::write(&path, text.replace("path: /a", "path: /b")).unwrap();
    ff.signal("HUP");
    wait_for("/b after SIGHUP", DEADLINE, || async {
        serves(ff.edge, "/b").await.then_some(())
    })
    .await;
    assert!(!serves(ff.edge, "/a").await);

    // A ConfigMap update: the file becomes a link to a new directory's file, swapped in
    // by a rename, with no signal. The watch notices.
    let v2 = path.parent().unwrap().join("..2026_11_26");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("fanfare.yaml"),
        text.replace("path: /a", "path: /c"),
    )
    .unwrap();
    let tmp = path.with_extension("tmp");
    std::os::unix::fs::symlink(v2.join("fanfare.yaml"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_for("/c after the swap", DEADLINE, || async {
        serves(ff.edge, "/c").await.then_some(())
    })
    .await;

    // A broken file: logged with its position, nothing changes.
    std::fs::write(v2.join("fanfare.yaml"), "routes: [\n").unwrap();
    ff.signal("HUP");
    wait_for("the refusal in the log", DEADLINE, || async {
        log(&ff)
            .contains("configuration reload refused")
            .then_some(())
    })
    .await;
    assert!(log(&ff).contains("fanfare.yaml:"), "{}", log(&ff));
    assert!(serves(ff.edge, "/c").await);
    assert_eq!(
        metric(ff.admin, "fanfare_config_reloads_total{result=\"applied\"}").await,
        Some(2.0)
    );
}
