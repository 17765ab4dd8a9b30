//! `bench dns`: answer latency of the agent's DNS front under an open-loop
//! load (default 1,000 queries/s for 10 s) from one UDP client on loopback.
//!
//! One in-process agent with a few instances of a service; the client sends
//! `NAME.service.gossamer` A and SRV queries alternately on a fixed schedule
//! (not waiting for answers, so a slow answer cannot lower the load) and
//! times each answer from the moment its query left. Sends never wait for
//! the agent, so timing from the send hides no queueing; tokio's 1 ms timer
//! only makes the schedule bursty, which the achieved rate shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::report::{self, fmt_us, Latency, Table};

/// Options of `bench dns`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct DnsArgs {
    /// Queries per second (open loop).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Instances of the queried service (all on the agent's node).
    #[arg(long, default_value_t = 3)]
    pub instances: u16,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// Everything `bench dns` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DnsResults {
    /// Queries sent.
    pub sent: u64,
    /// Answers received (NOERROR with records).
    pub answered: u64,
    /// Queries with no answer within 1 s of the end of the load.
    pub lost: u64,
    /// Achieved send rate, queries/s.
    pub achieved_rate: f64,
    /// Answer latency from the send of the query.
    pub latency: Latency,
    /// CPU seconds the whole process (agent and client) used per 1,000 queries.
    pub cpu_ms_per_1k: f64,
}

const SERVICE: &str = "bench-dns";

/// A standard query for `SERVICE.service.gossamer` of type `qtype`, id `id`.
fn query(id: u16, qtype: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in [SERVICE, "service", "gossamer"] {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// Runs `bench dns`.
pub async fn run(args: &DnsArgs) -> anyhow::Result<DnsResults> {
    if !(1..=100_000).contains(&args.rate) || !(0.1..=600.0).contains(&args.seconds) {
        bail!("--rate must be from 1 to 100000 queries/s and --seconds from 0.1 to 600");
    }
    if !(1..=100).contains(&args.instances) {
        bail!("--instances must be from 1 to 100");
    }
    let mut config = sidecar::demo::local_config("bench-dns", Vec::new(), Vec::new());
    config.dns_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // The ports need not listen: DNS reads the catalog and calls nothing.
    config.services = (0..args.instances)
        .map(|i| (SERVICE.to_owned(), 30_000 + i))
        .collect();
    let running = sidecar::agent::start(config).await?;
    let dns = running
        .agent
        .listeners
        .dns
        .context("the agent started without its DNS listener")?;
    let result = measure(args, dns).await;
    running.stop().await;
    let results = result?;

    let mut table = Table::new(&[
        "rate", "sent", "answered", "lost", "p50", "p99", "p99.9", "max", "CPU/1k",
    ]);
    table.row(vec![
        format!("{:.0}/s", results.achieved_rate),
        results.sent.to_string(),
        results.answered.to_string(),
        results.lost.to_string(),
        fmt_us(results.latency.p50_us as f64),
        fmt_us(results.latency.p99_us as f64),
        fmt_us(results.latency.p999_us as f64),
        fmt_us(results.latency.max_us as f64),
        format!("{:.1} ms", results.cpu_ms_per_1k),
    ]);
    println!("DNS answer latency, one UDP client on loopback, A and SRV alternately:\n");
    println!("{}", table.render());
    let name = format!("dns-{}qps", args.rate);
    let path = report::write_json(&args.out, &name, "dns", args, &results)?;
    println!("raw results: {}", path.display());
    Ok(results)
}

async fn measure(args: &DnsArgs, dns: SocketAddr) -> anyhow::Result<DnsResults> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    socket.connect(dns).await?;
    // One warm-up answer, so the first sample is not the agent's first query.
    socket.send(&query(0, 1)).await?;
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .context("the agent's DNS front did not answer a first query within 5 s")??;

    let total = (f64::from(args.rate) * args.seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    // Send time of each query, by id (ids wrap at 65,536: a
    // sample is taken only when the id's slot still holds its own send).
    let scheduled: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; 65_536]));
    let histogram = Arc::new(Mutex::new(report::micros_histogram()));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let receiver = {
        let (socket, scheduled, histogram, answered) = (
            socket.clone(),
            scheduled.clone(),
            histogram.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let now = Instant::now();
                // NOERROR with at least one answer record.
                if n < 12 || buf[3] & 0x0f != 0 || u16::from_be_bytes([buf[6], buf[7]]) == 0 {
                    continue;
                }
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let sent = scheduled.lock().unwrap_or_else(|p| p.into_inner())[id].take();
                if let Some(sent) = sent {
                    let us = now.saturating_duration_since(sent).as_micros().max(1);
                    let _ = histogram
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(u64::try_from(us).unwrap_or(u64::MAX));
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };

    let cpu_before = crate::load::process_cpu();
    let start = Instant::now();
    let packets = [query(0, 1), query(0, 33)];
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let id = (i % 65_536) as u16;
        let mut packet = packets[(i % 2) as usize].clone();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        scheduled.lock().unwrap_or_else(|p| p.into_inner())[usize::from(id)] = Some(Instant::now());
        // A full socket buffer counts as a lost query, not an error.
        let _ = socket.send(&packet).await;
    }
    let send_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = crate::load::process_cpu().saturating_sub(cpu_before);
    receiver.abort();

    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    let latency = Latency::from_histogram(&histogram.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(DnsResults {
        sent: total,
        answered,
        lost: total.saturating_sub(answered),
        achieved_rate: total as f64 / send_time.as_secs_f64().max(1e-9),
        latency,
        cpu_ms_per_1k: cpu.as_secs_f64() * 1_000.0 * 1_000.0 / total.max(1) as f64,
    })
}
