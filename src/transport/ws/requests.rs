//! The requests of fanfare's JSON protocol (subscribe, unsubscribe, publish, rpc) and
//! raw mode's client frames, carried out for one WebSocket session.

use bytes::Bytes;
use std::os::fd::AsRawFd;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::rpc::{self, Reply};
use super::{Leave, Session};
use crate::broker::Message as BrokerMessage;
use crate::hub::JoinError;
use crate::limits::Bucket;
use crate::routing::subject;
use crate::wire::protocol::{self, Code, Failure, Request};
use crate::wire::ws::close;

use super::Outcome;

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send,
{
    pub(super) async fn on_text(&mut self, text: &str) {
        let reply = match protocol::parse(text) {
            Err(e) => protocol::error(e.reference.as_ref(), e.code, &e.reason),
            Ok((Request::Rpc { body, json, event }, reference)) => {
                let content_type = if json {
                    "application/json"
                } else {
                    "application/octet-stream"
                };
                match self.rpc(body, content_type, event, reference.clone()) {
                    Ok(()) => return,
                    Err(f) => protocol::error(reference.as_ref(), f.code, &f.reason),
                }
            }
            // Boxed: handling a request (a subscribe may replay from JetStream) needs far
            // more future state than an idle session; boxing keeps that out of every
            // held connection's task (measured: ~7 KiB per idle WebSocket).
            Ok((request, reference)) => match Box::pin(self.handle(request)).await {
                Ok(subject) => protocol::ack(reference.as_ref(), subject.as_deref()),
                Err(f) => protocol::error(reference.as_ref(), f.code, &f.reason),
            },
        };
        self.send_text(reply).await;
    }

    /// Starts an rpc to the app; its answer arrives through the queue.
    fn rpc(
        &mut self,
        body: Bytes,
        content_type: &'static str,
        event: Option<String>,
        reference: Option<serde_json::Value>,
    ) -> Result<(), Failure> {
        rpc::start(
            &self.ctx,
            self.conn.as_ref(),
            &self.queue,
            body,
            content_type,
            event,
            Reply::Json(reference),
        )
    }

    /// Raw mode: a client frame goes to `ws.publish_to` or the app. `false` when the
    /// route has nowhere to send it.
    pub(super) async fn on_raw(&mut self, data: Bytes, text: bool) -> bool {
        if let Some(subject) = self.conn.as_ref().and_then(|c| c.publish_to.clone()) {
            let result = self.publish_checked(subject, data, None).await;
            self.count_publish(&result);
            return true;
        }
        let content_type = if text {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        match rpc::start(
            &self.ctx,
            self.conn.as_ref(),
            &self.queue,
            data,
            content_type,
            None,
            Reply::Raw,
        ) {
            Ok(()) => true,
            Err(f) => f.code != Code::NotConfigured,
        }
    }

    /// Raw mode on a route that takes no client messages: close with 1008.
    pub(super) async fn unrouted(&mut self) -> Outcome {
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["no_message_handler"])
            .inc();
        self.close(
            close::POLICY,
            "this route takes no client messages",
            Outcome::WriteError,
        )
        .await
    }

    fn count_publish(&self, result: &Result<(), Failure>) {
        let label = match result {
            Ok(()) => "ok",
            Err(f) => match f.code {
                Code::Forbidden => "forbidden",
                Code::RateLimited => "rate_limited",
                Code::Unavailable => "unavailable",
                _ => "invalid",
            },
        };
        self.ctx
            .metrics
            .client_publish
            .with_label_values(&[label])
            .inc();
    }

    /// Takes a token for a run-time subscribe or unsubscribe: each one may create or
    /// drop a broker subscription, so a connection cannot churn them without bound.
    fn churn(&mut self) -> Result<(), Failure> {
        let ws = &self.ctx.ws;
        if self
            .subscribe_bucket
            .get_or_insert_with(|| Box::new(Bucket::new(ws.subscribe_rate, ws.subscribe_burst)))
            .take()
        {
            return Ok(());
        }
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["rate_limited"])
            .inc();
        Err(Failure::new(
            Code::RateLimited,
            format!(
                "at most {} subscribes and unsubscribes per second",
                ws.subscribe_rate
            ),
        ))
    }

    /// A `forbidden` answer, counted in `fanfare_rejected_total`.
    fn forbidden(&self, action: &str) -> Failure {
        self.ctx
            .metrics
            .rejected
            .with_label_values(&["forbidden"])
            .inc();
        Failure::new(
            Code::Forbidden,
            format!("this connection may not {action} that subject"),
        )
    }

    /// Carries out a request; `Ok(Some(subject))` acks with the subject.
    async fn handle(&mut self, request: Request) -> Result<Option<String>, Failure> {
        match request {
            Request::Subscribe { subject, since } => {
                self.churn()?;
                if !subject::is_valid_subscribe_subject(&subject) {
                    return Err(Failure::new(
                        Code::InvalidSubject,
                        "not a valid NATS subject",
                    ));
                }
                if !self
                    .permissions
                    .subscribe
                    .iter()
                    .any(|p| subject::covers(p, &subject))
                {
                    return Err(self.forbidden("subscribe to"));
                }
                if self.subscriptions.contains_key(&subject) {
                    return Ok(Some(subject));
                }
                if self.subscriptions.len() >= self.ctx.ws.max_subscriptions {
                    self.ctx
                        .metrics
                        .rejected
                        .with_label_values(&["too_many_subscriptions"])
                        .inc();
                    return Err(Failure::new(
                        Code::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions per connection",
                            self.ctx.ws.max_subscriptions
                        ),
                    ));
                }
                let spec = self.ctx.topic(std::slice::from_ref(&subject));
                let m = self
                    .ctx
                    .hub
                    .join_spec(&spec, self.client, self.queue.clone())
                    .await
                    .map_err(|e| match e {
                        JoinError::TooManyTopics(_) => {
                            self.ctx
                                .metrics
                                .rejected
                                .with_label_values(&["too_many_topics"])
                                .inc();
                            Failure::new(Code::TooManyTopics, e.to_string())
                        }
                        JoinError::Broker(e) => Failure::new(Code::Unavailable, e.to_string()),
                    })?;
                if let Some(cursor) = since {
                    self.ctx
                        .hub
                        .resume(&[spec], &cursor, &self.queue)
                        .await
                        .map_err(|e| Failure::new(Code::Unavailable, e.to_string()))?;
                }
                self.subscriptions.insert(subject.clone(), m);
                Ok(Some(subject))
            }
            Request::Unsubscribe { subject } => {
                self.churn()?;
                match self.subscriptions.remove(&subject) {
                    Ok(_) => Ok(Some(subject)),
                    Err(Leave::NotSubscribed) => Err(Failure::new(
                        Code::NotSubscribed,
                        "not subscribed to that subject",
                    )),
                    Err(Leave::PartOfRoute) => Err(Failure::new(
                        Code::BadRequest,
                        "this subject is one of the route's subjects, which are one subscription; it cannot be left alone",
                    )),
                }
            }
            Request::Publish {
                subject,
                payload,
                event,
            } => {
                let result = self.publish(subject, payload, event).await;
                self.count_publish(&result);
                result.map(|()| None)
            }
            // Handled by `on_text` before it gets here.
            Request::Rpc { .. } => Err(Failure::new(Code::BadRequest, "rpc")),
        }
    }

    /// Publishes for the client, within its grant and its rate.
    async fn publish(
        &mut self,
        subject: String,
        payload: Bytes,
        event: Option<String>,
    ) -> Result<(), Failure> {
        if !subject::is_valid_publish_subject(&subject) {
            return Err(Failure::new(
                Code::InvalidSubject,
                "publish needs a subject without wildcards",
            ));
        }
        if subject::is_reserved(&subject)
            || subject::is_connection_subject(&subject)
            || !self
                .permissions
                .publish
                .iter()
                .any(|p| subject::matches(p, &subject))
        {
            return Err(self.forbidden("publish to"));
        }
        self.publish_checked(subject, payload, event).await
    }

    /// Publishes for the client a subject already allowed, within its rate.
    async fn publish_checked(
        &mut self,
        subject: String,
        payload: Bytes,
        event: Option<String>,
    ) -> Result<(), Failure> {
        let ws = &self.ctx.ws;
        if !self
            .publish_bucket
            .get_or_insert_with(|| Box::new(Bucket::new(ws.publish_rate, ws.publish_burst)))
            .take()
        {
            self.ctx
                .metrics
                .rejected
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(Failure::new(
                Code::RateLimited,
                format!("at most {} publishes per second", self.ctx.ws.publish_rate),
            ));
        }
        let mut msg = BrokerMessage::new(subject, payload);
        msg.event = event;
        msg.headers.push(("Fanfare-Route", self.ctx.path.clone()));
        msg.headers
            .push(("Fanfare-Connection", self.ctx.directory.id(self.client)));
        self.ctx
            .broker
            .publish(msg)
            .await
            .map_err(|e| Failure::new(Code::Unavailable, e.to_string()))?;
        Ok(())
    }
}
