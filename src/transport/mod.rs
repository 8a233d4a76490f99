//! Client transports: framing and the per-client session loops.

pub mod sse;
