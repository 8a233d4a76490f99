//! Pure bytes, no I/O: the SSE event encoding and its field rules, WebSocket frames and
//! the upgrade check, and fanfare's JSON protocol over WebSocket. Nothing here imports
//! the rest of fanfare; every rule has unit tests next to it.

pub mod protocol;
pub mod sse;
pub mod ws;
