//! Follows the instances of a service as they change.
//!
//! ```text
//! cargo run -p client --example watch -- [--agent URL] SERVICE [--hard-rtt MS] [--soft-rtt MS] [--count N]
//! ```
//!
//! Prints the current instances, then a new block each time they change
//! (registered, deregistered, health, eligibility). It rides out agent
//! restarts: while the agent is away it says so on stderr and keeps trying.
//! With `--count N` it stops after N updates; otherwise at Ctrl-C.
//! The agent URL comes from `--agent`, else `GOSSAMER_AGENT`, else
//! `http://127.0.0.1:4200`.

mod support;

use client::{Client, WatchOptions};
use futures_util::StreamExt;

const USAGE: &str = "watch [--agent URL] SERVICE [--hard-rtt MS] [--soft-rtt MS] [--count N]";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = support::parse(USAGE);
    let Some(service) = args.service else {
        eprintln!("error: which service?\nusage: {USAGE}");
        std::process::exit(2);
    };
    let agent = match Client::new(&args.agent) {
        Ok(agent) => agent,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let options = WatchOptions {
        requirements: args.requirements,
        ..WatchOptions::default()
    };
    let mut watch = agent.watch_with(&service, options);
    let mut updates = 0u64;
    loop {
        let item = tokio::select! {
            item = watch.next() => item,
            _ = tokio::signal::ctrl_c() => break,
        };
        match item {
            Some(Ok(update)) => {
                updates += 1;
                let view = &update.value;
                println!(
                    "update {updates} (index {}): {} eligible, {} ineligible",
                    update.index,
                    view.eligible.len(),
                    view.ineligible.len()
                );
                for i in &view.eligible {
                    println!(
                        "  + {} {} on {} at {}",
                        i.instance.id,
                        i.instance.address,
                        i.instance.node,
                        support::rtt(i.rtt_ms, i.rtt_source)
                    );
                }
                for i in &view.ineligible {
                    println!(
                        "  - {} {} on {}: {:?}",
                        i.instance.id, i.instance.address, i.instance.node, i.ineligible
                    );
                }
                if args.count.is_some_and(|n| updates >= n) {
                    break;
                }
            }
            // Transient: the watch backs off and tries again by itself.
            Some(Err(error)) if error.is_transient() => eprintln!("waiting for the agent: {error}"),
            Some(Err(error)) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
            None => break,
        }
    }
}
