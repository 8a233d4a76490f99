//! The holes an outside security review found (issue 13), each reproduced from
//! outside: redirects followed by the auth callout, system subjects through publish,
//! an open admin publish, optional `aud`/`iss`, credentialed `*` CORS, panics from
//! huge expiries, zero durations, WebSocket protocol errors without a close frame,
//! non-ASCII and cross-scheme Origins, JWKS over http and through redirects.

mod support;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

/// GET with headers, never following redirects: (status, headers, body).
async fn get_raw(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = tokio::time::timeout(DEADLINE, req.send())
        .await
        .expect("an answer within the deadline")
        .unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    if h.get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return (status, h, String::new());
    }
    (status, h, r.text().await.unwrap_or_default())
}

async fn admin_post(admin: SocketAddr, subject: &str, auth: Option<&str>) -> (u16, Value) {
    let mut req = http_client()
        .post(format!("http://{admin}/publish/{subject}"))
        .body("x");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

// === 1: the upstream callout never follows redirects ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_auth_passes_a_redirect_back_instead_of_following_it() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + "routes:\n  - path: /staff/events\n    subjects: [staff.announcements]\n    auth: { mode: upstream, path: /auth-redirect }\n";
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/staff/events", ff.edge_addr);
    let (status, headers, _) = get_raw(&url, &[]).await;
    assert_eq!(
        status, 303,
        "the app's redirect goes back to the client as it is"
    );
    assert_eq!(headers["location"], "/login");
    // A session the app accepts still gets its stream.
    let (status, _, _) = get_raw(&url, &[("cookie", "session=alice")]).await;
    assert_eq!(status, 200);
}

// === 2: publishing on someone's behalf ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_subjects_are_refused_for_admin_and_websocket_publish() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /any\n    transports: [ws]\n    subjects: [feed]\n    allow_publish: [\">\"]\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    for subject in [
        "$JS.API.STREAM.DELETE.ORDERS",
        "$SYS.REQ.SERVER.PING",
        "_INBOX.abc",
    ] {
        let (status, body) = admin_post(ff.admin_addr, subject, None).await;
        assert_eq!(status, 403, "{subject}: {body}");
        assert_eq!(body["error"], "reserved_subject", "{subject}");
    }
    assert_eq!(admin_post(ff.admin_addr, "orders.1", None).await.0, 202);
    let mut ws = ws_connect(ff.edge_addr, "/any").await;
    for (i, subject) in ["$JS.API.STREAM.DELETE.ORDERS", "_INBOX.x.y"]
        .iter()
        .enumerate()
    {
        ws_send(
            &mut ws,
            json!({"type":"publish","subject":subject,"data":1,"ref":i}),
        )
        .await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{subject}");
        assert_eq!(reply["code"], "forbidden", "{subject}");
    }
    ws_send(
        &mut ws,
        json!({"type":"publish","subject":"chat.ok","data":1,"ref":"ok"}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_publish_needs_the_token_when_one_is_set() {
    let yaml = "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin: { listen: 127.0.0.1:0, publish_token: a-long-publish-token-0123456789 }\n";
    let ff = start_fanfare(yaml).await;
    assert_eq!(admin_post(ff.admin_addr, "orders.1", None).await.0, 401);
    assert_eq!(
        admin_post(ff.admin_addr, "orders.1", Some("Bearer wrong"))
            .await
            .0,
        401
    );
    assert_eq!(
        admin_post(
            ff.admin_addr,
            "orders.1",
            Some("Bearer a-long-publish-token-0123456789")
        )
        .await
        .0,
        202
    );
    // Probes and metrics stay open.
    assert_eq!(admin_get(ff.admin_addr, "/livez").await.0, 200);
    assert_eq!(admin_get(ff.admin_addr, "/metrics").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_publish_is_off_on_a_public_admin_address_without_a_token() {
    let yaml = "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin: { listen: 0.0.0.0:0 }\n";
    let ff = start_fanfare(yaml).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], ff.admin_addr.port()));
    let (status, body) = admin_post(admin, "orders.1", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(admin_get(admin, "/livez").await.0, 200);
    assert_eq!(admin_get(admin, "/metrics").await.0, 200);
}

#[test]
fn example_configs_bind_admin_to_loopback() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let c = fanfare::config::Config::load(&path).unwrap();
        assert!(
            c.admin.listen.0.ip().is_loopback(),
            "{}: admin.listen is {}",
            path.display(),
            c.admin.listen.0
        );
    }
}

