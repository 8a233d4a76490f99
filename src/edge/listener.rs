//! The accept loop shared by the edge and the admin listener.

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use std::os::fd::AsRawFd;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts on `listener` until `stop` turns true, handing each connection to `app`.
/// `sessions` is the watch pingora's sessions follow: once true they stop keep-alive.
pub async fn serve<A>(
    listener: TcpListener,
    app: Arc<A>,
    mut stop: watch::Receiver<bool>,
    sessions: watch::Receiver<bool>,
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
                let _ = tcp.set_nodelay(true);
                let mut stream: Stream = tcp.into();
                let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                let _ = digest.peer_addr.set(Some(peer.into()));
                stream.set_socket_digest(digest);
                let app = app.clone();
                let shutdown = sessions.clone();
                tokio::spawn(async move {
                    let mut next = app.process_new(Box::new(stream), &shutdown).await;
                    while let Some(reused) = next {
                        next = app.process_new(reused, &shutdown).await;
                    }
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
