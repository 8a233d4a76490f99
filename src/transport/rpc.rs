//! A client's messages to the app: each one a `POST` to the route's `app.message`,
//! sent from a task of its own so the session never waits; the answer comes back
//! through the client's queue (in completion order), so it is written like any event.
//!
//! At most `app.max_in_flight` per connection; past it, `busy`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::Value;

use super::{Conn, RouteContext};
use crate::app::Answer;
use crate::hub::{ClientQueue, Event};
use crate::wire::protocol::{self, Code, Failure};
use crate::wire::ws::text_frame;

/// How the answer goes back.
pub enum Reply {
    /// fanfare's JSON protocol: `reply` / `error` with the request's `ref`.
    Json(Option<Value>),
    /// Raw mode: a 2xx answer's body as a frame of its own; nothing otherwise.
    Raw,
}

/// Why an rpc could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// The route has no `app.message` handler.
    NotConfigured,
    /// `app.max_in_flight` rpcs are under way on the connection (counted).
    Busy(usize),
}

/// Sends `body` to the app's `message` handler from a task of its own, bounded by
/// `app.max_in_flight` per connection; `done` gets the answer.
pub fn spawn(
    ctx: &Arc<RouteContext>,
    conn: Option<&Arc<Conn>>,
    event: Option<String>,
    body: Bytes,
    content_type: &'static str,
    done: impl FnOnce(Answer) + Send + 'static,
) -> Result<(), NotStarted> {
    let (Some(app), Some(conn)) = (ctx.app.as_ref(), conn) else {
        return Err(NotStarted::NotConfigured);
    };
    if !app.handles_messages() {
        return Err(NotStarted::NotConfigured);
    }
    if conn.in_flight.fetch_add(1, Ordering::AcqRel) >= app.max_in_flight {
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        app.count_busy();
        return Err(NotStarted::Busy(app.max_in_flight));
    }
    let (ctx, conn) = (ctx.clone(), conn.clone());
    tokio::spawn(async move {
        let answer = match &ctx.app {
            Some(app) => {
                app.message(
                    &conn.id,
                    &conn.headers,
                    event.as_deref(),
                    body,
                    content_type,
                )
                .await
            }
            None => None,
        };
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        done(answer.unwrap_or_else(|| Answer::Unavailable("no handler".into())));
    });
    Ok(())
}

/// Starts an rpc of `body` for the connection, its answer to come through `queue`;
/// `Err` when it cannot start.
pub fn start(
    ctx: &Arc<RouteContext>,
    conn: Option<&Arc<Conn>>,
    queue: &Arc<ClientQueue>,
    body: Bytes,
    content_type: &'static str,
    event: Option<String>,
    reply: Reply,
) -> Result<(), Failure> {
    let queue = queue.clone();
    spawn(ctx, conn, event, body, content_type, move |answer| {
        if let Some(event) = answer_event(answer, &reply) {
            queue.push(Arc::new(event));
        }
    })
    .map_err(|e| match e {
        NotStarted::NotConfigured => not_configured(),
        NotStarted::Busy(max) => Failure::new(
            Code::Busy,
            format!("at most {max} rpcs under way per connection"),
        ),
    })
}

fn not_configured() -> Failure {
    Failure::new(Code::NotConfigured, "this route has no app.message handler")
}

/// The event carrying an answer back, if it has one.
fn answer_event(answer: Answer, reply: &Reply) -> Option<Event> {
    let Reply::Json(reference) = reply else {
        return match answer {
            Answer::Reply(_, body) if !body.is_empty() => {
                Some(Event::direct(crate::broker::Message::new("", body)))
            }
            _ => None,
        };
    };
    let reference = reference.as_ref();
    let json = match answer {
        Answer::Reply(status, body) => protocol::reply(reference, status, &body),
        Answer::AppError(status, body) => protocol::app_error(reference, status, &body),
        Answer::Timeout => {
            protocol::error(reference, Code::Timeout, "the app did not answer in time").into_bytes()
        }
        Answer::Unavailable(e) => {
            tracing::debug!(error = %e, "rpc: the app is unavailable");
            protocol::error(
                reference,
                Code::Unavailable,
                "the app's message handler could not be reached",
            )
            .into_bytes()
        }
    };
    Some(Event::frame(text_frame(&json)))
}
