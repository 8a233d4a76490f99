//! Realtime routes at the edge: match -> gate -> admit -> hand to a transport.
//!
//! Order of checks for a request whose path is a realtime route: `Origin`, method
//! (OPTIONS is a CORS preflight), path parameters, transport, connection quota,
//! authorization, subjects (injection, grant), then the hub subscription; only then is
//! the response header written. Every refusal is a [`Refusal`].

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pingora::prelude::Session;
use tokio::sync::watch;

use super::admission::{acquire, open};
use super::client::Client;
use super::cors::{self, OriginCheck};
use super::handoff::take_h1_stream;
use super::respond::Refusal;
use super::route::Route;
use crate::app::{Admission, App, Disconnects};
use crate::auth::{self, Admitted, Authorizer};
use crate::broker::{Broker, BrokerError};
use crate::config::{Cidr, RouteConfig, Transport};
use crate::drain::Drain;
use crate::hub::direct::Directory;
use crate::hub::{Hub, JoinError};
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::routing::path::{MatchError, Params, query_param};
use crate::transport::sse::{PingoraSink, RawSink};
use crate::transport::{Held, Joined, RouteContext, echo, poll, sse, ws};
use crate::wire::ws::check_handshake;

struct LiveRoute {
    route: Route,
    ctx: Arc<RouteContext>,
    auth: Arc<Authorizer>,
    /// A Socket.IO route's namespaces and sessions.
    sio: Option<Arc<crate::transport::socketio::SioRoute>>,
}

/// What the realtime side needs from the rest of fanfare.
pub struct Shared {
    /// The hub.
    pub hub: Hub,
    /// The broker (client publishes).
    pub broker: Broker,
    /// Metrics.
    pub metrics: Metrics,
    /// The shutdown drain.
    pub drain: Drain,
    /// Connection quotas.
    pub limits: Arc<ConnectionLimits>,
    /// The app's base URL (upstream auth).
    pub upstream_base: String,
    /// The HTTP client for auth callouts and JWKS.
    pub http: reqwest::Client,
    /// Proxies whose forwarded headers are believed.
    pub trusted: Vec<Cidr>,
    /// This instance's connections (`fanfare.connection.<id>`).
    pub directory: Directory,
    /// The disconnect callbacks' queue.
    pub disconnects: Disconnects,
}

/// The realtime side of the edge.
pub struct Realtime {
    routes: Vec<LiveRoute>,
    metrics: Metrics,
    limits: Arc<ConnectionLimits>,
    trusted: Vec<Cidr>,
}

impl Realtime {
    /// Builds every route; starts one heartbeat ticker per route (and JWKS refreshers
    /// for routes that use them).
    pub fn new(configs: Vec<RouteConfig>, shared: Shared) -> Result<Realtime, String> {
        let routes = configs
            .into_iter()
            .map(|config| {
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
                let ctx = Arc::new(RouteContext {
                    hub: shared.hub.clone(),
                    broker: shared.broker.clone(),
                    metrics: shared.metrics.clone(),
                    drain: shared.drain.clone(),
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
                })
            })
            .collect::<Result<Vec<LiveRoute>, String>>()?;
        let sio = routes
            .iter()
            .filter_map(|l| Some((l.route.config.path.clone(), l.sio.clone()?)))
            .collect();
        crate::transport::socketio::relay::serve(
            shared.broker.clone(),
            shared.directory.instance(),
            sio,
            shared.metrics.clone(),
        );
        Ok(Realtime {
            routes,
            metrics: shared.metrics,
            limits: shared.limits,
            trusted: shared.trusted,
        })
    }

