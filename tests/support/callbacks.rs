//! A real app with realtime callbacks (axum, in-process): what a user writes behind
//! `app.connect`, `app.message` and `app.disconnect`, recording every request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::Notify;

/// One request the app received.
#[derive(Debug, Clone)]
pub struct Call {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Call {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    /// Asserts the headers every callback carries: the connection and the route.
    pub fn assert_from(&self, connection: &str, route: &str) {
        assert_eq!(
            self.header("fanfare-connection").as_deref(),
            Some(connection)
        );
        assert_eq!(self.header("fanfare-route").as_deref(), Some(route));
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// How `/rt/connect` answers.
#[derive(Debug, Clone)]
pub enum ConnectAnswer {
    /// 200 with this JSON body.
    Admit(serde_json::Value),
    /// This status and body.
    Refuse(u16, &'static str),
    /// No answer at all (the request is held until the client gives up).
    Hang,
    /// 200 with a first event `welcome` whose data is `{"connection": <its id>}`, and
    /// these subjects.
    Welcome(Vec<String>),
}

#[derive(Clone)]
struct St {
    connects: Arc<Mutex<Vec<Call>>>,
    messages: Arc<Mutex<Vec<Call>>>,
    disconnects: Arc<Mutex<Vec<Call>>>,
    answer: Arc<Mutex<ConnectAnswer>>,
    fail_disconnects: Arc<Mutex<usize>>,
    release: Arc<Notify>,
}

/// The app.
pub struct CallbackApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connect callbacks received.
    pub connects: Arc<Mutex<Vec<Call>>>,
    /// Message callbacks received.
    pub messages: Arc<Mutex<Vec<Call>>>,
    /// Disconnect callbacks received (answered 2xx).
    pub disconnects: Arc<Mutex<Vec<Call>>>,
    answer: Arc<Mutex<ConnectAnswer>>,
    fail_disconnects: Arc<Mutex<usize>>,
    /// Releases every message waiting with `Fanfare-Event: hold`.
    pub release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl CallbackApp {
    /// Starts it on a free port, admitting every connect with `{}`.
    pub async fn start() -> CallbackApp {
        let st = St {
            connects: Arc::default(),
            messages: Arc::default(),
            disconnects: Arc::default(),
            answer: Arc::new(Mutex::new(ConnectAnswer::Admit(serde_json::json!({})))),
            fail_disconnects: Arc::default(),
            release: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/rt/connect", post(connect))
            .route("/rt/message", post(message))
            .route("/rt/disconnect", post(disconnect))
            .route("/page/native", axum::routing::get(native_page))
            .route("/chat", axum::routing::get(chat_page))
            .route("/socket.io/socket.io.js", axum::routing::get(socket_io_js))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        CallbackApp {
            addr,
            connects: st.connects,
            messages: st.messages,
            disconnects: st.disconnects,
            answer: st.answer,
            fail_disconnects: st.fail_disconnects,
            release: st.release,
            task,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how connects are answered.
    pub fn answer_connects(&self, a: ConnectAnswer) {
        *self.answer.lock().unwrap() = a;
    }

    /// Answers the next `n` disconnect callbacks 503 (to see them retried).
    pub fn fail_disconnects(&self, n: usize) {
        *self.fail_disconnects.lock().unwrap() = n;
    }

    /// How many of the failures asked for are still to come.
    pub fn disconnect_failures_left(&self) -> usize {
        *self.fail_disconnects.lock().unwrap()
    }

    /// The disconnect callbacks received so far, as JSON.
    pub fn disconnected(&self) -> Vec<serde_json::Value> {
        self.disconnects
            .lock()
            .unwrap()
            .iter()
            .map(Call::json)
            .collect()
    }
}

impl Drop for CallbackApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(list: &Mutex<Vec<Call>>, headers: HeaderMap, body: Bytes) {
    list.lock().unwrap().push(Call { headers, body });
}

async fn connect(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    record(&st.connects, headers, body);
    let answer = st.answer.lock().unwrap().clone();
    match answer {
        ConnectAnswer::Admit(v) => axum::Json(v).into_response(),
        ConnectAnswer::Refuse(status, body) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        ConnectAnswer::Welcome(subjects) => axum::Json(serde_json::json!({
            "subscribe": subjects,
            "events": [{"event": "welcome", "data": {"connection": request["connection"]}}],
        }))
        .into_response(),
        ConnectAnswer::Hang => std::future::pending().await,
    }
}

/// Echoes JSON back (`{"echo": body, "connection": id}`), or by `Fanfare-Event`:
/// `fail` answers 500, `slow` never answers, `hold` waits for `release`. A text body (raw
/// mode) is answered `you said: <text>`.
async fn message(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    record(&st.messages, headers.clone(), body.clone());
    let event = headers
        .get("fanfare-event")
        .map(|v| v.to_str().unwrap().to_string());
    match event.as_deref() {
        Some("fail") => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/json")],
                r#"{"error":"boom"}"#,
            )
                .into_response();
        }
        Some("slow") => std::future::pending::<()>().await,
        Some("hold") => st.release.notified().await,
        _ => {}
    }
    let is_text = headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/plain"));
    if is_text {
        return format!("you said: {}", String::from_utf8_lossy(&body)).into_response();
    }
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(serde_json::json!({
        "echo": echo,
        "connection": headers.get("fanfare-connection").map(|v| v.to_str().unwrap()),
    }))
    .into_response()
}

async fn disconnect(State(st): State<St>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut fail = st.fail_disconnects.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    record(&st.disconnects, headers, body);
    StatusCode::NO_CONTENT
}

/// The browser's bare WebSocket, as in MDN's example (only the URL names the raw
/// route); `window.got` keeps what arrived for the test to read.
async fn native_page() -> axum::response::Html<&'static str> {
    axum::response::Html(
        r#"<!doctype html><meta charset="utf-8"><title>native</title>
<script>
window.got = [];
// Create WebSocket connection.
const socket = new WebSocket("ws://" + location.host + "/native");

// Connection opened
socket.addEventListener("open", (event) => {
  socket.send("Hello Server!");
});

// Listen for messages
socket.addEventListener("message", (event) => {
  console.log("Message from server ", event.data);
});
socket.addEventListener("message", (event) => window.got.push(event.data));
</script>"#,
    )
}

/// Socket.IO's "get started" chat page, as its tutorial writes it.
async fn chat_page() -> axum::response::Html<&'static str> {
    axum::response::Html(
        r#"<!DOCTYPE html>
<html>
  <head><meta charset="utf-8"><title>Socket.IO chat</title></head>
  <body>
    <ul id="messages"></ul>
    <form id="form" action="">
      <input id="input" autocomplete="off" /><button>Send</button>
    </form>
    <script src="/socket.io/socket.io.js"></script>
    <script>
      var socket = io();

      var form = document.getElementById('form');
      var input = document.getElementById('input');

      form.addEventListener('submit', function(e) {
        e.preventDefault();
        if (input.value) {
          socket.emit('chat message', input.value);
          input.value = '';
        }
      });

      socket.on('chat message', function(msg) {
        var item = document.createElement('li');
        item.textContent = msg;
        messages.appendChild(item);
        window.scrollTo(0, document.body.scrollHeight);
      });
    </script>
  </body>
</html>"#,
    )
}

/// The browser build of socket.io-client, served as the app's static file.
async fn socket_io_js() -> Response {
    let path = format!(
        "{}/socket.io-client/dist/socket.io.min.js",
        super::node_modules()
    );
    let js = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    ([("content-type", "application/javascript")], js).into_response()
}
