//! Idle keep-alive connections to the app, newest first.
//!
//! A connection the app closed while it sat here is found when it is taken: the
//! reactor has marked it readable, and a read that returns at once (end of stream,
//! or bytes nobody asked for) means it cannot carry a request. The check costs no
//! system call when the connection is quiet. Connections idle longer than
//! `proxy.idle_timeout` are dropped when the pool is next touched; past
//! `proxy.keepalive_pool` the oldest goes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The pool.
pub struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl Pool {
    /// An empty pool of at most `max` connections kept for `timeout`.
    pub fn new(max: usize, timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max,
            timeout,
        }
    }

    /// The most recently used live connection, if any (`now`: the time).
    pub fn take(&self, now: Instant) -> Option<TcpStream> {
        loop {
            let (conn, since) = self.lock().pop()?;
            if now.duration_since(since) >= self.timeout {
                // Older ones are older still.
                self.lock().clear();
                return None;
            }
            let mut probe = [0u8; 1];
            match conn.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => {} // closed, failed, or bytes nobody asked for: drop it
            }
        }
    }

    /// Keeps `conn` for the next request (`now`: the time).
    pub fn put(&self, conn: TcpStream, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut idle = self.lock();
        // Oldest first: only a prefix can have expired.
        let expired = idle
            .iter()
            .position(|(_, since)| now.duration_since(*since) < self.timeout)
            .unwrap_or(idle.len());
        idle.drain(..expired);
        if idle.len() >= self.max {
            idle.remove(0);
        }
        idle.push((conn, now));
    }

    /// Connections idle now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(l: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_handed_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(8, Duration::from_secs(60));
        let (live, _live_app) = pair(&l).await;
        let (dead, dead_app) = pair(&l).await;
        let live_port = live.local_addr().unwrap().port();
        pool.put(live, Instant::now());
        pool.put(dead, Instant::now());
        drop(dead_app);
        // The reactor learns of the close asynchronously: wait until it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = pool
                .take(Instant::now())
                .expect("the live connection is still there");
            if got.local_addr().unwrap().port() == live_port {
                break;
            }
            pool.put(got, Instant::now());
            assert!(
                Instant::now() < deadline,
                "the closed connection kept coming back"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_forgets_what_idled_too_long() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, Duration::from_secs(60));
        let mut apps = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair(&l).await;
            apps.push(s);
            pool.put(c, Instant::now());
        }
        assert_eq!(pool.len(), 2);
        let short = Pool::new(2, Duration::ZERO);
        let (c, _s) = pair(&l).await;
        short.put(c, Instant::now());
        assert!(
            short.take(Instant::now()).is_none(),
            "idle past the timeout"
        );
    }
}
