//! What the edge decides about a new connection besides its authorization: its place
//! in the connection limits, and (on a route with app callbacks) the app's own say.

use std::sync::Arc;

use http::StatusCode;
use pingora::prelude::Session;

use super::client::Client;
use super::respond::Refusal;
use crate::app::{Admission, Connecting};
use crate::auth::Admitted;
use crate::config::Transport;
use crate::limits::{ConnectionLimits, Refused, Slot};
use crate::metrics::Metrics;
use crate::transport::{Conn, RouteContext};

/// A place in the connection limits, or `429` (counted).
pub fn acquire(
    limits: &Arc<ConnectionLimits>,
    client: &Client,
    metrics: &Metrics,
) -> Result<Slot, Refusal> {
    limits.acquire(client.ip).map_err(|r| {
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
        metrics.rejected.with_label_values(&[reason]).inc();
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, reason, text)
    })
}

/// On a route with app callbacks (or a raw `publish_to`): the connection's shared
/// state, and the app's connect answer (which may refuse it).
pub async fn open(
    session: &Session,
    ctx: &RouteContext,
    client: u64,
    transport: Transport,
    admitted: &Admitted,
    params: Option<crate::routing::path::Params>,
    ip: Option<std::net::IpAddr>,
) -> Result<(Option<Arc<Conn>>, Option<Admission>), Refusal> {
    if ctx.app.is_none() && admitted.publish_to.is_none() {
        return Ok((None, None));
    }
    let req = session.req_header();
    let conn = Arc::new(Conn {
        id: ctx.directory.id(client),
        params: params.unwrap_or_default(),
        headers: ctx
            .app
            .as_ref()
            .map_or_else(|| Arc::from([]), |a| a.capture(&req.headers)),
        started: std::time::Instant::now(),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        publish_to: admitted.publish_to.clone(),
    });
    let opening = match &ctx.app {
        Some(app) => {
            let connecting = Connecting {
                id: &conn.id,
                params: &conn.params,
                transport: transport.name(),
                subjects: &admitted.subjects,
                remote_addr: ip,
                user_agent: req
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok()),
                auth: None,
            };
            app.connect(&connecting, &conn.headers).await?
        }
        None => None,
    };
    Ok((Some(conn), opening))
}
