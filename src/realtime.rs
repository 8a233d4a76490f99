//! Realtime routes at the edge: matching, checks, the handshake, and the hand-off of
//! the held connection to a per-client session.
//!
//! Order of checks for a request whose path is a realtime route: method (OPTIONS is a
//! CORS preflight), path parameters, `Origin`, transport, subjects (injection), then the
//! hub subscription; only then is the response header written. Every refusal is an
//! ordinary JSON HTTP response.

use std::sync::Arc;
use std::time::Duration;

use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use std::time::SystemTime;

use crate::auth::{Authorizer, Denied, Grant};
use crate::broker::Broker;
use crate::config::{AuthMode, Transport};
use crate::drain::Drain;
use crate::edge::{respond_json, take_h1_stream};
use crate::hub::{ClientQueue, Hub, Membership, Replayed, TopicSpec};
use crate::limits::{ConnectionLimits, Refused, Slot};
use crate::metrics::Metrics;
use crate::route::Params;
use crate::route::{Route, Routes, query_param};
use crate::subject::{self, CLAIM_PREFIX, SubjectError};
use crate::transport::sse::{self, RawSink, Sink};
use crate::transport::ws;

/// How long the browser may cache a CORS preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

struct LiveRoute {
    route: Arc<Route>,
    heartbeat: watch::Receiver<u64>,
    ws: Arc<ws::Context>,
    auth: Authorizer,
}

/// The realtime side of the edge.
pub struct Realtime {
    routes: Vec<LiveRoute>,
    hub: Hub,
    metrics: Metrics,
    drain: Drain,
    limits: Arc<ConnectionLimits>,
}

