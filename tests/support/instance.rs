//! fanfare under test: in-process through `fanfare::run`, or the real binary.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DEADLINE, http_client, wait_for};

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

    /// The configuration file it runs on.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("fanfare.yaml")
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
