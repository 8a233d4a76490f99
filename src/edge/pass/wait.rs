//! Waiting on sockets under deadlines, cheaply: a timer is armed only when I/O has to
//! wait, and the client is watched for a hang-up only while the app takes long.

use std::future::Future;
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4;
use tokio::io::AsyncReadExt;

/// How long the app may work on a request before the client's connection is watched
/// too. Watching costs a read on the client's socket; most answers come sooner and
/// pay nothing for it.
pub(super) const HANG_UP_GRACE: Duration = Duration::from_millis(10);

/// `fut` bounded by `limit`, starting the clock only if it does not finish at once
/// (most writes do; reading the clock and arming a timer for them was measurable).
pub(super) async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await.ok(),
    }
}

/// What came first while waiting for the app.
pub(super) enum Waited<T> {
    Done(T),
    TimedOut,
    /// The client closed its connection (or its sending half), or it failed.
    HungUp,
}

/// `fut` (the app's answer) bounded by `limit`. Past [`HANG_UP_GRACE`] the client is
/// watched as well, as pingora and nginx do, so a request nobody waits for any more
/// is abandoned instead of holding a connection to the app until it answers. Bytes
/// the client sends meanwhile (a pipelined request) are put back into `conn` for its
/// next read, and the watch ends there.
pub(super) async fn answer<F: Future>(conn: &mut L4, limit: Duration, fut: F) -> Waited<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let grace = HANG_UP_GRACE.min(limit);
    if let Some(out) = within(grace, fut.as_mut()).await {
        return Waited::Done(out);
    }
    let watched = async {
        tokio::select! {
            biased;
            out = fut.as_mut() => Some(out),
            () = hung_up(conn) => None,
        }
    };
    match tokio::time::timeout(limit - grace, watched).await {
        Ok(Some(out)) => Waited::Done(out),
        Ok(None) => Waited::HungUp,
        Err(_) => Waited::TimedOut,
    }
}

/// Resolves when the client has closed its connection or it failed; never once the
/// client sends bytes instead (they are put back to be read as usual).
async fn hung_up(conn: &mut L4) {
    let mut b = [0u8; 1024];
    match conn.read(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            conn.rewind(&b[..n]);
            std::future::pending::<()>().await;
        }
    }
}