    /// Serves `session` when its path is a realtime route; `Ok(false)` passes it on to
    /// the app.
    pub async fn handle(&self, session: &mut Session) -> pingora::Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let Some((live, params)) = self
            .routes
            .iter()
            .find_map(|l| l.route.match_path(&path).map(|p| (l, p)))
        else {
            return Ok(false);
        };
        if let Err(refusal) = self.serve(session, live, params).await {
            refusal.write(session).await?;
        }
        Ok(true)
    }

    fn reject(&self, reason: &'static str, refusal: Refusal) -> Refusal {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        refusal
    }

    async fn serve(
        &self,
        session: &mut Session,
        live: &LiveRoute,
        params: Result<Params, MatchError>,
    ) -> Result<(), Refusal> {
        let route = &live.route;
        let client = Client::of(session, &self.trusted);
        let allowed_origin = match cors::check(
            route,
            session.req_header().headers.get("origin"),
            header(session, "host").as_deref(),
            client.https,
        ) {
            OriginCheck::Missing if route.config.allow_missing_origin => None,
            OriginCheck::Missing => {
                return Err(self.reject(
                    "origin_missing",
                    Refusal::new(
                        StatusCode::FORBIDDEN,
                        "origin_required",
                        "this route needs an Origin header",
                    ),
                ));
            }
            OriginCheck::Allowed(o) => Some(o),
            OriginCheck::Refused => {
                return Err(self.reject(
                    "origin_not_allowed",
                    Refusal::new(
                        StatusCode::FORBIDDEN,
                        "origin_not_allowed",
                        "this Origin may not use this route",
                    ),
                ));
            }
        };
        let method = session.req_header().method.clone();
        if method == http::Method::OPTIONS {
            return cors::preflight(session, allowed_origin.as_ref())
                .await
                .map_err(Refusal::internal);
        }
        if let Some(sio) = &live.sio {
            return super::socketio::serve(
                session,
                &live.ctx,
                sio,
                &self.limits,
                &client,
                allowed_origin.as_ref(),
            )
            .await;
        }
        if method != http::Method::GET {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "realtime routes answer GET",
            ));
        }
        let params = params.map_err(|e| {
            Refusal::new(StatusCode::BAD_REQUEST, "bad_path_parameter", e.to_string())
        })?;
        let transport = requested_transport(session)
            .filter(|t| route.serves(*t))
            .ok_or_else(|| {
                let offered: Vec<&str> = route.config.transports.iter().map(|t| t.name()).collect();
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "transport_not_allowed",
                    format!("this route offers: {}", offered.join(", ")),
                )
            })?;
        let slot = acquire(&self.limits, &client, &self.metrics)?;
        let grant = live
            .auth
            .authorize(session.req_header(), &self.metrics)
            .await?;
        let ctx = live.ctx.clone();
        let path_params = ctx.app.is_some().then(|| params.clone());
        let admitted = auth::admit(route, params, grant, &self.metrics)?;
        let client_id = ctx.hub.client_id();
        let (conn, opening) = if ctx.ws.echo {
            (None, None)
        } else {
            open(
                session,
                &ctx,
                client_id,
                transport,
                &admitted,
                path_params,
                client.ip,
            )
            .await?
        };
        let opening = opening.as_ref();
        let origin = allowed_origin.as_ref();
        match transport {
            Transport::Ws => {
                let accept = check_handshake(session.req_header())
                    .map_err(|e| Refusal::new(e.status(), e.code(), e.to_string()))?;
                let joined = if ctx.ws.echo {
                    None
                } else {
                    let cursor = query_param(session.req_header().uri.query(), "last_event_id");
                    let joined =
                        join(&ctx, client_id, &admitted, cursor.as_deref(), opening).await?;
                    let registered =
                        ctx.directory
                            .register(client_id, joined.queue.clone(), ctx.spec.clone());
                    Some((joined, registered))
                };
                let stream = take_h1_stream(session).await.ok_or_else(|| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad_handshake",
                        "WebSocket needs HTTP/1.1",
                    )
                })?;
                tokio::spawn(async move {
                    let _slot = slot;
                    let Some(socket) = ws::accept(stream, &accept, &ctx.ws).await else {
                        return;
                    };
                    match joined {
                        Some((joined, registered)) => {
                            ws::serve(socket, ctx, joined, admitted.permissions, conn).await;
                            drop(registered);
                        }
                        None => echo::echo(socket).await,
                    }
                });
            }
            Transport::Sse => {
                let cursor = header(session, "last-event-id")
                    .or_else(|| query_param(session.req_header().uri.query(), "last_event_id"));
                // While the broker is unreachable an EventSource is admitted anyway (a
                // non-200 would end it for good) and joins once the broker is back.
                let joined = if *ctx.hub.connected().borrow() {
                    match ctx
                        .join(client_id, &admitted.subjects, cursor.as_deref(), opening)
                        .await
                    {
                        Ok(j) => Ok(j),
                        Err(JoinError::Broker(_)) => Err(()),
                        Err(e) => return Err(join_refusal(&ctx, e)),
                    }
                } else {
                    Err(())
                };
                let (client, queue, held) = match joined {
                    Ok(j) => (j.client, j.queue, Held::Now(j.memberships)),
                    Err(()) => {
                        let d =
                            ctx.join_later(client_id, admitted.subjects.clone(), cursor, opening);
                        (d.client, d.queue, Held::Later(d.memberships))
                    }
                };
                let expires = admitted.permissions.expires;
                // An SSE client's id reaches the app only through its callbacks: without
                // them nobody can address it, and its place in the directory (about 100
                // bytes) is saved.
                let registered = ctx.app.is_some().then(|| {
                    ctx.directory
                        .register(client, queue.clone(), ctx.spec.clone())
                });
                let mut sse_session =
                    sse::Session::new(ctx.clone(), queue.clone(), client, expires);
                if let Some(mut stream) = take_h1_stream(session).await {
                    let head = cors::sse_head_h1(origin);
                    tokio::spawn(async move {
                        let _slot = slot;
                        let mut sink = RawSink(&mut stream);
                        if sink.write_head(head).await.is_ok() {
                            let outcome = ctx.counted("sse", sse_session.run(&mut sink)).await;
                            ctx.ended(conn.as_deref(), "sse", outcome, &queue);
                            sink.finish().await;
                        }
                        drop((held, registered));
                    });
                    return Ok(());
                }
                let head = cors::sse_head(origin).map_err(Refusal::internal)?;
                session
                    .write_response_header(Box::new(head), false)
                    .await
                    .map_err(Refusal::internal)?;
                let outcome = ctx
                    .counted("sse", sse_session.run(&mut PingoraSink(session)))
                    .await;
                ctx.ended(conn.as_deref(), "sse", outcome, &queue);
                drop((held, registered, slot));
            }
            // Served above, before the method check (Engine.IO POSTs).
            Transport::SocketIo => return Err(Refusal::internal("socketio")),
            Transport::Poll => {
                let cursor = query_param(session.req_header().uri.query(), "cursor")
                    .filter(|c| !c.is_empty());
                if !*ctx.hub.connected().borrow() {
                    return Err(unavailable(&BrokerError::Disconnected));
                }
                let first = ctx.topic(&admitted.subjects);
                // "Now", taken before anything can be queued: if this poll returns
                // nothing, the next one resumes from here and misses nothing.
                let now = ctx
                    .hub
                    .cursor_now(&first)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let joined = join(&ctx, client_id, &admitted, cursor.as_deref(), opening).await?;
                let head = cors::ok_head(origin).map_err(Refusal::internal)?;
                poll::serve(session, &ctx, joined, cursor, now, head)
                    .await
                    .map_err(Refusal::internal)?;
                drop(slot);
            }
        }
        Ok(())
    }
}

