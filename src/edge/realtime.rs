//! Realtime routes at the edge: match -> gate -> admit -> hand to a transport.
//!
//! Order of checks for a request whose path is a realtime route: `Origin`, method
//! (OPTIONS is a CORS preflight), path parameters, transport, connection quota,
//! authorization, subjects (injection, grant), then the hub subscription; only then is
//! the response header written. Every refusal is a [`Refusal`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use pingora::prelude::Session;

use super::admission::{acquire, open};
use super::client::Client;
use super::cors::{self, OriginCheck};
use super::handoff::take_h1_stream;
use super::live::LiveRoute;
pub use super::live::{Retired, Shared};
use super::respond::Refusal;
use crate::app::Admission;
use crate::auth::{self, Admitted};
use crate::broker::BrokerError;
use crate::config::{Cidr, Compression, RouteConfig, Transport};
use crate::hub::JoinError;
use crate::routing::path::{MatchError, Params, query_param};
use crate::transport::socketio::relay::SioRoutes;
use crate::transport::sse::{PingoraSink, RawSink};
use crate::transport::{Held, Joined, RouteContext, echo, poll, sse, ws};
use crate::wire::deflate;
use crate::wire::ws::{check_handshake, offered_extensions};

/// The realtime side of the edge: the routes of one configuration. A reload builds
/// the next one ([`Realtime::reloaded`]) and the edge swaps it in.
pub struct Realtime {
    routes: Vec<Arc<LiveRoute>>,
    trusted: Vec<Cidr>,
    shared: Arc<Shared>,
    /// The Socket.IO routes the Engine.IO relay answers for (swapped on reload).
    relay: SioRoutes,
    relay_started: Arc<AtomicBool>,
}

/// What a reload did to the routes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    /// Paths of routes kept as they were (their connections stay).
    pub kept: Vec<String>,
    /// Paths of routes that are new or changed.
    pub added: Vec<String>,
    /// Paths of routes removed or changed: their connections are closed with
    /// `route_changed`, spread over the drain window.
    pub retired: Vec<String>,
}

impl Realtime {
    /// Builds every route; starts one heartbeat ticker per route (and JWKS refreshers
    /// for routes that use them).
    pub fn new(configs: Vec<RouteConfig>, shared: Shared) -> Result<Realtime, String> {
        let trusted = shared.trusted.clone();
        let (realtime, _, _) = Self::build(configs, trusted, Arc::new(shared), None)?;
        realtime.activate();
        Ok(realtime)
    }

    /// The realtime side for `configs`: routes whose configuration did not change are
    /// kept as they are (with their connections), the others built anew. Nothing
    /// changes for `self`'s routes until the caller swaps the new set in, calls
    /// [`Realtime::activate`] on it and retires the rest ([`Retired::start`]).
    pub fn reloaded(
        &self,
        configs: Vec<RouteConfig>,
        trusted: Vec<Cidr>,
    ) -> Result<(Realtime, Retired, RouteChanges), String> {
        Self::build(configs, trusted, self.shared.clone(), Some(self))
    }

