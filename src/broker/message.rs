//! What travels through the broker: a message with its fanfare headers, a replay's
//! outcome, and the broker's errors.

use std::time::Instant;

use bytes::Bytes;

/// The NATS header naming the event (SSE `event:`, WS `"event"`).
pub const EVENT_HEADER: &str = "Fanfare-Event";
/// The NATS header of a control message to one connection (`subscribe`,
/// `unsubscribe`, `close`).
pub const CONTROL_HEADER: &str = "Fanfare-Control";
/// The NATS header that says how a payload maps onto Socket.IO arguments: `spread`
/// (a JSON array's elements are the arguments).
pub const ARGS_HEADER: &str = "Fanfare-Args";
/// The NATS header carrying a message id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// A message from or to the broker.
#[derive(Debug, Clone)]
pub struct Message {
    /// The concrete subject it was published to.
    pub subject: String,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// The `Fanfare-Event` header, if any.
    pub event: Option<String>,
    /// The `Nats-Msg-Id` header, if any.
    pub msg_id: Option<String>,
    /// Other headers to publish with it (`Fanfare-Route`, `Fanfare-Connection`).
    pub headers: Vec<(&'static str, String)>,
    /// The JetStream stream sequence, for messages read from a stream.
    pub seq: Option<u64>,
    /// When fanfare received it (for `fanfare_delivery_lag_seconds`).
    pub received: Instant,
}

impl Message {
    /// A message to publish.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            subject: subject.into(),
            payload: payload.into(),
            event: None,
            msg_id: None,
            headers: Vec::new(),
            seq: None,
            received: Instant::now(),
        }
    }
}

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker is not connected right now.
    #[error("the broker is not connected")]
    Disconnected,
    /// NATS refused or failed the operation.
    #[error("nats: {0}")]
    Nats(String),
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After this stream sequence (a client's cursor).
    After(u64),
    /// Messages stored since this time (a client admitted while NATS was unreachable,
    /// with no cursor of its own: what was published meanwhile).
    Since(std::time::SystemTime),
}

/// What a replay from a cursor found.
#[derive(Debug)]
pub enum Replay {
    /// The messages after the cursor, in order (possibly none).
    Messages(Vec<Message>),
    /// The cursor is older than what is kept, or there is more than the replay bound:
    /// the client must refetch its state.
    Reset(&'static str),
}

/// A request between fanfare instances, or its answer (NATS request-reply).
#[derive(Debug, Clone)]
pub struct Relayed {
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: bytes::Bytes,
    /// Where the answer goes (requests only).
    pub reply: Option<String>,
}

impl Relayed {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
