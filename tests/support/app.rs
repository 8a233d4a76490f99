//! The stub app: an in-process upstream with the routes the proxy and auth tests need.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tokio::sync::Notify;

/// An in-process upstream app with routes the proxy tests need.
pub struct StubApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The peer addresses of the connections fanfare opened to it, one per request.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// Requests currently waiting in `/hold`.
    pub held: Arc<Mutex<usize>>,
    /// Releases every request waiting in `/hold` (and the second half of `/stream`).
    pub release: Arc<Notify>,
    /// Calls to `/auth` so far.
    pub auth_calls: Arc<Mutex<usize>>,
    /// The JWKS document `/jwks` serves.
    pub jwks: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    held: Arc<Mutex<usize>>,
    release: Arc<Notify>,
    auth_calls: Arc<Mutex<usize>>,
    jwks: Arc<Mutex<String>>,
}

impl StubApp {
    /// Starts the app on a free port.
    pub async fn start() -> StubApp {
        let state = AppState {
            peers: Arc::default(),
            held: Arc::default(),
            release: Arc::new(Notify::new()),
            auth_calls: Arc::default(),
            jwks: Arc::new(Mutex::new(r#"{"keys":[]}"#.to_string())),
        };
        let app = Router::new()
            .route("/", get(|| async { "hello from the app" }))
            .route("/headers", get(headers))
            .route("/echo", post(echo))
            .route("/hold", get(hold))
            .route("/stream", get(stream))
            .route("/auth", get(auth))
            .route("/jwks", get(jwks))
            .route("/login", get(|| async { "the login page" }))
            .route("/auth-redirect", get(auth_redirect))
            .route(
                "/jwks-redirect",
                get(|| async { axum::response::Redirect::temporary("/jwks") }),
            )
            .route("/auth-huge-expiry", get(auth_huge_expiry))
            .route("/page/live", get(live_page))
            .route(
                "/page/blank",
                get(|| async {
                    axum::response::Html(
                        "<!doctype html><meta charset=\"utf-8\"><title>blank</title>",
                    )
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        StubApp {
            addr,
            peers: state.peers,
            held: state.held,
            release: state.release,
            auth_calls: state.auth_calls,
            jwks: state.jwks,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Distinct connections seen so far.
    pub fn distinct_connections(&self) -> usize {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .collect::<HashSet<_>>()
            .len()
    }

    /// Requests currently held in `/hold`.
    pub fn held_now(&self) -> usize {
        *self.held.lock().unwrap()
    }
}

impl Drop for StubApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn headers(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> axum::Json<serde_json::Value> {
    s.peers.lock().unwrap().push(peer);
    let map: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    axum::Json(map.into())
}

/// The app's session check for `upstream` auth: cookie `session=alice` may read orders
/// 1 and 2 and publish to chat.alice; `session=bob` reads order 3; anything else is 401
/// with the app's own JSON body.
async fn auth(State(s): State<AppState>, h: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    *s.auth_calls.lock().unwrap() += 1;
    let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    let original = h
        .get("x-original-uri")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(original.starts_with('/'), "fanfare sends X-Original-URI");
    if cookie.contains("session=alice") {
        (
            [
                ("fanfare-subscribe", "orders.1, orders.2"),
                ("fanfare-publish", "chat.alice"),
            ],
            "ok",
        )
            .into_response()
    } else if cookie.contains("session=bob") {
        ([("fanfare-subscribe", "orders.3")], "ok").into_response()
    } else {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"app_error":"login required"}"#,
        )
            .into_response()
    }
}

/// Like many web apps: an anonymous user is sent to the login page (302 -> /login,
/// which answers 200); `session=alice` is granted orders.1.
async fn auth_redirect(State(s): State<AppState>, h: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    *s.auth_calls.lock().unwrap() += 1;
    let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    if cookie.contains("session=alice") {
        ([("fanfare-subscribe", "orders.1")], "ok").into_response()
    } else {
        axum::response::Redirect::to("/login").into_response()
    }
}

/// A page that opens `new EventSource("/live/1")` (same origin, through fanfare) and
/// records what it sees in `window.seen` for a browser test to read.
async fn live_page() -> axum::response::Html<&'static str> {
    axum::response::Html(
        r#"<!doctype html><meta charset="utf-8"><title>live</title>
<script>
window.seen = { messages: [], errors: 0, opens: 0 };
const es = new EventSource("/live/1");
window.es = es;
es.onopen = () => { window.seen.opens += 1; };
es.onerror = () => { window.seen.errors += 1; };
es.onmessage = (e) => { window.seen.messages.push(JSON.parse(e.data).n); };
</script>"#,
    )
}

/// Grants orders.1 with an expiry no clock can reach (u64::MAX seconds).
async fn auth_huge_expiry() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            ("fanfare-subscribe", "orders.1"),
            ("fanfare-expires", "18446744073709551615"),
        ],
        "ok",
    )
        .into_response()
}

async fn jwks(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "application/json")],
        s.jwks.lock().unwrap().clone(),
    )
}

async fn echo(body: axum::body::Bytes) -> axum::body::Bytes {
    body
}

async fn hold(State(s): State<AppState>) -> &'static str {
    let notified = s.release.notified();
    *s.held.lock().unwrap() += 1;
    notified.await;
    *s.held.lock().unwrap() -= 1;
    "released"
}

/// Sends "first\n", then waits for `release` before "second\n": a client that reads
/// "first" before releasing proves the proxy streams.
async fn stream(State(s): State<AppState>) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let release = s.release.clone();
    tokio::spawn(async move {
        let notified = release.notified();
        let _ = tx.send(Ok(b"first\n".to_vec())).await;
        notified.await;
        let _ = tx.send(Ok(b"second\n".to_vec())).await;
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    axum::response::Response::new(body)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
