//! The `gossamer` binary: `gossamer agent` runs a sidecar; the other
//! subcommands are operator tools talking to a running agent.

use std::io::IsTerminal;

use clap::Parser;
use sidecar::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// Worker threads when `--threads` is not given: a sidecar shares its node
/// with the service it serves, and one thread costs the least CPU per
/// request at every load this machine can give it (bench/README.md, "One
/// thread"); Linkerd's proxy also defaults to one core. Busier nodes raise it.
const DEFAULT_THREADS: usize = 1;

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Agent(args) => args.threads.map(usize::from),
        _ => None,
    }
    .unwrap_or(DEFAULT_THREADS);
    let runtime = match runtime_builder(threads).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli));
}

/// One worker thread means a current-thread runtime, not a multi-thread one
/// with one worker: no work-stealing bookkeeping, and its run queue is
/// first in, first out, so the QUIC connection driver woken by many streams
/// runs once after all of them and packs their frames into shared datagrams.
/// The multi-thread scheduler runs a woken task next (its LIFO slot), so
/// each proxied request left in a datagram of its own: 2.3 UDP sends per
/// request against 0.35, and 25-30 % less CPU per request on the receiving
/// sidecar (bench/README.md, "One thread").
fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    }
}

async fn run(cli: Cli) {
    // An agent's log is its record; for the demo and operator commands the
    // table is the point, and only warnings belong beside it.
    let default_filter = match cli.command {
        Command::Agent(_) => "info",
        _ => "warn",
    };
    let mut filter =
        EnvFilter::try_from_env("GOSSAMER_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    // hickory-server logs every DNS query at info: a flood of queries would
    // become a flood of log lines. GOSSAMER_LOG may still name it.
    if !std::env::var("GOSSAMER_LOG").is_ok_and(|v| v.contains("hickory")) {
        if let Ok(quiet) = "hickory_server=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    // Colour codes only for a person at a terminal: a file or journald
    // would keep them as noise.
    let ansi = std::io::stderr().is_terminal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Agent(ref args) => sidecar::agent::run_until_signal((**args).clone()).await,
        Command::Echo {
            listen,
            ref name,
            port,
        } => {
            let listen = port.map_or(listen, |p| std::net::SocketAddr::new(listen.ip(), p));
            sidecar::echo::run(listen, name.clone()).await
        }
        Command::Demo { keep, calls } => sidecar::demo::run(keep, calls).await,
        Command::Up(ref args) => sidecar::up::run((**args).clone()).await,
        Command::Down { ref dir } => sidecar::up::down(dir).await,
        _ => sidecar::cli::run_operator(&cli).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