/// Joins a new client to its subjects (and resumes from `cursor`).
async fn join(
    ctx: &RouteContext,
    client: u64,
    admitted: &Admitted,
    cursor: Option<&str>,
    opening: Option<&Admission>,
) -> Result<Joined, Refusal> {
    if !*ctx.hub.connected().borrow() {
        return Err(unavailable(&BrokerError::Disconnected));
    }
    ctx.join(client, &admitted.subjects, cursor, opening)
        .await
        .map_err(|e| join_refusal(ctx, e))
}

fn join_refusal(ctx: &RouteContext, e: JoinError) -> Refusal {
    match e {
        JoinError::Broker(e) => unavailable(&e),
        JoinError::TooManyTopics(_) => {
            ctx.metrics
                .rejected
                .with_label_values(&["too_many_topics"])
                .inc();
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_topics",
                e.to_string(),
            )
        }
    }
}

fn unavailable(e: &BrokerError) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "nats_unavailable",
        e.to_string(),
    )
}

fn header(session: &Session, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The transport a request asks for: WebSocket by its `Upgrade`, otherwise the
/// `transport` query parameter (`sse` or `poll`; absent: SSE). `None` for anything
/// else, which is refused rather than served as SSE.
fn requested_transport(session: &Session) -> Option<Transport> {
    let upgrade = header(session, "upgrade").unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        return Some(Transport::Ws);
    }
    match query_param(session.req_header().uri.query(), "transport").as_deref() {
        None | Some("sse") => Some(Transport::Sse),
        Some("poll") => Some(Transport::Poll),
        Some(_) => None,
    }
}

/// A watch that ticks every `every` while anyone holds a receiver.
fn ticker(every: Duration) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => { tx.send_modify(|n| *n += 1); }
                _ = tx.closed() => return,
            }
        }
    });
    rx
}
