//! `bench proxy`: the cost of the sidecar on the request path.
//!
//! The same load, an HTTP echo service on loopback, goes through each path
//! in turn: (a) direct, (b) one local sidecar (the instance is on its node),
//! (c) two sidecars over QUIC with mutual TLS, (d) nginx and (e) HAProxy as
//! local reverse proxies with keep-alive upstreams. Each path gets a closed
//! loop at fixed concurrency and an open loop at a fixed rate; every figure
//! comes from one run on one machine, with ratios to direct.

mod external;
mod paths;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::load::{closed_loop, open_loop, LoadResult, Target};
use crate::report::{self, fmt_us, Table};
use external::Kind;

/// Options of `bench proxy`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ProxyArgs {
    /// Connections of the closed loop.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second of the open loop.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Connections the open loop may use.
    #[arg(long, default_value_t = 64)]
    pub open_connections: usize,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before each run (connections, caches, QUIC warm up).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Paths to measure, comma-separated (direct is always measured first).
    #[arg(long, value_delimiter = ',', default_values_t = ["sidecar".to_string(), "two-sidecars".to_string(), "nginx".to_string(), "haproxy".to_string()])]
    pub paths: Vec<String>,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// The measurements of one path.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// Short name.
    pub name: String,
    /// What the request crosses.
    pub description: String,
    /// Closed loop at fixed concurrency.
    pub closed: LoadResult,
    /// Open loop at a fixed rate.
    pub open: LoadResult,
    /// Closed-loop requests/s divided by direct's.
    pub rps_ratio: f64,
    /// Closed-loop p99 divided by direct's.
    pub p99_ratio: f64,
    /// Open-loop p50 minus direct's, in µs.
    pub added_p50_us: i64,
    /// Open-loop p99 minus direct's, in µs.
    pub added_p99_us: i64,
}

/// One target of issue 10 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// The target, in words.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measurable in this run (None).
    pub met: Option<bool>,
}

/// Everything `bench proxy` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyResults {
    /// Every path measured, direct first.
    pub paths: Vec<PathResult>,
    /// Paths skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Issue 10's targets.
    pub targets: Vec<TargetCheck>,
}

enum Guard {
    None,
    Agents(Vec<sidecar::agent::RunningAgent>),
    External(external::External),
}

/// Runs `bench proxy`.
pub async fn run(args: &ProxyArgs) -> anyhow::Result<ProxyResults> {
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency {} must be from 1 to 4096", args.concurrency);
    }
    if !(0.1..=3600.0).contains(&args.duration) || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--duration must be from 0.1 to 3600 s and --warmup from 0 to 600 s");
    }
    let echo = paths::start_echo().await?;
    let mut results: Vec<PathResult> = Vec::new();
    let mut skipped = Vec::new();
    let mut names = vec!["direct".to_string()];
    names.extend(args.paths.iter().filter(|p| *p != "direct").cloned());
    for name in names {
        let (addr, description, guard) = match name.as_str() {
            "direct" => (echo, "client → echo".to_owned(), Guard::None),
            "sidecar" => {
                let (addr, agents) = paths::one_sidecar(echo).await?;
                (
                    addr,
                    "client → sidecar → echo (same node)".to_owned(),
                    Guard::Agents(agents),
                )
            }
            "two-sidecars" => {
                let (addr, agents) = paths::two_sidecars(echo).await?;
                (
                    addr,
                    "client → sidecar ⇒ QUIC+mTLS ⇒ sidecar → echo".to_owned(),
                    Guard::Agents(agents),
                )
            }
            "nginx" | "haproxy" => {
                let kind = if name == "nginx" {
                    Kind::Nginx
                } else {
                    Kind::Haproxy
                };
                let Some(binary) = kind.find() else {
                    println!("{}: {}", kind.name(), kind.missing_note());
                    skipped.push((name.clone(), kind.missing_note()));
                    continue;
                };
                let proxy = external::start(kind, &binary, echo).await?;
                (
                    proxy.addr,
                    format!("client → {} → echo (keep-alive upstream)", kind.name()),
                    Guard::External(proxy),
                )
            }
            other => {
                bail!("unknown path {other:?}; choose from sidecar, two-sidecars, nginx, haproxy")
            }
        };
        let measured = measure(args, &name, &description, addr, &guard, results.first()).await;
        match guard {
            Guard::Agents(agents) => paths::stop_agents(agents).await,
            Guard::External(proxy) => drop(proxy),
            Guard::None => {}
        }
        results.push(measured?);
    }
    let targets = check_targets(&results);
    print_tables(args, &results, &skipped, &targets);
    let out = ProxyResults {
        paths: results,
        skipped,
        targets,
    };
    let path = report::write_json(&args.out, "proxy", "proxy", args, &out)?;
    println!("\nwrote {}", path.display());
    Ok(out)
}

