//! fanfare-bench: a load generator for realtime fan-out servers (fanfare and its peers).
//!
//! It opens N subscriber connections (SSE, fanfare's WebSocket protocol, or NATS over
//! WebSocket), waits until all are subscribed, publishes M messages carrying a sequence
//! number and a send timestamp (to NATS directly, or to an HTTP publish URL), and reports
//! deliveries per second, end-to-end latency, lost and duplicated deliveries, the
//! server's RSS per held connection and its CPU time per delivery.
//!
//! Loopback only, bounded in count and time; stops by itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Realtime fan-out load generator.
///
/// Scenarios:
///   fanout    one subject, N subscribers, M messages: deliveries/s, latency, loss.
///   subjects  N subjects with one subscriber each ({i} in --url and --subject), M
///             messages per subject.
///   idle      N idle connections: RSS per held connection (needs --server-pid).
///   storm     connect N as fast as possible: connections per second.
///
/// Examples (fanfare on :8080/:9090, NATS on :4222):
///   fanfare-bench --scenario fanout --transport ws --url ws://127.0.0.1:8080/feed \
///       --subject feed --connections 10000 --messages 100 --publish nats://127.0.0.1:4222
///   fanfare-bench --scenario idle --transport sse --url http://127.0.0.1:8080/feed \
///       --connections 19000 --server-pid $(pidof fanfare)
#[derive(Parser, Debug, Clone)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// How subscribers connect.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Subscriber URL (`ws://` or `http://`); `{i}` is the subject index.
    #[arg(long)]
    url: String,
    /// NATS subject published to (and subscribed, for nats-ws); `{i}` is the index.
    #[arg(long, default_value = "bench")]
    subject: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Messages published (per subject for `subjects`).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Publish rate in messages per second; 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Where to publish: `nats://host:port`, or an HTTP URL where `{subject}` is
    /// replaced (e.g. `http://127.0.0.1:9090/publish/{subject}`).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    publish: String,
    /// Body format for HTTP publishing.
    #[arg(long, value_enum, default_value = "raw")]
    publish_format: PublishFormat,
    /// Payload padding in bytes (on top of the sequence and timestamp).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// The server's PID: its RSS and CPU time are read from /proc. A comma-separated
    /// list sums the processes (a server made of several, e.g. pushpin's condure,
    /// proxy, handler and zurl).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// A label for the report (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Fanout,
    Subjects,
    Idle,
    Storm,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Transport {
    /// Server-Sent Events (fanfare, nchan, pushpin).
    Sse,
    /// A WebSocket whose text frames carry the payload (fanfare, nchan).
    Ws,
    /// NATS protocol over WebSocket (nats-server's websocket listener).
    NatsWs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum PublishFormat {
    /// The payload as the body (fanfare /publish, nchan).
    Raw,
    /// Pushpin's publish API JSON (http-stream content).
    Pushpin,
}

/// Counters shared by every subscriber (the rest is per connection).
struct Stats {
    received: AtomicU64,
    /// Nanoseconds since `origin` of the last delivery.
    last_recv_ns: AtomicU64,
    origin: Instant,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    /// How many times each sequence arrived.
    counts: HashMap<u64, u32>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Sums `read` over every PID; `None` when there is none or one can't be read.
fn sum_over(pids: &[u32], read: fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| read(*p)).sum()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; read it from getconf
    // when available rather than assuming.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises the soft open-files limit to the hard limit.
fn raise_nofile() {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output();
    if let Ok(o) = out
        && let Ok(hard) = String::from_utf8_lossy(&o.stdout).trim().parse::<u64>()
    {
        #[cfg(target_os = "linux")]
        let _ = rlimit_set(hard);
    }
}

#[cfg(target_os = "linux")]
fn rlimit_set(n: u64) -> std::io::Result<()> {
    // SAFETY: `setrlimit(2)` only reads the struct it is given; `Rlimit` matches the
    // kernel's `struct rlimit` on 64-bit Linux (two `rlim_t`, which are u64), is fully
    // initialised and lives on the stack for the whole call. RLIMIT_NOFILE is 7 on
    // Linux. The call has no other effect on memory.
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    unsafe extern "C" {
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    let r = Rlimit { cur: n, max: n };
    // SAFETY: see above.
    let rc = unsafe { setrlimit(7, &r) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The source address of connection `i`: 127.0.0.1, then .2, … every 25,000.
fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 1 + (i / 25_000) as u8])
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn target(url: &str, i: usize) -> Target {
    let url = url.replace("{i}", &i.to_string());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|_| panic!("the URL needs IP:PORT: {url}"));
    Target {
        addr,
        host: hostport.to_string(),
        path,
    }
}

async fn connect(t: &Target, i: usize) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    // Binding before connect makes the kernel search for a free port per socket (slow
    // with thousands open); only extra source addresses are bound explicitly.
    if i >= 25_000 {
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::new(source(i), 0))?;
    }
    let stream = s.connect(t.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP response head: the status and whether the body is chunked.
struct Head {
    status: u16,
    chunked: bool,
}

/// Reads an HTTP response head; returns it and any bytes after it.
async fn read_head(s: &mut TcpStream) -> std::io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut b = [0u8; 1024];
    loop {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        buf.extend_from_slice(&b[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunked = head.lines().any(|l| {
                l.strip_prefix("transfer-encoding:")
                    .is_some_and(|v| v.contains("chunked"))
            });
            return Ok((Head { status, chunked }, buf[p + 4..].to_vec()));
        }
    }
}

fn ws_mask(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let key = [0x12u8, 0x34, 0x56, 0x78];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Undoes HTTP/1.1 chunked framing. A server may cut one event across chunks (pushpin
/// does, by flow-control credits); scanning the raw bytes would then read a chunk-size
/// line in the middle of a number.
#[derive(Default)]
struct Dechunk {
    /// Bytes left in the current chunk's data.
    left: usize,
    /// Bytes of the CRLF after a chunk's data still to skip.
    skip: usize,
    /// A size line not yet complete.
    line: Vec<u8>,
}

impl Dechunk {
    /// Appends the body bytes in `raw` to `out`.
    fn feed(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        while !raw.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(raw.len());
                self.skip -= n;
                raw = &raw[n..];
            } else if self.left > 0 {
                let n = self.left.min(raw.len());
                out.extend_from_slice(&raw[..n]);
                self.left -= n;
                raw = &raw[n..];
                if self.left == 0 {
                    self.skip = 2;
                }
            } else {
                let Some(nl) = raw.iter().position(|b| *b == b'\n') else {
                    self.line.extend_from_slice(raw);
                    return;
                };
                self.line.extend_from_slice(&raw[..nl]);
                raw = &raw[nl + 1..];
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or("").trim();
                // The last chunk (0) and trailers carry nothing for us.
                self.left = usize::from_str_radix(size, 16).unwrap_or(0);
            }
        }
    }
}

/// Opens one subscriber and returns its stream, bytes already read, and a de-chunker
/// when the response body is chunked.
async fn subscribe(
    args: &Args,
    i: usize,
    subject_index: usize,
) -> std::io::Result<(TcpStream, Vec<u8>, Option<Dechunk>)> {
    let t = target(&args.url, subject_index);
    let mut s = connect(&t, i).await?;
    let req = match args.transport {
        Transport::Sse => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            t.path, t.host
        ),
        Transport::Ws | Transport::NatsWs => {
            let key = base64::engine::general_purpose::STANDARD.encode((i as u128).to_be_bytes());
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                t.path, t.host
            )
        }
    };
    s.write_all(req.as_bytes()).await?;
    let (head, raw) = read_head(&mut s).await?;
    let want = if args.transport == Transport::Sse {
        200
    } else {
        101
    };
    if head.status != want {
        return Err(std::io::Error::other(format!("status {}", head.status)));
    }
    let (rest, dechunk) = if head.chunked && args.transport == Transport::Sse {
        let mut d = Dechunk::default();
        let mut body = Vec::new();
        d.feed(&raw, &mut body);
        (body, Some(d))
    } else {
        (raw, None)
    };
    if args.transport == Transport::NatsWs {
        let subject = args.subject.replace("{i}", &subject_index.to_string());
        let cmd = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
        );
        s.write_all(&ws_mask(cmd.as_bytes())).await?;
        // Subscribed once the PONG (after the SUB) arrives.
        let mut acc = rest;
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&acc).contains("PONG") {
            let n = s.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::other("nats closed"));
            }
            acc.extend_from_slice(&b[..n]);
        }
        return Ok((s, Vec::new(), None));
    }
    Ok((s, rest, dechunk))
}

