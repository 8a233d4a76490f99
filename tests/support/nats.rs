//! A real nats-server on free ports.

use super::{DEADLINE, free_port, http_client, wait_for};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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

    /// The topic subscriptions fanfare's connections (named `fanfare`) hold at the
    /// server, from the monitoring endpoint `/connz`: every one but the instance's
    /// single `fanfare.connection.<instance>.*` (see [`NatsServer::subscriptions`]).
    pub async fn subscription_count(&self) -> u64 {
        self.subscriptions()
            .await
            .iter()
            .filter(|s| !s.starts_with("fanfare.connection."))
            .count() as u64
    }

    /// The subjects fanfare's connections subscribe at nats-server (from `/connz`),
    /// its per-instance `fanfare.connection.<instance>.*` included.
    pub async fn subscriptions(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", self.monitor_port);
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
                    .flat_map(|c| {
                        c["subscriptions_list"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates JetStream stream `name` capturing `subjects` on the server at `url`.
pub async fn create_stream(url: &str, name: &str, subjects: &[&str]) {
    async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(ToString::to_string).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Stops `nats` and waits until fanfare (admin at `admin`) reports not ready.
pub async fn stop_until_unready(nats: &mut NatsServer, admin: std::net::SocketAddr) {
    nats.stop();
    wait_for("readyz 503 while NATS is down", DEADLINE, || async move {
        (super::admin_get(admin, "/readyz").await.0 == 503).then_some(())
    })
    .await;
}

/// Publishes `body` to `subject` over NATS with `headers`, and flushes.
pub async fn nats_publish(
    nc: &async_nats::Client,
    subject: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    nc.publish_with_headers(subject.to_string(), h, body.into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
}

/// The next message of `sub`, within [`DEADLINE`].
pub async fn next_message(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    use futures::StreamExt;
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("a NATS message within the deadline")
        .expect("the subscription is open")
}
