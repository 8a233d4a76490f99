//! Engine.IO's HTTP long-polling: a GET takes what the session queued (held until
//! something is), a POST hands the client's packets to the session and is answered
//! `ok`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::prelude::Session as PingoraSession;

use super::{Ended, Engine, Mode};
use crate::transport::poll::client_gone;
use crate::wire::engineio::{self, Kind, Packet};

/// What the reference server answers a request it will not serve.
pub fn error_body(code: u8, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "code": code, "message": message }).to_string())
}

/// Writes a whole answer.
pub async fn respond(
    session: &mut PingoraSession,
    mut head: ResponseHeader,
    status: StatusCode,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    head.set_status(status)?;
    head.insert_header("content-type", content_type)?;
    head.insert_header("content-length", body.len().to_string())?;
    head.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The content type of a polling payload.
pub const TEXT: &str = "text/plain; charset=UTF-8";

/// `400 {"code":3,"message":"Bad request"}`, the answer to a request that breaks the
/// protocol.
pub async fn bad_request(
    session: &mut PingoraSession,
    head: ResponseHeader,
) -> pingora::Result<()> {
    respond(
        session,
        head,
        StatusCode::BAD_REQUEST,
        "application/json",
        error_body(3, "Bad request"),
    )
    .await
}

/// The open packet answered to a polling handshake.
pub async fn open(
    session: &mut PingoraSession,
    head: ResponseHeader,
    open_json: &str,
) -> pingora::Result<()> {
    let body = engineio::encode_payload(&[Packet::Text(Kind::Open, open_json.to_string())]);
    respond(session, head, StatusCode::OK, TEXT, Bytes::from(body)).await
}

/// How long a poll that arrives during an upgrade waits to see how it ends.
const UPGRADE_RACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A poll or a POST the protocol refuses (a `400` that closes the session when it
/// broke the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// Starts a poll (`get`) or a POST: refused on a session that is not polling (any
/// more) or has ended, and refused with the session closed when one is under way
/// already.
fn begin(engine: &Engine, get: bool) -> Result<(), Refused> {
    if engine.mode() != Mode::Polling || engine.ended().is_some() {
        return Err(Refused);
    }
    if !engine.begin(get) {
        engine.close();
        return Err(Refused);
    }
    Ok(())
}

/// A poll's payload: what is queued, or (waiting for it) what comes next. A second
/// poll under way, or one after an upgrade, is refused and closes the session. When
/// `gone` resolves first (the client left), what was taken goes back and `None` is
/// answered.
pub async fn poll(
    engine: &Arc<Engine>,
    gone: impl std::future::Future<Output = ()>,
    held: &prometheus::IntGauge,
) -> Result<Option<Bytes>, Refused> {
    if engine.upgrading() {
        // A poll that arrives while a WebSocket is upgrading the session may have
        // been sent after the upgrade finished (the protocol then refuses it): wait a
        // moment to see. A client's last poll before it finishes the upgrade goes on
        // once the wait is over, and gets its noop.
        let _ = tokio::time::timeout(UPGRADE_RACE, async {
            while engine.upgrading() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await;
    }
    if engine.ended() == Some(Ended::ByClient) && engine.take_noop_owed() {
        return Ok(Some(Bytes::from(engineio::encode_payload(&[
            Packet::bare(Kind::Noop),
        ]))));
    }
    begin(engine, true)?;
    held.inc();
    let left = tokio::select! {
        () = engine.wait(Mode::Polling) => false,
        () = gone => true,
    };
    held.dec();
    let mut packets = engine.take();
    engine.finish(true);
    if left {
        // Nobody reads this answer: what was taken goes back for the next poll.
        for p in packets {
            engine.send(p);
        }
        return Ok(None);
    }
    if packets.is_empty() {
        packets.push(Packet::bare(match engine.ended() {
            Some(Ended::ByServer | Ended::Overflow) => Kind::Close,
            // The client closed it, or an upgrade ends this poll.
            _ => Kind::Noop,
        }));
    }
    Ok(Some(Bytes::from(engineio::encode_payload(&packets))))
}

/// A POSTed payload handed to the session; a bad one is refused and closes it.
pub async fn push(engine: &Arc<Engine>, body: &[u8], max_payload: usize) -> Result<(), Refused> {
    begin(engine, false)?;
    let result = match engineio::decode_payload(body, max_payload) {
        Ok(packets) => {
            for p in packets {
                if !engine.deliver(p).await {
                    break;
                }
            }
            engine.handled().await;
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "closing an Engine.IO session");
            engine.close();
            Err(Refused)
        }
    };
    engine.finish(false);
    result
}

/// A poll through pingora.
pub async fn get(
    session: &mut PingoraSession,
    engine: &Arc<Engine>,
    head: ResponseHeader,
    held: &prometheus::IntGauge,
) -> pingora::Result<()> {
    let answer = {
        let gone = client_gone(session);
        poll(engine, gone, held).await
    };
    match answer {
        Ok(Some(body)) => respond(session, head, StatusCode::OK, TEXT, body).await,
        Ok(None) => Ok(()),
        Err(Refused) => bad_request(session, head).await,
    }
}

/// A POST of packets through pingora: `ok`, or a 400 that closes the session.
pub async fn post(
    session: &mut PingoraSession,
    engine: &Arc<Engine>,
    head: ResponseHeader,
    max_payload: usize,
) -> pingora::Result<()> {
    let Some(body) = read_body(session, max_payload).await else {
        engine.close();
        return bad_request(session, head).await;
    };
    match push(engine, &body, max_payload).await {
        Ok(()) => {
            respond(
                session,
                head,
                StatusCode::OK,
                "text/html",
                Bytes::from_static(b"ok"),
            )
            .await
        }
        Err(Refused) => bad_request(session, head).await,
    }
}

/// A request's body, at most `max` bytes (`None` past it, or on a read error).
pub async fn read_body(session: &mut PingoraSession, max: usize) -> Option<Bytes> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body.freeze()),
            Err(_) => return None,
        }
    }
}
