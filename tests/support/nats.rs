//! A real nats-server on ports it picks itself.

use super::{DEADLINE, http_client, wait_for};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Between two starts of a nats-server that could not bind its port.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often the ports file is looked for while nats-server starts.
const PORTS_FILE_POLL: Duration = Duration::from_millis(5);

/// A real nats-server on ports it picks itself, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/subsz`, `/connz`).
    pub monitor_port: u16,
    jetstream: Option<tempfile::TempDir>,
    /// Where nats-server writes its ports file and its log.
    run_dir: tempfile::TempDir,
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
            port: 0,
            monitor_port: 0,
            jetstream: jetstream.then(|| tempfile::tempdir().expect("tempdir")),
            run_dir: tempfile::tempdir().expect("tempdir"),
        };
        s.spawn().await;
        s
    }

    /// nats-server's log (its stderr) for the current run.
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.path().join("nats-server.log")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts nats-server and waits for its ports file, which it writes once both
    /// listeners are bound. The first start lets nats-server pick its own ports
    /// (`-1`), so no other process can take them between choosing and binding; a
    /// restart asks for the same ports again, and if something holds one meanwhile
    /// nats-server exits and is started again, until the deadline.
    async fn spawn(&mut self) {
        let start = Instant::now();
        loop {
            match self.spawn_once().await {
                Ok(()) => return,
                Err(why) if start.elapsed() < DEADLINE => {
                    eprintln!("nats-server did not start ({why}); starting it again");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(why) => panic!("nats-server did not start within {DEADLINE:?}: {why}"),
            }
        }
    }

    async fn spawn_once(&mut self) -> Result<(), String> {
        let port = |p: u16| {
            if p == 0 {
                "-1".to_string()
            } else {
                p.to_string()
            }
        };
        let log = self.log_path();
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port(self.port)])
            .args(["-m", &port(self.monitor_port)])
            .arg("--ports_file_dir")
            .arg(self.run_dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?);
        if let Some(dir) = &self.jetstream {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        let mut child = cmd.spawn().expect("spawn nats-server");
        let ports_file = self
            .run_dir
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        let begun = Instant::now();
        let ports = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no log");
                return Err(format!("it exited ({status}): {last}"));
            }
            if let Some(ports) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                break ports;
            }
            if begun.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no ports file".into());
            }
            tokio::time::sleep(PORTS_FILE_POLL).await;
        };
        // {"nats":["nats://127.0.0.1:P"],"monitoring":["http://127.0.0.1:M"]}
        let port_of = |key: &str| {
            ports[key][0]
                .as_str()
                .and_then(|u| u.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("no {key} port in nats-server's ports file: {ports}"))
        };
        self.port = port_of("nats");
        self.monitor_port = port_of("monitoring");
        self.child = Some(child);
        Ok(())
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
