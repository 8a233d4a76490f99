//! What both pass-through paths (pingora's and [`super::pass`]) share about the app:
//! its address, and the count of requests in flight that a shutdown waits for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::{Error, ErrorType, Result};

use crate::config::Upstream;

/// Counts proxied requests in flight so shutdown can wait for them.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    pub(super) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

pub(super) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The app's address when its host is an IP literal (no lookup per connection then).
pub(super) fn literal(upstream: &Upstream) -> Option<SocketAddr> {
    upstream
        .host
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, upstream.port))
}

/// The app's address: `addr` ([`literal`]) when there is one, else a lookup.
pub(super) async fn resolve(upstream: &Upstream, addr: Option<SocketAddr>) -> Result<SocketAddr> {
    if let Some(a) = addr {
        return Ok(a);
    }
    let mut addrs = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
        .await
        .map_err(|e| {
            Error::because(ErrorType::ConnectNoRoute, "resolving the upstream host", e).into_up()
        })?;
    addrs.next().ok_or_else(|| {
        Error::explain(ErrorType::ConnectNoRoute, "upstream host has no address").into_up()
    })
}
