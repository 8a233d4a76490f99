//! Long-polling: answers at once when messages are waiting after the client's cursor,
//! otherwise holds the request up to `poll.timeout`. The cursor alone carries the
//! client's state, so any instance can serve the next poll (with JetStream history).
//!
//! Body: `{"messages":[<message JSON>…],"cursor":"…"}` plus `"reset":"<why>"` after a
//! gap. Each message is the event's shared JSON (the WebSocket frame's payload), so a
//! poll encodes nothing per delivery.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;

use super::{Joined, Outcome, RouteContext};

/// Holds the poll until something is queued (or the wait ends) and writes the answer
/// with `head` (status and CORS headers already set). `now` is the cursor taken before
/// the client joined: an empty answer resumes from there and misses nothing.
pub async fn serve(
    session: &mut Session,
    ctx: &RouteContext,
    joined: Joined,
    cursor: Option<String>,
    now: String,
    mut head: ResponseHeader,
) -> pingora::Result<()> {
    let queue = joined.queue.clone();
    let counting = ctx.counting(crate::config::Transport::Poll);
    let outcome = if !queue.is_empty() || queue.has_reset() {
        Outcome::Delivered
    } else {
        tokio::select! {
            _ = queue.ready() => Outcome::Delivered,
            _ = tokio::time::sleep(ctx.poll.timeout.0) => Outcome::Timeout,
            _ = ctx.drain.started() => Outcome::Timeout,
            _ = client_gone(session) => Outcome::Timeout,
        }
    };
    counting.end(&ctx.metrics, outcome);
    let batch = queue.take();
    drop(joined);
    let events: Vec<_> = batch
        .events
        .into_iter()
        .take(ctx.poll.max_messages)
        .collect();
    ctx.metrics
        .deliveries
        .with_label_values(&["poll"])
        .inc_by(events.len() as u64);
    // Messages to this one connection (the app's first events) carry no cursor.
    let last = events.iter().rev().find(|e| !e.id.is_empty());
    let cursor_out = match (last, batch.reset, cursor) {
        (Some(e), _, _) => e.id.clone(),
        (None, Some(_), _) | (None, None, None) => now,
        (None, None, Some(c)) => c,
    };
    let jsons: Vec<Bytes> = events.iter().map(|e| e.json()).collect();
    let mut body = Vec::with_capacity(64 + jsons.iter().map(|j| j.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"messages":["#);
    for (i, j) in jsons.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(j);
    }
    body.extend_from_slice(br#"],"cursor":"#);
    body.extend_from_slice(&serde_json::to_vec(&cursor_out).unwrap_or_default());
    if let Some(reason) = batch.reset {
        body.extend_from_slice(format!(r#","reset":"{reason}""#).as_bytes());
    }
    body.push(b'}');
    head.insert_header("content-type", "application/json")?;
    head.insert_header("cache-control", "no-store")?;
    head.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Resolves when the client of a request held inside pingora has gone away.
pub async fn client_gone(session: &mut Session) {
    loop {
        match session.downstream_session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
}