#[test]
fn the_container_images_config_keeps_publish_off_and_has_no_demo() {
    let c = fanfare::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/fanfare.yaml"
    )))
    .unwrap();
    assert!(c.admin.publish_token.is_none() && !c.admin.listen.0.ip().is_loopback());
    // Publish is then off on that listener (admin_publish_is_off_on_a_public_admin_address_without_a_token).
    assert!(!c.demo && c.routes.is_empty());
}

// === 3: configured audience and issuer are required ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_a_configured_aud_or_iss_are_refused() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + &format!(
            "routes:\n  - path: /o\n    subjects: [orders.1]\n    auth: {{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\", audience: [shop], issuer: [auth.example] }}\n"
        );
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/o", ff.edge_addr);
    let bearer = |t: String| format!("Bearer {t}");
    let ok = hs256(&json!({"exp": now() + 60, "aud": "shop", "iss": "auth.example"}));
    assert_eq!(
        get_raw(&url, &[("authorization", &bearer(ok))]).await.0,
        200
    );
    for (what, claims) in [
        ("no aud", json!({"exp": now() + 60, "iss": "auth.example"})),
        ("no iss", json!({"exp": now() + 60, "aud": "shop"})),
    ] {
        let (status, _, body) = get_raw(&url, &[("authorization", &bearer(hs256(&claims)))]).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
}

// === 7: `*` never comes with credentials ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_origin_is_answered_without_credentials() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /pub\n    transports: [sse, poll]\n    subjects: [feed]\n    allowed_origins: [\"*\"]\n    poll: { timeout: 100ms }\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    for path in ["/pub", "/pub?transport=poll&cursor="] {
        for origin in ["https://evil.example", "null"] {
            let url = format!("http://{}{path}", ff.edge_addr);
            let client = http_client();
            let r = client
                .get(&url)
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path} {origin}");
            assert_eq!(
                r.headers()["access-control-allow-origin"],
                "*",
                "{path} {origin}"
            );
            assert!(
                r.headers()
                    .get("access-control-allow-credentials")
                    .is_none(),
                "{path} {origin}: no credentials with *"
            );
        }
    }
}

#[test]
fn check_config_refuses_a_wildcard_origin_on_cookie_routes() {
    for auth in [
        "{ mode: upstream, path: /auth }".to_string(),
        format!("{{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\", cookie: tok }}"),
    ] {
        let yaml = format!(
            "routes:\n  - path: /x\n    subjects: [x]\n    allowed_origins: [\"*\"]\n    auth: {auth}\n"
        );
        let (_, reason) = fanfare::config::Config::parse(&yaml).expect_err(&auth);
        assert!(reason.contains("allowed_origins"), "{reason}");
    }
}

