//! `bench balance`: the quality of the sidecar's upstream choice.
//!
//! One caller with soft 10 ms and hard 30 ms requirements calls a service
//! whose instances sit at several RTTs (one local, some near, one beyond
//! soft, one beyond hard, one never measured), one of them slow and one
//! refusing every connection. The same Poisson workload goes through the
//! real `client::select::Balancer` and through round robin and random
//! choice; the table compares the share of calls answered within the soft
//! requirement, hard violations (must be 0 for the balancer), errors and
//! tail latency.

mod model;

use std::path::PathBuf;

use anyhow::bail;
use serde::Serialize;

use crate::report::{self, fmt_us, Table};
use model::{simulate, InstanceSpec, Strategy, Tally, Workload};

/// Options of `bench balance`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BalanceArgs {
    /// Requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Simulated seconds measured.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Simulated seconds before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// One strategy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    /// Strategy name.
    pub strategy: String,
    /// Raw counts.
    pub tally: Tally,
    /// Answered within soft / answered.
    pub within_soft_share: f64,
    /// Errors / requests.
    pub error_share: f64,
    /// Median latency of answered requests, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// This p99 divided by the balancer's.
    pub p99_vs_gossamer: f64,
}

/// Everything `bench balance` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BalanceResults {
    /// The workload.
    pub workload: Workload,
    /// One entry per strategy, the balancer first.
    pub strategies: Vec<StrategyResult>,
}

/// The default workload: instances at several RTTs, one slow, one failing.
pub fn workload(args: &BalanceArgs) -> Workload {
    let spec = |id: &str, rtt: Option<f64>, service_ms: f64, fail_rate: f64, workers: usize| {
        InstanceSpec {
            id: id.to_owned(),
            rtt_ms: rtt,
            service_ms,
            fail_rate,
            workers,
        }
    };
    Workload {
        instances: vec![
            spec("local", Some(0.0), 4.0, 0.0, 4),
            spec("near-2ms", Some(2.0), 4.0, 0.0, 4),
            spec("near-6ms", Some(6.0), 4.0, 0.0, 4),
            spec("slow-3ms", Some(3.0), 40.0, 0.0, 8),
            spec("failing-4ms", Some(4.0), 4.0, 1.0, 4),
            spec("beyond-soft-18ms", Some(18.0), 4.0, 0.0, 4),
            spec("beyond-hard-45ms", Some(45.0), 4.0, 0.0, 4),
            spec("unmeasured", None, 4.0, 0.0, 4),
        ],
        soft_rtt_ms: 10,
        hard_rtt_ms: 30,
        rate: args.rate,
        seconds: args.seconds,
        warmup: args.warmup,
        seed: args.seed,
    }
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `bench balance`.
pub fn run(args: &BalanceArgs) -> anyhow::Result<BalanceResults> {
    if !(1.0..=100_000.0).contains(&args.rate) {
        bail!("--rate {} must be from 1 to 100000 requests/s", args.rate);
    }
    if !(0.1..=3600.0).contains(&args.seconds) || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--seconds must be from 0.1 to 3600 and --warmup from 0 to 600");
    }
    let w = workload(args);
    let strategies = [
        Strategy::Gossamer,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::RoundRobinWithinHard,
    ];
    let mut results: Vec<StrategyResult> = Vec::new();
    for strategy in strategies {
        let tally = simulate(&w, strategy);
        let p99 = quantile(&tally.latencies_us, 0.99);
        let base_p99 = results.first().map_or(p99, |g| g.p99_us).max(1);
        results.push(StrategyResult {
            strategy: strategy.name().to_owned(),
            within_soft_share: tally.within_soft as f64 / tally.ok.max(1) as f64,
            error_share: tally.errors as f64 / tally.requests.max(1) as f64,
            p50_us: quantile(&tally.latencies_us, 0.5),
            p99_us: p99,
            p999_us: quantile(&tally.latencies_us, 0.999),
            p99_vs_gossamer: p99 as f64 / base_p99 as f64,
            tally,
        });
    }
    print_tables(&w, &results);
    let out = BalanceResults {
        workload: w,
        strategies: results,
    };
    let path = report::write_json(&args.out, "balance", "balance", args, &out)?;
    println!("\nwrote {}", path.display());
    Ok(out)
}

fn print_tables(w: &Workload, results: &[StrategyResult]) {
    let mut t = Table::new(&[
        "strategy",
        "within soft",
        "hard violations",
        "errors",
        "retries",
        "p50",
        "p99",
        "p99.9",
        "p99 vs gossamer",
    ]);
    for r in results {
        t.row(vec![
            r.strategy.clone(),
            format!("{:.1} %", 100.0 * r.within_soft_share),
            r.tally.hard_violations.to_string(),
            format!("{:.2} %", 100.0 * r.error_share),
            r.tally.retries.to_string(),
            fmt_us(r.p50_us as f64),
            fmt_us(r.p99_us as f64),
            fmt_us(r.p999_us as f64),
            format!("{:.2}", r.p99_vs_gossamer),
        ]);
    }
    println!(
        "Balance: {} req/s for {} s, soft {} ms, hard {} ms",
        w.rate, w.seconds, w.soft_rtt_ms, w.hard_rtt_ms
    );
    print!("{}", t.render());
    let mut headers = vec!["instance", "RTT", "service", "workers"];
    let names: Vec<String> = results.iter().map(|r| r.strategy.clone()).collect();
    headers.extend(names.iter().map(String::as_str));
    let mut shares = Table::new(&headers);
    for (i, spec) in w.instances.iter().enumerate() {
        let mut row = vec![
            spec.id.clone(),
            spec.rtt_ms
                .map_or_else(|| "unknown".to_owned(), |r| format!("{r} ms")),
            if spec.fail_rate >= 1.0 {
                "refuses".to_owned()
            } else {
                format!("{} ms", spec.service_ms)
            },
            spec.workers.to_string(),
        ];
        for r in results {
            let total: u64 = r.tally.per_instance.iter().sum();
            row.push(format!(
                "{:.1} %",
                100.0 * r.tally.per_instance[i] as f64 / total.max(1) as f64
            ));
        }
        shares.row(row);
    }
    println!("\nShare of attempts per instance");
    print!("{}", shares.render());
}
