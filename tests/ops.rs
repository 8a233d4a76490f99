//! Kubernetes operability: draining 1,000 held clients on SIGTERM, NATS outages with
//! held clients (plain and JetStream), and the Helm chart's static checks.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use support::*;

#[derive(Debug)]
struct Closed {
    at: Instant,
    code: Option<u16>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_clients_spread_over_the_window() {
    let yaml = base_yaml("http://127.0.0.1:1", None).replace("grace: 5s", "grace: 10s, drain: 4s")
        + "limits: { max_connections_per_ip: 5000 }\nroutes:\n  - path: /feed\n    transports: [ws, sse]\n    subjects: [feed]\n    auth: { mode: none }\n";
    let mut ff = FanfareProcess::start(&yaml).await;
    const WS: usize = 900;
    const SSE: usize = 100;
    let mut tasks = Vec::new();
    for _ in 0..WS {
        let mut ws = ws_connect(ff.edge, "/feed").await;
        tasks.push(tokio::spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => {
                        return Closed {
                            at: Instant::now(),
                            code: f.map(|f| u16::from(f.code)),
                        };
                    }
                    Some(Ok(_)) => continue,
                    _ => {
                        return Closed {
                            at: Instant::now(),
                            code: None,
                        };
                    }
                }
            }
        }));
    }
    for _ in 0..SSE {
        let mut sse = sse_connect(&http_client(), &format!("http://{}/feed", ff.edge)).await;
        tasks.push(tokio::spawn(async move {
            let mut drained = false;
            loop {
                match sse.next().await {
                    Some(Frame::Event { event, .. }) if event == "fanfare.drain" => drained = true,
                    Some(_) => continue,
                    None => {
                        return Closed {
                            at: Instant::now(),
                            code: drained.then_some(0),
                        };
                    }
                }
            }
        }));
    }
    wait_for("all clients held", DEADLINE, || async {
        let ws = metric(ff.admin, "fanfare_connections{transport=\"ws\"}").await;
        let sse = metric(ff.admin, "fanfare_connections{transport=\"sse\"}").await;
        (ws == Some(WS as f64) && sse == Some(SSE as f64)).then_some(())
    })
    .await;

    let sigterm = Instant::now();
    ff.signal("TERM");
    let admin = ff.admin;
    wait_for(
        "readyz 503 at once",
        Duration::from_secs(2),
        || async move { (admin_get(admin, "/readyz").await.0 == 503).then_some(()) },
    )
    .await;
    wait_metric(ff.admin, "fanfare_draining", 1.0).await;
    let mut closes = Vec::new();
    for t in tasks {
        closes.push(
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let exit = ff.wait_exit(Duration::from_secs(15)).await;
    let total = sigterm.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        total < Duration::from_secs(10),
        "exited within the grace: {total:?}"
    );

    let ws_codes: Vec<Option<u16>> = closes[..WS].iter().map(|c| c.code).collect();
    assert!(
        ws_codes.iter().all(|c| *c == Some(1012)),
        "every WebSocket got 1012"
    );
    assert!(
        closes[WS..].iter().all(|c| c.code == Some(0)),
        "every SSE stream got fanfare.drain"
    );
    let window = Duration::from_secs(4);
    let first_tenth = closes
        .iter()
        .filter(|c| c.at.duration_since(sigterm) < window / 10)
        .count();
    assert!(
        first_tenth < closes.len() / 4,
        "{first_tenth} of {} closed in the first 10% of the window",
        closes.len()
    );
    let last = closes
        .iter()
        .map(|c| c.at.duration_since(sigterm))
        .max()
        .unwrap();
    assert!(
        last > window / 2,
        "closes reach into the second half of the window: {last:?}"
    );
}

const FEED: &str = "routes:\n  - path: /feed\n    transports: [ws, sse]\n    subjects: [\"feed.x\"]\n    auth: { mode: none }\n";

/// 10 SSE and 10 WebSocket clients; returns their receivers as channels of `n`.
async fn hold_clients(
    edge: std::net::SocketAddr,
) -> Vec<tokio::sync::mpsc::UnboundedReceiver<u64>> {
    let mut out = Vec::new();
    for _ in 0..10 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sse = sse_connect(&http_client(), &format!("http://{edge}/feed")).await;
        tokio::spawn(async move {
            while let Some(f) = sse.next().await {
                if let Frame::Event { data, event, .. } = f {
                    assert_ne!(event, "fanfare.reset");
                    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                    let _ = tx.send(v["n"].as_u64().unwrap());
                }
            }
        });
        out.push(rx);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut ws = ws_connect(edge, "/feed").await;
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    let _ = tx.send(v["data"]["n"].as_u64().unwrap());
                }
            }
        });
        out.push(rx);
    }
    out
}

