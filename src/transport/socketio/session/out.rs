//! What goes to the client: the events of the namespace sockets' queues, queued in
//! the engine's outbox for a transport to take, or written by the session itself to
//! the socket of a session opened over WebSocket.

use serde_json::{Value, json};

use super::socket::any_closed;
use super::{Session, send_sio};
use crate::hub::Closed;
use crate::transport::Outcome;
use crate::transport::socketio::Ended;
use crate::wire::engineio::Packet;
use crate::wire::socketio::{self, Arg, Kind};

impl Session {
    /// A direct session writes what waits for its socket; a client that stopped reading
    /// holds the write until a socket's queue closes for it.
    pub(super) async fn write_direct(&mut self) -> Option<Outcome> {
        let d = self.direct.as_mut()?;
        d.take_outbox(&self.engine);
        if d.is_empty() {
            return None;
        }
        let ok = tokio::select! {
            ok = d.write() => ok,
            () = any_closed(&self.sockets) => false,
        };
        if ok {
            return None;
        }
        self.engine.end(Ended::ByClient);
        Some(if self.sockets.iter().any(|s| s.queue.is_closed()) {
            Outcome::SlowConsumer
        } else {
            Outcome::WriteError
        })
    }

    /// Moves the events of socket `i`'s queue into the outbox, or, for a session opened
    /// over WebSocket, behind the frames waiting for its socket.
    pub(super) fn flush(&mut self, i: usize) -> Option<Outcome> {
        let s = &self.sockets[i];
        let batch = s.queue.take();
        let deliveries = self.ctx.metrics.deliveries.with_label_values(&["socketio"]);
        let recovery = self.sio.config.recovery;
        if batch.dropped > 0 || batch.reset.is_some() {
            // Messages were lost for this socket (it fell behind, or a resume could
            // not replay): the client refetches its state, as `fanfare.reset` says
            // on the other transports.
            let reason = batch.reset.unwrap_or("slow_consumer");
            send_sio(
                &self.engine,
                Kind::Event,
                &s.nsp,
                None,
                &[
                    Arg::Json(Value::from("fanfare:reset")),
                    Arg::Json(json!({ "reason": reason, "dropped": batch.dropped })),
                ],
            );
        }
        for e in &batch.events {
            let offset = (recovery && !e.id.is_empty()).then_some(e.id.as_str());
            // Encoded once per event and namespace, shared by every socket.
            let encoded = e.sio(&s.nsp, offset.is_some(), || {
                socketio::event_from_payload(&s.nsp, &e.name, &e.payload, e.spread, offset)
            });
            if let Some(d) = self.direct.as_mut() {
                // After what the outbox holds (a reset, an answer), in order.
                d.take_outbox(&self.engine);
                d.push_frame(encoded.ws_text_frame().clone());
                for a in &encoded.attachments {
                    d.push_packet(Packet::Binary(a.clone()));
                }
            } else {
                self.engine.send(Packet::message(encoded.text.clone()));
                for a in &encoded.attachments {
                    self.engine.send(Packet::Binary(a.clone()));
                }
            }
        }
        self.ctx.delivered(
            &deliveries,
            batch.events.len() as u64,
            batch.events.front().map(|e| e.received),
        );
        match batch.closed {
            Some(Closed::SlowConsumer) => Some(Outcome::SlowConsumer),
            Some(Closed::ByApp(_)) => {
                let s = self.sockets.swap_remove(i);
                self.send_sio(Kind::Disconnect, &s.nsp, None, &[]);
                self.ctx
                    .ended(Some(&s.conn), "socketio", Outcome::ClosedByApp, &s.queue);
                None
            }
            None => None,
        }
    }
}
