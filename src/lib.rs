//! fanfare: a realtime edge sidecar. It passes ordinary HTTP requests through to the
//! app, holds WebSocket / Server-Sent Events / long-poll connections itself, and fans
//! out the messages the app publishes on NATS to every client allowed to see them.
//!
//! # Layout
//! ```text
//! src/main.rs, lib.rs             thin CLI; this map; run() -> Handle
//! src/config/                     mod (Config, load, validate), route, auth, value (durations,
//!                                 addresses, ${VAR}), tests
//! src/wire/                       pure bytes, no I/O: sse (events, field safety), ws (frames,
//!                                 the 101, close codes), protocol (fanfare's JSON over WS),
//!                                 engineio, socketio (Engine.IO v4 / Socket.IO v5 packets)
//! src/routing/                    leaves: path (patterns, query), subject (templates, matching)
//! src/hub/                        mod (Hub: join, resume), topic (registry, subscription task,
//!                                 fan-out), event (lazy shared encodings), history (cursors,
//!                                 ring), queue (ClientQueue with its own Bound/Policy), direct
//!                                 (Directory: fanfare.connection.<id>, control messages)
//! src/app/                        the app's callbacks: mod (App: connect, message), disconnect
//!                                 (the bounded, retried disconnect queue)
//! src/broker/                     mod (Broker), message, nats (async-nats, JetStream), memory
//! src/auth/                       mod (Authorizer), grant, credential, admit, jwt, upstream
//! src/transport/                  per-client sessions only: mod (RouteContext, Conn, join,
//!                                 Outcome), sse, ws/{mod (session), requests (JSON protocol,
//!                                 raw frames)}, ws_socket (buffers, 101, error closes), rpc
//!                                 (calls to app.message), poll, echo, socketio/{mod (Engine,
//!                                 Registry), session/{mod,events}, polling, ws}
//! src/edge/                       the pingora side: pass/ (the pass-through fast path for
//!                                 plain HTTP/1.1, pingora takes the rest), upstream (app
//!                                 address, in-flight count), proxy, listener (accept loop, head deadline),
//!                                 handoff, realtime (match -> gate -> admit -> transport),
//!                                 admission (limits, the app's connect), socketio (Engine.IO
//!                                 requests), route,
//!                                 client (trusted proxies), cors, respond (THE one refusal type
//!                                 and JSON writer)
//! src/admin/                      mod (probes, /metrics), publish
//! src/{drain,limits,metrics,logging}.rs   control
//! bench/fanfare-bench/            the load tool (a workspace member); bench/*.sh comparisons
//! tests/support/                  mod, nats, app, callbacks (an app with realtime handlers),
//!                                 instance (fanfare in-process or binary), sse, ws
//! tests/layout.rs                 checks the rules below by reading src/
//! charts/fanfare/, config/        the Helm chart; example configs (each loaded by a test)
//! ```
//! Rules (checked by `tests/layout.rs`): `wire/` and `routing/` import nothing of fanfare
//! but each other; `hub/` never imports `transport/`, `edge/` or `admin/`; `transport/`
//! never imports `edge/`; no import circle between any two files (a `mod.rs` and its children
//! import in one direction only); no file under `src/` above 500 lines.

pub mod admin;
pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod drain;
pub mod edge;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod routing;
pub mod transport;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{Admin, Readiness, StreamCheck};
use crate::app::Disconnects;
use crate::broker::Broker;
use crate::config::Config;
use crate::edge::realtime::{Realtime, Shared};
use crate::edge::{Edge, InFlight};
use crate::hub::Hub;
use crate::hub::direct::Directory;
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;

/// Why fanfare could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker could not be set up.
    #[error("broker: {0}")]
    Broker(#[from] broker::BrokerError),
    /// Metrics registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A route could not be built.
    #[error("routes: {0}")]
    Routes(String),
}

/// A running fanfare instance.
pub struct Handle {
    /// The bound public address.
    pub edge_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    /// This instance's metrics.
    pub metrics: Metrics,
    /// The broker in use.
    pub broker: Broker,
    /// The fan-out hub.
    pub hub: Hub,
    readiness: Arc<Readiness>,
    inflight: Arc<InFlight>,
    limits: Arc<ConnectionLimits>,
    drain: Arc<drain::DrainControl>,
    stop_admin: watch::Sender<bool>,
    disconnects: Disconnects,
    grace: Duration,
    drain_window: Duration,
    reloader: Arc<reload::Reloader>,
}

