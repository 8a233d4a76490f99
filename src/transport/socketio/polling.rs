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

const TEXT: &str = "text/plain; charset=UTF-8";

/// `400 {"code":3,"message":"Bad request"}`, the answer to a request that breaks the
/// protocol.
async fn bad_request(session: &mut PingoraSession, head: ResponseHeader) -> pingora::Result<()> {
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

/// A poll: answers what is queued, or waits for it. A second poll under way, or one
/// after an upgrade, is a 400 that closes the session.
pub async fn get(
    session: &mut PingoraSession,
    engine: &Arc<Engine>,
    head: ResponseHeader,
) -> pingora::Result<()> {
    if engine.mode() != Mode::Polling || engine.ended().is_some() {
        return bad_request(session, head).await;
    }
    if !engine.begin(true) {
        engine.send(Packet::bare(Kind::Close));
        engine.end(Ended::ByServer);
        return bad_request(session, head).await;
    }
    let gone = tokio::select! {
        () = engine.wait(Mode::Polling) => false,
        () = client_gone(session) => true,
    };
    let mut packets = engine.take();
    engine.finish(true);
    if gone {
        // Nobody reads this answer: what was taken goes back for the next poll.
        for p in packets {
            engine.send(p);
        }
        return Ok(());
    }
    if packets.is_empty() {
        packets.push(Packet::bare(match engine.ended() {
            Some(Ended::ByServer) => Kind::Close,
            // The client closed it, or an upgrade ends this poll.
            _ => Kind::Noop,
        }));
    }
    let body = engineio::encode_payload(&packets);
    respond(session, head, StatusCode::OK, TEXT, Bytes::from(body)).await
}

/// A POST of packets: `ok`, or a 400 that closes the session (a bad payload, a second
/// POST under way, one after an upgrade).
pub async fn post(
    session: &mut PingoraSession,
    engine: &Arc<Engine>,
    head: ResponseHeader,
    max_payload: usize,
) -> pingora::Result<()> {
    if engine.mode() != Mode::Polling || engine.ended().is_some() {
        return bad_request(session, head).await;
    }
    if !engine.begin(false) {
        engine.send(Packet::bare(Kind::Close));
        engine.end(Ended::ByServer);
        return bad_request(session, head).await;
    }
    let mut body = BytesMut::new();
    let mut too_big = false;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_payload {
                    too_big = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                too_big = true;
                break;
            }
        }
    }
    let packets = if too_big {
        Err(engineio::DecodeError::TooLarge)
    } else {
        engineio::decode_payload(&body, max_payload)
    };
    let result = match packets {
        Ok(packets) => {
            for p in packets {
                if !engine.deliver(p).await {
                    break;
                }
            }
            respond(
                session,
                head,
                StatusCode::OK,
                "text/html",
                Bytes::from_static(b"ok"),
            )
            .await
        }
        Err(e) => {
            tracing::debug!(error = %e, "closing an Engine.IO session");
            engine.send(Packet::bare(Kind::Close));
            engine.end(Ended::ByServer);
            bad_request(session, head).await
        }
    };
    engine.finish(false);
    result
}
