//! The pass-through fast path: plain HTTP/1.1 requests to the app without pingora.
//!
//! pingora's proxy costs about four times what nginx's does per request here (its
//! per-request allocations, filters, header maps and timers; see docs/performance.md).
//! Most requests a sidecar passes on are plain: a method, a path, a few headers, a
//! small body or none. For those the connection's task reads the head itself
//! ([`head::request`]), sends the request on a pooled connection to the app in one
//! write, and forwards the response's head and body as they come, framed as the app
//! framed them ([`head::response`], [`chunked`]). Everything else (h2c, realtime
//! routes, the client files, uploads above [`head::MAX_BODY`], chunked or `Expect`
//! requests, upgrades, HTTP/1.0, odd targets or heads) is handed to pingora with the
//! bytes already read, on the same connection, and pingora serves that request and
//! every later one on it. `proxy.fast_path: false` sends everything through pingora.
//!
//! What a client and the app see is what they saw through pingora: the same
//! forwarded headers, hop-by-hop headers stripped, the same JSON refusals when the app
//! cannot be reached (502) or is too slow (504), the same metrics, in-flight requests
//! counted for a graceful shutdown, keep-alive ended while draining.

mod chunked;
mod failure;
pub mod head;
mod pool;
mod spare;
mod wait;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::StatusCode;
use pingora::protocols::l4::stream::Stream as L4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::realtime::Realtime;
use super::upstream::{App, InFlight};
use crate::config::{ProxyConfig, Upstream};
use crate::metrics::Metrics;
use chunked::Chunked;
use failure::{Failure, UpError, UpKind, unavailable};
use head::{Framing, Parsed, Request};
use pool::Pool;
use spare::Buf;
use wait::{Waited, within};

/// Bytes read from the app per read of a response body.
const READ_CHUNK: usize = 16 * 1024;

/// The fast path of one edge.
pub struct Pass {
    app: App,
    proxy: ProxyConfig,
    metrics: Metrics,
    inflight: Arc<InFlight>,
    realtime: Arc<ArcSwap<Realtime>>,
    /// The client files are served under `/_fanfare/`.
    assets: bool,
    pool: Pool,
    /// `fanfare_upstream_requests_total` by class, looked up once.
    counted: [(&'static str, prometheus::IntCounter); 6],
}

/// How a connection leaves the fast path.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// It is closed (or to be closed): the client left, asked to, or failed.
    Closed,
    /// pingora takes it over; what was read of it is back in the stream.
    Pingora,
}

impl Pass {
    /// The fast path in front of `upstream`.
    pub fn new(
        upstream: Upstream,
        proxy: ProxyConfig,
        metrics: Metrics,
        inflight: Arc<InFlight>,
        realtime: Arc<ArcSwap<Realtime>>,
        assets: bool,
    ) -> Pass {
        let pool = Pool::new(proxy.keepalive_pool, proxy.idle_timeout.0);
        let counted = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"]
            .map(|c| (c, metrics.upstream_requests.with_label_values(&[c])));
        Pass {
            counted,
            app: App::new(upstream),
            proxy,
            metrics,
            inflight,
            realtime,
            assets,
            pool,
        }
    }

    fn claimed(&self, path: &str) -> bool {
        (self.assets && path.starts_with(super::assets::PREFIX))
            || self.realtime.load().claims(path)
    }

