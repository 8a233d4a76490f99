//! The test harness: a real `nats-server` on free ports, an in-process stub app,
//! fanfare itself (in-process through `fanfare::run`, or the real binary), and helpers
//! that wait for a condition with a deadline.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tokio::sync::Notify;

/// The default deadline for conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1, from the OS.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut poll_interval = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        // Poll again soon (backing off to 200 ms) until the deadline.
        tokio::time::sleep(poll_interval).await;
        poll_interval = (poll_interval * 2).min(Duration::from_millis(200));
    }
}

// === nats-server ===

/// Where the `nats-server` binary is: `NATS_SERVER_BIN`, then `PATH`, then /usr/sbin.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    for d in dirs {
        let c = d.join("nats-server");
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "nats-server not found (set NATS_SERVER_BIN or install it: `sudo apt-get install nats-server`, \
         or run scripts/test, which installs it)"
    );
}

/// A real nats-server on free ports, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/subsz`, `/connz`).
    pub monitor_port: u16,
    jetstream: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a plain nats-server and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        Self::start_with(false).await
    }

    /// Starts a nats-server with JetStream enabled (storage in a temp dir).
    pub async fn start_jetstream() -> NatsServer {
        Self::start_with(true).await
    }

    async fn start_with(jetstream: bool) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            jetstream: jetstream.then(|| tempfile::tempdir().expect("tempdir")),
        };
        s.spawn().await;
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &self.jetstream {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        self.child = Some(cmd.spawn().expect("spawn nats-server"));
        let port = self.port;
        wait_for(
            "nats-server to accept connections",
            DEADLINE,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// The subscriptions fanfare's connections (named `fanfare`) hold at the server,
    /// from the monitoring endpoint `/connz`.
    pub async fn subscription_count(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/connz", self.monitor_port);
        let v: serde_json::Value = http_client()
            .get(url)
            .send()
            .await
            .expect("connz")
            .json()
            .await
            .expect("connz json");
        v["connections"]
            .as_array()
            .map(|conns| {
                conns
                    .iter()
                    .filter(|c| c["name"] == "fanfare")
                    .map(|c| c["subscriptions"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// === the stub app ===

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

// === clients ===

/// A plain HTTP/1.1 client that ignores any proxy settings. One client is shared by
/// every test (building one loads the system's root certificates, which is slow); it
/// keeps no idle connections, so nothing ties it to one test's runtime.
pub fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            fanfare::http_client().expect("the TLS provider installs");
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        })
        .clone()
}

// === fanfare ===

/// Parses a YAML configuration (test helper: panics on error).
pub fn config(yaml: &str) -> fanfare::config::Config {
    fanfare::config::Config::parse(yaml).unwrap_or_else(|e| panic!("bad test config: {e:?}"))
}

/// A base configuration on free ports for an in-process instance.
pub fn base_yaml(upstream: &str, nats: Option<&str>) -> String {
    let mut y = format!(
        "listen: 127.0.0.1:0\nupstream: {upstream}\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ grace: 5s }}\n"
    );
    if let Some(url) = nats {
        y.push_str(&format!("nats: {{ url: \"{url}\" }}\n"));
    }
    y
}

/// Starts fanfare in-process.
pub async fn start_fanfare(yaml: &str) -> fanfare::Handle {
    fanfare::run(config(yaml)).await.expect("fanfare starts")
}

/// GETs an admin path and returns (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = http_client()
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .expect("admin request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The value of an unlabelled (or exactly-labelled) series in `/metrics`.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = admin_get(admin, "/metrics").await;
    body.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The fanfare binary running as a child process, killed on drop.
pub struct FanfareProcess {
    /// The child.
    pub child: Child,
    /// Its public address.
    pub edge: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Every line it has written to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl FanfareProcess {
    /// Writes `yaml` to a file and starts the binary on it, with JSON logs so the
    /// harness can read the bound addresses from the "fanfare listening" line.
    pub async fn start(yaml: &str) -> FanfareProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanfare.yaml");
        // JSON logs (the harness reads them); a test may choose its own level.
        let yaml = if yaml.contains("\nlog:") {
            yaml.to_string()
        } else {
            format!("{yaml}log: {{ format: json, level: info }}\n")
        };
        std::fs::write(&path, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanfare"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fanfare");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                if let Some(v) = serde_json::from_str::<serde_json::Value>(&line).ok()
                    && v["fields"]["message"] == "fanfare listening"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(v["fields"].clone());
                }
            }
        });
        let fields = rx
            .recv_timeout(DEADLINE)
            .expect("fanfare logs its listening line");
        let addr = |k: &str| fields[k].as_str().unwrap().parse().unwrap();
        FanfareProcess {
            child,
            edge: addr("edge"),
            admin: addr("admin"),
            log,
            _dir: dir,
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("fanfare to exit", deadline, || {
            let r = child.try_wait().ok().flatten();
            async move { r }
        })
        .await
    }
}

impl Drop for FanfareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === SSE ===

/// One SSE frame as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An event.
    Event {
        /// `id:`
        id: Option<String>,
        /// `event:` (default `message`).
        event: String,
        /// The `data:` lines joined with `\n`.
        data: String,
    },
    /// A comment line (`: heartbeat`).
    Comment(String),
    /// `retry:` alone.
    Retry(u64),
}

/// Parses one SSE block (the text between blank lines).
pub fn parse_block(block: &str) -> Option<Frame> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    let mut retry = None;
    let mut comment = None;
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            comment = Some(c.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => retry = value.parse().ok(),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if !data.is_empty() {
        return Some(Frame::Event {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data: data.join("\n"),
        });
    }
    if let Some(r) = retry {
        return Some(Frame::Retry(r));
    }
    comment.map(Frame::Comment)
}

/// A reader of SSE frames over any byte stream.
pub struct SseReader<S> {
    source: S,
    buf: Vec<u8>,
}

/// Where an [`SseReader`] gets bytes from.
pub trait ByteSource {
    /// The next chunk; `None` at the end of the stream.
    fn chunk(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

impl ByteSource for reqwest::Response {
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        reqwest::Response::chunk(self)
            .await
            .ok()
            .flatten()
            .map(|b| b.to_vec())
    }
}

impl ByteSource for tokio::net::TcpStream {
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut b = vec![0u8; 64 * 1024];
        match self.read(&mut b).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                b.truncate(n);
                Some(b)
            }
        }
    }
}