// === 9: no panic from input ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_expiries_are_refused_and_fractional_ones_honoured() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + &format!(
            "routes:\n  - path: /o\n    transports: [sse, ws]\n    subjects: [orders.1]\n    auth: {{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\", leeway: 0s }}\n"
        )
        + "  - path: /u\n    subjects: [orders.1]\n    auth: { mode: upstream, path: /auth-huge-expiry }\n";
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/o", ff.edge_addr);
    for exp in [json!(u64::MAX), json!(1u64 << 63), json!(1e300)] {
        let t = hs256(&json!({ "exp": exp }));
        let (status, _, body) = get_raw(&url, &[("authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(status, 401, "exp {exp}: {body}");
    }
    let (status, _, body) = get_raw(&format!("http://{}/u", ff.edge_addr), &[]).await;
    assert_eq!(
        status, 502,
        "an app expiry past any clock is the app's error: {body}"
    );
    // The instance is unharmed, and a fractional exp closes the connection on time.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 1.5;
    let t = hs256(&json!({ "exp": exp }));
    let mut ws = ws_connect_with(ff.edge_addr, "/o", &format!("Bearer {t}")).await;
    assert_eq!(ws_close_code(&mut ws).await, 4001, "token expiry");
}

/// A WebSocket client handshake with an `Authorization` header.
async fn ws_connect_with(addr: SocketAddr, path: &str, authorization: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", authorization.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

// === 10: durations that cannot work ===

#[test]
fn zero_durations_that_cannot_work_are_refused() {
    let jwt = |extra: &str| {
        format!(
            "routes:\n  - path: /x\n    subjects: [x]\n    auth: {{ mode: jwt, algorithms: [RS256], jwks_url: \"https://idp.example/jwks\", {extra} }}\n"
        )
    };
    for (yaml, key) in [
        (jwt("jwks_refresh: 0s"), "jwks_refresh"),
        ("routes:\n  - path: /x\n    subjects: [x]\n    auth: { mode: none }\n    ws: { pong_timeout: 0s }\n".to_string(), "pong_timeout"),
        ("routes:\n  - path: /x\n    subjects: [x]\n    auth: { mode: none }\n    retry: 0s\n".to_string(), "retry"),
        ("proxy: { write_timeout: 0s }\n".to_string(), "write_timeout"),
    ] {
        let (_, reason) = fanfare::config::Config::parse(&yaml).expect_err(key);
        assert!(reason.contains(key), "{key}: {reason}");
    }
}

// === 11: WebSocket protocol errors get a close frame ===

/// Reads server frames until a close frame and returns its code.
async fn close_code_of(s: &mut tokio::net::TcpStream) -> u16 {
    loop {
        let mut h = [0u8; 2];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut h))
            .await
            .expect("a frame within the deadline")
            .expect("a close frame before the connection ends (not 1006)");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).await.unwrap();
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).await.unwrap();
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        s.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// A client frame, masked with a zero key unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    f.push(mask_bit | u8::try_from(payload.len()).unwrap());
    if masked {
        f.extend_from_slice(&[0, 0, 0, 0]);
    }
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_errors_are_closed_with_1002_or_1007() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /ws\n    transports: [ws]\n    subjects: [feed]\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("unmasked client frame", frame(0x81, b"{}", false), 1002),
        ("reserved opcode", frame(0x83, b"", true), 1002),
        ("RSV bits", frame(0xC1, b"{}", true), 1002),
        ("fragmented ping", frame(0x09, b"", true), 1002),
        ("stray continuation", frame(0x80, b"x", true), 1002),
        ("invalid UTF-8 text", frame(0x81, &[0xff, 0xfe], true), 1007),
    ];
    for (what, bytes, code) in cases {
        let mut s = raw_ws(ff.edge_addr, "/ws").await;
        s.write_all(&bytes).await.unwrap();
        assert_eq!(close_code_of(&mut s).await, code, "{what}");
    }
}

// === 12: Origin checks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_and_cross_scheme_origins_are_refused() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /s\n    subjects: [feed]\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    let host = ff.edge_addr.to_string();
    let (mut s, head, _) = raw_get_with(
        ff.edge_addr,
        "/s",
        &[("Host", &host), ("Origin", "http://\u{e9}vil.example")],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "non-ASCII Origin: {head}");
    drop(s.shutdown().await);
    for (origin, want) in [
        (format!("http://{host}"), "200"),
        (format!("https://{host}"), "403"),
        (format!("ftp://{host}"), "403"),
        (format!("http://{host}.evil.example"), "403"),
    ] {
        let (_, head, _) =
            raw_get_with(ff.edge_addr, "/s", &[("Host", &host), ("Origin", &origin)]).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "{origin}: {head}"
        );
    }
}

/// A raw HTTP/1.1 GET with the given headers (bytes as they are, for non-ASCII).
async fn raw_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (tokio::net::TcpStream, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&b[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            return (s, head, buf[pos + 4..].to_vec());
        }
    }
}

// === 13: JWKS ===