/// How a shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every held connection was closed and every in-flight request finished.
    Clean,
    /// The grace period ran out with this many proxied requests and held connections
    /// still open.
    GraceExpired {
        /// Proxied requests still in flight.
        requests: usize,
        /// Held realtime connections still open.
        connections: usize,
    },
}

impl Handle {
    /// What reloads this instance's configuration (SIGHUP, the file watch, tests).
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
    }

    /// Drains and stops: `/readyz` turns 503 at once, the edge stops accepting,
    /// keep-alive connections close after their current request, held realtime
    /// connections are closed spread over `shutdown.drain` (WebSocket 1012, SSE
    /// `fanfare.drain` + `retry:`), and this returns when all of them and every
    /// in-flight proxied request are done, or `shutdown.grace` has passed.
    pub async fn shutdown(self) -> Drained {
        self.readiness.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1);
        self.drain.start();
        let started = tokio::time::Instant::now();
        tracing::info!(
            inflight = self.inflight.current(),
            connections = self.limits.total(),
            drain = ?self.drain_window,
            grace = ?self.grace,
            "draining"
        );
        let deadline = started + self.grace;
        let mut last_report = started;
        let outcome = loop {
            let (requests, connections) = (self.inflight.current(), self.limits.total());
            if requests == 0 && connections == 0 {
                break Drained::Clean;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break Drained::GraceExpired {
                    requests,
                    connections,
                };
            }
            if now.duration_since(last_report) >= Duration::from_secs(5) {
                tracing::info!(inflight = requests, connections, "draining: still open");
                last_report = now;
            }
            tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await;
        };
        // The disconnect callbacks of the drained connections, within what is left
        // of the grace.
        self.disconnects.flush(deadline).await;
        self.stop_admin.send_replace(true);
        tracing::info!(?outcome, elapsed = ?started.elapsed(), "stopped");
        outcome
    }
}

