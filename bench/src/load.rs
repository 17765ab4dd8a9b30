//! The HTTP load generator of `bench proxy`: keep-alive HTTP/1.1 over
//! loopback TCP, latencies in HDR histograms (microseconds).
//!
//! - Closed loop: `concurrency` connections, each sending its next request
//!   as soon as the previous answer is read, for a fixed time.
//! - Open loop: requests are due at a fixed rate whatever happens; a
//!   dispatcher thread releases each at its due time to a pool of
//!   connections, and latency counts from the due time, so a slow answer
//!   delays the ones queued behind it and nothing is hidden (no
//!   coordinated omission).
//!
//! Every loop is bounded in time and in count; every request has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

use crate::report::{micros_histogram, Latency};

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// No run sends more than this many requests, whatever its duration.
const MAX_REQUESTS: u64 = 20_000_000;

/// Where requests go.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Listener to connect to.
    pub addr: SocketAddr,
    /// `Host` header (the proxy routes on it).
    pub host: String,
    /// Request path.
    pub path: String,
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Latency of the measured requests (open loop: from the due time).
    pub latency: Latency,
    /// Open loop only: latency from the moment the request was written.
    pub service: Option<Latency>,
    /// Open loop only: how late the dispatcher released requests.
    pub dispatch_lag: Option<Latency>,
    /// Requests answered with 2xx in the measured window.
    pub ok: u64,
    /// Failed requests (connect errors, timeouts, non-2xx) in the window.
    pub errors: u64,
    /// Length of the measured window, in seconds.
    pub window_s: f64,
    /// Answered requests per second over the window.
    pub rps: f64,
    /// CPU time during the window, per answered request, in µs: this process
    /// (load generator, echo service, in-process sidecars) plus the external
    /// proxy's or agents' processes and the nginx service when there are.
    pub cpu_us_per_request: f64,
}

/// One keep-alive connection that reconnects after a failure.
struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Empty<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.target.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake failed")?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one GET and reads the whole answer; true on 2xx.
    async fn request(&mut self) -> bool {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange()).await;
        match outcome {
            Ok(Ok(ok)) => ok,
            _ => {
                // The connection may be in any state now: start afresh.
                self.sender = None;
                false
            }
        }
    }

    async fn exchange(&mut self) -> anyhow::Result<bool> {
        let request = Request::get(self.target.path.as_str())
            .header(http::header::HOST, self.target.host.as_str())
            .body(Empty::new())?;
        let sender = self.sender().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok(ok)
    }
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// CPU time (user + system) of process `pid` so far (zero if unreadable).
pub fn cpu_of(stat_path: &str) -> Duration {
    let ticks = std::fs::read_to_string(stat_path)
        .ok()
        .and_then(|text| {
            // Fields after the command name, which may hold spaces, in parentheses.
            let rest = text.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux the bench targets.
    Duration::from_millis(ticks * 10)
}

/// CPU of `pid` and its direct children (nginx's workers).
pub fn process_tree_cpu(pid: u32) -> Duration {
    let mut total = cpu_of(&format!("/proc/{pid}/stat"));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = format!("/proc/{child}/stat");
        let parent = std::fs::read_to_string(&stat).ok().and_then(|text| {
            let rest = text.rsplit_once(')')?.1.to_owned();
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
        if parent == Some(pid) {
            total += cpu_of(&stat);
        }
    }
    total
}

/// CPU time of this process plus that of the external processes (proxies,
/// agent processes) and their children.
pub fn cpu_now(external: &[u32]) -> Duration {
    process_cpu()
        + external
            .iter()
            .map(|&pid| process_tree_cpu(pid))
            .sum::<Duration>()
}

/// Sends one request on a fresh connection; true when it was answered 2xx.
pub async fn one_request(target: &Target) -> bool {
    Conn::new(Arc::new(target.clone())).request().await
}

/// Counters one worker keeps, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: micros_histogram(),
            service: micros_histogram(),
            ok: 0,
            errors: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.ok += other.ok;
        self.errors += other.errors;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Runs `concurrency` connections back to back for `warmup + duration`;
/// only the last `duration` is measured.
pub async fn closed_loop(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    external: &[u32],
) -> anyhow::Result<LoadResult> {
    let target = Arc::new(target.clone());
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let per_worker = MAX_REQUESTS / concurrency.max(1) as u64;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut tally = Tally::new();
            for _ in 0..per_worker {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let ok = conn.request().await;
                if sent >= measure_from {
                    let _ = tally.latency.record(micros(sent.elapsed()));
                    if ok {
                        tally.ok += 1;
                    } else {
                        tally.errors += 1;
                    }
                }
            }
            tally
        }));
    }
    // Sample this process's CPU at the window's edges.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = cpu_now(external);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_now(external).saturating_sub(cpu_start);
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await.context("a load worker panicked")?);
    }
    Ok(summarise(total, duration, cpu, None, None))
}

fn summarise(
    tally: Tally,
    window: Duration,
    cpu: Duration,
    service: Option<Latency>,
    lag: Option<Latency>,
) -> LoadResult {
    let window_s = window.as_secs_f64();
    LoadResult {
        latency: Latency::from_histogram(&tally.latency),
        service,
        dispatch_lag: lag,
        ok: tally.ok,
        errors: tally.errors,
        window_s,
        rps: tally.ok as f64 / window_s.max(1e-9),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / tally.ok.max(1) as f64,
    }
}

/// Sends `rate` requests per second for `warmup + duration` over up to
/// `connections` connections; only requests due in the last `duration`
/// are measured, from their due time.
pub async fn open_loop(
    target: &Target,
    rate: u32,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    external: &[u32],
) -> anyhow::Result<LoadResult> {
    let rate = rate.max(1);
    let target = Arc::new(target.clone());
    let total_requests = ((warmup + duration).as_secs_f64() * f64::from(rate)).ceil() as u64;
    let total_requests = total_requests.min(MAX_REQUESTS);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;

    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..connections.max(1) {
        let target = target.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut tally = Tally::new();
            loop {
                let due = {
                    let mut rx = rx.lock().await;
                    rx.recv().await
                };
                let Some(due) = due else { break };
                let sent = Instant::now();
                let ok = conn.request().await;
                if due >= measure_from && due < end {
                    let _ = tally.latency.record(micros(due.elapsed()));
                    let _ = tally.service.record(micros(sent.elapsed()));
                    if ok {
                        tally.ok += 1;
                    } else {
                        tally.errors += 1;
                    }
                }
            }
            tally
        }));
    }

    // The dispatcher sleeps on an OS thread: tokio's timer wheel has a 1 ms
    // granularity, far too coarse for microsecond latencies.
    let dispatcher = std::thread::spawn(move || {
        let mut lag = micros_histogram();
        for i in 0..total_requests {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = lag.record(micros(due.elapsed()));
            if tx.send(due).is_err() {
                break;
            }
        }
        lag
    });

    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = cpu_now(external);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_now(external).saturating_sub(cpu_start);
    let lag = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .context("the dispatcher thread could not be joined")?
        .map_err(|_| anyhow!("the dispatcher thread panicked"))?;
    let mut total = Tally::new();
    for worker in workers {
        total.merge(worker.await.context("a load worker panicked")?);
    }
    let service = Latency::from_histogram(&total.service);
    Ok(summarise(
        total,
        duration,
        cpu,
        Some(service),
        Some(Latency::from_histogram(&lag)),
    ))
}