/// Finds `"key":<digits>` in `text` from `from`.
fn find_num(text: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let pos = text[from..].windows(key.len()).position(|w| w == key)? + from + key.len();
    let mut end = pos;
    while end < text.len() && text[end].is_ascii_digit() {
        end += 1;
    }
    // Digits running to the end of what has arrived may be cut by a read boundary
    // (servers that split a message across writes): wait for the rest.
    if end == text.len() {
        return None;
    }
    Some((
        std::str::from_utf8(&text[pos..end]).ok()?.parse().ok()?,
        end,
    ))
}

/// Reads deliveries until `expected` arrived, the stream ends, or `stop` fires.
async fn receive(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    mut dechunk: Option<Dechunk>,
    expected: usize,
    stats: Arc<Stats>,
    nats_ws: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut b = vec![0u8; 16 * 1024];
    let mut scan_from = 0;
    let mut count = 0usize;
    loop {
        while let Some((seq, end)) = find_num(&buf, b"\"seq\":", scan_from) {
            let Some((ts, end2)) = find_num(&buf, b"\"ts\":", end) else {
                break;
            };
            let lat_us =
                ((now_ns().saturating_sub(ts as u128)) / 1000).min(u32::MAX as u128) as u32;
            stats.received.fetch_add(1, Ordering::Relaxed);
            stats
                .last_recv_ns
                .fetch_max(stats.origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            seen.latencies_us.push(lat_us);
            *seen.counts.entry(seq).or_insert(0) += 1;
            count += 1;
            scan_from = end2;
        }
        if count >= expected {
            return seen;
        }
        if nats_ws && buf.windows(4).any(|w| w == b"PING") {
            let _ = s.write_all(&ws_mask(b"PONG\r\n")).await;
            buf.clear();
            scan_from = 0;
        }
        if scan_from > 0 {
            buf.drain(..scan_from);
            scan_from = 0;
        }
        if buf.len() > 1 << 20 {
            buf.clear();
        }
        tokio::select! {
            r = s.read(&mut b) => match r {
                Ok(0) | Err(_) => return seen,
                Ok(n) => match dechunk.as_mut() {
                    Some(d) => d.feed(&b[..n], &mut buf),
                    None => buf.extend_from_slice(&b[..n]),
                },
            },
            _ = stop.wait_for(|s| *s) => return seen,
        }
    }
}

fn payload(seq: u64, pad: usize) -> String {
    format!(
        "{{\"seq\":{seq},\"ts\":{},\"pad\":\"{}\"}}",
        now_ns(),
        "x".repeat(pad)
    )
}

enum Publisher {
    Nats(async_nats::Client),
    Http(reqwest::Client, String, PublishFormat),
}

impl Publisher {
    async fn new(args: &Args) -> Publisher {
        if args.publish.starts_with("nats://") {
            let c = async_nats::connect(args.publish.as_str())
                .await
                .expect("NATS for publishing");
            Publisher::Nats(c)
        } else {
            let _ = fanfare::http_client();
            Publisher::Http(
                reqwest::Client::new(),
                args.publish.clone(),
                args.publish_format,
            )
        }
    }

    async fn send(&self, subject: &str, body: String) {
        match self {
            Publisher::Nats(c) => {
                let _ = c.publish(subject.to_string(), body.into()).await;
            }
            Publisher::Http(c, url, format) => {
                let url = url.replace("{subject}", subject);
                let body = match format {
                    PublishFormat::Raw => body,
                    PublishFormat::Pushpin => serde_json::json!({"items":[{"channel":subject,"formats":{"http-stream":{"content":format!("data: {body}\n\n")}}}]}).to_string(),
                };
                let _ = c.post(url).body(body).send().await;
            }
        }
    }

    async fn flush(&self) {
        if let Publisher::Nats(c) = self {
            let _ = c.flush().await;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    raise_nofile();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let subjects = if args.scenario == Scenario::Subjects {
        args.connections
    } else {
        1
    };
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        origin: Instant::now(),
    });
    let rss_before = sum_over(&args.server_pid, rss_kib);

    // Connect everyone, `concurrency` at a time.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let a = args.clone();
        let subject_index = if subjects > 1 { i } else { 0 };
        opening.push(tokio::spawn(async move {
            let r = subscribe(&a, i, subject_index).await;
            drop(permit);
            r
        }));
    }
    let mut streams = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    for h in opening {
        match h.await.expect("connect task") {
            Ok(s) => streams.push(Some(s)),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
                streams.push(None);
            }
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = args.connections - failed;
    // Let the server settle before reading its RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = sum_over(&args.server_pid, rss_kib);
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a.saturating_sub(b)) as f64 * 1024.0 / connected as f64)
        }
        _ => None,
    };

    let mut report = serde_json::json!({
        "label": args.label,
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "connections": args.connections,
        "connected": connected,
        "connect_failures": failed,
        "connect_seconds": connect_s,
        "connections_per_second": connected as f64 / connect_s.max(1e-9),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_bytes": rss_per_conn,
    });
    if let Some(e) = &first_error {
        report["first_error"] = serde_json::json!(e);
    }

    if matches!(args.scenario, Scenario::Fanout | Scenario::Subjects) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut receivers = Vec::new();
        for (stream, rest, dechunk) in streams.into_iter().flatten() {
            receivers.push(tokio::spawn(receive(
                stream,
                rest,
                dechunk,
                args.messages,
                stats.clone(),
                args.transport == Transport::NatsWs,
                stop_rx.clone(),
            )));
        }
        let publisher = Publisher::new(&args).await;
        let cpu0 = sum_over(&args.server_pid, cpu_ticks);
        let pub_start = Instant::now();
        let gap = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
        let mut next = tokio::time::Instant::now();
        for seq in 0..args.messages as u64 {
            for s in 0..subjects {
                let subject = args.subject.replace("{i}", &s.to_string());
                publisher.send(&subject, payload(seq, args.payload)).await;
            }
            if let Some(g) = gap {
                next += g;
                tokio::time::sleep_until(next).await;
            }
        }
        publisher.flush().await;
        let publish_s = pub_start.elapsed().as_secs_f64();
        // Every subscriber gets every message of its subject.
        let expected = (connected * args.messages) as u64;
        let mut last_progress = (0u64, Instant::now());
        loop {
            let got = stats.received.load(Ordering::Relaxed);
            if got >= expected || Instant::now() > deadline {
                break;
            }
            if got != last_progress.0 {
                last_progress = (got, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu1 = sum_over(&args.server_pid, cpu_ticks);
        stop_tx.send_replace(true);
        let received = stats.received.load(Ordering::Relaxed);
        let (mut lost, mut dup) = (0u64, 0u64);
        let mut lat = Vec::with_capacity(received as usize);
        for r in receivers {
            let seen = r.await.unwrap_or_default();
            for seq in 0..args.messages as u64 {
                match seen.counts.get(&seq) {
                    None => lost += 1,
                    Some(n) if *n > 1 => dup += u64::from(*n - 1),
                    _ => {}
                }
            }
            lat.extend(seen.latencies_us);
        }
        let last = Duration::from_nanos(stats.last_recv_ns.load(Ordering::Relaxed));
        let span = (stats.origin + last)
            .saturating_duration_since(pub_start)
            .as_secs_f64();
        lat.sort_unstable();
        let cpu_per_delivery_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) if received > 0 => {
                Some((b - a) as f64 / clk_tck() * 1e6 / received as f64)
            }
            _ => None,
        };
        report["messages"] = serde_json::json!(args.messages * subjects);
        report["publish_seconds"] = serde_json::json!(publish_s);
        report["expected_deliveries"] = serde_json::json!(expected);
        report["deliveries"] = serde_json::json!(received);
        report["deliveries_per_second"] = serde_json::json!(received as f64 / span.max(1e-9));
        report["lost"] = serde_json::json!(lost);
        report["duplicated"] = serde_json::json!(dup);
        report["latency_ms"] = serde_json::json!({
            "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().map_or(0.0, |m| *m as f64 / 1000.0)
        });
        report["server_cpu_us_per_delivery"] = serde_json::json!(cpu_per_delivery_us);
    }

    if args.json {
        println!("{report}");
    } else {
        print_human(&report);
    }
}

