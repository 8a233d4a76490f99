//! A round-robin TCP balancer on loopback with no affinity: each new connection goes
//! to the next backend (what a plain L4 load balancer in front of two pods does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The balancer: where it listens, and connections sent to each backend.
pub struct Balancer {
    /// Its address.
    pub addr: SocketAddr,
    /// Connections handed to each backend, by index.
    pub counts: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Starts one in front of `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let i = next % backends.len();
                next += 1;
                c[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i];
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Balancer { addr, counts, task }
    }

    /// Connections handed to backend `i` so far.
    pub fn count(&self, i: usize) -> usize {
        self.counts[i].load(Ordering::Relaxed)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hostile proxy in front of one backend: it passes plain HTTP through and drops
/// every connection whose first request asks for a WebSocket upgrade, as some
/// corporate proxies do (the browser sees the WebSocket fail before it opens).
pub struct Firewall {
    /// Its address.
    pub addr: SocketAddr,
    /// Upgrade requests dropped so far.
    pub blocked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Firewall {
    /// Starts one in front of `backend`.
    pub async fn start(backend: SocketAddr) -> Firewall {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicUsize::new(0));
        let b = blocked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let b = b.clone();
                tokio::spawn(async move {
                    // The first request's head, read whole before anything is passed on.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut client, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if text.contains("upgrade: websocket") {
                        b.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Firewall {
            addr,
            blocked,
            task,
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.task.abort();
    }
}