impl<S: ByteSource + Send> SseReader<S> {
    /// Wraps a source positioned at the start of the body.
    pub fn new(source: S) -> Self {
        SseReader {
            source,
            buf: Vec::new(),
        }
    }

    /// Wraps a source whose first bytes (e.g. after an HTTP head) are already read.
    pub fn with_prefix(source: S, prefix: Vec<u8>) -> Self {
        SseReader {
            source,
            buf: prefix,
        }
    }

    /// The next frame; `None` when the stream ends. Panics after [`DEADLINE`].
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(DEADLINE, self.next_inner())
            .await
            .expect("an SSE frame within the deadline")
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(f) = parse_block(text.trim_end_matches('\n')) {
                    return Some(f);
                }
                continue;
            }
            let chunk = self.source.chunk().await?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event, skipping comments and `retry:` frames.
    pub async fn next_event(&mut self) -> Option<(Option<String>, String, String)> {
        loop {
            match self.next().await? {
                Frame::Event { id, event, data } => return Some((id, event, data)),
                _ => continue,
            }
        }
    }

    /// The underlying source.
    pub fn source(&mut self) -> &mut S {
        &mut self.source
    }
}

/// Opens an SSE stream with reqwest and checks the response head.
pub async fn sse_connect(client: &reqwest::Client, url: &str) -> SseReader<reqwest::Response> {
    let r = client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE request");
    assert_eq!(r.status(), 200, "SSE status for {url}");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    SseReader::new(r)
}

/// Sends a raw HTTP/1.1 GET and returns the stream and the response head (status line
/// and headers), with whatever body bytes arrived with it.
pub async fn raw_get(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .expect("response head within the deadline")
            .unwrap();
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&b[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let rest = buf[pos + 4..].to_vec();
            return (s, head, rest);
        }
    }
}

/// Publishes through fanfare's admin endpoint and checks the 202.
pub async fn publish(
    admin: SocketAddr,
    subject: &str,
    event: Option<&str>,
    body: impl Into<reqwest::Body>,
) {
    let mut req = http_client()
        .post(format!("http://{admin}/publish/{subject}"))
        .body(body);
    if let Some(e) = event {
        req = req.header("fanfare-event", e);
    }
    let r = req.send().await.expect("publish request");
    let status = r.status();
    assert_eq!(
        status,
        202,
        "publish: {}",
        r.text().await.unwrap_or_default()
    );
}

/// Waits until `series` in `/metrics` equals `value`.
pub async fn wait_metric(admin: SocketAddr, series: &str, value: f64) {
    wait_for(&format!("{series} == {value}"), DEADLINE, || async move {
        (metric(admin, series).await == Some(value)).then_some(())
    })
    .await
}

// === WebSocket ===

/// A WebSocket client connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to `path` with tokio-tungstenite's client handshake.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake to {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends a JSON text frame.
pub async fn ws_send(ws: &mut Ws, v: serde_json::Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .await
        .unwrap();
}

/// The next frame the server sends, within [`DEADLINE`].
pub async fn ws_next(ws: &mut Ws) -> Option<tokio_tungstenite::tungstenite::Message> {
    use futures::StreamExt;
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a WebSocket frame within the deadline")
        .map(|r| r.expect("no WebSocket error"))
}

/// The next JSON text message, skipping pings.
pub async fn ws_json(ws: &mut Ws) -> serde_json::Value {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws_next(ws).await.expect("the connection stays open") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until a close frame and returns its code.
pub async fn ws_close_code(ws: &mut Ws) -> u16 {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws_next(ws).await {
            Some(Message::Close(Some(f))) => return u16::from(f.code),
            Some(Message::Close(None)) => return 1005,
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    }
}