fn print_human(r: &serde_json::Value) {
    let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
    println!(
        "{} {} over {} ({} connections)",
        text("scenario"),
        text("label"),
        text("transport"),
        r["connections"]
    );
    println!(
        "  connected {} / {} in {:.2}s ({:.0}/s), failures {}",
        r["connected"],
        r["connections"],
        r["connect_seconds"].as_f64().unwrap_or(0.0),
        r["connections_per_second"].as_f64().unwrap_or(0.0),
        r["connect_failures"]
    );
    if let Some(e) = r.get("first_error") {
        println!("  first connect error: {e}");
    }
    if let Some(per) = r["rss_per_connection_bytes"].as_f64() {
        println!(
            "  server RSS {} KiB → {} KiB: {:.0} bytes ({:.2} KiB) per connection",
            r["rss_before_kib"],
            r["rss_after_kib"],
            per,
            per / 1024.0
        );
    }
    if r.get("deliveries").is_some() {
        println!(
            "  deliveries {} / {} expected, {:.0}/s; lost {}, duplicated {}",
            r["deliveries"],
            r["expected_deliveries"],
            r["deliveries_per_second"].as_f64().unwrap_or(0.0),
            r["lost"],
            r["duplicated"]
        );
        println!(
            "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["max"].as_f64().unwrap_or(0.0)
        );
        if let Some(c) = r["server_cpu_us_per_delivery"].as_f64() {
            println!("  server CPU {c:.2} µs per delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dechunk, find_num};

    #[test]
    fn dechunk_joins_an_event_cut_across_chunks_and_reads() {
        let body = b"data: {\"seq\":1,\"ts\":1234567}\n\n";
        // The event split into chunks of 13 and the rest, then fed in 3-byte reads.
        let (a, b) = body.split_at(13);
        let mut wire = format!("{:x}\r\n", a.len()).into_bytes();
        wire.extend_from_slice(a);
        wire.extend_from_slice(format!("\r\n{:x};ext=1\r\n", b.len()).as_bytes());
        wire.extend_from_slice(b);
        wire.extend_from_slice(b"\r\n");
        let mut d = Dechunk::default();
        let mut out = Vec::new();
        for piece in wire.chunks(3) {
            d.feed(piece, &mut out);
        }
        assert_eq!(out, body);
    }

    #[test]
    fn find_num_reads_a_complete_number() {
        let text = br#"data: {"seq":42,"ts":1700000000123,"pad":""}"#;
        let (seq, end) = find_num(text, b"\"seq\":", 0).expect("seq");
        assert_eq!(seq, 42);
        let (ts, _) = find_num(text, b"\"ts\":", end).expect("ts");
        assert_eq!(ts, 1_700_000_000_123);
    }

    #[test]
    fn find_num_waits_for_digits_cut_by_a_read() {
        // A read boundary inside the number: parsing "17" would give a bogus latency.
        let text = br#"data: {"seq":42,"ts":17"#;
        let (_, end) = find_num(text, b"\"seq\":", 0).expect("seq");
        assert_eq!(find_num(text, b"\"ts\":", end), None);
        assert_eq!(find_num(br#"{"seq":4"#, b"\"seq\":", 0), None);
    }
}
