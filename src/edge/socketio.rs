//! A `transports: [socketio]` route at the edge: the Engine.IO query checks, the
//! handshakes (polling and WebSocket), and each request handed to its session's
//! transport pump (`transport::socketio`).

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use pingora::prelude::Session;

use super::admission::acquire;
use super::client::Client;
use super::cors::{self, AllowOrigin};
use super::handoff::take_h1_stream;
use super::respond::Refusal;
use super::route::Route;
use crate::auth::Authorizer;
use crate::config::{AuthMode, WsConfig};
use crate::limits::ConnectionLimits;
use crate::routing::path::query_param;
use crate::routing::subject::Template;
use crate::transport::RouteContext;
use crate::transport::socketio::session::{self, Handshake};
use crate::transport::socketio::{Mode, Namespace, Registry, SioRoute, polling, relay, ws};
use crate::wire::engineio::{self, TransportName};
use crate::wire::ws::check_handshake;

/// Compiles a Socket.IO route's namespaces.
pub fn sio_route(route: &Route, auth: Arc<Authorizer>) -> Result<SioRoute, String> {
    let claims = route.config.auth.mode == AuthMode::Jwt;
    let parse = |s: &String| Template::parse_with(s, &[], claims).map_err(|e| format!("{s}: {e}"));
    let mut namespaces = HashMap::new();
    for (name, ns) in &route.config.socketio.namespaces {
        namespaces.insert(
            name.clone(),
            Namespace {
                subjects: ns.subjects.iter().map(parse).collect::<Result<_, _>>()?,
                emit: ns
                    .emit
                    .iter()
                    .map(|(event, s)| Ok((event.clone(), parse(s)?)))
                    .collect::<Result<_, String>>()?,
            },
        );
    }
    Ok(SioRoute {
        config: route.config.socketio.clone(),
        namespaces,
        auth,
        allow_publish: route
            .config
            .allow_publish
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()?,
        registry: Registry::default(),
    })
}

/// Engine.IO's own refusal: `400 {"code":N,"message":"…"}`.
fn bad(code: u8, message: &'static str) -> Refusal {
    Refusal::App {
        status: StatusCode::BAD_REQUEST,
        headers: Box::new({
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            h
        }),
        body: polling::error_body(code, message),
    }
}

