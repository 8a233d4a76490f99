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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A client socket and fanfare's end of it.
    async fn pair() -> (TcpStream, L4) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        (client, L4::from(conn))
    }

    /// The app answering after `after` (time is paused: it passes only when every
    /// task waits, so each step below happens in this order).
    async fn app_answers(after: Duration) -> &'static str {
        tokio::time::sleep(after).await;
        "answer"
    }

    const LIMIT: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_client_that_hung_up_abandons_a_slow_answer() {
        let (client, mut conn) = pair().await;
        drop(client);
        let waited = answer(&mut conn, LIMIT, std::future::pending::<()>()).await;
        assert!(matches!(waited, Waited::HungUp));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_answer_comes_before_any_watch() {
        let (client, mut conn) = pair().await;
        drop(client);
        let waited = answer(&mut conn, LIMIT, app_answers(HANG_UP_GRACE / 2)).await;
        assert!(
            matches!(waited, Waited::Done("answer")),
            "the hang-up is not seen yet"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_sent_while_watched_are_read_again_afterwards() {
        let (mut client, mut conn) = pair().await;
        client.write_all(b"GET /next").await.unwrap();
        let waited = answer(&mut conn, LIMIT, app_answers(HANG_UP_GRACE * 5)).await;
        assert!(matches!(waited, Waited::Done("answer")));
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(LIMIT, conn.read(&mut b))
            .await
            .expect("the bytes the watch read are back in the stream")
            .unwrap();
        assert_eq!(&b[..n], b"GET /next");
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_never_answers_times_out_with_the_client_still_there() {
        let (_client, mut conn) = pair().await;
        let waited = answer(&mut conn, LIMIT, std::future::pending::<()>()).await;
        assert!(matches!(waited, Waited::TimedOut));
    }
}
