//! Reloading the configuration without dropping connections (SIGHUP, or a change of
//! the file on disk: a Kubernetes ConfigMap update arrives as a symlink swap, which the
//! watch sees because it follows the path's links each time it looks).
//!
//! A reload either applies as a whole or changes nothing: the new file is loaded and
//! validated, every new or changed route is built, and only then is the route set
//! swapped in. Routes whose configuration did not change are kept as they are, with
//! their connections; connections of removed or changed routes are closed with
//! `route_changed` over the drain window and come back (with their cursor) under the
//! new rules. Limits and `log.level` change in place. Settings bound at start
//! (addresses, upstream, NATS, shutdown, the client files) are reported as needing a
//! restart and keep their old values.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::edge::realtime::{Realtime, RouteChanges};
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;

/// How often the watch looks at the file.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new configuration is in effect (except `restart_needed`).
    Applied {
        /// What happened to the routes.
        routes: RouteChanges,
        /// Changed settings that only a restart applies (they keep their old values).
        restart_needed: Vec<&'static str>,
    },
    /// The file says what is already in effect.
    Unchanged,
    /// The file is invalid (or a route could not be built): nothing changed.
    Invalid(String),
}

/// Reloads a running instance's configuration.
pub struct Reloader {
    realtime: Arc<ArcSwap<Realtime>>,
    limits: Arc<ConnectionLimits>,
    metrics: Metrics,
    /// The configuration fanfare started with (what restart-only settings still are).
    started: Config,
    /// The configuration last applied.
    applied: Mutex<Config>,
}

impl Reloader {
    pub(crate) fn new(
        realtime: Arc<ArcSwap<Realtime>>,
        limits: Arc<ConnectionLimits>,
        metrics: Metrics,
        started: Config,
    ) -> Reloader {
        Reloader {
            realtime,
            limits,
            metrics,
            applied: Mutex::new(started.clone()),
            started,
        }
    }

    /// Loads `path` and applies it; logs and counts the result.
    pub fn reload_file(&self, path: &Path) -> Reloaded {
        let outcome = match Config::load(path) {
            Ok(config) => self.apply(config),
            Err(e) => Reloaded::Invalid(e.to_string()),
        };
        self.report(&outcome);
        outcome
    }

    /// [`Reloader::reload_file`] off the async threads (loading reads the file and may
    /// build JWKS clients): what SIGHUP and the file watch call.
    pub async fn reload(self: Arc<Self>, path: PathBuf) -> Option<Reloaded> {
        tokio::task::spawn_blocking(move || self.reload_file(&path))
            .await
            .ok()
    }

    /// Applies `config` (already validated). Not logged or counted: see
    /// [`Reloader::reload_file`].
    pub fn apply(&self, config: Config) -> Reloaded {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *applied == config {
            return Reloaded::Unchanged;
        }
        let current = self.realtime.load_full();
        let (next, retired, routes) =
            match current.reloaded(config.routes.clone(), config.limits.trusted_proxies.clone()) {
                Ok(r) => r,
                Err(e) => return Reloaded::Invalid(e),
            };
        if config.log.level != applied.log.level
            && let Err(e) = crate::logging::set_level(&config.log.level)
        {
            return Reloaded::Invalid(format!("log.level: {e}"));
        }
        next.activate();
        self.realtime.store(Arc::new(next));
        retired.start();
        self.limits.update(&config.limits);
        let restart_needed = restart_needed(&self.started, &config);
        *applied = config;
        Reloaded::Applied {
            routes,
            restart_needed,
        }
    }

    fn report(&self, outcome: &Reloaded) {
        let count = |r: &str| self.metrics.config_reloads.with_label_values(&[r]).inc();
        match outcome {
            Reloaded::Applied {
                routes,
                restart_needed,
            } => {
                count("applied");
                tracing::info!(
                    kept = ?routes.kept,
                    added = ?routes.added,
                    retired = ?routes.retired,
                    "configuration reloaded"
                );
                if !restart_needed.is_empty() {
                    tracing::warn!(
                        settings = ?restart_needed,
                        "configuration reloaded; these settings changed but apply only after a restart"
                    );
                }
            }
            Reloaded::Unchanged => {
                count("unchanged");
                tracing::info!("configuration reload: nothing changed");
            }
            Reloaded::Invalid(e) => {
                count("invalid");
                tracing::error!("configuration reload refused, nothing changed: {e}");
            }
        }
    }
}

/// The settings bound at start that differ between `started` and `next`.
fn restart_needed(started: &Config, next: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("listen", started.listen == next.listen);
    check("upstream", started.upstream == next.upstream);
    check("proxy", started.proxy == next.proxy);
    check("admin", started.admin == next.admin);
    check("nats", started.nats == next.nats);
    check("shutdown", started.shutdown == next.shutdown);
    check("log.format", started.log.format == next.log.format);
    check(
        "limits.request_head_timeout",
        started.limits.request_head_timeout == next.limits.request_head_timeout,
    );
    check(
        "limits.max_topics",
        started.limits.max_topics == next.limits.max_topics,
    );
    check("client", started.client == next.client);
    check("demo", started.demo == next.demo);
    out
}

/// What identifies the file's content on disk, following links: a ConfigMap update
/// swaps a symlink, which changes the target's identity even when the size and time
/// happen to match.
fn identity(path: &Path) -> Option<(PathBuf, u64, u64, Option<SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    Some((target, meta.ino(), meta.len(), meta.modified().ok()))
}

/// Reloads `path` whenever its content changes on disk (looking every
/// [`WATCH_EVERY`]); runs until the process ends.
pub async fn watch(reloader: Arc<Reloader>, path: PathBuf) {
    let mut seen = identity(&path);
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = identity(&path);
        if now.is_some() && now != seen {
            seen = now;
            reloader.clone().reload(path.clone()).await;
        }
    }
}
