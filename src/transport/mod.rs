//! Client transports: wire formats and the per-client session loops.

pub mod protocol;
pub mod sse;
pub mod ws;