async fn measure(
    args: &ProxyArgs,
    name: &str,
    description: &str,
    addr: SocketAddr,
    guard: &Guard,
    direct: Option<&PathResult>,
) -> anyhow::Result<PathResult> {
    let target = Target {
        addr,
        host: format!("{}.localhost", paths::SERVICE),
        path: "/".to_owned(),
    };
    let external = match guard {
        Guard::External(proxy) => Some(proxy.pid()),
        _ => None,
    };
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    println!("{name}: closed loop, {} connections...", args.concurrency);
    let closed = closed_loop(&target, args.concurrency, warmup, duration, external).await?;
    println!("{name}: open loop, {} requests/s...", args.rate);
    let open = open_loop(
        &target,
        args.rate,
        args.open_connections,
        warmup,
        duration,
        external,
    )
    .await?;
    if closed.ok == 0 || open.ok == 0 {
        bail!(
            "no request through {name} ({addr}) succeeded ({} closed-loop and {} open-loop errors); \
             the path is broken",
            closed.errors,
            open.errors
        );
    }
    let (rps_ratio, p99_ratio, added_p50_us, added_p99_us) = match direct {
        Some(d) => (
            closed.rps / d.closed.rps.max(1e-9),
            closed.latency.p99_us as f64 / (d.closed.latency.p99_us.max(1)) as f64,
            open.latency.p50_us as i64 - d.open.latency.p50_us as i64,
            open.latency.p99_us as i64 - d.open.latency.p99_us as i64,
        ),
        None => (1.0, 1.0, 0, 0),
    };
    Ok(PathResult {
        name: name.to_owned(),
        description: description.to_owned(),
        closed,
        open,
        rps_ratio,
        p99_ratio,
        added_p50_us,
        added_p99_us,
    })
}

fn check_targets(results: &[PathResult]) -> Vec<TargetCheck> {
    let find = |name: &str| results.iter().find(|r| r.name == name);
    let (sidecar, two, haproxy) = (find("sidecar"), find("two-sidecars"), find("haproxy"));
    let mut out = Vec::new();
    let mut check = |target: &str, measured: String, met: Option<bool>| {
        out.push(TargetCheck {
            target: target.to_owned(),
            measured,
            met,
        });
    };
    match (sidecar, haproxy) {
        (Some(s), Some(h)) => {
            check(
                "one sidecar: req/s ratio to direct at least HAProxy's",
                format!("{:.3} vs HAProxy {:.3}", s.rps_ratio, h.rps_ratio),
                Some(s.rps_ratio >= h.rps_ratio),
            );
            check(
                "one sidecar: p99 no higher than HAProxy's",
                format!(
                    "{} vs HAProxy {}",
                    fmt_us(s.closed.latency.p99_us as f64),
                    fmt_us(h.closed.latency.p99_us as f64)
                ),
                Some(s.closed.latency.p99_us <= h.closed.latency.p99_us),
            );
        }
        _ => check(
            "one sidecar against HAProxy",
            "not measured (sidecar or haproxy path absent)".to_owned(),
            None,
        ),
    }
    if let Some(t) = two {
        check(
            "two sidecars: at least 0.35 of direct req/s",
            format!("{:.3}", t.rps_ratio),
            Some(t.rps_ratio >= 0.35),
        );
        check(
            "two sidecars: p99 at most 2 ms at the closed-loop concurrency",
            fmt_us(t.closed.latency.p99_us as f64),
            Some(t.closed.latency.p99_us <= 2_000),
        );
        check(
            "two sidecars: p50 added at most 150 µs in the open loop",
            format!("{} µs", t.added_p50_us),
            Some(t.added_p50_us <= 150),
        );
    }
    out
}

fn print_tables(
    args: &ProxyArgs,
    results: &[PathResult],
    skipped: &[(String, String)],
    targets: &[TargetCheck],
) {
    let mut closed = Table::new(&[
        "path",
        "req/s",
        "vs direct",
        "p50",
        "p99",
        "p99.9",
        "p99 vs direct",
        "errors",
        "CPU/req",
    ]);
    let mut open = Table::new(&[
        "path",
        "p50",
        "p99",
        "p99.9",
        "added p50",
        "added p99",
        "errors",
        "CPU/req",
    ]);
    for r in results {
        let c = &r.closed;
        closed.row(vec![
            r.name.clone(),
            format!("{:.0}", c.rps),
            format!("{:.2}", r.rps_ratio),
            fmt_us(c.latency.p50_us as f64),
            fmt_us(c.latency.p99_us as f64),
            fmt_us(c.latency.p999_us as f64),
            format!("{:.2}", r.p99_ratio),
            c.errors.to_string(),
            fmt_us(c.cpu_us_per_request),
        ]);
        let o = &r.open;
        open.row(vec![
            r.name.clone(),
            fmt_us(o.latency.p50_us as f64),
            fmt_us(o.latency.p99_us as f64),
            fmt_us(o.latency.p999_us as f64),
            format!("{} µs", r.added_p50_us),
            format!("{} µs", r.added_p99_us),
            o.errors.to_string(),
            fmt_us(o.cpu_us_per_request),
        ]);
    }
    println!(
        "\nClosed loop: {} connections, {} s measured",
        args.concurrency, args.duration
    );
    print!("{}", closed.render());
    println!(
        "\nOpen loop: {} requests/s, latency from the due time, {} s measured",
        args.rate, args.duration
    );
    print!("{}", open.render());
    for (name, why) in skipped {
        println!("{name}: {why}");
    }
    println!("\nTargets (issue 10)");
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!("  [{verdict:>6}] {}: {}", t.target, t.measured);
    }
}