    fn build(
        configs: Vec<RouteConfig>,
        trusted: Vec<Cidr>,
        shared: Arc<Shared>,
        previous: Option<&Realtime>,
    ) -> Result<(Realtime, Retired, RouteChanges), String> {
        let mut changes = RouteChanges::default();
        let mut routes = Vec::with_capacity(configs.len());
        for config in configs {
            let same =
                previous.and_then(|p| p.routes.iter().find(|l| l.route.config == config).cloned());
            if let Some(live) = same {
                changes.kept.push(config.path.clone());
                routes.push(live);
            } else {
                changes.added.push(config.path.clone());
                routes.push(Arc::new(LiveRoute::build(config, &shared)?));
            }
        }
        let retired: Vec<Arc<LiveRoute>> = previous
            .map(|p| {
                p.routes
                    .iter()
                    .filter(|old| !routes.iter().any(|n| Arc::ptr_eq(n, old)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        changes.retired = retired
            .iter()
            .map(|l| l.route.config.path.clone())
            .collect();
        let (relay, relay_started) = match previous {
            Some(p) => (p.relay.clone(), p.relay_started.clone()),
            None => (SioRoutes::default(), Arc::new(AtomicBool::new(false))),
        };
        Ok((
            Realtime {
                routes,
                trusted,
                shared,
                relay,
                relay_started,
            },
            Retired(retired),
            changes,
        ))
    }

    /// Points the Engine.IO relay at this set's Socket.IO routes (starting the relay
    /// the first time there are any).
    pub fn activate(&self) {
        let sio: HashMap<_, _> = self
            .routes
            .iter()
            .filter_map(|l| Some((l.route.config.path.clone(), l.sio.clone()?)))
            .collect();
        let any = !sio.is_empty();
        self.relay.store(Arc::new(sio));
        if any && !self.relay_started.swap(true, Ordering::AcqRel) {
            crate::transport::socketio::relay::serve(
                self.shared.broker.clone(),
                self.shared.directory.instance(),
                self.relay.clone(),
                self.shared.metrics.clone(),
            );
        }
    }

    /// Whether `path` is one of these realtime routes.
    pub fn claims(&self, path: &str) -> bool {
        self.routes
            .iter()
            .any(|l| l.route.match_path(path).is_some())
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
        self.shared
            .metrics
            .rejected
            .with_label_values(&[reason])
            .inc();
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
                &self.shared.limits,
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
        let slot = acquire(&self.shared.limits, &client, &self.shared.metrics)?;
        let grant = live
            .auth
            .authorize(session.req_header(), &self.shared.metrics)
            .await?;
        let ctx = live.ctx.clone();
        let path_params = ctx.app.is_some().then(|| params.clone());
        let admitted = auth::admit(route, params, grant, &self.shared.metrics)?;
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
                let deflate = (ctx.ws.compression == Compression::On)
                    .then(|| offered_extensions(session.req_header()))
                    .and_then(|offers| deflate::negotiate(&offers));
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
                // What only the handshake and the session's start need, in one box
                // that is gone once they are done: a task's captures stay in its
                // future for the connection's life (in 128-byte steps).
                let start = Box::new((
                    stream,
                    accept,
                    deflate,
                    joined,
                    admitted.permissions,
                    ctx,
                    conn,
                ));
                tokio::spawn(async move {
                    let _slot = slot;
                    let (stream, accept, deflate, joined, permissions, ctx, conn) = *start;
                    let Some(socket) = ws::accept(stream, &accept, &ctx.ws, deflate.as_ref()).await
                    else {
                        return;
                    };
                    if deflate.is_some() {
                        ctx.metrics.ws_compressed.inc();
                    }
                    drop((accept, deflate));
                    match joined {
                        Some((joined, registered)) => {
                            ws::serve(socket, ctx, joined, permissions, conn).await;
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
                if let Some(stream) = take_h1_stream(session).await {
                    let head = cors::sse_head_h1(origin);
                    let mut sink = RawSink::new(stream);
                    // The hub writes a lone message to the stream itself when nothing
                    // is queued (hub::gate), once the session's first write is done.
                    sink.share(queue);
                    // Everything the task captures stays in it for the connection's
                    // life (about 1 KiB each, in 128-byte steps): the sink and the
                    // session are moved in, not the stream, context and queue again.
                    tokio::spawn(async move {
                        let _slot = slot;
                        if sink.write_head(head).await.is_ok() {
                            let counting = sse_session.ctx().counting(Transport::Sse);
                            let outcome = sse_session.run(&mut sink).await;
                            let outcome = counting.end(&sse_session.ctx().metrics, outcome);
                            sse_session.ended(conn.as_deref(), outcome);
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
                let counting = ctx.counting(Transport::Sse);
                let outcome = sse_session.run(&mut PingoraSink(session)).await;
                let outcome = counting.end(&ctx.metrics, outcome);
                sse_session.ended(conn.as_deref(), outcome);
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
