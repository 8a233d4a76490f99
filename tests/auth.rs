//! Authorization and abuse limits: every refusal path, upstream auth against the stub
//! app, JWKS rotation, expiry of held connections, quotas, and a log capture.

mod support;

use std::time::{Duration, Instant};

use futures::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use support::*;

fn jwt_routes() -> String {
    format!(
        "
routes:
  - path: /orders/{{id}}/events
    transports: [sse, ws]
    subjects: [\"orders.{{id}}\"]
    auth: {{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\", audience: [shop], leeway: 0s, cookie: tok }}
    history: {{ linger: 0s }}
  - path: /me
    transports: [sse, ws]
    subjects: [\"users.{{claims.sub}}\"]
    allow_publish: [\"users.{{claims.sub}}.out\"]
    auth: {{ mode: jwt, algorithms: [HS256], secret: \"{SECRET}\", leeway: 0s }}
    ws: {{ publish_rate: 1, publish_burst: 2 }}
"
    )
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http_client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return (200, Value::Null);
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_refusals() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &jwt_routes())).await;
    let url = format!("http://{}/orders/1/events", ff.edge_addr);
    let good = json!({"exp": now() + 60, "aud": "shop", "fanfare_subscribe": ["orders.1"]});
    let none_alg = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(good.to_string().as_bytes())
    );
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &good,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"some-other-secret-some-other-secret-0123"),
    )
    .unwrap();
    let expired =
        hs256(&json!({"exp": now() - 5, "aud": "shop", "fanfare_subscribe": ["orders.1"]}));
    let wrong_aud =
        hs256(&json!({"exp": now() + 60, "aud": "blog", "fanfare_subscribe": ["orders.1"]}));
    let no_exp = hs256(&json!({"aud": "shop", "fanfare_subscribe": ["orders.1"]}));
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        ("bad signature", Some(wrong_key), "invalid_token"),
        ("alg none", Some(none_alg), "invalid_token"),
        ("wrong algorithm", Some(hs384), "wrong_algorithm"),
        ("expired", Some(expired), "expired"),
        ("wrong audience", Some(wrong_aud), "wrong_audience"),
        ("no exp", Some(no_exp), "invalid_token"),
    ];
    for (what, token, label) in cases {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, body) = get(&url, &headers).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "unauthorized", "{what}");
        let series = format!("fanfare_auth_total{{mode=\"jwt\",result=\"{label}\"}}");
        assert!(
            metric(ff.admin_addr, &series).await.unwrap_or(0.0) >= 1.0,
            "{what}: {series}"
        );
    }
    // The same token is fine, and a subject outside its grant is 403.
    let ok = hs256(&good);
    assert_eq!(
        get(&url, &[("authorization", &format!("Bearer {ok}"))])
            .await
            .0,
        200
    );
    let (status, body) = get(
        &format!("http://{}/orders/2/events", ff.edge_addr),
        &[("authorization", &format!("Bearer {ok}"))],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    wait_metric(ff.admin_addr, "fanfare_subscriptions", 0.0).await;
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_from_query_cookie_and_claim_templates() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &jwt_routes())).await;
    let t =
        hs256(&json!({"exp": now() + 60, "aud": "shop", "fanfare_subscribe": "orders.1 orders.2"}));
    let client = http_client();
    // EventSource cannot set headers: the query parameter works.
    let mut q = sse_connect(
        &client,
        &format!("http://{}/orders/1/events?access_token={t}", ff.edge_addr),
    )
    .await;
    // So does the configured cookie.
    let r = client
        .get(format!("http://{}/orders/2/events", ff.edge_addr))
        .header("cookie", format!("other=1; tok={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut c = SseReader::new(r);
    publish(ff.admin_addr, "orders.1", None, "one").await;
    publish(ff.admin_addr, "orders.2", None, "two").await;
    assert_eq!(q.next_event().await.unwrap().2, "one");
    assert_eq!(c.next_event().await.unwrap().2, "two");

    // A subject built from a claim: users.<sub>.
    let me = hs256(&json!({"exp": now() + 60, "sub": "u7"}));
    let mut m = sse_connect(
        &client,
        &format!("http://{}/me?access_token={me}", ff.edge_addr),
    )
    .await;
    publish(ff.admin_addr, "users.u7", None, "mine").await;
    assert_eq!(m.next_event().await.unwrap().2, "mine");
    // A claim that would inject tokens is refused.
    for evil in ["u7.>", ">", "a.b", "*"] {
        let bad = hs256(&json!({"exp": now() + 60, "sub": evil}));
        let (status, body) = get(
            &format!("http://{}/me?access_token={bad}", ff.edge_addr),
            &[],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("invalid_claim")),
            "{evil}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_grants_and_publish_rate() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &jwt_routes())).await;
    let t = hs256(&json!({"exp": now() + 60, "sub": "u1", "fanfare_subscribe": ["news.*"]}));
    let mut ws = ws_connect(ff.edge_addr, &format!("/me?access_token={t}")).await;
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"news.today","ref":1}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"users.u2","ref":2}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "forbidden");
    ws_send(
        &mut ws,
        json!({"type":"publish","subject":"users.u2.out","data":1,"ref":3}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "forbidden");
    // publish_rate 1/s with a burst of 2: the third immediate publish is refused.
    let mut codes = Vec::new();
    for i in 0..3 {
        ws_send(
            &mut ws,
            json!({"type":"publish","subject":"users.u1.out","data":i,"ref":i}),
        )
        .await;
        let v = ws_json(&mut ws).await;
        codes.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
                .to_string(),
        );
    }
    assert_eq!(codes, ["ack", "ack", "rate_limited"]);
    assert!(
        metric(
            ff.admin_addr,
            "fanfare_rejected_total{reason=\"rate_limited\"}"
        )
        .await
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_close_when_the_token_expires() {
    let ff = start_fanfare(&(base_yaml("http://127.0.0.1:1", None) + &jwt_routes())).await;
    let exp = now() + 2;
    let t = hs256(&json!({"exp": exp, "sub": "u9"}));
    let mut sse = sse_connect(
        &http_client(),
        &format!("http://{}/me?access_token={t}", ff.edge_addr),
    )
    .await;
    let mut ws = ws_connect(ff.edge_addr, &format!("/me?access_token={t}")).await;
    let (_, event, data) = sse.next_event().await.expect("the expiry event");
    assert_eq!(event, "fanfare.expired");
    assert!(data.contains("token_expired"));
    assert!(now() >= exp, "closed before exp");
    assert_eq!(
        sse.next().await,
        None,
        "the stream ends after fanfare.expired"
    );
    assert_eq!(ws_close_code(&mut ws).await, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_auth_uses_the_apps_session() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None)
        + "routes:\n  - path: /orders/{id}/events\n    transports: [sse, ws]\n    subjects: [\"orders.{id}\"]\n    allow_subscribe: [\"public.*\"]\n    auth: { mode: upstream, path: /auth, cache_ttl: 0s }\n";
    let ff = start_fanfare(&yaml).await;
    let url = |id: u32| format!("http://{}/orders/{id}/events", ff.edge_addr);
    let alice = [("cookie", "session=alice")];
    assert_eq!(get(&url(1), &alice).await.0, 200);
    assert_eq!(get(&url(2), &alice).await.0, 200);
    let (status, body) = get(&url(3), &alice).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(get(&url(3), &[("cookie", "session=bob")]).await.0, 200);
    // The app's 401 and its body come back unchanged.
    let r = http_client().get(url(1)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), r#"{"app_error":"login required"}"#);
    // Run-time subscribe: the app's grant plus the route's allowances.
    let mut ws = {
        let tcp = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/orders/1/events", ff.edge_addr),
            )
            .unwrap();
        req.headers_mut()
            .insert("cookie", "session=alice".parse().unwrap());
        tokio_tungstenite::client_async(req, tcp).await.unwrap().0
    };
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"orders.2","ref":1}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"public.x","ref":2}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    ws_send(
        &mut ws,
        json!({"type":"subscribe","subject":"orders.3","ref":3}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "forbidden");
    ws_send(
        &mut ws,
        json!({"type":"publish","subject":"chat.alice","data":"hi","ref":4}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_auth_app_down_is_503() {
    let closed = closed_port();
    let down = format!("http://127.0.0.1:{}", closed.port);
    let yaml = base_yaml(&down, None)
        + "routes:\n  - path: /o/{id}\n    subjects: [\"orders.{id}\"]\n    auth: { mode: upstream, path: /auth, timeout: 500ms }\n";
    let ff = start_fanfare(&yaml).await;
    let (status, body) = get(
        &format!("http://{}/o/1", ff.edge_addr),
        &[("cookie", "session=alice")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("auth_unavailable"))
    );
    assert_eq!(
        metric(
            ff.admin_addr,
            "fanfare_auth_total{mode=\"upstream\",result=\"unavailable\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_auth_cache_honours_its_ttl() {
    let app = StubApp::start().await;
    // Two routes: one whose cache cannot expire during the test (so the hit is checked
    // in every run, however slow), one whose short TTL is waited out.
    let yaml = base_yaml(&app.url(), None)
        + "routes:\n  - path: /o/{id}\n    subjects: [\"orders.{id}\"]\n    auth: { mode: upstream, path: /auth, cache_ttl: 1h }\n"
        + "  - path: /p/{id}\n    subjects: [\"orders.{id}\"]\n    auth: { mode: upstream, path: /auth, cache_ttl: 300ms }\n";
    let ff = start_fanfare(&yaml).await;
    let calls = || *app.auth_calls.lock().unwrap();
    let alice = [("cookie", "session=alice")];

    let long = format!("http://{}/o/1", ff.edge_addr);
    assert_eq!(get(&long, &alice).await.0, 200);
    assert_eq!(get(&long, &alice).await.0, 200);
    assert_eq!(
        calls(),
        1,
        "the second handshake within the TTL used the cache"
    );
    // Different credentials are a different cache entry (and a refusal is not cached).
    assert_eq!(get(&long, &[("cookie", "session=carol")]).await.0, 401);
    assert_eq!(calls(), 2);

    let short = format!("http://{}/p/1", ff.edge_addr);
    let first = Instant::now();
    assert_eq!(get(&short, &alice).await.0, 200);
    let before = calls();
    wait_for("the cached grant to expire", DEADLINE, || {
        let url = short.clone();
        let calls = app.auth_calls.clone();
        async move {
            assert_eq!(get(&url, &alice).await.0, 200);
            (*calls.lock().unwrap() > before).then_some(())
        }
    })
    .await;
    assert!(
        first.elapsed() >= Duration::from_millis(300),
        "the app was asked again only after the TTL"
    );
}

fn es256_key(seed: u8) -> (EncodingKey, Value) {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!(format!("key-{seed}"));
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    (encoding, jwk)
}

fn es256(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.to_string());
    encode(&h, claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation() {
    let app = StubApp::start().await;
    let (key_a, jwk_a) = es256_key(7);
    let (key_b, jwk_b) = es256_key(9);
    *app.jwks.lock().unwrap() = json!({"keys": [jwk_a]}).to_string();
    let yaml = base_yaml(&app.url(), None)
        + &format!(
            "routes:\n  - path: /o/{{id}}\n    subjects: [\"orders.{{id}}\"]\n    auth: {{ mode: jwt, algorithms: [ES256], jwks_url: \"{}/jwks\", jwks_refresh: 200ms, allow_insecure_jwks: true }}\n",
            app.url()
        );
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/o/1", ff.edge_addr);
    let claims = json!({"exp": now() + 60, "fanfare_subscribe": ["orders.1"]});
    let token_a = es256(&key_a, "key-7", &claims);
    let token_b = es256(&key_b, "key-9", &claims);
    let bearer = |t: &str| format!("Bearer {t}");
    wait_for("key A to be loaded", DEADLINE, || {
        let (url, auth) = (url.clone(), bearer(&token_a));
        async move { (get(&url, &[("authorization", &auth)]).await.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(
        get(&url, &[("authorization", &bearer(&token_b))]).await.0,
        401
    );
    // Rotate: key B is published; after a refresh it is accepted.
    *app.jwks.lock().unwrap() = json!({"keys": [jwk_a, jwk_b]}).to_string();
    wait_for("key B to be accepted after a refresh", DEADLINE, || {
        let (url, auth) = (url.clone(), bearer(&token_b));
        async move { (get(&url, &[("authorization", &auth)]).await.0 == 200).then_some(()) }
    })
    .await;
    // A failed refresh keeps the last good keys.
    *app.jwks.lock().unwrap() = "not json".to_string();
    wait_for("a failed refresh to be counted", DEADLINE, || async {
        (metric(
            ff.admin_addr,
            "fanfare_jwks_refresh_total{result=\"error\"}",
        )
        .await
        .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        get(&url, &[("authorization", &bearer(&token_b))]).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_policy() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "routes:\n  - path: /strict\n    subjects: [s]\n    auth: { mode: none }\n    allowed_origins: [\"https://app.example\"]\n    allow_missing_origin: false\n";
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/strict", ff.edge_addr);
    let (status, body) = get(&url, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("origin_required"))
    );
    let (status, body) = get(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert_eq!(get(&url, &[("origin", "https://app.example")]).await.0, 200);
    // Cross-site WebSocket hijacking: the upgrade is refused before the 101.
    let tcp = tokio::net::TcpStream::connect(ff.edge_addr).await.unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/strict", ff.edge_addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::client_async(req, tcp).await.is_err());
    assert!(
        metric(
            ff.admin_addr,
            "fanfare_rejected_total{reason=\"origin_not_allowed\"}"
        )
        .await
        .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_quotas() {
    let yaml = base_yaml("http://127.0.0.1:1", None)
        + "limits: { max_connections: 3, max_connections_per_ip: 2 }\nroutes:\n  - path: /q\n    transports: [sse, ws]\n    subjects: [q]\n    auth: { mode: none }\n";
    let ff = start_fanfare(&yaml).await;
    let url = format!("http://{}/q", ff.edge_addr);
    let client = http_client();
    let a = sse_connect(&client, &url).await;
    let _b = ws_connect(ff.edge_addr, "/q").await;
    let (status, body) = get(&url, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_connections_per_ip"))
    );
    // From another loopback address the per-IP count is separate, the total is not.
    let other = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let mut s = socket.connect(ff.edge_addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = vec![0u8; 512];
        let n = s.read(&mut b).await.unwrap();
        (s, String::from_utf8_lossy(&b[..n]).into_owned())
    };
    let (_c, head) = other("127.0.0.2").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_d, head) = other("127.0.0.3").await;
    assert!(
        head.starts_with("HTTP/1.1 429") && head.contains("too_many_connections\""),
        "{head}"
    );
    // Closing one frees its slot.
    drop(a);
    wait_metric(ff.admin_addr, "fanfare_connections{transport=\"sse\"}", 1.0).await;
    let (_e, head) = other("127.0.0.4").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_cookie_or_secret_reaches_the_log() {
    let app = StubApp::start().await;
    let yaml = base_yaml(&app.url(), None).replace("grace: 5s", "grace: 1s")
        + &jwt_routes()
        + "  - path: /u/{id}\n    subjects: [\"orders.{id}\"]\n    auth: { mode: upstream, path: /auth }\nlog: { format: json, level: debug }\n";
    let ff = FanfareProcess::start(&yaml).await;
    let valid = hs256(
        &json!({"exp": now() + 60, "aud": "shop", "fanfare_subscribe": ["orders.1"], "sub": "secret-subject"}),
    );
    let forged = format!("{}x", &valid[..valid.len() - 1]);
    let cookie = "session=mallory-cookie-value-123";
    let base = format!("http://{}", ff.edge);
    let _ = get(&format!("{base}/orders/1/events?access_token={valid}"), &[]).await;
    let _ = get(
        &format!("{base}/orders/1/events"),
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    let _ = get(
        &format!("{base}/orders/1/events"),
        &[("cookie", &format!("tok={valid}"))],
    )
    .await;
    let _ = get(&format!("{base}/u/1"), &[("cookie", cookie)]).await;
    let _ = get(
        &format!("{base}/u/1?access_token={forged}"),
        &[("cookie", "session=alice")],
    )
    .await;
    // Pass-through with credentials to an app path, and an app error.
    let _ = get(
        &format!("{base}/nope?access_token={valid}"),
        &[("authorization", &format!("Bearer {valid}"))],
    )
    .await;
    let mut ws = ws_connect(ff.edge, &format!("/orders/1/events?access_token={valid}")).await;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","subject":"x","token":"{valid}"}}"#
    )))
    .await
    .unwrap();
    let _ = ws_json(&mut ws).await;
    wait_for("the log to show the refused handshakes", DEADLINE, || {
        let n = ff
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("handshake refused"))
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let log = ff.log.lock().unwrap().join("\n");
    for secret in [
        valid.as_str(),
        forged.as_str(),
        SECRET,
        "alice-cookie-value-123",
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            let redacted = line.replace(secret, "<SECRET>");
            panic!("the log holds a secret: {redacted}");
        }
    }
    // The signature part alone must not leak either.
    let signature = valid.rsplit('.').next().unwrap();
    assert!(!log.contains(signature));
}