/// A refusal: status, machine-readable code, human reason.
pub struct Refusal(pub u16, pub &'static str, pub String);

/// Everything the handshake decided, handed to the transport.
struct Admitted {
    subjects: Vec<String>,
    permissions: ws::Permissions,
    slot: Slot,
}

impl Realtime {
    /// Builds the realtime side; starts one heartbeat ticker per route (and JWKS
    /// refreshers for routes that use them).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        routes: Routes,
        hub: Hub,
        broker: Broker,
        metrics: Metrics,
        drain: Drain,
        limits: Arc<ConnectionLimits>,
        upstream_base: &str,
        http: reqwest::Client,
    ) -> std::result::Result<Realtime, String> {
        let routes = routes
            .0
            .into_iter()
            .map(|route| {
                let heartbeat = ticker(route.config.heartbeat.0);
                let auth =
                    Authorizer::new(&route.config.auth, upstream_base, http.clone(), &metrics)
                        .map_err(|e| format!("route {}: {e}", route.config.path))?;
                let ws = Arc::new(ws::Context {
                    topic: topic_spec(&route, ""),
                    hub: hub.clone(),
                    broker: broker.clone(),
                    metrics: metrics.clone(),
                    config: route.config.ws.clone(),
                    route: route.config.path.clone(),
                    drain: drain.clone(),
                });
                Ok(LiveRoute {
                    route,
                    heartbeat,
                    ws,
                    auth,
                })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Realtime {
            routes,
            hub,
            metrics,
            drain,
            limits,
        })
    }

    /// Serves `session` when its path is a realtime route; `Ok(false)` passes it on to
    /// the app.
    pub async fn handle(&self, session: &mut Session) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let Some((live, params)) = self
            .routes
            .iter()
            .find_map(|l| l.route.match_path(&path).map(|p| (l, p)))
        else {
            return Ok(false);
        };
        match self.serve(session, live, params).await {
            Ok(()) => {}
            Err(
                Outcome::Refused(Refusal(status, code, reason))
                | Outcome::Denied(Denied::Json(status, code, reason)),
            ) => {
                let body = serde_json::json!({ "error": code, "reason": reason }).to_string();
                respond_json(session, status, &body).await?;
            }
            Err(Outcome::Denied(Denied::Raw {
                status,
                content_type,
                body,
            })) => {
                respond_raw(session, status, content_type.as_deref(), body).await?;
            }
        }
        Ok(true)
    }

    fn reject(&self, reason: &'static str) {
        self.metrics.rejected.with_label_values(&[reason]).inc();
    }

    async fn serve(
        &self,
        session: &mut Session,
        live: &LiveRoute,
        params: std::result::Result<Params, crate::route::MatchError>,
    ) -> std::result::Result<(), Outcome> {
        let route = &live.route;
        let method = session.req_header().method.clone();
        let allowed_origin = match header(session, "origin") {
            None if route.config.allow_missing_origin => None,
            None => {
                self.reject("origin_missing");
                return Err(Refusal(
                    403,
                    "origin_required",
                    "this route needs an Origin header".into(),
                )
                .into());
            }
            Some(o) if origin_allowed(route, &o, header(session, "host").as_deref()) => Some(o),
            Some(_) => {
                self.reject("origin_not_allowed");
                return Err(Refusal(
                    403,
                    "origin_not_allowed",
                    "this Origin may not use this route".into(),
                )
                .into());
            }
        };
        if method == http::Method::OPTIONS {
            return preflight(session, allowed_origin.as_deref())
                .await
                .map_err(|e| Refusal(500, "internal", e.to_string()).into());
        }
        if method != http::Method::GET {
            return Err(Refusal(
                405,
                "method_not_allowed",
                "realtime routes answer GET".into(),
            )
            .into());
        }
        let params = params.map_err(|e| Refusal(400, "bad_path_parameter", e.to_string()))?;
        let transport = requested_transport(session);
        if !route.serves(transport) {
            return Err(Refusal(
                400,
                "transport_not_allowed",
                format!("this route does not serve {transport:?}"),
            )
            .into());
        }
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let slot = self.limits.acquire(ip).map_err(|r| {
            let (reason, text) = match r {
                Refused::Total => (
                    "too_many_connections",
                    "fanfare holds its maximum of connections",
                ),
                Refused::PerIp => (
                    "too_many_connections_per_ip",
                    "too many connections from this address",
                ),
            };
            self.reject(reason);
            Refusal(429, reason, text.into())
        })?;
        let grant = live
            .auth
            .authorize(session.req_header(), &self.metrics)
            .await
            .map_err(Outcome::Denied)?;
        let admitted = self.admit(live, params, grant, slot)?;
        match transport {
            Transport::Sse => {
                self.serve_sse(session, live, admitted, allowed_origin)
                    .await
            }
            Transport::Poll => {
                self.serve_poll(session, live, admitted, allowed_origin)
                    .await
            }
            Transport::Ws => self.serve_ws(session, live, admitted).await,
        }
        .map_err(Outcome::Refused)
    }

    /// Builds the subjects and permissions from the path and the grant.
    fn admit(
        &self,
        live: &LiveRoute,
        params: Params,
        grant: Grant,
        slot: Slot,
    ) -> std::result::Result<Admitted, Refusal> {
        let route = &live.route;
        let mut values = params;
        values.extend(grant.claims.clone());
        let subjects = route.subjects_with_origin(&values).map_err(|e| match &e {
            SubjectError::Forbidden { name, .. }
            | SubjectError::Empty(name)
            | SubjectError::TooLong(name)
            | SubjectError::Missing(name)
                if name.starts_with(CLAIM_PREFIX) =>
            {
                self.reject("invalid_claim");
                Refusal(403, "invalid_claim", e.to_string())
            }
            _ => Refusal(400, e.code(), e.to_string()),
        })?;
        let (allow_sub, allow_pub) = route.allowances(&values);
        let mut subscribe = grant.subscribe;
        subscribe.extend(allow_sub);
        let mut publish = grant.publish;
        publish.extend(allow_pub);
        let public = route.config.auth.mode == AuthMode::None;
        for (subject, from_path) in &subjects {
            if !public && *from_path && !subscribe.iter().any(|p| subject::covers(p, subject)) {
                self.reject("forbidden");
                return Err(Refusal(
                    403,
                    "forbidden",
                    format!("not allowed to subscribe to {subject}"),
                ));
            }
        }
        let expires = grant.expires.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        Ok(Admitted {
            subjects: subjects.into_iter().map(|(s, _)| s).collect(),
            permissions: ws::Permissions {
                subscribe,
                publish,
                expires,
            },
            slot,
        })
    }

    /// Subscribes a new client's queue to `subjects` and, with a `cursor`, splices in
    /// what it missed (or a reset).
    async fn join_all(
        &self,
        route: &Route,
        subjects: &[String],
        cursor: Option<&str>,
    ) -> std::result::Result<(u64, Arc<ClientQueue>, Vec<(String, Membership)>), Refusal> {
        let queue = Arc::new(ClientQueue::new(
            &route.config.queue,
            route.config.slow_consumer,
        ));
        let client = self.hub.client_id();
        let mut memberships = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let spec = topic_spec(route, subject);
            let m = self
                .hub
                .join_spec(&spec, client, queue.clone())
                .await
                .map_err(|e| Refusal(503, "nats_unavailable", e.to_string()))?;
            memberships.push((subject.clone(), m));
        }
        if let Some(cursor) = cursor {
            let specs: Vec<TopicSpec> = subjects.iter().map(|s| topic_spec(route, s)).collect();
            resume(&self.hub, &specs, cursor, &queue)
                .await
                .map_err(|e| Refusal(503, "nats_unavailable", e.to_string()))?;
        }
        Ok((client, queue, memberships))
    }

    async fn serve_ws(
        &self,
        session: &mut Session,
        live: &LiveRoute,
        admitted: Admitted,
    ) -> std::result::Result<(), Refusal> {
        let accept = ws::check_handshake(session.req_header())
            .map_err(|(s, c, r)| Refusal(s, c, r.into()))?;
        let ctx = live.ws.clone();
        let joined = if ctx.config.echo {
            None
        } else {
            let cursor = query_param(session.req_header().uri.query(), "last_event_id");
            Some(
                self.join_all(&live.route, &admitted.subjects, cursor.as_deref())
                    .await?,
            )
        };
        let Some(mut stream) = take_h1_stream(session).await else {
            return Err(Refusal(
                400,
                "bad_handshake",
                "WebSocket needs HTTP/1.1".into(),
            ));
        };
        let Admitted {
            permissions, slot, ..
        } = admitted;
        tokio::spawn(async move {
            let _slot = slot;
            if stream
                .write_all(&ws::switching_protocols(&accept))
                .await
                .is_err()
                || stream.flush().await.is_err()
            {
                return;
            }
            let socket = ws::accept(stream, &ctx.config).await;
            let Some((client, queue, memberships)) = joined else {
                ws::echo(socket).await;
                return;
            };
            // The route context carries the metrics; an Arc is 8 bytes of a held
            // connection where a copy of `Metrics` is 144.
            let gauge = ctx.metrics.connections.with_label_values(&["ws"]);
            gauge.inc();
            let mut session = ws::Session::new(
                socket,
                ctx.clone(),
                queue,
                client,
                memberships.into_iter().collect(),
                permissions,
            );
            let outcome = session.run().await;
            gauge.dec();
            ctx.metrics
                .connections_total
                .with_label_values(&["ws", outcome.label()])
                .inc();
        });
        Ok(())
    }

    async fn serve_sse(
        &self,
        session: &mut Session,
        live: &LiveRoute,
        admitted: Admitted,
        allowed_origin: Option<String>,
    ) -> std::result::Result<(), Refusal> {
        let route = &live.route;
        let cursor = header(session, "last-event-id")
            .or_else(|| query_param(session.req_header().uri.query(), "last_event_id"));
        let (client, queue, memberships) = self
            .join_all(route, &admitted.subjects, cursor.as_deref())
            .await?;
        let memberships: Vec<Membership> = memberships.into_iter().map(|(_, m)| m).collect();
        let slot = admitted.slot;
        let mut sse_session = sse::Session {
            queue,
            heartbeat: live.heartbeat.clone(),
            drain: self.drain.clone(),
            client,
            retry_ms: route.config.retry.0.as_millis(),
            metrics: self.metrics.clone(),
            expires: admitted.permissions.expires,
        };
        if let Some(mut stream) = take_h1_stream(session).await {
            let head = sse_head_h1(allowed_origin.as_deref());
            tokio::spawn(async move {
                let _slot = slot;
                let mut sink = RawSink(&mut stream);
                if sink.write(head).await.is_ok() {
                    run_counted(&mut sse_session, &mut sink, memberships).await;
                }
            });
            return Ok(());
        }
        let head = sse_head(allowed_origin.as_deref())
            .map_err(|e| Refusal(500, "internal", e.to_string()))?;
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| Refusal(500, "internal", e.to_string()))?;
        let mut sink = PingoraSink(session);
        run_counted(&mut sse_session, &mut sink, memberships).await;
        drop(slot);
        Ok(())
    }
}