/// fanfare does not create JetStream streams. The streams routes name are checked in
/// the background once NATS is reachable (the public port opens at once, whatever
/// NATS's state): until every one is found, `/readyz` answers 503 with
/// `streams_unchecked` (NATS not reached yet) or `stream_missing` (checked again every
/// 5 s, so creating the stream later makes the instance ready).
fn check_streams(broker: &Broker, config: &Config, readiness: &Arc<Readiness>) {
    let Broker::Nats(nats) = broker else {
        return;
    };
    let streams: std::collections::BTreeSet<String> = config
        .routes
        .iter()
        .filter_map(|r| r.history.jetstream.clone())
        .collect();
    if streams.is_empty() {
        return;
    }
    readiness.set_streams(StreamCheck::Unchecked);
    let (nats, mut connected, readiness) = (nats.clone(), broker.connected(), readiness.clone());
    tokio::spawn(async move {
        loop {
            if connected.wait_for(|c| *c).await.is_err() {
                return;
            }
            let mut missing = None;
            for stream in &streams {
                if let Err(e) = nats.check_stream(stream).await {
                    tracing::error!(stream = %stream, error = %e, "JetStream stream not available; fanfare does not create streams");
                    missing = Some(());
                }
            }
            if missing.is_none() {
                readiness.set_streams(StreamCheck::Found);
                tracing::info!(streams = ?streams, "JetStream streams found");
                return;
            }
            readiness.set_streams(StreamCheck::Missing);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// The HTTP client for JWKS fetches and upstream auth callouts. It never follows a
/// redirect: an auth endpoint that answers an anonymous user `302 -> /login` must
/// refuse that user, not grant them what the login page's 200 would. reqwest uses
/// rustls; ring is the provider async-nats already brings (installing it twice is
/// harmless: the first one wins).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let bound = socket.and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(4096)
    });
    bound.map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts fanfare with `config` (already validated) and returns once both listeners
/// are bound. The broker connects in the background.
pub async fn run(config: Config) -> Result<Handle, StartError> {
    let started = config.clone();
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let broker = Broker::start(config.nats.as_ref(), &metrics).await?;

    let edge_listener = bind("edge", config.listen.0).await?;
    let admin_listener = bind("admin", config.admin.listen.0).await?;
    let edge_addr = edge_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "edge",
            addr: config.listen.0,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "admin",
            addr: config.admin.listen.0,
            source,
        })?;

    let readiness = Arc::new(Readiness::new(broker.connected()));
    check_streams(&broker, &config, &readiness);
    let inflight = Arc::new(InFlight::default());

    let server_conf = Arc::new(ServerConf {
        upstream_keepalive_pool_size: config.proxy.keepalive_pool,
        grace_period_seconds: Some(config.shutdown.grace.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.shutdown.grace.0.as_secs()),
        ..ServerConf::default()
    });
    let drain_control = Arc::new(drain::channel(config.shutdown.drain_window()).0);
    let stop_edge_rx = drain_control.subscribe();
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let limits = ConnectionLimits::new(&config.limits);
    let hub = Hub::new(broker.clone(), metrics.clone(), config.limits.max_topics);
    let http = http_client().map_err(|e| StartError::Routes(format!("http client: {e}")))?;
    let disconnects = Disconnects::start(http.clone(), &metrics);
    let realtime = Realtime::new(
        config.routes.clone(),
        Shared {
            hub: hub.clone(),
            broker: broker.clone(),
            metrics: metrics.clone(),
            drain: drain_control.clone(),
            limits: limits.clone(),
            upstream_base: config.upstream.to_string(),
            http: http.clone(),
            trusted: config.limits.trusted_proxies.clone(),
            directory: Directory::start(hub.clone(), broker.clone(), &metrics),
            disconnects: disconnects.clone(),
        },
    )
    .map_err(StartError::Routes)?;
    let realtime = Arc::new(arc_swap::ArcSwap::from_pointee(realtime));
    let reloader = Arc::new(reload::Reloader::new(
        realtime.clone(),
        limits.clone(),
        metrics.clone(),
        started,
    ));
    let pass = config.proxy.fast_path.then(|| {
        Arc::new(edge::pass::Pass::new(
            config.upstream.clone(),
            config.proxy.clone(),
            metrics.clone(),
            inflight.clone(),
            realtime.clone(),
            config.client,
        ))
    });
    let edge = Edge::new(
        config.upstream.clone(),
        config.proxy.clone(),
        metrics.clone(),
        inflight.clone(),
        realtime,
        config
            .client
            .then(|| edge::assets::Assets::new(config.demo.then_some(admin_addr))),
    );
    let mut proxy = pingora::proxy::http_proxy(&server_conf, edge);
    let mut options = HttpServerOptions::default();
    options.h2c = config.proxy.h2c;
    // An h2c connection with no stream open is closed after this long (its "head"
    // deadline covers only the preface).
    options.h2_idle_timeout = Some(config.proxy.idle_timeout.0);
    proxy.server_options = Some(options);
    let proxy = Arc::new(proxy);

    let admin = Arc::new(HttpServer::new_app(Admin {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        broker: broker.clone(),
        publish: admin::publish::Access::new(admin_addr, config.admin.publish_token.as_deref()),
    }));

    let head = edge::listener::HeadPolicy {
        timeout: config.limits.request_head_timeout.0,
        limits: limits.clone(),
        h2c: config.proxy.h2c,
        trusted: config.limits.trusted_proxies.clone(),
        pass,
    };
    tokio::spawn(edge::listener::serve(
        edge_listener,
        proxy,
        stop_edge_rx.clone(),
        stop_edge_rx,
        Some(head),
    ));
    tokio::spawn(edge::listener::serve(
        admin_listener,
        admin,
        stop_admin_rx.clone(),
        stop_admin_rx,
        None,
    ));
    readiness.edge_listening.store(true, Ordering::Release);
    tracing::info!(edge = %edge_addr, admin = %admin_addr, upstream = %config.upstream, "fanfare listening");

    Ok(Handle {
        edge_addr,
        admin_addr,
        metrics,
        broker,
        hub,
        readiness,
        inflight,
        limits,
        drain: drain_control,
        stop_admin,
        disconnects,
        grace: config.shutdown.grace.0,
        drain_window: config.shutdown.drain_window(),
        reloader,
    })
}
