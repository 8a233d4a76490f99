//! The public edge: a pingora HTTP proxy whose `request_filter` serves realtime routes
//! and passes every other request through to the app.
//!
//! fanfare runs pingora's proxy app inside its own accept loop ([`listener`]) rather
//! than pingora's `Server`: that gives tests a bound address for port 0, turns a busy
//! port into a clean start-up error instead of a panic in a service thread, and lets the
//! process exit as soon as in-flight requests are done instead of sleeping the whole
//! grace period.
//!
//! - [`pass`]: the pass-through fast path for plain HTTP/1.1 requests; `proxy`: the
//!   `ProxyHttp` pass-through for the rest; [`listener`]: the accept loop;
//!   `handoff`: taking a held connection's raw stream out of pingora;
//! - [`realtime`]: match -> gate -> admit -> hand to a transport; [`route`]: a route
//!   compiled from config; [`cors`]: the Origin policy and response heads;
//!   [`client`]: the client's address and scheme (trusted proxies);
//! - [`assets`]: the browser client and the demo page under `/_fanfare/`;
//! - [`respond`]: the one refusal type and JSON writer (edge and admin); `upstream`:
//!   the app's address and the in-flight count both pass-through paths share.

mod admission;
pub mod assets;
mod buffered;
pub mod client;
pub mod cors;
mod handoff;
pub mod listener;
mod live;
pub mod pass;
mod proxy;
pub mod realtime;
pub mod respond;
pub mod route;
pub mod socketio;
mod upstream;

pub use handoff::take_h1_stream;
pub use proxy::Edge;
pub use upstream::InFlight;
