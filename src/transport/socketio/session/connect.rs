//! A namespace CONNECT: the refusal or the `{sid}` answer, and the namespace socket
//! that joins the hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Session, Socket};
use crate::app::Connecting;
use crate::transport::Conn;
use crate::wire::socketio::{Arg, Kind};

impl Session {
    /// A namespace CONNECT: authorize (the handshake's credentials, or the `token` of
    /// the auth payload), ask the app, join the subjects, answer `{sid}`.
    pub(super) async fn connect(&mut self, nsp: String, auth: Option<Value>) {
        let refuse = |this: &Self, message: &str, data: Option<Value>| {
            let mut body = json!({ "message": message });
            if let Some(d) = data {
                body["data"] = d;
            }
            this.send_sio(Kind::ConnectError, &nsp, None, &[Arg::Json(body)]);
        };
        let Some(ns) = self.sio.namespaces.get(&nsp) else {
            refuse(self, "Invalid namespace", None);
            return;
        };
        let mut request = self.handshake.request();
        if let Some(token) = auth
            .as_ref()
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
        {
            let _ = request.insert_header("authorization", format!("Bearer {token}"));
        }
        let grant = match self.sio.auth.authorize(&request, &self.ctx.metrics).await {
            Ok(g) => g,
            Err(r) => {
                let (message, data) = r.message_and_data();
                refuse(self, &message, data);
                return;
            }
        };
        let subjects: Result<Vec<String>, _> = ns
            .subjects
            .iter()
            .map(|t| t.render(&grant.claims))
            .collect();
        let subjects = match subjects {
            Ok(s) => s,
            Err(e) => {
                refuse(self, &e.to_string(), None);
                return;
            }
        };
        let mut publish = grant.publish.clone();
        publish.extend(
            self.sio
                .allow_publish
                .iter()
                .filter_map(|t| t.render(&grant.claims).ok()),
        );
        let client = self.ctx.hub.client_id();
        let conn = Arc::new(Conn {
            id: self.ctx.directory.id(client),
            // Read by the app's callbacks only: without an app, no map is kept.
            params: match self.ctx.app {
                Some(_) => HashMap::from([("namespace".to_string(), nsp.clone())]),
                None => HashMap::new(),
            },
            headers: self.ctx.app.as_ref().map_or_else(
                || Arc::from([]),
                |a| a.capture(&self.handshake.header_map()),
            ),
            started: Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            publish_to: None,
        });
        let auth_payload = auth.clone().unwrap_or_else(|| json!({}));
        let opening = match &self.ctx.app {
            Some(app) => {
                let connecting = Connecting {
                    id: &conn.id,
                    params: &conn.params,
                    transport: "socketio",
                    subjects: &subjects,
                    remote_addr: self.handshake.remote,
                    user_agent: self.handshake.user_agent(),
                    auth: Some(&auth_payload),
                };
                match app.connect(&connecting, &conn.headers).await {
                    Ok(o) => o,
                    Err(r) => {
                        let (message, data) = r.message_and_data();
                        refuse(self, &message, data);
                        return;
                    }
                }
            }
            None => None,
        };
        // Connection-state recovery: a client back with its pid and last offset is
        // replayed what it missed (its old pid answered: `socket.recovered`).
        let (pid, offset) = match (self.sio.config.recovery, auth.as_ref()) {
            (true, Some(a)) => (
                a.get("pid").and_then(Value::as_str).map(str::to_string),
                a.get("offset").and_then(Value::as_str).map(str::to_string),
            ),
            _ => (None, None),
        };
        let cursor = pid.as_ref().and(offset.as_deref());
        let joined = match self
            .ctx
            .join(client, &subjects, cursor, opening.as_ref())
            .await
        {
            Ok(j) => j,
            Err(e) => {
                refuse(self, &e.to_string(), None);
                return;
            }
        };
        let registration =
            self.ctx
                .directory
                .register(client, joined.queue.clone(), self.ctx.spec.clone());
        let mut answer = json!({ "sid": conn.id });
        if self.sio.config.recovery {
            let recovered = cursor.is_some() && !joined.queue.has_reset();
            answer["pid"] = match (recovered, pid) {
                (true, Some(pid)) => Value::from(pid),
                _ => Value::from(format!("p{}", conn.id)),
            };
        }
        self.send_sio(Kind::Connect, &nsp, None, &[Arg::Json(answer)]);
        // Most sessions connect one namespace: room for exactly one more, not four.
        self.sockets.reserve_exact(1);
        self.sockets.push(Socket {
            nsp,
            queue: joined.queue,
            _memberships: joined.memberships,
            _registration: registration,
            conn,
            claims: grant.claims,
            publish,
            bucket: None,
        });
    }
}
