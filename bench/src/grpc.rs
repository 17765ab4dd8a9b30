//! `bench grpc`: gRPC unary calls, direct and through one and two
//! sidecars, as issue 15 asks ("gRPC unary through two sidecars at
//! concurrency 32: req/s ratio to direct ≥ 0.35, p99 ≤ 2 ms").
//!
//! The service and the load generator speak gRPC's wire format over h2c
//! with hyper (as ghz does): a POST with `content-type: application/grpc`,
//! a 5-byte-prefixed message, the answer's message and `grpc-status: 0` in
//! its trailers. The service echoes the message. A call counts as done only
//! when its trailers say OK. Every loop is bounded in time and count.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use sidecar::agent::RunningAgent;

use crate::agent_proc::{find_binary, AgentProcess};
use crate::proxy::paths::{self, SERVICE};
use crate::report::{self, fmt_us, micros_histogram, Latency, Table};

/// Options of `bench grpc`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct GrpcArgs {
    /// Calls in flight at once (the closed loop's workers).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Rounds over every path; each figure is the median over the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Paths besides direct, comma-separated, from: sidecar, two-sidecars
    /// (in this process), sidecar-proc, two-sidecars-proc (`gossamer agent`
    /// processes).
    #[arg(long, value_delimiter = ',', default_values_t = PATHS.map(String::from))]
    pub paths: Vec<String>,
    /// The `gossamer` binary for the -proc paths [default: next to this binary].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// Every path but direct.
pub const PATHS: [&str; 4] = [
    "sidecar",
    "two-sidecars",
    "sidecar-proc",
    "two-sidecars-proc",
];

/// No run sends more than this many calls, whatever its duration.
const MAX_CALLS: u64 = 10_000_000;
/// Longest one call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The message each call carries (and gets back).
const MESSAGE: &[u8] = b"gossamer bench grpc unary";

/// One path's medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcPath {
    /// Path name.
    pub path: String,
    /// Calls answered OK per second, per round.
    pub rps: Vec<f64>,
    /// Median req/s over the rounds.
    pub rps_median: f64,
    /// Median of the rounds' p50, µs.
    pub p50_us: u64,
    /// Median of the rounds' p99, µs.
    pub p99_us: u64,
    /// Calls that failed, over all rounds.
    pub errors: u64,
}

/// What one closed-loop run measured.
struct Run {
    rps: f64,
    latency: Latency,
    errors: u64,
}

/// Runs the scenario, prints the table and writes `grpc.json`.
pub async fn run(args: &GrpcArgs) -> anyhow::Result<Vec<GrpcPath>> {
    for path in &args.paths {
        if !PATHS.contains(&path.as_str()) {
            bail!("unknown path {path:?}; choose from {}", PATHS.join(", "));
        }
    }
    let service = start_service().await?;
    let mut names = vec!["direct".to_owned()];
    names.extend(args.paths.iter().cloned());
    let mut runs: Vec<Vec<Run>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds.max(1) {
        for (i, name) in names.iter().enumerate() {
            let run = measure_path(args, name, service)
                .await
                .with_context(|| format!("path {name}, round {}", round + 1))?;
            eprintln!(
                "round {} {name}: {:.0} calls/s, p99 {}",
                round + 1,
                run.rps,
                fmt_us(run.latency.p99_us as f64)
            );
            runs[i].push(run);
        }
    }
    let results: Vec<GrpcPath> = names
        .iter()
        .zip(runs)
        .map(|(name, runs)| summarise(name, &runs))
        .collect();
    let direct = results.first().map_or(1.0, |d| d.rps_median.max(1e-9));
    let mut table = Table::new(&["path", "calls/s", "ratio", "p50", "p99", "errors"]);
    for r in &results {
        table.row(vec![
            r.path.clone(),
            format!("{:.0}", r.rps_median),
            format!("{:.2}", r.rps_median / direct),
            fmt_us(r.p50_us as f64),
            fmt_us(r.p99_us as f64),
            r.errors.to_string(),
        ]);
    }
    println!("{}", table.render());
    let path = report::write_json(&args.out, "grpc", "grpc", args, &results)?;
    println!("results: {}", path.display());
    Ok(results)
}

async fn measure_path(args: &GrpcArgs, name: &str, service: SocketAddr) -> anyhow::Result<Run> {
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let load = |target| closed_loop(target, args.concurrency, args.connections, warmup, duration);
    match name {
        "direct" => load(service).await,
        "sidecar" | "two-sidecars" => {
            let (proxy, agents) = if name == "sidecar" {
                paths::one_sidecar(service).await?
            } else {
                paths::two_sidecars(service).await?
            };
            let run = async {
                define_grpc_in_process(&agents).await?;
                load(proxy).await
            }
            .await;
            paths::stop_agents(agents).await;
            run
        }
        _ => {
            let binary = find_binary(args.agent_bin.as_deref()).context(
                "no gossamer binary for the -proc paths: build it (cargo build --release -p sidecar) or pass --agent-bin",
            )?;
            let (proxy, mut agents) = if name == "sidecar-proc" {
                paths::spawn_one_sidecar_process(&binary, service).await?
            } else {
                paths::spawn_two_sidecars_process(&binary, service).await?
            };
            let run = async {
                define_grpc_process(&agents, proxy).await?;
                load(proxy).await
            }
            .await;
            for agent in &mut agents {
                agent.stop().await;
            }
            run
        }
    }
}