/// Serves one Engine.IO request of a Socket.IO route.
pub async fn serve(
    session: &mut Session,
    ctx: &Arc<RouteContext>,
    sio: &Arc<SioRoute>,
    limits: &Arc<ConnectionLimits>,
    client: &Client,
    origin: Option<&AllowOrigin>,
) -> Result<(), Refusal> {
    let req = session.req_header();
    let q = req.uri.query();
    let Some(transport) = engineio::check_query(
        query_param(q, "EIO").as_deref(),
        query_param(q, "transport").as_deref(),
    ) else {
        return Err(bad(0, "Transport unknown"));
    };
    let sid = query_param(q, "sid");
    let method = req.method.clone();
    let head = cors::ok_head(origin).map_err(Refusal::internal)?;
    match (transport, sid, method) {
        (TransportName::Polling, None, Method::GET) => {
            let slot = acquire(limits, client, &ctx.metrics)?;
            let handshake = handshake(ctx, sio, session.req_header(), client.ip);
            let engine = session::start(ctx.clone(), sio.clone(), handshake, Mode::Polling, slot);
            polling::open(session, head, &sio.open_json(&engine.sid, &["websocket"]))
                .await
                .map_err(Refusal::internal)
        }
        (TransportName::Polling, Some(sid), m)
            if (m == Method::GET || m == Method::POST) && is_elsewhere(ctx, sio, &sid) =>
        {
            // No sticky sessions: the owner serves it over NATS.
            ctx.metrics
                .socketio_relays
                .with_label_values(&["sent"])
                .inc();
            let (op, body) = if m == Method::GET {
                ("get", bytes::Bytes::new())
            } else {
                match polling::read_body(session, sio.config.max_payload).await {
                    Some(b) => ("post", b),
                    None => return Err(bad(3, "Bad request")),
                }
            };
            let path = ctx.path.clone();
            match relay::request(&ctx.broker, sio, &path, &sid, op, body).await {
                Ok(body) => {
                    let ct = if op == "get" {
                        polling::TEXT
                    } else {
                        "text/html"
                    };
                    polling::respond(session, head, StatusCode::OK, ct, body)
                        .await
                        .map_err(Refusal::internal)
                }
                Err(body) => polling::respond(
                    session,
                    head,
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    body,
                )
                .await
                .map_err(Refusal::internal),
            }
        }
        (TransportName::Polling, Some(sid), m) if m == Method::GET || m == Method::POST => {
            let engine = sio
                .registry
                .get(&sid)
                .ok_or_else(|| bad(1, "Session ID unknown"))?;
            let served = if m == Method::GET {
                polling::get(session, &engine, head, &ctx.metrics.socketio_polls).await
            } else {
                polling::post(session, &engine, head, sio.config.max_payload).await
            };
            served.map_err(Refusal::internal)
        }
        (TransportName::Websocket, sid, Method::GET) => {
            let accept = check_handshake(session.req_header())
                .map_err(|e| Refusal::new(e.status(), e.code(), e.to_string()))?;
            let ws_config = WsConfig {
                max_message: sio.config.max_payload,
                ..ctx.ws.clone()
            };
            match sid {
                None => {
                    let slot = acquire(limits, client, &ctx.metrics)?;
                    let handshake = handshake(ctx, sio, session.req_header(), client.ip);
                    let stream = take_h1_stream(session).await.ok_or_else(h1_only)?;
                    session::start_ws(
                        ctx.clone(),
                        sio.clone(),
                        handshake,
                        slot,
                        stream,
                        accept,
                        ws_config,
                    );
                }
                Some(sid) if is_elsewhere(ctx, sio, &sid) => {
                    ctx.metrics
                        .socketio_relays
                        .with_label_values(&["sent"])
                        .inc();
                    let stream = take_h1_stream(session).await.ok_or_else(h1_only)?;
                    let (broker, sio, path) = (ctx.broker.clone(), sio.clone(), ctx.path.clone());
                    tokio::spawn(async move {
                        if let Some(socket) =
                            crate::transport::ws::accept(stream, &accept, &ws_config, None).await
                        {
                            relay::remote_upgrade(socket, broker, sio, path, sid).await;
                        }
                    });
                }
                Some(sid) => {
                    let engine = sio
                        .registry
                        .get(&sid)
                        .ok_or_else(|| bad(1, "Session ID unknown"))?;
                    let stream = take_h1_stream(session).await.ok_or_else(h1_only)?;
                    tokio::spawn(async move {
                        if let Some(socket) =
                            crate::transport::ws::accept(stream, &accept, &ws_config, None).await
                        {
                            ws::serve_upgrade(socket, engine).await;
                        }
                    });
                }
            }
            Ok(())
        }
        _ => Err(bad(2, "Bad handshake method")),
    }
}

/// What a session keeps of its opening request: the headers its namespace connects
/// authorize with and its callbacks forward, and the user agent for `app.connect`.
fn handshake(
    ctx: &RouteContext,
    sio: &SioRoute,
    req: &pingora::http::RequestHeader,
    remote: Option<std::net::IpAddr>,
) -> Handshake {
    Handshake::new(req, remote, |name| {
        name == "user-agent"
            || sio.auth.reads_header(name)
            || ctx.app.as_ref().is_some_and(|a| a.forwards(name))
    })
}

/// Whether `sid` belongs to another instance (its first part names the owner).
fn is_elsewhere(ctx: &RouteContext, sio: &SioRoute, sid: &str) -> bool {
    sio.registry.get(sid).is_none() && relay::owner(sid) != ctx.directory.instance()
}

fn h1_only() -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "bad_handshake",
        "WebSocket needs HTTP/1.1",
    )
}
