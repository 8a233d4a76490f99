//! A namespace socket's emits: published to the namespace's `emit` subject, or, with
//! an acknowledgement, sent to the app's `message` handler whose answer is the ack.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Session, send_sio};
use crate::app::Answer;
use crate::broker::Message as BrokerMessage;
use crate::limits::Bucket;
use crate::routing::subject;
use crate::transport::rpc::{self, NotStarted};
use crate::wire::socketio::{self, Arg, Kind};

impl Session {
    /// `socket.emit(name, ...args)`: with an acknowledgement to the app's `message`
    /// handler, without one published to the namespace's `emit` subject.
    pub(super) async fn on_event(&mut self, i: usize, p: socketio::Packet) {
        let mut data = p.data.unwrap_or_default();
        socketio::inline_attachments(&mut data, &p.attachments);
        let Value::Array(mut items) = data else {
            return;
        };
        let Value::String(name) = items.remove(0) else {
            return;
        };
        let args = Value::Array(items);
        let nsp = self.sockets[i].nsp.clone();
        if let Some(ack) = p.id {
            self.ack_by_app(i, ack, name, &args);
            return;
        }
        let target = self
            .sio
            .namespaces
            .get(&nsp)
            .and_then(|ns| ns.emit.get(&name))
            .map(|t| t.render(&self.sockets[i].claims));
        let Some(Ok(subject)) = target else {
            self.error_event(
                &nsp,
                "not_mapped",
                &name,
                "no subject for this event: see the namespace's emit",
            );
            return;
        };
        let s = &mut self.sockets[i];
        if subject::is_reserved(&subject)
            || subject::is_connection_subject(&subject)
            || !s.publish.iter().any(|p| subject::matches(p, &subject))
        {
            self.ctx
                .metrics
                .client_publish
                .with_label_values(&["forbidden"])
                .inc();
            self.error_event(
                &nsp,
                "forbidden",
                &name,
                "allow_publish does not cover this event's subject",
            );
            return;
        }
        let ws = &self.ctx.ws;
        if !s
            .bucket
            .get_or_insert_with(|| Box::new(Bucket::new(ws.publish_rate, ws.publish_burst)))
            .take()
        {
            self.ctx
                .metrics
                .client_publish
                .with_label_values(&["rate_limited"])
                .inc();
            self.error_event(&nsp, "rate_limited", &name, "too many emits");
            return;
        }
        let mut msg = BrokerMessage::new(subject, Bytes::from(args.to_string()));
        if crate::wire::sse::is_safe_field(&name) {
            msg.event = Some(name.clone());
        }
        msg.headers.push(("Fanfare-Route", self.ctx.path.clone()));
        msg.headers.push(("Fanfare-Connection", s.conn.id.clone()));
        // The arguments, as they were emitted, are what the subscribers' sockets get.
        msg.headers
            .push((crate::broker::ARGS_HEADER, "spread".to_string()));
        let label = match self.ctx.broker.publish(msg).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::debug!(error = %e, "a Socket.IO emit could not be published");
                self.error_event(&nsp, "unavailable", &name, "the broker is not reachable");
                "unavailable"
            }
        };
        self.ctx
            .metrics
            .client_publish
            .with_label_values(&[label])
            .inc();
    }

    /// An emit with an acknowledgement: its arguments go to `app.message`; the app's
    /// answer (a JSON array: the arguments; anything else: the one argument) is the ack.
    fn ack_by_app(&self, i: usize, ack: u64, name: String, args: &Value) {
        let s = &self.sockets[i];
        let (nsp, engine) = (s.nsp.clone(), self.engine.clone());
        let body = Bytes::from(args.to_string());
        let started = rpc::spawn(
            &self.ctx,
            Some(&s.conn),
            Some(name),
            body,
            "application/json",
            move |answer| {
                let args = match answer {
                    Answer::Reply(_, body) => match serde_json::from_slice::<Value>(&body) {
                        Ok(Value::Array(items)) => items,
                        Ok(v) => vec![v],
                        Err(_) if body.is_empty() => Vec::new(),
                        Err(_) => vec![Value::from(String::from_utf8_lossy(&body).into_owned())],
                    },
                    Answer::AppError(status, body) => vec![json!({
                        "error": "app_error",
                        "status": status,
                        "data": serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| {
                            Value::from(String::from_utf8_lossy(&body).into_owned())
                        }),
                    })],
                    Answer::Timeout => vec![json!({"error": "timeout"})],
                    Answer::Unavailable(_) => vec![json!({"error": "unavailable"})],
                };
                let args: Vec<Arg> = args.into_iter().map(Arg::Json).collect();
                send_sio(&engine, Kind::Ack, &nsp, Some(ack), &args);
            },
        );
        let error = match started {
            Ok(()) => return,
            Err(NotStarted::NotConfigured) => "not_configured",
            Err(NotStarted::Busy(_)) => "busy",
        };
        send_sio(
            &self.engine,
            Kind::Ack,
            &s.nsp,
            Some(ack),
            &[Arg::Json(json!({ "error": error }))],
        );
    }

    /// `socket.on("fanfare:error", ({code, event, message}) => …)`: an emit fanfare
    /// could not carry out (never silence).
    pub(super) fn error_event(&self, nsp: &str, code: &str, event: &str, message: &str) {
        self.send_sio(
            Kind::Event,
            nsp,
            None,
            &[
                Arg::Json(Value::from("fanfare:error")),
                Arg::Json(json!({ "code": code, "event": event, "message": message })),
            ],
        );
    }
}