/// The bench service's definition, speaking gRPC (h2c to its instance).
fn definition() -> mesh_proto::catalog::Definition {
    mesh_proto::catalog::Definition {
        name: SERVICE.to_owned(),
        version: "1".to_owned(),
        protocol: mesh_proto::Protocol::Grpc,
        ..Default::default()
    }
}

/// Writes the gRPC definition on the callee and waits until every agent's
/// catalog has it.
async fn define_grpc_in_process(agents: &[RunningAgent]) -> anyhow::Result<()> {
    let callee = agents.last().context("no agent")?;
    callee
        .agent
        .registry
        .put_definition(definition())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write the bench definition: {e:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for agent in agents {
        while agent
            .agent
            .catalog
            .snapshot()
            .definition(SERVICE)
            .map(|d| d.protocol)
            != Some(mesh_proto::Protocol::Grpc)
        {
            if Instant::now() > deadline {
                bail!("the gRPC definition did not reach every agent within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Writes the gRPC definition through the callee's admin API and waits
/// until a call through `proxy` succeeds.
async fn define_grpc_process(agents: &[AgentProcess], proxy: SocketAddr) -> anyhow::Result<()> {
    let callee = agents.last().context("no agent")?;
    let client = client::Client::new(&format!("http://{}", callee.addrs.admin))?;
    client
        .put_definition(&definition())
        .await
        .context("cannot write the bench definition")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connection = connect(proxy).await?;
    while !call(&mut connection).await {
        if Instant::now() > deadline {
            bail!("no gRPC call through {proxy} succeeded within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if connection.is_closed() {
            connection = connect(proxy).await?;
        }
    }
    Ok(())
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One unary call; true when it ended with `grpc-status: 0`.
async fn call(sender: &mut Sender) -> bool {
    let exchange = async {
        sender.ready().await.ok()?;
        let mut body = Vec::with_capacity(5 + MESSAGE.len());
        body.push(0);
        body.extend_from_slice(&(MESSAGE.len() as u32).to_be_bytes());
        body.extend_from_slice(MESSAGE);
        let request = Request::post(format!("http://{SERVICE}.localhost/bench.Echo/Unary"))
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let trailers_only = grpc_ok(response.headers());
        let collected = response.into_body().collect().await.ok()?;
        Some(trailers_only || collected.trailers().is_some_and(grpc_ok))
    };
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, exchange).await,
        Ok(Some(true))
    )
}

fn grpc_ok(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v == "0")
}

/// `concurrency` workers over `connections` HTTP/2 connections, each
/// calling again as soon as its answer is in.
async fn closed_loop(
    target: SocketAddr,
    concurrency: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Run> {
    let mut senders = Vec::new();
    for _ in 0..connections.max(1) {
        senders.push(connect(target).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let per_worker = MAX_CALLS / concurrency.max(1) as u64;
    let mut workers = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut sender = senders[i % senders.len()].clone();
        workers.push(tokio::spawn(async move {
            let mut latency = micros_histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            for _ in 0..per_worker {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let done = call(&mut sender).await;
                if sent >= measure_from {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = latency.record(micros.max(1));
                    if done {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (latency, ok, errors)
        }));
    }
    let mut latency: Histogram<u64> = micros_histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    for worker in workers {
        let (h, o, e) = worker.await.context("a gRPC load worker panicked")?;
        latency.add(&h).context("merging latency histograms")?;
        ok += o;
        errors += e;
    }
    Ok(Run {
        rps: ok as f64 / duration.as_secs_f64(),
        latency: Latency::from_histogram(&latency),
        errors,
    })
}

fn summarise(name: &str, runs: &[Run]) -> GrpcPath {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
    GrpcPath {
        path: name.to_owned(),
        rps_median: median(rps.clone()),
        rps,
        p50_us: median(runs.iter().map(|r| r.latency.p50_us as f64).collect()) as u64,
        p99_us: median(runs.iter().map(|r| r.latency.p99_us as f64).collect()) as u64,
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// The gRPC service: h2c on a free loopback port, echoing each call's
/// message with `grpc-status: 0` in the trailers.
async fn start_service() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot bind the gRPC bench service on loopback")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(echo);
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type EchoBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

async fn echo(request: Request<Incoming>) -> Result<Response<EchoBody>, hyper::Error> {
    let message = request.into_body().collect().await?.to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_to_the_bench_service_ends_with_grpc_status_ok() {
        let service = start_service().await.expect("service");
        let mut sender = connect(service).await.expect("connect");
        assert!(call(&mut sender).await);
    }
}