    /// Serves requests on `conn` until it closes or one is pingora's. The first head
    /// must arrive by `deadline.0`, each later one within `deadline.1` of the previous
    /// response; `seen(true)` is called when the first has (its pending-per-IP count
    /// ends), `seen(false)` when pingora must bound the next head.
    pub async fn serve(
        &self,
        conn: &mut L4,
        peer: IpAddr,
        shutdown: &watch::Receiver<bool>,
        deadline: (tokio::time::Instant, Duration),
        seen: &(dyn Fn(bool) + Send + Sync),
    ) -> Next {
        let (mut deadline, head_timeout) = deadline;
        let mut buf = Buf::default();
        let mut first = true;
        // How much of `buf` was parsed as an unfinished head: a head can only finish
        // with a line, so a read without a newline is not parsed again (a head sent
        // byte by byte is not re-parsed thousands of times).
        let mut parsed = 0;
        // Formatted once per connection, not per request.
        let peer = peer.to_string();
        loop {
            let req = loop {
                if buf.len() > parsed && buf[parsed..].contains(&b'\n') {
                    match head::request(&buf, &peer, |p| self.claimed(p)) {
                        Parsed::Ready(r) => break r,
                        Parsed::Pingora => return to_pingora(conn, &buf, first, seen),
                        Parsed::Partial => parsed = buf.len(),
                    }
                } else if buf.len() >= head::MAX_HEAD {
                    // No line end in sight: pingora's limits answer it.
                    return to_pingora(conn, &buf, first, seen);
                }
                if buf.capacity() == 0 {
                    buf = Buf::with(0);
                }
                buf.reserve(2048);
                // An idle connection is not woken when a drain starts: it is closed
                // after its next response, or by the head deadline, or at exit.
                let read = tokio::select! {
                    biased;
                    r = conn.read_buf(&mut *buf) => r,
                    () = tokio::time::sleep_until(deadline) => return Next::Closed,
                };
                if !matches!(read, Ok(n) if n > 0) {
                    return Next::Closed;
                }
            };
            if first {
                seen(true);
                first = false;
            }
            let whole = req.head_len + req.body_len;
            while buf.len() < whole {
                let missing = whole - buf.len();
                buf.reserve(missing);
                let read = within(self.proxy.read_timeout.0, conn.read_buf(&mut *buf));
                if !matches!(read.await, Some(Ok(n)) if n > 0) {
                    return Next::Closed;
                }
            }
            let mut req = req;
            req.upstream.extend_from_slice(&buf[req.head_len..whole]);
            buf.drain(..whole);
            parsed = 0;
            if buf.is_empty() {
                // An idle keep-alive connection holds no buffer.
                buf = Buf::default();
            }
            let (keep, end) = self.exchange(conn, &req, shutdown).await;
            if !keep {
                return Next::Closed;
            }
            deadline = tokio::time::Instant::from_std(end) + head_timeout;
        }
    }

    /// Passes one request on and its response back; whether the connection stays,
    /// and when the response ended.
    async fn exchange(
        &self,
        conn: &mut L4,
        req: &Request,
        shutdown: &watch::Receiver<bool>,
    ) -> (bool, Instant) {
        let _inflight = self.inflight.enter();
        let start = Instant::now();
        let mut idle = None;
        let (class, keep) = match self.forward(conn, req, shutdown, start).await {
            Ok((status, keep, up)) => {
                idle = up;
                (status_class(status), keep)
            }
            Err(Failure::Broken(status)) => (status_class(status), false),
            Err(Failure::Refuse(refusal, why)) => {
                let class = status_class(refusal.status().as_u16());
                // As pingora's summary: the path without the query (it may carry a token).
                let line = req
                    .upstream
                    .split(|&b| b == b'\r')
                    .next()
                    .unwrap_or_default();
                let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
                let path = target.split(|&b| b == b'?').next().unwrap_or_default();
                tracing::warn!(error = %why, path = %String::from_utf8_lossy(path), "pass-through failed");
                let bytes = refusal.to_h1();
                let _ =
                    tokio::time::timeout(self.proxy.write_timeout.0, conn.write_all(&bytes)).await;
                (class, false)
            }
        };
        if let Some((_, counter)) = self.counted.iter().find(|(c, _)| *c == class) {
            counter.inc();
        }
        let end = Instant::now();
        if let Some(up) = idle {
            self.pool.put(up, end);
        }
        self.metrics
            .upstream_duration
            .observe(end.duration_since(start).as_secs_f64());
        (keep, end)
    }

