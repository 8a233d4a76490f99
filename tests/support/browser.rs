//! A real browser for tests: Debian's headless `chromium`, one page, driven over the
//! DevTools protocol (no npm package needed).

use std::process::Stdio;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use super::DEADLINE;

/// A headless Chromium and one page, over the DevTools protocol.
pub struct Browser {
    child: tokio::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn binary() -> Option<&'static str> {
        [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    }

    pub async fn open(bin: &str, url: &str) -> Browser {
        Browser::open_with(bin, url, None).await
    }

    /// Opens `url` in a new page, running `init` (if any) in every document of it
    /// before the document's own scripts.
    pub async fn open_with(bin: &str, url: &str, init: Option<&str>) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                    return ws.trim().to_string();
                }
            }
            panic!("chromium exited before it listened");
        })
        .await
        .expect("chromium's DevTools endpoint within the deadline");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = endpoint
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(endpoint.as_str(), tcp)
            .await
            .unwrap();
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        let session = b.session.clone();
        if let Some(source) = init {
            b.call(Some(&session), "Page.enable", json!({})).await;
            b.call(
                Some(&session),
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": source }),
            )
            .await;
        }
        b.call(Some(&session), "Page.navigate", json!({ "url": url }))
            .await;
        // Evaluations go to the page once it is the document at `url`, not about:blank.
        b.until(
            "the page loads",
            "[location.href, document.readyState]",
            |v| v[0] == json!(url) && v[1] == json!("complete"),
        )
        .await;
        b
    }

    /// Evaluates `expr` until `done` holds for its value; panics with `what` and the
    /// last value after the deadline.
    pub async fn until(&mut self, what: &str, expr: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let v = self.eval(expr).await;
            if done(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still {v}");
            // Paces the polling of the page; the deadline above bounds the wait.
            let poll_again = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
            tokio::time::sleep_until(poll_again).await;
        }
    }

    /// Sends a DevTools command and returns its result.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a DevTools answer within the deadline")
                .expect("DevTools connection open")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let session = self.session.clone();
        let r = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": format!("JSON.stringify({expr})"), "returnByValue": true }),
            )
            .await;
        match r["result"]["value"].as_str() {
            Some(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }
}

/// Chromium's binary, or `None` after saying the test is skipped and why.
pub fn chromium() -> Option<&'static str> {
    let bin = Browser::binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED: no chromium; install the Debian package `chromium` (scripts/test does, as root)"
        );
    }
    bin
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
