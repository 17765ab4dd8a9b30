//! `bench proxy`: the cost of the sidecar on the request path.
//!
//! The same load, an HTTP echo service on loopback, goes through each path
//! in turn: (a) direct, (b) one local sidecar (the instance is on its node),
//! (c) two sidecars over QUIC with mutual TLS, (d) nginx and (e) HAProxy as
//! local reverse proxies with keep-alive upstreams. Each path gets a closed
//! loop at fixed concurrency and an open loop at a fixed rate; every figure
//! comes from one run on one machine, with ratios to direct.

mod external;
pub mod paths;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::load::{closed_loop, open_loop, LoadResult, Target};
use crate::report::{self, fmt_us, Latency, Table};
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
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Rounds over every path; each figure is the median over the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Unmeasured seconds before each run (connections, caches, QUIC warm up).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Paths to measure, comma-separated, from: sidecar, two-sidecars (in
    /// this process), sidecar-proc, two-sidecars-proc (`gossamer agent`
    /// processes), nginx, haproxy. Direct is always measured first.
    #[arg(long, value_delimiter = ',', default_values_t = PATHS.map(String::from))]
    pub paths: Vec<String>,
    /// The `gossamer` binary for the -proc paths [default: next to this binary].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// The service behind every path: `echo`, the built-in echo service in
    /// this process, or `nginx`, an nginx process answering `return 200`
    /// (what a user's comparison runs; its CPU counts in every path's).
    #[arg(long, value_enum, default_value_t = Service::Echo)]
    pub service: Service,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// The service the load reaches through each path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// The built-in HTTP echo service, in the bench process.
    Echo,
    /// nginx `return 200`, one worker, as its own process.
    Nginx,
}

/// Every path but direct, in the order they run.
pub const PATHS: [&str; 6] = [
    "sidecar",
    "two-sidecars",
    "sidecar-proc",
    "two-sidecars-proc",
    "nginx",
    "haproxy",
];

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
    /// Every round's closed and open loop, as measured.
    pub rounds: Vec<(LoadResult, LoadResult)>,
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
    Processes(Vec<crate::agent_proc::AgentProcess>),
    External(external::External),
}

impl Guard {
    /// Processes whose CPU time counts with this path's.
    fn pids(&self) -> Vec<u32> {
        match self {
            Guard::Processes(agents) => agents.iter().map(|a| a.pid()).collect(),
            Guard::External(proxy) => vec![proxy.pid()],
            Guard::None | Guard::Agents(_) => Vec::new(),
        }
    }
}

/// Why a path cannot run here, if it cannot.
fn unavailable(name: &str, args: &ProxyArgs) -> anyhow::Result<Option<String>> {
    Ok(match name {
        "direct" | "sidecar" | "two-sidecars" => None,
        "sidecar-proc" | "two-sidecars-proc" => {
            crate::agent_proc::find_binary(args.agent_bin.as_deref())
                .is_none()
                .then(|| {
                    "skipped: no gossamer binary next to this one; build it with \
                 `cargo build --release -p sidecar` or pass --agent-bin"
                        .to_owned()
                })
        }
        "nginx" => Kind::Nginx
            .find()
            .is_none()
            .then(|| Kind::Nginx.missing_note()),
        "haproxy" => Kind::Haproxy
            .find()
            .is_none()
            .then(|| Kind::Haproxy.missing_note()),
        other => bail!("unknown path {other:?}; choose from {}", PATHS.join(", ")),
    })
}

