//! A realtime route as it runs: its compiled form, its context (shared by every
//! connection on it), its authorizer, its Socket.IO state, and its own drain, which a
//! reload starts when it removes or changes the route (and the shutdown starts for all).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::route::Route;
use crate::app::{App, Disconnects};
use crate::auth::Authorizer;
use crate::broker::Broker;
use crate::config::{Cidr, RouteConfig, Transport};
use crate::drain::{DrainControl, Why};
use crate::hub::Hub;
use crate::hub::direct::Directory;
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::transport::RouteContext;
use crate::transport::socketio::SioRoute;

/// What the realtime side needs from the rest of fanfare.
pub struct Shared {
    /// The hub.
    pub hub: Hub,
    /// The broker (client publishes).
    pub broker: Broker,
    /// Metrics.
    pub metrics: Metrics,
    /// The shutdown drain; each route's drain follows it.
    pub drain: Arc<DrainControl>,
    /// Connection quotas.
    pub limits: Arc<ConnectionLimits>,
    /// The app's base URL (upstream auth).
    pub upstream_base: String,
    /// The HTTP client for auth callouts and JWKS.
    pub http: reqwest::Client,
    /// Proxies whose forwarded headers are believed (at start; a reload passes its own).
    pub trusted: Vec<Cidr>,
    /// This instance's connections (`fanfare.connection.<id>`).
    pub directory: Directory,
    /// The disconnect callbacks' queue.
    pub disconnects: Disconnects,
}

/// One route, live.
pub struct LiveRoute {
    pub(super) route: Route,
    pub(super) ctx: Arc<RouteContext>,
    pub(super) auth: Arc<Authorizer>,
    /// A Socket.IO route's namespaces and sessions.
    pub(super) sio: Option<Arc<SioRoute>>,
    /// Starts this route's drain alone (a reload retiring it).
    retire: Arc<DrainControl>,
}

impl LiveRoute {
    /// Compiles `config`: its authorizer (JWKS refresher included), app callbacks,
    /// heartbeat ticker and drain.
    pub(super) fn build(config: RouteConfig, shared: &Shared) -> Result<LiveRoute, String> {
        let (route, auth) = Route::new(config)?;
        let auth = Authorizer::new(
            &auth,
            &shared.upstream_base,
            shared.http.clone(),
            &shared.metrics,
        )
        .map_err(|e| format!("route {}: {e}", route.config.path))?;
        let (bound, policy) = route.queue();
        let app = App::new(
            &route.config.app,
            &shared.upstream_base,
            &route.config.path,
            shared.http.clone(),
            &shared.metrics,
            &shared.disconnects,
        )
        .map_err(|e| format!("route {}: app: {e}", route.config.path))?;
        let (retire, drain) = shared.drain.route();
        let ctx = Arc::new(RouteContext {
            hub: shared.hub.clone(),
            broker: shared.broker.clone(),
            metrics: shared.metrics.clone(),
            drain,
            path: route.config.path.clone(),
            topic: route.topic(),
            bound,
            policy,
            ws: route.config.ws.clone(),
            poll: route.config.poll.clone(),
            heartbeat: ticker(route.config.heartbeat.0),
            retry_ms: route.config.retry.0.as_millis(),
            retry_jitter: route.config.retry_jitter,
            app,
            directory: shared.directory.clone(),
            spec: Arc::new(route.topic()),
        });
        let auth = Arc::new(auth);
        let sio = if route.serves(Transport::SocketIo) {
            Some(Arc::new(
                super::socketio::sio_route(&route, auth.clone())
                    .map_err(|e| format!("route {}: socketio: {e}", route.config.path))?,
            ))
        } else {
            None
        };
        Ok(LiveRoute {
            route,
            ctx,
            auth,
            sio,
            retire,
        })
    }
}

/// Routes a reload left behind.
pub struct Retired(pub(super) Vec<Arc<LiveRoute>>);

impl Retired {
    /// Closes their connections, each at its turn over the drain window, with
    /// `route_changed` (WebSocket 4004, SSE `fanfare.route_changed`).
    pub fn start(self) {
        for live in self.0 {
            live.retire.start_for(Why::RouteChanged);
        }
    }
}

/// A beat every `every`, for as long as the route holds it: each SSE session waits on
/// it for its heartbeat. A `Notify` rather than a watch: a waiting session holds one
/// `Notified` (a tick while it is writing is missed, and that stream was not idle).
fn ticker(every: Duration) -> Arc<Notify> {
    let beat = Arc::new(Notify::new());
    let weak = Arc::downgrade(&beat);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let Some(beat) = weak.upgrade() else { return };
            beat.notify_waiters();
        }
    });
    beat
}
