//! The pass-through fast path (`src/edge/pass`), driven byte by byte: a raw client
//! on one keep-alive connection, and a raw app that frames its answers every way
//! HTTP/1.1 allows (length, chunked with trailers, until close, none for HEAD, 103
//! before the final head), closes pooled connections behind fanfare's back, hangs,
//! or answers garbage. Requests the fast path leaves to pingora must still work on
//! the same connection.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw app received: one request head (and body) per entry, and how many
/// connections fanfare opened to it.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, Vec<u8>)>,
    connections: usize,
}

/// An app written against the socket, so every framing can be produced exactly.
struct RawApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// Lets every request waiting in `/wait` answer.
    release: Arc<tokio::sync::Notify>,
}

const BIG: usize = 300_000;

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                s.lock().unwrap().connections += 1;
                tokio::spawn(Self::serve(conn, s.clone(), r.clone()));
            }
        });
        RawApp {
            addr,
            seen,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// How many times the app noted `what` (`waiting`, `watching`, `given up`).
    fn noted(&self, what: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.requests.iter().filter(|(h, _)| h == what).count()
    }

    /// Waits until the app has noted `what` more than `before` times.
    async fn until_noted(&self, what: &str, before: usize, why: &str) {
        wait_for(why, DEADLINE, || {
            let n = self.noted(what);
            async move { (n > before).then_some(()) }
        })
        .await;
    }

    async fn serve(mut conn: TcpStream, seen: Arc<Mutex<Seen>>, release: Arc<tokio::sync::Notify>) {
        let mut buf = Vec::new();
        loop {
            let Some((head, body)) = read_request(&mut conn, &mut buf).await else {
                return;
            };
            seen.lock()
                .unwrap()
                .requests
                .push((head.clone(), body.clone()));
            let line = head.lines().next().unwrap_or("").to_string();
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("");
            let path = parts.next().unwrap_or("");
            let (reply, close): (Vec<u8>, bool) = match path {
                "/chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(), false),
                "/until-close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it".to_vec(), true),
                "/early" => (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false),
                "/sized" if method == "HEAD" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(), false),
                "/sized" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec(), false),
                "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
                // Closes its end after answering, without saying so: the pooled
                // connection is dead by the time fanfare uses it again.
                "/then-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbye.".to_vec(), true),
                "/big" => {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
                    r.extend((0..BIG).map(|i| (i % 251) as u8));
                    (r, false)
                }
                "/echo" => {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                    r.extend_from_slice(&body);
                    (r, false)
                }
                "/wait" => {
                    let released = release.notified();
                    seen.lock().unwrap().requests.push(("waiting".into(), Vec::new()));
                    released.await;
                    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone".to_vec(), false)
                }
                // Never answers (the task ends with the test's runtime).
                "/hang" => std::future::pending::<(Vec<u8>, bool)>().await,
                // Never answers either, but notices when fanfare gives up on it.
                "/watch" => {
                    seen.lock().unwrap().requests.push(("watching".into(), Vec::new()));
                    let mut b = [0u8; 64];
                    while matches!(conn.read(&mut b).await, Ok(n) if n > 0) {}
                    seen.lock().unwrap().requests.push(("given up".into(), Vec::new()));
                    return;
                }
                "/garbage" => (b"this is not HTTP\r\n\r\n".to_vec(), true),
                _ => {
                    let body = format!("you asked for {path}");
                    (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes(), false)
                }
            };
            if conn.write_all(&reply).await.is_err() || close {
                return;
            }
        }
    }
}

/// Reads one request (head and `Content-Length` or chunked body) from `conn`.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = vec![0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        read_chunked(conn, buf).await?
    } else {
        let len = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        while buf.len() < len {
            let mut chunk = vec![0u8; 65536];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..len).collect()
    };
    Some((head, body))
}

