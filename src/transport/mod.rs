//! Client transports: wire formats and the per-client session loops.

pub mod protocol;
pub mod sse;
pub mod ws;

use std::pin::Pin;

/// How a held connection ended, for `fanfare_connections_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client went away (close frame, EOF).
    ClientClosed,
    /// A read or write failed, or the client broke the protocol.
    WriteError,
    /// The client sent a message over the limit (WebSocket 1009).
    TooBig,
    /// The client stopped answering pings (WebSocket 4002).
    PingTimeout,
    /// No subscription for too long (WebSocket 4003).
    Idle,
    /// The client fell behind under the `disconnect` policy.
    SlowConsumer,
    /// fanfare is shutting down (drain).
    Shutdown,
    /// The client's token expired.
    Expired,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::ClientClosed => "client_closed",
            Outcome::WriteError => "write_error",
            Outcome::TooBig => "too_big",
            Outcome::PingTimeout => "ping_timeout",
            Outcome::Idle => "idle",
            Outcome::SlowConsumer => "slow_consumer",
            Outcome::Shutdown => "shutdown",
            Outcome::Expired => "expired",
        }
    }
}

/// The timer of a credential's expiry, made once per connection: boxed, so a
/// connection without an expiry carries no `Sleep`, and held outside the session's
/// loop, so its timer is not registered again on every wake-up.
pub fn expiry_timer(at: Option<tokio::time::Instant>) -> Option<Pin<Box<tokio::time::Sleep>>> {
    at.map(|t| Box::pin(tokio::time::sleep_until(t)))
}

/// Waits for the expiry timer, or forever when there is none.
pub async fn expired(timer: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}
