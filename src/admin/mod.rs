//! The admin listener: `/livez`, `/readyz`, `/metrics` and `POST /publish/{subject}`
//! ([`publish`]).
//! It keeps serving while the edge drains, so probes see the 503 and scrapes go on.

pub mod publish;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::edge::respond::{Refusal, json_response};
use crate::metrics::Metrics;

/// What `/readyz` reports: ready only when every condition holds.
pub struct Readiness {
    /// The edge listener is bound and accepting.
    pub edge_listening: AtomicBool,
    /// Shutdown has begun.
    pub draining: AtomicBool,
    /// The broker's connection state.
    pub broker: watch::Receiver<bool>,
    /// The JetStream streams routes name ([`StreamCheck`] as a u8).
    streams: std::sync::atomic::AtomicU8,
}

/// Where the check of the routes' JetStream streams stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamCheck {
    /// Every stream was found (or no route names one).
    Found = 0,
    /// NATS has not been reached yet to check them.
    Unchecked = 1,
    /// A stream was not found (checked again every 5 s).
    Missing = 2,
}

impl Readiness {
    /// Not ready until the edge listens; streams count as found until a check starts.
    pub fn new(broker: watch::Receiver<bool>) -> Readiness {
        Readiness {
            edge_listening: false.into(),
            draining: false.into(),
            broker,
            streams: std::sync::atomic::AtomicU8::new(StreamCheck::Found as u8),
        }
    }

    /// Records where the stream check stands.
    pub fn set_streams(&self, check: StreamCheck) {
        self.streams.store(check as u8, Ordering::Release);
    }

    /// Why the instance is not ready; empty when it is.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            r.push("draining");
        }
        if !self.edge_listening.load(Ordering::Acquire) {
            r.push("edge_not_listening");
        }
        if !*self.broker.borrow() {
            r.push("nats_disconnected");
        }
        match self.streams.load(Ordering::Acquire) {
            x if x == StreamCheck::Unchecked as u8 => r.push("streams_unchecked"),
            x if x == StreamCheck::Missing as u8 => r.push("stream_missing"),
            _ => {}
        }
        r
    }
}

/// The admin HTTP app.
pub struct Admin {
    pub(crate) metrics: Metrics,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) broker: Broker,
    pub(crate) publish: publish::Access,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/livez") => json_response(StatusCode::OK, r#"{"live":true}"#),
            ("GET", "/readyz") => {
                let reasons = self.readiness.reasons();
                if reasons.is_empty() {
                    json_response(StatusCode::OK, r#"{"ready":true}"#)
                } else {
                    let body = serde_json::json!({ "ready": false, "reasons": reasons });
                    json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                }
            }
            ("GET", "/metrics") => {
                let body = self.metrics.render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("static response parts are valid")
            }
            (_, p) if p.starts_with("/publish/") => {
                publish::handle(&self.publish, &self.broker, &self.metrics, session, &method).await
            }
            _ => Refusal::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
                .to_response(),
        }
    }
}