    /// A connection to the app: pooled if one is idle, else a new one.
    async fn connection(&self, now: Instant) -> Result<(TcpStream, bool), Failure> {
        if let Some(c) = self.pool.take(now) {
            return Ok((c, true));
        }
        self.dial().await.map(|c| (c, false))
    }

    async fn dial(&self) -> Result<TcpStream, Failure> {
        let addr = self
            .app
            .resolve()
            .await
            .map_err(|e| Failure::Refuse(unavailable(), e.to_string()))?;
        match tokio::time::timeout(self.proxy.connect_timeout.0, TcpStream::connect(addr)).await {
            Ok(Ok(c)) => {
                let _ = c.set_nodelay(true);
                Ok(c)
            }
            Ok(Err(e)) => Err(Failure::Refuse(unavailable(), format!("connecting: {e}"))),
            Err(_) => Err(Failure::Refuse(
                unavailable(),
                "connecting timed out".into(),
            )),
        }
    }

    /// Sends the request and reads until a whole response head is in `rbuf`.
    async fn ask(
        &self,
        conn: &mut L4,
        up: &mut TcpStream,
        req: &Request,
        rbuf: &mut Vec<u8>,
    ) -> Result<(), UpError> {
        match within(self.proxy.write_timeout.0, up.write_all(&req.upstream)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(UpError::io("sending the request", &e)),
            None => return Err(UpError::timed_out("sending the request")),
        }
        self.read_more(up, rbuf, Some(conn)).await
    }

    /// Reads at least one more byte from the app into `rbuf`, watching `client` for a
    /// hang-up if the app takes long (while no byte of the answer has gone out yet).
    async fn read_more(
        &self,
        up: &mut TcpStream,
        rbuf: &mut Vec<u8>,
        client: Option<&mut L4>,
    ) -> Result<(), UpError> {
        rbuf.reserve(READ_CHUNK.saturating_sub(rbuf.capacity() - rbuf.len()));
        let (limit, read) = (self.proxy.read_timeout.0, up.read_buf(rbuf));
        let waited = match client {
            Some(conn) => wait::answer(conn, limit, read).await,
            None => within(limit, read)
                .await
                .map_or(Waited::TimedOut, Waited::Done),
        };
        match waited {
            Waited::Done(Ok(0)) => Err(UpError {
                kind: UpKind::Closed,
                why: "the app closed the connection".into(),
            }),
            Waited::Done(Ok(_)) => Ok(()),
            Waited::Done(Err(e)) => Err(UpError::io("reading the response", &e)),
            Waited::TimedOut => Err(UpError::timed_out("reading the response")),
            Waited::HungUp => Err(UpError {
                kind: UpKind::ClientGone,
                why: "the client hung up".into(),
            }),
        }
    }

    /// Writes `bytes` to the client.
    async fn to_client(&self, conn: &mut L4, bytes: &[u8], status: u16) -> Result<(), Failure> {
        match within(self.proxy.write_timeout.0, conn.write_all(bytes)).await {
            Some(Ok(())) => Ok(()),
            _ => Err(Failure::Broken(status)),
        }
    }