/// Starts what `name` needs in front of the echo service.
async fn set_up(
    name: &str,
    args: &ProxyArgs,
    echo: SocketAddr,
) -> anyhow::Result<(SocketAddr, &'static str, Guard)> {
    let binary = || {
        crate::agent_proc::find_binary(args.agent_bin.as_deref())
            .ok_or_else(|| anyhow::anyhow!("the gossamer binary disappeared"))
    };
    Ok(match name {
        "sidecar" => {
            let (addr, agents) = paths::one_sidecar(echo).await?;
            (
                addr,
                "client → sidecar → echo (same node; in the bench process)",
                Guard::Agents(agents),
            )
        }
        "two-sidecars" => {
            let (addr, agents) = paths::two_sidecars(echo).await?;
            (
                addr,
                "client → sidecar ⇒ QUIC+mTLS ⇒ sidecar → echo (in the bench process)",
                Guard::Agents(agents),
            )
        }
        "sidecar-proc" => {
            let (addr, agents) = paths::one_sidecar_process(&binary()?, echo).await?;
            (
                addr,
                "client → sidecar process → echo (same node)",
                Guard::Processes(agents),
            )
        }
        "two-sidecars-proc" => {
            let (addr, agents) = paths::two_sidecars_process(&binary()?, echo).await?;
            (
                addr,
                "client → sidecar process ⇒ QUIC+mTLS ⇒ sidecar process → echo",
                Guard::Processes(agents),
            )
        }
        "nginx" | "haproxy" => {
            let kind = if name == "nginx" {
                Kind::Nginx
            } else {
                Kind::Haproxy
            };
            let binary = kind
                .find()
                .ok_or_else(|| anyhow::anyhow!("{} disappeared", kind.name()))?;
            let proxy = external::start(kind, &binary, echo).await?;
            let description = if name == "nginx" {
                "client → nginx → echo (keep-alive upstream)"
            } else {
                "client → HAProxy → echo (keep-alive upstream)"
            };
            (proxy.addr, description, Guard::External(proxy))
        }
        _ => (echo, "client → echo", Guard::None),
    })
}

