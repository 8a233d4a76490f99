//! Pure bytes, no I/O: the SSE event encoding and its field rules, WebSocket frames and
//! the upgrade check, fanfare's JSON protocol over WebSocket, and Engine.IO v4 /
//! Socket.IO v5 packets. Nothing here imports
//! the rest of fanfare; every rule has unit tests next to it.

pub mod deflate;
pub mod engineio;
pub mod protocol;
pub mod socketio;
pub mod sse;
pub mod ws;
