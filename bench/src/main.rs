//! `cargo run --release -p bench -- <scenario>`: see `bench/README.md`.

use clap::{Parser, Subcommand};

/// Gossamer benchmarks: each scenario prints a table and writes JSON to bench/results/.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// DNS answer latency (p50/p99) under an open-loop load of queries/s.
    Dns(bench::dns::DnsArgs),
    /// Upstream choice: requirements honoured, tail latency against round robin and random.
    Balance(bench::balance::BalanceArgs),
    /// Proxy overhead: direct, one sidecar, two sidecars over QUIC, nginx, HAProxy.
    Proxy(bench::proxy::ProxyArgs),
    /// N agents in one process: spread, failure detection, traffic, memory.
    Gossip(bench::gossip::GossipArgs),
    /// Per-request selection cost against catalog and member-table size.
    Select(bench::select::SelectArgs),
    /// foca and the catalog merge over an in-memory network with loss and delay.
    Sim(bench::sim::SimArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Balance(args) => bench::balance::run(&args).map(|_| ()),
        Scenario::Proxy(args) => runtime()?.block_on(bench::proxy::run(&args)).map(|_| ()),
        Scenario::Gossip(args) => runtime()?.block_on(bench::gossip::run(&args)).map(|_| ()),
        Scenario::Dns(args) => runtime()?.block_on(bench::dns::run(&args)).map(|_| ()),
        Scenario::Sim(args) => bench::sim::run(&args).map(|_| ()),
        Scenario::Select(args) => bench::select::run(&args).map(|_| ()),
    }
}
