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

/// Where the app is: its configured host and port, and the address itself when the
/// host is an IP literal (then no lookup per connection).
pub(super) struct App {
    upstream: Upstream,
    literal: Option<SocketAddr>,
}

impl App {
    pub(super) fn new(upstream: Upstream) -> App {
        let literal = upstream
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, upstream.port));
        App { upstream, literal }
    }

    /// The app's address: the literal one, else a lookup.
    pub(super) async fn resolve(&self) -> Result<SocketAddr> {
        if let Some(a) = self.literal {
            return Ok(a);
        }
        let up = &self.upstream;
        let mut addrs = tokio::net::lookup_host((up.host.as_str(), up.port))
            .await
            .map_err(|e| {
                Error::because(ErrorType::ConnectNoRoute, "resolving the upstream host", e)
                    .into_up()
            })?;
        addrs.next().ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "upstream host has no address").into_up()
        })
    }
}