/// Runs `bench proxy`.
pub async fn run(args: &ProxyArgs) -> anyhow::Result<ProxyResults> {
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency {} must be from 1 to 4096", args.concurrency);
    }
    if !(0.1..=3600.0).contains(&args.duration) || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--duration must be from 0.1 to 3600 s and --warmup from 0 to 600 s");
    }
    if !(1..=20).contains(&args.rounds) {
        bail!("--rounds {} must be from 1 to 20", args.rounds);
    }
    // Kept for the whole run: every path reaches the same service.
    let nginx_service = match args.service {
        Service::Echo => None,
        Service::Nginx => {
            let binary = Kind::Nginx.find().ok_or_else(|| {
                anyhow::anyhow!("--service nginx needs /usr/sbin/nginx (apt-get install -y nginx)")
            })?;
            Some(external::start_nginx_service(&binary).await?)
        }
    };
    let echo = match &nginx_service {
        Some(nginx) => nginx.addr,
        None => paths::start_echo().await?,
    };
    let service_pids: Vec<u32> = nginx_service.iter().map(|n| n.pid()).collect();
    let mut skipped = Vec::new();
    let mut names = vec!["direct".to_string()];
    for name in args.paths.iter().filter(|p| *p != "direct") {
        match unavailable(name, args)? {
            Some(note) => {
                println!("{name}: {note}");
                skipped.push((name.clone(), note));
            }
            None => names.push(name.clone()),
        }
    }
    let mut rounds: Vec<Vec<(LoadResult, LoadResult)>> = vec![Vec::new(); names.len()];
    let mut descriptions = vec![""; names.len()];
    for round in 1..=args.rounds {
        for (i, name) in names.iter().enumerate() {
            let (addr, description, guard) = set_up(name, args, echo).await?;
            descriptions[i] = description;
            println!("round {round}/{}: {name}...", args.rounds);
            let measured = measure(args, name, addr, &guard, &service_pids).await;
            match guard {
                Guard::Agents(agents) => paths::stop_agents(agents).await,
                Guard::External(proxy) => drop(proxy),
                Guard::Processes(agents) => drop(agents),
                Guard::None => {}
            }
            rounds[i].push(measured?);
        }
    }
    let mut results: Vec<PathResult> = Vec::new();
    for ((name, description), runs) in names.iter().zip(descriptions).zip(rounds) {
        let closed = median(runs.iter().map(|r| &r.0));
        let open = median(runs.iter().map(|r| &r.1));
        let (rps_ratio, p99_ratio, added_p50_us, added_p99_us) = match results.first() {
            Some(d) => (
                closed.rps / d.closed.rps.max(1e-9),
                closed.latency.p99_us as f64 / (d.closed.latency.p99_us.max(1)) as f64,
                open.latency.p50_us as i64 - d.open.latency.p50_us as i64,
                open.latency.p99_us as i64 - d.open.latency.p99_us as i64,
            ),
            None => (1.0, 1.0, 0, 0),
        };
        results.push(PathResult {
            name: name.clone(),
            description: description.to_owned(),
            closed,
            open,
            rps_ratio,
            p99_ratio,
            added_p50_us,
            added_p99_us,
            rounds: runs,
        });
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

fn median_of<T: Copy + Default>(
    values: impl Iterator<Item = T>,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> T {
    let mut v: Vec<T> = values.collect();
    v.sort_by(&cmp);
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// Each figure's median over the rounds (rounds interleave the paths, so
/// background load on a shared machine hits every path alike).
fn median<'a>(runs: impl Iterator<Item = &'a LoadResult> + Clone) -> LoadResult {
    let f = |get: &dyn Fn(&LoadResult) -> f64| median_of(runs.clone().map(get), f64::total_cmp);
    let u = |get: &dyn Fn(&LoadResult) -> u64| median_of(runs.clone().map(get), Ord::cmp);
    let latency = |get: &dyn Fn(&LoadResult) -> Latency| Latency {
        count: u(&|r| get(r).count),
        mean_us: f(&|r| get(r).mean_us),
        p50_us: u(&|r| get(r).p50_us),
        p99_us: u(&|r| get(r).p99_us),
        p999_us: u(&|r| get(r).p999_us),
        max_us: u(&|r| get(r).max_us),
    };
    let has_service = runs.clone().any(|r| r.service.is_some());
    LoadResult {
        latency: latency(&|r| r.latency),
        service: has_service.then(|| latency(&|r| r.service.unwrap_or_default())),
        dispatch_lag: has_service.then(|| latency(&|r| r.dispatch_lag.unwrap_or_default())),
        ok: u(&|r| r.ok),
        errors: u(&|r| r.errors),
        window_s: f(&|r| r.window_s),
        rps: f(&|r| r.rps),
        cpu_us_per_request: f(&|r| r.cpu_us_per_request),
    }
}

async fn measure(
    args: &ProxyArgs,
    name: &str,
    addr: SocketAddr,
    guard: &Guard,
    service_pids: &[u32],
) -> anyhow::Result<(LoadResult, LoadResult)> {
    let target = Target {
        addr,
        host: format!("{}.localhost", paths::SERVICE),
        path: "/".to_owned(),
    };
    let mut external = guard.pids();
    external.extend_from_slice(service_pids);
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let closed = closed_loop(&target, args.concurrency, warmup, duration, &external).await?;
    let open = open_loop(
        &target,
        args.rate,
        args.open_connections,
        warmup,
        duration,
        &external,
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
    Ok((closed, open))
}

fn check_targets(results: &[PathResult]) -> Vec<TargetCheck> {
    let find = |name: &str| results.iter().find(|r| r.name == name);
    let haproxy = find("haproxy");
    let mut out = Vec::new();
    let mut check = |target: String, measured: String, met: Option<bool>| {
        out.push(TargetCheck {
            target,
            measured,
            met,
        });
    };
    for (one, two, how) in [
        ("sidecar", "two-sidecars", "in process"),
        ("sidecar-proc", "two-sidecars-proc", "as processes"),
    ] {
        if let (Some(s), Some(h)) = (find(one), haproxy) {
            check(
                format!("one sidecar ({how}): req/s ratio to direct at least HAProxy's"),
                format!("{:.3} vs HAProxy {:.3}", s.rps_ratio, h.rps_ratio),
                Some(s.rps_ratio >= h.rps_ratio),
            );
            check(
                format!("one sidecar ({how}): p99 no higher than HAProxy's"),
                format!(
                    "{} vs HAProxy {}",
                    fmt_us(s.closed.latency.p99_us as f64),
                    fmt_us(h.closed.latency.p99_us as f64)
                ),
                Some(s.closed.latency.p99_us <= h.closed.latency.p99_us),
            );
        }
        if let Some(t) = find(two) {
            check(
                format!("two sidecars ({how}): at least 0.35 of direct req/s"),
                format!("{:.3}", t.rps_ratio),
                Some(t.rps_ratio >= 0.35),
            );
            check(
                format!("two sidecars ({how}): p99 at most 2 ms at the closed-loop concurrency"),
                fmt_us(t.closed.latency.p99_us as f64),
                Some(t.closed.latency.p99_us <= 2_000),
            );
            check(
                format!("two sidecars ({how}): p50 added at most 150 µs in the open loop"),
                format!("{} µs", t.added_p50_us),
                Some(t.added_p50_us <= 150),
            );
        }
    }
    if haproxy.is_none() {
        check(
            "one sidecar against HAProxy".to_owned(),
            "not measured: no haproxy path in this run".to_owned(),
            None,
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