    /// Sends `req` to the app and its response to the client: the status, whether
    /// the client's connection can carry another request, and the app's connection
    /// when it can carry another.
    async fn forward(
        &self,
        conn: &mut L4,
        req: &Request,
        shutdown: &watch::Receiver<bool>,
        now: Instant,
    ) -> Result<(u16, bool, Option<TcpStream>), Failure> {
        let (mut up, mut reused) = self.connection(now).await?;
        let mut rbuf = Buf::with(READ_CHUNK);
        let mut out = Buf::with(1024);
        let mut asked = false;
        let (resp, close) = loop {
            if asked && !rbuf.is_empty() {
                // Keep-alive ends when the client asked, or a drain has started by the
                // time the app answers.
                let close = req.close || *shutdown.borrow();
                match head::response(&rbuf, req.head_method, close, &mut out) {
                    Err(bad) => return Err(Failure::Refuse(unavailable(), bad.0.into())),
                    Ok(Some(r)) if (100..200).contains(&r.status) => {
                        // 100 Continue, 103 Early Hints: passed on; the final head follows.
                        self.to_client(conn, &out, r.status).await?;
                        rbuf.drain(..r.head_len);
                        reused = false;
                        continue;
                    }
                    Ok(Some(r)) => break (r, close),
                    Ok(None) => {}
                }
            }
            let got = if asked {
                self.read_more(&mut up, &mut rbuf, Some(&mut *conn)).await
            } else {
                self.ask(conn, &mut up, req, &mut rbuf).await
            };
            if let Err(e) = got {
                // A pooled connection the app closed just before it was used: the
                // whole request is still here, so a fresh connection tries once more.
                let app_closed = matches!(e.kind, UpKind::Closed | UpKind::Io);
                if reused && app_closed && rbuf.is_empty() {
                    up = self.dial().await?;
                    reused = false;
                    asked = false;
                    continue;
                }
                return Err(e.failure());
            }
            asked = true;
        };
        let status = resp.status;
        let broken = || Failure::Broken(status);
        let rest = &rbuf[resp.head_len..];
        let mut reusable = resp.reusable;
        match resp.framing {
            Framing::Empty => {
                reusable &= rest.is_empty();
                self.to_client(conn, &out, status).await?;
            }
            Framing::Length(n) => {
                let have = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                out.extend_from_slice(&rest[..have]);
                reusable &= rest.len() == have;
                self.to_client(conn, &out, status).await?;
                let mut left = n - have as u64;
                while left > 0 {
                    rbuf.clear();
                    self.read_more(&mut up, &mut rbuf, None)
                        .await
                        .map_err(|_| broken())?;
                    let take = rbuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    reusable &= rbuf.len() == take;
                    self.to_client(conn, &rbuf[..take], status).await?;
                    left -= take as u64;
                }
            }
            Framing::Chunked => {
                let mut chunks = Chunked::default();
                let taken = chunks.feed(rest).map_err(|_| broken())?;
                reusable &= rest.len() == taken;
                out.extend_from_slice(&rest[..taken]);
                self.to_client(conn, &out, status).await?;
                while !chunks.done() {
                    rbuf.clear();
                    self.read_more(&mut up, &mut rbuf, None)
                        .await
                        .map_err(|_| broken())?;
                    let taken = chunks.feed(&rbuf).map_err(|_| broken())?;
                    reusable &= rbuf.len() == taken;
                    self.to_client(conn, &rbuf[..taken], status).await?;
                }
            }
            Framing::UntilClose => {
                out.extend_from_slice(rest);
                self.to_client(conn, &out, status).await?;
                loop {
                    rbuf.clear();
                    match self.read_more(&mut up, &mut rbuf, None).await {
                        Ok(()) => self.to_client(conn, &rbuf, status).await?,
                        Err(e) if e.kind == UpKind::Closed => break,
                        Err(_) => return Err(broken()),
                    }
                }
                return Ok((status, false, None));
            }
        }
        Ok((status, !close, reusable.then_some(up)))
    }
}

/// Hands `conn` to pingora with what was read of it; pingora bounds the next head
/// unless the first one is still awaited (its deadline then runs already).
fn to_pingora(
    conn: &mut L4,
    read: &[u8],
    first: bool,
    seen: &(dyn Fn(bool) + Send + Sync),
) -> Next {
    if !first {
        seen(false);
    }
    conn.rewind(read);
    Next::Pingora
}

fn status_class(status: u16) -> &'static str {
    StatusCode::from_u16(status).map_or("error", Metrics::class)
}
