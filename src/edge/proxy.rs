//! The pingora `ProxyHttp` implementation: pass-through to the app.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::StatusCode;
use pingora::http::RequestHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::assets::Assets;
use super::realtime::Realtime;
use super::respond::Refusal;
use super::upstream::{App, InFlight, InFlightGuard};
use crate::config::{ProxyConfig, Upstream};
use crate::metrics::Metrics;

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    proxied: Option<InFlightGuard>,
}

/// The edge's proxy logic.
pub struct Edge {
    app: App,
    proxy: ProxyConfig,
    metrics: Metrics,
    inflight: Arc<InFlight>,
    /// The realtime routes of the configuration in effect (a reload swaps them).
    realtime: Arc<ArcSwap<Realtime>>,
    /// The client files (and the demo page) under `/_fanfare/`; `None` with
    /// `client: false`.
    assets: Option<Assets>,
}

impl Edge {
    /// Builds the edge.
    pub fn new(
        upstream: Upstream,
        proxy: ProxyConfig,
        metrics: Metrics,
        inflight: Arc<InFlight>,
        realtime: Arc<ArcSwap<Realtime>>,
        assets: Option<Assets>,
    ) -> Edge {
        Edge {
            app: App::new(upstream),
            proxy,
            metrics,
            inflight,
            realtime,
            assets,
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            proxied: None,
        }
    }

    async fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        super::listener::head_seen();
        Ok(())
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        super::listener::head_awaited();
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let realtime = self.realtime.load_full();
        if realtime.handle(session).await? {
            return Ok(true);
        }
        if let Some(assets) = &self.assets
            && assets.handle(session).await?
        {
            return Ok(true);
        }
        ctx.proxied = Some(self.inflight.enter());
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let addr = self.app.resolve().await?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.proxy.connect_timeout.0);
        peer.options.read_timeout = Some(self.proxy.read_timeout.0);
        peer.options.write_timeout = Some(self.proxy.write_timeout.0);
        peer.options.idle_timeout = Some(self.proxy.idle_timeout.0);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            let xff = match req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
                _ => ip,
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        req.insert_header("x-forwarded-proto", "http")?;
        let host = session
            .req_header()
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                session
                    .req_header()
                    .uri
                    .authority()
                    .map(std::string::ToString::to_string)
            });
        if let Some(host) = host {
            req.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let refusal = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => Some(Refusal::new(
                StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST),
                "bad_request",
                "the request could not be passed to the app",
            )),
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
                Some(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the app did not answer in time",
                ))
            }
            (ErrorSource::Upstream, _) => Some(Refusal::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the app is not reachable",
            )),
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request is malformed",
            )),
            _ => Some(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "fanfare failed to pass the request on",
            )),
        };
        if let Some(r) = &refusal
            && let Err(err) = r.write(session).await
        {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: refusal.map_or(0, |r| r.status().as_u16()),
            can_reuse_downstream: false,
        }
    }

    /// pingora logs this with every error; the default includes the query string,
    /// which may carry an `access_token`, so only the method and path are given.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.proxied.take().is_none() {
            return;
        }
        let class = match session.response_written() {
            Some(r) => Metrics::class(r.status),
            None => "error",
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[class])
            .inc();
        self.metrics
            .upstream_duration
            .observe(ctx.start.elapsed().as_secs_f64());
        if let Some(e) = e
            && class == "5xx"
        {
            tracing::warn!(error = %e, path = %session.req_header().uri.path(), "pass-through failed");
        }
    }
}