impl Realtime {
    /// Long-polling: answers at once when messages are waiting after `cursor`,
    /// otherwise holds up to `poll.timeout`. The cursor alone carries the client's
    /// state, so any instance can serve the next poll (with JetStream history).
    async fn serve_poll(
        &self,
        session: &mut Session,
        live: &LiveRoute,
        admitted: Admitted,
        allowed_origin: Option<String>,
    ) -> std::result::Result<(), Refusal> {
        let route = &live.route;
        let config = &route.config.poll;
        let cursor =
            query_param(session.req_header().uri.query(), "cursor").filter(|c| !c.is_empty());
        let first = topic_spec(route, admitted.subjects.first().map_or("", String::as_str));
        // "Now", taken before anything can be queued: if this poll returns nothing, the
        // next one resumes from here and misses nothing.
        let now = self
            .hub
            .cursor_now(&first)
            .await
            .map_err(|e| Refusal(503, "nats_unavailable", e.to_string()))?;
        let (_, queue, memberships) = self
            .join_all(route, &admitted.subjects, cursor.as_deref())
            .await?;
        let gauge = self.metrics.connections.with_label_values(&["poll"]);
        gauge.inc();
        let waited = if queue.is_empty() && !queue.has_reset() {
            tokio::select! {
                _ = queue.ready() => true,
                _ = tokio::time::sleep(config.timeout.0) => false,
                _ = self.drain.started() => false,
                _ = client_gone(session) => false,
            }
        } else {
            true
        };
        gauge.dec();
        let outcome = if waited { "delivered" } else { "timeout" };
        self.metrics
            .connections_total
            .with_label_values(&["poll", outcome])
            .inc();
        let batch = queue.take();
        drop(memberships);
        drop(admitted.slot);
        let events: Vec<_> = batch.events.into_iter().take(config.max_messages).collect();
        self.metrics
            .deliveries
            .with_label_values(&["poll"])
            .inc_by(events.len() as u64);
        let cursor_out = match (events.last(), batch.reset, cursor) {
            (Some(e), _, _) => e.id.clone(),
            (None, Some(_), _) | (None, None, None) => now,
            (None, None, Some(c)) => c,
        };
        let mut body =
            Vec::with_capacity(64 + events.iter().map(|e| e.payload.len() + 96).sum::<usize>());
        body.extend_from_slice(br#"{"messages":["#);
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&crate::transport::protocol::message(e));
        }
        body.extend_from_slice(br#"],"cursor":"#);
        body.extend_from_slice(
            serde_json::to_string(&cursor_out)
                .unwrap_or_default()
                .as_bytes(),
        );
        if let Some(reason) = batch.reset {
            body.extend_from_slice(format!(r#","reset":"{reason}""#).as_bytes());
        }
        body.push(b'}');
        let internal = |e: Box<pingora::Error>| Refusal(500, "internal", e.to_string());
        let mut h = ResponseHeader::build(200, Some(5)).map_err(internal)?;
        h.insert_header("content-type", "application/json")
            .map_err(internal)?;
        h.insert_header("cache-control", "no-store")
            .map_err(internal)?;
        h.insert_header("content-length", body.len().to_string())
            .map_err(internal)?;
        cors_headers(&mut h, allowed_origin.as_deref()).map_err(internal)?;
        session
            .write_response_header(Box::new(h), false)
            .await
            .map_err(internal)?;
        session
            .write_response_body(Some(bytes::Bytes::from(body)), true)
            .await
            .map_err(internal)?;
        Ok(())
    }
}

/// Resolves when the client of a held poll has gone away.
async fn client_gone(session: &mut Session) {
    loop {
        match session.downstream_session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
}

/// The hub topic of `subject` on `route` (with the route's history settings).
pub fn topic_spec(route: &Route, subject: &str) -> TopicSpec {
    let h = &route.config.history;
    TopicSpec {
        subject: subject.to_string(),
        stream: h.jetstream.clone(),
        ring: h.ring,
        max_age: h.max_age.0,
        linger: h.linger.0,
        max_replay: h.max_replay,
    }
}

/// Replays what a client missed on the topics of `specs` since `cursor` into `queue`.
pub async fn resume(
    hub: &Hub,
    specs: &[TopicSpec],
    cursor: &str,
    queue: &ClientQueue,
) -> std::result::Result<(), crate::broker::BrokerError> {
    let mut events = Vec::new();
    let mut reset = None;
    for spec in specs {
        let parsed = hub.parse_cursor(spec, cursor);
        match hub.replay(spec, parsed).await? {
            Replayed::Events(e) => events.extend(e),
            Replayed::Reset(r) => reset = Some(r),
        }
    }
    events.sort_by_key(|e| e.seq);
    if reset.is_some() {
        // The client refetches its state; replaying part of the gap would mislead it.
        events.clear();
    }
    queue.splice(events, reset);
    Ok(())
}

/// Why a handshake did not go through.
enum Outcome {
    Refused(Refusal),
    Denied(Denied),
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Outcome {
        Outcome::Refused(r)
    }
}

/// Passes the app's own refusal through unchanged (upstream auth).
async fn respond_raw(
    session: &mut Session,
    status: u16,
    content_type: Option<&str>,
    body: bytes::Bytes,
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(3))?;
    if let Some(ct) = content_type {
        h.insert_header("content-type", ct)?;
    }
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Runs an SSE session with the connection gauge and outcome counter around it.
async fn run_counted<S: Sink>(
    session: &mut sse::Session,
    sink: &mut S,
    memberships: Vec<Membership>,
) {
    let gauge = session.metrics.connections.with_label_values(&["sse"]);
    gauge.inc();
    let outcome = session.run(sink).await;
    drop(memberships);
    gauge.dec();
    session
        .metrics
        .connections_total
        .with_label_values(&["sse", outcome.label()])
        .inc();
}

/// An SSE stream that stays inside pingora's session (HTTP/2).
struct PingoraSink<'a>(&'a mut Session);

impl Sink for PingoraSink<'_> {
    async fn write(&mut self, buf: bytes::Bytes) -> std::io::Result<()> {
        self.0
            .write_response_body(Some(buf), false)
            .await
            .map_err(std::io::Error::other)
    }

    async fn gone(&mut self) {
        loop {
            match self.0.downstream_session.read_body_or_idle(true).await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    }
}

fn header(session: &Session, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The transport a request asks for.
fn requested_transport(session: &Session) -> Transport {
    let upgrade = header(session, "upgrade").unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        return Transport::Ws;
    }
    if query_param(session.req_header().uri.query(), "transport").as_deref() == Some("poll") {
        return Transport::Poll;
    }
    Transport::Sse
}

/// Same-origin requests are always allowed; cross-origin ones only when listed.
fn origin_allowed(route: &Route, origin: &str, host: Option<&str>) -> bool {
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
        return true;
    }
    route
        .config
        .allowed_origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

fn cors_headers(h: &mut ResponseHeader, origin: Option<&str>) -> Result<()> {
    if let Some(o) = origin {
        h.insert_header("access-control-allow-origin", o)?;
        h.insert_header("access-control-allow-credentials", "true")?;
        h.insert_header("vary", "Origin")?;
    }
    Ok(())
}

async fn preflight(session: &mut Session, origin: Option<&str>) -> Result<()> {
    let mut h = ResponseHeader::build(204, Some(6))?;
    cors_headers(&mut h, origin)?;
    h.insert_header("access-control-allow-methods", "GET, OPTIONS")?;
    h.insert_header(
        "access-control-allow-headers",
        "Last-Event-ID, Authorization, Cache-Control, Content-Type",
    )?;
    h.insert_header("access-control-max-age", PREFLIGHT_MAX_AGE)?;
    h.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(h), true).await
}

fn sse_head(origin: Option<&str>) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(6))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("x-accel-buffering", "no")?;
    cors_headers(&mut h, origin)?;
    Ok(h)
}

/// The raw HTTP/1.1 response head: close-delimited body, so no chunk framing per write.
fn sse_head_h1(origin: Option<&str>) -> bytes::Bytes {
    let mut s = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n",
    );
    if let Some(o) = origin {
        s.push_str(&format!(
            "access-control-allow-origin: {o}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n"
        ));
    }
    s.push_str("\r\n");
    bytes::Bytes::from(s)
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