async fn expect_exactly(
    clients: &mut [tokio::sync::mpsc::UnboundedReceiver<u64>],
    expected: &[u64],
) {
    for rx in clients.iter_mut() {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            got.push(
                tokio::time::timeout(DEADLINE, rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got, expected);
    }
    // Nothing more (no duplicate) once a later sentinel has arrived is checked by the
    // caller publishing the next batch; here: nothing already queued beyond.
    for rx in clients.iter_mut() {
        assert!(rx.try_recv().is_err(), "a duplicate arrived");
    }
}

/// Stops nats-server, checks that for `outage` every client stays connected and
/// readiness is 503, then restarts it and waits until fanfare is subscribed again.
async fn outage(nats: &mut NatsServer, admin: std::net::SocketAddr, outage: Duration, held: f64) {
    stop_until_unready(nats, admin).await;
    let until = Instant::now() + outage;
    let poll_interval = Duration::from_millis(250);
    while Instant::now() < until {
        let ws = metric(admin, "fanfare_connections{transport=\"ws\"}")
            .await
            .unwrap();
        let sse = metric(admin, "fanfare_connections{transport=\"sse\"}")
            .await
            .unwrap();
        assert_eq!(
            ws + sse,
            held,
            "a client was disconnected during the outage"
        );
        // Poll again until the outage window ends.
        tokio::time::sleep(poll_interval).await;
    }
    nats.restart().await;
    wait_for(
        "readyz 200 after NATS is back",
        Duration::from_secs(30),
        || async move { (admin_get(admin, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    wait_for(
        "fanfare's subscription restored at the server",
        DEADLINE,
        || async { (nats.subscription_count().await >= 1).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_keeps_clients_and_restores_subscriptions() {
    let mut nats = NatsServer::start().await;
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", Some(&nats.url())) + FEED)).await;
    let mut clients = hold_clients(ff.edge_addr).await;
    wait_for("fanfare subscribed", DEADLINE, || async {
        (nats.subscription_count().await == 1).then_some(())
    })
    .await;
    let app = async_nats::connect(nats.url()).await.unwrap();
    for n in 0..3 {
        app.publish("feed.x", json!({"n": n}).to_string().into())
            .await
            .unwrap();
    }
    app.flush().await.unwrap();
    expect_exactly(&mut clients, &[0, 1, 2]).await;

    outage(&mut nats, ff.admin_addr, Duration::from_secs(5), 20.0).await;
    let app = async_nats::connect(nats.url()).await.unwrap();
    for n in 3..8 {
        app.publish("feed.x", json!({"n": n}).to_string().into())
            .await
            .unwrap();
    }
    app.flush().await.unwrap();
    expect_exactly(&mut clients, &[3, 4, 5, 6, 7]).await;
    assert_eq!(
        nats.subscription_count().await,
        1,
        "restored once, not twice"
    );
    let closed = metric(
        ff.admin_addr,
        "fanfare_connections_closed_total{outcome=\"client_closed\",transport=\"ws\"}",
    )
    .await;
    assert_eq!(closed, Some(0.0), "no client was disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_outage_loses_nothing() {
    use async_nats::jetstream;
    let mut nats = NatsServer::start_jetstream().await;
    let setup = async_nats::connect(nats.url()).await.unwrap();
    jetstream::new(setup)
        .create_stream(jetstream::stream::Config {
            name: "FEED".into(),
            subjects: vec!["feed.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let yaml = base_yaml("http://127.0.0.1:1", Some(&nats.url()))
        + FEED
        + "    history: { jetstream: FEED }\n";
    let ff = start_fanfare(&yaml).await;
    let mut clients = hold_clients(ff.edge_addr).await;
    let publish = |from: u64, to: u64, url: String| async move {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        for n in from..to {
            js.publish("feed.x", json!({"n": n}).to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(0, 3, nats.url()).await;
    expect_exactly(&mut clients, &[0, 1, 2]).await;
    outage(&mut nats, ff.admin_addr, Duration::from_secs(5), 20.0).await;
    publish(3, 10, nats.url()).await;
    expect_exactly(&mut clients, &[3, 4, 5, 6, 7, 8, 9]).await;
}