/// Decodes a chunked body (no extensions or trailers needed here).
async fn read_chunked(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let mut chunk = vec![0u8; 8192];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        while buf.len() < line_end + 2 + size + 2 {
            let mut chunk = vec![0u8; 8192];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}

/// A client on one raw connection to fanfare.
struct Client {
    conn: TcpStream,
    buf: Vec<u8>,
}

/// One response as the client got it: its head, its body (chunks decoded, trailers
/// kept apart), its trailers.
#[derive(Debug)]
struct Got {
    head: String,
    body: Vec<u8>,
    trailers: String,
}

impl Got {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Client {
    async fn to(addr: SocketAddr) -> Client {
        Client {
            conn: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.conn.write_all(raw).await.unwrap();
    }

    async fn more(&mut self) -> bool {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(DEADLINE, self.conn.read(&mut chunk))
            .await
            .expect("fanfare answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response (to a request of `method`); informational heads are
    /// returned as responses of their own.
    async fn response(&mut self, method: &str) -> Got {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more().await,
                "closed before a whole head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut got = Got {
            head,
            body: Vec::new(),
            trailers: String::new(),
        };
        let status = got.status();
        if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            return got;
        }
        if got
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.more().await, "closed inside a chunk size");
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    let end = loop {
                        if self.buf.starts_with(b"\r\n") {
                            break 2;
                        }
                        if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        assert!(self.more().await, "closed inside the trailers");
                    };
                    got.trailers = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return got;
                }
                while self.buf.len() < size + 2 {
                    assert!(self.more().await, "closed inside a chunk");
                }
                got.body.extend_from_slice(&self.buf[..size]);
                assert_eq!(&self.buf[size..size + 2], b"\r\n");
                self.buf.drain(..size + 2);
            }
        }
        if let Some(len) = got.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.more().await, "closed inside a sized body");
            }
            got.body = self.buf.drain(..len).collect();
            return got;
        }
        while self.more().await {}
        got.body = std::mem::take(&mut self.buf);
        got
    }

    /// Whether fanfare closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        !self.more().await && self.buf.is_empty()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n").into_bytes()
}

