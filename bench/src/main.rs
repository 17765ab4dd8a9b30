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
    /// Proxy overhead: direct, one sidecar, two sidecars over QUIC, nginx, HAProxy.
    Proxy(bench::proxy::ProxyArgs),
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
        Scenario::Proxy(args) => runtime()?.block_on(bench::proxy::run(&args)).map(|_| ()),
        Scenario::Sim(args) => bench::sim::run(&args).map(|_| ()),
    }
}
