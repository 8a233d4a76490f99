//! The `rpc` scenario: what fanfare adds to a client's request to the app.
//!
//! The bench runs the app itself (a minimal HTTP/1.1 server answering every `POST`
//! after `--app-delay-ms`, on `--app-listen`, which fanfare's `app.message` names),
//! then measures two phases at the same rate over the same number of connections:
//! 1. direct: keep-alive HTTP `POST`s to the app (the app's own latency);
//! 2. through fanfare: WebSocket `{"type":"rpc"}` requests, answered by `reply`.
//!
//! It reports both latency distributions, their difference (what fanfare adds) and
//! fanfare's CPU time per rpc (over phase 2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{subscribe, ws_mask};
use crate::proc::{clk_tck, cpu_ticks, sum_over};
use crate::{Args, percentile};

const ANSWER: &[u8] = br#"{"ok":true}"#;

/// Serves the app until the process ends.
pub(crate) async fn serve_app(listener: TcpListener, delay: Duration) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(2048);
            let mut b = [0u8; 4096];
            loop {
                // One request: head, then content-length bytes of body.
                let (head_end, len) = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                };
                while buf.len() < head_end + len {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                buf.drain(..head_end + len);
                tokio::time::sleep(delay).await;
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    ANSWER.len()
                )
                .into_bytes();
                out.extend_from_slice(ANSWER);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One connection's loop: `per_conn` requests, one every `gap` (or at once after a
/// slower answer); returns the latencies in µs.
async fn paced<F, Fut>(per_conn: usize, gap: Duration, mut one: F) -> Vec<u32>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut lat = Vec::with_capacity(per_conn);
    let mut next = tokio::time::Instant::now();
    for n in 0..per_conn as u64 {
        tokio::time::sleep_until(next).await;
        next += gap;
        let t = Instant::now();
        if one(n).await.is_err() {
            break;
        }
        lat.push(t.elapsed().as_micros() as u32);
    }
    lat
}

async fn direct(app: SocketAddr, per_conn: usize, gap: Duration) -> Vec<u32> {
    let Ok(s) = TcpStream::connect(app).await else {
        return Vec::new();
    };
    let _ = s.set_nodelay(true);
    let s = Arc::new(tokio::sync::Mutex::new(s));
    paced(per_conn, gap, |n| {
        let s = s.clone();
        async move {
            let body = format!("{{\"seq\":{n}}}");
            let req = format!(
                "POST /rpc HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut s = s.lock().await;
            s.write_all(req.as_bytes()).await?;
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.ends_with(ANSWER) {
                let k = s.read(&mut b).await?;
                if k == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got.extend_from_slice(&b[..k]);
            }
            Ok(())
        }
    })
    .await
}

async fn through_fanfare(args: Args, i: usize, per_conn: usize, gap: Duration) -> Vec<u32> {
    let Ok((s, rest, _)) = subscribe(&args, i, 0).await else {
        return Vec::new();
    };
    let s = Arc::new(tokio::sync::Mutex::new((s, rest)));
    paced(per_conn, gap, |n| {
        let s = s.clone();
        async move {
            let req = format!(r#"{{"type":"rpc","data":{{"seq":{n}}},"ref":{n}}}"#);
            let want = format!(r#""ref":{n},"#);
            let mut g = s.lock().await;
            let (s, acc) = &mut *g;
            s.write_all(&ws_mask(req.as_bytes())).await?;
            let mut b = [0u8; 4096];
            loop {
                // Frames from fanfare are unmasked; take whole ones off the front.
                while let Some((len, header)) = frame_len(acc) {
                    if acc.len() < header + len {
                        break;
                    }
                    let payload = &acc[header..header + len];
                    let hit = payload.windows(want.len()).any(|w| w == want.as_bytes());
                    acc.drain(..header + len);
                    if hit {
                        return Ok(());
                    }
                }
                let k = s.read(&mut b).await?;
                if k == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                acc.extend_from_slice(&b[..k]);
            }
        }
    })
    .await
}

/// The payload length and header length of the frame at the front of `b`.
fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
    let l = *b.get(1)? & 0x7f;
    match l {
        126 => Some((u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4)),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(b.get(2..10)?);
            Some((u64::from_be_bytes(n) as usize, 10))
        }
        n => Some((n as usize, 2)),
    }
}

fn summary(mut lat: Vec<u32>) -> serde_json::Value {
    lat.sort_unstable();
    serde_json::json!({
        "count": lat.len(),
        "p50": percentile(&lat, 0.5),
        "p99": percentile(&lat, 0.99),
        "max": lat.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    })
}

/// Runs both phases; `args.messages` rpcs each, at `args.rate` per second in all
/// (default 1,000), over `args.connections` connections.
pub(crate) async fn run(args: &Args, app: SocketAddr) -> serde_json::Value {
    let conns = args.connections.max(1);
    let rate = if args.rate > 0.0 { args.rate } else { 1000.0 };
    let per_conn = (args.messages / conns).max(1);
    let gap = Duration::from_secs_f64(conns as f64 / rate);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(direct(app, per_conn, gap)));
    }
    let mut app_lat = Vec::new();
    for t in tasks {
        app_lat.extend(t.await.unwrap_or_default());
    }
    let cpu0 = sum_over(&args.server_pid, cpu_ticks);
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(through_fanfare(
            args.clone(),
            i,
            per_conn,
            gap,
        )));
    }
    let mut ff_lat = Vec::new();
    for t in tasks {
        ff_lat.extend(t.await.unwrap_or_default());
    }
    let cpu1 = sum_over(&args.server_pid, cpu_ticks);
    let rpcs = ff_lat.len();
    let cpu_per_rpc = match (cpu0, cpu1) {
        (Some(a), Some(b)) if rpcs > 0 => Some((b - a) as f64 / clk_tck() * 1e6 / rpcs as f64),
        _ => None,
    };
    let (a, f) = (summary(app_lat), summary(ff_lat));
    let added = |k: &str| f[k].as_f64().unwrap_or(0.0) - a[k].as_f64().unwrap_or(0.0);
    serde_json::json!({
        "label": args.label,
        "scenario": "rpc",
        "connections": conns,
        "rate": rate,
        "expected": per_conn * conns,
        "app_direct_ms": a,
        "through_fanfare_ms": f,
        "added_ms": {"p50": added("p50"), "p99": added("p99")},
        "server_cpu_us_per_rpc": cpu_per_rpc,
    })
}
