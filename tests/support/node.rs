//! socket.io-client 4 in Node.js (tests/node/sio-client.js), as a Socket.IO front end
//! uses it. `scripts/test` installs it into target/test-node.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::DEADLINE;

/// The node_modules with socket.io-client, or a panic saying how to get it.
pub fn node_modules() -> String {
    let dir = std::env::var("FANFARE_TEST_NODE_MODULES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-node/node_modules").to_string()
    });
    assert!(
        std::path::Path::new(&dir).join("socket.io-client").exists(),
        "socket.io-client is not in {dir}: run scripts/test, which installs it (npm ci of tests/node)"
    );
    dir
}

/// One socket.io-client session in a Node.js process.
pub struct SioClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl SioClient {
    /// Starts `tests/node/sio-client.js` with `cfg` (`url`, `transports`, `nsp`,
    /// `auth`, `reconnection`).
    pub fn start(cfg: &serde_json::Value) -> SioClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/sio-client.js");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg(cfg.to_string())
            .env("FANFARE_TEST_NODE_MODULES", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (scripts/test installs nodejs)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        SioClient {
            child,
            stdin,
            lines,
        }
    }

    /// The next thing that happened, within [`DEADLINE`].
    pub async fn next(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("socket.io-client said something within the deadline")
            .unwrap()
            .expect("socket.io-client is still running");
        if std::env::var_os("FANFARE_TEST_VERBOSE").is_some() {
            eprintln!("sio-client: {line}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next happening whose `ev` is `ev`, skipping others.
    pub async fn until(&mut self, ev: &str) -> serde_json::Value {
        loop {
            let v = self.next().await;
            if v["ev"] == ev {
                return v;
            }
        }
    }

    /// Sends a command (`{"cmd":"emit",…}`).
    pub async fn send(&mut self, cmd: serde_json::Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Emits `name` with `args` (and an acknowledgement callback when `ack`).
    pub async fn emit(&mut self, name: &str, args: serde_json::Value, ack: bool) {
        self.send(serde_json::json!({"cmd": "emit", "name": name, "args": args, "ack": ack}))
            .await;
    }
}

impl Drop for SioClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
