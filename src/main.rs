//! The fanfare binary: CLI → config → run → wait for SIGTERM/SIGINT → drain → exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fanfare::config::Config;

/// `fanfare --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FANFARE_COMMIT"),
    ")"
);

/// Where the configuration is read from when `--config` is not given.
const DEFAULT_CONFIG: &str = "config/fanfare.yaml";

/// A realtime edge sidecar: pass-through proxy plus WebSocket, SSE and long-poll fan-out
/// from NATS.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// The configuration file [default: config/fanfare.yaml, from the working directory].
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file: exit 0 when valid, else print FILE:LINE:COL: reason
    /// and exit 2.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the JSON Schema of the configuration file, generated from fanfare's own
    /// configuration types. With --chart FILE, write it into that Helm chart
    /// values.schema.json as the schema of `fanfare.config` instead.
    Schema {
        /// A chart's values.schema.json to update in place.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match cli.command {
        Some(Command::CheckConfig { file }) => {
            return match Config::load(&file) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Schema { chart: None }) => {
            let schema = fanfare::config::schema::generate();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Schema { chart: Some(file) }) => {
            return match embed_schema(&file) {
                Ok(()) => {
                    println!("{}: fanfare.config schema updated", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::from(2)
                }
            };
        }
        None => match cli.config {
            Some(path) => path,
            None => {
                let path = PathBuf::from(DEFAULT_CONFIG);
                if !path.exists() {
                    let here = std::env::current_dir()
                        .map_or_else(|_| ".".to_string(), |d| d.display().to_string());
                    eprintln!(
                        "fanfare: no --config given, and {DEFAULT_CONFIG} does not exist in {here}; \
                         pass --config FILE (the repository's config/fanfare.yaml is an example)"
                    );
                    return ExitCode::from(2);
                }
                path
            }
        },
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    fanfare::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handle = match fanfare::run(config).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                return ExitCode::FAILURE;
            }
        };
        let reloader = handle.reloader();
        tokio::spawn(fanfare::reload::watch(reloader.clone(), path.clone()));
        let signal = wait_for_signal(&reloader, &path).await;
        tracing::info!(signal, "shutting down");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Writes the configuration's schema into a chart's values.schema.json, at
/// `properties.fanfare.properties.config`.
fn embed_schema(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let mut values: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let schema = fanfare::config::schema::embeddable();
    let slot = values
        .pointer_mut("/properties/fanfare/properties")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("no properties.fanfare.properties object")?;
    slot.insert("config".into(), schema);
    let out = serde_json::to_string_pretty(&values).map_err(|e| e.to_string())?;
    std::fs::write(file, out + "\n").map_err(|e| e.to_string())
}

/// Waits for SIGTERM or SIGINT (returned), reloading `path` at each SIGHUP meanwhile.
async fn wait_for_signal(reloader: &Arc<fanfare::reload::Reloader>, path: &Path) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return "none";
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => {
                tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
                reloader.clone().reload(path.to_path_buf()).await;
            }
        }
    }
}
