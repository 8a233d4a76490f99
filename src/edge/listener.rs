//! The accept loop shared by the edge and the admin listener, and the request-head
//! deadline of the edge.
//!
//! A connection must send a whole request head within `limits.request_head_timeout`
//! (and, between keep-alive requests, its next head within the same time); past it the
//! connection is dropped. The clock runs while the head is awaited and stops from the
//! moment the proxy sees the parsed head ([`head_seen`]) until the response is done and
//! the connection waits again ([`head_awaited`]). While a connection has not finished
//! its first head it counts against `limits.max_pending_per_ip`; past that cap new
//! connections from the address are closed at once. An HTTP/2 (h2c) connection is past
//! its "head" once its preface arrived: from then on pingora's `h2_idle_timeout` bounds
//! it.

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, Peek, SocketDigest};
use std::os::fd::AsRawFd;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::buffered::Buffered;
use crate::limits::{ConnectionLimits, Pending};

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

tokio::task_local! {
    static HEAD: Arc<HeadWatch>;
}

/// How the edge bounds request heads.
#[derive(Clone)]
pub struct HeadPolicy {
    /// `limits.request_head_timeout`.
    pub timeout: Duration,
    /// The limits holding the pending-per-IP counts.
    pub limits: Arc<ConnectionLimits>,
    /// Whether h2c is on (a connection may open with the HTTP/2 preface).
    pub h2c: bool,
    /// Trusted proxies: every connection of a load balancer comes from its address,
    /// so they are not held to the per-IP pending cap (the deadline still applies).
    pub trusted: Vec<crate::config::Cidr>,
    /// The pass-through fast path (`proxy.fast_path`), tried before pingora on each
    /// HTTP/1 connection.
    pub pass: Option<Arc<super::pass::Pass>>,
}

/// One connection's head state: `true` while a request is being served.
struct HeadWatch {
    seen: watch::Sender<bool>,
    pending: std::sync::Mutex<Option<Pending>>,
}

impl HeadWatch {
    fn mark(&self, seen: bool) {
        self.seen.send_replace(seen);
        if seen
            && let Some(mut p) = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            p.done();
        }
    }

    /// Resolves when a head has been awaited for longer than `timeout`.
    /// `first`: when the connection's first head is due (its clock started at
    /// accept, before the h2c peek and the fast path).
    async fn expired(&self, timeout: Duration, first: tokio::time::Instant) {
        let mut rx = self.seen.subscribe();
        let mut first = Some(first);
        loop {
            if *rx.borrow_and_update() {
                first = None;
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            let due = first
                .take()
                .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
            tokio::select! {
                () = tokio::time::sleep_until(due) => return,
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }
}

/// The proxy has parsed a request head on this connection: its deadline stops.
pub fn head_seen() {
    let _ = HEAD.try_with(|h| h.mark(true));
}

/// The request is done and the connection waits for its next head: the deadline runs.
pub fn head_awaited() {
    let _ = HEAD.try_with(|h| h.mark(false));
}

/// Accepts on `listener` until `stop` turns true, handing each connection to `app`.
/// `sessions` is the watch pingora's sessions follow: once true they stop keep-alive.
/// With `head`, request heads are bounded as the module says.
pub async fn serve<A>(
    listener: TcpListener,
    app: Arc<A>,
    mut stop: watch::Receiver<bool>,
    sessions: watch::Receiver<bool>,
    head: Option<HeadPolicy>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            r = stop.wait_for(|s| *s) => {
                let _ = r;
                break;
            }
        };
        match accepted {
            Ok((tcp, peer)) => {
                let pending = match &head {
                    Some(h) if h.trusted.iter().any(|c| c.contains(peer.ip())) => None,
                    Some(h) => match h.limits.pending(peer.ip()) {
                        Some(p) => Some(p),
                        None => {
                            tracing::debug!(peer = %peer.ip(), "too many connections without a request head");
                            continue;
                        }
                    },
                    None => None,
                };
                let _ = tcp.set_nodelay(true);
                let mut stream: Stream = tcp.into();
                let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                let _ = digest.peer_addr.set(Some(peer.into()));
                stream.set_socket_digest(digest);
                let app = app.clone();
                let shutdown = sessions.clone();
                let Some(policy) = head.clone() else {
                    tokio::spawn(async move {
                        let mut next = app
                            .process_new(Box::new(Buffered::new(stream)), &shutdown)
                            .await;
                        while let Some(reused) = next {
                            next = app.process_new(reused, &shutdown).await;
                        }
                    });
                    continue;
                };
                let watch = Arc::new(HeadWatch {
                    seen: watch::channel(false).0,
                    pending: std::sync::Mutex::new(pending),
                });
                tokio::spawn(async move {
                    // The first head's deadline covers the h2c peek and the fast path.
                    let deadline = tokio::time::Instant::now() + policy.timeout;
                    let mut h2 = false;
                    if policy.h2c {
                        let mut buf = [0u8; H2_PREFACE.len()];
                        match tokio::time::timeout_at(deadline, stream.try_peek(&mut buf)).await {
                            Err(_) => {
                                tracing::debug!(peer = %peer.ip(), "request head too slow: connection closed");
                                return;
                            }
                            Ok(Ok(true)) if buf == H2_PREFACE => {
                                // HTTP/2: past its head; h2_idle_timeout bounds it now.
                                watch.mark(true);
                                h2 = true;
                            }
                            Ok(_) => {}
                        }
                    }
                    // The fast path bounds its heads itself; pingora's are bounded by
                    // the watch below.
                    if !h2 && let Some(pass) = &policy.pass {
                        let seen = |s: bool| watch.mark(s);
                        let next = pass
                            .serve(
                                &mut stream,
                                peer.ip(),
                                &shutdown,
                                (deadline, policy.timeout),
                                &seen,
                            )
                            .await;
                        if next == super::pass::Next::Closed {
                            return;
                        }
                    }
                    let serve = async {
                        let mut next = app
                            .process_new(Box::new(Buffered::new(stream)), &shutdown)
                            .await;
                        while let Some(reused) = next {
                            next = app.process_new(reused, &shutdown).await;
                        }
                    };
                    // pingora's filters find the watch through the task-local.
                    HEAD.scope(watch.clone(), async {
                        tokio::select! {
                            () = serve => {}
                            () = watch.expired(policy.timeout, deadline) => {
                                tracing::debug!(peer = %peer.ip(), "request head too slow: connection closed");
                            }
                        }
                    })
                    .await;
                });
            }
            Err(e) => {
                // EMFILE/ENFILE return at once and would spin: back off briefly so
                // existing connections can finish and free descriptors.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    app.cleanup().await;
}
