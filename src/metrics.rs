//! Prometheus metrics, registered into an injected [`Registry`] (never the global
//! default), so tests and embedders read exactly this instance's values.
//!
//! Label values come from fixed sets (transport, outcome, class, reason): never a
//! subject, a path or a client id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric family of one fanfare instance.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the families live in.
    pub registry: Registry,
    /// Requests passed through to the app, by status class (`2xx`… or `error`).
    pub upstream_requests: IntCounterVec,
    /// Time from request start to the end of the proxied response.
    pub upstream_duration: Histogram,
    /// 1 while the broker is connected.
    pub nats_connected: IntGauge,
    /// Held realtime connections, by transport.
    pub connections: IntGaugeVec,
    /// Realtime connections that ended, by transport and outcome.
    pub connections_closed: IntCounterVec,
    /// Messages received from the broker for at least one subscriber.
    pub messages_received: IntCounter,
    /// WebSocket connections that negotiated permessage-deflate.
    pub ws_compressed: IntCounter,
    /// Deliveries the fan-out wrote to a WebSocket client's socket itself.
    pub fanout_writes: IntCounter,
    /// Messages written to clients, by transport.
    pub deliveries: IntCounterVec,
    /// Messages not delivered, by reason.
    pub dropped: IntCounterVec,
    /// Distinct subjects subscribed at the broker.
    pub subscriptions: IntGauge,
    /// From arrival at fanfare to the socket write, by path (`fanout`: the fan-out's
    /// own writes, once per message at its last socket; `queue`: a client's task, once
    /// per batch).
    pub delivery_lag: prometheus::HistogramVec,
    /// `delivery_lag{path="fanout"}`, looked up once.
    pub delivery_lag_fanout: Histogram,
    /// `delivery_lag{path="queue"}`, looked up once.
    pub delivery_lag_queue: Histogram,
    /// Messages published through the admin endpoint, by result.
    pub publish_total: IntCounterVec,
    /// Messages WebSocket clients asked to publish, by result.
    pub client_publish: IntCounterVec,
    /// Handshake authorizations, by mode and result.
    pub auth_total: IntCounterVec,
    /// Requests refused by a limit or policy, by reason.
    pub rejected: IntCounterVec,
    /// JWKS refreshes, by result.
    pub jwks_refresh: IntCounterVec,
    /// Resumes from a cursor, by result.
    pub resumes: IntCounterVec,
    /// Messages replayed to resuming clients.
    pub replayed: IntCounter,
    /// 1 while shutting down (draining).
    pub draining: IntGauge,
    /// App callbacks (connect, message, disconnect), by kind and outcome.
    pub app_callbacks: IntCounterVec,
    /// App callback durations, by kind.
    pub app_callback_duration: prometheus::HistogramVec,
    /// Disconnect callbacks waiting to be sent.
    pub app_disconnect_queue: IntGauge,
    /// Disconnect callbacks given up, by reason (`queue_full`, `failed`, `shutdown`).
    pub app_disconnect_dropped: IntCounterVec,
    /// Messages addressed to one connection (`fanfare.connection.<id>`), by result.
    pub direct_messages: IntCounterVec,
    /// Configuration reloads, by result (`applied`, `unchanged`, `invalid`).
    pub config_reloads: IntCounterVec,
    /// Engine.IO requests for a session another instance owns, by role (`sent`: relayed
    /// from here, `served`: served here for another instance).
    pub socketio_relays: IntCounterVec,
    /// Engine.IO polls held, waiting for something to answer.
    pub socketio_polls: IntGauge,
}