async fn fanfare_for(app: &RawApp, extra: &str) -> fanfare::Handle {
    start_fanfare(&(base_yaml(&app.url(), None) + extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_of_the_app_reaches_the_client_on_one_keep_alive_connection() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;

    c.send(&get("/chunked")).await;
    let r = c.response("GET").await;
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"hello world"[..]),
        "{r:?}"
    );
    assert_eq!(
        r.trailers, "X-Trailer: t\r\n\r\n",
        "trailers pass as they are"
    );

    c.send(b"HEAD /sized HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let r = c.response("HEAD").await;
    assert_eq!(
        (r.status(), r.header("content-length").as_deref()),
        (200, Some("10"))
    );
    assert!(r.body.is_empty());

    c.send(&get("/no-content")).await;
    assert_eq!(c.response("GET").await.status(), 204);

    c.send(&get("/early")).await;
    let hints = c.response("GET").await;
    assert_eq!(hints.status(), 103);
    assert_eq!(
        hints.header("link").as_deref(),
        Some("</a.css>; rel=preload")
    );
    let r = c.response("GET").await;
    assert_eq!((r.status(), &r.body[..]), (200, &b"ok"[..]));

    c.send(&get("/big")).await;
    let r = c.response("GET").await;
    assert_eq!(r.body.len(), BIG);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "the large body arrives intact"
    );

    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let mut post = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    c.send(&post).await;
    let r = c.response("POST").await;
    assert!(
        r.body == body,
        "a body under the fast path's limit round-trips"
    );

    // Last: a body that ends when the app closes ends the client's connection too.
    c.send(&get("/until-close")).await;
    let r = c.response("GET").await;
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(r.body, b"all of it");
    assert!(c.closed().await);

    assert_eq!(
        app.seen.lock().unwrap().connections,
        1,
        "every request before the last one reused one app connection"
    );
    wait_metric(
        ff.admin_addr,
        "fanfare_upstream_requests_total{class=\"2xx\"}",
        7.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend(get(&format!("/n{i}")));
    }
    c.send(&all).await;
    for i in 0..5 {
        let r = c.response("GET").await;
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("you asked for /n{i}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_app_closed_is_replaced_without_an_error() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    // Each round leaves a connection in the pool that the app has just closed; the
    // next request goes out at once, racing the close.
    for round in 0..20 {
        c.send(&get("/then-close")).await;
        assert_eq!(c.response("GET").await.body, b"bye.");
        c.send(&get(&format!("/after{round}"))).await;
        let r = c.response("GET").await;
        assert_eq!(
            (r.status(), String::from_utf8(r.body).unwrap()),
            (200, format!("you asked for /after{round}"))
        );
    }
    assert!(
        metric(
            ff.admin_addr,
            "fanfare_upstream_requests_total{class=\"5xx\"}"
        )
        .await
        .unwrap_or(0.0)
            == 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_is_a_json_504_and_a_garbled_answer_a_json_502() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "proxy: { read_timeout: 300ms }\n").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/hang")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    assert!(c.closed().await, "fanfare closes after refusing");

    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/garbage")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    wait_metric(
        ff.admin_addr,
        "fanfare_upstream_requests_total{class=\"5xx\"}",
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_fast_path_leaves_to_pingora_work_on_the_same_connection() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/first")).await;
    assert_eq!(c.response("GET").await.body, b"you asked for /first");
    // A chunked upload: pingora's.
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").await;
    let r = c.response("POST").await;
    assert_eq!((r.status(), &r.body[..]), (200, &b"abcde"[..]));
    // fanfare's own files, then a plain request again, all on one connection.
    c.send(&get("/_fanfare/client.js")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status(), 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("EventSource"),
        "the client file"
    );
    c.send(&get("/last")).await;
    assert_eq!(c.response("GET").await.body, b"you asked for /last");
    let paths: Vec<String> = app
        .requests()
        .iter()
        .map(|(h, _)| h.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "GET /first HTTP/1.1",
            "POST /echo HTTP/1.1",
            "GET /last HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_smuggle_another_never_reaches_the_app_as_two() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    // Content-Length and Transfer-Encoding together: whichever a proxy believed, the
    // app must not see "GET /smuggled" as a request of its own.
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while c.more().await {} }).await;
    let seen = app.requests();
    assert!(
        seen.iter().all(|(h, _)| !h.contains("/smuggled")),
        "the app saw a smuggled request: {:?}",
        seen.iter()
            .map(|(h, _)| h.lines().next().unwrap_or(""))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_deadline() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "limits: { request_head_timeout: 300ms }\n").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/one")).await;
    assert_eq!(c.response("GET").await.status(), 200);
    // Half a head, then nothing: the deadline closes the connection.
    c.send(b"GET /two HTTP/1.1\r\nHo").await;
    let closed = tokio::time::timeout(DEADLINE, c.closed())
        .await
        .expect("closed by the deadline");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fast_path_off_pingora_passes_every_request() {
    let app = RawApp::start().await;
    let on = fanfare_for(&app, "").await;
    let off = fanfare_for(&app, "proxy: { fast_path: false }\n").await;
    for (ff, through_pingora) in [(&on, false), (&off, true)] {
        let mut c = Client::to(ff.edge_addr).await;
        c.send(&get("/x")).await;
        let r = c.response("GET").await;
        assert_eq!(r.body, b"you asked for /x");
        // The app sends no Date; pingora adds one to every response, the fast path
        // passes the app's head as it is.
        assert_eq!(r.header("date").is_some(), through_pingora, "{}", r.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_the_request_under_way_finish_and_then_ends_keep_alive() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/wait")).await;
    app.until_noted("waiting", 0, "the request reaches the app")
        .await;
    let admin = ff.admin_addr;
    let shutdown = tokio::spawn(ff.shutdown());
    wait_for("the drain to begin", DEADLINE, || async move {
        (admin_get(admin, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "the drain waits for the request in flight"
    );
    app.release.notify_waiters();
    let r = c.response("GET").await;
    assert_eq!((r.status(), &r.body[..]), (200, &b"done"[..]));
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert!(c.closed().await);
    let drained = tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained, fanfare::Drained::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_read_whole() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.conn.set_nodelay(true).unwrap();
    for b in get("/slowly") {
        c.send(&[b]).await;
        tokio::task::yield_now().await;
    }
    let r = c.response("GET").await;
    assert_eq!(r.body, b"you asked for /slowly");
}

/// A client that hangs up while the app is still working has its request abandoned:
/// the connection to the app is closed (an app can stop the work; the connection is
/// not held until an answer nobody reads), on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_the_app_works_has_the_app_connection_closed() {
    let app = RawApp::start().await;
    let on = fanfare_for(&app, "").await;
    let off = fanfare_for(&app, "proxy: { fast_path: false }\n").await;
    let cases = [(&off, "pingora"), (&on, "fast path")];
    for ((ff, path), half) in cases.iter().flat_map(|c| [(*c, false), (*c, true)]) {
        let (before, watching) = (app.noted("given up"), app.noted("watching"));
        let mut c = Client::to(ff.edge_addr).await;
        c.send(&get("/watch")).await;
        app.until_noted("watching", watching, "the request reaches the app")
            .await;
        if half {
            // Only its sending half: it could still read an answer, but an HTTP/1.1
            // client that closes its side has given up (nginx and pingora agree).
            c.conn.shutdown().await.unwrap();
        } else {
            drop(c);
        }
        let why =
            format!("{path}: the app's connection closed after the client hung up (half: {half})");
        app.until_noted("given up", before, &why).await;
    }
}

/// Requests a client pipelines while the app works on an earlier one are answered, in
/// order, after it: whether they were still in the socket or already read by the
/// hang-up watch and put back (which `pass::wait`'s unit tests pin down with paused
/// time; here the interleaving is the machine's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_while_the_app_works_are_answered_after_it() {
    let app = RawApp::start().await;
    let ff = fanfare_for(&app, "").await;
    let mut c = Client::to(ff.edge_addr).await;
    c.send(&get("/wait")).await;
    app.until_noted("waiting", 0, "the request reaches the app")
        .await;
    let mut next = get("/after-1");
    next.extend(get("/after-2"));
    c.send(&next).await;
    app.release.notify_waiters();
    let r = c.response("GET").await;
    assert_eq!(r.body, b"done");
    for path in ["/after-1", "/after-2"] {
        let r = c.response("GET").await;
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("you asked for {path}")
        );
    }
}
