//! The floor: the least a server can do per WebSocket delivery. It accepts
//! WebSocket upgrades (answering `101` without checking anything: bench clients only),
//! subscribes to one NATS subject, and writes each message's frame to every socket
//! with one non-blocking `write` from a single loop: no per-connection task, queue,
//! wake-up, timer, ping, reading or limits. What fanfare would cost if its fan-out
//! loop wrote into every socket itself (issue 18's suggested road) is bounded below by
//! this; `bench/floor.sh` runs both under `fanfare-bench --lockstep`.
//!
//! usage: floor LISTEN NATS_URL SUBJECT

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, nats, subject] = &args[..] else {
        eprintln!("usage: floor LISTEN NATS_URL SUBJECT");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is IP:PORT");
    let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let client = async_nats::connect(nats.as_str()).await.expect("NATS");
    let mut sub = client.subscribe(subject.clone()).await.expect("subscribe");
    let listener = TcpListener::bind(listen).await.expect("bind");
    let held = sockets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let held = held.clone();
            tokio::spawn(async move {
                if let Some(s) = upgrade(s).await {
                    held.lock().unwrap().push(s);
                }
            });
        }
    });
    let (mut messages, mut written, mut missed) = (0u64, 0u64, 0u64);
    // Each message's time from its arrival to the write to the last socket, in µs:
    // the least "own lag" (fanfare_delivery_lag_seconds) a fan-out can have.
    let mut lag_us: Vec<u64> = Vec::new();
    while let Some(msg) = sub.next().await {
        let arrived = std::time::Instant::now();
        let frame = text_frame(&msg.payload);
        for s in sockets.lock().unwrap().iter() {
            match s.try_write(&frame) {
                Ok(n) if n == frame.len() => written += 1,
                _ => missed += 1,
            }
        }
        lag_us.push(arrived.elapsed().as_micros() as u64);
        messages += 1;
        if messages % 100 == 0 {
            let mut sorted = lag_us.clone();
            sorted.sort_unstable();
            let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
            eprintln!(
                "floor: {messages} messages, {written} frames written, {missed} missed; \
                 arrival to last write p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                q(0.5),
                q(0.99),
                q(1.0)
            );
        }
    }
}

/// Reads the upgrade request's head and answers `101`.
async fn upgrade(mut s: TcpStream) -> Option<TcpStream> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&b[..n]);
    }
    s.set_nodelay(true).ok()?;
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: bench\r\n\r\n",
    )
    .await
    .ok()?;
    Some(s)
}

/// An unmasked server text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}
