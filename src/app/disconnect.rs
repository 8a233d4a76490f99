//! Disconnect callbacks: a bounded queue sent in the background, so a session never
//! waits for the app when it ends.
//!
//! Invariants: [`Disconnects::push`] never waits (past [`QUEUE`] jobs it drops and
//! counts); each job is tried up to [`ATTEMPTS`] times with doubling backoff (a 4xx
//! answer is final); at most [`CONCURRENCY`] are in flight; on shutdown
//! [`Disconnects::flush`] waits for the queue to empty, bounded by the grace deadline,
//! and counts what is left as dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::metrics::Metrics;
use crate::routing::path::Params;

/// Disconnect callbacks queued at most.
pub const QUEUE: usize = 10_000;
/// Tries per callback.
pub const ATTEMPTS: u32 = 4;
/// Callbacks in flight at once.
pub const CONCURRENCY: usize = 32;
/// The first retry's delay (doubling after).
const BACKOFF: Duration = Duration::from_millis(100);

/// A connection that ended, as the disconnect callback reports it.
pub struct Ended<'a> {
    /// Its id.
    pub id: &'a str,
    /// The route's path parameters.
    pub params: &'a Params,
    /// `ws` or `sse`.
    pub transport: &'static str,
    /// Why it ended (`client_closed`, `slow_consumer`, `expired`, `shutdown`, …).
    pub reason: &'static str,
    /// How long it was held.
    pub duration: Duration,
    /// Events written to it.
    pub delivered: u64,
}

struct Job {
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
}

/// The process's disconnect queue. Cloning shares it.
#[derive(Clone)]
pub struct Disconnects {
    tx: mpsc::Sender<Job>,
    /// Queued or in flight.
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
    metrics: Metrics,
}

impl Disconnects {
    /// Starts the sender task.
    pub fn start(http: reqwest::Client, metrics: &Metrics) -> Disconnects {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let d = Disconnects {
            tx,
            pending: Arc::default(),
            idle: Arc::default(),
            metrics: metrics.clone(),
        };
        let this = d.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(CONCURRENCY));
            while let Some(job) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (http, this) = (http.clone(), this.clone());
                tokio::spawn(async move {
                    this.send(&http, job).await;
                    drop(slot);
                    this.done();
                });
            }
        });
        d
    }

    fn done(&self) {
        let left = self.pending.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.app_disconnect_queue.set(left as i64);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Queues a callback; drops it (counted) when the queue is full.
    pub fn push(
        &self,
        url: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        timeout: Duration,
    ) {
        let n = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        let job = Job {
            url,
            headers,
            body,
            timeout,
        };
        if self.tx.try_send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .app_disconnect_dropped
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        self.metrics.app_disconnect_queue.set(n as i64);
    }

    async fn send(&self, http: &reqwest::Client, job: Job) {
        let mut delay = BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let started = Instant::now();
            let mut call = http
                .post(&job.url)
                .timeout(job.timeout)
                .header(http::header::CONTENT_TYPE, "application/json");
            for (k, v) in &job.headers {
                call = call.header(k.clone(), v.clone());
            }
            let outcome = match call.body(job.body.clone()).send().await {
                Ok(r) if r.status().is_success() => "ok",
                Ok(r) if r.status().is_client_error() => "refused",
                Ok(_) => "app_error",
                Err(e) if e.is_timeout() => "timeout",
                Err(_) => "unavailable",
            };
            self.metrics
                .app_callback_duration
                .with_label_values(&["disconnect"])
                .observe(started.elapsed().as_secs_f64());
            let last = attempt == ATTEMPTS || matches!(outcome, "ok" | "refused");
            self.metrics
                .app_callbacks
                .with_label_values(&["disconnect", if last { outcome } else { "retry" }])
                .inc();
            if last {
                if outcome != "ok" && outcome != "refused" {
                    tracing::warn!(outcome, "disconnect callback given up after retries");
                    self.metrics
                        .app_disconnect_dropped
                        .with_label_values(&["failed"])
                        .inc();
                }
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// Callbacks queued or in flight.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every queued callback is sent, or `deadline`; what is left then is
    /// counted as dropped (`shutdown`). Returns how many were left.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let idle = self.idle.notified();
            let left = self.pending();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left = self.pending();
                if left > 0 {
                    tracing::warn!(
                        left,
                        "disconnect callbacks not sent before the grace ran out"
                    );
                    self.metrics
                        .app_disconnect_dropped
                        .with_label_values(&["shutdown"])
                        .inc_by(left as u64);
                }
                return left;
            }
        }
    }
}
