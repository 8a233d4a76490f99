//! The foundation: pass-through proxying, the admin endpoints, readiness following a
//! real nats-server, `check-config`, and graceful shutdown of the real binary.

mod support;

use std::time::Duration;

use support::*;

async fn proxy_to(app: &StubApp) -> fanfare::Handle {
    start_fanfare(&base_yaml(&app.url(), None)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_passed_through() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    let r = http_client()
        .get(format!("http://{}/", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from the app");
    // Recorded in pingora's logging hook, just after the response: wait for it.
    wait_metric(
        ff.admin_addr,
        "fanfare_upstream_requests_total{class=\"2xx\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_a_1mib_body_round_trips() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let r = http_client()
        .post(format!("http://{}/echo", ff.edge_addr))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the echoed body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stream_through() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    let mut r = http_client()
        .get(format!("http://{}/stream", ff.edge_addr))
        .send()
        .await
        .unwrap();
    // The app sends "second" only after we release it, and we release it only after
    // "first" has reached us through fanfare: a buffering proxy would hang here.
    let first = tokio::time::timeout(DEADLINE, r.chunk())
        .await
        .expect("first chunk arrives before the response ends")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    app.release.notify_waiters();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(DEADLINE, r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"second\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    // A keep-alive client: each request starts after the previous one has finished,
    // so the proxy has returned its upstream connection to the pool.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/headers", ff.edge_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(app.peers.lock().unwrap().len(), 10);
    assert_eq!(
        app.distinct_connections(),
        1,
        "10 sequential requests should share one pooled upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_hop_by_hop_stripped() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    let h: serde_json::Value = http_client()
        .get(format!("http://{}/headers", ff.edge_addr))
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("x-app-header", "passes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], ff.edge_addr.to_string());
    assert_eq!(h["x-app-header"], "passes");
    assert!(h.get("x-hop-secret").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_proxied() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_is_a_json_502() {
    let closed = closed_port();
    let nothing = format!("http://127.0.0.1:{}", closed.port);
    let ff = start_fanfare(&base_yaml(&nothing, None)).await;
    let r = http_client()
        .get(format!("http://{}/anything", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    wait_metric(
        ff.admin_addr,
        "fanfare_upstream_requests_total{class=\"5xx\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let app = StubApp::start().await;
    let ff = proxy_to(&app).await;
    assert_eq!(admin_get(ff.admin_addr, "/livez").await.0, 200);
    let (status, body) = admin_get(ff.admin_addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    let (status, body) = admin_get(ff.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "fanfare_build_info{commit=\"",
        "fanfare_upstream_requests_total{class=\"2xx\"}",
        "fanfare_upstream_duration_seconds_bucket",
        "fanfare_nats_connected 1",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    assert_eq!(admin_get(ff.admin_addr, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_nats() {
    let mut nats = NatsServer::start().await;
    let app = StubApp::start().await;
    let ff = start_fanfare(&base_yaml(&app.url(), Some(&nats.url()))).await;
    let admin = ff.admin_addr;
    let ready = || async move { (admin_get(admin, "/readyz").await.0 == 200).then_some(()) };
    wait_for("readyz 200 once NATS is connected", DEADLINE, ready).await;
    assert_eq!(metric(admin, "fanfare_nats_connected").await, Some(1.0));

    nats.stop();
    let (status, body) = wait_for(
        "readyz 503 after nats-server stops",
        DEADLINE,
        || async move {
            let (s, b) = admin_get(admin, "/readyz").await;
            (s == 503).then_some((s, b))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("nats_disconnected"), "{body}");
    assert_eq!(metric(admin, "fanfare_nats_connected").await, Some(0.0));

    nats.restart().await;
    wait_for(
        "readyz 200 after nats-server restarts",
        Duration::from_secs(30),
        ready,
    )
    .await;
    assert_eq!(metric(admin, "fanfare_nats_connected").await, Some(1.0));
}

/// The harness's own nats-server: CI once failed with "timed out waiting for
/// nats-server to accept connections" because the free port it picked was taken
/// before nats-server bound it, and the harness waited on a server that had exited.
/// Here another listener holds the port across a restart for a moment: the harness
/// must notice, wait, and come back with the real nats-server, not the impostor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_nats_server_restarts_past_a_port_held_meanwhile() {
    let mut nats = NatsServer::start().await;
    let port = nats.port;
    nats.stop();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let log = nats.log_path();
    // The port is given back once a start has failed on it (nats-server's log says so).
    let release = async move {
        wait_for("a start refused for the held port", DEADLINE, || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("address already in use").then_some(())
            }
        })
        .await;
        drop(squatter);
    };
    tokio::join!(nats.restart(), release);
    assert_eq!(nats.port, port, "a restart keeps the port");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    client.flush().await.expect("nats-server answers a flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_nats_is_reachable() {
    // Nothing listens on this port: fanfare starts, keeps retrying, and is not ready.
    let closed = closed_port();
    let port = closed.port;
    let app = StubApp::start().await;
    let ff = start_fanfare(&base_yaml(
        &app.url(),
        Some(&format!("nats://127.0.0.1:{port}")),
    ))
    .await;
    let (status, body) = admin_get(ff.admin_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("nats_disconnected"), "{body}");
    // Pass-through works without NATS.
    let r = http_client()
        .get(format!("http://{}/", ff.edge_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_a_clean_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = format!("listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:0 }}\n");
    let err = fanfare::run(config(&yaml)).await.err().expect("bind fails");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() {
    let app = StubApp::start().await;
    let mut ff =
        FanfareProcess::start(&base_yaml(&app.url(), None).replace("grace: 5s", "grace: 20s"))
            .await;
    let edge = ff.edge;
    let admin = ff.admin;
    let slow = tokio::spawn(async move {
        let r = http_client()
            .get(format!("http://{edge}/hold"))
            .send()
            .await
            .expect("the in-flight request completes");
        (r.status().as_u16(), r.text().await.unwrap())
    });
    wait_for("the app to hold the request", DEADLINE, || {
        let n = app.held_now();
        async move { (n == 1).then_some(()) }
    })
    .await;

    ff.signal("TERM");
    wait_for("readyz 503 after SIGTERM", DEADLINE, || async move {
        (admin_get(admin, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    wait_for("the edge to stop accepting", DEADLINE, || async move {
        tokio::net::TcpStream::connect(edge)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        ff.child.try_wait().unwrap().is_none(),
        "exited before the request finished"
    );

    app.release.notify_waiters();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "released"));
    let exit = ff.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
}

// === check-config ===

fn check_config(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        stderr.replace(&*path.to_string_lossy(), "FILE"),
        path.to_string_lossy().into_owned(),
    )
}

#[test]
fn check_config_unknown_key() {
    let (code, err, _) =
        check_config("listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:9090\n  lsten: x\n");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE:4:3: unknown field `lsten`"), "{err}");
}

#[test]
fn check_config_bad_address() {
    let (code, err, _) = check_config("upstream: http://127.0.0.1:3000\nlisten: 8080\n");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE:2:9: invalid address"), "{err}");
}

#[test]
fn check_config_bad_duration() {
    let (code, err, _) = check_config("shutdown:\n  grace: 25 seconds\n");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE:2:10: invalid duration"), "{err}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = head.unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        line,
        format!("fanfare {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn without_config_and_without_the_default_file_fanfare_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no --config given")
            && err.contains("config/fanfare.yaml does not exist in")
            && err.contains("pass --config FILE"),
        "{err}"
    );
}

#[test]
fn check_config_missing_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args(["check-config", "/nonexistent/fanfare.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("/nonexistent/fanfare.yaml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn check_config_valid_file_exits_0() {
    let (code, err, _) = check_config("listen: 127.0.0.1:8080\n");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn run_with_a_bad_config_exits_2_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "lissen: 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1:1: unknown field `lissen`"));
}

#[test]
fn env_interpolation_cannot_change_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "admin:\n  publish_token: \"${FF_TEST_LEVEL}\"\nlisten: ${FF_TEST_LISTEN:-127.0.0.1:8088}\n",
    )
    .unwrap();
    let run = |level: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"));
        cmd.arg("check-config")
            .arg(&path)
            .env_remove("FF_TEST_LISTEN");
        match level {
            Some(l) => cmd.env("FF_TEST_LEVEL", l),
            None => cmd.env_remove("FF_TEST_LEVEL"),
        };
        cmd.output().unwrap()
    };
    // A value holding YAML structure stays one string: the document is unchanged.
    let out = run(Some("info\nlisten: not-an-address"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unset variable without a default is named in the error.
    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2:") && err.contains("FF_TEST_LEVEL"),
        "{err}"
    );
}

#[test]
fn every_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            fanfare::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}