#[test]
fn jwks_over_plain_http_needs_an_explicit_opt_in() {
    let route = |extra: &str| {
        format!(
            "routes:\n  - path: /x\n    subjects: [x]\n    auth: {{ mode: jwt, algorithms: [ES256], jwks_url: \"http://idp.internal/jwks\"{extra} }}\n"
        )
    };
    let (_, reason) = fanfare::config::Config::parse(&route("")).expect_err("http JWKS");
    assert!(reason.contains("allow_insecure_jwks"), "{reason}");
    fanfare::config::Config::parse(&route(", allow_insecure_jwks: true")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_fetches_never_follow_redirects() {
    let app = StubApp::start().await;
    *app.jwks.lock().unwrap() = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1","alg":"ES256"}]}"#.to_string();
    let yaml = base_yaml(&app.url(), None)
        + &format!(
            "routes:\n  - path: /o\n    subjects: [orders.1]\n    auth: {{ mode: jwt, algorithms: [ES256], jwks_url: \"{}/jwks-redirect\", allow_insecure_jwks: true, jwks_refresh: 1s }}\n",
            app.url()
        );
    let ff = start_fanfare(&yaml).await;
    wait_for("a failed JWKS refresh", DEADLINE, || async {
        (metric(
            ff.admin_addr,
            "fanfare_jwks_refresh_total{result=\"error\"}",
        )
        .await
            >= Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(
        metric(ff.admin_addr, "fanfare_jwks_refresh_total{result=\"ok\"}")
            .await
            .unwrap_or(0.0),
        0.0,
        "the redirect to /jwks was not followed"
    );
}

// === 8: forwarded addresses only from trusted proxies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let route = "routes:\n  - path: /s\n    subjects: [feed]\n    auth: { mode: none }\n";
    for (trusted, second) in [("[]", "429"), ("[127.0.0.0/8]", "200")] {
        let yaml = base_yaml("http://127.0.0.1:1", None).replace(
            "shutdown:",
            &format!(
                "limits: {{ max_connections_per_ip: 1, trusted_proxies: {trusted} }}\nshutdown:"
            ),
        ) + route;
        let ff = start_fanfare(&yaml).await;
        let (_a, head, _) = raw_get_with(
            ff.edge_addr,
            "/s",
            &[("Host", "x"), ("X-Forwarded-For", "198.51.100.1")],
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{trusted}: {head}");
        let (_b, head, body) = raw_get_with(
            ff.edge_addr,
            "/s",
            &[("Host", "x"), ("X-Forwarded-For", "198.51.100.2")],
        )
        .await;
        let head = format!("{head} {}", String::from_utf8_lossy(&body));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {second}")),
            "{trusted}: {head}"
        );
    }
}

// === 6: slow handshakes ===

/// Reads until the server closes the connection; panics if it stays open past the
/// deadline.
async fn wait_closed(s: &mut tokio::net::TcpStream) {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection is still open after {DEADLINE:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_have_a_deadline() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None).replace(
        "shutdown:",
        "limits: { request_head_timeout: 400ms }\nshutdown:",
    );
    let ff = start_fanfare(&yaml).await;
    // An idle socket (h2c is on by default: fanfare would wait for a preface).
    let started = std::time::Instant::now();
    let mut idle = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    wait_closed(&mut idle).await;
    // A head sent one line at a time, each well within the deadline but never done.
    let mut drip = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    drip.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
        for i in 0..200 {
            pace.tick().await;
            if drip
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return drip;
            }
        }
        drip
    });
    let mut drip = dripping.await.unwrap();
    wait_closed(&mut drip).await;
    assert!(
        started.elapsed() < DEADLINE,
        "both closed well before the test deadline"
    );
    // A whole request is served, and the connection is reused for a second one.
    let mut ok = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    for _ in 0..2 {
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("hello from the app") {
            let n = tokio::time::timeout(DEADLINE, ok.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed while a request was answered");
            got.extend_from_slice(&b[..n]);
        }
    }
    // Then, idle between requests, it is closed too.
    wait_closed(&mut ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_head_are_capped_per_address() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        .replace("shutdown:", "limits: { max_pending_per_ip: 3 }\nshutdown:");
    let ff = start_fanfare(&yaml).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap());
    }
    // A fourth is closed before it is answered. (fanfare counts connections in the
    // order it accepts them, so the three above are counted first.)
    let mut fourth = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut b = [0u8; 64];
    let answered = match tokio::time::timeout(DEADLINE, fourth.read(&mut b)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => 0,
        Err(_) => panic!("the fourth connection was neither answered nor closed"),
    };
    assert_eq!(
        answered,
        0,
        "the fourth connection was served: {:?}",
        String::from_utf8_lossy(&b)
    );
    wait_closed(&mut fourth).await;
    // The three held ones are still open: one finishes its head and is answered.
    idle[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 256];
    let n = tokio::time::timeout(DEADLINE, idle[0].read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    // Once it has, its place is free again.
    let mut again = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    again
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(DEADLINE, again.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
}

// === 5: subscription churn ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_churn_is_rate_limited_per_connection() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /ws\n    transports: [ws]\n    allow_subscribe: [\"t.*\"]\n    auth: { mode: none }\n    ws: { subscribe_rate: 5, subscribe_burst: 10 }\n";
    let ff = start_fanfare(&yaml).await;
    let mut ws = ws_connect(ff.edge_addr, "/ws").await;
    let started = std::time::Instant::now();
    let mut limited = 0u32;
    for i in 0..100 {
        let kind = if i % 2 == 0 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        ws_send(&mut ws, json!({"type":kind,"subject":"t.1","ref":i})).await;
        if ws_json(&mut ws).await["code"] == "rate_limited" {
            limited += 1;
        }
    }
    // The bucket allows its burst plus what refilled while the test ran.
    let allowed = 100 - limited;
    let refill = (5.0 * started.elapsed().as_secs_f64()).ceil() as u32;
    assert!(
        allowed <= 10 + refill,
        "{allowed} of 100 went through in {:?}",
        started.elapsed()
    );
    assert!(
        metric(
            ff.admin_addr,
            "fanfare_rejected_total{reason=\"rate_limited\"}"
        )
        .await
            == Some(f64::from(limited))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_per_process_are_capped_lingering_ones_included() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        .replace("shutdown:", "limits: { max_topics: 3 }\nshutdown:")
        + "routes:\n  - path: /ws\n    transports: [ws]\n    allow_subscribe: [\"t.*\"]\n    auth: { mode: none }\n    history: { linger: 1h }\n"
        + "  - path: /s/{id}\n    subjects: [\"t.{id}\"]\n    auth: { mode: none }\n    history: { linger: 1h }\n";
    let ff = start_fanfare(&yaml).await;
    let mut ws = ws_connect(ff.edge_addr, "/ws").await;
    for i in 1..=3 {
        ws_send(
            &mut ws,
            json!({"type":"subscribe","subject":format!("t.{i}")}),
        )
        .await;
        assert_eq!(ws_json(&mut ws).await["type"], "ack", "t.{i}");
        ws_send(
            &mut ws,
            json!({"type":"unsubscribe","subject":format!("t.{i}")}),
        )
        .await;
        assert_eq!(ws_json(&mut ws).await["type"], "ack", "t.{i}");
    }
    // Three topics linger; a fourth subject is refused, an existing one is fine.
    ws_send(&mut ws, json!({"type":"subscribe","subject":"t.4"})).await;
    let r = ws_json(&mut ws).await;
    assert_eq!(r["code"], "too_many_topics", "{r}");
    ws_send(&mut ws, json!({"type":"subscribe","subject":"t.2"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    // An SSE client on a new subject is refused with a clear status; on an existing
    // one it is served.
    let (status, _, body) = get_raw(&format!("http://{}/s/9", ff.edge_addr), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too_many_topics"), "{body}");
    assert_eq!(
        get_raw(&format!("http://{}/s/3", ff.edge_addr), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_rejected_total{reason=\"too_many_topics\"}"
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_held_to_the_pending_cap() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None).replace(
        "shutdown:",
        "limits: { max_pending_per_ip: 2, trusted_proxies: [127.0.0.0/8] }\nshutdown:",
    );
    let ff = start_fanfare(&yaml).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap());
    }
    let mut b = [0u8; 256];
    for s in &mut idle {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    }
}