impl Metrics {
    /// Registers every family into `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Metrics> {
        let build_info = IntGaugeVec::new(
            Opts::new("fanfare_build_info", "Build information; always 1."),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("FANFARE_COMMIT")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let delivery_lag = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "fanfare_delivery_lag_seconds",
                "Time from a message's arrival at fanfare to its write to a client socket, by path (fanout: the fan-out's own writes, once per message at its last socket; queue: a client's task, once per batch).",
            )
            // Fine below 10 ms, where a healthy fan-out's lag is (the p99 target is
            // 2 ms), coarse above, where a slow one shows.
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005,
                0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["path"],
        )?;

        let m = Metrics {
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "fanfare_upstream_requests_total",
                    "Requests passed through to the app, by response class.",
                ),
                &["class"],
            )?,
            upstream_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "fanfare_upstream_duration_seconds",
                    "Duration of passed-through requests, from request to end of response.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ]),
            )?,
            nats_connected: IntGauge::new(
                "fanfare_nats_connected",
                "1 while the broker (NATS or embedded) is connected.",
            )?,
            connections: IntGaugeVec::new(
                Opts::new("fanfare_connections", "Held realtime connections."),
                &["transport"],
            )?,
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "fanfare_connections_closed_total",
                    "Realtime connections that ended, by transport and how they ended.",
                ),
                &["transport", "outcome"],
            )?,
            messages_received: IntCounter::new(
                "fanfare_messages_received_total",
                "Messages received from the broker.",
            )?,
            ws_compressed: IntCounter::new(
                "fanfare_ws_compressed_connections_total",
                "WebSocket connections that negotiated permessage-deflate.",
            )?,
            fanout_writes: IntCounter::new(
                "fanfare_fanout_writes_total",
                "Deliveries the fan-out wrote to a WebSocket client's socket itself (part of fanfare_deliveries_total).",
            )?,
            deliveries: IntCounterVec::new(
                Opts::new(
                    "fanfare_deliveries_total",
                    "Messages written to clients, by transport.",
                ),
                &["transport"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "fanfare_dropped_total",
                    "Messages not delivered to a client, by reason.",
                ),
                &["reason"],
            )?,
            subscriptions: IntGauge::new(
                "fanfare_subscriptions",
                "Distinct subjects subscribed at the broker.",
            )?,
            delivery_lag_fanout: delivery_lag.with_label_values(&["fanout"]),
            delivery_lag_queue: delivery_lag.with_label_values(&["queue"]),
            delivery_lag,
            publish_total: IntCounterVec::new(
                Opts::new(
                    "fanfare_publish_total",
                    "Messages published through the admin endpoint, by result.",
                ),
                &["result"],
            )?,
            client_publish: IntCounterVec::new(
                Opts::new(
                    "fanfare_client_publish_total",
                    "Publishes WebSocket clients asked for, by result.",
                ),
                &["result"],
            )?,
            auth_total: IntCounterVec::new(
                Opts::new(
                    "fanfare_auth_total",
                    "Realtime handshake authorizations, by mode and result.",
                ),
                &["mode", "result"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "fanfare_rejected_total",
                    "Requests or client messages refused by a limit or policy, by reason.",
                ),
                &["reason"],
            )?,
            jwks_refresh: IntCounterVec::new(
                Opts::new("fanfare_jwks_refresh_total", "JWKS fetches, by result."),
                &["result"],
            )?,
            resumes: IntCounterVec::new(
                Opts::new("fanfare_resumes_total", "Resumes from a cursor, by result."),
                &["result"],
            )?,
            replayed: IntCounter::new(
                "fanfare_replayed_messages_total",
                "Messages replayed to resuming clients.",
            )?,
            draining: IntGauge::new(
                "fanfare_draining",
                "1 while fanfare drains for shutdown; fanfare_connections shows what is left.",
            )?,
            app_callbacks: IntCounterVec::new(
                Opts::new(
                    "fanfare_app_callbacks_total",
                    "Callbacks to the app, by kind (connect, message, disconnect) and outcome (ok, refused, app_error, timeout, unavailable, busy, retry).",
                ),
                &["kind", "outcome"],
            )?,
            app_callback_duration: prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "fanfare_app_callback_duration_seconds",
                    "Duration of callbacks to the app, by kind, from request to answer.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["kind"],
            )?,
            app_disconnect_queue: IntGauge::new(
                "fanfare_app_disconnect_queue",
                "Disconnect callbacks waiting to be sent to the app.",
            )?,
            app_disconnect_dropped: IntCounterVec::new(
                Opts::new(
                    "fanfare_app_disconnect_dropped_total",
                    "Disconnect callbacks given up, by reason (queue_full, failed after retries, shutdown).",
                ),
                &["reason"],
            )?,
            direct_messages: IntCounterVec::new(
                Opts::new(
                    "fanfare_direct_messages_total",
                    "Messages on fanfare.connection.<id> subjects, by result (delivered, control, unknown_connection, invalid).",
                ),
                &["result"],
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "fanfare_config_reloads_total",
                    "Configuration reloads (SIGHUP or a changed file), by result (applied, unchanged, invalid).",
                ),
                &["result"],
            )?,
            socketio_relays: IntCounterVec::new(
                Opts::new(
                    "fanfare_socketio_relays_total",
                    "Engine.IO requests for a session another instance owns, by role (sent, served).",
                ),
                &["role"],
            )?,
            socketio_polls: IntGauge::new(
                "fanfare_socketio_polls",
                "Engine.IO long-polling requests held, waiting for something to answer.",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.upstream_requests.clone()))?;
        m.registry.register(Box::new(m.upstream_duration.clone()))?;
        m.registry.register(Box::new(m.nats_connected.clone()))?;
        m.registry.register(Box::new(m.connections.clone()))?;
        m.registry
            .register(Box::new(m.connections_closed.clone()))?;
        m.registry.register(Box::new(m.messages_received.clone()))?;
        m.registry.register(Box::new(m.ws_compressed.clone()))?;
        m.registry.register(Box::new(m.fanout_writes.clone()))?;
        m.registry.register(Box::new(m.deliveries.clone()))?;
        m.registry.register(Box::new(m.dropped.clone()))?;
        m.registry.register(Box::new(m.subscriptions.clone()))?;
        m.registry.register(Box::new(m.delivery_lag.clone()))?;
        m.registry.register(Box::new(m.publish_total.clone()))?;
        m.registry.register(Box::new(m.client_publish.clone()))?;
        m.registry.register(Box::new(m.auth_total.clone()))?;
        m.registry.register(Box::new(m.rejected.clone()))?;
        m.registry.register(Box::new(m.jwks_refresh.clone()))?;
        m.registry.register(Box::new(m.resumes.clone()))?;
        m.registry.register(Box::new(m.replayed.clone()))?;
        m.registry.register(Box::new(m.draining.clone()))?;
        m.registry.register(Box::new(m.app_callbacks.clone()))?;
        m.registry
            .register(Box::new(m.app_callback_duration.clone()))?;
        m.registry
            .register(Box::new(m.app_disconnect_queue.clone()))?;
        m.registry
            .register(Box::new(m.app_disconnect_dropped.clone()))?;
        m.registry.register(Box::new(m.direct_messages.clone()))?;
        m.registry.register(Box::new(m.config_reloads.clone()))?;
        for result in ["applied", "unchanged", "invalid"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m.registry.register(Box::new(m.socketio_relays.clone()))?;
        m.registry.register(Box::new(m.socketio_polls.clone()))?;
        for role in ["sent", "served"] {
            m.socketio_relays.with_label_values(&[role]);
        }
        for reason in ["queue_full", "failed", "shutdown"] {
            m.app_disconnect_dropped.with_label_values(&[reason]);
        }
        for result in ["delivered", "control", "unknown_connection", "invalid"] {
            m.direct_messages.with_label_values(&[result]);
        }
        // Fixed label sets are created up front so every series shows from the start
        // (dashboards and rate() see zeros instead of nothing).
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "error"] {
            m.upstream_requests.with_label_values(&[class]);
        }
        for transport in ["sse", "ws", "poll"] {
            m.connections.with_label_values(&[transport]);
            m.deliveries.with_label_values(&[transport]);
        }
        for reason in [
            "slow_consumer",
            "slow_consumer_disconnect",
            "bad_event_name",
        ] {
            m.dropped.with_label_values(&[reason]);
        }
        for reason in [
            "too_many_connections",
            "too_many_connections_per_ip",
            "origin_not_allowed",
            "origin_missing",
            "forbidden",
            "invalid_claim",
            "rate_limited",
            "too_many_subscriptions",
            "message_too_big",
            "reserved_subject",
            "too_many_topics",
            "no_message_handler",
        ] {
            m.rejected.with_label_values(&[reason]);
        }
        for mode in ["none", "jwt", "upstream"] {
            m.auth_total.with_label_values(&[mode, "ok"]);
        }
        for result in ["replayed", "reset"] {
            m.resumes.with_label_values(&[result]);
        }
        for result in [
            "ok",
            "too_large",
            "unavailable",
            "error",
            "reserved_subject",
            "unauthorized",
        ] {
            m.publish_total.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            m.jwks_refresh.with_label_values(&[result]);
        }
        for result in ["ok", "invalid", "forbidden", "rate_limited", "unavailable"] {
            m.client_publish.with_label_values(&[result]);
        }
        for transport in ["sse", "ws", "poll"] {
            let outcomes: &[&str] = match transport {
                "ws" => &[
                    "client_closed",
                    "write_error",
                    "slow_consumer",
                    "shutdown",
                    "route_changed",
                    "expired",
                    "closed_by_app",
                    "too_big",
                    "ping_timeout",
                    "idle",
                ],
                "poll" => &["delivered", "timeout"],
                _ => &[
                    "client_closed",
                    "write_error",
                    "slow_consumer",
                    "shutdown",
                    "route_changed",
                    "expired",
                    "closed_by_app",
                ],
            };
            for outcome in outcomes {
                m.connections_closed
                    .with_label_values(&[transport, outcome]);
            }
        }
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a family error would be a bug here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%e, "metrics encoding failed");
        }
        buf
    }

    /// The response class label for an HTTP status.
    pub fn class(status: http::StatusCode) -> &'static str {
        if status.is_informational() {
            "1xx"
        } else if status.is_success() {
            "2xx"
        } else if status.is_redirection() {
            "3xx"
        } else if status.is_client_error() {
            "4xx"
        } else if status.is_server_error() {
            "5xx"
        } else {
            "error"
        }
    }
}
