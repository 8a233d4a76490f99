//! The test harness: a real `nats-server` on free ports, an in-process stub app,
//! fanfare itself (in-process through `fanfare::run`, or the real binary), and helpers
//! that wait for a condition with a deadline.
#![allow(dead_code)]

mod app;
mod balancer;
mod browser;
mod callbacks;
mod deflate;
mod instance;
mod nats;
mod node;
mod sse;
mod ws;

// Each test crate uses a part of the harness; the rest is unused there.
#[allow(unused_imports)]
pub use {
    app::*, balancer::*, browser::*, callbacks::*, deflate::*, instance::*, nats::*, node::*,
    sse::*, ws::*,
};

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The HS256 secret the JWT tests sign with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims`, signed HS256 with [`SECRET`].
pub fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The default deadline for conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1, from the OS.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A port on 127.0.0.1 that is bound and never listened on: while it lives, no other
/// process can take it, and every connection to it is refused. For "nothing listens
/// here" (a [`free_port`] could be taken by someone else before the test uses it).
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

/// A [`ClosedPort`] from the OS.
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local_addr").port();
    ClosedPort {
        _socket: socket,
        port,
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut poll_interval = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        // Poll again soon (backing off to 200 ms) until the deadline.
        tokio::time::sleep(poll_interval).await;
        poll_interval = (poll_interval * 2).min(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.1 client that ignores any proxy settings. One client is shared by
/// every test (building one loads the system's root certificates, which is slow); it
/// keeps no idle connections, so nothing ties it to one test's runtime.
pub fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            fanfare::http_client().expect("the TLS provider installs");
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        })
        .clone()
}
